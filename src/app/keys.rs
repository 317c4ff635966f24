//! API keys: create (the secret is shown once), list (never a secret), show, revoke, delete.

use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{NewApiKey, Scope};
use bahi_domain::event::{Budget, BudgetPeriod, RateLimit};
use bahi_domain::ids::{AgentId, ApiKeyId};
use bahi_domain::state::ApiKey;
use bahi_domain::{Command, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::principal::grantable_scopes;
use super::{AppError, AppResult, Principal, Services};
use crate::identity::{new_id_bytes, random_bytes};

/// Default and largest page of the key list.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    #[schemars(default, schema_with = "super::schema::requested_scopes")]
    pub scopes: Option<Vec<String>>,
    #[schemars(default, schema_with = "super::schema::optional_rate_limit")]
    pub rate_limit: Option<RateLimit>,
    #[schemars(default, schema_with = "super::schema::optional_budget")]
    pub budget: Option<Budget>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Usage {
    pub calls: u64,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub cost: Money,
}

/// A key as listed: everything but the secret.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KeyView {
    #[schemars(schema_with = "super::schema::id")]
    pub api_key_id: ApiKeyId,
    pub name: Option<String>,
    pub prefix: String,
    #[serde(serialize_with = "super::time::micros")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::time::optional_micros")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "super::time::optional_micros")]
    pub expires_at: Option<DateTime<Utc>>,
    pub status: &'static str,
    #[schemars(schema_with = "super::schema::scopes")]
    pub scopes: Vec<Scope>,
    #[schemars(schema_with = "super::schema::optional_rate_limit")]
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<BudgetView>,
    pub metadata: Option<serde_json::Value>,
    /// The agent the key speaks for (agent-register's key), when it is bound to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::optional_id")]
    pub agent_id: Option<AgentId>,
    pub usage: Usage,
}

/// A budget with what was spent (and is held) in the current period, and when it resets.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct BudgetView {
    #[schemars(schema_with = "super::schema::money_answer")]
    pub amount: Money,
    #[schemars(schema_with = "super::schema::budget_period")]
    pub period: BudgetPeriod,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub spent: Money,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub held: Money,
    #[serde(serialize_with = "super::time::optional_micros")]
    pub resets_at: Option<DateTime<Utc>>,
}

