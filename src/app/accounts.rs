//! Orgs and their account: agent-register (an org and its first key, no human needed) and
//! the account summary.

use std::net::IpAddr;

use bahi_domain::command::{FirstAgent, NewKeyRecord};
use bahi_domain::credential::{NewApiKey, Scope};
use bahi_domain::ids::{AgentId, ApiKeyId, OrgId};
use bahi_domain::{Command, Money};
use serde::{Deserialize, Serialize};

use super::principal::check_client_rate;
use super::{AppError, AppResult, Principal, Services};
use crate::identity::{new_id_bytes, random_bytes};
use crate::ledger::Actor;

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRegister {
    pub org_name: Option<String>,
    pub agent_name: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Registered {
    #[schemars(schema_with = "super::schema::id")]
    pub org_id: OrgId,
    pub api_key: String,
    #[schemars(schema_with = "super::schema::id")]
    pub api_key_id: ApiKeyId,
    /// The agent named by `agent_name`, whose calls the key makes; absent without a name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::optional_id")]
    pub agent_id: Option<AgentId>,
}

/// A new org with its first API key, for a client at `client` (rate limited per address).
/// With `agent_name`, the agent is created too (autonomous, acting for the org) and the key
/// is bound to it: the key's calls are attributed to the agent.
pub async fn agent_register(services: &Services, client: IpAddr, request: AgentRegister) -> AppResult<Registered> {
    check_client_rate(services, client)?;
    let config = &services.config;
    let org_id = OrgId::from_random(new_id_bytes());
    let key_id = ApiKeyId::from_random(new_id_bytes());
    let new_key = NewApiKey::generate(&config.key_prefix, config.environment, random_bytes());
    let display_name = match (&request.org_name, &request.agent_name) {
        (Some(org_name), _) => org_name.clone(),
        (None, Some(agent_name)) => format!("{agent_name}'s org"),
        (None, None) => "Agent org".to_owned(),
    };
    let first_agent =
        request.agent_name.clone().map(|name| FirstAgent { agent_id: AgentId::from_random(new_id_bytes()), name });
    let agent_id = first_agent.as_ref().map(|agent| agent.agent_id.clone());
    let command = Command::RegisterOrg {
        org_id: org_id.clone(),
        display_name,
        environment: config.environment,
        first_key: NewKeyRecord {
            key_id: key_id.clone(),
            hash: new_key.hash,
            display_prefix: new_key.display_prefix,
            environment: config.environment,
            name: request.agent_name,
            scopes: Scope::ORG_DEFAULT.to_vec(),
            expires_at: None,
            rate_limit: None,
            budget: None,
            metadata: None,
        },
        first_agent,
    };
    services.submit(command, Actor::anonymous(client.to_string())).await?;
    Ok(Registered { org_id, api_key: new_key.secret, api_key_id: key_id, agent_id })
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub role: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Account {
    #[schemars(schema_with = "super::schema::id")]
    pub org_id: OrgId,
    pub display_name: String,
    pub plan: String,
    pub environment: String,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub credit_balance: Money,
    /// Balance minus the holds of authorized, unsettled calls.
    #[schemars(schema_with = "super::schema::money_answer")]
    pub available_balance: Money,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub held: Money,
    pub members: Vec<Member>,
}

pub fn account(services: &Services, principal: &Principal) -> AppResult<Account> {
    principal.require(Scope::AccountRead)?;
    let ledger = services.ledger.read();
    let org = ledger.state.org(&principal.org_id).ok_or_else(|| AppError::not_found("org"))?;
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
    Ok(Account {
        org_id: org.id.clone(),
        display_name: org.display_name.clone(),
        plan: org.plan.clone(),
        environment: org.environment.as_str().to_owned(),
        credit_balance: org.balance,
        available_balance: ledger.state.available(&org.id),
        held: org.held,
        members,
    })
}
