//! Agents: create, list, get (with usage), mint minutes-long tokens, revoke the agent or
//! one token. Every change is an event; tokens are signed by the embedded issuer.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::{Json, Router};
use bahi_domain::Command;
use bahi_domain::claims::{AgentClaims, AgentMode, join_scopes};
use bahi_domain::command::{DEFAULT_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS};
use bahi_domain::credential::Scope;
use bahi_domain::event::{Budget, Event, RateLimit};
use bahi_domain::ids::{AgentId, TokenId};
use bahi_domain::state::Agent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Principal, authenticate, grantable_scopes};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, OptionalJson};
use super::keys::{BudgetView, Usage, budget_view};
use crate::identity::new_id_bytes;
use crate::writer::CommandContext;

/// Most agents listed at once.
pub const MAX_AGENTS_LISTED: usize = 1000;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/me/agents", post(create).get(list))
        .route("/me/agents/{id}", get(show))
        .route("/me/agents/{id}/token", post(mint))
        .route("/me/agents/{id}/revoke", post(revoke))
        .route("/me/agents/{id}/tokens/{jti}/revoke", post(revoke_token))
        .route_layer(from_fn_with_state(state.clone(), authenticate))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    mode: Option<AgentMode>,
    act_for: Option<String>,
    scopes: Option<Vec<String>>,
    budget: Option<Budget>,
    rate_limit: Option<RateLimit>,
}

#[derive(Serialize)]
pub struct AgentView {
    id: AgentId,
    name: String,
    status: &'static str,
    mode: AgentMode,
    act_for: String,
    scopes: Vec<Scope>,
    budget: Option<BudgetView>,
    rate_limit: Option<RateLimit>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    usage: Usage,
}

fn agent_view(state: &bahi_domain::State, agent: &Agent) -> AgentView {
    AgentView {
        id: agent.id.clone(),
        name: agent.name.clone(),
        status: if agent.revoked_at.is_some() { "revoked" } else { "active" },
        mode: agent.mode,
        act_for: agent.act_for.clone(),
        scopes: agent.scopes.clone(),
        budget: budget_view(state, agent.id.as_str(), agent.budget, Utc::now()),
        rate_limit: agent.rate_limit,
        created_at: agent.created_at,
        revoked_at: agent.revoked_at,
        usage: Usage { calls: agent.usage_calls, cost: agent.usage_cost },
    }
}

fn context(principal: &Principal) -> CommandContext {
    super::command_context(principal.actor())
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateRequest>,
) -> ApiResult<(StatusCode, Json<AgentView>)> {
    principal.require(Scope::AgentsWrite)?;
    let mode = request.mode.unwrap_or(AgentMode::Autonomous);
    let act_for = match (request.act_for, mode, &principal.user) {
        (Some(act_for), _, _) => act_for,
        (None, AgentMode::Delegated, Some((user_id, _))) => user_id.to_string(),
        (None, AgentMode::Delegated, None) => {
            return Err(ApiError::invalid_request("a delegated agent needs act_for: the usr_ id it acts for"));
        }
        (None, _, _) => principal.org_id.to_string(),
    };
    // Agents get inference alone unless asked for more: least privilege by default.
    let scopes = grantable_scopes(&request.scopes.unwrap_or_else(|| vec!["inference".to_owned()]), &principal.scopes)?;
    let agent_id = AgentId::from_random(new_id_bytes());
    let command = Command::CreateAgent {
        org_id: principal.org_id.clone(),
        agent_id: agent_id.clone(),
        name: request.name,
        mode,
        act_for,
        scopes,
        budget: request.budget,
        rate_limit: request.rate_limit,
    };
    state.writer.submit(command, context(&principal)).await?;
    let ledger = state.ledger.read();
    let agent =
        ledger.state.agents.get(&agent_id).ok_or_else(|| ApiError::internal("created agent not in the read model"))?;
    Ok((StatusCode::CREATED, Json(agent_view(&ledger.state, agent))))
}

fn require_read(principal: &Principal) -> Result<(), ApiError> {
    principal.require(Scope::AccountRead).or_else(|_| principal.require(Scope::AgentsWrite))
}

#[derive(Serialize)]
struct ListResponse {
    data: Vec<AgentView>,
    has_more: bool,
}

async fn list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<ListResponse>> {
    require_read(&principal)?;
    let ledger = state.ledger.read();
    let org = ledger.state.org(&principal.org_id).ok_or_else(|| ApiError::not_found("org"))?;
    let mut agents: Vec<&Agent> = org.agents.iter().filter_map(|id| ledger.state.agents.get(id)).collect();
    agents.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    let has_more = agents.len() > MAX_AGENTS_LISTED;
    Ok(Json(ListResponse {
        data: agents.into_iter().take(MAX_AGENTS_LISTED).map(|agent| agent_view(&ledger.state, agent)).collect(),
        has_more,
    }))
}

