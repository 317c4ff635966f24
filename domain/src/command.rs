//! Commands (imperative) and `decide`: the pure function from state, command and time to
//! the events that record what happened, or the reason it may not.

use chrono::{DateTime, Utc};

use crate::credential::{Environment, Role, Scope, SecretHash, normalize_email};
use crate::error::DomainError;
use crate::event::{
    ApiKeyCreated, ApiKeyRevoked, ApiKeyUsed, Budget, Event, MemberAdded, OrgRegistered, RateLimit, SessionEnded,
    SessionStarted, UserSessionsEnded, UserSignedUp,
};
use crate::ids::{ApiKeyId, OrgId, UserId};
use crate::state::State;

/// A key's last use is written to the log at most this often.
pub const KEY_USE_RECORD_INTERVAL_SECONDS: i64 = 60;
/// Console sessions last this long.
pub const SESSION_TTL_DAYS: i64 = 30;

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

/// A new console session: the cookie value was generated outside; only its hash comes in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub hash: SecretHash,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `POST /v1/auth/agent-register`: a new org and its first key in one step.
    RegisterOrg {
        org_id: OrgId,
        display_name: String,
        environment: Environment,
        first_key: NewKeyRecord,
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
        Command::RegisterOrg { org_id, display_name, environment, first_key } => {
            check_name(display_name, "org_name")?;
            if state.orgs.contains_key(org_id) {
                return Err(DomainError::Conflict(format!("org {org_id} already exists")));
            }
            check_new_key(state, first_key)?;
            let registered = OrgRegistered {
                org_id: org_id.clone(),
                display_name: display_name.clone(),
                plan: "free".into(),
                environment: *environment,
                registered_at: now,
            };
            let key = key_created(org_id, first_key, now)?;
            Ok(vec![registered.into(), key.into()])
        }
        Command::SignUp { org_id, org_name, environment, user_id, email, password_hash, session } => {
            check_name(org_name, "org_name")?;
            check_new_email(state, email)?;
            check_new_session(state, session, now)?;
            if state.orgs.contains_key(org_id) || state.users.contains_key(user_id) {
                return Err(DomainError::Conflict("org or user already exists".into()));
            }
            Ok(vec![
                OrgRegistered {
                    org_id: org_id.clone(),
                    display_name: org_name.clone(),
                    plan: "free".into(),
                    environment: *environment,
                    registered_at: now,
                }
                .into(),
                UserSignedUp {
                    user_id: user_id.clone(),
                    org_id: org_id.clone(),
                    email: email.clone(),
                    password_hash: password_hash.clone(),
                    role: Role::Owner,
                    signed_up_at: now,
                }
                .into(),
                SessionStarted {
                    user_id: user_id.clone(),
                    org_id: org_id.clone(),
                    session_hash: session.hash,
                    started_at: now,
                    expires_at: session.expires_at,
                }
                .into(),
            ])
        }
        Command::LogIn { user_id, session } => {
            let user = state.users.get(user_id).ok_or(DomainError::NotFound("user"))?;
            check_new_session(state, session, now)?;
            Ok(vec![
                SessionStarted {
                    user_id: user.id.clone(),
                    org_id: user.org_id.clone(),
                    session_hash: session.hash,
                    started_at: now,
                    expires_at: session.expires_at,
                }
                .into(),
            ])
        }
        Command::LogOut { session_hash } => match state.sessions.get(session_hash) {
            Some(session) if !session.ended => Ok(vec![
                SessionEnded {
                    user_id: session.user_id.clone(),
                    org_id: session.org_id.clone(),
                    session_hash: *session_hash,
                    ended_at: now,
                }
                .into(),
            ]),
            _ => Ok(Vec::new()),
        },
        Command::LogOutEverywhere { user_id } => {
            let user = state.users.get(user_id).ok_or(DomainError::NotFound("user"))?;
            Ok(vec![UserSessionsEnded { user_id: user.id.clone(), org_id: user.org_id.clone(), ended_at: now }.into()])
        }
        Command::AddMember { org_id, added_by, user_id, email, password_hash, role } => {
            let owner = state.users.get(added_by).filter(|user| &user.org_id == org_id);
            if owner.is_none_or(|owner| owner.role != Role::Owner) {
                return Err(DomainError::Forbidden("only an owner can add members".into()));
            }
            check_new_email(state, email)?;
            if state.users.contains_key(user_id) {
                return Err(DomainError::Conflict("user already exists".into()));
            }
            Ok(vec![
                MemberAdded {
                    user_id: user_id.clone(),
                    org_id: org_id.clone(),
                    email: email.clone(),
                    password_hash: password_hash.clone(),
                    role: *role,
                    added_by: added_by.clone(),
                    added_at: now,
                }
                .into(),
            ])
        }
        Command::CreateApiKey { org_id, key } => {
            if !state.orgs.contains_key(org_id) {
                return Err(DomainError::NotFound("org"));
            }
            check_new_key(state, key)?;
            Ok(vec![key_created(org_id, key, now)?.into()])
        }
        Command::RevokeApiKey { org_id, key_id, deleted } => {
            let key = state
                .api_keys
                .get(key_id)
                .filter(|key| &key.org_id == org_id && !key.deleted)
                .ok_or(DomainError::NotFound("api key"))?;
            if key.revoked_at.is_some() && !deleted {
                return Ok(Vec::new());
            }
            Ok(vec![
                ApiKeyRevoked { key_id: key.id.clone(), org_id: org_id.clone(), revoked_at: now, deleted: *deleted }
                    .into(),
            ])
        }
        Command::RecordKeyUses { uses } => Ok(uses
            .iter()
            .filter_map(|(key_id, used_at)| {
                let key = state.api_keys.get(key_id)?;
                let due = key.last_used_at.is_none_or(|recorded| {
                    *used_at >= recorded + chrono::Duration::seconds(KEY_USE_RECORD_INTERVAL_SECONDS)
                });
                (due && key.revoked_at.is_none() && *used_at <= now).then(|| {
                    ApiKeyUsed { key_id: key_id.clone(), org_id: key.org_id.clone(), last_used_at: *used_at }.into()
                })
            })
            .collect()),
    }
}