/// A new key with its secret: shown here once, never again.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CreatedKey {
    pub api_key: String,
    #[serde(flatten)]
    pub key: KeyView,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListKeys {
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
    pub starting_after: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KeyPage {
    pub data: Vec<KeyView>,
    pub has_more: bool,
}

pub fn budget_view(
    state: &bahi_domain::State,
    subject: &str,
    budget: Option<Budget>,
    now: DateTime<Utc>,
) -> Option<BudgetView> {
    let budget = budget?;
    let usage = state.budget_usage.get(subject).cloned().unwrap_or_default();
    Some(BudgetView {
        amount: budget.amount,
        period: budget.period,
        spent: usage.spent_in(budget.period, now),
        held: usage.held,
        resets_at: bahi_domain::billing::resets_at(budget.period, now),
    })
}

fn key_view(services: &Services, state: &bahi_domain::State, key: &ApiKey, now: DateTime<Utc>) -> KeyView {
    let last_used_at = match (key.last_used_at, services.key_uses.last_use(&key.id)) {
        (Some(recorded), Some(seen)) => Some(recorded.max(seen)),
        (recorded, seen) => recorded.or(seen),
    };
    KeyView {
        api_key_id: key.id.clone(),
        name: key.name.clone(),
        prefix: key.display_prefix.clone(),
        created_at: key.created_at,
        last_used_at,
        expires_at: key.expires_at,
        status: key.status(now),
        scopes: key.scopes.clone(),
        rate_limit: key.rate_limit,
        budget: budget_view(state, key.id.as_str(), key.budget, now),
        metadata: key.metadata.clone(),
        agent_id: key.agent_id.clone(),
        usage: Usage { calls: key.usage_calls, cost: key.usage_cost },
    }
}

/// The view of a key that the read model holds (after the writer answered for it).
fn view_of(services: &Services, key_id: &ApiKeyId) -> AppResult<KeyView> {
    let now = services.now();
    let ledger = services.ledger.read();
    let key = ledger.state.api_keys.get(key_id).ok_or_else(|| AppError::not_found("api key"))?;
    Ok(key_view(services, &ledger.state, key, now))
}

fn requested_scopes(requested: Option<Vec<String>>, principal: &Principal) -> AppResult<Vec<Scope>> {
    let Some(requested) = requested else {
        // No scopes: every org scope the creator itself holds.
        return Ok(Scope::ORG_DEFAULT.into_iter().filter(|scope| principal.scopes.contains(scope)).collect());
    };
    grantable_scopes(&requested, &principal.scopes)
}

pub async fn create(services: &Services, principal: &Principal, request: CreateKey) -> AppResult<CreatedKey> {
    principal.require(Scope::KeysWrite)?;
    let scopes = requested_scopes(request.scopes, principal)?;
    let key_id = ApiKeyId::from_random(new_id_bytes());
    let config = &services.config;
    let new_key = NewApiKey::generate(&config.key_prefix, config.environment, random_bytes());
    let command = Command::CreateApiKey {
        org_id: principal.org_id.clone(),
        key: NewKeyRecord {
            key_id: key_id.clone(),
            hash: new_key.hash,
            display_prefix: new_key.display_prefix,
            environment: config.environment,
            name: request.name,
            scopes,
            expires_at: request.expires_at,
            rate_limit: request.rate_limit,
            budget: request.budget,
            metadata: request.metadata,
        },
    };
    services.submit(command, principal.actor()).await?;
    let key = view_of(services, &key_id).map_err(|_| AppError::internal("created key not in the read model"))?;
    Ok(CreatedKey { api_key: new_key.secret, key })
}

pub async fn list(services: &Services, principal: &Principal, request: ListKeys) -> AppResult<KeyPage> {
    principal.require(Scope::AccountRead)?;
    let limit = request.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(AppError::invalid_request(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let starting_after = request.starting_after.as_deref().map(ApiKeyId::parse).transpose()?;
    let now = services.now();
    let ledger = services.ledger.read();
    let org = ledger.state.org(&principal.org_id).ok_or_else(|| AppError::not_found("org"))?;
    // Newest first, as consoles list them; the order is stable by (created_at, id).
    let mut keys: Vec<&ApiKey> = org
        .api_keys
        .iter()
        .filter_map(|id| ledger.state.api_keys.get(id).map(|key| &**key))
        .filter(|key| !key.deleted)
        .collect();
    keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    let start = match &starting_after {
        None => 0,
        Some(after) => keys
            .iter()
            .position(|key| &key.id == after)
            .map(|index| index + 1)
            .ok_or_else(|| AppError::not_found("api key"))?,
    };
    let data: Vec<KeyView> =
        keys.iter().skip(start).take(limit).map(|key| key_view(services, &ledger.state, key, now)).collect();
    let has_more = keys.len() > start + data.len();
    Ok(KeyPage { data, has_more })
}

/// The caller's own org's key, or 404 (never a hint that it exists elsewhere; only once
/// this node has caught up with the log).
async fn own_key(services: &Services, principal: &Principal, id: &str) -> AppResult<ApiKeyId> {
    let key_id = ApiKeyId::parse(id)?;
    let owned = services
        .find_at_head(|ledger| {
            ledger.state.api_keys.get(&key_id).filter(|key| key.org_id == principal.org_id && !key.deleted).map(|_| ())
        })
        .await?;
    owned.map(|()| key_id.clone()).ok_or_else(|| AppError::not_found("api key"))
}

pub async fn show(services: &Services, principal: &Principal, id: &str) -> AppResult<KeyView> {
    principal.require(Scope::AccountRead)?;
    let key_id = own_key(services, principal, id).await?;
    view_of(services, &key_id)
}

/// Revokes a key (it stays listed as revoked) or, with `deleted`, removes it from the list.
pub async fn revoke(services: &Services, principal: &Principal, id: &str, deleted: bool) -> AppResult<KeyView> {
    principal.require(Scope::KeysWrite)?;
    let key_id = own_key(services, principal, id).await?;
    let command = Command::RevokeApiKey { org_id: principal.org_id.clone(), key_id: key_id.clone(), deleted };
    services.submit(command, principal.actor()).await?;
    view_of(services, &key_id)
}