/// The caller's own org's agent, or 404 (only once this node has caught up with the log).
async fn own_agent(state: &AppState, principal: &Principal, id: &str) -> Result<AgentId, ApiError> {
    let agent_id = AgentId::parse(id)?;
    let owned = super::find_at_head(state, |ledger| {
        ledger.state.agents.get(&agent_id).filter(|agent| agent.org_id == principal.org_id).map(|_| ())
    })
    .await?;
    owned.map(|()| agent_id.clone()).ok_or_else(|| ApiError::not_found("agent"))
}

async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentView>> {
    require_read(&principal)?;
    let agent_id = own_agent(&state, &principal, &id).await?;
    let ledger = state.ledger.read();
    let agent = ledger.state.agents.get(&agent_id).ok_or_else(|| ApiError::not_found("agent"))?;
    Ok(Json(agent_view(&ledger.state, agent)))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    ttl_seconds: Option<i64>,
    scopes: Option<Vec<String>>,
}

#[derive(Serialize)]
struct MintResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    expires_at: DateTime<Utc>,
    jti: TokenId,
}

async fn mint(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    OptionalJson(request): OptionalJson<MintRequest>,
) -> ApiResult<Json<MintResponse>> {
    principal.require(Scope::AgentsWrite)?;
    let agent_id = own_agent(&state, &principal, &id).await?;
    let ttl_seconds = request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECONDS);
    if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
        return Err(ApiError::invalid_request(format!("ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECONDS}")));
    }
    let (agent_scopes, signing_key) = {
        let ledger = state.ledger.read();
        let agent = ledger.state.agents.get(&agent_id).ok_or_else(|| ApiError::not_found("agent"))?;
        (agent.scopes.clone(), state.identity.signing_key(&ledger.state).map_err(ApiError::internal)?)
    };
    let scopes = match request.scopes {
        None => agent_scopes,
        Some(requested) => grantable_scopes(&requested, &agent_scopes)?,
    };
    let token_id = TokenId::from_random(new_id_bytes());
    let command = Command::MintAgentToken {
        org_id: principal.org_id.clone(),
        agent_id: agent_id.clone(),
        token_id: token_id.clone(),
        key_id: signing_key.kid().to_owned(),
        scopes: scopes.clone(),
        ttl_seconds,
    };
    let outcome = state.writer.submit(command, context(&principal)).await?;
    let Some(Event::AgentTokenMinted(minted)) = outcome.events.first().map(|committed| &committed.event) else {
        return Err(ApiError::internal("minting recorded no event"));
    };
    let act_for = state.ledger.read().state.agents.get(&agent_id).map(|agent| (agent.act_for.clone(), agent.mode));
    let Some((act_for, mode)) = act_for else { return Err(ApiError::not_found("agent")) };
    let claims = AgentClaims {
        iss: state.identity.issuer.clone(),
        aud: state.identity.audience.clone(),
        sub: agent_id.to_string(),
        org: principal.org_id.to_string(),
        act_for,
        mode,
        scope: join_scopes(&scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>()),
        iat: minted.issued_at.timestamp(),
        nbf: minted.issued_at.timestamp(),
        exp: minted.expires_at.timestamp(),
        jti: token_id.to_string(),
    };
    let access_token = signing_key.sign(&claims).map_err(ApiError::internal)?;
    Ok(Json(MintResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl_seconds,
        expires_at: minted.expires_at,
        jti: token_id,
    }))
}

async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentView>> {
    principal.require(Scope::AgentsWrite)?;
    let agent_id = own_agent(&state, &principal, &id).await?;
    let command = Command::RevokeAgent { org_id: principal.org_id.clone(), agent_id: agent_id.clone() };
    state.writer.submit(command, context(&principal)).await?;
    let ledger = state.ledger.read();
    let agent = ledger.state.agents.get(&agent_id).ok_or_else(|| ApiError::not_found("agent"))?;
    Ok(Json(agent_view(&ledger.state, agent)))
}

#[derive(Serialize)]
struct TokenRevoked {
    jti: TokenId,
    agent_id: AgentId,
    revoked: bool,
}

async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, jti)): Path<(String, String)>,
) -> ApiResult<Json<TokenRevoked>> {
    principal.require(Scope::AgentsWrite)?;
    let agent_id = own_agent(&state, &principal, &id).await?;
    let token_id = TokenId::parse(&jti)?;
    let command = Command::RevokeAgentToken {
        org_id: principal.org_id.clone(),
        agent_id: agent_id.clone(),
        token_id: token_id.clone(),
    };
    state.writer.submit(command, context(&principal)).await?;
    Ok(Json(TokenRevoked { jti: token_id, agent_id, revoked: true }))
}
