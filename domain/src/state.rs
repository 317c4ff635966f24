//! The state every decision is made against: a pure fold of the log (`evolve`).
//!
//! The writer holds one copy that includes the batch being decided; each node holds
//! another, of committed events only, that the hot path reads.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::credential::{Environment, Scope, SecretHash};
use crate::event::{ApiKeyCreated, Budget, Event, OrgRegistered, RateLimit};
use crate::ids::{ApiKeyId, OrgId};
use crate::money::Money;

#[derive(Debug, Clone, PartialEq)]
pub struct Org {
    pub id: OrgId,
    pub display_name: String,
    pub plan: String,
    pub environment: Environment,
    pub registered_at: DateTime<Utc>,
    /// Credits minus debits, folded from the log.
    pub balance: Money,
    pub api_keys: Vec<ApiKeyId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub name: Option<String>,
    pub hash: SecretHash,
    pub display_prefix: String,
    pub environment: Environment,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<Budget>,
    pub metadata: Option<serde_json::Value>,
}

impl ApiKey {
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|expires_at| expires_at <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub orgs: HashMap<OrgId, Org>,
    pub api_keys: HashMap<ApiKeyId, ApiKey>,
    pub api_keys_by_hash: HashMap<SecretHash, ApiKeyId>,
}

impl State {
    pub fn org(&self, org_id: &OrgId) -> Option<&Org> {
        self.orgs.get(org_id)
    }

    pub fn api_key_by_hash(&self, hash: &SecretHash) -> Option<&ApiKey> {
        self.api_keys_by_hash.get(hash).and_then(|id| self.api_keys.get(id))
    }
}

/// Applies one committed (or just decided) event. Total: an event that was valid when it
/// was decided is applied without further checks, because the log is the truth.
pub fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::OrgRegistered(OrgRegistered { org_id, display_name, plan, environment, registered_at }) => {
            state.orgs.insert(
                org_id.clone(),
                Org {
                    id: org_id.clone(),
                    display_name: display_name.clone(),
                    plan: plan.clone(),
                    environment: *environment,
                    registered_at: *registered_at,
                    balance: Money::ZERO,
                    api_keys: Vec::new(),
                },
            );
        }
        Event::ApiKeyCreated(created) => {
            let ApiKeyCreated { key_id, org_id, key_hash, .. } = created;
            if let Some(org) = state.orgs.get_mut(org_id) {
                org.api_keys.push(key_id.clone());
            }
            state.api_keys_by_hash.insert(*key_hash, key_id.clone());
            state.api_keys.insert(
                key_id.clone(),
                ApiKey {
                    id: key_id.clone(),
                    org_id: org_id.clone(),
                    name: created.name.clone(),
                    hash: *key_hash,
                    display_prefix: created.display_prefix.clone(),
                    environment: created.environment,
                    scopes: created.scopes.clone(),
                    created_at: created.created_at,
                    expires_at: created.expires_at,
                    revoked_at: None,
                    rate_limit: created.rate_limit,
                    budget: created.budget,
                    metadata: created.metadata.clone(),
                },
            );
        }
    }
}
