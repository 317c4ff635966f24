//! The overview: the org's credit at a glance, and where to start.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::format::inr;
use super::{Chrome, ConsoleError, ConsoleSession, render};
use crate::app::accounts;
use crate::http::AppState;

#[derive(Template)]
#[template(path = "console/home.html")]
struct HomePage {
    chrome: Chrome,
    org_name: String,
    balance: String,
    available: String,
    held: String,
    members: usize,
}

pub async fn page(State(state): State<AppState>, session: ConsoleSession) -> Result<Response, ConsoleError> {
    let account = accounts::account(&state, &session.principal)?;
    let page = HomePage {
        chrome: session.chrome("home"),
        org_name: account.display_name,
        balance: inr(account.credit_balance),
        available: inr(account.available_balance),
        held: inr(account.held),
        members: account.members.len(),
    };
    Ok(render(&page))
}
