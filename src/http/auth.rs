//! Resolving a request's credential to a principal, in memory, without touching the
//! database: SHA-256 of the key or session cookie, one hash-map lookup in the node's read
//! model, checks of environment, revocation and expiry; then the principal's token bucket.
//!
//! Authenticated routes sit behind `authenticate` (a route layer); handlers take the
//! resolved `Principal` as an extractor. Scopes and roles are checked in one place,
//! `Principal::require`, with the same scope vocabulary for keys and sessions.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bahi_domain::credential::{Role, Scope, SecretHash, parse_api_key};
use bahi_domain::event::RateLimit;
use bahi_domain::ids::{AgentId, IssuerId, OrgId, TokenId, UserId};
use bahi_domain::rate_limit::RateDecision;
use chrono::Utc;

use super::AppState;
use super::error::ApiError;

/// Name of the console session cookie.
pub const SESSION_COOKIE: &str = "bahi_session";

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ApiKey,
    Session,
    AgentToken,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Session => "session",
            CredentialKind::AgentToken => "agent_token",
        }
    }
}

/// The agent behind an agent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    /// `agt_…` for bahi's agents; `<iss_…>:<subject>` for an external issuer's, so that an
    /// external token can never name one of bahi's agents.
    pub id: String,
    pub name: Option<String>,
    pub external_issuer: Option<String>,
}

/// Who is calling: the org that pays, the credential used, and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org_id: OrgId,
    pub credential_kind: CredentialKind,
    /// `key_…` for keys; the user's `usr_…` for sessions; `tok_…` (or the issuer
    /// registration, for external tokens without `jti`) for agent tokens.
    pub credential_id: String,
    /// The agent, for agent tokens.
    pub agent: Option<AgentRef>,
    /// Whom the call is made for: the token's `act_for`, the session's user, or the org for
    /// an API key.
    pub act_for: String,
    pub scopes: Vec<Scope>,
    /// Humans only.
    pub user: Option<(UserId, Role)>,
    /// For sessions: the cookie's hash, so that logout can end exactly this session.
    pub session_hash: Option<SecretHash>,
    rate_subject: String,
    rate_limit: RateLimit,
}

/// Refuses with 403 `insufficient_scope` unless `held` contains `scope`: the one scope check
/// of every credential.
fn require_scope(held: &[Scope], scope: Scope) -> Result<(), ApiError> {
    if held.contains(&scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden("insufficient_scope", format!("this credential lacks the {} scope", scope.as_str())))
    }
}

/// Parses scopes requested for a new key, agent or token: each must be an org scope that
/// `held` (the granter's own) contains, so nobody grants more than they have.
pub fn grantable_scopes(requested: &[String], held: &[Scope]) -> Result<Vec<Scope>, ApiError> {
    let mut scopes = Vec::new();
    for text in requested {
        let scope = Scope::parse(text).ok_or_else(|| ApiError::invalid_request(format!("unknown scope {text:?}")))?;
        if !scope.is_org_scope() || !held.contains(&scope) {
            return Err(ApiError::forbidden(
                "insufficient_scope",
                format!("you cannot grant {text}: you do not hold it"),
            ));
        }
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::invalid_request("scopes must not be empty; omit it for the default"));
    }
    Ok(scopes)
}

impl Principal {
    /// Refuses with 403 unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        require_scope(&self.scopes, scope)
    }

    /// Refuses with 403 `human_only` unless this is a console session with one of `roles`.
    pub fn require_human(&self, roles: &[Role]) -> Result<(UserId, Role), ApiError> {
        match &self.user {
            None => Err(ApiError::forbidden("human_only", "this action needs a console session (bahi_session)")),
            Some((user_id, role)) if roles.contains(role) => Ok((user_id.clone(), *role)),
            Some((_, role)) => {
                Err(ApiError::forbidden("forbidden", format!("the {} role may not do this", role.as_str())))
            }
        }
    }

    pub fn actor(&self) -> crate::ledger::Actor {
        crate::ledger::Actor::new(self.credential_kind.as_str(), self.credential_id.clone())
    }
}

