//! Agents: the org's agents with their usage, a form to create one, and an agent's page
//! where a short-lived token is minted (shown once) and the agent is revoked. The same use
//! cases as `/agents` on the JSON API.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use bahi_domain::claims::AgentMode;
use bahi_domain::credential::Scope;
use serde::Deserialize;

use super::format::{Moment, inr};
use super::manage::{self, PageQuery, Paged, ScopeBox};
use super::{Chrome, ConsoleError, ConsoleForm, ConsoleSession, render, render_with_status, see_other};
use crate::app::agents::{self, AgentView, CreateAgent, MintToken};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/agents", get(list_page).post(create))
        .route("/console/agents/{id}", get(detail_page))
        .route("/console/agents/{id}/tokens", post(mint))
        .route("/console/agents/{id}/revoke", post(revoke))
}

/// An agent as a row or a page shows it.
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub status: &'static str,
    pub mode: &'static str,
    pub act_for: String,
    pub scopes: String,
    pub calls: u64,
    pub spend: String,
    pub budget: Option<String>,
    pub rate_limit: Option<String>,
    pub created: Moment,
    pub revoked: Option<Moment>,
}

fn row(agent: AgentView) -> AgentRow {
    AgentRow {
        id: agent.id.to_string(),
        name: agent.name,
        status: agent.status,
        mode: agent.mode.as_str(),
        act_for: agent.act_for,
        scopes: agent.scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" "),
        calls: agent.usage.calls,
        spend: inr(agent.usage.cost),
        budget: agent.budget.map(|budget| {
            format!("{} spent of {} a {}", inr(budget.spent), inr(budget.amount), period_name(budget.period))
        }),
        rate_limit: agent.rate_limit.map(|limit| format!("{} per {} s", limit.requests, limit.interval_seconds)),
        created: Moment::of(agent.created_at),
        revoked: agent.revoked_at.map(Moment::of),
    }
}

pub fn period_name(period: bahi_domain::event::BudgetPeriod) -> &'static str {
    match period {
        bahi_domain::event::BudgetPeriod::Day => "day",
        bahi_domain::event::BudgetPeriod::Month => "month",
        bahi_domain::event::BudgetPeriod::Total => "lifetime",
    }
}

/// What the create form was sent with, to show it again beside its error.
#[derive(Debug, Default, Deserialize)]
pub struct AgentFields {
    #[serde(default)]
    name: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    act_for: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    budget_amount: String,
    #[serde(default)]
    budget_period: String,
    #[serde(default)]
    rate_requests: String,
    #[serde(default)]
    rate_interval: String,
}

#[derive(Template)]
#[template(path = "console/agents.html")]
struct AgentsPage {
    chrome: Chrome,
    can_write: bool,
    agents: Paged<AgentRow>,
    truncated: bool,
    form: AgentFields,
    scope_boxes: Vec<ScopeBox>,
    error: Option<String>,
}

fn list(
    state: &AppState,
    session: &ConsoleSession,
    page: Option<usize>,
    form: AgentFields,
    error: Option<String>,
) -> Result<AgentsPage, ConsoleError> {
    let listed = agents::list(state, &session.principal)?;
    let ticked =
        if form.scopes.is_empty() && error.is_none() { vec!["inference".to_owned()] } else { form.scopes.clone() };
    Ok(AgentsPage {
        chrome: session.chrome("agents"),
        can_write: session.principal.scopes.contains(&Scope::AgentsWrite),
        agents: manage::paged(listed.data.into_iter().map(row).collect(), page),
        truncated: listed.has_more,
        scope_boxes: manage::scope_boxes(&session.principal, "scope", &ticked),
        form,
        error,
    })
}

async fn list_page(
    State(state): State<AppState>,
    session: ConsoleSession,
    Query(query): Query<PageQuery>,
) -> Result<Response, ConsoleError> {
    let page = list(&state, &session, query.number()?, AgentFields::default(), None)?;
    Ok(render(&page))
}

