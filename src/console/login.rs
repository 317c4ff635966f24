//! Sign up, log in, log out and log out everywhere, as pages. The same use cases as
//! `/me/signup`, `/me/login`, `/me/logout` and `/me/logout-all`, with the same client rate
//! limit; the session cookie is the JSON API's. Forms shown before there is a session carry
//! a double-submit CSRF token (a cookie of their own and a hidden field).

use std::net::{IpAddr, SocketAddr};

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bahi_domain::ids::base62;
use serde::Deserialize;

use super::session::{
    LOGIN_CSRF_COOKIE, check_same_origin, cookie_value, form_body, form_csrf_token, parse_form, same_secret,
};
use super::{CONSOLE_ROOT, ConsoleError, ConsoleForm, render_with_status};
use crate::app::humans::{self, LogIn, SessionStarted, SignUp};
use crate::http::AppState;
use crate::http::humans::{cleared_cookie_header, session_cookie_header};
use crate::identity::random_bytes;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/login", get(login_page).post(log_in))
        .route("/console/signup", get(signup_page).post(sign_up))
        .route("/console/logout", post(log_out))
        .route("/console/logout-all", post(log_out_everywhere))
}

/// The login page's path, with where to go afterwards.
pub fn login_path(next: &str) -> String {
    match safe_next(Some(next)) {
        Some(next) if next != CONSOLE_ROOT => format!("/console/login?next={}", url_escape(&next)),
        _ => "/console/login".to_owned(),
    }
}

/// Where to go after logging in: only a console path, never another site (`//evil`, `/\evil`).
fn safe_next(next: Option<&str>) -> Option<String> {
    let next = next?;
    let inside = next == CONSOLE_ROOT || next.starts_with("/console/");
    let plain = next.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"/_-.".contains(&byte));
    (inside && plain && !next.contains("//") && !next.contains("..")).then(|| next.to_owned())
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    csrf_token: String,
    next: String,
    email: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/signup.html")]
struct SignupPage {
    csrf_token: String,
    email: String,
    org_name: String,
    error: Option<String>,
}

/// The double-submit token of a browser: the one its cookie holds, or a new one.
fn login_csrf(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(token) = cookie_value(headers, LOGIN_CSRF_COOKIE).filter(|token| token.len() == 22) {
        return (token, None);
    }
    let token = base62(&random_bytes::<16>());
    let cookie = HeaderValue::from_str(&format!(
        "{LOGIN_CSRF_COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=86400"
    ))
    .ok();
    (token, cookie)
}

