//! Orgs and the people in them: registering an org (by an agent or by a human's signup), sessions, members.

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::RegisterOrg { org_id, display_name, environment, first_key, first_agent } => {
            decide_register_org(state, org_id, display_name, environment, first_key, first_agent.as_ref(), now)
        }
        Command::SignUp { org_id, org_name, environment, user_id, email, password_hash, session } => {
            decide_sign_up(state, org_id, org_name, environment, user_id, email, password_hash, session, now)
        }
        Command::LogIn { user_id, session } => decide_log_in(state, user_id, session, now),
        Command::LogOut { session_hash } => decide_log_out(state, session_hash, now),
        Command::LogOutEverywhere { user_id } => decide_log_out_everywhere(state, user_id, now),
        Command::AddMember { org_id, added_by, user_id, email, password_hash, role } => {
            decide_add_member(state, org_id, added_by, user_id, email, password_hash, role, now)
        }
        other => unreachable!("org::decide was given {}", other.name()),
    }
}

fn decide_register_org(
    state: &State,
    org_id: &OrgId,
    display_name: &str,
    environment: &Environment,
    first_key: &NewKeyRecord,
    first_agent: Option<&FirstAgent>,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    check_name(display_name, "org_name")?;
    if state.orgs.contains_key(org_id) {
        return Err(DomainError::Conflict(format!("org {org_id} already exists")));
    }
    check_new_key(state, first_key)?;
    let registered = OrgRegistered {
        org_id: org_id.clone(),
        display_name: display_name.to_owned(),
        plan: "free".into(),
        environment: *environment,
        registered_at: now,
    };
    let key = key_created(org_id, first_key, now)?;
    let mut events = vec![registered.into(), key.into()];
    if let Some(agent) = first_agent {
        events.extend(first_agent_events(state, org_id, first_key, agent, now)?);
    }
    Ok(events)
}

/// The agent an agent-register names: autonomous, acting for the org, with the first key's
/// scopes, and the key bound to it so that the key's calls are the agent's.
fn first_agent_events(
    state: &State,
    org_id: &OrgId,
    first_key: &NewKeyRecord,
    agent: &FirstAgent,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    check_name(&agent.name, "agent_name")?;
    if state.agents.contains_key(&agent.agent_id) {
        return Err(DomainError::Conflict(format!("agent {} already exists", agent.agent_id)));
    }
    let created = AgentCreated {
        agent_id: agent.agent_id.clone(),
        org_id: org_id.clone(),
        name: agent.name.clone(),
        mode: AgentMode::Autonomous,
        act_for: org_id.to_string(),
        scopes: first_key.scopes.clone(),
        budget: None,
        rate_limit: None,
        created_at: now,
    };
    let bound = ApiKeyBoundToAgent {
        key_id: first_key.key_id.clone(),
        agent_id: agent.agent_id.clone(),
        org_id: org_id.clone(),
        bound_at: now,
    };
    Ok(vec![created.into(), bound.into()])
}

#[allow(clippy::too_many_arguments)]
fn decide_sign_up(
    state: &State,
    org_id: &OrgId,
    org_name: &str,
    environment: &Environment,
    user_id: &UserId,
    email: &str,
    password_hash: &str,
    session: &NewSession,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    check_name(org_name, "org_name")?;
    check_new_email(state, email)?;
    check_new_session(state, session, now)?;
    if state.orgs.contains_key(org_id) || state.users.contains_key(user_id) {
        return Err(DomainError::Conflict("org or user already exists".into()));
    }
    Ok(vec![
        OrgRegistered {
            org_id: org_id.clone(),
            display_name: org_name.to_owned(),
            plan: "free".into(),
            environment: *environment,
            registered_at: now,
        }
        .into(),
        UserSignedUp {
            user_id: user_id.clone(),
            org_id: org_id.clone(),
            email: email.to_owned(),
            password_hash: password_hash.to_owned(),
            role: Role::Owner,
            signed_up_at: now,
        }
        .into(),
        SessionStarted {
            user_id: user_id.clone(),
            org_id: org_id.clone(),
            session_hash: session.hash,
            started_at: now,
            expires_at: session.expires_at,
        }
        .into(),
    ])
}

fn decide_log_in(
    state: &State,
    user_id: &UserId,
    session: &NewSession,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let user = state.users.get(user_id).ok_or(DomainError::NotFound("user"))?;
    check_new_session(state, session, now)?;
    Ok(vec![
        SessionStarted {
            user_id: user.id.clone(),
            org_id: user.org_id.clone(),
            session_hash: session.hash,
            started_at: now,
            expires_at: session.expires_at,
        }
        .into(),
    ])
}

