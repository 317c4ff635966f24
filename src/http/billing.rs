//! The gateway-facing core: authorize a call (placing a hold), record its usage (settling
//! it at the price in force when it was authorized), set prices, add credit.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::routing::{post, put};
use axum::{Json, Router};
use bahi_domain::billing::{Price, UsageStatus};
use bahi_domain::credential::{NewApiKey, Role, Scope};
use bahi_domain::event::{CallAttribution, Event};
use bahi_domain::ids::{ApiKeyId, CallId, OrgId, TopupId};
use bahi_domain::{Command, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::{Operator, Principal, authenticate};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, OptionalJson};
use crate::identity::{new_id_bytes, random_bytes};
use crate::ledger::{Actor, Idempotency};
use crate::writer::CommandContext;

/// Longest accepted `Idempotency-Key` header.
pub const MAX_IDEMPOTENCY_KEY_LENGTH: usize = 255;

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/v1/authorize", post(authorize))
        .route("/me/credits/topups", post(top_up))
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/usage", post(usage))
        .route("/v1/admin/prices/{model}", put(set_price))
        .route("/v1/admin/credits/grants", post(grant))
        .route("/v1/admin/gateway-keys", post(create_gateway_key))
        .route("/v1/admin/gateway-keys/{id}/revoke", post(revoke_gateway_key))
        .merge(authenticated)
}

