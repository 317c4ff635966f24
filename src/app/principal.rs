//! Who is calling. A surface hands over the credential a request presents (a key or token,
//! or a session cookie) and gets a `Principal`: resolved in memory, without touching the
//! database (SHA-256 of the key or cookie, one hash-map lookup in the node's read model,
//! checks of environment, revocation and expiry). Scopes and roles are checked in one
//! place, `Principal::require`, with the same scope vocabulary for keys and sessions.

use bahi_domain::credential::{Role, Scope, SecretHash, parse_api_key};
use bahi_domain::event::RateLimit;
use bahi_domain::ids::{AgentId, ApiKeyId, IssuerId, OrgId, TokenId, UserId};
use bahi_domain::rate_limit::RateDecision;
use bahi_domain::state::Agent;

use super::{AppError, AppResult, Services};
use crate::ledger::Actor;

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

/// The credential a request presents, as its surface found it.
#[derive(Debug, Clone, Default)]
pub struct Presented {
    /// An API key or an agent token (`Authorization: Bearer` or `x-api-key` on HTTP).
    pub credential: Option<String>,
    /// A console session cookie's value.
    pub session_cookie: Option<String>,
}

/// Refuses with 403 `insufficient_scope` unless `held` contains `scope`: the one scope check
/// of every credential.
fn require_scope(held: &[Scope], scope: Scope) -> AppResult<()> {
    if held.contains(&scope) {
        Ok(())
    } else {
        Err(AppError::forbidden("insufficient_scope", format!("this credential lacks the {} scope", scope.as_str())))
    }
}

/// Parses scopes requested for a new key, agent or token: each must be an org scope that
/// `held` (the granter's own) contains, so nobody grants more than they have.
pub fn grantable_scopes(requested: &[String], held: &[Scope]) -> AppResult<Vec<Scope>> {
    let mut scopes = Vec::new();
    for text in requested {
        let scope = Scope::parse(text).ok_or_else(|| AppError::invalid_request(format!("unknown scope {text:?}")))?;
        if !scope.is_org_scope() || !held.contains(&scope) {
            return Err(AppError::forbidden(
                "insufficient_scope",
                format!("you cannot grant {text}: you do not hold it"),
            ));
        }
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(AppError::invalid_request("scopes must not be empty; omit it for the default"));
    }
    Ok(scopes)
}

impl Principal {
    /// Refuses with 403 unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> AppResult<()> {
        require_scope(&self.scopes, scope)
    }

    /// Refuses with 403 `human_only` unless this is a console session with one of `roles`.
    pub fn require_human(&self, roles: &[Role]) -> AppResult<(UserId, Role)> {
        match &self.user {
            None => Err(AppError::forbidden("human_only", "this action needs a console session (bahi_session)")),
            Some((user_id, role)) if roles.contains(role) => Ok((user_id.clone(), *role)),
            Some((_, role)) => {
                Err(AppError::forbidden("forbidden", format!("the {} role may not do this", role.as_str())))
            }
        }
    }

    pub fn actor(&self) -> Actor {
        Actor::new(self.credential_kind.as_str(), self.credential_id.clone())
    }
}

/// Whether credential text is a JWT (three dot-separated segments) rather than a key.
pub fn looks_like_token(credential: &str) -> bool {
    credential.bytes().filter(|&b| b == b'.').count() == 2
}

