//! The HTTP surface (axum). Thin handlers: each area's module has a `router()`; handlers
//! extract, call one use case of `crate::app`, and map the answer. They never read the
//! ledger, the store or the clock themselves (`tests/architecture.rs` checks it).

pub mod accounts;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod error;
pub mod extract;
pub mod forward_auth;
pub mod health;
pub mod humans;
pub mod issuers;
pub mod keys;
pub mod models;
pub mod openapi;
pub mod proxy;
pub mod statements;
pub mod test_clock;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

use crate::app::Services;
use error::{ApiError, REQUEST_ID};
use extract::MAX_BODY_BYTES;

/// What every handler can reach, behind one `Arc`: the node's services. axum clones the
/// state for every layer and extractor of every request; one reference count is all it
/// clones.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl AppState {
    /// The services behind the state, for a use case that outlives the request (the proxy's
    /// upstream task).
    pub fn services(&self) -> &Arc<Services> {
        &self.0
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The node's whole router: the JSON API, MCP, and `pages` (the console, which lives in a
/// surface of its own and is handed in by the server) behind one request-id layer.
pub fn router(state: AppState, pages: Router<AppState>) -> Router {
    Router::new()
        .merge(health::router())
        .merge(openapi::router())
        .merge(accounts::router(&state))
        .merge(keys::router(&state))
        .merge(humans::router(&state))
        .merge(agents::router(&state))
        .merge(issuers::router(&state))
        .merge(audit::router(&state))
        .merge(statements::router(&state))
        .merge(billing::router(&state))
        .merge(models::router(&state))
        .merge(proxy::router())
        .merge(forward_auth::router())
        // Pages of another surface (the console), over the same state and middleware.
        .merge(pages)
        // MCP over streamable HTTP: the same use cases as tools, behind the same credentials.
        .merge(mcp_router(&state))
        .merge(test_clock::router(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// The MCP endpoint (`crate::mcp`) behind the credential layer that names its caller.
fn mcp_router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route_service("/mcp", crate::mcp::service(state.services().clone()))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate_mcp))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not accept that method")
}

/// Longest client-supplied request id that is echoed back instead of replaced.
const MAX_REQUEST_ID_LENGTH: usize = 128;

fn request_id_for(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty()
                && value.len() <= MAX_REQUEST_ID_LENGTH
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

fn new_request_id() -> String {
    format!("req_{}", bahi_domain::ids::base62(&crate::identity::random_bytes::<12>()))
}

/// Gives every request an id (the client's, when well-formed), a tracing span, and the
/// `x-request-id` and `request-id` response headers; counts responses by status class.
async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = request_id_for(&request);
    // A debug span: nothing inside a request logs at info, and the one error it can log
    // (an internal error) names its request id itself. An info span had its three fields
    // formatted by the fmt layer on every request whatever was logged (2.7% of the node's
    // CPU under authorize+usage load, perf); RUST_LOG=debug brings it back with every event.
    let span = tracing::debug_span!("request", request_id = %request_id, method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let mut response = REQUEST_ID.scope(request_id.clone(), next.run(request).instrument(span.clone())).await;
    let status = response.status().as_u16();
    state.metrics.record_status(status);
    span.in_scope(|| tracing::debug!(status, elapsed_micros = started.elapsed().as_micros() as u64, "response"));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        // `request-id` too: the Anthropic SDK reads that name, OpenAI's and most tools `x-request-id`.
        response.headers_mut().insert("request-id", value.clone());
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
