//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::app::health;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(health)).route("/readyz", get(health)).route("/metrics", get(metrics))
}

/// `/healthz` and `/readyz`: 200 `ok`, or 503 `not_ready` naming the unreadable position.
async fn health(State(state): State<AppState>) -> Response {
    let health = health::health(&state);
    let status = if health.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
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
