//! Audit: one call's whole story (who made it, for whom, who paid, and its log events with
//! their hashes), attribution of usage, and an org's own events in log order, with every
//! secret (password, session and key hashes, sealed keys) redacted.
//!
//! Read from the SQL read models of the `audit` projection. A read first waits (briefly)
//! for that projection to reach what this node had committed when the read arrived, so a
//! caller reads its own writes.

use std::time::{Duration, Instant};

use bahi_domain::Money;
use bahi_domain::billing::UsageSource;
use bahi_domain::chain::format_recorded_at;
use bahi_domain::credential::Scope;
use bahi_domain::ids::{CallId, OrgId};
use bahi_reports::{Period, parse_bound, parse_group_by};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AppError, AppResult, Reader, Services};
use crate::store::CallEvent;
use crate::store::ReadModels;

/// Default and largest page of the event log.
pub const DEFAULT_EVENTS_PAGE: i64 = 100;
pub const MAX_EVENTS_PAGE: i64 = 1000;
/// The longest a read waits for the audit projection to catch up before answering anyway.
const FRESHNESS_WAIT: Duration = Duration::from_secs(2);
/// How often the wait looks at the projection's position.
const FRESHNESS_POLL: Duration = Duration::from_millis(5);
pub const AUDIT_PROJECTION: &str = "audit";

/// Waits until the audit projection has folded everything this node had committed when the
/// read arrived (bounded: past FRESHNESS_WAIT it answers from what is there).
pub async fn wait_for_projection(services: &Services) {
    let target = services.ledger.read().position;
    let deadline = Instant::now() + FRESHNESS_WAIT;
    loop {
        let position = services
            .metrics
            .projection_positions
            .lock()
            .iter()
            .find(|(name, _)| *name == AUDIT_PROJECTION)
            .map_or(0, |(_, position)| *position);
        if position >= target || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(FRESHNESS_POLL).await;
    }
}

/// One call as the audit answer shows it (`GET /v1/audit/calls/{call_id}`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CallView {
    pub call_id: String,
    /// The agent that made the call; null for a call made with a plain API key.
    pub agent: Option<AgentRef>,
    pub act_for: String,
    pub payer_org_id: String,
    pub credential: CredentialRef,
    pub model: String,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    #[schemars(schema_with = "super::schema::optional_money_answer")]
    pub cost: Option<Money>,
    /// `succeeded`, `failed` or `cancelled` once settled; null before.
    pub status: Option<String>,
    /// `reported`, `upstream` or `estimated`; null before settlement.
    pub usage_source: Option<&'static str>,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub hold: Money,
    pub authorized_at: String,
    pub settled_at: Option<String>,
    pub events: Vec<CallEventView>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AgentRef {
    pub id: String,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CredentialRef {
    /// `api_key` or `agent_token`.
    pub kind: String,
    pub id: String,
}

/// One of a call's log events: where it is, what it is, and its chain hash (hex).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CallEventView {
    pub position: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub hash: String,
}

/// One call: who made it, acting for whom, who paid, what it cost, and its events.
pub async fn call(services: &Services, reader: &Reader, call_id: &str) -> AppResult<CallView> {
    let call_id = CallId::parse(call_id)?;
    if let Reader::Org(principal) = reader {
        principal.require(Scope::AuditRead)?;
    }
    wait_for_projection(services).await;
    let record = services.store.audit_call(call_id.as_str()).await?;
    let record = match (record, reader) {
        (Some(record), Reader::Operator) => record,
        (Some(record), Reader::Org(principal)) if record.org_id == principal.org_id.as_str() => record,
        _ => return Err(AppError::not_found("call")),
    };
    let events = services.store.call_events(call_id.as_str()).await?;
    let usage_source = events.iter().find(|event| event.event_type == "UsageRecorded").map(usage_source_of);
    let events = events
        .into_iter()
        .map(|event| CallEventView {
            position: event.position,
            event_type: event.event_type,
            hash: hex::encode(event.hash),
        })
        .collect();
    let agent = record.agent_id.map(|id| AgentRef { id, name: record.agent_name });
    Ok(CallView {
        call_id: record.call_id,
        agent,
        act_for: record.act_for,
        payer_org_id: record.org_id,
        credential: CredentialRef { kind: record.credential_kind, id: record.credential_id },
        model: record.model,
        input_tokens: record.input_tokens,
        output_tokens: record.output_tokens,
        cost: record.cost,
        status: record.status,
        usage_source,
        hold: record.hold,
        authorized_at: format_recorded_at(record.authorized_at),
        settled_at: record.settled_at.map(format_recorded_at),
        events,
    })
}

/// Where a settlement's tokens came from: `reported` by a gateway (`POST /v1/usage`), or,
/// for a proxied call, the `upstream`'s usage or bahi's `estimated` one.
fn usage_source_of(settlement: &CallEvent) -> &'static str {
    #[derive(Deserialize)]
    struct Source {
        usage_source: Option<UsageSource>,
    }
    match serde_json::from_slice::<Source>(&settlement.payload) {
        Ok(Source { usage_source: Some(source) }) => source.as_str(),
        _ => "reported",
    }
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributionQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub group_by: Option<String>,
    /// The operator names the org; an org's credential may name only its own.
    #[schemars(regex(pattern = "^org_[0-9A-Za-z]{1,64}$"))]
    pub org_id: Option<String>,
}

fn bad_input(error: bahi_reports::ReportError) -> AppError {
    AppError::invalid_request(error.to_string())
}

