//! Credentials on HTTP: which credential a request presents (`Authorization: Bearer`,
//! `x-api-key` or the `bahi_session` cookie), the `authenticate` route layer (resolve,
//! rate-limit, run, add the rate-limit headers), and the `Principal`, `Operator` and
//! `Reader` extractors. Who the credential is, is decided in `app::principal`.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, current_request_id, rate_limit_headers};
use crate::app::principal::{self, looks_like_token};
use crate::app::{Operator, Presented, Principal, Reader};
use crate::mcp::Caller;

/// Name of the console session cookie.
pub const SESSION_COOKIE: &str = "bahi_session";

/// The credential text a request presents in `Authorization: Bearer` or `x-api-key`.
fn presented_header_credential(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let credential = header_credential(headers)?;
    // Tokens travel only as Bearer, so a token copied into a key's header is never honoured.
    if headers.contains_key("x-api-key") && credential.as_deref().is_some_and(looks_like_token) {
        return Err(ApiError::unauthorized(
            "x-api-key carries API keys only; send an agent token as \"Authorization: Bearer <token>\"",
        ));
    }
    Ok(credential)
}

/// What a proxied call presents: a key or an agent token in either header (the Anthropic
/// SDKs have sent their API key as `x-api-key`), never a session cookie (a browser's
/// console cookie must not spend the org's credit on inference).
pub fn presented_for_proxy(headers: &HeaderMap) -> Result<Presented, ApiError> {
    Ok(Presented { credential: header_credential(headers)?, session_cookie: None })
}

/// The credential in `Authorization: Bearer` or `x-api-key` (the same one if both).
fn header_credential(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let bearer = match headers.get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
            let (scheme, token) = text
                .split_once(' ')
                .ok_or_else(|| ApiError::unauthorized("Authorization header must be \"Bearer <credential>\""))?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(ApiError::unauthorized("Authorization header must be \"Bearer <credential>\""));
            }
            Some(token.trim().to_owned())
        }
    };
    let api_key_header = match headers.get("x-api-key") {
        None => None,
        Some(value) => {
            Some(value.to_str().map_err(|_| ApiError::unauthorized("malformed x-api-key header"))?.trim().to_owned())
        }
    };
    match (bearer, api_key_header) {
        (Some(bearer), Some(key)) if bearer != key => {
            Err(ApiError::unauthorized("send exactly one credential: Authorization and x-api-key differ"))
        }
        (Some(credential), _) | (None, Some(credential)) => Ok(Some(credential)),
        (None, None) => Ok(None),
    }
}

/// The value of the `bahi_session` cookie, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The value of the named cookie, if any (the console's pre-login CSRF cookie too).
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(cookie_name, _)| *cookie_name == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// What the request presents: its header credential, and its session cookie.
pub fn presented(headers: &HeaderMap) -> Result<Presented, ApiError> {
    Ok(Presented { credential: presented_header_credential(headers)?, session_cookie: session_cookie(headers) })
}

/// What the request presents in `Authorization` or `x-api-key` alone, never its session
/// cookie: forward-auth reads the headers a gateway passes on from any client, and a
/// browser's console cookie reaching a gateway must not spend the org's credit.
pub fn presented_credential_only(headers: &HeaderMap) -> Result<Presented, ApiError> {
    Ok(Presented { credential: presented_header_credential(headers)?, session_cookie: None })
}

/// Route layer of every authenticated route: resolve, rate-limit, run, add the headers.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let admitted = match presented(request.headers()) {
        Ok(presented) => principal::admit(&state, &presented).await.map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let (principal, decision) = match admitted {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    for (name, value) in rate_limit_headers(&decision) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Layer of `/mcp`: the credential of `Authorization: Bearer` or `x-api-key` (never a
/// session cookie: MCP has no console sessions, and a browser's cookie must not drive
/// tools), resolved and rate-limited as on every route, handed to the MCP tools as their
/// `Caller`. Without a valid one: 401 in the contract's shape, before any MCP parsing.
pub async fn authenticate_mcp(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let principal = match presented_credential_only(request.headers()) {
        Ok(Presented { credential: None, .. }) => {
            Err(ApiError::unauthorized("no credential: send \"Authorization: Bearer <API key or agent token>\""))
        }
        Ok(presented) => principal::admit(&state, &presented).await.map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let (principal, decision) = match principal {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    request.extensions_mut().insert(Caller { principal, request_id: current_request_id() });
    let mut response = in_contract_shape(next.run(request).await).await;
    for (name, value) in rate_limit_headers(&decision) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// rmcp refuses what is not MCP (a GET, a body that is not JSON, a missing `Accept`) with
/// plain text; bahi answers every error in the contract's JSON shape, so that text becomes
/// the message of one. JSON-RPC errors (JSON already) and answers pass through.
async fn in_contract_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status.as_u16() {
        400 => "invalid_json",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        413 => "request_too_large",
        415 => "unsupported_media_type",
        500..=599 => "internal_error",
        _ => "invalid_request",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REFUSAL_BYTES).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("refused").to_owned(),
        text => text.to_owned(),
    };
    let mut error = ApiError::new(status, code, message);
    // Keep what the refusal says besides its body (`allow` on a 405).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            error = error.with_header(name.clone(), value.clone());
        }
    }
    error.into_response()
}

/// Longest plain-text refusal of rmcp's that is read into a message.
const MAX_REFUSAL_BYTES: usize = 4096;

async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    Ok(principal::resolve(state, &presented(headers)?).await?)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Principal, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(principal) => Ok(principal.clone()),
            // A route outside the authenticate layer asked for a principal: resolve it here
            // (without rate limiting) rather than fail.
            None => resolve(state, &parts.headers).await,
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Operator, ApiError> {
        Ok(principal::resolve_operator(state, &presented(&parts.headers)?).await?)
    }
}

/// Route layer of audit and statement routes: the operator key passes as `Reader::Operator`;
/// anything else goes through the ordinary `authenticate` (rate limit included).
pub async fn authenticate_reader(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let operator = presented_header_credential(request.headers())
        .ok()
        .flatten()
        .is_some_and(|credential| principal::is_operator_credential(&state, &credential));
    if operator {
        request.extensions_mut().insert(Reader::Operator);
        return next.run(request).await;
    }
    authenticate(State(state), request, next).await
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Reader, ApiError> {
        if let Some(reader) = parts.extensions.get::<Reader>() {
            return Ok(reader.clone());
        }
        Principal::from_request_parts(parts, state).await.map(|principal| Reader::Org(Box::new(principal)))
    }
}
