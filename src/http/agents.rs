//! Agents on HTTP: `/me/agents` (create, list, show, mint a token, revoke, revoke a token).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::auth::authenticate;
use super::error::ApiResult;
use super::extract::{ApiJson, OptionalJson};
use crate::app::Principal;
use crate::app::agents::{self, AgentList, AgentView, CreateAgent, MintToken, MintedToken, TokenRevoked};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/me/agents", post(create).get(list))
        .route("/me/agents/{id}", get(show))
        .route("/me/agents/{id}/token", post(mint))
        .route("/me/agents/{id}/revoke", post(revoke))
        .route("/me/agents/{id}/tokens/{jti}/revoke", post(revoke_token))
        .route_layer(from_fn_with_state(state.clone(), authenticate))
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateAgent>,
) -> ApiResult<(StatusCode, Json<AgentView>)> {
    Ok((StatusCode::CREATED, Json(agents::create(&state, &principal, request).await?)))
}

async fn list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<AgentList>> {
    Ok(Json(agents::list(&state, &principal)?))
}

async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentView>> {
    Ok(Json(agents::show(&state, &principal, &id).await?))
}

async fn mint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    OptionalJson(request): OptionalJson<MintToken>,
) -> ApiResult<Json<MintedToken>> {
    Ok(Json(agents::mint_token(&state, &principal, &id, request).await?))
}

async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentView>> {
    Ok(Json(agents::revoke(&state, &principal, &id).await?))
}

async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, jti)): Path<(String, String)>,
) -> ApiResult<Json<TokenRevoked>> {
    Ok(Json(agents::revoke_token(&state, &principal, &id, &jti).await?))
}
