//! Agents and their minutes-long tokens: creation, token minting and revocation, revoking the agent.

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::CreateAgent { org_id, agent_id, name, mode, act_for, scopes, budget, rate_limit } => {
            decide_create_agent(state, org_id, agent_id, name, mode, act_for, scopes, budget, rate_limit, now)
        }
        Command::RevokeAgent { org_id, agent_id } => decide_revoke_agent(state, org_id, agent_id, now),
        Command::MintAgentToken { org_id, agent_id, token_id, key_id, scopes, ttl_seconds } => {
            decide_mint_agent_token(state, org_id, agent_id, token_id, key_id, scopes, ttl_seconds, now)
        }
        Command::RevokeAgentToken { org_id, agent_id, token_id } => {
            decide_revoke_agent_token(state, org_id, agent_id, token_id, now)
        }
        other => unreachable!("agent::decide was given {}", other.name()),
    }
}

#[allow(clippy::too_many_arguments)]
fn decide_create_agent(
    state: &State,
    org_id: &OrgId,
    agent_id: &AgentId,
    name: &str,
    mode: &AgentMode,
    act_for: &str,
    scopes: &[Scope],
    budget: &Option<Budget>,
    rate_limit: &Option<RateLimit>,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    if !state.orgs.contains_key(org_id) {
        return Err(DomainError::NotFound("org"));
    }
    if state.agents.contains_key(agent_id) {
        return Err(DomainError::Conflict("agent already exists".into()));
    }
    check_name(name, "agent name")?;
    check_agent_act_for(state, org_id, *mode, act_for)?;
    if scopes.is_empty() || scopes.iter().any(|scope| !scope.is_org_scope()) {
        return Err(DomainError::invalid("an agent needs at least one scope, and only org scopes"));
    }
    if let Some(rate_limit) = rate_limit {
        check_rate_limit(*rate_limit)?;
    }
    if budget.is_some_and(|budget| !budget.amount.is_positive()) {
        return Err(DomainError::invalid("budget amount must be positive"));
    }
    Ok(vec![
        AgentCreated {
            agent_id: agent_id.clone(),
            org_id: org_id.clone(),
            name: name.to_owned(),
            mode: *mode,
            act_for: act_for.to_owned(),
            scopes: scopes.to_owned(),
            budget: *budget,
            rate_limit: *rate_limit,
            created_at: now,
        }
        .into(),
    ])
}

fn decide_revoke_agent(
    state: &State,
    org_id: &OrgId,
    agent_id: &AgentId,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let agent =
        state.agents.get(agent_id).filter(|agent| &agent.org_id == org_id).ok_or(DomainError::NotFound("agent"))?;
    if agent.revoked_at.is_some() {
        return Ok(Vec::new());
    }
    Ok(vec![AgentRevoked { agent_id: agent_id.clone(), org_id: org_id.clone(), revoked_at: now }.into()])
}

#[allow(clippy::too_many_arguments)]
fn decide_mint_agent_token(
    state: &State,
    org_id: &OrgId,
    agent_id: &AgentId,
    token_id: &TokenId,
    key_id: &str,
    scopes: &[Scope],
    ttl_seconds: &i64,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let agent =
        state.agents.get(agent_id).filter(|agent| &agent.org_id == org_id).ok_or(DomainError::NotFound("agent"))?;
    if agent.revoked_at.is_some() {
        return Err(DomainError::AgentRevoked);
    }
    if !(1..=MAX_TOKEN_TTL_SECONDS).contains(ttl_seconds) {
        return Err(DomainError::invalid(format!("ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECONDS}")));
    }
    if scopes.is_empty() || scopes.iter().any(|scope| !agent.scopes.contains(scope)) {
        return Err(DomainError::Forbidden("a token's scopes must be a non-empty subset of its agent's".into()));
    }
    if state.current_signing_key().is_none_or(|current| current.key_id != key_id) {
        return Err(DomainError::Conflict("the signing key changed; retry".into()));
    }
    if state.tokens.contains_key(token_id) {
        return Err(DomainError::Conflict("token id already used".into()));
    }
    Ok(vec![
        AgentTokenMinted {
            token_id: token_id.clone(),
            agent_id: agent_id.clone(),
            org_id: org_id.clone(),
            key_id: key_id.to_owned(),
            scopes: scopes.to_owned(),
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(*ttl_seconds),
        }
        .into(),
    ])
}

fn decide_revoke_agent_token(
    state: &State,
    org_id: &OrgId,
    agent_id: &AgentId,
    token_id: &TokenId,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let token = state
        .tokens
        .get(token_id)
        .filter(|token| &token.org_id == org_id && &token.agent_id == agent_id)
        .ok_or(DomainError::NotFound("token"))?;
    if token.revoked {
        return Ok(Vec::new());
    }
    Ok(vec![
        AgentTokenRevoked {
            token_id: token_id.clone(),
            agent_id: agent_id.clone(),
            org_id: org_id.clone(),
            revoked_at: now,
        }
        .into(),
    ])
}

