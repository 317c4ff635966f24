//! API keys: `/v1/auth/account/api-keys` (create, list, show, revoke, delete).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, post};
use axum::{Json, Router};

use super::AppState;
use super::auth::authenticate;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use crate::app::Principal;
use crate::app::keys::{self, CreateKey, CreatedKey, KeyPage, KeyView, ListKeys};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/auth/account/api-keys", post(create).get(list))
        .route("/v1/auth/account/api-keys/{id}/revoke", post(revoke))
        .route("/v1/auth/account/api-keys/{id}", delete(remove).get(show))
        .route_layer(from_fn_with_state(state.clone(), authenticate))
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    Ok((StatusCode::CREATED, Json(keys::create(&state, &principal, request).await?)))
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(request): ApiQuery<ListKeys>,
) -> ApiResult<Json<KeyPage>> {
    Ok(Json(keys::list(&state, &principal, request).await?))
}

async fn show(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<KeyView>> {
    Ok(Json(keys::show(&state, &principal, &id).await?))
}

async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    Ok(Json(keys::revoke(&state, &principal, &id, false).await?))
}

async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    Ok(Json(keys::revoke(&state, &principal, &id, true).await?))
}
