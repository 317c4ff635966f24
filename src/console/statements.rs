//! Statements: pick a period, read the statement (opening balance, its rows a page at a
//! time, closing balance, opening + credits - debits = closing exactly), and download it as
//! CSV or JSON: the same bytes as `GET /v1/statements`, as an attachment.

use askama::Template;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::data::{self, Amount, Days, Pager, given, int, moment, text};
use super::format::Moment;
use super::{Chrome, ConsoleError, ConsoleSession, render};
use crate::app::Reader;
use crate::app::statements::{self, StatementQuery};
use crate::http::AppState;

/// The period when none is given: the last 30 days.
const DEFAULT_DAYS: u64 = 30;
/// The longest period the page reads (a download is not bounded beyond the API's own).
const MAX_DAYS: i64 = 3660;

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct StatementParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DownloadParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub format: Option<String>,
}

pub struct EntryRow {
    pub position: i64,
    pub occurred_at: Option<Moment>,
    pub kind: String,
    pub description: String,
    pub call_id: String,
    pub debit: Amount,
    pub credit: Amount,
    pub balance: Amount,
}

#[derive(Template)]
#[template(path = "console/statements.html")]
struct StatementPage {
    chrome: Chrome,
    from: String,
    to: String,
    opening: Amount,
    credits: Amount,
    debits: Amount,
    closing: Amount,
    entries: i64,
    rows: Vec<EntryRow>,
    pager: Pager,
    csv_link: String,
    json_link: String,
}

fn reader(session: &ConsoleSession) -> Reader {
    Reader::Org(Box::new(session.principal.clone()))
}

pub async fn page(
    State(state): State<AppState>,
    session: ConsoleSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params: StatementParams = data::parse_query(raw.as_deref())?;
    let today = state.now().date_naive();
    let days =
        Days::from_params(given(params.from.as_ref()), given(params.to.as_ref()), today, DEFAULT_DAYS, MAX_DAYS)?;
    let (from, to) = (days.from.to_string(), days.to.to_string());
    let statement = statements::statement(
        &state,
        &reader(&session),
        StatementQuery { from: Some(from.clone()), to: Some(to.clone()), format: Some("json".into()), org_id: None },
    )
    .await?;
    let bytes: Vec<Vec<u8>> = statement.chunks.try_collect().await.map_err(ConsoleError::internal)?;
    let document: Value = serde_json::from_slice(&bytes.concat()).map_err(ConsoleError::internal)?;
    if let Some(error) = document.get("error") {
        return Err(ConsoleError::internal(format!("statement incomplete: {error}")));
    }
    let mut rows = Vec::new();
    for row in document["rows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        rows.push(EntryRow {
            position: int(&row["position"]),
            occurred_at: moment(&row["occurred_at"]),
            kind: text(&row["type"]),
            description: text(&row["description"]),
            call_id: text(&row["call_id"]),
            debit: Amount::at(&row["debit"])?,
            credit: Amount::at(&row["credit"])?,
            balance: Amount::at(&row["balance"])?,
        });
    }
    let link_to = |page: usize| {
        data::link(
            "/console/statements",
            &StatementParams { from: Some(from.clone()), to: Some(to.clone()), page: Some(page) },
        )
    };
    let (rows, pager) = data::paginate(rows, params.page.unwrap_or(1), link_to)?;
    let download = |format: &str| format!("/console/statements/download?from={from}&to={to}&format={format}");
    let page = StatementPage {
        chrome: session.chrome("statements"),
        opening: Amount::at(&document["opening_balance"])?,
        credits: Amount::at(&document["total_credits"])?,
        debits: Amount::at(&document["total_debits"])?,
        closing: Amount::at(&document["closing_balance"])?,
        entries: int(&document["entries"]),
        rows,
        pager,
        csv_link: download("csv"),
        json_link: download("json"),
        from,
        to,
    };
    Ok(render(&page))
}

/// The statement as a file: what `GET /v1/statements` answers, byte for byte, as an
/// attachment whatever its format.
pub async fn download(
    State(state): State<AppState>,
    session: ConsoleSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params: DownloadParams = data::parse_query(raw.as_deref())?;
    let format = given(params.format.as_ref()).unwrap_or("csv");
    if !matches!(format, "csv" | "json") {
        return Err(ConsoleError::bad_form("format must be csv or json"));
    }
    let request = StatementQuery {
        from: given(params.from.as_ref()).map(str::to_owned),
        to: given(params.to.as_ref()).map(str::to_owned),
        format: Some(format.to_owned()),
        org_id: None,
    };
    let statement = statements::statement(&state, &reader(&session), request).await?;
    let mut response = Body::from_stream(statement.chunks.map_ok(axum::body::Bytes::from)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(statement.format.content_type()));
    let disposition = format!("attachment; filename=\"{}\"", statement.file_name);
    let value = HeaderValue::from_str(&disposition).map_err(ConsoleError::internal)?;
    headers.insert(header::CONTENT_DISPOSITION, value);
    Ok(response)
}
