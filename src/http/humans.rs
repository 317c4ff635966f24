//! Humans: signup, login, logout, logout everywhere, and members added by an owner.
//! Passwords are hashed with argon2id off the async runtime; sessions are a random cookie
//! whose SHA-256 alone is recorded.

use std::net::SocketAddr;
use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bahi_domain::Command;
use bahi_domain::command::{NewSession, SESSION_TTL_DAYS};
use bahi_domain::credential::{Role, SecretHash, check_password, normalize_email};
use bahi_domain::ids::{OrgId, UserId, base62};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Principal, SESSION_COOKIE, authenticate, check_client_rate, session_cookie};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::identity::{new_id_bytes, random_bytes};
use crate::ledger::Actor;
use crate::writer::CommandContext;

pub fn router(state: &AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/me/logout", post(logout))
        .route("/me/logout-all", post(logout_all))
        .route("/v1/auth/account/members", post(add_member))
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    Router::new().route("/me/signup", post(signup)).route("/me/login", post(login)).merge(authenticated)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    email: String,
    password: String,
    org_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct SessionResponse {
    user_id: UserId,
    org_id: OrgId,
    email: String,
    role: Role,
    session_expires_at: chrono::DateTime<Utc>,
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes) on a blocking
/// thread.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    let salt = random_bytes::<16>();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// A hash of a random password, verified against when the email is unknown so that
/// timing does not reveal which emails have accounts.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).unwrap_or_else(|_| unreachable!("16 bytes encode"));
    Argon2::default()
        .hash_password(base62(&random_bytes::<16>()).as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .unwrap_or_default()
});

async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.clone());
        let matches = PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        Ok(known && matches)
    })
    .await
    .map_err(ApiError::internal)?
}

fn new_session() -> (String, NewSession) {
    let secret = format!("sess_{}", base62(&random_bytes::<32>()));
    let session =
        NewSession { hash: SecretHash::of(&secret), expires_at: Utc::now() + chrono::Duration::days(SESSION_TTL_DAYS) };
    (secret, session)
}

fn session_cookie_header(state: &AppState, secret: &str) -> HeaderValue {
    let secure = if state.config.secure_cookies { "; Secure" } else { "" };
    let max_age = SESSION_TTL_DAYS * 86_400;
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

fn cleared_cookie_header() -> HeaderValue {
    HeaderValue::from_static("bahi_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

fn email_or_400(email: &str) -> Result<String, ApiError> {
    normalize_email(email).ok_or_else(|| ApiError::invalid_request("email must be a valid address"))
}

fn context(actor: Actor) -> CommandContext {
    super::command_context(actor)
}

async fn signup(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<SignupRequest>,
) -> ApiResult<Response> {
    check_client_rate(&state, client.ip())?;
    let email = email_or_400(&request.email)?;
    check_password(&request.password).map_err(ApiError::invalid_request)?;
    if state.ledger.read().state.users_by_email.contains_key(&email) {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", "a user with this email already exists"));
    }
    let password_hash = hash_password(request.password).await?;
    let org_id = OrgId::from_random(new_id_bytes());
    let user_id = UserId::from_random(new_id_bytes());
    let (secret, session) = new_session();
    let expires_at = session.expires_at;
    let org_name = request.org_name.unwrap_or_else(|| format!("{email}'s org"));
    let command = Command::SignUp {
        org_id: org_id.clone(),
        org_name,
        environment: state.config.environment,
        user_id: user_id.clone(),
        email: email.clone(),
        password_hash,
        session,
    };
    state.writer.submit(command, context(Actor::anonymous(client.ip().to_string()))).await?;
    let body = SessionResponse { user_id, org_id, email, role: Role::Owner, session_expires_at: expires_at };
    Ok((StatusCode::CREATED, [(SET_COOKIE, session_cookie_header(&state, &secret))], Json(body)).into_response())
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    check_client_rate(&state, client.ip())?;
    let email = normalize_email(&request.email).unwrap_or_default();
    // A user who signed up on another node a moment ago is found once this node catches up.
    let user = super::find_at_head(&state, |ledger| ledger.state.user_by_email(&email).cloned()).await?;
    let valid = verify_password(request.password, user.as_ref().map(|user| user.password_hash.clone())).await?;
    let Some(user) = user.filter(|_| valid) else {
        return Err(ApiError::unauthorized("invalid email or password"));
    };
    let (secret, session) = new_session();
    let expires_at = session.expires_at;
    let command = Command::LogIn { user_id: user.id.clone(), session };
    state.writer.submit(command, context(Actor::new("session", user.id.to_string()))).await?;
    let body = SessionResponse {
        user_id: user.id,
        org_id: user.org_id,
        email: user.email,
        role: user.role,
        session_expires_at: expires_at,
    };
    Ok(([(SET_COOKIE, session_cookie_header(&state, &secret))], Json(body)).into_response())
}

fn session_principal(principal: &Principal, headers: &HeaderMap) -> Result<SecretHash, ApiError> {
    match (principal.session_hash, session_cookie(headers)) {
        (Some(hash), Some(_)) => Ok(hash),
        _ => Err(ApiError::forbidden("human_only", "logout ends a console session; send the bahi_session cookie")),
    }
}

async fn logout(State(state): State<AppState>, principal: Principal, headers: HeaderMap) -> ApiResult<Response> {
    let session_hash = session_principal(&principal, &headers)?;
    state.writer.submit(Command::LogOut { session_hash }, context(principal.actor())).await?;
    Ok(([(SET_COOKIE, cleared_cookie_header())], Json(serde_json::json!({"logged_out": true}))).into_response())
}

async fn logout_all(State(state): State<AppState>, principal: Principal, headers: HeaderMap) -> ApiResult<Response> {
    session_principal(&principal, &headers)?;
    let (user_id, _) =
        principal.require_human(&[Role::Owner, Role::Admin, Role::Finance, Role::Auditor, Role::Member])?;
    state.writer.submit(Command::LogOutEverywhere { user_id }, context(principal.actor())).await?;
    Ok(([(SET_COOKIE, cleared_cookie_header())], Json(serde_json::json!({"logged_out": true, "all_sessions": true})))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMemberRequest {
    email: String,
    role: Role,
    /// The member's initial password, which they use to log in.
    password: String,
}

#[derive(Serialize)]
struct MemberResponse {
    user_id: UserId,
    email: String,
    role: Role,
}

async fn add_member(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<AddMemberRequest>,
) -> ApiResult<(StatusCode, Json<MemberResponse>)> {
    let (owner_id, _) = principal.require_human(&[Role::Owner])?;
    let email = email_or_400(&request.email)?;
    check_password(&request.password).map_err(ApiError::invalid_request)?;
    if state.ledger.read().state.users_by_email.contains_key(&email) {
        return Err(ApiError::new(StatusCode::CONFLICT, "email_taken", "a user with this email already exists"));
    }
    let password_hash = hash_password(request.password).await?;
    let user_id = UserId::from_random(new_id_bytes());
    let command = Command::AddMember {
        org_id: principal.org_id.clone(),
        added_by: owner_id,
        user_id: user_id.clone(),
        email: email.clone(),
        password_hash,
        role: request.role,
    };
    state.writer.submit(command, context(principal.actor())).await?;
    Ok((StatusCode::CREATED, Json(MemberResponse { user_id, email, role: request.role })))
}