fn with_cookies(mut response: Response, cookies: impl IntoIterator<Item = HeaderValue>) -> Response {
    for cookie in cookies {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

async fn login_page(headers: HeaderMap, Query(query): Query<NextQuery>) -> Response {
    let (csrf_token, cookie) = login_csrf(&headers);
    let next = safe_next(query.next.as_deref()).unwrap_or_else(|| CONSOLE_ROOT.to_owned());
    let page = LoginPage { csrf_token, next, email: String::new(), error: None };
    with_cookies(render_with_status(StatusCode::OK, &page), cookie)
}

async fn signup_page(headers: HeaderMap) -> Response {
    let (csrf_token, cookie) = login_csrf(&headers);
    let page = SignupPage { csrf_token, email: String::new(), org_name: String::new(), error: None };
    with_cookies(render_with_status(StatusCode::OK, &page), cookie)
}

/// The body of a pre-login form, once its origin and double-submit token are checked.
async fn checked_login_form(request: Request) -> Result<(HeaderMap, axum::body::Bytes), ConsoleError> {
    let (parts, body) = request.into_parts();
    check_same_origin(&parts.headers)?;
    let body = form_body(&parts.headers, body).await?;
    let expected = cookie_value(&parts.headers, LOGIN_CSRF_COOKIE).ok_or_else(ConsoleError::csrf)?;
    if !same_secret(&form_csrf_token(&body)?, &expected) {
        return Err(ConsoleError::csrf());
    }
    Ok((parts.headers, body))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

fn signed_in(state: &AppState, started: &SessionStarted, next: &str) -> Response {
    let clear_csrf =
        HeaderValue::from_static("bahi_console_csrf=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    match session_cookie_header(state, &started.secret) {
        Ok(cookie) => with_cookies(super::see_other(next), [cookie, clear_csrf]),
        Err(error) => ConsoleError::internal(format!("{error:?}")).into_response(),
    }
}

fn client_ip(client: SocketAddr) -> IpAddr {
    client.ip()
}

async fn log_in(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (headers, body) = match checked_login_form(request).await {
        Ok(checked) => checked,
        Err(error) => return error.into_response(),
    };
    let form: LoginForm = match parse_form(&body) {
        Ok(form) => form,
        Err(error) => return error.into_response(),
    };
    let next = safe_next(form.next.as_deref()).unwrap_or_else(|| CONSOLE_ROOT.to_owned());
    let email = form.email.clone();
    match humans::log_in(&state, client_ip(client), LogIn { email: form.email, password: form.password }).await {
        Ok(started) => signed_in(&state, &started, &next),
        Err(error) => {
            let (status, message) = ConsoleError::from(error).status_and_message();
            let (csrf_token, cookie) = login_csrf(&headers);
            let page = LoginPage { csrf_token, next, email, error: Some(message) };
            with_cookies(render_with_status(status, &page), cookie)
        }
    }
}

#[derive(Deserialize)]
struct SignupForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    org_name: String,
}

async fn sign_up(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (headers, body) = match checked_login_form(request).await {
        Ok(checked) => checked,
        Err(error) => return error.into_response(),
    };
    let form: SignupForm = match parse_form(&body) {
        Ok(form) => form,
        Err(error) => return error.into_response(),
    };
    let (email, org_name) = (form.email.clone(), form.org_name.clone());
    let org = Some(form.org_name.trim().to_owned()).filter(|name| !name.is_empty());
    match humans::sign_up(
        &state,
        client_ip(client),
        SignUp { email: form.email, password: form.password, org_name: org },
    )
    .await
    {
        Ok(started) => signed_in(&state, &started, CONSOLE_ROOT),
        Err(error) => {
            let (status, message) = ConsoleError::from(error).status_and_message();
            let (csrf_token, cookie) = login_csrf(&headers);
            let page = SignupPage { csrf_token, email, org_name, error: Some(message) };
            with_cookies(render_with_status(status, &page), cookie)
        }
    }
}

#[derive(Deserialize)]
struct NoFields {}

async fn log_out(State(state): State<AppState>, form: Result<ConsoleForm<NoFields>, ConsoleError>) -> Response {
    let form = match form {
        Ok(form) => form,
        // Already logged out: nothing to end.
        Err(ConsoleError::LoginNeeded { .. }) => return super::see_other("/console/login"),
        Err(error) => return error.into_response(),
    };
    match humans::log_out(&state, &form.session.principal).await {
        Ok(()) => with_cookies(super::see_other("/console/login"), [cleared_cookie_header()]),
        Err(error) => ConsoleError::from(error).into_response(),
    }
}

async fn log_out_everywhere(
    State(state): State<AppState>,
    form: Result<ConsoleForm<NoFields>, ConsoleError>,
) -> Response {
    let form = match form {
        Ok(form) => form,
        Err(ConsoleError::LoginNeeded { .. }) => return super::see_other("/console/login"),
        Err(error) => return error.into_response(),
    };
    match humans::log_out_everywhere(&state, &form.session.principal).await {
        Ok(()) => with_cookies(super::see_other("/console/login"), [cleared_cookie_header()]),
        Err(error) => ConsoleError::from(error).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_console() {
        assert_eq!(safe_next(Some("/console/agents")).as_deref(), Some("/console/agents"));
        assert_eq!(safe_next(Some("/console")).as_deref(), Some("/console"));
        for hostile in [
            "//evil.example",
            "https://evil.example",
            "/console//evil",
            "/console/../me",
            "/\\evil",
            "/consolex",
            "/console/a?b=c",
        ] {
            assert_eq!(safe_next(Some(hostile)), None, "{hostile}");
        }
        assert_eq!(login_path("/console/keys"), "/console/login?next=%2Fconsole%2Fkeys");
        assert_eq!(login_path("//evil"), "/console/login");
    }
}