fn context(actor: Actor, idempotency: Option<Idempotency>) -> CommandContext {
    CommandContext { idempotency, ..super::command_context(actor) }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A client `Idempotency-Key`, scoped to the caller so that two callers never collide.
fn idempotency(headers: &HeaderMap, caller: &str, request: &impl Serialize) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::invalid_request("Idempotency-Key must be printable text"))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LENGTH {
        return Err(ApiError::invalid_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )));
    }
    let body = serde_json::to_string(request).map_err(ApiError::internal)?;
    Ok(Some(Idempotency { key: format!("{caller}:{key}"), request_hash: Sha256::digest(body.as_bytes()).into() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeRequest {
    model: String,
    max_cost: Option<Money>,
}

#[derive(Serialize)]
struct AuthorizeResponse {
    call_id: CallId,
    org_id: OrgId,
    agent_id: Option<String>,
    act_for: String,
    credential_id: String,
    credential_kind: &'static str,
    scopes: Vec<Scope>,
    model: String,
    hold: Money,
    hold_expires_at: DateTime<Utc>,
}

async fn authorize(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<AuthorizeRequest>,
) -> ApiResult<Json<AuthorizeResponse>> {
    principal.require(Scope::Inference)?;
    bahi_domain::command::check_model_name(&request.model)?;
    let attribution = CallAttribution {
        credential_kind: principal.credential_kind.as_str().to_owned(),
        credential_id: principal.credential_id.clone(),
        agent_id: principal.agent.as_ref().map(|agent| agent.id.clone()),
        agent_name: principal.agent.as_ref().and_then(|agent| agent.name.clone()),
        act_for: principal.act_for.clone(),
    };
    let org_id = principal.org_id.clone();
    // Every authorization holds credit through the writer, `max_cost` or the model's
    // default hold: concurrent calls can never commit more than the org has.
    let call_id = CallId::from_random(new_id_bytes());
    let command = Command::Authorize {
        call_id: call_id.clone(),
        org_id,
        attribution,
        model: request.model.clone(),
        max_cost: request.max_cost,
        hold_ttl_seconds: i64::try_from(state.config.hold_ttl_seconds)
            .map_err(|_| ApiError::internal("the hold TTL does not fit in seconds"))?,
    };
    let outcome = state.writer.submit(command, context(principal.actor(), None)).await?;
    let Some(Event::CallAuthorized(authorized)) = outcome.events.first().map(|committed| &committed.event) else {
        return Err(ApiError::internal("authorization recorded no event"));
    };
    let (hold, hold_expires_at) = (authorized.hold, authorized.hold_expires_at);
    Ok(Json(AuthorizeResponse {
        call_id,
        org_id: principal.org_id.clone(),
        agent_id: principal.agent.as_ref().map(|agent| agent.id.clone()),
        act_for: principal.act_for.clone(),
        credential_id: principal.credential_id.clone(),
        credential_kind: principal.credential_kind.as_str(),
        scopes: principal.scopes.clone(),
        model: request.model,
        hold,
        hold_expires_at,
    }))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageRequest {
    call_id: String,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
    status: UsageStatus,
}

#[derive(Serialize)]
struct UsageResponse {
    call_id: CallId,
    cost: Money,
    balance: Money,
    input_tokens: u64,
    output_tokens: u64,
    settled_at: DateTime<Utc>,
}

async fn usage(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<UsageRequest>,
) -> ApiResult<Json<UsageResponse>> {
    operator.require(Scope::UsageWrite)?;
    let call_id = CallId::parse(&request.call_id)?;
    let request_hash = sha256_hex(&serde_json::to_string(&request).map_err(ApiError::internal)?);
    let command = Command::RecordUsage {
        call_id: call_id.clone(),
        model: request.model,
        input_tokens: request.input_tokens,
        output_tokens: request.output_tokens,
        status: request.status,
        request_hash,
    };
    state.writer.submit(command, context(operator.actor(), None)).await?;
    // New or replayed, the answer is the settlement as recorded: the same body gets the
    // same answer, byte for byte.
    let ledger = state.ledger.read();
    let settlement = ledger
        .state
        .calls
        .get(&call_id)
        .and_then(|call| call.settlement.clone())
        .ok_or_else(|| ApiError::internal("settled call not in the read model"))?;
    Ok(Json(UsageResponse {
        call_id,
        cost: settlement.cost,
        balance: settlement.balance_after,
        input_tokens: settlement.input_tokens,
        output_tokens: settlement.output_tokens,
        settled_at: settlement.settled_at,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceRequest {
    input_per_million: Money,
    output_per_million: Money,
    default_hold: Option<Money>,
}

#[derive(Serialize)]
struct PriceResponse {
    model: String,
    input_per_million: Money,
    output_per_million: Money,
    /// What an authorization without `max_cost` holds: the operator's, or the default.
    default_hold: Money,
    set_at: DateTime<Utc>,
}

async fn set_price(
    State(state): State<AppState>,
    operator: Operator,
    Path(model): Path<String>,
    ApiJson(request): ApiJson<PriceRequest>,
) -> ApiResult<Json<PriceResponse>> {
    operator.require(Scope::PricesWrite)?;
    let price = Price { input_per_million: request.input_per_million, output_per_million: request.output_per_million };
    let command = Command::SetPrice { model: model.clone(), price, default_hold: request.default_hold };
    let outcome = state.writer.submit(command, context(operator.actor(), None)).await?;
    let Some(committed) = outcome.events.first() else {
        return Err(ApiError::internal("price set recorded no event"));
    };
    let default_hold = bahi_domain::command::default_hold(request.default_hold, &price)?;
    Ok(Json(PriceResponse {
        model,
        input_per_million: price.input_per_million,
        output_per_million: price.output_per_million,
        default_hold,
        set_at: committed.recorded_at,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUpRequest {
    amount: Money,
    payment_reference: String,
}

#[derive(Serialize)]
struct TopUpResponse {
    topup_id: TopupId,
    amount: Money,
    payment_reference: String,
    balance: Money,
}

/// Money in: a human with the owner or finance role, never a key or an agent.
async fn top_up(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<TopUpRequest>,
) -> ApiResult<(StatusCode, Json<TopUpResponse>)> {
    let (user_id, _) = principal.require_human(&[Role::Owner, Role::Finance])?;
    let command = Command::TopUp {
        org_id: principal.org_id.clone(),
        topup_id: TopupId::from_random(new_id_bytes()),
        amount: request.amount,
        payment_reference: request.payment_reference.clone(),
        user_id,
    };
    state.writer.submit(command, context(principal.actor(), None)).await?;
    // New or replayed, answer with the top-up recorded for this payment reference.
    let ledger = state.ledger.read();
    let record = ledger
        .state
        .topups
        .get(&(principal.org_id.clone(), request.payment_reference.clone()))
        .ok_or_else(|| ApiError::internal("top-up not in the read model"))?;
    Ok((
        StatusCode::CREATED,
        Json(TopUpResponse {
            topup_id: record.topup_id.clone(),
            amount: record.amount,
            payment_reference: request.payment_reference,
            balance: record.balance_after,
        }),
    ))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    org_id: String,
    amount: Money,
    reason: String,
}

#[derive(Serialize)]
struct GrantResponse {
    grant_id: TopupId,
    org_id: OrgId,
    amount: Money,
    reason: String,
    balance: Money,
}

async fn grant(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    ApiJson(request): ApiJson<GrantRequest>,
) -> ApiResult<(StatusCode, Json<GrantResponse>)> {
    operator.require(Scope::CreditsGrant)?;
    let idempotency = idempotency(&headers, "operator", &request)?;
    let org_id = OrgId::parse(&request.org_id)?;
    let command = Command::Grant {
        org_id: org_id.clone(),
        grant_id: TopupId::from_random(new_id_bytes()),
        amount: request.amount,
        reason: request.reason,
    };
    let outcome = state.writer.submit(command, context(operator.actor(), idempotency)).await?;
    let Some(Event::CreditsGranted(granted)) = outcome.events.first().map(|committed| &committed.event) else {
        return Err(ApiError::internal("grant recorded no event"));
    };
    Ok((
        StatusCode::CREATED,
        Json(GrantResponse {
            grant_id: granted.grant_id.clone(),
            org_id,
            amount: granted.amount,
            reason: granted.reason.clone(),
            balance: granted.balance_after,
        }),
    ))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayKeyRequest {
    name: Option<String>,
}

#[derive(Serialize)]
struct GatewayKeyResponse {
    api_key: String,
    api_key_id: ApiKeyId,
    name: Option<String>,
    prefix: String,
    scopes: Vec<Scope>,
}

async fn create_gateway_key(
    State(state): State<AppState>,
    operator: Operator,
    OptionalJson(request): OptionalJson<GatewayKeyRequest>,
) -> ApiResult<(StatusCode, Json<GatewayKeyResponse>)> {
    if operator.gateway_key.is_some() {
        return Err(ApiError::forbidden("operator_only", "only the operator credential creates gateway keys"));
    }
    let key_id = ApiKeyId::from_random(new_id_bytes());
    let new_key = NewApiKey::generate(&state.config.key_prefix, state.config.environment, random_bytes());
    let command = Command::CreateGatewayKey {
        key_id: key_id.clone(),
        name: request.name.clone(),
        hash: new_key.hash,
        display_prefix: new_key.display_prefix.clone(),
    };
    state.writer.submit(command, context(operator.actor(), None)).await?;
    Ok((
        StatusCode::CREATED,
        Json(GatewayKeyResponse {
            api_key: new_key.secret,
            api_key_id: key_id,
            name: request.name,
            prefix: new_key.display_prefix,
            scopes: vec![Scope::UsageWrite],
        }),
    ))
}

async fn revoke_gateway_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if operator.gateway_key.is_some() {
        return Err(ApiError::forbidden("operator_only", "only the operator credential revokes gateway keys"));
    }
    let key_id = ApiKeyId::parse(&id)?;
    state.writer.submit(Command::RevokeGatewayKey { key_id: key_id.clone() }, context(operator.actor(), None)).await?;
    Ok(Json(serde_json::json!({"api_key_id": key_id, "status": "revoked"})))
}
