//! Forward authentication for an operator's own gateway (nginx `auth_request`, Envoy
//! `ext_authz`, Traefik `forwardAuth`): the gateway asks bahi about each request it is about
//! to serve, with the caller's credential headers and the model, and bahi answers with the
//! same authorization as `POST /v1/authorize` (a hold through the writer). Only the
//! request's head is read: an auth subrequest carries no body.

use bahi_domain::rate_limit::RateDecision;

use super::billing::{self, Authorize, Authorized};
use super::principal;
use super::{AppError, AppResult, Presented, Services};

/// Longest original method or URI kept for the log: the head may be up to 96 KiB, and a
/// log line is not the place to store it.
const MAX_LOGGED_CHARACTERS: usize = 2048;

/// What a gateway sends about the request it is deciding on.
#[derive(Debug, Default)]
pub struct ForwardAuth {
    /// The credential of the original request (`Authorization: Bearer` or `x-api-key`).
    pub presented: Presented,
    /// The model the original request calls, as the gateway names it (`x-bahi-model`).
    pub model: Option<String>,
    /// The original request's method and URI, for the log only.
    pub original_method: Option<String>,
    pub original_uri: Option<String>,
}

/// An allowed request: the authorization, and the caller's rate-limit state after it.
#[derive(Debug)]
pub struct ForwardAuthorized {
    pub authorized: Authorized,
    pub rate: RateDecision,
}

fn for_the_log(text: Option<&str>) -> &str {
    let text = text.unwrap_or("-");
    match text.char_indices().nth(MAX_LOGGED_CHARACTERS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Resolves the credential, takes one request from its rate limit, and authorizes the
/// model exactly as `POST /v1/authorize` does (scope, rate limit, budget, credit, hold).
pub async fn authorize(services: &Services, request: ForwardAuth) -> AppResult<ForwardAuthorized> {
    // Without this, resolve's message would suggest a session cookie, which forward-auth
    // never accepts (see `crate::http::forward_auth`).
    if request.presented.credential.is_none() {
        return Err(AppError::unauthorized(
            "no credential: the original request must carry \"Authorization: Bearer <key or token>\" or \"x-api-key: <key>\"",
        ));
    }
    let (principal, rate) = principal::admit(services, &request.presented).await?;
    let model = request.model.ok_or_else(|| {
        AppError::invalid_request(
            "no model: the gateway must set the x-bahi-model header to the model the request calls",
        )
    })?;
    tracing::debug!(
        original_method = ?for_the_log(request.original_method.as_deref()),
        original_uri = ?for_the_log(request.original_uri.as_deref()),
        %model,
        "forward-auth"
    );
    let authorized = billing::authorize(services, &principal, Authorize { model, max_cost: None }).await?;
    Ok(ForwardAuthorized { authorized, rate })
}
