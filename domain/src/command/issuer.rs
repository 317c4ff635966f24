//! Token issuers: the embedded issuer's signing keys and their rotation, external issuers registered by an org.

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::AddSigningKey { key } => decide_add_signing_key(state, key, now),
        Command::RotateSigningKey { key } => decide_rotate_signing_key(state, key, now),
        Command::RegisterIssuer { org_id, issuer_id, issuer, jwks, jwks_uri, audience, owner_claim, owners } => {
            decide_register_issuer(state, org_id, issuer_id, issuer, jwks, jwks_uri, audience, owner_claim, owners, now)
        }
        Command::RevokeIssuer { org_id, issuer_id } => decide_revoke_issuer(state, org_id, issuer_id, now),
        other => unreachable!("issuer::decide was given {}", other.name()),
    }
}

fn decide_add_signing_key(state: &State, key: &NewSigningKey, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    if state.current_signing_key().is_some() {
        return Ok(Vec::new());
    }
    Ok(vec![signing_key_added(key, now)])
}

fn decide_rotate_signing_key(
    state: &State,
    key: &NewSigningKey,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    if state.signing_keys.iter().any(|existing| existing.key_id == key.key_id) {
        return Err(DomainError::Conflict("signing key already exists".into()));
    }
    let mut events = Vec::new();
    if let Some(current) = state.current_signing_key() {
        events.push(
            SigningKeyRetired {
                key_id: current.key_id.clone(),
                retired_at: now,
                verify_until: now + chrono::Duration::seconds(MAX_TOKEN_TTL_SECONDS + TOKEN_LEEWAY_SECONDS),
            }
            .into(),
        );
    }
    events.push(signing_key_added(key, now));
    Ok(events)
}

#[allow(clippy::too_many_arguments)]
fn decide_register_issuer(
    state: &State,
    org_id: &OrgId,
    issuer_id: &IssuerId,
    issuer: &str,
    jwks: &Option<serde_json::Value>,
    jwks_uri: &Option<String>,
    audience: &Option<String>,
    owner_claim: &str,
    owners: &BTreeMap<String, OrgId>,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    if !state.orgs.contains_key(org_id) {
        return Err(DomainError::NotFound("org"));
    }
    if state.issuers.contains_key(issuer_id) {
        return Err(DomainError::Conflict("issuer already exists".into()));
    }
    check_text(issuer, "issuer")?;
    check_text(owner_claim, "owner_claim")?;
    if let Some(audience) = audience {
        check_text(audience, "audience")?;
    }
    match (jwks, jwks_uri) {
        (Some(_), None) => {}
        (None, Some(uri)) => {
            check_text(uri, "jwks_uri")?;
            if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                return Err(DomainError::invalid("jwks_uri must be an http(s) URL"));
            }
        }
        _ => return Err(DomainError::invalid("give exactly one of jwks and jwks_uri")),
    }
    if owners.is_empty() || owners.len() > MAX_ISSUER_OWNERS {
        return Err(DomainError::invalid(format!("owners must map 1 to {MAX_ISSUER_OWNERS} owner values")));
    }
    for (owner, mapped_org) in owners {
        check_text(owner, "owner value")?;
        if mapped_org != org_id {
            return Err(DomainError::Forbidden("owners may only map to your own org".into()));
        }
    }
    // An (issuer, owner) pair pays for one org only: another org's live mapping of
    // it stands (which org it is is not said).
    let taken = state
        .issuers
        .values()
        .filter(|record| record.revoked_at.is_none() && record.org_id != *org_id && record.issuer == *issuer)
        .flat_map(|record| record.owners.keys())
        .filter(|owner| owners.contains_key(*owner))
        .min();
    if let Some(owner) = taken {
        return Err(DomainError::Conflict(format!(
            "owner {owner:?} of issuer {issuer:?} is already mapped by another org's registration"
        )));
    }
    Ok(vec![
        IssuerRegistered {
            issuer_id: issuer_id.clone(),
            org_id: org_id.clone(),
            issuer: issuer.to_owned(),
            jwks: jwks.clone(),
            jwks_uri: jwks_uri.clone(),
            audience: audience.clone(),
            owner_claim: owner_claim.to_owned(),
            owners: owners.clone(),
            registered_at: now,
        }
        .into(),
    ])
}

fn decide_revoke_issuer(
    state: &State,
    org_id: &OrgId,
    issuer_id: &IssuerId,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let issuer = state
        .issuers
        .get(issuer_id)
        .filter(|issuer| &issuer.org_id == org_id)
        .ok_or(DomainError::NotFound("issuer"))?;
    if issuer.revoked_at.is_some() {
        return Ok(Vec::new());
    }
    Ok(vec![IssuerRevoked { issuer_id: issuer_id.clone(), org_id: org_id.clone(), revoked_at: now }.into()])
}

