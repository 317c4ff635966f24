//! `POST /v1/admin/test-clock/advance`: moves a test node's clock forward. Routed only
//! under `bahi serve --test-clock`, for the operator credential alone; any other server
//! answers 404 as for any unknown path.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiResult;
use super::extract::ApiJson;
use crate::app::Operator;

pub fn router(state: &AppState) -> Router<AppState> {
    match state.test_clock {
        Some(_) => Router::new().route("/v1/admin/test-clock/advance", post(advance)),
        None => Router::new(),
    }
}

/// `pub(super)`: the OpenAPI document describes it too.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Advance {
    seconds: i64,
}

/// `pub(super)`: the OpenAPI document describes it too.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct Advanced {
    #[serde(serialize_with = "crate::app::time::micros")]
    now: DateTime<Utc>,
}

async fn advance(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<Advance>,
) -> ApiResult<Json<Advanced>> {
    Ok(Json(Advanced { now: state.advance_test_clock(&operator, request.seconds)? }))
}
