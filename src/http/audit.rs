//! Audit: one call's whole story (who made it, for whom, who paid, and its log events with
//! their hashes), attribution of usage, and an org's own events in log order, with every
//! secret (password, session and key hashes, sealed keys) redacted.
//!
//! Read from the SQL read models of the `audit` projection. A request first waits (briefly)
//! for that projection to reach what this node had committed when the request arrived, so a
//! caller reads its own writes.

use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use bahi_domain::credential::{Scope, SecretHash};
use bahi_domain::ids::{CallId, OrgId};
use bahi_reports::{Period, parse_bound, parse_group_by};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Principal, authenticate};
use super::error::{ApiError, ApiResult};

/// Default and largest page of the event log.
pub const DEFAULT_EVENTS_PAGE: i64 = 100;
pub const MAX_EVENTS_PAGE: i64 = 1000;
/// The longest a read waits for the audit projection to catch up before answering anyway.
const FRESHNESS_WAIT: Duration = Duration::from_secs(2);
pub const AUDIT_PROJECTION: &str = "audit";

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/audit/calls/{call_id}", get(call))
        .route("/v1/audit/attribution", get(attribution))
        .route("/v1/audit/events", get(events))
        .route_layer(from_fn_with_state(state.clone(), authenticate_reader))
}

/// Who reads: the operator (any org) or an org's credential (its own org only).
#[derive(Debug, Clone)]
pub enum Reader {
    Operator,
    Org(Box<Principal>),
}

fn is_operator(state: &AppState, request: &Request) -> bool {
    let Some(expected) = &state.config.operator_key_hash else { return false };
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, credential)| SecretHash::of(credential.trim()) == *expected)
}

/// Route layer of audit and statement routes: the operator key passes as `Reader::Operator`;
/// anything else goes through the ordinary `authenticate` (rate limit included).
pub async fn authenticate_reader(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if is_operator(&state, &request) {
        request.extensions_mut().insert(Reader::Operator);
        return next.run(request).await;
    }
    authenticate(State(state), request, next).await
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Reader, ApiError> {
        if let Some(reader) = parts.extensions.get::<Reader>() {
            return Ok(reader.clone());
        }
        Principal::from_request_parts(parts, state).await.map(|principal| Reader::Org(Box::new(principal)))
    }
}

impl Reader {
    /// The org whose data is read: the caller's own (which `requested`, if given, must be:
    /// another org's id is 404, never a hint it exists) or, for the operator, `requested`.
    pub fn org(&self, state: &AppState, scope: Scope, requested: Option<&str>) -> Result<OrgId, ApiError> {
        match self {
            Reader::Org(principal) => {
                principal.require(scope)?;
                match requested {
                    Some(requested) if OrgId::parse(requested)? != principal.org_id => Err(ApiError::not_found("org")),
                    _ => Ok(principal.org_id.clone()),
                }
            }
            Reader::Operator => {
                let requested = requested
                    .ok_or_else(|| ApiError::invalid_request("the operator names the org: add org_id=<org_…>"))?;
                let org_id = OrgId::parse(requested)?;
                if state.ledger.read().state.orgs.contains_key(&org_id) {
                    Ok(org_id)
                } else {
                    Err(ApiError::not_found("org"))
                }
            }
        }
    }
}

