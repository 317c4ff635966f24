//! API keys: create (the secret is shown once), list (never a secret), revoke, delete.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, post};
use axum::{Json, Router};
use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{NewApiKey, Scope};
use bahi_domain::event::{Budget, RateLimit};
use bahi_domain::ids::ApiKeyId;
use bahi_domain::state::ApiKey;
use bahi_domain::{Command, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Principal, authenticate};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::identity::{new_id_bytes, random_bytes};

/// Default and largest page of the key list.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/auth/account/api-keys", post(create).get(list))
        .route("/v1/auth/account/api-keys/{id}/revoke", post(revoke))
        .route("/v1/auth/account/api-keys/{id}", delete(remove).get(show))
        .route_layer(from_fn_with_state(state.clone(), authenticate))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    scopes: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
    budget: Option<Budget>,
    metadata: Option<serde_json::Value>,
}

#[derive(Serialize)]
pub struct Usage {
    pub calls: u64,
    pub cost: Money,
}

/// A key as listed: everything but the secret.
#[derive(Serialize)]
pub struct KeyView {
    pub api_key_id: ApiKeyId,
    pub name: Option<String>,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: &'static str,
    pub scopes: Vec<Scope>,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<BudgetView>,
    pub metadata: Option<serde_json::Value>,
    pub usage: Usage,
}

/// A budget with what was spent (and is held) in the current period, and when it resets.
#[derive(Serialize)]
pub struct BudgetView {
    pub amount: Money,
    pub period: bahi_domain::event::BudgetPeriod,
    pub spent: Money,
    pub held: Money,
    pub resets_at: Option<DateTime<Utc>>,
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

pub fn key_view(state: &AppState, ledger: &bahi_domain::State, key: &ApiKey, now: DateTime<Utc>) -> KeyView {
    let last_used_at = match (key.last_used_at, state.key_uses.last_use(&key.id)) {
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
        budget: budget_view(ledger, key.id.as_str(), key.budget, now),
        metadata: key.metadata.clone(),
        usage: Usage { calls: key.usage_calls, cost: key.usage_cost },
    }
}

#[derive(Serialize)]
struct CreateResponse {
    /// The secret: shown here once, never again.
    api_key: String,
    #[serde(flatten)]
    key: KeyView,
}

fn parse_scopes(requested: Option<Vec<String>>, principal: &Principal) -> Result<Vec<Scope>, ApiError> {
    let Some(requested) = requested else {
        // No scopes: every org scope the creator itself holds.
        return Ok(Scope::ORG_DEFAULT.into_iter().filter(|scope| principal.scopes.contains(scope)).collect());
    };
    super::auth::grantable_scopes(&requested, &principal.scopes)
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateRequest>,
) -> ApiResult<(StatusCode, Json<CreateResponse>)> {
    principal.require(Scope::KeysWrite)?;
    let scopes = parse_scopes(request.scopes, &principal)?;
    let key_id = ApiKeyId::from_random(new_id_bytes());
    let new_key = NewApiKey::generate(&state.config.key_prefix, state.config.environment, random_bytes());
    let command = Command::CreateApiKey {
        org_id: principal.org_id.clone(),
        key: NewKeyRecord {
            key_id: key_id.clone(),
            hash: new_key.hash,
            display_prefix: new_key.display_prefix,
            environment: state.config.environment,
            name: request.name,
            scopes,
            expires_at: request.expires_at,
            rate_limit: request.rate_limit,
            budget: request.budget,
            metadata: request.metadata,
        },
    };
    let context = super::command_context(principal.actor());
    state.writer.submit(command, context).await?;
    let now = Utc::now();
    let ledger = state.ledger.read();
    let key =
        ledger.state.api_keys.get(&key_id).ok_or_else(|| ApiError::internal("created key not in the read model"))?;
    Ok((
        StatusCode::CREATED,
        Json(CreateResponse { api_key: new_key.secret, key: key_view(&state, &ledger.state, key, now) }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    starting_after: Option<String>,
}

#[derive(Serialize)]
struct ListResponse {
    data: Vec<KeyView>,
    has_more: bool,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ListResponse>> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))?;
    principal.require(Scope::AccountRead)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid_request(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let starting_after = query.starting_after.as_deref().map(ApiKeyId::parse).transpose()?;
    let now = Utc::now();
    let ledger = state.ledger.read();
    let org = ledger.state.org(&principal.org_id).ok_or_else(|| ApiError::not_found("org"))?;
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
            .ok_or_else(|| ApiError::not_found("api key"))?,
    };
    let page: Vec<KeyView> =
        keys.iter().skip(start).take(limit).map(|key| key_view(&state, &ledger.state, key, now)).collect();
    let has_more = keys.len() > start + page.len();
    Ok(Json(ListResponse { data: page, has_more }))
}

/// The caller's own org's key, or 404 (never a hint that it exists elsewhere; only once
/// this node has caught up with the log).
async fn own_key(state: &AppState, principal: &Principal, id: &str) -> Result<ApiKeyId, ApiError> {
    let key_id = ApiKeyId::parse(id)?;
    let owned = super::find_at_head(state, |ledger| {
        ledger.state.api_keys.get(&key_id).filter(|key| key.org_id == principal.org_id && !key.deleted).map(|_| ())
    })
    .await?;
    owned.map(|()| key_id.clone()).ok_or_else(|| ApiError::not_found("api key"))
}

async fn show(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<KeyView>> {
    principal.require(Scope::AccountRead)?;
    let key_id = own_key(&state, &principal, &id).await?;
    let ledger = state.ledger.read();
    let key = ledger.state.api_keys.get(&key_id).ok_or_else(|| ApiError::not_found("api key"))?;
    Ok(Json(key_view(&state, &ledger.state, key, Utc::now())))
}

async fn revoke_key(state: AppState, principal: Principal, id: String, deleted: bool) -> ApiResult<Json<KeyView>> {
    principal.require(Scope::KeysWrite)?;
    let key_id = own_key(&state, &principal, &id).await?;
    let command = Command::RevokeApiKey { org_id: principal.org_id.clone(), key_id: key_id.clone(), deleted };
    let context = super::command_context(principal.actor());
    state.writer.submit(command, context).await?;
    let ledger = state.ledger.read();
    let key = ledger.state.api_keys.get(&key_id).ok_or_else(|| ApiError::not_found("api key"))?;
    Ok(Json(key_view(&state, &ledger.state, key, Utc::now())))
}

async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    revoke_key(state, principal, id, false).await
}

async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    revoke_key(state, principal, id, true).await
}