fn resolve_api_key(services: &Services, credential: &str) -> AppResult<Principal> {
    let parsed = parse_api_key(credential).map_err(|_| AppError::unauthorized("malformed API key"))?;
    if !services.config.accepts_key_prefix(parsed.prefix) {
        return Err(AppError::unauthorized("unknown API key prefix"));
    }
    if parsed.environment != services.config.environment {
        return Err(AppError::unauthorized(format!(
            "this is a {} key; this server runs the {} environment",
            parsed.environment, services.config.environment
        )));
    }
    let hash = SecretHash::of(credential);
    let now = services.now();
    let ledger = services.ledger.read();
    let key = ledger.state.api_key_by_hash(&hash).ok_or_else(|| AppError::unauthorized("invalid API key"))?;
    if key.revoked_at.is_some() {
        return Err(AppError::unauthorized("this API key was revoked"));
    }
    if key.expires_at.is_some_and(|expires_at| expires_at <= now) {
        return Err(AppError::unauthorized("this API key has expired"));
    }
    let bound_agent = match &key.agent_id {
        None => None,
        Some(agent_id) => Some(bound_agent(&ledger.state, agent_id)?),
    };
    services.key_uses.touch(&key.id, now);
    Ok(Principal {
        org_id: key.org_id.clone(),
        credential_kind: CredentialKind::ApiKey,
        credential_id: key.id.to_string(),
        act_for: bound_agent.map_or_else(|| key.org_id.to_string(), |agent| agent.act_for.clone()),
        // A bound key narrows to its agent's scopes, as the agent's tokens do.
        scopes: key
            .scopes
            .iter()
            .filter(|scope| bound_agent.is_none_or(|agent| agent.scopes.contains(scope)))
            .copied()
            .collect(),
        agent: bound_agent.map(|agent| AgentRef {
            id: agent.id.to_string(),
            name: Some(agent.name.clone()),
            external_issuer: None,
        }),
        user: None,
        session_hash: None,
        rate_subject: key.id.to_string(),
        rate_limit: key.rate_limit.unwrap_or(services.config.default_rate_limit),
    })
}

/// The agent a key is bound to; the key stops working when the agent is revoked.
fn bound_agent<'state>(state: &'state bahi_domain::State, agent_id: &AgentId) -> AppResult<&'state Agent> {
    let agent = state.agents.get(agent_id).ok_or_else(|| AppError::unauthorized("this API key's agent is unknown"))?;
    if agent.revoked_at.is_some() {
        return Err(AppError::unauthorized("this API key's agent was revoked"));
    }
    Ok(agent)
}

fn resolve_session(services: &Services, cookie: &str) -> AppResult<Principal> {
    let hash = SecretHash::of(cookie);
    let ledger = services.ledger.read();
    let (session, user) = ledger
        .state
        .live_session(&hash, services.now())
        .ok_or_else(|| AppError::unauthorized("session expired or logged out; log in again"))?;
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
        rate_limit: services.config.default_rate_limit,
    })
}

async fn resolve_agent_token(services: &Services, token: &str) -> AppResult<Principal> {
    let verified = services
        .identity
        .verify(&services.ledger, token)
        .await
        .map_err(|error| AppError::unauthorized(error.to_string()))?;
    let org_id = OrgId::parse(&verified.org_id).map_err(|_| AppError::unauthorized("agent token names no org"))?;
    let ledger = services.ledger.read();
    if !ledger.state.orgs.contains_key(&org_id) {
        return Err(AppError::unauthorized("agent token names an unknown org"));
    }
    let token_scopes =
        verified.scopes.iter().filter_map(|text| Scope::parse(text)).filter(|scope| scope.is_org_scope());
    if verified.external_issuer {
        let registration = IssuerId::parse(&verified.registration_id)
            .ok()
            .and_then(|id| ledger.state.issuers.get(&id))
            .filter(|record| record.revoked_at.is_none() && record.org_id == org_id)
            .ok_or_else(|| AppError::unauthorized("agent token's issuer is revoked"))?;
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
            rate_limit: services.config.default_rate_limit,
        });
    }
    let agent = AgentId::parse(&verified.agent_id)
        .ok()
        .and_then(|id| ledger.state.agents.get(&id))
        .filter(|agent| agent.org_id == org_id)
        .ok_or_else(|| AppError::unauthorized("agent token names an unknown agent"))?;
    if agent.revoked_at.is_some() {
        return Err(AppError::unauthorized("this agent was revoked"));
    }
    let Some(jti) = verified.jti.clone() else {
        return Err(AppError::unauthorized("agent token was not minted here"));
    };
    let minted = TokenId::parse(&jti)
        .ok()
        .and_then(|id| ledger.state.tokens.get(&id))
        .filter(|token| token.agent_id == agent.id);
    match minted {
        None => return Err(AppError::unauthorized("agent token was not minted here")),
        Some(token) if token.revoked => return Err(AppError::unauthorized("this agent token was revoked")),
        Some(_) => {}
    }
    Ok(Principal {
        org_id,
        credential_kind: CredentialKind::AgentToken,
        credential_id: jti,
        agent: Some(AgentRef { id: agent.id.to_string(), name: Some(agent.name.clone()), external_issuer: None }),
        act_for: verified.act_for.clone(),
        // A token narrows its agent's scopes; it never widens them.
        scopes: token_scopes.filter(|scope| agent.scopes.contains(scope)).collect(),
        user: None,
        session_hash: None,
        rate_subject: agent.id.to_string(),
        rate_limit: agent.rate_limit.unwrap_or(services.config.default_rate_limit),
    })
}

