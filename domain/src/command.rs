//! Commands (imperative) and `decide`: the pure function from state, command and time to
//! the events that record what happened, or the reason it may not.

use chrono::{DateTime, Utc};

use std::collections::BTreeMap;

use crate::billing::{
    MAX_PRICE_PER_MILLION_MICROS, MAX_TOKENS_PER_CALL, Price, Provider, UsageSource, UsageStatus, call_cost,
};
use crate::claims::AgentMode;
use crate::credential::{Environment, Role, Scope, SecretHash, normalize_email};
use crate::error::DomainError;
use crate::event::{
    AgentCreated, AgentRevoked, AgentTokenMinted, AgentTokenRevoked, ApiKeyBoundToAgent, ApiKeyCreated, ApiKeyRevoked,
    ApiKeyUsed, Budget, CallAttribution, CallAuthorized, CreditsGranted, CreditsToppedUp, Event, GatewayKeyCreated,
    GatewayKeyRevoked, HoldExpired, IssuerRegistered, IssuerRevoked, MemberAdded, ModelConfigured, OrgRegistered,
    PriceSet, RateLimit, SessionEnded, SessionStarted, SigningKeyAdded, SigningKeyRetired, UsageRecorded,
    UserSessionsEnded, UserSignedUp,
};
use crate::ids::{AgentId, ApiKeyId, CallId, IssuerId, OrgId, TokenId, TopupId, UserId};
use crate::money::{MAX_BALANCE_MICROS, Money};
use crate::state::budget_subject;
use crate::state::{Org, State, overshoot_of};

pub(crate) mod agent;
pub(crate) mod call;
pub(crate) mod credit;
pub(crate) mod issuer;
pub(crate) mod key;
pub(crate) mod org;
pub(crate) mod price;
#[cfg(test)]
mod testing;

/// A key's last use is written to the log at most this often.
pub const KEY_USE_RECORD_INTERVAL_SECONDS: i64 = 60;
/// Console sessions last this long.
pub const SESSION_TTL_DAYS: i64 = 30;
/// Agent token lifetimes: default and largest.
pub const DEFAULT_TOKEN_TTL_SECONDS: i64 = 600;
pub const MAX_TOKEN_TTL_SECONDS: i64 = 3600;
/// Leeway verifiers allow on `exp`; a retired signing key verifies this long past its last
/// possible token.
pub const TOKEN_LEEWAY_SECONDS: i64 = 60;
/// Limits on an issuer registration.
pub const MAX_ISSUER_OWNERS: usize = 100;
pub const MAX_ISSUER_TEXT_LENGTH: usize = 512;

/// Longest model name, payment reference and grant reason; a usage status of an old log.
pub const MAX_MODEL_NAME_LENGTH: usize = 128;
pub const MAX_REFERENCE_LENGTH: usize = 128;
pub const MAX_REASON_LENGTH: usize = 500;
pub const MAX_STATUS_LENGTH: usize = 32;
/// Holds expired per command, so one command stays small.
pub const MAX_HOLDS_EXPIRED_PER_COMMAND: usize = 1000;

/// A new embedded signing key: public JWK and the sealed private key.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSigningKey {
    pub key_id: String,
    pub public_jwk: serde_json::Value,
    pub sealed_private_key: String,
}

/// Longest display name of an org, agent or key.
pub const MAX_NAME_LENGTH: usize = 200;
/// Largest serialized key metadata object.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A new API key as the command carries it: the secret was generated outside the domain
/// and only its hash and display prefix come in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKeyRecord {
    pub key_id: ApiKeyId,
    pub hash: SecretHash,
    pub display_prefix: String,
    pub environment: Environment,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<Budget>,
    pub metadata: Option<serde_json::Value>,
}

/// The agent an agent-register names: created with the org, its first key bound to it.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstAgent {
    pub agent_id: AgentId,
    pub name: String,
}

