//! Who is looking at a console page, and the CSRF check of every form.
//!
//! A page needs a live `bahi_session` cookie (resolved and rate-limited exactly as on the
//! JSON API); without one the browser is sent to the login page. The CSRF token of a
//! session is derived from its cookie secret (SHA-256 under a console-only prefix): a page
//! on another site cannot read the HttpOnly cookie, so it cannot compute the token, and no
//! node needs to remember it. Forms before login (login, sign up) use a double-submit
//! cookie instead. Both also refuse a request whose `Origin` or `Sec-Fetch-Site` says it
//! came from another site.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use bahi_domain::credential::{Role, Scope};
use bahi_domain::ids::base62;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::ConsoleError;
use crate::app::principal;
use crate::app::{Presented, Principal};
use crate::http::AppState;
use crate::http::auth::session_cookie;

/// The form field that carries the CSRF token in every console form.
pub const CSRF_FIELD: &str = "csrf_token";
/// The double-submit cookie of the forms shown before login.
pub const LOGIN_CSRF_COOKIE: &str = "bahi_console_csrf";
/// Largest console form accepted (a key's metadata is the biggest field).
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// The signed-in human behind a console request.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    pub principal: Principal,
    pub role: Role,
    /// What every form of this session must send back as `csrf_token`.
    pub csrf_token: String,
}

impl ConsoleSession {
    /// Which pages the navigation offers this session: a page is offered when its use case
    /// would let the session in (the same scope or role check the page itself makes).
    pub fn nav(&self) -> Nav {
        let has = |scope| self.principal.scopes.contains(&scope);
        let manager = matches!(self.role, Role::Owner | Role::Admin);
        Nav {
            role: self.role.as_str(),
            agents: has(Scope::AgentsWrite) || has(Scope::AccountRead),
            keys: manager,
            usage: has(Scope::AuditRead) || has(Scope::StatementsRead),
            audit: has(Scope::AuditRead),
            statements: has(Scope::StatementsRead),
            credits: has(Scope::AccountRead),
            members: manager,
            issuers: manager,
        }
    }
}

/// What every signed-in page's frame (`templates/console/base.html`) needs: the
/// navigation, the CSRF token of its forms (logout among them), and which entry is current.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub nav: Nav,
    pub csrf_token: String,
    /// The navigation entry of this page: `home`, `agents`, `keys`, `usage`, `audit`,
    /// `statements`, `credits`, `members` or `issuers`.
    pub current: &'static str,
}

impl ConsoleSession {
    pub fn chrome(&self, current: &'static str) -> Chrome {
        Chrome { nav: self.nav(), csrf_token: self.csrf_token.clone(), current }
    }
}

/// The navigation's entries for one session (see `ConsoleSession::nav`).
#[derive(Debug, Clone)]
pub struct Nav {
    pub role: &'static str,
    pub agents: bool,
    pub keys: bool,
    pub usage: bool,
    pub audit: bool,
    pub statements: bool,
    pub credits: bool,
    pub members: bool,
    pub issuers: bool,
}

/// The CSRF token of the session whose cookie secret is `cookie`.
pub fn csrf_token_for(cookie: &str) -> String {
    let digest = Sha256::new().chain_update(b"bahi-console-csrf-v1\0").chain_update(cookie.as_bytes()).finalize();
    base62(&digest[..24])
}

/// Equal without telling, by its timing, how much of a guess was right.
pub fn same_secret(left: &str, right: &str) -> bool {
    left.len() == right.len() && left.bytes().zip(right.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Refuses a state-changing request that says it came from another site. Browsers send
/// `Sec-Fetch-Site` and `Origin` on form posts; a request without either (curl, a test) is
/// judged by its token alone.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|value| value.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(ConsoleError::csrf());
    }
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else { return Ok(()) };
    let host = headers.get(axum::http::header::HOST).and_then(|value| value.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|text| text.split_once("://")).map(|(_, rest)| rest);
    match (origin_host, host) {
        (Some(origin_host), Some(host)) if origin_host.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(ConsoleError::csrf()),
    }
}

pub use crate::http::auth::cookie_value;

impl FromRequestParts<AppState> for ConsoleSession {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ConsoleSession, ConsoleError> {
        let cookie = session_cookie(&parts.headers).ok_or_else(|| ConsoleError::login_needed(parts.uri.path()))?;
        let presented = Presented { credential: None, session_cookie: Some(cookie.clone()) };
        let (principal, _decision) = principal::admit(state, &presented).await.map_err(|error| {
            if error.status() == 401 { ConsoleError::login_needed(parts.uri.path()) } else { ConsoleError::from(error) }
        })?;
        let role = match &principal.user {
            Some((_, role)) => *role,
            None => return Err(ConsoleError::login_needed(parts.uri.path())),
        };
        Ok(ConsoleSession { principal, role, csrf_token: csrf_token_for(&cookie) })
    }
}

/// A console form: the signed-in session, and the form's fields once its CSRF token and
/// origin have been checked. `T` names the form's fields (`csrf_token` is read here and
/// may be left out of `T`); repeated fields (one per ticked checkbox) fill a `Vec`.
pub struct ConsoleForm<T> {
    pub session: ConsoleSession,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for ConsoleForm<T> {
    type Rejection = ConsoleError;

    async fn from_request(request: Request, state: &AppState) -> Result<ConsoleForm<T>, ConsoleError> {
        let (mut parts, body) = request.into_parts();
        check_same_origin(&parts.headers)?;
        let session = ConsoleSession::from_request_parts(&mut parts, state).await?;
        let body = form_body(&parts.headers, body).await?;
        if !same_secret(&form_csrf_token(&body)?, &session.csrf_token) {
            return Err(ConsoleError::csrf());
        }
        Ok(ConsoleForm { session, form: parse_form(&body)? })
    }
}

/// The body of a form post, bounded, after checking it is one.
pub async fn form_body(headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, ConsoleError> {
    let is_form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(ConsoleError::bad_form("send the form as application/x-www-form-urlencoded"));
    }
    axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| ConsoleError::bad_form("the form is too large"))
}

/// The `csrf_token` field of a form body.
pub fn form_csrf_token(body: &[u8]) -> Result<String, ConsoleError> {
    #[derive(serde::Deserialize)]
    struct Token {
        csrf_token: Option<String>,
    }
    let token: Token = serde_html_form::from_bytes(body).map_err(|_| ConsoleError::csrf())?;
    token.csrf_token.ok_or_else(ConsoleError::csrf)
}

/// The form's fields, unknown ones (the token among them) ignored.
pub fn parse_form<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConsoleError> {
    serde_html_form::from_bytes(body).map_err(|error| ConsoleError::bad_form(format!("the form is malformed: {error}")))
}