/// Folds one of this aggregate's events into the state (see `crate::evolve`).
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::SigningKeyAdded(added) => {
            state.signing_keys.push(SigningKeyRecord {
                key_id: added.key_id.clone(),
                public_jwk: added.public_jwk.clone(),
                sealed_private_key: added.sealed_private_key.clone(),
                added_at: added.added_at,
                retired_at: None,
                verify_until: None,
            });
            state.credentials_generation += 1;
        }
        Event::SigningKeyRetired(retired) => {
            if let Some(key) = state.signing_keys.iter_mut().find(|key| key.key_id == retired.key_id) {
                key.retired_at = Some(retired.retired_at);
                key.verify_until = Some(retired.verify_until);
            }
            state.credentials_generation += 1;
        }
        Event::IssuerRegistered(registered) => {
            state.issuers.insert(
                registered.issuer_id.clone(),
                IssuerRecord {
                    id: registered.issuer_id.clone(),
                    org_id: registered.org_id.clone(),
                    issuer: registered.issuer.to_owned(),
                    jwks: registered.jwks.clone(),
                    jwks_uri: registered.jwks_uri.clone(),
                    audience: registered.audience.clone(),
                    owner_claim: registered.owner_claim.to_owned(),
                    owners: registered.owners.clone(),
                    registered_at: registered.registered_at,
                    revoked_at: None,
                },
            );
            state.credentials_generation += 1;
        }
        Event::IssuerRevoked(revoked) => {
            if let Some(issuer) = state.issuers.get_mut(&revoked.issuer_id) {
                issuer.revoked_at.get_or_insert(revoked.revoked_at);
            }
            state.credentials_generation += 1;
        }
        other => unreachable!("issuer::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn the_first_signing_key_is_added_once() {
        let add = Command::AddSigningKey { key: signing_key("k1") };
        assert_eq!(types(&given(&[]).when(&add).unwrap()), ["SigningKeyAdded"]);
        let second = Command::AddSigningKey { key: signing_key("k2") };
        assert_eq!(given(&[add]).when(&second).unwrap(), Vec::new(), "a node restarting adds none");
    }

    #[test]
    fn rotating_retires_the_current_key_and_refuses_a_known_one() {
        let past = given(&[Command::AddSigningKey { key: signing_key("k1") }]);
        let events = past.when(&Command::RotateSigningKey { key: signing_key("k2") }).unwrap();
        assert_eq!(types(&events), ["SigningKeyRetired", "SigningKeyAdded"]);
        let known = past.when(&Command::RotateSigningKey { key: signing_key("k1") });
        assert!(matches!(known, Err(DomainError::Conflict(_))), "{known:?}");
    }

    fn register(org_seed: u8, seed: u8, owner_org: u8) -> Command {
        Command::RegisterIssuer {
            org_id: org(org_seed),
            issuer_id: IssuerId::from_random([seed; 16]),
            issuer: "https://idp.example".into(),
            jwks: Some(serde_json::json!({"keys": []})),
            jwks_uri: None,
            audience: None,
            owner_claim: "org".into(),
            owners: BTreeMap::from([("acme".to_owned(), org(owner_org))]),
        }
    }

    #[test]
    fn an_issuer_is_registered_for_the_orgs_own_owners_with_one_key_source() {
        let past = given(&[register_org(1)]);
        assert_eq!(types(&past.when(&register(1, 9, 1)).unwrap()), ["IssuerRegistered"]);
        let foreign = past.when(&register(1, 9, 2));
        assert!(matches!(foreign, Err(DomainError::Forbidden(_))), "{foreign:?}");
        let mut both = register(1, 9, 1);
        if let Command::RegisterIssuer { jwks_uri, .. } = &mut both {
            *jwks_uri = Some("https://idp.example/jwks".into());
        }
        assert!(matches!(past.when(&both), Err(DomainError::Invalid(_))));
        assert_eq!(given(&[]).when(&register(1, 9, 1)), Err(DomainError::NotFound("org")));
    }

    #[test]
    fn an_issuer_is_revoked_once() {
        let revoke = Command::RevokeIssuer { org_id: org(1), issuer_id: IssuerId::from_random([9; 16]) };
        let mut past = given(&[register_org(1), register(1, 9, 1)]);
        assert_eq!(types(&past.when(&revoke).unwrap()), ["IssuerRevoked"]);
        past.run(&revoke);
        assert_eq!(past.when(&revoke).unwrap(), Vec::new());
    }
}
