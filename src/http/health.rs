//! Liveness and Prometheus metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics))
}

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let position = state.ledger.read().position;
    Json(json!({"status": "ok", "engine": state.store.engine(), "log_position": position}))
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
