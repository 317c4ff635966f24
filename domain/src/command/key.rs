//! API keys (an org's) and gateway keys (the operator's): creation, revocation, recorded last uses.

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::CreateApiKey { org_id, key } => decide_create_api_key(state, org_id, key, now),
        Command::RevokeApiKey { org_id, key_id, deleted } => decide_revoke_api_key(state, org_id, key_id, deleted, now),
        Command::RecordKeyUses { uses } => decide_record_key_uses(state, uses, now),
        Command::CreateGatewayKey { key_id, name, hash, display_prefix } => {
            decide_create_gateway_key(state, key_id, name, hash, display_prefix, now)
        }
        Command::RevokeGatewayKey { key_id } => decide_revoke_gateway_key(state, key_id, now),
        other => unreachable!("key::decide was given {}", other.name()),
    }
}

fn decide_create_api_key(
    state: &State,
    org_id: &OrgId,
    key: &NewKeyRecord,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    if !state.orgs.contains_key(org_id) {
        return Err(DomainError::NotFound("org"));
    }
    check_new_key(state, key)?;
    Ok(vec![key_created(org_id, key, now)?.into()])
}

fn decide_revoke_api_key(
    state: &State,
    org_id: &OrgId,
    key_id: &ApiKeyId,
    deleted: &bool,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let key = state
        .api_keys
        .get(key_id)
        .filter(|key| &key.org_id == org_id && !key.deleted)
        .ok_or(DomainError::NotFound("api key"))?;
    if key.revoked_at.is_some() && !deleted {
        return Ok(Vec::new());
    }
    Ok(vec![
        ApiKeyRevoked { key_id: key.id.clone(), org_id: org_id.clone(), revoked_at: now, deleted: *deleted }.into(),
    ])
}

