//! Token issuers: the embedded issuer's published keys, external issuers registered by an
//! org ("bring your own"), and the operator's signing-key rotation.

use std::collections::{BTreeMap, HashMap};

use bahi_domain::Command;
use bahi_domain::command::MAX_ISSUER_OWNERS;
use bahi_domain::credential::{Role, Scope};
use bahi_domain::event::Event;
use bahi_domain::ids::{IssuerId, OrgId};
use bahi_domain::state::IssuerRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AppError, AppResult, Operator, Principal, Services};
use crate::agent_token::{IssuerKind, JwkSet, TrustedIssuer, Verifier};
use crate::identity::{new_id_bytes, new_signing_key};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterIssuer {
    pub issuer: String,
    pub jwks: Option<serde_json::Value>,
    pub jwks_uri: Option<String>,
    pub audience: Option<String>,
    pub owner_claim: Option<String>,
    pub owners: BTreeMap<String, String>,
    /// Owner value -> a current token of the issuer carrying it: proof that the registering
    /// org holds that owner's tokens, not only the issuer's public keys.
    #[serde(default)]
    pub proofs: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct IssuerView {
    #[schemars(schema_with = "super::schema::id")]
    pub id: IssuerId,
    pub issuer: String,
    pub audience: Option<String>,
    pub owner_claim: String,
    #[schemars(schema_with = "super::schema::id_map")]
    pub owners: BTreeMap<String, OrgId>,
    pub jwks_uri: Option<String>,
    pub status: &'static str,
    #[serde(serialize_with = "super::time::micros")]
    pub registered_at: DateTime<Utc>,
    #[serde(serialize_with = "super::time::optional_micros")]
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct IssuerList {
    pub data: Vec<IssuerView>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Rotated {
    pub key_id: String,
    pub retired_key_id: Option<String>,
    #[serde(serialize_with = "super::time::optional_micros")]
    pub retired_key_verifies_until: Option<DateTime<Utc>>,
}

fn issuer_view(record: &IssuerRecord) -> IssuerView {
    IssuerView {
        id: record.id.clone(),
        issuer: record.issuer.clone(),
        audience: record.audience.clone(),
        owner_claim: record.owner_claim.clone(),
        owners: record.owners.clone(),
        jwks_uri: record.jwks_uri.clone(),
        status: if record.revoked_at.is_some() { "revoked" } else { "active" },
        registered_at: record.registered_at,
        revoked_at: record.revoked_at,
    }
}

fn view_of(services: &Services, issuer_id: &IssuerId) -> AppResult<IssuerView> {
    let ledger = services.ledger.read();
    ledger.state.issuers.get(issuer_id).map(issuer_view).ok_or_else(|| AppError::not_found("issuer"))
}

/// The embedded issuer's public keys (`/.well-known/jwks.json`).
pub fn published_keys(services: &Services) -> JwkSet {
    services.identity.published_keys(&services.ledger.read().state, services.now())
}

/// The owners a registration maps, each to the registering org and no other.
fn owned_owners(principal: &Principal, request: &RegisterIssuer) -> AppResult<BTreeMap<String, OrgId>> {
    let mut owners = BTreeMap::new();
    for (owner, org) in &request.owners {
        owners.insert(owner.clone(), OrgId::parse(org)?);
    }
    // Before proofs: mapping an owner to another org is forbidden whatever the proof.
    if owners.values().any(|org| *org != principal.org_id) {
        return Err(AppError::forbidden("forbidden", "owners may only map to your own org"));
    }
    if owners.len() > MAX_ISSUER_OWNERS {
        return Err(AppError::invalid_request(format!("owners must map 1 to {MAX_ISSUER_OWNERS} owner values")));
    }
    if let Some(stray) = request.proofs.keys().find(|owner| !owners.contains_key(*owner)) {
        return Err(AppError::invalid_request(format!("proofs: {stray:?} is not one of owners")));
    }
    Ok(owners)
}

/// The registration's keys: inline, or fetched from `jwks_uri` now (a registration that can
/// never verify is an error).
async fn registration_keys(services: &Services, request: &RegisterIssuer) -> AppResult<JwkSet> {
    match (&request.jwks, &request.jwks_uri) {
        (Some(inline), None) => {
            JwkSet::from_untrusted_value(inline).map_err(|error| AppError::invalid_request(format!("jwks: {error}")))
        }
        (None, Some(uri)) => {
            if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                return Err(AppError::invalid_request("jwks_uri must be an http(s) URL"));
            }
            services
                .identity
                .download_jwks(uri)
                .await
                .map_err(|error| AppError::invalid_request(format!("jwks_uri: {error}")))
        }
        _ => Err(AppError::invalid_request("give exactly one of jwks (an inline JWK set) and jwks_uri")),
    }
}

pub async fn register(services: &Services, principal: &Principal, request: RegisterIssuer) -> AppResult<IssuerView> {
    principal.require_human(&[Role::Owner, Role::Admin])?;
    if request.issuer == services.identity.issuer {
        return Err(AppError::invalid_request("that is bahi's own issuer; its tokens are trusted already"));
    }
    let owners = owned_owners(principal, &request)?;
    let issuer_id = IssuerId::from_random(new_id_bytes());
    let keys = registration_keys(services, &request).await?;
    let owner_claim = request.owner_claim.clone().unwrap_or_else(|| "org".to_owned());
    let now = services.now().timestamp();
    for (owner, org_id) in &owners {
        let Some(token) = request.proofs.get(owner) else {
            return Err(AppError::invalid_request(format!(
                "owner {owner:?} has no proof: add proofs: {{{owner:?}: <a current token of {:?} whose {owner_claim:?} claim is {owner:?}>}}",
                request.issuer
            )));
        };
        let registration = TrustedIssuer {
            registration_id: issuer_id.to_string(),
            issuer: request.issuer.clone(),
            audience: request.audience.clone(),
            kind: IssuerKind::External {
                owner_claim: owner_claim.clone(),
                owners: HashMap::from([(owner.clone(), org_id.to_string())]),
            },
            keys: keys.clone(),
        };
        verify_owner_proof(registration, services.identity.token_rules(), token, now)
            .map_err(|reason| AppError::invalid_request(format!("proof of owner {owner:?} refused: {reason}")))?;
    }
    let fetched = request.jwks_uri.is_some();
    let command = Command::RegisterIssuer {
        org_id: principal.org_id.clone(),
        issuer_id: issuer_id.clone(),
        issuer: request.issuer,
        jwks: request.jwks,
        jwks_uri: request.jwks_uri,
        audience: request.audience,
        owner_claim,
        owners,
    };
    services.submit(command, principal.actor()).await?;
    // Keys fetched from jwks_uri are kept only for a registration the log accepted.
    if fetched {
        services.identity.remember_jwks(&issuer_id, keys);
    }
    view_of(services, &issuer_id).map_err(|_| AppError::internal("issuer not in the read model"))
}

/// Checks one owner's proof as the verifier that authorizes requests would (a fresh one
/// under this node's token rules, holding only the registration being made, mapping only
/// that owner, with no cache): the token must be of that issuer, signed by a key of the set,
/// current, within the allowed lifetime, for the audience if one is registered, and carry
/// exactly that owner.
fn verify_owner_proof(
    registration: TrustedIssuer,
    rules: crate::agent_token::TokenRules,
    token: &str,
    now_epoch_seconds: i64,
) -> Result<(), String> {
    let verifier = Verifier::with_cache_capacity(0).with_rules(rules);
    verifier.upsert_issuer(registration).map_err(|error| error.to_string())?;
    verifier.verify(token, now_epoch_seconds).map(|_| ()).map_err(|error| error.to_string())
}

pub fn list(services: &Services, principal: &Principal) -> AppResult<IssuerList> {
    principal.require(Scope::AccountRead)?;
    let ledger = services.ledger.read();
    let mut data: Vec<IssuerView> =
        ledger.state.issuers.values().filter(|record| record.org_id == principal.org_id).map(issuer_view).collect();
    data.sort_by_key(|issuer| std::cmp::Reverse(issuer.registered_at));
    Ok(IssuerList { data })
}

pub async fn revoke(services: &Services, principal: &Principal, id: &str) -> AppResult<IssuerView> {
    principal.require_human(&[Role::Owner, Role::Admin])?;
    let issuer_id = IssuerId::parse(id)?;
    let command = Command::RevokeIssuer { org_id: principal.org_id.clone(), issuer_id: issuer_id.clone() };
    services.submit(command, principal.actor()).await?;
    view_of(services, &issuer_id)
}

/// Operator: a new signing key signs from now on; the previous one keeps verifying until
/// the last token it could have signed has expired.
pub async fn rotate_signing_key(services: &Services, operator: &Operator) -> AppResult<Rotated> {
    operator.require_operator("key rotation")?;
    let (_, key) = new_signing_key(services.identity.key_encryption_key()).map_err(AppError::internal)?;
    let outcome = services.submit(Command::RotateSigningKey { key }, operator.actor()).await?;
    let mut rotated = Rotated { key_id: String::new(), retired_key_id: None, retired_key_verifies_until: None };
    for committed in &outcome.events {
        match &committed.event {
            Event::SigningKeyAdded(added) => rotated.key_id = added.key_id.clone(),
            Event::SigningKeyRetired(retired) => {
                rotated.retired_key_id = Some(retired.key_id.clone());
                rotated.retired_key_verifies_until = Some(retired.verify_until);
            }
            _ => {}
        }
    }
    if rotated.key_id.is_empty() {
        return Err(AppError::internal("rotation recorded no new key"));
    }
    Ok(rotated)
}