/// A new console session: the cookie value was generated outside; only its hash comes in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub hash: SecretHash,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `POST /v1/auth/agent-register`: a new org and its first key in one step; with
    /// `first_agent`, also that agent (autonomous, acting for the org) with the key bound to it.
    RegisterOrg {
        org_id: OrgId,
        display_name: String,
        environment: Environment,
        first_key: NewKeyRecord,
        first_agent: Option<FirstAgent>,
    },
    /// `POST /me/signup`: a new org, its owner, and the owner's first session.
    SignUp {
        org_id: OrgId,
        org_name: String,
        environment: Environment,
        user_id: UserId,
        email: String,
        password_hash: String,
        session: NewSession,
    },
    /// `POST /me/login`, after the password was verified against the user's hash.
    LogIn {
        user_id: UserId,
        session: NewSession,
    },
    LogOut {
        session_hash: SecretHash,
    },
    LogOutEverywhere {
        user_id: UserId,
    },
    /// An owner adds a member with a role and an initial password.
    AddMember {
        org_id: OrgId,
        added_by: UserId,
        user_id: UserId,
        email: String,
        password_hash: String,
        role: Role,
    },
    CreateApiKey {
        org_id: OrgId,
        key: NewKeyRecord,
    },
    /// Revoke (or DELETE) a key of `org_id`; revoking a revoked key changes nothing.
    RevokeApiKey {
        org_id: OrgId,
        key_id: ApiKeyId,
        deleted: bool,
    },
    /// Coalesced key uses; each becomes an event only if the key's recorded last use is
    /// older than a minute.
    RecordKeyUses {
        uses: Vec<(ApiKeyId, DateTime<Utc>)>,
    },
    CreateAgent {
        org_id: OrgId,
        agent_id: AgentId,
        name: String,
        mode: AgentMode,
        act_for: String,
        scopes: Vec<Scope>,
        budget: Option<Budget>,
        rate_limit: Option<RateLimit>,
    },
    RevokeAgent {
        org_id: OrgId,
        agent_id: AgentId,
    },
    /// Records a token about to be signed with `key_id` (which must be the current key).
    MintAgentToken {
        org_id: OrgId,
        agent_id: AgentId,
        token_id: TokenId,
        key_id: String,
        scopes: Vec<Scope>,
        ttl_seconds: i64,
    },
    RevokeAgentToken {
        org_id: OrgId,
        agent_id: AgentId,
        token_id: TokenId,
    },
    /// The first signing key of the embedded issuer (only when there is none).
    AddSigningKey {
        key: NewSigningKey,
    },
    /// Retires the current key (it verifies until its last token expires) and adds `key`.
    RotateSigningKey {
        key: NewSigningKey,
    },
    RegisterIssuer {
        org_id: OrgId,
        issuer_id: IssuerId,
        issuer: String,
        jwks: Option<serde_json::Value>,
        jwks_uri: Option<String>,
        audience: Option<String>,
        owner_claim: String,
        owners: BTreeMap<String, OrgId>,
    },
    RevokeIssuer {
        org_id: OrgId,
        issuer_id: IssuerId,
    },
    SetPrice {
        model: String,
        price: Price,
        /// What an authorization without `max_cost` holds; `None`: `default_hold`'s default.
        default_hold: Option<Money>,
    },
    /// `PUT /v1/admin/models/{model}`: a model bahi proxies, with its price.
    ConfigureModel {
        model: String,
        provider: Provider,
        upstream_base_url: String,
        /// base64url of the upstream key, sealed outside (the domain holds no key material).
        sealed_upstream_api_key: String,
        upstream_model: Option<String>,
        price: Price,
        default_hold: Option<Money>,
        max_output_tokens: Option<u64>,
    },
    TopUp {
        org_id: OrgId,
        topup_id: TopupId,
        amount: Money,
        payment_reference: String,
        user_id: UserId,
    },
    Grant {
        org_id: OrgId,
        grant_id: TopupId,
        amount: Money,
        reason: String,
    },
    /// Authorize a call: budget and credit checks, and a hold of `max_cost` if given, else of
    /// the model's default hold.
    Authorize {
        call_id: CallId,
        org_id: OrgId,
        attribution: CallAttribution,
        model: String,
        max_cost: Option<Money>,
        hold_ttl_seconds: i64,
    },
    /// Settle a call's usage: idempotent on the call id and the request's hash.
    RecordUsage {
        call_id: CallId,
        model: String,
        input_tokens: u64,
        output_tokens: u64,
        status: UsageStatus,
        request_hash: String,
        /// The proxy's: the upstream's usage or bahi's estimate; `None` for a gateway's report.
        usage_source: Option<UsageSource>,
    },
    /// Release every hold whose expiry has passed (at most MAX_HOLDS_EXPIRED_PER_COMMAND).
    ExpireHolds,
    CreateGatewayKey {
        key_id: ApiKeyId,
        name: Option<String>,
        hash: SecretHash,
        display_prefix: String,
    },
    RevokeGatewayKey {
        key_id: ApiKeyId,
    },
}

