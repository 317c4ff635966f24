//! API keys: the org's keys (prefix, status, last use, limits, usage; never a secret), a
//! form to create one whose secret is shown once in the answer, and revoke and delete. The
//! same use cases as `/keys` on the JSON API. The page is the key managers' (it needs
//! `keys:write`, which owners and admins hold): an auditor gets a 403 page.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use bahi_domain::credential::Scope;
use serde::Deserialize;

use super::agents::period_name;
use super::format::{Moment, inr};
use super::manage::{self, ScopeBox};
use super::{Chrome, ConsoleError, ConsoleForm, ConsoleSession, render, render_with_status, see_other};
use crate::app::keys::{self, CreateKey, KeyView, ListKeys};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/keys", get(list_page).post(create))
        .route("/console/keys/{id}/revoke", post(revoke))
        .route("/console/keys/{id}/delete", post(delete))
}

pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub status: &'static str,
    pub scopes: String,
    pub created: Moment,
    pub last_used: Option<Moment>,
    pub expires: Option<Moment>,
    pub rate_limit: Option<String>,
    pub budget: Option<String>,
    pub calls: u64,
    pub spend: String,
}

fn row(key: KeyView) -> KeyRow {
    KeyRow {
        id: key.api_key_id.to_string(),
        name: key.name.unwrap_or_default(),
        prefix: key.prefix,
        status: key.status,
        scopes: key.scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" "),
        created: Moment::of(key.created_at),
        last_used: key.last_used_at.map(Moment::of),
        expires: key.expires_at.map(Moment::of),
        rate_limit: key.rate_limit.map(|limit| format!("{} per {} s", limit.requests, limit.interval_seconds)),
        budget: key
            .budget
            .map(|budget| format!("{} of {} a {}", inr(budget.spent), inr(budget.amount), period_name(budget.period))),
        calls: key.usage.calls,
        spend: inr(key.usage.cost),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct KeyFields {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    rate_requests: String,
    #[serde(default)]
    rate_interval: String,
    #[serde(default)]
    budget_amount: String,
    #[serde(default)]
    budget_period: String,
    #[serde(default)]
    metadata: String,
}

/// A key created a moment ago: its secret is in this answer only.
pub struct Created {
    pub secret: String,
    pub prefix: String,
}

#[derive(Debug, Default, Deserialize)]
struct KeysQuery {
    after: Option<String>,
}

#[derive(Template)]
#[template(path = "console/keys.html")]
struct KeysPage {
    chrome: Chrome,
    keys: Vec<KeyRow>,
    paged: bool,
    next_after: Option<String>,
    form: KeyFields,
    scope_boxes: Vec<ScopeBox>,
    created: Option<Created>,
    error: Option<String>,
}

async fn keys_page(
    state: &AppState,
    session: &ConsoleSession,
    after: Option<String>,
    form: KeyFields,
    created: Option<Created>,
    error: Option<String>,
) -> Result<KeysPage, ConsoleError> {
    // Key management is for those who may create keys; listing alone is on the JSON API.
    session.principal.require(Scope::KeysWrite)?;
    let after = after.filter(|after| !after.trim().is_empty());
    let request = ListKeys { limit: Some(manage::PAGE_SIZE), starting_after: after.clone() };
    let listed = keys::list(state, &session.principal, request).await?;
    let next_after = if listed.has_more { listed.data.last().map(|key| key.api_key_id.to_string()) } else { None };
    let ticked = if error.is_some() { form.scopes.clone() } else { Vec::new() };
    Ok(KeysPage {
        chrome: session.chrome("keys"),
        keys: listed.data.into_iter().map(row).collect(),
        paged: after.is_some(),
        next_after,
        scope_boxes: manage::scope_boxes(&session.principal, "key-scope", &ticked),
        form: if error.is_some() { form } else { KeyFields::default() },
        created,
        error,
    })
}

async fn list_page(
    State(state): State<AppState>,
    session: ConsoleSession,
    Query(query): Query<KeysQuery>,
) -> Result<Response, ConsoleError> {
    Ok(render(&keys_page(&state, &session, query.after, KeyFields::default(), None, None).await?))
}

fn create_request(form: &KeyFields) -> Result<CreateKey, ConsoleError> {
    let metadata = match manage::optional(&form.metadata) {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|error| ConsoleError::bad_form(format!("metadata must be JSON: {error}")))?,
        ),
    };
    Ok(CreateKey {
        name: manage::optional(&form.name),
        expires_at: manage::expiry(&form.expires)?,
        scopes: manage::scopes(form.scopes.clone()),
        rate_limit: manage::rate_limit(&form.rate_requests, &form.rate_interval)?,
        budget: manage::budget(&form.budget_amount, &form.budget_period)?,
        metadata,
    })
}

async fn create(
    State(state): State<AppState>,
    ConsoleForm { session, form }: ConsoleForm<KeyFields>,
) -> Result<Response, ConsoleError> {
    // Refused before the form is read: a forged post from a session that may not create
    // keys learns nothing about its fields.
    session.principal.require(Scope::KeysWrite)?;
    let created = match create_request(&form) {
        Ok(request) => keys::create(&state, &session.principal, request).await.map_err(ConsoleError::from),
        Err(error) => Err(error),
    };
    match created {
        Ok(created) => {
            let shown = Created { secret: created.api_key, prefix: created.key.prefix };
            Ok(render(&keys_page(&state, &session, None, KeyFields::default(), Some(shown), None).await?))
        }
        Err(error) => {
            let (status, message) = error.status_and_message();
            let page = keys_page(&state, &session, None, form, None, Some(message)).await?;
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
    keys::revoke(&state, &session.principal, &id, false).await?;
    Ok(see_other("/console/keys"))
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { session, form: NoFields {} }: ConsoleForm<NoFields>,
) -> Result<Response, ConsoleError> {
    keys::revoke(&state, &session.principal, &id, true).await?;
    Ok(see_other("/console/keys"))
}
