//! `GET /v1/statements`: an org's INR statement for a period, streamed as CSV or JSON.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bahi_reports::StatementFormat;
use futures::TryStreamExt;

use super::AppState;
use super::auth::authenticate_reader;
use super::error::ApiResult;
use super::extract::ApiQuery;
use crate::app::Reader;
use crate::app::statements::{self, StatementQuery};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/statements", get(statement))
        .route_layer(from_fn_with_state(state.clone(), authenticate_reader))
}

async fn statement(
    State(state): State<AppState>,
    reader: Reader,
    ApiQuery(request): ApiQuery<StatementQuery>,
) -> ApiResult<Response> {
    let statement = statements::statement(&state, &reader, request).await?;
    let mut response = Body::from_stream(statement.chunks.map_ok(axum::body::Bytes::from)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(statement.format.content_type()));
    if statement.format == StatementFormat::Csv {
        let disposition = format!("attachment; filename=\"{}\"", statement.file_name);
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}