/// Tokens each way that a model's default hold covers when the operator set none: an
/// authorization without `max_cost` holds what such a call would cost at the model's price.
pub const DEFAULT_HOLD_TOKENS: u64 = 4_096;

impl Command {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterOrg { .. } => "RegisterOrg",
            Command::SignUp { .. } => "SignUp",
            Command::LogIn { .. } => "LogIn",
            Command::LogOut { .. } => "LogOut",
            Command::LogOutEverywhere { .. } => "LogOutEverywhere",
            Command::AddMember { .. } => "AddMember",
            Command::CreateApiKey { .. } => "CreateApiKey",
            Command::RevokeApiKey { .. } => "RevokeApiKey",
            Command::RecordKeyUses { .. } => "RecordKeyUses",
            Command::CreateAgent { .. } => "CreateAgent",
            Command::RevokeAgent { .. } => "RevokeAgent",
            Command::MintAgentToken { .. } => "MintAgentToken",
            Command::RevokeAgentToken { .. } => "RevokeAgentToken",
            Command::AddSigningKey { .. } => "AddSigningKey",
            Command::RotateSigningKey { .. } => "RotateSigningKey",
            Command::RegisterIssuer { .. } => "RegisterIssuer",
            Command::RevokeIssuer { .. } => "RevokeIssuer",
            Command::SetPrice { .. } => "SetPrice",
            Command::ConfigureModel { .. } => "ConfigureModel",
            Command::TopUp { .. } => "TopUp",
            Command::Grant { .. } => "Grant",
            Command::Authorize { .. } => "Authorize",
            Command::RecordUsage { .. } => "RecordUsage",
            Command::ExpireHolds => "ExpireHolds",
            Command::CreateGatewayKey { .. } => "CreateGatewayKey",
            Command::RevokeGatewayKey { .. } => "RevokeGatewayKey",
        }
    }
}

/// What an authorization without `max_cost` holds: the operator's `default_hold` for the
/// model (`set`), else the cost of `DEFAULT_HOLD_TOKENS` tokens each way at its price.
pub fn default_hold(set: Option<Money>, price: &Price) -> Result<Money, DomainError> {
    match set {
        Some(hold) => Ok(hold),
        None => Ok(call_cost(price, DEFAULT_HOLD_TOKENS, DEFAULT_HOLD_TOKENS)?),
    }
}