/// The credential text a request presents in `Authorization: Bearer` or `x-api-key`.
fn presented_header_credential(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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
    // Tokens travel only as Bearer, so a token copied into a key's header is never honoured.
    if api_key_header.as_deref().is_some_and(looks_like_token) {
        return Err(ApiError::unauthorized(
            "x-api-key carries API keys only; send an agent token as \"Authorization: Bearer <token>\"",
        ));
    }
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
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

fn resolve_api_key(state: &AppState, credential: &str) -> Result<Principal, ApiError> {
    let parsed = parse_api_key(credential).map_err(|_| ApiError::unauthorized("malformed API key"))?;
    if !state.config.accepts_key_prefix(parsed.prefix) {
        return Err(ApiError::unauthorized("unknown API key prefix"));
    }
    if parsed.environment != state.config.environment {
        return Err(ApiError::unauthorized(format!(
            "this is a {} key; this server runs the {} environment",
            parsed.environment, state.config.environment
        )));
    }
    let hash = SecretHash::of(credential);
    let now = Utc::now();
    let ledger = state.ledger.read();
    let key = ledger.state.api_key_by_hash(&hash).ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    if key.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this API key was revoked"));
    }
    if key.expires_at.is_some_and(|expires_at| expires_at <= now) {
        return Err(ApiError::unauthorized("this API key has expired"));
    }
    state.key_uses.touch(&key.id, now);
    Ok(Principal {
        org_id: key.org_id.clone(),
        credential_kind: CredentialKind::ApiKey,
        credential_id: key.id.to_string(),
        agent: None,
        act_for: key.org_id.to_string(),
        scopes: key.scopes.clone(),
        user: None,
        session_hash: None,
        rate_subject: key.id.to_string(),
        rate_limit: key.rate_limit.unwrap_or(state.config.default_rate_limit),
    })
}

fn resolve_session(state: &AppState, cookie: &str) -> Result<Principal, ApiError> {
    let hash = SecretHash::of(cookie);
    let ledger = state.ledger.read();
    let (session, user) = ledger
        .state
        .live_session(&hash, Utc::now())
        .ok_or_else(|| ApiError::unauthorized("session expired or logged out; log in again"))?;
    Ok(Principal {
        org_id: session.org_id.clone(),
        credential_kind: CredentialKind::Session,
        credential_id: user.id.to_string(),
        agent: None,
        act_for: user.id.to_string(),
        scopes: user.role.scopes(),
        user: Some((user.id.clone(), user.role)),
        session_hash: Some(hash),
        rate_subject: user.id.to_string(),
        rate_limit: state.config.default_rate_limit,
    })
}

fn unauthorized_token(error: impl std::fmt::Display) -> ApiError {
    ApiError::unauthorized(error.to_string())
}

