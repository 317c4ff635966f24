//! Commands (imperative) and `decide`: the pure function from state, command and time to
//! the events that record what happened, or the reason it may not.

use chrono::{DateTime, Utc};

use crate::credential::{Environment, Scope, SecretHash};
use crate::error::DomainError;
use crate::event::{ApiKeyCreated, Budget, Event, OrgRegistered, RateLimit};
use crate::ids::{ApiKeyId, OrgId};
use crate::state::State;

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

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `POST /v1/auth/agent-register`: a new org and its first key in one step.
    RegisterOrg { org_id: OrgId, display_name: String, environment: Environment, first_key: NewKeyRecord },
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

pub fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::RegisterOrg { org_id, display_name, environment, first_key } => {
            check_name(display_name, "org_name")?;
            if state.orgs.contains_key(org_id) {
                return Err(DomainError::Conflict(format!("org {org_id} already exists")));
            }
            if state.api_keys.contains_key(&first_key.key_id) || state.api_keys_by_hash.contains_key(&first_key.hash) {
                return Err(DomainError::Conflict("key already exists".into()));
            }
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
    }
}
