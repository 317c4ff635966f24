//! Attribution: settled calls, tokens and cost grouped by agent, principal, model, API key
//! and day. Read from the same ledger rows as statements' usage debits, so the two sum to
//! the same amount for the same period by construction.

use bahi_domain::Money;
use serde_json::{Map, Value, json};

use crate::ReportError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupKey {
    Agent,
    ActFor,
    Model,
    ApiKey,
    Day,
}

impl GroupKey {
    pub const ALL: [GroupKey; 5] =
        [GroupKey::Agent, GroupKey::ActFor, GroupKey::Model, GroupKey::ApiKey, GroupKey::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupKey::Agent => "agent",
            GroupKey::ActFor => "act_for",
            GroupKey::Model => "model",
            GroupKey::ApiKey => "api_key",
            GroupKey::Day => "day",
        }
    }

    pub fn parse(text: &str) -> Option<GroupKey> {
        GroupKey::ALL.into_iter().find(|key| key.as_str() == text)
    }
}

/// `agent,model` → the keys in the order given, without repeats. Empty means one total row.
pub fn parse_group_by(text: &str) -> Result<Vec<GroupKey>, ReportError> {
    let mut keys = Vec::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let key = GroupKey::parse(part).ok_or_else(|| ReportError::UnknownGroup(part.to_owned()))?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// One group. Keys not grouped by are `None` and left out of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttributionRow {
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub act_for: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub day: Option<String>,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Money,
}

impl AttributionRow {
    /// The row as the API shows it: the requested group keys (`null` where a call has none,
    /// such as the agent of a call made with an API key), then the sums.
    pub fn to_json(&self, group_by: &[GroupKey]) -> Value {
        let mut object = Map::new();
        for key in group_by {
            let value = match key {
                GroupKey::Agent => match &self.agent_id {
                    Some(id) => json!({"id": id, "name": self.agent_name}),
                    None => Value::Null,
                },
                GroupKey::ActFor => json!(self.act_for),
                GroupKey::Model => json!(self.model),
                GroupKey::ApiKey => json!(self.api_key),
                GroupKey::Day => json!(self.day),
            };
            object.insert(key.as_str().to_owned(), value);
        }
        object.insert("calls".into(), json!(self.calls));
        object.insert("input_tokens".into(), json!(self.input_tokens));
        object.insert("output_tokens".into(), json!(self.output_tokens));
        object.insert("cost".into(), json!(self.cost));
        Value::Object(object)
    }
}

/// Sums of every row: what the statement's usage debits of the same period add up to.
pub fn totals(rows: &[AttributionRow]) -> Result<AttributionRow, ReportError> {
    let mut total = AttributionRow::default();
    for row in rows {
        total.calls = total.calls.checked_add(row.calls).ok_or(ReportError::Overflow)?;
        total.input_tokens = total.input_tokens.checked_add(row.input_tokens).ok_or(ReportError::Overflow)?;
        total.output_tokens = total.output_tokens.checked_add(row.output_tokens).ok_or(ReportError::Overflow)?;
        total.cost = total.cost.checked_add(row.cost).map_err(|_| ReportError::Overflow)?;
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn group_by_is_validated_and_deduplicated() {
        assert_eq!(parse_group_by("agent, model,agent").unwrap(), vec![GroupKey::Agent, GroupKey::Model]);
        assert_eq!(parse_group_by("").unwrap(), vec![]);
        assert_eq!(parse_group_by("agent,colour"), Err(ReportError::UnknownGroup("colour".into())));
    }

    #[test]
    fn rows_show_only_requested_keys() {
        let row = AttributionRow {
            agent_id: Some("agt_1".into()),
            agent_name: Some("bot".into()),
            model: Some("m".into()),
            calls: 2,
            input_tokens: 10,
            output_tokens: 5,
            cost: Money::parse("0.25").unwrap(),
            ..AttributionRow::default()
        };
        assert_eq!(
            row.to_json(&[GroupKey::Agent, GroupKey::ApiKey]),
            json!({"agent": {"id": "agt_1", "name": "bot"}, "api_key": null, "calls": 2, "input_tokens": 10,
                   "output_tokens": 5, "cost": {"currency": "inr", "amount": "0.25"}})
        );
    }
}