fn decide_record_key_uses(
    state: &State,
    uses: &[(ApiKeyId, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    Ok(uses
        .iter()
        .filter_map(|(key_id, used_at)| {
            let key = state.api_keys.get(key_id)?;
            let due = key
                .last_used_at
                .is_none_or(|recorded| *used_at >= crate::state::shifted(recorded, KEY_USE_RECORD_INTERVAL_SECONDS));
            (due && key.revoked_at.is_none() && *used_at <= now).then(|| {
                ApiKeyUsed { key_id: key_id.clone(), org_id: key.org_id.clone(), last_used_at: *used_at }.into()
            })
        })
        .collect())
}

fn decide_create_gateway_key(
    state: &State,
    key_id: &ApiKeyId,
    name: &Option<String>,
    hash: &SecretHash,
    display_prefix: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    if let Some(name) = name {
        check_name(name, "name")?;
    }
    if state.gateway_keys.contains_key(key_id) || state.gateway_keys_by_hash.contains_key(hash) {
        return Err(DomainError::Conflict("key already exists".into()));
    }
    Ok(vec![
        GatewayKeyCreated {
            key_id: key_id.clone(),
            name: name.clone(),
            key_hash: *hash,
            display_prefix: display_prefix.to_owned(),
            created_at: now,
        }
        .into(),
    ])
}

fn decide_revoke_gateway_key(state: &State, key_id: &ApiKeyId, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    let key = state.gateway_keys.get(key_id).ok_or(DomainError::NotFound("gateway key"))?;
    if key.revoked_at.is_some() {
        return Ok(Vec::new());
    }
    Ok(vec![GatewayKeyRevoked { key_id: key_id.clone(), revoked_at: now }.into()])
}

/// Folds one of this aggregate's events into the state (see `crate::evolve`).
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::ApiKeyCreated(created) => {
            let ApiKeyCreated { key_id, org_id, key_hash, .. } = created;
            if let Some(org) = state.orgs.get_mut(org_id) {
                org.api_keys.push(key_id.clone());
            }
            state.api_keys_by_hash.insert(*key_hash, key_id.clone());
            state.api_keys.insert(
                key_id.clone(),
                Box::new(ApiKey {
                    id: key_id.clone(),
                    org_id: org_id.clone(),
                    name: created.name.clone(),
                    hash: *key_hash,
                    display_prefix: created.display_prefix.to_owned(),
                    environment: created.environment,
                    scopes: created.scopes.clone(),
                    created_at: created.created_at,
                    expires_at: created.expires_at,
                    revoked_at: None,
                    rate_limit: created.rate_limit,
                    budget: created.budget,
                    metadata: created.metadata.clone(),
                    last_used_at: None,
                    deleted: false,
                    agent_id: None,
                    usage_calls: 0,
                    usage_cost: Money::ZERO,
                }),
            );
        }
        Event::ApiKeyRevoked(revoked) => {
            if let Some(key) = state.api_keys.get_mut(&revoked.key_id) {
                key.revoked_at.get_or_insert(revoked.revoked_at);
                key.deleted |= revoked.deleted;
            }
        }
        Event::ApiKeyBoundToAgent(bound) => {
            if let Some(key) = state.api_keys.get_mut(&bound.key_id) {
                key.agent_id = Some(bound.agent_id.clone());
            }
        }
        Event::ApiKeyUsed(used) => {
            if let Some(key) = state.api_keys.get_mut(&used.key_id) {
                key.last_used_at = Some(used.last_used_at);
            }
        }
        Event::GatewayKeyCreated(created) => {
            state.gateway_keys_by_hash.insert(created.key_hash, created.key_id.clone());
            state.gateway_keys.insert(
                created.key_id.clone(),
                GatewayKey {
                    id: created.key_id.clone(),
                    name: created.name.clone(),
                    display_prefix: created.display_prefix.to_owned(),
                    created_at: created.created_at,
                    revoked_at: None,
                },
            );
        }
        Event::GatewayKeyRevoked(revoked) => {
            if let Some(key) = state.gateway_keys.get_mut(&revoked.key_id) {
                key.revoked_at.get_or_insert(revoked.revoked_at);
            }
        }
        other => unreachable!("key::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_key_is_created_in_a_known_org_once() {
        let create = Command::CreateApiKey { org_id: org(1), key: key_record(2) };
        assert_eq!(types(&given(&[register_org(1)]).when(&create).unwrap()), ["ApiKeyCreated"]);
        assert_eq!(given(&[]).when(&create), Err(DomainError::NotFound("org")));
        let again = given(&[register_org(1), create.clone()]).when(&create);
        assert!(matches!(again, Err(DomainError::Conflict(_))), "{again:?}");
    }

    #[test]
    fn a_key_is_revoked_once_and_only_by_its_own_org() {
        let key_id = key_record(1).key_id;
        let revoke = Command::RevokeApiKey { org_id: org(1), key_id: key_id.clone(), deleted: false };
        let mut past = given(&[register_org(1), register_org(2)]);
        assert_eq!(types(&past.when(&revoke).unwrap()), ["ApiKeyRevoked"]);
        let by_other = Command::RevokeApiKey { org_id: org(2), key_id, deleted: false };
        assert_eq!(past.when(&by_other), Err(DomainError::NotFound("api key")));
        past.run(&revoke);
        assert_eq!(past.when(&revoke).unwrap(), Vec::new());
    }

    #[test]
    fn a_keys_use_is_recorded_at_most_once_a_minute() {
        let key_id = key_record(1).key_id;
        let mut past = given(&[register_org(1)]);
        let used = Command::RecordKeyUses { uses: vec![(key_id.clone(), past.at)] };
        assert_eq!(types(&past.when(&used).unwrap()), ["ApiKeyUsed"]);
        past.run(&used);
        let soon = Command::RecordKeyUses { uses: vec![(key_id, past.at + chrono::Duration::seconds(10))] };
        assert_eq!(past.later(30).when(&soon).unwrap(), Vec::new());
    }

    fn gateway_key(seed: u8) -> Command {
        Command::CreateGatewayKey {
            key_id: ApiKeyId::from_random([seed; 16]),
            name: Some("gateway".into()),
            hash: SecretHash::of(&format!("gateway {seed}")),
            display_prefix: "bahi_live_gw".into(),
        }
    }

    #[test]
    fn a_gateway_key_is_created_once() {
        assert_eq!(types(&given(&[]).when(&gateway_key(1)).unwrap()), ["GatewayKeyCreated"]);
        let again = given(&[gateway_key(1)]).when(&gateway_key(1));
        assert!(matches!(again, Err(DomainError::Conflict(_))), "{again:?}");
    }

    #[test]
    fn a_gateway_key_is_revoked_once() {
        let revoke = Command::RevokeGatewayKey { key_id: ApiKeyId::from_random([1; 16]) };
        let mut past = given(&[gateway_key(1)]);
        assert_eq!(types(&past.when(&revoke).unwrap()), ["GatewayKeyRevoked"]);
        past.run(&revoke);
        assert_eq!(past.when(&revoke).unwrap(), Vec::new());
        assert_eq!(given(&[]).when(&revoke), Err(DomainError::NotFound("gateway key")));
    }
}
