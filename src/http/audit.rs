//! Audit on HTTP: `/v1/audit/calls/{call_id}`, `/v1/audit/attribution`, `/v1/audit/events`.

use axum::extract::{Path, State};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use super::auth::authenticate_reader;
use super::error::ApiResult;
use super::extract::ApiQuery;
use crate::app::Reader;
use crate::app::audit::{self, Attribution, AttributionQuery, CallView, EventPage, EventsQuery};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/audit/calls/{call_id}", get(call))
        .route("/v1/audit/attribution", get(attribution))
        .route("/v1/audit/events", get(events))
        .route_layer(from_fn_with_state(state.clone(), authenticate_reader))
}

async fn call(State(state): State<AppState>, reader: Reader, Path(call_id): Path<String>) -> ApiResult<Json<CallView>> {
    Ok(Json(audit::call(&state, &reader, &call_id).await?))
}

async fn attribution(
    State(state): State<AppState>,
    reader: Reader,
    ApiQuery(request): ApiQuery<AttributionQuery>,
) -> ApiResult<Json<Attribution>> {
    Ok(Json(audit::attribution(&state, &reader, request).await?))
}

async fn events(
    State(state): State<AppState>,
    reader: Reader,
    ApiQuery(request): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventPage>> {
    Ok(Json(audit::events(&state, &reader, request).await?))
}
