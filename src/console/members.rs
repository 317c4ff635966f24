//! Members: who can sign in to the org and with which role, and (for the owner) a form to
//! add one with an initial password. The list is the owner's and admins'; adding is the
//! owner's alone, as `POST /me/members` decides.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use bahi_domain::credential::Role;
use serde::Deserialize;

use super::{Chrome, ConsoleError, ConsoleForm, ConsoleSession, render, render_with_status, see_other};
use crate::app::accounts::{self, Member};
use crate::app::humans::{self, AddMember};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/console/members", get(page).post(add))
}

/// Who may see the list (the navigation's `members`).
const LIST_ROLES: [Role; 2] = [Role::Owner, Role::Admin];
/// The roles a new member may be given, in the order the select offers them.
const ROLES: [Role; 4] = [Role::Member, Role::Admin, Role::Finance, Role::Auditor];

#[derive(Debug, Default, Deserialize)]
pub struct MemberFields {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

#[derive(Template)]
#[template(path = "console/members.html")]
struct MembersPage {
    chrome: Chrome,
    members: Vec<Member>,
    can_add: bool,
    roles: Vec<(&'static str, bool)>,
    email: String,
    error: Option<String>,
}

fn members_page(
    state: &AppState,
    session: &ConsoleSession,
    form: MemberFields,
    error: Option<String>,
) -> Result<MembersPage, ConsoleError> {
    session.principal.require_human(&LIST_ROLES)?;
    let mut members = accounts::account(state, &session.principal)?.members;
    members.sort_by(|a, b| a.email.cmp(&b.email));
    Ok(MembersPage {
        chrome: session.chrome("members"),
        members,
        can_add: session.role == Role::Owner,
        roles: ROLES.iter().map(|role| (role.as_str(), role.as_str() == form.role.trim())).collect(),
        email: form.email,
        error,
    })
}

async fn page(State(state): State<AppState>, session: ConsoleSession) -> Result<Response, ConsoleError> {
    Ok(render(&members_page(&state, &session, MemberFields::default(), None)?))
}

async fn add(
    State(state): State<AppState>,
    ConsoleForm { session, form }: ConsoleForm<MemberFields>,
) -> Result<Response, ConsoleError> {
    let added = match Role::parse(form.role.trim()) {
        None => Err(ConsoleError::bad_form("role must be one of member, admin, finance or auditor")),
        Some(role) => {
            let request = AddMember { email: form.email.clone(), role, password: form.password.clone() };
            humans::add_member(&state, &session.principal, request).await.map_err(ConsoleError::from)
        }
    };
    match added {
        Ok(_) => Ok(see_other("/console/members")),
        Err(error) => {
            let (status, message) = error.status_and_message();
            let form = MemberFields { password: String::new(), ..form };
            let page = members_page(&state, &session, form, Some(message))?;
            Ok(render_with_status(status, &page))
        }
    }
}
