//! Issuers on HTTP: `/.well-known/jwks.json`, `/me/issuers` and the operator's rotation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::auth::authenticate;
use super::error::ApiResult;
use super::extract::ApiJson;
use crate::app::issuers::{self, IssuerList, IssuerView, RegisterIssuer, Rotated};
use crate::app::{Operator, Principal};

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/me/issuers", post(register).get(list))
        .route("/me/issuers/{id}/revoke", post(revoke))
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/admin/signing-keys/rotate", post(rotate))
        .merge(authenticated)
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    ([(axum::http::header::CACHE_CONTROL, "public, max-age=300")], Json(issuers::published_keys(&state)))
}

async fn register(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<RegisterIssuer>,
) -> ApiResult<(StatusCode, Json<IssuerView>)> {
    Ok((StatusCode::CREATED, Json(issuers::register(&state, &principal, request).await?)))
}

async fn list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<IssuerList>> {
    Ok(Json(issuers::list(&state, &principal)?))
}

async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<IssuerView>> {
    Ok(Json(issuers::revoke(&state, &principal, &id).await?))
}

async fn rotate(State(state): State<AppState>, operator: Operator) -> ApiResult<Json<Rotated>> {
    Ok(Json(issuers::rotate_signing_key(&state, &operator).await?))
}
