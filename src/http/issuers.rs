//! Token issuers: the embedded issuer's published keys (`/.well-known/jwks.json`), external
//! issuers registered by an org ("bring your own"), and the operator's key rotation.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bahi_domain::Command;
use bahi_domain::command::MAX_ISSUER_OWNERS;
use bahi_domain::credential::Role;
use bahi_domain::event::Event;
use bahi_domain::ids::{IssuerId, OrgId};
use bahi_domain::state::IssuerRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Operator, Principal, authenticate};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::agent_token::{IssuerKind, JwkSet, TrustedIssuer, Verifier};
use crate::identity::{new_id_bytes, new_signing_key};
use crate::ledger::Actor;
use crate::writer::CommandContext;

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/me/issuers", post(register).get(list))
        .route("/me/issuers/{id}/revoke", post(revoke))
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/admin/signing-keys/rotate", post(rotate))
        .merge(authenticated)
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let keys = state.identity.published_keys(&state.ledger.read().state, Utc::now());
    ([(axum::http::header::CACHE_CONTROL, "public, max-age=300")], Json(keys))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    issuer: String,
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<String>,
    audience: Option<String>,
    owner_claim: Option<String>,
    owners: BTreeMap<String, String>,
    /// Owner value -> a current token of the issuer carrying it: proof that the registering
    /// org holds that owner's tokens, not only the issuer's public keys.
    #[serde(default)]
    proofs: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct IssuerView {
    id: IssuerId,
    issuer: String,
    audience: Option<String>,
    owner_claim: String,
    owners: BTreeMap<String, OrgId>,
    jwks_uri: Option<String>,
    status: &'static str,
    registered_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
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

fn context(principal: &Principal) -> CommandContext {
    super::command_context(principal.actor())
}

async fn register(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<IssuerView>)> {
    principal.require_human(&[Role::Owner, Role::Admin])?;
    if request.issuer == state.identity.issuer {
        return Err(ApiError::invalid_request("that is bahi's own issuer; its tokens are trusted already"));
    }
    let mut owners = BTreeMap::new();
    for (owner, org) in request.owners {
        owners.insert(owner, OrgId::parse(&org)?);
    }
    // Before proofs: mapping an owner to another org is forbidden whatever the proof.
    if owners.values().any(|org| *org != principal.org_id) {
        return Err(ApiError::forbidden("forbidden", "owners may only map to your own org"));
    }
    if owners.len() > MAX_ISSUER_OWNERS {
        return Err(ApiError::invalid_request(format!("owners must map 1 to {MAX_ISSUER_OWNERS} owner values")));
    }
    if let Some(stray) = request.proofs.keys().find(|owner| !owners.contains_key(*owner)) {
        return Err(ApiError::invalid_request(format!("proofs: {stray:?} is not one of owners")));
    }
    let issuer_id = IssuerId::from_random(new_id_bytes());
    let keys = match (&request.jwks, &request.jwks_uri) {
        (Some(inline), None) => {
            JwkSet::from_untrusted_value(inline).map_err(|error| ApiError::invalid_request(format!("jwks: {error}")))?
        }
        (None, Some(uri)) => {
            if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                return Err(ApiError::invalid_request("jwks_uri must be an http(s) URL"));
            }
            // The keys must be reachable now: a registration that can never verify is an error.
            state
                .identity
                .fetch_jwks(&issuer_id, uri)
                .await
                .map_err(|error| ApiError::invalid_request(format!("jwks_uri: {error}")))?
        }
        _ => return Err(ApiError::invalid_request("give exactly one of jwks (an inline JWK set) and jwks_uri")),
    };
    let owner_claim = request.owner_claim.unwrap_or_else(|| "org".to_owned());
    let now = Utc::now().timestamp();
    for (owner, org_id) in &owners {
        let Some(token) = request.proofs.get(owner) else {
            return Err(ApiError::invalid_request(format!(
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
        verify_owner_proof(registration, token, now)
            .map_err(|reason| ApiError::invalid_request(format!("proof of owner {owner:?} refused: {reason}")))?;
    }
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
    state.writer.submit(command, context(&principal)).await?;
    let ledger = state.ledger.read();
    let record =
        ledger.state.issuers.get(&issuer_id).ok_or_else(|| ApiError::internal("issuer not in the read model"))?;
    Ok((StatusCode::CREATED, Json(issuer_view(record))))
}

/// Checks one owner's proof with the verifier that authorizes requests (a fresh one holding
/// only the registration being made, mapping only that owner, with no cache): the token
/// must be of that issuer, signed by a key of the set, current, for the audience if one is
/// registered, and carry exactly that owner.
fn verify_owner_proof(registration: TrustedIssuer, token: &str, now_epoch_seconds: i64) -> Result<(), String> {
    let verifier = Verifier::with_cache_capacity(0);
    verifier.upsert_issuer(registration).map_err(|error| error.to_string())?;
    verifier.verify(token, now_epoch_seconds).map(|_| ()).map_err(|error| error.to_string())
}

#[derive(Serialize)]
struct ListResponse {
    data: Vec<IssuerView>,
}

async fn list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<ListResponse>> {
    principal.require(bahi_domain::credential::Scope::AccountRead)?;
    let ledger = state.ledger.read();
    let mut data: Vec<IssuerView> =
        ledger.state.issuers.values().filter(|record| record.org_id == principal.org_id).map(issuer_view).collect();
    data.sort_by_key(|issuer| std::cmp::Reverse(issuer.registered_at));
    Ok(Json(ListResponse { data }))
}

async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<IssuerView>> {
    principal.require_human(&[Role::Owner, Role::Admin])?;
    let issuer_id = IssuerId::parse(&id)?;
    let command = Command::RevokeIssuer { org_id: principal.org_id.clone(), issuer_id: issuer_id.clone() };
    state.writer.submit(command, context(&principal)).await?;
    let ledger = state.ledger.read();
    let record = ledger.state.issuers.get(&issuer_id).ok_or_else(|| ApiError::not_found("issuer"))?;
    Ok(Json(issuer_view(record)))
}

#[derive(Serialize)]
struct RotateResponse {
    key_id: String,
    retired_key_id: Option<String>,
    retired_key_verifies_until: Option<DateTime<Utc>>,
}

/// Operator: a new signing key signs from now on; the previous one keeps verifying until
/// the last token it could have signed has expired.
async fn rotate(State(state): State<AppState>, operator: Operator) -> ApiResult<Json<RotateResponse>> {
    if operator.gateway_key.is_some() {
        return Err(ApiError::forbidden("operator_only", "key rotation needs the operator credential"));
    }
    let (_, key) = new_signing_key(state.identity.key_encryption_key()).map_err(ApiError::internal)?;
    let context = super::command_context(Actor::new("operator", "operator"));
    let outcome = state.writer.submit(Command::RotateSigningKey { key }, context).await?;
    let mut response = RotateResponse { key_id: String::new(), retired_key_id: None, retired_key_verifies_until: None };
    for committed in &outcome.events {
        match &committed.event {
            Event::SigningKeyAdded(added) => response.key_id = added.key_id.clone(),
            Event::SigningKeyRetired(retired) => {
                response.retired_key_id = Some(retired.key_id.clone());
                response.retired_key_verifies_until = Some(retired.verify_until);
            }
            _ => {}
        }
    }
    Ok(Json(response))
}
