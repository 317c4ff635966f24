//! Orgs on HTTP: `/v1/auth/agent-register` and `/v1/auth/account`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::error::ApiResult;
use super::extract::OptionalJson;
use crate::app::Principal;
use crate::app::accounts::{self, Account, AgentRegister, Registered};

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/v1/auth/account", get(account))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), super::auth::authenticate));
    Router::new().route("/v1/auth/agent-register", post(agent_register)).merge(authenticated)
}

async fn agent_register(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    OptionalJson(request): OptionalJson<AgentRegister>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    Ok((StatusCode::CREATED, Json(accounts::agent_register(&state, client.ip(), request).await?)))
}

async fn account(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Account>> {
    Ok(Json(accounts::account(&state, &principal)?))
}
