//! Agents: create, list, show (with usage), mint minutes-long tokens, revoke the agent or
//! one token. Every change is an event; tokens are signed by the embedded issuer.

use bahi_domain::Command;
use bahi_domain::claims::{AgentClaims, AgentMode, join_scopes};
use bahi_domain::command::{DEFAULT_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS};
use bahi_domain::credential::Scope;
use bahi_domain::event::{Budget, Event, RateLimit};
use bahi_domain::ids::{AgentId, TokenId};
use bahi_domain::state::Agent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::keys::{BudgetView, Usage, budget_view};
use super::principal::grantable_scopes;
use super::{AppError, AppResult, Principal, Services};
use crate::identity::new_id_bytes;

/// Most agents listed at once.
pub const MAX_AGENTS_LISTED: usize = 1000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    pub name: String,
    #[schemars(default, schema_with = "super::schema::optional_agent_mode")]
    pub mode: Option<AgentMode>,
    pub act_for: Option<String>,
    #[schemars(default, schema_with = "super::schema::requested_scopes")]
    pub scopes: Option<Vec<String>>,
    #[schemars(default, schema_with = "super::schema::optional_budget")]
    pub budget: Option<Budget>,
    #[schemars(default, schema_with = "super::schema::optional_rate_limit")]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AgentView {
    #[schemars(schema_with = "super::schema::id")]
    pub id: AgentId,
    pub name: String,
    pub status: &'static str,
    #[schemars(schema_with = "super::schema::agent_mode")]
    pub mode: AgentMode,
    pub act_for: String,
    #[schemars(schema_with = "super::schema::scopes")]
    pub scopes: Vec<Scope>,
    pub budget: Option<BudgetView>,
    #[schemars(schema_with = "super::schema::optional_rate_limit")]
    pub rate_limit: Option<RateLimit>,
    #[serde(serialize_with = "super::time::micros")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::time::optional_micros")]
    pub revoked_at: Option<DateTime<Utc>>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AgentList {
    pub data: Vec<AgentView>,
    pub has_more: bool,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    #[schemars(range(min = 1, max = 3600))]
    pub ttl_seconds: Option<i64>,
    #[schemars(default, schema_with = "super::schema::requested_scopes")]
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct MintedToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(serialize_with = "super::time::micros")]
    pub expires_at: DateTime<Utc>,
    #[schemars(schema_with = "super::schema::id")]
    pub jti: TokenId,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TokenRevoked {
    #[schemars(schema_with = "super::schema::id")]
    pub jti: TokenId,
    #[schemars(schema_with = "super::schema::id")]
    pub agent_id: AgentId,
    pub revoked: bool,
}

fn agent_view(state: &bahi_domain::State, agent: &Agent, now: DateTime<Utc>) -> AgentView {
    AgentView {
        id: agent.id.clone(),
        name: agent.name.clone(),
        status: if agent.revoked_at.is_some() { "revoked" } else { "active" },
        mode: agent.mode,
        act_for: agent.act_for.clone(),
        scopes: agent.scopes.clone(),
        budget: budget_view(state, agent.id.as_str(), agent.budget, now),
        rate_limit: agent.rate_limit,
        created_at: agent.created_at,
        revoked_at: agent.revoked_at,
        usage: Usage { calls: agent.usage_calls, cost: agent.usage_cost },
    }
}

/// The view of an agent that the read model holds.
fn view_of(services: &Services, agent_id: &AgentId) -> AppResult<AgentView> {
    let now = services.now();
    let ledger = services.ledger.read();
    let agent = ledger.state.agents.get(agent_id).ok_or_else(|| AppError::not_found("agent"))?;
    Ok(agent_view(&ledger.state, agent, now))
}

pub async fn create(services: &Services, principal: &Principal, request: CreateAgent) -> AppResult<AgentView> {
    principal.require(Scope::AgentsWrite)?;
    let mode = request.mode.unwrap_or(AgentMode::Autonomous);
    let act_for = match (request.act_for, mode, &principal.user) {
        (Some(act_for), _, _) => act_for,
        (None, AgentMode::Delegated, Some((user_id, _))) => user_id.to_string(),
        (None, AgentMode::Delegated, None) => {
            return Err(AppError::invalid_request("a delegated agent needs act_for: the usr_ id it acts for"));
        }
        (None, _, _) => principal.org_id.to_string(),
    };
    // Agents get inference alone unless asked for more: least privilege by default.
    let requested = request.scopes.unwrap_or_else(|| vec![Scope::Inference.as_str().to_owned()]);
    let scopes = grantable_scopes(&requested, &principal.scopes)?;
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
    services.submit(command, principal.actor()).await?;
    view_of(services, &agent_id).map_err(|_| AppError::internal("created agent not in the read model"))
}

