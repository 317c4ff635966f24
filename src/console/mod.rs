//! The web console: server-rendered pages (askama templates compiled into the binary, htmx
//! vendored beside them) over the same `app` use cases as the JSON API and MCP. A page
//! handler extracts a `ConsoleSession`, calls one use case, and renders; a form handler
//! extracts a `ConsoleForm` (session + CSRF check), calls one use case, and redirects or
//! renders the page again with the error. Nothing here reads the ledger, the store or the
//! clock (`tests/architecture.rs`).
//!
//! Every answer carries a Content-Security-Policy without inline scripts or styles, and is
//! never cached: pages show balances and secrets.

pub mod agents;
pub mod assets;
pub mod audit;
pub mod credits;
pub mod data;
pub mod error;
pub mod format;
pub mod home;
pub mod issuers;
pub mod keys;
pub mod login;
pub mod manage;
pub mod members;
pub mod session;
pub mod statements;
pub mod usage;

use askama::Template;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::AppState;
pub use error::ConsoleError;
pub use session::{Chrome, ConsoleForm, ConsoleSession, Nav};

/// Where the console lives; every page's path starts with it.
pub const CONSOLE_ROOT: &str = "/console";

/// Scripts and styles only from bahi itself, no inline code, forms only to bahi, never in
/// a frame. `img-src data:` is for nothing yet but icons; charts are inline SVG.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: &AppState) -> Router<AppState> {
    let _ = state;
    Router::new()
        .route("/", get(|| async { Redirect::to(CONSOLE_ROOT) }))
        .route(CONSOLE_ROOT, get(home::page))
        .route("/console/usage", get(usage::page))
        .route("/console/audit", get(audit::page))
        .route("/console/statements", get(statements::page))
        .route("/console/statements/download", get(statements::download))
        .merge(assets::router())
        .merge(login::router())
        .merge(agents::router())
        .merge(keys::router())
        .merge(credits::router())
        .merge(members::router())
        .merge(issuers::router())
        .layer(middleware::from_fn(security_headers))
}

/// The headers every console answer carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with(assets::ASSETS_PATH);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null`
    // with every form post, and `check_same_origin` refuses it (no form worked in chromium).
    // Other sites still get no referrer.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Renders a template as the page's HTML; a template that fails to render is a bug, logged
/// and shown as the generic error page.
pub fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => ConsoleError::internal(error).into_response(),
    }
}

/// Renders a template with a status other than 200 (a form shown again with its error).
pub fn render_with_status(status: axum::http::StatusCode, template: &impl Template) -> Response {
    let mut response = render(template);
    if response.status().is_success() {
        *response.status_mut() = status;
    }
    response
}

/// A 303 to another console page, the answer to a form that worked (post/redirect/get).
pub fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}