/// Whether the credential is one the log could hold: a token, a session cookie, or a
/// well-formed key (a malformed one is refused without a trip through the writer).
fn could_be_in_the_log(presented: &Presented) -> bool {
    match &presented.credential {
        Some(credential) => looks_like_token(credential) || parse_api_key(credential).is_ok(),
        None => presented.session_cookie.is_some(),
    }
}

/// `resolve` against what this node has folded so far.
async fn resolve_here(services: &Services, presented: &Presented) -> AppResult<Principal> {
    if let Some(credential) = &presented.credential {
        if looks_like_token(credential) {
            return resolve_agent_token(services, credential).await;
        }
        return resolve_api_key(services, credential);
    }
    if let Some(cookie) = &presented.session_cookie {
        return resolve_session(services, cookie);
    }
    Err(AppError::unauthorized(
        "no credential: send \"Authorization: Bearer <key>\", \"x-api-key: <key>\" or a bahi_session cookie",
    ))
}

/// Resolves the presented credential: a key or token if present, else the session cookie.
/// A credential refused here is looked at again once this node has caught up with the log:
/// it may have been made on another node a moment ago, and a 401 is final to a client.
/// Only refusals pay that trip through the writer.
pub async fn resolve(services: &Services, presented: &Presented) -> AppResult<Principal> {
    // A node whose tailer has not read the log lately (it was paused, or the database was
    // away) may not have seen a revocation made elsewhere: it reaches the head first.
    if tail_is_stale(services) {
        services.writer.reach_head().await.map_err(|error| {
            tracing::warn!(%error, "a credential could not be checked at the head of the log");
            // Fail closed, and say it is this node's state, not the credential: retry.
            AppError::unavailable("this node cannot read the log right now to check credentials; retry shortly")
        })?;
    }
    match resolve_here(services, presented).await {
        Err(AppError::Unauthorized(_)) if could_be_in_the_log(presented) => {
            services.writer.reach_head().await?;
            resolve_here(services, presented).await
        }
        resolved => resolved,
    }
}

/// Longest a PostgreSQL node's tailer may go without reading the log to its end before a
/// credential is judged only after reaching the head (it polls every 250 ms).
const STALE_TAIL_MILLISECONDS: u64 = 1_000;

fn tail_is_stale(services: &Services) -> bool {
    let tailer = &services.metrics.tailer;
    tailer.running.load(std::sync::atomic::Ordering::Relaxed)
        && tailer.caught_up_milliseconds_ago().is_none_or(|millis| millis > STALE_TAIL_MILLISECONDS)
}

/// Who is calling, then one request from their token bucket: what every surface that
/// serves a credential does first (routes, MCP, the proxy, forward-auth).
pub async fn admit(services: &Services, presented: &Presented) -> AppResult<(Principal, RateDecision)> {
    let principal = resolve(services, presented).await?;
    let decision = take_rate(services, &principal)?;
    Ok((principal, decision))
}

/// Takes one request from the principal's token bucket: the decision, or 429.
pub fn take_rate(services: &Services, principal: &Principal) -> AppResult<RateDecision> {
    let limit = services.config.per_node(principal.rate_limit);
    let decision = services.rate_limiter.take(&principal.rate_subject, limit, services.now());
    if decision.allowed { Ok(decision) } else { Err(AppError::RateLimited(decision)) }
}

/// Per-client-address limit for unauthenticated actions (agent-register, signup, login).
pub fn check_client_rate(services: &Services, client: std::net::IpAddr) -> AppResult<RateDecision> {
    let decision = services.rate_limiter.take(
        &format!("ip:{client}"),
        services.config.per_node(services.config.anonymous_rate_limit),
        services.now(),
    );
    if decision.allowed { Ok(decision) } else { Err(AppError::RateLimited(decision)) }
}