/// An attribution report: the period, the grouping, one row per group and the totals.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Attribution {
    #[schemars(schema_with = "super::schema::id")]
    pub org_id: OrgId,
    pub from: Option<String>,
    pub to: Option<String>,
    pub group_by: Vec<&'static str>,
    #[schemars(schema_with = "super::schema::attribution_rows")]
    pub rows: Vec<Map<String, Value>>,
    #[schemars(schema_with = "super::schema::attribution_totals")]
    pub totals: Map<String, Value>,
}

/// Usage and cost grouped by agent, act-for, credential, model or day, over a period.
pub async fn attribution(services: &Services, reader: &Reader, request: AttributionQuery) -> AppResult<Attribution> {
    attribution_under(services, reader, Scope::AuditRead, request).await
}

/// What an org spent, as `attribution` answers it, for a reader with `audit:read` or
/// `statements:read`: the console's Usage page, which finance sees as well as auditors
/// (the statement already shows finance every call's cost).
pub async fn usage(services: &Services, reader: &Reader, request: AttributionQuery) -> AppResult<Attribution> {
    let scope = match reader {
        Reader::Org(principal) if !principal.scopes.contains(&Scope::AuditRead) => Scope::StatementsRead,
        _ => Scope::AuditRead,
    };
    attribution_under(services, reader, scope, request).await
}

async fn attribution_under(
    services: &Services,
    reader: &Reader,
    scope: Scope,
    request: AttributionQuery,
) -> AppResult<Attribution> {
    let org_id = reader.org(services, scope, request.org_id.as_deref())?;
    let group_by = parse_group_by(request.group_by.as_deref().unwrap_or_default()).map_err(bad_input)?;
    let from = request.from.as_deref().map(|text| parse_bound("from", text, false)).transpose().map_err(bad_input)?;
    let until = request.to.as_deref().map(|text| parse_bound("to", text, true)).transpose().map_err(bad_input)?;
    // A date as `to` includes its day, so from=D+1&to=D meets at one instant: empty, refused.
    if let (Some(from), Some(until)) = (from, until)
        && from >= until
    {
        return Err(AppError::invalid_request("from must be before to"));
    }
    wait_for_projection(services).await;
    let rows =
        services.store.attribution(org_id.as_str(), Period { from, until }, &group_by).await?.ok_or_else(|| {
            AppError::invalid_request(format!(
                "more than {} groups: narrow the period or group by fewer keys",
                crate::store::MAX_ATTRIBUTION_GROUPS
            ))
        })?;
    let totals = bahi_reports::attribution::totals(&rows).map_err(AppError::internal)?;
    Ok(Attribution {
        org_id,
        from: from.map(format_recorded_at),
        to: until.map(format_recorded_at),
        group_by: group_by.iter().map(|key| key.as_str()).collect(),
        rows: rows.iter().map(|row| json_object(row.to_json(&group_by))).collect::<AppResult<_>>()?,
        totals: json_object(totals.to_json(&[]))?,
    })
}

/// A report row, which `to_json` always makes an object.
fn json_object(value: Value) -> AppResult<Map<String, Value>> {
    match value {
        Value::Object(object) => Ok(object),
        other => Err(AppError::internal(format!("an attribution row is not an object: {other}"))),
    }
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[schemars(range(min = 0))]
    pub after: Option<i64>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<i64>,
    /// The operator names the org; an org's credential may name only its own.
    #[schemars(regex(pattern = "^org_[0-9A-Za-z]{1,64}$"))]
    pub org_id: Option<String>,
}

/// A page of the org's events in log order.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct EventPage {
    pub data: Vec<EventView>,
    pub has_more: bool,
    /// The `after` of the next page: the position of this page's last event (null when empty).
    pub next_after: Option<i64>,
}

/// One event of the log, redacted: no password, session or key hash, no sealed key.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct EventView {
    pub position: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub recorded_at: String,
    /// The event's payload as recorded, secrets redacted; its fields depend on `type`.
    #[schemars(schema_with = "super::schema::event_payload")]
    pub data: Value,
    /// The event's chain hash (hex).
    pub hash: String,
}

/// A page of the org's own events in log order, redacted.
pub async fn events(services: &Services, reader: &Reader, request: EventsQuery) -> AppResult<EventPage> {
    let org_id = reader.org(services, Scope::AuditRead, request.org_id.as_deref())?;
    let after = request.after.unwrap_or(0);
    if after < 0 {
        return Err(AppError::invalid_request("after must be a log position (0 or more)"));
    }
    let limit = request.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(AppError::invalid_request(format!("limit must be between 1 and {MAX_EVENTS_PAGE}")));
    }
    wait_for_projection(services).await;
    // One more than asked tells whether another page follows.
    let mut events = services.store.org_events(org_id.as_str(), after, limit + 1).await?;
    let page_size = usize::try_from(limit).map_err(AppError::internal)?;
    let has_more = events.len() > page_size;
    events.truncate(page_size);
    let next_after = events.last().map(|event| event.position);
    let data = events
        .into_iter()
        .map(|event| {
            // Served redacted: no password, session or key hash, no sealed key (the stored
            // bytes, which the chain hashes, are left as they are).
            let payload = bahi_domain::event::served_payload(&event.payload)
                .map_err(|error| AppError::internal(format!("event {} payload: {error}", event.position)))?;
            Ok(EventView {
                position: event.position,
                event_type: event.event_type,
                recorded_at: format_recorded_at(event.recorded_at),
                data: payload,
                hash: hex::encode(event.hash),
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    Ok(EventPage { data, has_more, next_after })
}
