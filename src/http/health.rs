//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(health)).route("/readyz", get(health)).route("/metrics", get(metrics))
}

/// `/healthz` and `/readyz`: 200 `ok` while the node folds the log as it grows; 503
/// `not_ready`, naming the position and why, once it met an event it cannot fold (it then
/// answers no command: its writer cannot append after that event).
async fn health(State(state): State<AppState>) -> Response {
    let (position, fault) = {
        let ledger = state.ledger.read();
        (ledger.position, ledger.fault.get().cloned())
    };
    let engine = state.store.engine();
    match fault {
        None => Json(json!({"status": "ok", "engine": engine, "log_position": position})).into_response(),
        Some(fault) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "engine": engine,
                "log_position": position,
                "unreadable_position": fault.position,
                "reason": fault.to_string(),
            })),
        )
            .into_response(),
    }
}

pub struct Metrics(pub String);

async fn metrics(State(state): State<AppState>) -> Metrics {
    Metrics(state.metrics.render())
}

impl IntoResponse for Metrics {
    fn into_response(self) -> Response {
        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], self.0).into_response()
    }
}
