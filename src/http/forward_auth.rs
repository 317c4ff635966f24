//! Forward-auth on HTTP, for an operator's own gateway: `/v1/forward-auth` (nginx
//! `auth_request`, Traefik `forwardAuth`) and `/v1/forward-auth/{*original path}` (Envoy's
//! `ext_authz` HTTP service appends the original path), any method. Allowed: 200, an empty
//! body and the call in `x-bahi-*` headers for the gateway to forward upstream. Denied: the
//! contract's error, its reason in headers too (gateways pass headers on, not bodies), and
//! under `?gateway=nginx` only 401 or 403, the two statuses nginx's `auth_request` passes
//! on (any other becomes its own 500), with the real status in `x-bahi-status`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Deserialize;

use super::AppState;
use super::auth::presented_credential_only;
use super::error::{ApiError, rate_limit_headers};
use super::extract::ApiQuery;
use crate::app::forward_auth::{self, ForwardAuth, ForwardAuthorized};

/// Where Envoy's path prefix ends and the original path begins.
const PATH: &str = "/v1/forward-auth";

/// Longest `x-bahi-error-message`: a reason, not a document.
const MAX_MESSAGE_BYTES: usize = 512;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(PATH, any(forward_auth_request))
        // A catch-all matches no empty rest: Envoy asking about the gateway's root ("/")
        // needs its own route.
        .route("/v1/forward-auth/", any(forward_auth_with_original_path))
        .route("/v1/forward-auth/{*original_path}", any(forward_auth_with_original_path))
}

/// Which gateway asks, where that changes the answer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Gateway {
    /// Every denial 401 (credential) or 403 (anything else).
    Nginx,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardAuthQuery {
    gateway: Option<Gateway>,
}

/// nginx and Traefik: the original method and URI come in headers. The query string is
/// bahi's own (`?gateway=nginx`): nginx sends the auth subrequest without the client's.
async fn forward_auth_request(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    query: Result<ApiQuery<ForwardAuthQuery>, ApiError>,
) -> Response {
    let gateway = match query {
        Ok(ApiQuery(query)) => query.gateway,
        Err(error) => return denied(error, None),
    };
    respond(authorize(&state, &headers, &method, None).await, gateway)
}

/// Envoy: the original path (and query string, which is the client's and so never read as
/// bahi's parameters) follows the prefix, and the method is the original one.
async fn forward_auth_with_original_path(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let original_path = uri.path_and_query().map_or("", |path| path.as_str());
    let original_uri = original_path.strip_prefix(PATH).unwrap_or(original_path).to_owned();
    respond(authorize(&state, &headers, &method, Some(original_uri)).await, None)
}

async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path_suffix: Option<String>,
) -> Result<ForwardAuthorized, ApiError> {
    let request = request_from(headers, method, path_suffix)?;
    Ok(forward_auth::authorize(state, request).await?)
}

/// The first of `names` present, as text (lossily: it is only logged).
fn logged_header(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| headers.get(*name)).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// What the gateway tells about the original request: its credential (never a session
/// cookie: a browser's console cookie reaching a gateway must not spend the org's credit),
/// the model it calls, and its method and URI (nginx's `X-Original-*` first, then Traefik's
/// `X-Forwarded-*`, then what this request itself shows).
fn request_from(headers: &HeaderMap, method: &Method, path_suffix: Option<String>) -> Result<ForwardAuth, ApiError> {
    let presented = presented_credential_only(headers)?;
    let mut models = headers.get_all("x-bahi-model").iter();
    let model = models
        .next()
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::invalid_request("x-bahi-model must be printable text"))
        })
        .transpose()?;
    // A gateway that appends rather than replaces would let the client add a model of its
    // own; which one to price is then a guess, so neither is.
    if models.next().is_some() {
        return Err(ApiError::invalid_request(
            "x-bahi-model appears more than once; the gateway must set it exactly once",
        ));
    }
    let original_method = logged_header(headers, &["x-original-method", "x-forwarded-method"])
        .unwrap_or_else(|| method.as_str().to_owned());
    let original_uri = logged_header(headers, &["x-original-uri", "x-forwarded-uri"]).or(path_suffix);
    Ok(ForwardAuth { presented, model, original_method: Some(original_method), original_uri })
}

fn respond(answer: Result<ForwardAuthorized, ApiError>, gateway: Option<Gateway>) -> Response {
    match answer {
        Ok(allowed) => allowed_response(allowed),
        Err(error) => denied(error, gateway),
    }
}

/// Text as a header value: bytes outside printable ASCII (and `%`) percent-encoded, so an
/// external agent's subject or `act_for` in any script still travels intact.
fn encoded_header(text: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static(""))
}

fn allowed_response(allowed: ForwardAuthorized) -> Response {
    let authorized = allowed.authorized;
    let mut headers = HeaderMap::new();
    headers.insert("x-bahi-call-id", encoded_header(authorized.call_id.as_str()));
    headers.insert("x-bahi-org-id", encoded_header(authorized.org_id.as_str()));
    if let Some(agent_id) = &authorized.agent_id {
        headers.insert("x-bahi-agent-id", encoded_header(agent_id));
    }
    headers.insert("x-bahi-act-for", encoded_header(&authorized.act_for));
    for (name, value) in rate_limit_headers(&allowed.rate) {
        headers.insert(name, value);
    }
    (StatusCode::OK, headers).into_response()
}

/// A message a gateway can put in a header or a JSON string as it is: printable ASCII
/// without quotes or backslashes, at most `MAX_MESSAGE_BYTES`.
fn header_message(message: &str) -> HeaderValue {
    let text: String = message
        .chars()
        .map(|character| match character {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => character,
            _ => '?',
        })
        .take(MAX_MESSAGE_BYTES)
        .collect();
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("see the response body"))
}

/// The contract's error, with `x-bahi-status`, `x-bahi-error-code` and
/// `x-bahi-error-message`; for nginx, its status narrowed to 401 or 403.
fn denied(mut error: ApiError, gateway: Option<Gateway>) -> Response {
    let real_status = error.status;
    error.headers.push((HeaderName::from_static("x-bahi-status"), HeaderValue::from(real_status.as_u16())));
    error.headers.push((HeaderName::from_static("x-bahi-error-code"), HeaderValue::from_static(error.code)));
    error.headers.push((HeaderName::from_static("x-bahi-error-message"), header_message(&error.message)));
    if gateway == Some(Gateway::Nginx) && real_status != StatusCode::UNAUTHORIZED {
        error.status = StatusCode::FORBIDDEN;
    }
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_in_any_script_travel_percent_encoded_and_intact() {
        assert_eq!(encoded_header("agt_0Ab9").to_str().ok(), Some("agt_0Ab9"));
        assert_eq!(
            encoded_header("iss_1:José Ñ%\r\nx-evil: 1").to_str().ok(),
            Some("iss_1:Jos%C3%A9%20%C3%91%25%0D%0Ax-evil:%201")
        );
    }

    #[test]
    fn error_messages_fit_a_header_and_a_json_string() {
        let message = header_message("must be \"Bearer <key>\"\\ ₹\r\nx-evil: 1");
        assert_eq!(message.to_str().ok(), Some("must be 'Bearer <key>'/ ???x-evil: 1"));
        assert_eq!(header_message(&"a".repeat(10_000)).len(), MAX_MESSAGE_BYTES);
    }
}