async fn resolve_agent_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let verified = state.identity.verify(&state.ledger, token).await.map_err(unauthorized_token)?;
    let org_id = OrgId::parse(&verified.org_id).map_err(|_| ApiError::unauthorized("agent token names no org"))?;
    let ledger = state.ledger.read();
    if !ledger.state.orgs.contains_key(&org_id) {
        return Err(ApiError::unauthorized("agent token names an unknown org"));
    }
    let token_scopes =
        verified.scopes.iter().filter_map(|text| Scope::parse(text)).filter(|scope| scope.is_org_scope());
    if verified.external_issuer {
        let registration = IssuerId::parse(&verified.registration_id)
            .ok()
            .and_then(|id| ledger.state.issuers.get(&id))
            .filter(|record| record.revoked_at.is_none() && record.org_id == org_id)
            .ok_or_else(|| ApiError::unauthorized("agent token's issuer is revoked"))?;
        let agent_id = format!("{}:{}", registration.id, verified.agent_id);
        return Ok(Principal {
            org_id,
            credential_kind: CredentialKind::AgentToken,
            credential_id: verified.jti.clone().unwrap_or_else(|| registration.id.to_string()),
            agent: Some(AgentRef {
                id: agent_id.clone(),
                name: None,
                external_issuer: Some(registration.id.to_string()),
            }),
            act_for: verified.act_for.clone(),
            scopes: token_scopes.collect(),
            user: None,
            session_hash: None,
            rate_subject: agent_id,
            rate_limit: state.config.default_rate_limit,
        });
    }
    let agent = AgentId::parse(&verified.agent_id)
        .ok()
        .and_then(|id| ledger.state.agents.get(&id))
        .filter(|agent| agent.org_id == org_id)
        .ok_or_else(|| ApiError::unauthorized("agent token names an unknown agent"))?;
    if agent.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this agent was revoked"));
    }
    let token_id = verified.jti.as_deref().and_then(|jti| TokenId::parse(jti).ok());
    let minted =
        token_id.as_ref().and_then(|id| ledger.state.tokens.get(id)).filter(|token| token.agent_id == agent.id);
    match minted {
        None => return Err(ApiError::unauthorized("agent token was not minted here")),
        Some(token) if token.revoked => return Err(ApiError::unauthorized("this agent token was revoked")),
        Some(_) => {}
    }
    Ok(Principal {
        org_id,
        credential_kind: CredentialKind::AgentToken,
        credential_id: verified.jti.clone().unwrap_or_default(),
        agent: Some(AgentRef { id: agent.id.to_string(), name: Some(agent.name.clone()), external_issuer: None }),
        act_for: verified.act_for.clone(),
        // A token narrows its agent's scopes; it never widens them.
        scopes: token_scopes.filter(|scope| agent.scopes.contains(scope)).collect(),
        user: None,
        session_hash: None,
        rate_subject: agent.id.to_string(),
        rate_limit: agent.rate_limit.unwrap_or(state.config.default_rate_limit),
    })
}

/// Whether header credential text is a JWT (three dot-separated segments) rather than a key.
fn looks_like_token(credential: &str) -> bool {
    credential.bytes().filter(|&b| b == b'.').count() == 2
}

/// Resolves the request's one credential: a header credential if present, else the
/// session cookie. A credential refused here is looked at again once this node has caught
/// up with the log: it may have been made on another node a moment ago, and a 401 is final
/// to a client. Only refusals pay that trip through the writer.
pub async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    match resolve_here(state, headers).await {
        Err(error) if error.status == StatusCode::UNAUTHORIZED && presents_credential(headers) => {
            state.writer.reach_head().await?;
            resolve_here(state, headers).await
        }
        resolved => resolved,
    }
}

/// Whether the request presents a credential that the log could hold: a token, a session
/// cookie, or a well-formed key (a malformed one is refused without the trip).
fn presents_credential(headers: &HeaderMap) -> bool {
    match presented_header_credential(headers) {
        Ok(Some(credential)) => looks_like_token(&credential) || parse_api_key(&credential).is_ok(),
        Ok(None) => session_cookie(headers).is_some(),
        Err(_) => false,
    }
}

/// `resolve` against what this node has folded so far.
async fn resolve_here(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    if let Some(credential) = presented_header_credential(headers)? {
        if looks_like_token(&credential) {
            return resolve_agent_token(state, &credential).await;
        }
        return resolve_api_key(state, &credential);
    }
    if let Some(cookie) = session_cookie(headers) {
        return resolve_session(state, &cookie);
    }
    Err(ApiError::unauthorized(
        "no credential: send \"Authorization: Bearer <key>\", \"x-api-key: <key>\" or a bahi_session cookie",
    ))
}

