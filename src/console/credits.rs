//! Credits: the org's balance, what is available and what calls in flight hold, and (for
//! the owner and finance) a form to top it up. The amount is typed in rupees and read as an
//! exact decimal, judged by the same use case as `POST /me/credits/topups`. Each rendered
//! form carries a fresh key of its own; a top-up without a payment reference is recorded
//! under that key, so the same form sent twice (a double click, a resend) credits once.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use bahi_domain::credential::Role;
use bahi_domain::ids::base62;
use serde::Deserialize;

use super::format::inr;
use super::manage;
use super::{Chrome, ConsoleError, ConsoleForm, ConsoleSession, render, render_with_status, see_other};
use crate::app::accounts;
use crate::app::billing::{self, TopUp};
use crate::http::AppState;
use crate::identity::random_bytes;

pub fn router() -> Router<AppState> {
    Router::new().route("/console/credits", get(page)).route("/console/credits/top-up", post(top_up))
}

/// The roles `billing::top_up` admits; others see the balance without the form.
const TOP_UP_ROLES: [Role; 2] = [Role::Owner, Role::Finance];

#[derive(Debug, Default, Deserialize)]
pub struct TopUpFields {
    #[serde(default)]
    amount: String,
    #[serde(default)]
    payment_reference: String,
    #[serde(default)]
    form_key: String,
}

#[derive(Template)]
#[template(path = "console/credits.html")]
struct CreditsPage {
    chrome: Chrome,
    balance: String,
    available: String,
    held: String,
    can_top_up: bool,
    form_key: String,
    form: TopUpFields,
    done: Option<String>,
    error: Option<String>,
}

fn credits_page(
    state: &AppState,
    session: &ConsoleSession,
    form: TopUpFields,
    done: Option<String>,
    error: Option<String>,
) -> Result<CreditsPage, ConsoleError> {
    let account = accounts::account(state, &session.principal)?;
    // A form shown again after an error keeps its key: sending it again is the same top-up.
    let form_key = manage::optional(&form.form_key)
        .filter(|key| valid_form_key(key))
        .unwrap_or_else(|| base62(&random_bytes::<16>()));
    Ok(CreditsPage {
        chrome: session.chrome("credits"),
        balance: inr(account.credit_balance),
        available: inr(account.available_balance),
        held: inr(account.held),
        can_top_up: TOP_UP_ROLES.contains(&session.role),
        form_key,
        form,
        done,
        error,
    })
}

fn valid_form_key(key: &str) -> bool {
    (16..=64).contains(&key.len()) && key.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

#[derive(Debug, Default, Deserialize)]
struct DoneQuery {
    topped_up: Option<String>,
}

async fn page(
    State(state): State<AppState>,
    session: ConsoleSession,
    Query(query): Query<DoneQuery>,
) -> Result<Response, ConsoleError> {
    // Only a well-formed amount is echoed back ("₹… added"); anything else is ignored.
    let done = query
        .topped_up
        .as_deref()
        .and_then(|amount| bahi_domain::Money::parse(amount).ok())
        .map(|amount| format!("{} added to your credit.", inr(amount)));
    Ok(render(&credits_page(&state, &session, TopUpFields::default(), done, None)?))
}

fn top_up_request(form: &TopUpFields) -> Result<TopUp, ConsoleError> {
    let form_key = manage::optional(&form.form_key)
        .filter(|key| valid_form_key(key))
        .ok_or_else(|| ConsoleError::bad_form("this form has no key; reload the page and try again"))?;
    let amount = manage::money(&form.amount, "amount")?;
    let payment_reference = manage::optional(&form.payment_reference).unwrap_or_else(|| format!("console-{form_key}"));
    Ok(TopUp { amount, payment_reference })
}

async fn top_up(
    State(state): State<AppState>,
    ConsoleForm { session, form }: ConsoleForm<TopUpFields>,
) -> Result<Response, ConsoleError> {
    let topped_up = match top_up_request(&form) {
        Ok(request) => billing::top_up(&state, &session.principal, request).await.map_err(ConsoleError::from),
        Err(error) => Err(error),
    };
    match topped_up {
        Ok(topped_up) => Ok(see_other(&format!("/console/credits?topped_up={}", topped_up.amount.amount()))),
        Err(error) => {
            let (status, message) = error.status_and_message();
            let page = credits_page(&state, &session, form, None, Some(message))?;
            Ok(render_with_status(status, &page))
        }
    }
}
