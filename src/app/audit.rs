//! Audit: one call's whole story (who made it, for whom, who paid, and its log events with
//! their hashes), attribution of usage, and an org's own events in log order, with every
//! secret (password, session and key hashes, sealed keys) redacted.
//!
//! Read from the SQL read models of the `audit` projection. A read first waits (briefly)
//! for that projection to reach what this node had committed when the read arrived, so a
//! caller reads its own writes.

use std::time::{Duration, Instant};

use bahi_domain::billing::UsageSource;
use bahi_domain::chain::format_recorded_at;
use bahi_domain::credential::Scope;
use bahi_domain::ids::CallId;
use bahi_reports::{Period, parse_bound, parse_group_by};
use serde::Deserialize;
use serde_json::{Value, json};

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

/// One call: who made it, acting for whom, who paid, what it cost, and its events.
pub async fn call(services: &Services, reader: &Reader, call_id: &str) -> AppResult<Value> {
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
    let events: Vec<Value> = events
        .into_iter()
        .map(|event| json!({"position": event.position, "type": event.event_type, "hash": hex::encode(event.hash)}))
        .collect();
    let agent = match &record.agent_id {
        Some(id) => json!({"id": id, "name": record.agent_name}),
        None => Value::Null,
    };
    Ok(json!({
        "call_id": record.call_id,
        "agent": agent,
        "act_for": record.act_for,
        "payer_org_id": record.org_id,
        "credential": {"kind": record.credential_kind, "id": record.credential_id},
        "model": record.model,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost": record.cost,
        "status": record.status,
        "usage_source": usage_source,
        "hold": record.hold,
        "authorized_at": format_recorded_at(record.authorized_at),
        "settled_at": record.settled_at.map(format_recorded_at),
        "events": events,
    }))
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
    pub org_id: Option<String>,
}

fn bad_input(error: bahi_reports::ReportError) -> AppError {
    AppError::invalid_request(error.to_string())
}

/// Usage and cost grouped by agent, act-for, credential, model or day, over a period.
pub async fn attribution(services: &Services, reader: &Reader, request: AttributionQuery) -> AppResult<Value> {
    attribution_under(services, reader, Scope::AuditRead, request).await
}

/// What an org spent, as `attribution` answers it, for a reader with `audit:read` or
/// `statements:read`: the console's Usage page, which finance sees as well as auditors
/// (the statement already shows finance every call's cost).
pub async fn usage(services: &Services, reader: &Reader, request: AttributionQuery) -> AppResult<Value> {
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
) -> AppResult<Value> {
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
    Ok(json!({
        "org_id": org_id,
        "from": from.map(format_recorded_at),
        "to": until.map(format_recorded_at),
        "group_by": group_by.iter().map(|key| key.as_str()).collect::<Vec<_>>(),
        "rows": rows.iter().map(|row| row.to_json(&group_by)).collect::<Vec<_>>(),
        "totals": totals.to_json(&[]),
    }))
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub after: Option<i64>,
    pub limit: Option<i64>,
    pub org_id: Option<String>,
}

/// A page of the org's own events in log order, redacted.
pub async fn events(services: &Services, reader: &Reader, request: EventsQuery) -> AppResult<Value> {
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
            Ok(json!({
                "position": event.position,
                "type": event.event_type,
                "recorded_at": format_recorded_at(event.recorded_at),
                "data": payload,
                "hash": hex::encode(event.hash),
            }))
        })
        .collect::<AppResult<Vec<_>>>()?;
    Ok(json!({"data": data, "has_more": has_more, "next_after": next_after}))
}
