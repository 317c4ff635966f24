//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::app::health;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(liveness)).route("/readyz", get(readiness)).route("/metrics", get(metrics))
}

/// `/healthz`: 200 `ok`, or 503 `not_ready` naming the unreadable position.
async fn liveness(State(state): State<AppState>) -> Response {
    answer(health::health(&state))
}

/// `/readyz`: as `/healthz`, and 503 while a PostgreSQL node's tailer is behind or failing.
async fn readiness(State(state): State<AppState>) -> Response {
    answer(health::readiness(&state))
}

fn answer(health: health::Health) -> Response {
    let status = if health.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health)).into_response()
}

pub struct Metrics(pub String);

async fn metrics(State(state): State<AppState>) -> Metrics {
    Metrics(health::metrics(&state))
}

impl IntoResponse for Metrics {
    fn into_response(self) -> Response {
        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], self.0).into_response()
    }
}
