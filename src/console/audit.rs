//! Audit: look up one call (which agent made it, acting for whom, who paid, and its events
//! with their log positions and hashes), attribution over a period grouped as chosen, and
//! the org's own event log, a page at a time.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::data::{self, Amount, Days, Pager, given, int, moment, text};
use super::format::Moment;
use super::{Chrome, ConsoleError, ConsoleSession, render_with_status};
use crate::app::audit::{self, AttributionQuery, EventsQuery};
use crate::app::{AppError, Reader};
use crate::http::AppState;

/// Events on one page of the log.
pub const EVENTS_PAGE: i64 = 50;
/// The attribution period when none is given, and the longest one.
const DEFAULT_DAYS: u64 = 30;
const MAX_DAYS: i64 = 3660;

const GROUPS: [(&str, &str); 5] =
    [("agent", "Agent"), ("act_for", "Acting for"), ("model", "Model"), ("api_key", "API key"), ("day", "Day")];

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct AuditParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
}

pub struct CallEvent {
    pub position: i64,
    pub kind: String,
    pub hash: String,
}

pub struct CallView {
    pub call_id: String,
    pub agent: String,
    pub agent_id: String,
    pub act_for: String,
    pub payer: String,
    pub credential_kind: String,
    pub credential_id: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Amount,
    pub hold: Amount,
    pub status: String,
    pub usage_source: String,
    pub authorized_at: Option<Moment>,
    pub settled_at: Option<Moment>,
    pub events: Vec<CallEvent>,
}

pub struct AttributionRow {
    pub name: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Amount,
}

pub struct EventRow {
    pub position: i64,
    pub kind: String,
    pub recorded_at: Option<Moment>,
    pub data: String,
    pub hash: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    chrome: Chrome,
    call_id: String,
    call: Option<CallView>,
    call_error: Option<String>,
    from: String,
    to: String,
    group_by: String,
    groups: Vec<(&'static str, &'static str)>,
    group_column: String,
    rows: Vec<AttributionRow>,
    total: Amount,
    total_calls: i64,
    pager: Pager,
    events: Vec<EventRow>,
    events_first: Option<String>,
    events_next: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    session: ConsoleSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params: AuditParams = data::parse_query(raw.as_deref())?;
    let reader = Reader::Org(Box::new(session.principal.clone()));
    let today = state.now().date_naive();
    let days =
        Days::from_params(given(params.from.as_ref()), given(params.to.as_ref()), today, DEFAULT_DAYS, MAX_DAYS)?;
    let group_by = given(params.group_by.as_ref()).unwrap_or("agent").to_owned();
    let (_, group_column) = GROUPS
        .iter()
        .find(|(key, _)| *key == group_by)
        .ok_or_else(|| ConsoleError::bad_form("group_by must be one of agent, act_for, model, api_key or day"))?;

    // The call looked up: a call id that is malformed or not this org's is said on the
    // page (400, 404), the rest of the page still shown.
    let call_id = given(params.call_id.as_ref()).unwrap_or_default().to_owned();
    let (mut status, mut call, mut call_error) = (StatusCode::OK, None, None);
    if !call_id.is_empty() {
        match audit::call(&state, &reader, &call_id).await {
            Ok(answer) => call = Some(call_view(&answer)?),
            Err(error @ (AppError::NotFound(_) | AppError::Invalid { .. })) => {
                status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
                call_error = Some(error.to_string());
            }
            Err(error) => return Err(error.into()),
        }
    }

    let attribution = audit::attribution(
        &state,
        &reader,
        AttributionQuery {
            from: Some(days.from.to_string()),
            to: Some(days.to.to_string()),
            group_by: Some(group_by.clone()),
            org_id: None,
        },
    )
    .await?;
    let mut rows = Vec::new();
    for row in attribution["rows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        rows.push(AttributionRow {
            name: group_name(&row[group_by.as_str()], &group_by),
            calls: int(&row["calls"]),
            input_tokens: int(&row["input_tokens"]),
            output_tokens: int(&row["output_tokens"]),
            cost: Amount::at(&row["cost"])?,
        });
    }
    let total = Amount::at(&attribution["totals"]["cost"])?;
    let total_calls = int(&attribution["totals"]["calls"]);
    let here = |page: Option<usize>, after: Option<i64>| {
        data::link(
            "/console/audit",
            &AuditParams {
                call_id: (!call_id.is_empty()).then(|| call_id.clone()),
                from: Some(days.from.to_string()),
                to: Some(days.to.to_string()),
                group_by: Some(group_by.clone()),
                page,
                after,
            },
        )
    };
    let (rows, pager) = data::paginate(rows, params.page.unwrap_or(1), |page| here(Some(page), params.after))?;

    let log =
        audit::events(&state, &reader, EventsQuery { after: params.after, limit: Some(EVENTS_PAGE), org_id: None })
            .await?;
    let mut events = Vec::new();
    for event in log["data"].as_array().map(Vec::as_slice).unwrap_or_default() {
        events.push(EventRow {
            position: int(&event["position"]),
            kind: text(&event["type"]),
            recorded_at: moment(&event["recorded_at"]),
            data: serde_json::to_string_pretty(&event["data"]).unwrap_or_default(),
            hash: text(&event["hash"]),
        });
    }
    let events_next = match (log["has_more"].as_bool(), log["next_after"].as_i64()) {
        (Some(true), Some(next)) => Some(here(params.page, Some(next))),
        _ => None,
    };
    let events_first = params.after.filter(|after| *after > 0).map(|_| here(params.page, None));

    let page = AuditPage {
        chrome: session.chrome("audit"),
        call_id,
        call,
        call_error,
        from: days.from.to_string(),
        to: days.to.to_string(),
        group_by,
        groups: GROUPS.to_vec(),
        group_column: (*group_column).to_owned(),
        rows,
        total,
        total_calls,
        pager,
        events,
        events_first,
        events_next,
    };
    Ok(render_with_status(status, &page))
}

fn group_name(value: &Value, key: &str) -> String {
    match key {
        "agent" if value.is_null() => "no agent (API key or session)".to_owned(),
        "agent" => {
            let (id, name) = (text(&value["id"]), text(&value["name"]));
            if name.is_empty() { id } else { format!("{name} ({id})") }
        }
        _ if value.is_null() => "none".to_owned(),
        _ => text(value),
    }
}

fn call_view(answer: &Value) -> Result<CallView, ConsoleError> {
    let events = answer["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|event| CallEvent {
            position: int(&event["position"]),
            kind: text(&event["type"]),
            hash: text(&event["hash"]),
        })
        .collect();
    Ok(CallView {
        call_id: text(&answer["call_id"]),
        agent: text(&answer["agent"]["name"]),
        agent_id: text(&answer["agent"]["id"]),
        act_for: text(&answer["act_for"]),
        payer: text(&answer["payer_org_id"]),
        credential_kind: text(&answer["credential"]["kind"]),
        credential_id: text(&answer["credential"]["id"]),
        model: text(&answer["model"]),
        input_tokens: int(&answer["input_tokens"]),
        output_tokens: int(&answer["output_tokens"]),
        cost: Amount::at(&answer["cost"])?,
        hold: Amount::at(&answer["hold"])?,
        status: text(&answer["status"]),
        usage_source: text(&answer["usage_source"]),
        authorized_at: moment(&answer["authorized_at"]),
        settled_at: moment(&answer["settled_at"]),
        events,
    })
}