fn number_header(value: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&value.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

/// The `x-ratelimit-*` headers of a decision (and `retry-after` when refused).
pub fn rate_limit_headers(decision: &RateDecision) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (HeaderName::from_static("x-ratelimit-limit"), number_header(decision.limit)),
        (HeaderName::from_static("x-ratelimit-remaining"), number_header(decision.remaining)),
        (HeaderName::from_static("x-ratelimit-reset"), number_header(decision.reset_at_seconds)),
    ];
    if !decision.allowed {
        headers.push((axum::http::header::RETRY_AFTER, number_header(decision.retry_after_seconds)));
    }
    headers
}

pub fn rate_limited(decision: &RateDecision) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("rate limit of {} requests exceeded; retry in {} s", decision.limit, decision.retry_after_seconds),
    );
    error.headers = rate_limit_headers(decision);
    error
}

/// Route layer of every authenticated route: resolve, rate-limit, run, add the headers.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let principal = match resolve(&state, request.headers()).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    let decision = state.rate_limiter.take(&principal.rate_subject, principal.rate_limit, Utc::now());
    if !decision.allowed {
        return rate_limited(&decision).into_response();
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    for (name, value) in rate_limit_headers(&decision) {
        response.headers_mut().insert(name, value);
    }
    response
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

/// Per-client-address limit for unauthenticated endpoints (agent-register, signup, login).
pub fn check_client_rate(state: &AppState, client: std::net::IpAddr) -> Result<RateDecision, ApiError> {
    let decision = state.rate_limiter.take(&format!("ip:{client}"), state.config.anonymous_rate_limit, Utc::now());
    if decision.allowed { Ok(decision) } else { Err(rate_limited(&decision)) }
}

/// The operator (`Authorization: Bearer <BAHI_OPERATOR_KEY>`, every operator scope) or a
/// gateway key the operator created (`usage:write` alone). Any org credential is 403 on
/// operator endpoints; anything else is 401.
#[derive(Debug, Clone)]
pub struct Operator {
    pub scopes: Vec<Scope>,
    /// The gateway key used, when it was not the operator credential itself.
    pub gateway_key: Option<bahi_domain::ids::ApiKeyId>,
}

impl Operator {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        require_scope(&self.scopes, scope)
    }

    pub fn actor(&self) -> crate::ledger::Actor {
        match &self.gateway_key {
            Some(key) => crate::ledger::Actor::new("gateway_key", key.to_string()),
            None => crate::ledger::Actor::new("operator", "operator"),
        }
    }
}

/// The gateway key whose hash is `hash`, as an operator (or refused when revoked).
fn gateway_key(state: &AppState, hash: &SecretHash) -> Option<Result<Operator, ApiError>> {
    let ledger = state.ledger.read();
    let key = ledger.state.gateway_keys_by_hash.get(hash).and_then(|id| ledger.state.gateway_keys.get(id))?;
    if key.revoked_at.is_some() {
        return Some(Err(ApiError::unauthorized("this gateway key was revoked")));
    }
    Some(Ok(Operator { scopes: vec![Scope::UsageWrite], gateway_key: Some(key.id.clone()) }))
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Operator, ApiError> {
        let credential = presented_header_credential(&parts.headers)?;
        if let Some(credential) = &credential {
            let hash = SecretHash::of(credential);
            if state.config.operator_key_hash == Some(hash) {
                return Ok(Operator { scopes: Scope::OPERATOR.to_vec(), gateway_key: None });
            }
            if let Some(operator) = gateway_key(state, &hash) {
                return operator;
            }
        }
        match resolve(state, &parts.headers).await {
            Ok(_) => Err(ApiError::forbidden("operator_only", "this endpoint is for the operator credential")),
            Err(_) if state.config.operator_key_hash.is_none() && credential.is_none() => {
                Err(ApiError::unauthorized("no operator credential is configured (BAHI_OPERATOR_KEY)"))
            }
            // `resolve` caught up with the log before refusing: a gateway key made on another
            // node a moment ago is in the read model now.
            Err(error) => match credential.and_then(|credential| gateway_key(state, &SecretHash::of(&credential))) {
                Some(operator) => operator,
                None => Err(error),
            },
        }
    }
}