/// The checks of an authorization, in order: the org, the model's price, a positive
/// `max_cost` (else the model's default hold), the key's or agent's budget, then available
/// credit. Returns the price in force and the hold to place.
pub fn check_authorization(
    state: &State,
    org_id: &OrgId,
    attribution: &CallAttribution,
    model: &str,
    max_cost: Option<Money>,
    now: DateTime<Utc>,
) -> Result<(Price, Money), DomainError> {
    if !state.orgs.contains_key(org_id) {
        return Err(DomainError::NotFound("org"));
    }
    let price = *state.prices.get(model).ok_or_else(|| DomainError::UnknownModel(model.to_owned()))?;
    if let Some(cost) = max_cost {
        check_amount(cost, "max_cost")?;
    }
    let hold = match max_cost {
        Some(cost) => cost,
        None => default_hold(state.default_holds.get(model).copied(), &price)?,
    };
    let budget = match budget_subject(attribution) {
        Some(subject) if subject.starts_with(AgentId::PREFIX) => {
            state.agents.get(subject).and_then(|agent| agent.budget).map(|b| (subject, b))
        }
        Some(subject) => state.api_keys.get(subject).and_then(|key| key.budget).map(|b| (subject, b)),
        None => None,
    };
    if let Some((subject, budget)) = budget {
        let committed = state
            .budget_usage
            .get(subject)
            .map_or(Ok(Money::ZERO), |usage| usage.spent_in(budget.period, now).checked_add(usage.held))?;
        let exceeded =
            if hold.is_positive() { committed.checked_add(hold)? > budget.amount } else { committed >= budget.amount };
        if exceeded {
            return Err(DomainError::BudgetExceeded { spent: committed, budget: budget.amount });
        }
    }
    let available = state.available(org_id);
    let covered = if hold.is_positive() { available >= hold } else { available.is_positive() };
    if !covered {
        let needed = if hold.is_positive() { hold } else { Money::from_micros(1)? };
        return Err(DomainError::InsufficientCredits { available, needed });
    }
    Ok((price, hold))
}

/// A positive amount within the single-amount limit: top-ups, grants and holds.
pub fn check_amount(amount: Money, what: &str) -> Result<(), DomainError> {
    if !amount.is_positive() {
        return Err(DomainError::invalid(format!("{what} must be positive")));
    }
    if amount > Money::MAX_AMOUNT {
        return Err(DomainError::invalid(format!("{what} exceeds the maximum of {} INR", Money::MAX_AMOUNT)));
    }
    Ok(())
}

/// The org's balance after a credit of `amount`: refused past the largest balance, and when
/// the org's lifetime credits would no longer fit (so that `evolve` cannot overflow).
fn credited_balance(org: &Org, amount: Money) -> Result<Money, DomainError> {
    let balance = org.balance.checked_add(amount)?;
    if balance > Money::MAX_BALANCE {
        return Err(DomainError::invalid(format!(
            "the balance would exceed the maximum of {} INR",
            Money::MAX_BALANCE
        )));
    }
    org.credits.checked_add(amount).map_err(|_| lifetime_totals_full())?;
    Ok(balance)
}

/// The org's balance after a usage's cost: a served call is billed below zero, but not past
/// the negative of the largest balance.
fn debited_balance(org: &Org, cost: Money) -> Result<Money, DomainError> {
    let balance = org.balance.checked_sub(cost)?;
    if balance.micros() < -MAX_BALANCE_MICROS {
        return Err(DomainError::invalid(format!(
            "the balance would fall below the minimum of -{} INR",
            Money::MAX_BALANCE
        )));
    }
    Ok(balance)
}

fn lifetime_totals_full() -> DomainError {
    DomainError::invalid("the org's lifetime totals cannot grow further")
}

