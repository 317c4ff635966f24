//! The gateway-facing core on HTTP: `/v1/authorize`, `/v1/usage`, top-ups, and the
//! operator's prices, grants and gateway keys.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::routing::{post, put};
use axum::{Json, Router};

use super::AppState;
use super::auth::authenticate;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, OptionalJson};
use crate::app::billing::{
    self, Authorize, Authorized, CreateGatewayKey, CreatedGatewayKey, GatewayKeyRevoked, Grant, Granted, PriceView,
    RecordUsage, SetPrice, Settled, TopUp, ToppedUp,
};
use crate::app::{Operator, Principal};

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

async fn authorize(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<Authorize>,
) -> ApiResult<Json<Authorized>> {
    Ok(Json(billing::authorize(&state, &principal, request).await?))
}

async fn usage(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<RecordUsage>,
) -> ApiResult<Json<Settled>> {
    Ok(Json(billing::record_usage(&state, &operator, request).await?))
}

async fn set_price(
    State(state): State<AppState>,
    operator: Operator,
    Path(model): Path<String>,
    ApiJson(request): ApiJson<SetPrice>,
) -> ApiResult<Json<PriceView>> {
    Ok(Json(billing::set_price(&state, &operator, model, request).await?))
}

async fn top_up(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<TopUp>,
) -> ApiResult<(StatusCode, Json<ToppedUp>)> {
    Ok((StatusCode::CREATED, Json(billing::top_up(&state, &principal, request).await?)))
}

/// The `Idempotency-Key` header, as text.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|value| value.to_str().map_err(|_| ApiError::invalid_request("Idempotency-Key must be printable text")))
        .transpose()
}

async fn grant(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    ApiJson(request): ApiJson<Grant>,
) -> ApiResult<(StatusCode, Json<Granted>)> {
    let key = idempotency_key(&headers)?;
    Ok((StatusCode::CREATED, Json(billing::grant(&state, &operator, key, request).await?)))
}

async fn create_gateway_key(
    State(state): State<AppState>,
    operator: Operator,
    OptionalJson(request): OptionalJson<CreateGatewayKey>,
) -> ApiResult<(StatusCode, Json<CreatedGatewayKey>)> {
    Ok((StatusCode::CREATED, Json(billing::create_gateway_key(&state, &operator, request).await?)))
}

async fn revoke_gateway_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<GatewayKeyRevoked>> {
    Ok(Json(billing::revoke_gateway_key(&state, &operator, &id).await?))
}