fn require_read(principal: &Principal) -> AppResult<()> {
    principal.require(Scope::AccountRead).or_else(|_| principal.require(Scope::AgentsWrite))
}

pub fn list(services: &Services, principal: &Principal) -> AppResult<AgentList> {
    require_read(principal)?;
    let now = services.now();
    let ledger = services.ledger.read();
    let org = ledger.state.org(&principal.org_id).ok_or_else(|| AppError::not_found("org"))?;
    let mut agents: Vec<&Agent> = org.agents.iter().filter_map(|id| ledger.state.agents.get(id)).collect();
    agents.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    let has_more = agents.len() > MAX_AGENTS_LISTED;
    let data = agents.into_iter().take(MAX_AGENTS_LISTED).map(|agent| agent_view(&ledger.state, agent, now)).collect();
    Ok(AgentList { data, has_more })
}

/// The caller's own org's agent, or 404 (only once this node has caught up with the log).
async fn own_agent(services: &Services, principal: &Principal, id: &str) -> AppResult<AgentId> {
    let agent_id = AgentId::parse(id)?;
    let owned = services
        .find_at_head(|ledger| {
            ledger.state.agents.get(&agent_id).filter(|agent| agent.org_id == principal.org_id).map(|_| ())
        })
        .await?;
    owned.map(|()| agent_id.clone()).ok_or_else(|| AppError::not_found("agent"))
}

pub async fn show(services: &Services, principal: &Principal, id: &str) -> AppResult<AgentView> {
    require_read(principal)?;
    let agent_id = own_agent(services, principal, id).await?;
    view_of(services, &agent_id)
}

pub async fn mint_token(
    services: &Services,
    principal: &Principal,
    id: &str,
    request: MintToken,
) -> AppResult<MintedToken> {
    principal.require(Scope::AgentsWrite)?;
    let agent_id = own_agent(services, principal, id).await?;
    let ttl_seconds = request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECONDS);
    if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
        return Err(AppError::invalid_request(format!("ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECONDS}")));
    }
    let (agent_scopes, signing_key) = {
        let ledger = services.ledger.read();
        let agent = ledger.state.agents.get(&agent_id).ok_or_else(|| AppError::not_found("agent"))?;
        (agent.scopes.clone(), services.identity.signing_key(&ledger.state).map_err(AppError::internal)?)
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
    let outcome = services.submit(command, principal.actor()).await?;
    let Some(Event::AgentTokenMinted(minted)) = outcome.events.first().map(|committed| &committed.event) else {
        return Err(AppError::internal("minting recorded no event"));
    };
    let agent = services.ledger.read().state.agents.get(&agent_id).map(|agent| (agent.act_for.clone(), agent.mode));
    let (act_for, mode) = agent.ok_or_else(|| AppError::not_found("agent"))?;
    let claims = AgentClaims {
        iss: services.identity.issuer.clone(),
        aud: services.identity.audience.clone(),
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
    let access_token = signing_key.sign(&claims).map_err(AppError::internal)?;
    Ok(MintedToken {
        access_token,
        token_type: "Bearer",
        expires_in: ttl_seconds,
        expires_at: minted.expires_at,
        jti: token_id,
    })
}

pub async fn revoke(services: &Services, principal: &Principal, id: &str) -> AppResult<AgentView> {
    principal.require(Scope::AgentsWrite)?;
    let agent_id = own_agent(services, principal, id).await?;
    let command = Command::RevokeAgent { org_id: principal.org_id.clone(), agent_id: agent_id.clone() };
    services.submit(command, principal.actor()).await?;
    view_of(services, &agent_id)
}

pub async fn revoke_token(services: &Services, principal: &Principal, id: &str, jti: &str) -> AppResult<TokenRevoked> {
    principal.require(Scope::AgentsWrite)?;
    let agent_id = own_agent(services, principal, id).await?;
    let token_id = TokenId::parse(jti)?;
    let command = Command::RevokeAgentToken {
        org_id: principal.org_id.clone(),
        agent_id: agent_id.clone(),
        token_id: token_id.clone(),
    };
    services.submit(command, principal.actor()).await?;
    Ok(TokenRevoked { jti: token_id, agent_id, revoked: true })
}
