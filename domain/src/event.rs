//! Events: the stored API of bahi. Past tense, versioned, never changed once landed;
//! a correction is a new event. Adding a variant or an optional field is allowed; renaming
//! or retyping one is not (add a new schema version with an upcaster in `Event::decode`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credential::{Environment, Role, Scope, SecretHash};
use std::collections::BTreeMap;

use crate::billing::{Price, Provider, UsageSource};
use crate::claims::AgentMode;
use crate::ids::{AgentId, ApiKeyId, CallId, IssuerId, OrgId, TokenId, TopupId, UserId};
use crate::money::Money;

mod call_payloads;
mod redaction;

pub use redaction::{REDACTED, is_secret_field, redact, served_payload};

/// A token bucket's configuration: `requests` per `interval_seconds`, refilled continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests: u32,
    pub interval_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub amount: Money,
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgRegistered {
    pub org_id: OrgId,
    pub display_name: String,
    pub plan: String,
    pub environment: Environment,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub key_id: ApiKeyId,
    pub org_id: OrgId,
    pub name: Option<String>,
    pub key_hash: SecretHash,
    pub display_prefix: String,
    pub environment: Environment,
    pub scopes: Vec<Scope>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<Budget>,
    pub metadata: Option<serde_json::Value>,
}

/// The org's first human, its owner, from `/me/signup`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSignedUp {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub email: String,
    /// An argon2id PHC string; the password itself is never recorded.
    pub password_hash: String,
    pub role: Role,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub signed_up_at: DateTime<Utc>,
}

/// An owner added a member with a role and an initial password.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberAdded {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub added_by: UserId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub added_at: DateTime<Utc>,
}

/// A console session began; only the SHA-256 of its cookie value is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub session_hash: SecretHash,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub started_at: DateTime<Utc>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub session_hash: SecretHash,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub ended_at: DateTime<Utc>,
}

/// Logout everywhere: every session of the user that started before this event ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSessionsEnded {
    pub user_id: UserId,
    pub org_id: OrgId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub ended_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub key_id: ApiKeyId,
    pub org_id: OrgId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub revoked_at: DateTime<Utc>,
    /// True when revoked through DELETE; the key is then hidden from listings.
    pub deleted: bool,
}

/// A key's last use, recorded at most once per key per minute (uses are coalesced in
/// memory in between).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyUsed {
    pub key_id: ApiKeyId,
    pub org_id: OrgId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub last_used_at: DateTime<Utc>,
}

/// A key now speaks for an agent: its calls are attributed to the agent (and spend the
/// agent's budget), and it stops working when the agent is revoked. Agent-register binds
/// the org's first key to the agent it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyBoundToAgent {
    pub key_id: ApiKeyId,
    pub agent_id: AgentId,
    pub org_id: OrgId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub bound_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCreated {
    pub agent_id: AgentId,
    pub org_id: OrgId,
    pub name: String,
    pub mode: AgentMode,
    /// The principal the agent acts for: a member `usr_…` or the org itself.
    pub act_for: String,
    pub scopes: Vec<Scope>,
    pub budget: Option<Budget>,
    pub rate_limit: Option<RateLimit>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub created_at: DateTime<Utc>,
}

/// Every live token of the agent is refused from this event on, on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRevoked {
    pub agent_id: AgentId,
    pub org_id: OrgId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub revoked_at: DateTime<Utc>,
}

/// A token was minted (who minted it is in the event's metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTokenMinted {
    pub token_id: TokenId,
    pub agent_id: AgentId,
    pub org_id: OrgId,
    pub key_id: String,
    pub scopes: Vec<Scope>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub issued_at: DateTime<Utc>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTokenRevoked {
    pub token_id: TokenId,
    pub agent_id: AgentId,
    pub org_id: OrgId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub revoked_at: DateTime<Utc>,
}

/// A signing key of the embedded issuer. The private key is sealed (AES-256-GCM under a
/// key-encryption key kept outside the database); the log never holds it in clear.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SigningKeyAdded {
    pub key_id: String,
    pub public_jwk: serde_json::Value,
    /// base64url of the sealed PKCS#8 private key.
    pub sealed_private_key: String,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub added_at: DateTime<Utc>,
}

