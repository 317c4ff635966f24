//! Models on HTTP: the operator's `PUT /v1/admin/models/{model}` and the credential's
//! `GET /v1/models` (OpenAI's shape).

use axum::extract::{Path, State};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, put};
use axum::{Json, Router};

use super::AppState;
use super::auth::authenticate;
use super::error::ApiResult;
use super::extract::ApiJson;
use crate::app::models::{self, ConfigureModel, ModelList, ModelView};
use crate::app::{Operator, Principal};

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/v1/models", get(list_models))
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    Router::new().route("/v1/admin/models/{model}", put(configure_model)).merge(authenticated)
}

async fn configure_model(
    State(state): State<AppState>,
    operator: Operator,
    Path(model): Path<String>,
    ApiJson(request): ApiJson<ConfigureModel>,
) -> ApiResult<Json<ModelView>> {
    Ok(Json(models::configure_model(&state, &operator, model, request).await?))
}

async fn list_models(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<ModelList>> {
    Ok(Json(models::list_models(&state, &principal)?))
}