fn decide_log_out(state: &State, session_hash: &SecretHash, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match state.sessions.get(session_hash) {
        Some(session) if !session.ended => Ok(vec![
            SessionEnded {
                user_id: session.user_id.clone(),
                org_id: session.org_id.clone(),
                session_hash: *session_hash,
                ended_at: now,
            }
            .into(),
        ]),
        _ => Ok(Vec::new()),
    }
}

fn decide_log_out_everywhere(state: &State, user_id: &UserId, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    let user = state.users.get(user_id).ok_or(DomainError::NotFound("user"))?;
    Ok(vec![UserSessionsEnded { user_id: user.id.clone(), org_id: user.org_id.clone(), ended_at: now }.into()])
}

#[allow(clippy::too_many_arguments)]
fn decide_add_member(
    state: &State,
    org_id: &OrgId,
    added_by: &UserId,
    user_id: &UserId,
    email: &str,
    password_hash: &str,
    role: &Role,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let owner = state.users.get(added_by).filter(|user| &user.org_id == org_id);
    if owner.is_none_or(|owner| owner.role != Role::Owner) {
        return Err(DomainError::Forbidden("only an owner can add members".into()));
    }
    check_new_email(state, email)?;
    if state.users.contains_key(user_id) {
        return Err(DomainError::Conflict("user already exists".into()));
    }
    Ok(vec![
        MemberAdded {
            user_id: user_id.clone(),
            org_id: org_id.clone(),
            email: email.to_owned(),
            password_hash: password_hash.to_owned(),
            role: *role,
            added_by: added_by.clone(),
            added_at: now,
        }
        .into(),
    ])
}