/// A signing key stops signing; it still verifies until `verify_until` (its last token's
/// expiry plus leeway), then leaves the published key set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigningKeyRetired {
    pub key_id: String,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub retired_at: DateTime<Utc>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub verify_until: DateTime<Utc>,
}

/// An org trusts an external issuer's tokens for the owners it maps to itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuerRegistered {
    pub issuer_id: IssuerId,
    pub org_id: OrgId,
    pub issuer: String,
    /// An inline JWK set, or
    pub jwks: Option<serde_json::Value>,
    /// a URL to fetch it from.
    pub jwks_uri: Option<String>,
    pub audience: Option<String>,
    pub owner_claim: String,
    pub owners: BTreeMap<String, OrgId>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuerRevoked {
    pub issuer_id: IssuerId,
    pub org_id: OrgId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub revoked_at: DateTime<Utc>,
}

/// The operator set a model's price; calls authorized from now on are billed at it.
/// A model bahi proxies, and its price. The upstream API key is sealed (AES-256-GCM under
/// the key-encryption key, bound to the model's name); the log never holds it in clear.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfigured {
    pub model: String,
    pub provider: Provider,
    pub upstream_base_url: String,
    /// base64url of the sealed upstream API key.
    pub sealed_upstream_api_key: String,
    /// The model's name at the upstream, when it differs from bahi's.
    pub upstream_model: Option<String>,
    pub price: Price,
    pub default_hold: Option<Money>,
    /// Output tokens a request without `max_tokens` is held for (and capped at).
    pub max_output_tokens: Option<u64>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub configured_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceSet {
    pub model: String,
    pub price: Price,
    /// What an authorization without `max_cost` holds; absent in older logs and when the
    /// operator set none (then the default of `command::default_hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_hold: Option<Money>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub set_at: DateTime<Utc>,
}

/// A human (owner or finance) added prepaid credit, idempotent on the payment reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsToppedUp {
    pub topup_id: TopupId,
    pub org_id: OrgId,
    pub amount: Money,
    pub payment_reference: String,
    pub user_id: UserId,
    pub balance_after: Money,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub topped_up_at: DateTime<Utc>,
}

/// The operator granted credit, with a reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsGranted {
    pub grant_id: TopupId,
    pub org_id: OrgId,
    pub amount: Money,
    pub reason: String,
    pub balance_after: Money,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub granted_at: DateTime<Utc>,
}

/// Who made a call, for whom, and who pays: recorded when it is authorized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAttribution {
    /// `api_key`, `session` or `agent_token`.
    pub credential_kind: String,
    pub credential_id: String,
    /// `agt_…`, or `<iss_…>:<subject>` for an external issuer's agent; none for keys.
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub act_for: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallAuthorized {
    pub call_id: CallId,
    pub org_id: OrgId,
    pub attribution: CallAttribution,
    pub model: String,
    /// The price in force now; the call is billed at it whenever its usage arrives.
    pub price: Price,
    /// Credit held until the usage settles or the hold expires (zero without max_cost).
    pub hold: Money,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub authorized_at: DateTime<Utc>,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub hold_expires_at: DateTime<Utc>,
}

/// A call's usage: cost debited from the payer, its hold (if still open) released, and the
/// whole attribution repeated so that this one event answers "who, for whom, who paid".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecorded {
    pub call_id: CallId,
    pub org_id: OrgId,
    pub attribution: CallAttribution,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub status: String,
    pub cost: Money,
    /// The hold released by this settlement (zero when it had expired already).
    pub hold_released: Money,
    pub balance_after: Money,
    /// Hex SHA-256 of the usage request, so that a replay can be told from a conflict.
    pub request_hash: String,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub settled_at: DateTime<Utc>,
    /// Set by the proxy: the upstream's usage, or bahi's estimate. Absent for usage a
    /// gateway reported (`POST /v1/usage`), and in logs older than the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_source: Option<UsageSource>,
}

