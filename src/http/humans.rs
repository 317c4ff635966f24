//! Humans on HTTP: signup, login, logout, logout everywhere, and members; the session
//! secret travels only in the `bahi_session` cookie.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::AppState;
use super::auth::{SESSION_COOKIE, authenticate};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::app::Principal;
use crate::app::humans::{
    self, AddMember, LogIn, LoggedOut, MemberAdded, SESSION_MAX_AGE_SECONDS, SessionStarted, SignUp,
};

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/me/logout", post(logout))
        .route("/me/logout-all", post(logout_all))
        .route("/v1/auth/account/members", post(add_member))
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    Router::new().route("/me/signup", post(signup)).route("/me/login", post(login)).merge(authenticated)
}

/// The `Set-Cookie` value that starts a session (the console's login sets the same one).
pub fn session_cookie_header(state: &AppState, secret: &str) -> Result<HeaderValue, ApiError> {
    let secure = if state.config.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_MAX_AGE_SECONDS}{secure}"
    ))
    .map_err(ApiError::internal)
}

/// The `Set-Cookie` value that ends the session cookie in the browser.
pub fn cleared_cookie_header() -> HeaderValue {
    HeaderValue::from_static("bahi_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

fn with_cookie(state: &AppState, status: StatusCode, started: SessionStarted) -> ApiResult<Response> {
    let cookie = session_cookie_header(state, &started.secret)?;
    Ok((status, [(SET_COOKIE, cookie)], Json(started.view)).into_response())
}

async fn signup(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<SignUp>,
) -> ApiResult<Response> {
    let started = humans::sign_up(&state, client.ip(), request).await?;
    with_cookie(&state, StatusCode::CREATED, started)
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<LogIn>,
) -> ApiResult<Response> {
    let started = humans::log_in(&state, client.ip(), request).await?;
    with_cookie(&state, StatusCode::OK, started)
}

async fn logout(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    humans::log_out(&state, &principal).await?;
    Ok(([(SET_COOKIE, cleared_cookie_header())], Json(LoggedOut { logged_out: true, all_sessions: None }))
        .into_response())
}

async fn logout_all(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    humans::log_out_everywhere(&state, &principal).await?;
    Ok(([(SET_COOKIE, cleared_cookie_header())], Json(LoggedOut { logged_out: true, all_sessions: Some(true) }))
        .into_response())
}

async fn add_member(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<AddMember>,
) -> ApiResult<(StatusCode, Json<MemberAdded>)> {
    Ok((StatusCode::CREATED, Json(humans::add_member(&state, &principal, request).await?)))
}
