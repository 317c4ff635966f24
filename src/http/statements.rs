//! `GET /v1/statements`: an org's INR statement for a period, streamed as CSV or JSON.

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bahi_domain::credential::Scope;
use bahi_reports::{StatementFormat, statement_period};
use futures::TryStreamExt;
use serde::Deserialize;

use super::AppState;
use super::audit::{Reader, authenticate_reader, query, wait_for_projection};
use super::error::{ApiError, ApiResult};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/statements", get(statement))
        .route_layer(from_fn_with_state(state.clone(), authenticate_reader))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementQuery {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    org_id: Option<String>,
}

async fn statement(
    State(state): State<AppState>,
    reader: Reader,
    raw: Result<Query<StatementQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let request = query(raw)?;
    let org_id = reader.org(&state, Scope::StatementsRead, request.org_id.as_deref())?;
    let (Some(from), Some(to)) = (request.from.as_deref(), request.to.as_deref()) else {
        return Err(ApiError::invalid_request("from and to are required (YYYY-MM-DD, both included)"));
    };
    let (from_date, to_date, period) =
        statement_period(from, to).map_err(|error| ApiError::invalid_request(error.to_string()))?;
    let format = StatementFormat::parse(request.format.as_deref().unwrap_or("json"))
        .map_err(|error| ApiError::invalid_request(error.to_string()))?;
    wait_for_projection(&state).await;
    let chunks = crate::finance::statement_stream(&state.store, org_id.as_str(), from_date, to_date, period, format)
        .await
        .map_err(ApiError::internal)?;
    let mut response = Body::from_stream(chunks.map_ok(axum::body::Bytes::from)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    if format == StatementFormat::Csv {
        let disposition = format!("attachment; filename=\"statement-{org_id}-{from_date}-{to_date}.csv\"");
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}