/// The operator (`BAHI_OPERATOR_KEY`, every operator scope) or a gateway key the operator
/// created (`usage:write` alone). Any org credential is 403 on operator actions; anything
/// else is 401.
#[derive(Debug, Clone)]
pub struct Operator {
    pub scopes: Vec<Scope>,
    /// The gateway key used, when it was not the operator credential itself.
    pub gateway_key: Option<ApiKeyId>,
}

impl Operator {
    pub fn require(&self, scope: Scope) -> AppResult<()> {
        require_scope(&self.scopes, scope)
    }

    /// Refuses a gateway key: `action` needs the operator credential itself.
    pub fn require_operator(&self, action: &str) -> AppResult<()> {
        match self.gateway_key {
            None => Ok(()),
            Some(_) => Err(AppError::forbidden("operator_only", format!("{action} needs the operator credential"))),
        }
    }

    pub fn actor(&self) -> Actor {
        match &self.gateway_key {
            Some(key) => Actor::new("gateway_key", key.to_string()),
            None => Actor::new("operator", "operator"),
        }
    }
}

/// Whether `credential` is the operator credential itself.
pub fn is_operator_credential(services: &Services, credential: &str) -> bool {
    services.config.operator_key_hash.is_some_and(|expected| SecretHash::of(credential) == expected)
}

/// The gateway key whose hash is `hash`, as an operator (or refused when revoked).
fn gateway_key(services: &Services, hash: &SecretHash) -> Option<AppResult<Operator>> {
    let ledger = services.ledger.read();
    let key = ledger.state.gateway_keys_by_hash.get(hash).and_then(|id| ledger.state.gateway_keys.get(id))?;
    if key.revoked_at.is_some() {
        return Some(Err(AppError::unauthorized("this gateway key was revoked")));
    }
    Some(Ok(Operator { scopes: vec![Scope::UsageWrite], gateway_key: Some(key.id.clone()) }))
}

/// Resolves an operator credential (the operator's own, or a gateway key).
pub async fn resolve_operator(services: &Services, presented: &Presented) -> AppResult<Operator> {
    if let Some(credential) = &presented.credential {
        if is_operator_credential(services, credential) {
            return Ok(Operator { scopes: Scope::OPERATOR.to_vec(), gateway_key: None });
        }
        if let Some(operator) = gateway_key(services, &SecretHash::of(credential)) {
            return operator;
        }
    }
    match resolve(services, presented).await {
        Ok(_) => Err(AppError::forbidden("operator_only", "this endpoint is for the operator credential")),
        // `resolve` caught up with the log before refusing: a gateway key made on another
        // node a moment ago is in the read model now.
        Err(error) => {
            match presented
                .credential
                .as_ref()
                .and_then(|credential| gateway_key(services, &SecretHash::of(credential)))
            {
                Some(operator) => operator,
                // Say why plainly: without an operator key nothing presented could pass.
                None if services.config.operator_key_hash.is_none() => Err(AppError::unauthorized(
                    "operator endpoints are disabled: this server was started without an operator key \
                     (set BAHI_OPERATOR_KEY to a secret of 32+ characters, then send it as Bearer)",
                )),
                None => Err(error),
            }
        }
    }
}

/// Who reads audit data and statements: the operator (any org) or an org's credential (its
/// own org only).
#[derive(Debug, Clone)]
pub enum Reader {
    Operator,
    Org(Box<Principal>),
}

impl Reader {
    /// The org whose data is read: the caller's own (which `requested`, if given, must be:
    /// another org's id is 404, never a hint it exists) or, for the operator, `requested`.
    pub fn org(&self, services: &Services, scope: Scope, requested: Option<&str>) -> AppResult<OrgId> {
        match self {
            Reader::Org(principal) => {
                principal.require(scope)?;
                match requested {
                    Some(requested) if OrgId::parse(requested)? != principal.org_id => Err(AppError::not_found("org")),
                    _ => Ok(principal.org_id.clone()),
                }
            }
            Reader::Operator => {
                let requested = requested
                    .ok_or_else(|| AppError::invalid_request("the operator names the org: add org_id=<org_…>"))?;
                let org_id = OrgId::parse(requested)?;
                if services.ledger.read().state.orgs.contains_key(&org_id) {
                    Ok(org_id)
                } else {
                    Err(AppError::not_found("org"))
                }
            }
        }
    }
}