/// The lifetime sums a usage adds its cost to in `evolve` (the org's debits and overshoot,
/// the budget subject's spend, the agent's and the key's usage): refused if one would
/// overflow, so that folding the event cannot.
fn check_usage_totals(
    state: &State,
    org: &Org,
    attribution: &CallAttribution,
    cost: Money,
    hold_released: Money,
) -> Result<(), DomainError> {
    let fits = |total: Money| total.checked_add(cost).map(|_| ()).map_err(|_| lifetime_totals_full());
    fits(org.debits)?;
    org.overshoot.checked_add(overshoot_of(cost, hold_released)).map_err(|_| lifetime_totals_full())?;
    // A period's spend is at most the total, so the total alone is checked.
    if let Some(usage) = budget_subject(attribution).and_then(|subject| state.budget_usage.get(subject)) {
        fits(usage.total_spent)?;
    }
    if let Some(agent) = attribution.agent_id.as_deref().and_then(|id| state.agents.get(id)) {
        fits(agent.usage_cost)?;
    }
    if attribution.credential_kind == "api_key"
        && let Some(key) = state.api_keys.get(attribution.credential_id.as_str())
    {
        fits(key.usage_cost)?;
    }
    Ok(())
}

pub fn check_model_name(model: &str) -> Result<(), DomainError> {
    let valid = !model.is_empty()
        && model.len() <= MAX_MODEL_NAME_LENGTH
        && model.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/-@".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(DomainError::invalid(format!(
            "model must be 1 to {MAX_MODEL_NAME_LENGTH} characters of letters, digits and ._:/-@"
        )))
    }
}

fn check_printable(value: &str, what: &str, max: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(DomainError::invalid(format!("{what} must be 1 to {max} printable characters")));
    }
    Ok(())
}

fn check_agent_act_for(state: &State, org_id: &OrgId, mode: AgentMode, act_for: &str) -> Result<(), DomainError> {
    let for_org = act_for == org_id.as_str();
    let for_member =
        UserId::parse(act_for).ok().and_then(|user| state.users.get(&user)).is_some_and(|user| &user.org_id == org_id);
    match mode {
        AgentMode::Autonomous if !for_org => {
            Err(DomainError::invalid("an autonomous agent acts for its org: act_for must be the org id"))
        }
        AgentMode::Delegated if !for_member => {
            Err(DomainError::invalid("a delegated agent acts for a member: act_for must be a usr_ id of this org"))
        }
        AgentMode::Hybrid if !for_org && !for_member => {
            Err(DomainError::invalid("a hybrid agent acts for the org or one of its members"))
        }
        _ => Ok(()),
    }
}

fn check_text(value: &str, what: &str) -> Result<(), DomainError> {
    if value.trim().is_empty() || value.len() > MAX_ISSUER_TEXT_LENGTH || value.chars().any(char::is_control) {
        return Err(DomainError::invalid(format!("{what} must be 1 to {MAX_ISSUER_TEXT_LENGTH} printable characters")));
    }
    Ok(())
}

fn signing_key_added(key: &NewSigningKey, now: DateTime<Utc>) -> Event {
    SigningKeyAdded {
        key_id: key.key_id.clone(),
        public_jwk: key.public_jwk.clone(),
        sealed_private_key: key.sealed_private_key.clone(),
        added_at: now,
    }
    .into()
}

pub fn check_name(name: &str, what: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LENGTH || name.chars().any(char::is_control) {
        return Err(DomainError::invalid(format!("{what} must be 1 to {MAX_NAME_LENGTH} printable characters")));
    }
    Ok(())
}