/// An unsettled hold reached its expiry and released its credit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldExpired {
    pub call_id: CallId,
    pub org_id: OrgId,
    pub released: Money,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub expired_at: DateTime<Utc>,
}

/// An operator-made key for a gateway: it holds `usage:write` alone and belongs to no org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayKeyCreated {
    pub key_id: ApiKeyId,
    pub name: Option<String>,
    pub key_hash: SecretHash,
    pub display_prefix: String,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayKeyRevoked {
    pub key_id: ApiKeyId,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub revoked_at: DateTime<Utc>,
}

// Debug (what a log line or a panic message shows) leaves secrets out, as serving does.
impl std::fmt::Debug for UserSignedUp {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("UserSignedUp")
            .field("user_id", &self.user_id)
            .field("org_id", &self.org_id)
            .field("email", &self.email)
            .field("password_hash", &REDACTED)
            .field("role", &self.role)
            .field("signed_up_at", &self.signed_up_at)
            .finish()
    }
}

impl std::fmt::Debug for MemberAdded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MemberAdded")
            .field("user_id", &self.user_id)
            .field("org_id", &self.org_id)
            .field("email", &self.email)
            .field("password_hash", &REDACTED)
            .field("role", &self.role)
            .field("added_by", &self.added_by)
            .field("added_at", &self.added_at)
            .finish()
    }
}

impl std::fmt::Debug for SigningKeyAdded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKeyAdded")
            .field("key_id", &self.key_id)
            .field("public_jwk", &self.public_jwk)
            .field("sealed_private_key", &REDACTED)
            .field("added_at", &self.added_at)
            .finish()
    }
}

impl std::fmt::Debug for ModelConfigured {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ModelConfigured")
            .field("model", &self.model)
            .field("provider", &self.provider)
            .field("upstream_base_url", &self.upstream_base_url)
            .field("sealed_upstream_api_key", &REDACTED)
            .field("upstream_model", &self.upstream_model)
            .field("price", &self.price)
            .field("default_hold", &self.default_hold)
            .field("max_output_tokens", &self.max_output_tokens)
            .field("configured_at", &self.configured_at)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {event_type} version {schema_version}")]
    UnknownType { event_type: String, schema_version: i32 },
    #[error("event {event_type} payload does not decode: {message}")]
    BadPayload { event_type: String, message: String },
}

macro_rules! events {
    ($($name:ident => $stream:ident),* $(,)?) => {
        /// Every event bahi records. Each variant's payload is stored as the exact JSON bytes
        /// that were hashed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $($name($name)),*
        }

        impl Event {
            pub fn event_type(&self) -> &'static str {
                match self { $(Event::$name(_) => stringify!($name)),* }
            }

            /// The stream (aggregate) whose version this event advances.
            pub fn stream_id(&self) -> &str {
                match self { $(Event::$name(event) => event.$stream.as_str()),* }
            }

            /// The payload bytes: serde_json of the variant's struct. Field order is the
            /// struct's declaration order, so the bytes are deterministic.
            pub fn payload_bytes(&self) -> Vec<u8> {
                let encoded = match self { $(Event::$name(event) => serde_json::to_vec(event)),* };
                // Serializing plain structs of strings, numbers and JSON values cannot fail;
                // empty bytes in the log would be worse than stopping here.
                encoded.unwrap_or_else(|error| panic!("an event failed to serialize: {error}"))
            }

            pub fn decode(event_type: &str, schema_version: i32, payload: &[u8]) -> Result<Event, DecodeError> {
                // One UTF-8 check of the whole payload, then a parser that trusts it: from
                // bytes, serde_json checks every string it meets on its own, and those
                // checks were 10% of the instructions of loading a gateway's log.
                let payload = std::str::from_utf8(payload).map_err(|error| DecodeError::BadPayload {
                    event_type: event_type.to_owned(),
                    message: error.to_string(),
                })?;
                // The two events of every call first try the direct reader, which gives up
                // (and serde decides) on any byte bahi's encoder would not have written.
                let direct = match (event_type, schema_version) {
                    ("CallAuthorized", 1) => call_payloads::call_authorized(payload).map(Event::CallAuthorized),
                    ("UsageRecorded", 1) => call_payloads::usage_recorded(payload).map(Event::UsageRecorded),
                    _ => None,
                };
                if let Some(event) = direct {
                    return Ok(event);
                }
                match (event_type, schema_version) {
                    $((stringify!($name), 1) => serde_json::from_str(payload)
                        .map(Event::$name)
                        .map_err(|error| DecodeError::BadPayload {
                            event_type: event_type.to_owned(),
                            message: error.to_string(),
                        }),)*
                    _ => Err(DecodeError::UnknownType {
                        event_type: event_type.to_owned(),
                        schema_version,
                    }),
                }
            }

            /// Every event type name, for tests and tooling.
            pub const TYPES: &'static [&'static str] = &[$(stringify!($name)),*];
        }

        $(impl From<$name> for Event {
            fn from(event: $name) -> Event { Event::$name(event) }
        })*
    };
}

