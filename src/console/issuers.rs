//! Issuers: external token issuers the org trusts ("bring your own"), a form to register
//! one (its keys inline or by URL, one owner value of this org with a current token of the
//! issuer as proof), and revoke. Owners and admins only, as `POST /issuers` decides.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use bahi_domain::credential::Role;
use serde::Deserialize;

use super::format::Moment;
use super::manage;
use super::{Chrome, ConsoleError, ConsoleForm, ConsoleSession, render, render_with_status, see_other};
use crate::app::issuers::{self, IssuerView, RegisterIssuer};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/issuers", get(page).post(register))
        .route("/console/issuers/{id}/revoke", post(revoke))
}

/// Who manages issuers (the use cases' `require_human`).
const ROLES: [Role; 2] = [Role::Owner, Role::Admin];

pub struct IssuerRow {
    pub id: String,
    pub issuer: String,
    pub audience: String,
    pub owner_claim: String,
    pub owners: String,
    pub keys_from: String,
    pub status: &'static str,
    pub registered: Moment,
}

fn row(view: IssuerView) -> IssuerRow {
    IssuerRow {
        id: view.id.to_string(),
        issuer: view.issuer,
        audience: view.audience.unwrap_or_default(),
        owner_claim: view.owner_claim,
        owners: view.owners.keys().cloned().collect::<Vec<_>>().join(", "),
        keys_from: view.jwks_uri.unwrap_or_else(|| "inline".to_owned()),
        status: view.status,
        registered: Moment::of(view.registered_at),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct IssuerFields {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    jwks: String,
    #[serde(default)]
    jwks_uri: String,
    #[serde(default)]
    audience: String,
    #[serde(default)]
    owner_claim: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    proof: String,
}

#[derive(Template)]
#[template(path = "console/issuers.html")]
struct IssuersPage {
    chrome: Chrome,
    issuers: Vec<IssuerRow>,
    form: IssuerFields,
    error: Option<String>,
}

fn issuers_page(
    state: &AppState,
    session: &ConsoleSession,
    form: IssuerFields,
    error: Option<String>,
) -> Result<IssuersPage, ConsoleError> {
    session.principal.require_human(&ROLES)?;
    let listed = issuers::list(state, &session.principal)?;
    // The proof is a bearer token: never written back into a page.
    let form = IssuerFields { proof: String::new(), ..form };
    Ok(IssuersPage {
        chrome: session.chrome("issuers"),
        issuers: listed.data.into_iter().map(row).collect(),
        form,
        error,
    })
}

async fn page(State(state): State<AppState>, session: ConsoleSession) -> Result<Response, ConsoleError> {
    Ok(render(&issuers_page(&state, &session, IssuerFields::default(), None)?))
}

fn register_request(form: &IssuerFields, session: &ConsoleSession) -> Result<RegisterIssuer, ConsoleError> {
    let issuer = manage::optional(&form.issuer).ok_or_else(|| ConsoleError::bad_form("give the issuer (its iss)"))?;
    let jwks = match manage::optional(&form.jwks) {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|error| ConsoleError::bad_form(format!("the key set must be JSON: {error}")))?,
        ),
    };
    let owner = manage::optional(&form.owner)
        .ok_or_else(|| ConsoleError::bad_form("give the owner value: what the owner claim says for your org"))?;
    let mut proofs = BTreeMap::new();
    if let Some(proof) = manage::optional(&form.proof) {
        proofs.insert(owner.clone(), proof);
    }
    Ok(RegisterIssuer {
        issuer,
        jwks,
        jwks_uri: manage::optional(&form.jwks_uri),
        audience: manage::optional(&form.audience),
        owner_claim: manage::optional(&form.owner_claim),
        owners: BTreeMap::from([(owner, session.principal.org_id.to_string())]),
        proofs,
    })
}

async fn register(
    State(state): State<AppState>,
    ConsoleForm { session, form }: ConsoleForm<IssuerFields>,
) -> Result<Response, ConsoleError> {
    let registered = match register_request(&form, &session) {
        Ok(request) => issuers::register(&state, &session.principal, request).await.map_err(ConsoleError::from),
        Err(error) => Err(error),
    };
    match registered {
        Ok(_) => Ok(see_other("/console/issuers")),
        Err(error) => {
            let (status, message) = error.status_and_message();
            let page = issuers_page(&state, &session, form, Some(message))?;
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
    issuers::revoke(&state, &session.principal, &id).await?;
    Ok(see_other("/console/issuers"))
}