fn create_request(form: &AgentFields) -> Result<CreateAgent, ConsoleError> {
    let name = manage::optional(&form.name).ok_or_else(|| ConsoleError::bad_form("name the agent"))?;
    let mode = match form.mode.trim() {
        "" => None,
        "autonomous" => Some(AgentMode::Autonomous),
        "delegated" => Some(AgentMode::Delegated),
        "hybrid" => Some(AgentMode::Hybrid),
        _ => return Err(ConsoleError::bad_form("mode must be autonomous, delegated or hybrid")),
    };
    Ok(CreateAgent {
        name,
        mode,
        act_for: manage::optional(&form.act_for),
        scopes: manage::scopes(form.scopes.clone()),
        budget: manage::budget(&form.budget_amount, &form.budget_period)?,
        rate_limit: manage::rate_limit(&form.rate_requests, &form.rate_interval)?,
    })
}

async fn create(
    State(state): State<AppState>,
    ConsoleForm { session, form }: ConsoleForm<AgentFields>,
) -> Result<Response, ConsoleError> {
    let created = match create_request(&form) {
        Ok(request) => agents::create(&state, &session.principal, request).await.map_err(ConsoleError::from),
        Err(error) => Err(error),
    };
    match created {
        Ok(agent) => Ok(see_other(&format!("/console/agents/{}", agent.id))),
        Err(error) => {
            let (status, message) = error.status_and_message();
            let page = list(&state, &session, None, form, Some(message))?;
            Ok(render_with_status(status, &page))
        }
    }
}

/// A token minted a moment ago: shown in this answer only.
pub struct Minted {
    pub token: String,
    pub expires: Moment,
    pub jti: String,
}

#[derive(Template)]
#[template(path = "console/agent.html")]
struct AgentPage {
    chrome: Chrome,
    can_write: bool,
    agent: AgentRow,
    minted: Option<Minted>,
    error: Option<String>,
}

async fn agent_page(
    state: &AppState,
    session: &ConsoleSession,
    id: &str,
    minted: Option<Minted>,
    error: Option<String>,
) -> Result<AgentPage, ConsoleError> {
    let agent = agents::show(state, &session.principal, id).await?;
    Ok(AgentPage {
        chrome: session.chrome("agents"),
        can_write: session.principal.scopes.contains(&Scope::AgentsWrite),
        agent: row(agent),
        minted,
        error,
    })
}

async fn detail_page(
    State(state): State<AppState>,
    session: ConsoleSession,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    Ok(render(&agent_page(&state, &session, &id, None, None).await?))
}

#[derive(Debug, Default, Deserialize)]
struct MintFields {
    #[serde(default)]
    ttl_seconds: String,
}

async fn mint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { session, form }: ConsoleForm<MintFields>,
) -> Result<Response, ConsoleError> {
    let ttl_seconds = match manage::optional(&form.ttl_seconds).map(|text| text.parse::<i64>()) {
        None => None,
        Some(Ok(seconds)) => Some(seconds),
        Some(Err(_)) => return Err(ConsoleError::bad_form("lifetime must be a whole number of seconds")),
    };
    match agents::mint_token(&state, &session.principal, &id, MintToken { ttl_seconds, scopes: None }).await {
        Ok(minted) => {
            let minted = Minted {
                token: minted.access_token,
                expires: Moment::of(minted.expires_at),
                jti: minted.jti.to_string(),
            };
            Ok(render(&agent_page(&state, &session, &id, Some(minted), None).await?))
        }
        Err(error) => {
            let (status, message) = ConsoleError::from(error).status_and_message();
            let page = agent_page(&state, &session, &id, None, Some(message)).await?;
            Ok(render_with_status(status, &page))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct NoFields {}

async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { session, form: NoFields {} }: ConsoleForm<NoFields>,
) -> Result<Response, ConsoleError> {
    let agent = agents::revoke(&state, &session.principal, &id).await?;
    Ok(see_other(&format!("/console/agents/{}", agent.id)))
}
