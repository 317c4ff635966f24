//! The HTTP surface (axum). Thin handlers: each area's module has a `router()`; handlers
//! extract, call the writer or read the ledger, and map the answer.

pub mod accounts;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod error;
pub mod extract;
pub mod health;
pub mod humans;
pub mod issuers;
pub mod keys;
pub mod statements;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

use crate::config::ServerConfig;
use crate::identity::Identity;
use crate::ledger::SharedLedger;
use crate::limits::{KeyUses, RateLimiter};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::writer::Writer;
use error::{ApiError, REQUEST_ID};
use extract::MAX_BODY_BYTES;

/// The context of a command submitted while handling a request: who acts, and the request
/// id, both kept in the events' metadata.
pub fn command_context(actor: crate::ledger::Actor) -> crate::writer::CommandContext {
    crate::writer::CommandContext {
        actor: Some(actor),
        request_id: Some(error::current_request_id()),
        idempotency: None,
    }
}

/// What `find` finds in this node's read model; on a miss, what it finds once the read
/// model holds the log up to its head. On PostgreSQL another node may have made the thing a
/// moment ago, and a 404 or 401 is final to a client: only a miss at the head may answer so.
/// A hit costs nothing more; a miss, one trip through the writer.
pub async fn find_at_head<T>(
    state: &AppState,
    find: impl Fn(&crate::ledger::Ledger) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    let found = find(&state.ledger.read());
    if found.is_some() {
        return Ok(found);
    }
    state.writer.reach_head().await?;
    Ok(find(&state.ledger.read()))
}

/// What every handler can reach, behind one `Arc`. axum clones the state for every layer
/// and extractor of every request; cloned field by field (a dozen reference counts shared by
/// both cores, a writer queue handle, the store's paths), the clones and drops took 6% of
/// the CPU under authorize+usage load (perf, `bahi bench http`).
#[derive(Clone)]
pub struct AppState(Arc<NodeState>);

impl AppState {
    pub fn new(state: NodeState) -> AppState {
        AppState(Arc::new(state))
    }
}

impl std::ops::Deref for AppState {
    type Target = NodeState;

    fn deref(&self) -> &NodeState {
        &self.0
    }
}

/// The node's handles: the writer, the shared ledger, the store and the request-path state.
pub struct NodeState {
    pub writer: Writer,
    pub ledger: SharedLedger,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
    pub store: Store,
    pub rate_limiter: Arc<RateLimiter>,
    pub key_uses: Arc<KeyUses>,
    pub identity: Arc<Identity>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(accounts::router(&state))
        .merge(keys::router(&state))
        .merge(humans::router(&state))
        .merge(agents::router(&state))
        .merge(issuers::router(&state))
        .merge(audit::router(&state))
        .merge(statements::router(&state))
        .merge(billing::router(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
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
        .unwrap_or_else(|| format!("req_{}", bahi_domain::ids::base62(&crate::identity::random_bytes::<12>())))
}

/// Gives every request an id (the client's, when well-formed), a tracing span, and the
/// `x-request-id` response header; counts responses by status class.
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
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