events! {
    OrgRegistered => org_id,
    ApiKeyCreated => key_id,
    UserSignedUp => user_id,
    MemberAdded => user_id,
    SessionStarted => user_id,
    SessionEnded => user_id,
    UserSessionsEnded => user_id,
    ApiKeyRevoked => key_id,
    ApiKeyUsed => key_id,
    AgentCreated => agent_id,
    AgentRevoked => agent_id,
    AgentTokenMinted => agent_id,
    AgentTokenRevoked => agent_id,
    SigningKeyAdded => key_id,
    SigningKeyRetired => key_id,
    IssuerRegistered => issuer_id,
    IssuerRevoked => issuer_id,
    PriceSet => model,
    CreditsToppedUp => org_id,
    CreditsGranted => org_id,
    CallAuthorized => org_id,
    UsageRecorded => org_id,
    HoldExpired => org_id,
    GatewayKeyCreated => key_id,
    GatewayKeyRevoked => key_id,
    ApiKeyBoundToAgent => key_id,
    ModelConfigured => model,
}

impl Event {
    /// Every event is version 1 so far; the column exists for upcasting later versions.
    pub fn schema_version(&self) -> i32 {
        1
    }

    /// The org an event belongs to, which decides who may read it in the audit log.
    pub fn org_id(&self) -> Option<&OrgId> {
        match self {
            Event::OrgRegistered(event) => Some(&event.org_id),
            Event::ApiKeyCreated(event) => Some(&event.org_id),
            Event::UserSignedUp(event) => Some(&event.org_id),
            Event::MemberAdded(event) => Some(&event.org_id),
            Event::SessionStarted(event) => Some(&event.org_id),
            Event::SessionEnded(event) => Some(&event.org_id),
            Event::UserSessionsEnded(event) => Some(&event.org_id),
            Event::ApiKeyRevoked(event) => Some(&event.org_id),
            Event::ApiKeyUsed(event) => Some(&event.org_id),
            Event::AgentCreated(event) => Some(&event.org_id),
            Event::AgentRevoked(event) => Some(&event.org_id),
            Event::AgentTokenMinted(event) => Some(&event.org_id),
            Event::AgentTokenRevoked(event) => Some(&event.org_id),
            Event::IssuerRegistered(event) => Some(&event.org_id),
            Event::IssuerRevoked(event) => Some(&event.org_id),
            Event::CreditsToppedUp(event) => Some(&event.org_id),
            Event::CreditsGranted(event) => Some(&event.org_id),
            Event::CallAuthorized(event) => Some(&event.org_id),
            Event::UsageRecorded(event) => Some(&event.org_id),
            Event::HoldExpired(event) => Some(&event.org_id),
            Event::ApiKeyBoundToAgent(event) => Some(&event.org_id),
            Event::SigningKeyAdded(_)
            | Event::SigningKeyRetired(_)
            | Event::PriceSet(_)
            | Event::ModelConfigured(_)
            | Event::GatewayKeyCreated(_)
            | Event::GatewayKeyRevoked(_) => None,
        }
    }
}
