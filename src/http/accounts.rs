//! Orgs and their account: agent-register and the account endpoint.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{NewApiKey, Scope};
use bahi_domain::ids::{ApiKeyId, OrgId};
use bahi_domain::{Command, Money};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::extract::OptionalJson;
use crate::identity::{new_id_bytes, random_bytes};
use crate::ledger::Actor;

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/v1/auth/account", get(account))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), super::auth::authenticate));
    Router::new().route("/v1/auth/agent-register", post(agent_register)).merge(authenticated)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentRegisterRequest {
    org_name: Option<String>,
    agent_name: Option<String>,
}

#[derive(Serialize)]
struct AgentRegisterResponse {
    org_id: OrgId,
    api_key: String,
    api_key_id: ApiKeyId,
}

async fn agent_register(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    OptionalJson(request): OptionalJson<AgentRegisterRequest>,
) -> ApiResult<(StatusCode, Json<AgentRegisterResponse>)> {
    super::auth::check_client_rate(&state, client.ip())?;
    let org_id = OrgId::from_random(new_id_bytes());
    let key_id = ApiKeyId::from_random(new_id_bytes());
    let new_key = NewApiKey::generate(&state.config.key_prefix, state.config.environment, random_bytes());
    let display_name = request
        .org_name
        .clone()
        .or_else(|| request.agent_name.as_ref().map(|agent| format!("{agent}'s org")))
        .unwrap_or_else(|| "Agent org".to_owned());
    let command = Command::RegisterOrg {
        org_id: org_id.clone(),
        display_name,
        environment: state.config.environment,
        first_key: NewKeyRecord {
            key_id: key_id.clone(),
            hash: new_key.hash,
            display_prefix: new_key.display_prefix,
            environment: state.config.environment,
            name: request.agent_name,
            scopes: Scope::ORG_DEFAULT.to_vec(),
            expires_at: None,
            rate_limit: None,
            budget: None,
            metadata: None,
        },
    };
    let context = super::command_context(Actor::anonymous(client.ip().to_string()));
    state.writer.submit(command, context).await?;
    Ok((StatusCode::CREATED, Json(AgentRegisterResponse { org_id, api_key: new_key.secret, api_key_id: key_id })))
}

#[derive(Serialize)]
struct Member {
    user_id: String,
    email: String,
    role: String,
}

#[derive(Serialize)]
struct AccountResponse {
    org_id: OrgId,
    display_name: String,
    plan: String,
    environment: String,
    credit_balance: Money,
    /// Balance minus the holds of authorized, unsettled calls.
    available_balance: Money,
    held: Money,
    members: Vec<Member>,
}

async fn account(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<AccountResponse>> {
    principal.require(Scope::AccountRead)?;
    let ledger = state.ledger.read();
    let org = ledger.state.org(&principal.org_id).ok_or_else(|| ApiError::not_found("org"))?;
    let members = org
        .members
        .iter()
        .filter_map(|id| ledger.state.users.get(id))
        .map(|user| Member {
            user_id: user.id.to_string(),
            email: user.email.clone(),
            role: user.role.as_str().to_owned(),
        })
        .collect();
    Ok(Json(AccountResponse {
        org_id: org.id.clone(),
        display_name: org.display_name.clone(),
        plan: org.plan.clone(),
        environment: org.environment.as_str().to_owned(),
        credit_balance: org.balance,
        available_balance: ledger.state.available(&org.id),
        held: org.held,
        members,
    }))
}
