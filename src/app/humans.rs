//! Humans: signup, login, logout, logout everywhere, and members added by an owner.
//! Passwords are hashed with argon2id off the async runtime; sessions are a random secret
//! whose SHA-256 alone is recorded.

use std::net::IpAddr;
use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use bahi_domain::Command;
use bahi_domain::command::{NewSession, SESSION_TTL_DAYS};
use bahi_domain::credential::{Role, SecretHash, check_password, normalize_email};
use bahi_domain::ids::{OrgId, UserId, base62};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::principal::check_client_rate;
use super::{AppError, AppResult, Principal, Services};
use crate::identity::{new_id_bytes, random_bytes};
use crate::ledger::Actor;

/// How long a session cookie lives in the browser: as long as the session.
pub const SESSION_MAX_AGE_SECONDS: i64 = SESSION_TTL_DAYS * 86_400;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    #[schemars(email)]
    pub email: String,
    /// 12 to 256 characters, not a well-known password nor one character repeated.
    #[schemars(length(min = 12, max = 256))]
    pub password: String,
    pub org_name: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogIn {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SessionView {
    #[schemars(schema_with = "super::schema::id")]
    pub user_id: UserId,
    #[schemars(schema_with = "super::schema::id")]
    pub org_id: OrgId,
    pub email: String,
    #[schemars(schema_with = "super::schema::role")]
    pub role: Role,
    #[serde(serialize_with = "super::time::micros")]
    pub session_expires_at: DateTime<Utc>,
}

/// A new session: its secret (for the cookie, never stored) and what the caller is shown.
#[derive(Debug)]
pub struct SessionStarted {
    pub secret: String,
    pub view: SessionView,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    #[schemars(email)]
    pub email: String,
    #[schemars(schema_with = "super::schema::role")]
    pub role: Role,
    /// The member's initial password, which they use to log in (as at signup).
    #[schemars(length(min = 12, max = 256))]
    pub password: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct MemberAdded {
    #[schemars(schema_with = "super::schema::id")]
    pub user_id: UserId,
    pub email: String,
    #[schemars(schema_with = "super::schema::role")]
    pub role: Role,
}

/// What logging out answers; `all_sessions` when every session of the user ended.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LoggedOut {
    pub logged_out: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_sessions: Option<bool>,
}

/// Hashes a password with argon2id (the crate's defaults) on a blocking thread.
pub async fn hash_password(password: String) -> AppResult<String> {
    let salt = random_bytes::<16>();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&salt).map_err(AppError::internal)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(AppError::internal)
    })
    .await
    .map_err(AppError::internal)?
}

/// A hash of a random password, verified against when the email is unknown so that
/// timing does not reveal which emails have accounts.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).unwrap_or_else(|_| unreachable!("16 bytes encode"));
    Argon2::default()
        .hash_password(base62(&random_bytes::<16>()).as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .unwrap_or_else(|error| unreachable!("argon2 hashes a random password: {error}"))
});

async fn verify_password(password: String, hash: Option<String>) -> AppResult<bool> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.clone());
        let matches = PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        Ok(known && matches)
    })
    .await
    .map_err(AppError::internal)?
}

fn new_session(now: DateTime<Utc>) -> (String, NewSession) {
    let secret = format!("sess_{}", base62(&random_bytes::<32>()));
    let session =
        NewSession { hash: SecretHash::of(&secret), expires_at: now + chrono::Duration::days(SESSION_TTL_DAYS) };
    (secret, session)
}

fn valid_email(email: &str) -> AppResult<String> {
    normalize_email(email).ok_or_else(|| AppError::invalid_request("email must be a valid address"))
}

fn email_free(services: &Services, email: &str) -> AppResult<()> {
    if services.ledger.read().state.users_by_email.contains_key(email) {
        return Err(AppError::conflict("email_taken", "a user with this email already exists"));
    }
    Ok(())
}

/// A new org with its owner, logged in.
pub async fn sign_up(services: &Services, client: IpAddr, request: SignUp) -> AppResult<SessionStarted> {
    check_client_rate(services, client)?;
    let email = valid_email(&request.email)?;
    check_password(&request.password).map_err(AppError::invalid_request)?;
    email_free(services, &email)?;
    let password_hash = hash_password(request.password).await?;
    let org_id = OrgId::from_random(new_id_bytes());
    let user_id = UserId::from_random(new_id_bytes());
    let (secret, session) = new_session(services.now());
    let session_expires_at = session.expires_at;
    let org_name = request.org_name.unwrap_or_else(|| format!("{email}'s org"));
    let command = Command::SignUp {
        org_id: org_id.clone(),
        org_name,
        environment: services.config.environment,
        user_id: user_id.clone(),
        email: email.clone(),
        password_hash,
        session,
    };
    services.submit(command, Actor::anonymous(client.to_string())).await?;
    let view = SessionView { user_id, org_id, email, role: Role::Owner, session_expires_at };
    Ok(SessionStarted { secret, view })
}

pub async fn log_in(services: &Services, client: IpAddr, request: LogIn) -> AppResult<SessionStarted> {
    check_client_rate(services, client)?;
    // An address that does not normalize matches no user, and still costs one hash check.
    let email = normalize_email(&request.email);
    // A user who signed up on another node a moment ago is found once this node catches up.
    let user = match &email {
        Some(email) => services.find_at_head(|ledger| ledger.state.user_by_email(email).cloned()).await?,
        None => None,
    };
    let valid = verify_password(request.password, user.as_ref().map(|user| user.password_hash.clone())).await?;
    let Some(user) = user.filter(|_| valid) else {
        return Err(AppError::unauthorized("invalid email or password"));
    };
    let (secret, session) = new_session(services.now());
    let session_expires_at = session.expires_at;
    let command = Command::LogIn { user_id: user.id.clone(), session };
    services.submit(command, Actor::new("session", user.id.to_string())).await?;
    let view =
        SessionView { user_id: user.id, org_id: user.org_id, email: user.email, role: user.role, session_expires_at };
    Ok(SessionStarted { secret, view })
}

fn session_of(principal: &Principal) -> AppResult<SecretHash> {
    principal
        .session_hash
        .ok_or_else(|| AppError::forbidden("human_only", "logout ends a console session; send the bahi_session cookie"))
}

/// Ends the caller's own session.
pub async fn log_out(services: &Services, principal: &Principal) -> AppResult<()> {
    let session_hash = session_of(principal)?;
    services.submit(Command::LogOut { session_hash }, principal.actor()).await?;
    Ok(())
}

/// Ends every session of the caller's user.
pub async fn log_out_everywhere(services: &Services, principal: &Principal) -> AppResult<()> {
    session_of(principal)?;
    let (user_id, _) =
        principal.require_human(&[Role::Owner, Role::Admin, Role::Finance, Role::Auditor, Role::Member])?;
    services.submit(Command::LogOutEverywhere { user_id }, principal.actor()).await?;
    Ok(())
}

pub async fn add_member(services: &Services, principal: &Principal, request: AddMember) -> AppResult<MemberAdded> {
    let (owner_id, _) = principal.require_human(&[Role::Owner])?;
    let email = valid_email(&request.email)?;
    check_password(&request.password).map_err(AppError::invalid_request)?;
    email_free(services, &email)?;
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
    services.submit(command, principal.actor()).await?;
    Ok(MemberAdded { user_id, email, role: request.role })
}