/// Folds one of this aggregate's events into the state (see `crate::evolve`).
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::OrgRegistered(OrgRegistered { org_id, display_name, plan, environment, registered_at }) => {
            state.orgs.insert(
                org_id.clone(),
                Box::new(Org {
                    id: org_id.clone(),
                    display_name: display_name.to_owned(),
                    plan: plan.clone(),
                    environment: *environment,
                    registered_at: *registered_at,
                    balance: Money::ZERO,
                    credits: Money::ZERO,
                    debits: Money::ZERO,
                    held: Money::ZERO,
                    overshoot: Money::ZERO,
                    api_keys: Vec::new(),
                    members: Vec::new(),
                    agents: Vec::new(),
                }),
            );
        }
        Event::UserSignedUp(signed_up) => state.add_user(User {
            id: signed_up.user_id.clone(),
            org_id: signed_up.org_id.clone(),
            email: signed_up.email.to_owned(),
            password_hash: signed_up.password_hash.to_owned(),
            role: signed_up.role,
            session_epoch: 0,
        }),
        Event::MemberAdded(added) => state.add_user(User {
            id: added.user_id.clone(),
            org_id: added.org_id.clone(),
            email: added.email.to_owned(),
            password_hash: added.password_hash.to_owned(),
            role: added.role,
            session_epoch: 0,
        }),
        Event::SessionStarted(started) => {
            let epoch = state.users.get(&started.user_id).map_or(0, |user| user.session_epoch);
            state.sessions.insert(
                started.session_hash,
                Session {
                    user_id: started.user_id.clone(),
                    org_id: started.org_id.clone(),
                    started_at: started.started_at,
                    expires_at: started.expires_at,
                    epoch,
                    ended: false,
                },
            );
        }
        Event::SessionEnded(ended) => {
            if let Some(session) = state.sessions.get_mut(&ended.session_hash) {
                session.ended = true;
            }
        }
        Event::UserSessionsEnded(ended) => {
            if let Some(user) = state.users.get_mut(&ended.user_id) {
                user.session_epoch += 1;
            }
            // Ended sessions can never come back, so they need not be kept.
            state.sessions.retain(|_, session| session.user_id != ended.user_id);
        }
        other => unreachable!("org::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn registering_an_org_records_it_and_its_first_key_once() {
        let events = given(&[]).when(&register_org(1)).unwrap();
        assert_eq!(types(&events), ["OrgRegistered", "ApiKeyCreated"]);
        let again = given(&[register_org(1)]).when(&register_org(1));
        assert!(matches!(again, Err(DomainError::Conflict(_))), "{again:?}");
    }

    #[test]
    fn registering_with_an_agent_name_creates_the_agent_and_binds_the_first_key_to_it() {
        let mut command = register_org(1);
        let Command::RegisterOrg { first_agent, first_key, org_id, .. } = &mut command else { unreachable!() };
        let agent_id = AgentId::from_random([7; 16]);
        *first_agent = Some(FirstAgent { agent_id: agent_id.clone(), name: "research-bot".into() });
        let (key_id, org_id) = (first_key.key_id.clone(), org_id.clone());
        let mut past = given(&[]);
        assert_eq!(
            types(&past.when(&command).unwrap()),
            ["OrgRegistered", "ApiKeyCreated", "AgentCreated", "ApiKeyBoundToAgent"]
        );
        past.run(&command);
        let agent = &past.state.agents[&agent_id];
        assert_eq!((agent.mode, agent.act_for.as_str()), (AgentMode::Autonomous, org_id.as_str()));
        assert_eq!(past.state.api_keys[&key_id].agent_id, Some(agent_id));
    }

    #[test]
    fn an_agent_name_is_checked_like_any_name_and_nothing_is_half_registered() {
        let mut command = register_org(1);
        let Command::RegisterOrg { first_agent, .. } = &mut command else { unreachable!() };
        *first_agent = Some(FirstAgent { agent_id: AgentId::from_random([7; 16]), name: "tab\tname".into() });
        assert!(matches!(given(&[]).when(&command), Err(DomainError::Invalid(_))));
    }

    #[test]
    fn signing_up_makes_an_org_its_owner_and_a_session_and_an_email_signs_up_once() {
        let events = given(&[]).when(&sign_up(1)).unwrap();
        assert_eq!(types(&events), ["OrgRegistered", "UserSignedUp", "SessionStarted"]);
        let mut same_email = sign_up(2);
        if let Command::SignUp { email, .. } = &mut same_email {
            *email = "owner1@example.com".into();
        }
        assert!(matches!(given(&[sign_up(1)]).when(&same_email), Err(DomainError::Conflict(_))));
    }

    #[test]
    fn logging_in_starts_a_session_for_a_known_user_only() {
        let events = given(&[sign_up(1)]).when(&Command::LogIn { user_id: user(1), session: session(2) }).unwrap();
        assert_eq!(types(&events), ["SessionStarted"]);
        let unknown = given(&[]).when(&Command::LogIn { user_id: user(9), session: session(2) });
        assert_eq!(unknown, Err(DomainError::NotFound("user")));
    }

    #[test]
    fn logging_out_ends_a_live_session_once() {
        let log_out = Command::LogOut { session_hash: session(1).hash };
        let mut past = given(&[sign_up(1)]);
        assert_eq!(types(&past.when(&log_out).unwrap()), ["SessionEnded"]);
        past.run(&log_out);
        assert_eq!(past.when(&log_out).unwrap(), Vec::new(), "an ended session ends no more");
    }

    #[test]
    fn logging_out_everywhere_ends_every_session_of_a_known_user() {
        let events = given(&[sign_up(1)]).when(&Command::LogOutEverywhere { user_id: user(1) }).unwrap();
        assert_eq!(types(&events), ["UserSessionsEnded"]);
        let unknown = given(&[]).when(&Command::LogOutEverywhere { user_id: user(1) });
        assert_eq!(unknown, Err(DomainError::NotFound("user")));
    }

    fn add_member(added_by: UserId, seed: u8, email: &str) -> Command {
        Command::AddMember {
            org_id: org(1),
            added_by,
            user_id: user(seed),
            email: email.into(),
            password_hash: "argon2 hash".into(),
            role: Role::Finance,
        }
    }

    #[test]
    fn only_an_owner_adds_members_and_an_email_is_taken_once() {
        let mut past = given(&[sign_up(1)]);
        assert_eq!(types(&past.when(&add_member(user(1), 2, "finance@example.com")).unwrap()), ["MemberAdded"]);
        past.run(&add_member(user(1), 2, "finance@example.com"));
        let by_member = past.when(&add_member(user(2), 3, "other@example.com"));
        assert!(matches!(by_member, Err(DomainError::Forbidden(_))), "{by_member:?}");
        let taken = past.when(&add_member(user(1), 4, "finance@example.com"));
        assert!(matches!(taken, Err(DomainError::Conflict(_))), "{taken:?}");
    }
}