/// Folds one of this aggregate's events into the state (see `crate::evolve`).
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::AgentCreated(created) => {
            if let Some(org) = state.orgs.get_mut(&created.org_id) {
                org.agents.push(created.agent_id.clone());
            }
            state.agents.insert(
                created.agent_id.clone(),
                Agent {
                    id: created.agent_id.clone(),
                    org_id: created.org_id.clone(),
                    name: created.name.to_owned(),
                    mode: created.mode,
                    act_for: created.act_for.to_owned(),
                    scopes: created.scopes.to_owned(),
                    budget: created.budget,
                    rate_limit: created.rate_limit,
                    created_at: created.created_at,
                    revoked_at: None,
                    usage_calls: 0,
                    usage_cost: Money::ZERO,
                },
            );
        }
        Event::AgentRevoked(revoked) => {
            if let Some(agent) = state.agents.get_mut(&revoked.agent_id) {
                agent.revoked_at.get_or_insert(revoked.revoked_at);
            }
        }
        Event::AgentTokenMinted(minted) => {
            state.forget_expired_tokens(minted.issued_at);
            state.token_expiries.insert((minted.expires_at, minted.token_id.clone()));
            state.tokens.insert(
                minted.token_id.clone(),
                MintedToken {
                    agent_id: minted.agent_id.clone(),
                    org_id: minted.org_id.clone(),
                    expires_at: minted.expires_at,
                    revoked: false,
                },
            );
        }
        Event::AgentTokenRevoked(revoked) => {
            if let Some(token) = state.tokens.get_mut(&revoked.token_id) {
                token.revoked = true;
            }
        }
        other => unreachable!("agent::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn an_agent_is_created_in_a_known_org_once_with_org_scopes() {
        assert_eq!(types(&given(&[register_org(1)]).when(&create_agent(1, 5)).unwrap()), ["AgentCreated"]);
        assert_eq!(given(&[]).when(&create_agent(1, 5)), Err(DomainError::NotFound("org")));
        let again = given(&[register_org(1), create_agent(1, 5)]).when(&create_agent(1, 5));
        assert!(matches!(again, Err(DomainError::Conflict(_))), "{again:?}");
        let mut no_scopes = create_agent(1, 6);
        if let Command::CreateAgent { scopes, .. } = &mut no_scopes {
            scopes.clear();
        }
        assert!(matches!(given(&[register_org(1)]).when(&no_scopes), Err(DomainError::Invalid(_))));
    }

    #[test]
    fn an_agent_is_revoked_once_and_only_by_its_own_org() {
        let revoke = Command::RevokeAgent { org_id: org(1), agent_id: agent(5) };
        let mut past = given(&[register_org(1), register_org(2), create_agent(1, 5)]);
        assert_eq!(types(&past.when(&revoke).unwrap()), ["AgentRevoked"]);
        let by_other = Command::RevokeAgent { org_id: org(2), agent_id: agent(5) };
        assert_eq!(past.when(&by_other), Err(DomainError::NotFound("agent")));
        past.run(&revoke);
        assert_eq!(past.when(&revoke).unwrap(), Vec::new());
    }

    fn mint(key_id: &str, scopes: Vec<Scope>, ttl_seconds: i64) -> Command {
        Command::MintAgentToken {
            org_id: org(1),
            agent_id: agent(5),
            token_id: TokenId::from_random([7; 16]),
            key_id: key_id.into(),
            scopes,
            ttl_seconds,
        }
    }

    #[test]
    fn a_token_is_minted_for_a_live_agent_within_its_scopes_and_lifetime() {
        let mut past = given(&[register_org(1), create_agent(1, 5), Command::AddSigningKey { key: signing_key("k1") }]);
        let events = past.when(&mint("k1", vec![Scope::Inference], 600)).unwrap();
        assert_eq!(types(&events), ["AgentTokenMinted"]);
        let wider = past.when(&mint("k1", vec![Scope::AgentsWrite], 600));
        assert!(matches!(wider, Err(DomainError::Forbidden(_))), "{wider:?}");
        for ttl_seconds in [0, MAX_TOKEN_TTL_SECONDS + 1] {
            let refused = past.when(&mint("k1", vec![Scope::Inference], ttl_seconds));
            assert!(matches!(refused, Err(DomainError::Invalid(_))), "{ttl_seconds}: {refused:?}");
        }
        let stale_key = past.when(&mint("k0", vec![Scope::Inference], 600));
        assert!(matches!(stale_key, Err(DomainError::Conflict(_))), "{stale_key:?}");
        past.run(&Command::RevokeAgent { org_id: org(1), agent_id: agent(5) });
        assert_eq!(past.when(&mint("k1", vec![Scope::Inference], 600)), Err(DomainError::AgentRevoked));
    }

    #[test]
    fn a_token_is_revoked_once() {
        let revoke =
            Command::RevokeAgentToken { org_id: org(1), agent_id: agent(5), token_id: TokenId::from_random([7; 16]) };
        let mut past = given(&[
            register_org(1),
            create_agent(1, 5),
            Command::AddSigningKey { key: signing_key("k1") },
            mint("k1", vec![Scope::Inference], 600),
        ]);
        assert_eq!(types(&past.when(&revoke).unwrap()), ["AgentTokenRevoked"]);
        past.run(&revoke);
        assert_eq!(past.when(&revoke).unwrap(), Vec::new());
    }
}