/// Waits until the audit projection has folded everything this node had committed when the
/// request arrived (bounded: past FRESHNESS_WAIT it answers from what is there).
pub async fn wait_for_projection(state: &AppState) {
    let target = state.ledger.read().position;
    let deadline = Instant::now() + FRESHNESS_WAIT;
    loop {
        let position = state
            .metrics
            .projection_positions
            .lock()
            .iter()
            .find(|(name, _)| *name == AUDIT_PROJECTION)
            .map_or(0, |(_, position)| *position);
        if position >= target || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Query strings refuse unknown parameters (a typo is an error) with the contract's 400.
pub fn query<T>(query: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(value)| value).map_err(|rejection| ApiError::invalid_request(rejection.body_text()))
}

fn store_error(error: crate::store::StoreError) -> ApiError {
    ApiError::internal(error)
}

async fn call(State(state): State<AppState>, reader: Reader, Path(call_id): Path<String>) -> ApiResult<Json<Value>> {
    let call_id = CallId::parse(&call_id)?;
    if let Reader::Org(principal) = &reader {
        principal.require(Scope::AuditRead)?;
    }
    wait_for_projection(&state).await;
    let record = state.store.audit_call(call_id.as_str()).await.map_err(store_error)?;
    let record = match (record, &reader) {
        (Some(record), Reader::Operator) => record,
        (Some(record), Reader::Org(principal)) if record.org_id == principal.org_id.as_str() => record,
        _ => return Err(ApiError::not_found("call")),
    };
    let events = state.store.call_events(call_id.as_str()).await.map_err(store_error)?;
    let events: Vec<Value> = events
        .into_iter()
        .map(
            |(position, event_type, hash)| json!({"position": position, "type": event_type, "hash": hex::encode(hash)}),
        )
        .collect();
    let agent = match &record.agent_id {
        Some(id) => json!({"id": id, "name": record.agent_name}),
        None => Value::Null,
    };
    Ok(Json(json!({
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
        "hold": record.hold,
        "authorized_at": bahi_domain::chain::format_recorded_at(record.authorized_at),
        "settled_at": record.settled_at.map(bahi_domain::chain::format_recorded_at),
        "events": events,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributionQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    org_id: Option<String>,
}

fn bad_input(error: bahi_reports::ReportError) -> ApiError {
    ApiError::invalid_request(error.to_string())
}

async fn attribution(
    State(state): State<AppState>,
    reader: Reader,
    raw: Result<Query<AttributionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let request = query(raw)?;
    let org_id = reader.org(&state, Scope::AuditRead, request.org_id.as_deref())?;
    let group_by = parse_group_by(request.group_by.as_deref().unwrap_or_default()).map_err(bad_input)?;
    let from = request.from.as_deref().map(|text| parse_bound("from", text, false)).transpose().map_err(bad_input)?;
    let until = request.to.as_deref().map(|text| parse_bound("to", text, true)).transpose().map_err(bad_input)?;
    // A date as `to` includes its day, so from=D+1&to=D meets at one instant: empty, refused.
    if let (Some(from), Some(until)) = (from, until)
        && from >= until
    {
        return Err(ApiError::invalid_request("from must be before to"));
    }
    wait_for_projection(&state).await;
    let rows = state
        .store
        .attribution(org_id.as_str(), Period { from, until }, &group_by)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::invalid_request(format!(
                "more than {} groups: narrow the period or group by fewer keys",
                crate::store::MAX_ATTRIBUTION_GROUPS
            ))
        })?;
    let totals = bahi_reports::attribution::totals(&rows).map_err(ApiError::internal)?;
    Ok(Json(json!({
        "org_id": org_id,
        "from": from.map(bahi_domain::chain::format_recorded_at),
        "to": until.map(bahi_domain::chain::format_recorded_at),
        "group_by": group_by.iter().map(|key| key.as_str()).collect::<Vec<_>>(),
        "rows": rows.iter().map(|row| row.to_json(&group_by)).collect::<Vec<_>>(),
        "totals": totals.to_json(&[]),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
    org_id: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    reader: Reader,
    raw: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let request = query(raw)?;
    let org_id = reader.org(&state, Scope::AuditRead, request.org_id.as_deref())?;
    let after = request.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid_request("after must be a log position (0 or more)"));
    }
    let limit = request.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit must be between 1 and {MAX_EVENTS_PAGE}")));
    }
    wait_for_projection(&state).await;
    // One more than asked tells whether another page follows.
    let mut events = state.store.org_events(org_id.as_str(), after, limit + 1).await.map_err(store_error)?;
    let has_more = events.len() as i64 > limit;
    events.truncate(usize::try_from(limit).unwrap_or(0));
    let next_after = events.last().map(|event| event.position);
    let data = events
        .into_iter()
        .map(|event| {
            // Served redacted: no password, session or key hash, no sealed key (the stored
            // bytes, which the chain hashes, are left as they are).
            let payload = bahi_domain::event::served_payload(&event.payload)
                .map_err(|error| ApiError::internal(format!("event {} payload: {error}", event.position)))?;
            Ok(json!({
                "position": event.position,
                "type": event.event_type,
                "recorded_at": bahi_domain::chain::format_recorded_at(event.recorded_at),
                "data": payload,
                "hash": hex::encode(event.hash),
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(json!({"data": data, "has_more": has_more, "next_after": next_after})))
}
