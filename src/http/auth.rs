//! Resolving a request's credential to a principal, in memory, without touching the
//! database: SHA-256 of the key, one hash-map lookup in the node's read model, checks of
//! environment, revocation and expiry.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use bahi_domain::credential::{Scope, SecretHash, parse_api_key};
use bahi_domain::ids::OrgId;
use chrono::Utc;

use super::AppState;
use super::error::ApiError;

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ApiKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
        }
    }
}

/// Who is calling: the org that pays, the credential used, and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org_id: OrgId,
    pub credential_kind: CredentialKind,
    pub credential_id: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Refuses with 403 unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "insufficient_scope",
                format!("this credential lacks the {} scope", scope.as_str()),
            ))
        }
    }

    pub fn actor(&self) -> crate::ledger::Actor {
        crate::ledger::Actor::new(self.credential_kind.as_str(), self.credential_id.clone())
    }
}

/// The credential text a request presents, from `Authorization: Bearer` or `x-api-key`.
fn presented_credential(headers: &HeaderMap) -> Result<String, ApiError> {
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
        (Some(credential), _) | (None, Some(credential)) => Ok(credential),
        (None, None) => {
            Err(ApiError::unauthorized("no credential: send \"Authorization: Bearer <key>\" or \"x-api-key: <key>\""))
        }
    }
}

pub fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let credential = presented_credential(headers)?;
    let parsed = parse_api_key(&credential).map_err(|_| ApiError::unauthorized("malformed API key"))?;
    if !state.config.accepts_key_prefix(parsed.prefix) {
        return Err(ApiError::unauthorized("unknown API key prefix"));
    }
    if parsed.environment != state.config.environment {
        return Err(ApiError::unauthorized(format!(
            "this is a {} key; this server runs the {} environment",
            parsed.environment, state.config.environment
        )));
    }
    let hash = SecretHash::of(&credential);
    let ledger = state.ledger.read();
    let key = ledger.state.api_key_by_hash(&hash).ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    let now = Utc::now();
    if key.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this API key was revoked"));
    }
    if key.expires_at.is_some_and(|expires_at| expires_at <= now) {
        return Err(ApiError::unauthorized("this API key has expired"));
    }
    Ok(Principal {
        org_id: key.org_id.clone(),
        credential_kind: CredentialKind::ApiKey,
        credential_id: key.id.to_string(),
        scopes: key.scopes.clone(),
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Principal, ApiError> {
        resolve(state, &parts.headers)
    }
}