fn key_created(org_id: &OrgId, key: &NewKeyRecord, now: DateTime<Utc>) -> Result<ApiKeyCreated, DomainError> {
    if let Some(name) = &key.name {
        check_name(name, "key name")?;
    }
    if key.expires_at.is_some_and(|expires_at| expires_at <= now) {
        return Err(DomainError::invalid("expires_at must be in the future"));
    }
    if key.scopes.is_empty() {
        return Err(DomainError::invalid("scopes must not be empty"));
    }
    if let Some(metadata) = &key.metadata {
        if !metadata.is_object() {
            return Err(DomainError::invalid("metadata must be a JSON object"));
        }
        if serde_json::to_vec(metadata).map_or(usize::MAX, |bytes| bytes.len()) > MAX_METADATA_BYTES {
            return Err(DomainError::invalid(format!("metadata must be at most {MAX_METADATA_BYTES} bytes")));
        }
    }
    if let Some(rate_limit) = key.rate_limit {
        check_rate_limit(rate_limit)?;
    }
    if let Some(budget) = key.budget
        && !budget.amount.is_positive()
    {
        return Err(DomainError::invalid("budget amount must be positive"));
    }
    Ok(ApiKeyCreated {
        key_id: key.key_id.clone(),
        org_id: org_id.clone(),
        name: key.name.clone(),
        key_hash: key.hash,
        display_prefix: key.display_prefix.clone(),
        environment: key.environment,
        scopes: key.scopes.clone(),
        created_at: now,
        expires_at: key.expires_at,
        rate_limit: key.rate_limit,
        budget: key.budget,
        metadata: key.metadata.clone(),
    })
}

/// Limits on a token bucket: at least one request, interval from 1 s to 30 days.
pub fn check_rate_limit(rate_limit: RateLimit) -> Result<(), DomainError> {
    if rate_limit.requests == 0 || rate_limit.requests > 1_000_000_000 {
        return Err(DomainError::invalid("rate_limit.requests must be between 1 and 1000000000"));
    }
    if rate_limit.interval_seconds == 0 || rate_limit.interval_seconds > 30 * 86_400 {
        return Err(DomainError::invalid("rate_limit.interval_seconds must be between 1 and 2592000"));
    }
    Ok(())
}

fn check_new_email(state: &State, email: &str) -> Result<(), DomainError> {
    if normalize_email(email).as_deref() != Some(email) {
        return Err(DomainError::invalid("email must be a valid address"));
    }
    if state.users_by_email.contains_key(email) {
        return Err(DomainError::Conflict("a user with this email already exists".into()));
    }
    Ok(())
}

fn check_new_session(state: &State, session: &NewSession, now: DateTime<Utc>) -> Result<(), DomainError> {
    if state.sessions.contains_key(&session.hash) {
        return Err(DomainError::Conflict("session already exists".into()));
    }
    if session.expires_at <= now || session.expires_at > now + chrono::Duration::days(SESSION_TTL_DAYS) {
        return Err(DomainError::invalid("session expiry must be within 30 days"));
    }
    Ok(())
}

fn check_new_key(state: &State, key: &NewKeyRecord) -> Result<(), DomainError> {
    if state.api_keys.contains_key(&key.key_id) || state.api_keys_by_hash.contains_key(&key.hash) {
        return Err(DomainError::Conflict("key already exists".into()));
    }
    Ok(())
}

pub fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::RegisterOrg { .. }
        | Command::SignUp { .. }
        | Command::LogIn { .. }
        | Command::LogOut { .. }
        | Command::LogOutEverywhere { .. }
        | Command::AddMember { .. } => org::decide(state, command, now),
        Command::CreateApiKey { .. }
        | Command::RevokeApiKey { .. }
        | Command::RecordKeyUses { .. }
        | Command::CreateGatewayKey { .. }
        | Command::RevokeGatewayKey { .. } => key::decide(state, command, now),
        Command::CreateAgent { .. }
        | Command::RevokeAgent { .. }
        | Command::MintAgentToken { .. }
        | Command::RevokeAgentToken { .. } => agent::decide(state, command, now),
        Command::AddSigningKey { .. }
        | Command::RotateSigningKey { .. }
        | Command::RegisterIssuer { .. }
        | Command::RevokeIssuer { .. } => issuer::decide(state, command, now),
        Command::SetPrice { .. } | Command::ConfigureModel { .. } => price::decide(state, command, now),
        Command::TopUp { .. } | Command::Grant { .. } => credit::decide(state, command, now),
        Command::Authorize { .. } | Command::RecordUsage { .. } | Command::ExpireHolds => {
            call::decide(state, command, now)
        }
    }
}
