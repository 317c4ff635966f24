//! Offline verification of agent tokens against trusted issuers, with a cache.
//!
//! Hardening, in the order checks run:
//! - the token is at most [`MAX_TOKEN_BYTES`] and exactly three base64url segments;
//! - the header `alg` must be exactly `ES256`; the algorithm used to check the signature
//!   is fixed, never taken from the header, so `none`, HS256-with-the-public-key and
//!   RS/PS/ES384 confusions have nothing to work with; `crit` is refused (RFC 7515 4.1.11);
//!   `jwk`, `jku`, `x5u`, `x5c` headers are ignored, keys come only from registrations;
//! - `kid` is required and must be a key of a registration whose `iss` is the token's;
//! - the signature is 64 bytes (r || s) and verified by jsonwebtoken's aws-lc-rs backend;
//! - `exp` is required, `exp` and `nbf` are checked against the caller's clock with the
//!   leeway of [`TokenRules`] (a few seconds for bahi's own tokens, configurable for
//!   external ones), and `aud` must match when the registration names one;
//! - an external token's `iat` may not lie in the future beyond the leeway, and its
//!   lifetime (`exp - iat`, or `exp - now` without `iat`) may not exceed the configured
//!   maximum;
//! - bahi's own tokens must carry every claim of docs/api.md in its shape; external
//!   tokens must name an owner that the registration maps to an org.
//!
//! Revocation of agents and single tokens is the caller's check after verification; the
//! verifier only guarantees that a removed or changed issuer registration takes effect
//! at once, cache included.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bahi_domain::claims::{AgentClaims, AgentMode, ClaimsError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::cache::{CacheEntry, TokenCache, TokenHash};
use super::jwk::{Jwk, JwkError, JwkSet};

/// Allowed clock difference between bahi's nodes, applied to the embedded issuer's `exp`
/// and `nbf`: its tokens die at `exp`, give or take this.
pub const EMBEDDED_LEEWAY_SECONDS: i64 = 5;

/// Default clock difference allowed between an external issuer and bahi.
pub const DEFAULT_EXTERNAL_LEEWAY_SECONDS: u64 = 30;

/// Default longest lifetime of an external issuer's token.
pub const DEFAULT_EXTERNAL_MAX_LIFETIME_SECONDS: u64 = 86_400;

/// The time rules tokens are held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRules {
    /// Leeway on `exp` and `nbf` of the embedded issuer's tokens.
    pub embedded_leeway_seconds: i64,
    /// Leeway on `exp`, `nbf` and `iat` of external issuers' tokens.
    pub external_leeway_seconds: i64,
    /// Longest `exp - iat` (or `exp - now` without `iat`) of an external issuer's token.
    pub external_max_lifetime_seconds: i64,
}

impl Default for TokenRules {
    fn default() -> TokenRules {
        TokenRules {
            embedded_leeway_seconds: EMBEDDED_LEEWAY_SECONDS,
            external_leeway_seconds: DEFAULT_EXTERNAL_LEEWAY_SECONDS as i64,
            external_max_lifetime_seconds: DEFAULT_EXTERNAL_MAX_LIFETIME_SECONDS as i64,
        }
    }
}

impl TokenRules {
    fn leeway_seconds(&self, kind: &IssuerKind) -> i64 {
        match kind {
            IssuerKind::Embedded => self.embedded_leeway_seconds,
            IssuerKind::External { .. } => self.external_leeway_seconds,
        }
    }
}

/// Longest token accepted. bahi's tokens are about 500 bytes; external identity
/// providers stay within a few kilobytes. Bounds the hashing and parsing an
/// unauthenticated request can cause.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Default bound of the verified-token cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// Length of a base64url ES256 signature: 64 bytes encode to 86 characters.
const SIGNATURE_SEGMENT_CHARS: usize = 86;

/// How a registration's tokens map to bahi's agents, principals and orgs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerKind {
    /// bahi's embedded issuer: tokens carry the claims of docs/api.md exactly.
    Embedded,
    /// A registered external issuer ("bring your own"). The org that pays is
    /// `owners[claims[owner_claim]]`; an owner value not in the map is refused.
    External { owner_claim: String, owners: HashMap<String, String> },
}

/// One registration of a trusted issuer.
///
/// Several registrations may share an `iss` (two orgs trusting the same identity
/// provider); each keeps its own keys and owner map, and a token is mapped only through
/// the registration whose key verified it, so one org's registration can never vouch
/// for another org's owners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// Stable id of the registration, e.g. `iss_...`, or any fixed name for the
    /// embedded issuer. Removal and key changes address it.
    pub registration_id: String,
    /// The exact `iss` claim value.
    pub issuer: String,
    /// Required `aud` value, when set.
    pub audience: Option<String>,
    pub kind: IssuerKind,
    /// Current and retired public keys; every one verifies until removed.
    pub keys: JwkSet,
}

/// What a verified token says, mapped to bahi's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    pub registration_id: String,
    pub issuer: String,
    /// The `kid` that verified the signature.
    pub key_id: String,
    /// The acting agent: `sub`, or `act.sub` when an RFC 8693 `act` claim is present.
    pub agent_id: String,
    /// The principal acted for: `act_for` (bahi tokens), `sub` (external with `act`), or
    /// the org (external without `act`).
    pub act_for: String,
    /// The org that pays.
    pub org_id: String,
    pub mode: AgentMode,
    pub scopes: Vec<String>,
    /// `jti`; always present on bahi's tokens, optional on external ones.
    pub jti: Option<String>,
    pub expires_at_epoch_seconds: i64,
    pub external_issuer: bool,
    /// Whether the agent came from an RFC 8693 `act` claim.
    pub used_act_claim: bool,
}

/// Why a token was refused. The HTTP layer answers 401 with the message; messages never
/// contain the token, and echo at most short, escaped fragments (`iss`, `kid`, `alg`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("agent token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("agent token is malformed: {0}")]
    Malformed(&'static str),
    #[error("agent token algorithm {0} is not accepted; only ES256 is")]
    UnsupportedAlgorithm(String),
    #[error("agent token header lists critical extensions (crit), which are not supported")]
    CriticalHeader,
    #[error("agent token header has no kid")]
    MissingKeyId,
    #[error("agent token issuer {0} is not trusted")]
    UntrustedIssuer(String),
    #[error("agent token kid {0} is not a key of its issuer")]
    UnknownKeyId(String),
    #[error("agent token signature is invalid")]
    BadSignature,
    #[error("agent token has no `{0}` claim")]
    MissingClaim(String),
    #[error("agent token claim `{claim}` {reason}")]
    InvalidClaim { claim: String, reason: &'static str },
    #[error("agent token has expired")]
    Expired,
    #[error("agent token is not valid yet")]
    NotYetValid,
    #[error("agent token audience does not include this service")]
    WrongAudience,
    #[error("agent token claim `{owner_claim}` names an owner that is not mapped to an org")]
    UnmappedOwner { owner_claim: String },
    #[error("agent token claims are malformed: {0}")]
    Claims(ClaimsError),
}

impl TokenError {
    /// A stable machine-readable name, e.g. for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLong => "token_too_long",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnsupportedAlgorithm(_) => "token_algorithm",
            TokenError::CriticalHeader => "token_critical_header",
            TokenError::MissingKeyId => "token_missing_kid",
            TokenError::UntrustedIssuer(_) => "token_untrusted_issuer",
            TokenError::UnknownKeyId(_) => "token_unknown_kid",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::MissingClaim(_) => "token_missing_claim",
            TokenError::InvalidClaim { .. } => "token_invalid_claim",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::UnmappedOwner { .. } => "token_unmapped_owner",
            TokenError::Claims(_) => "token_claims",
        }
    }
}

/// Why a registration or key change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    #[error("no issuer registration {0:?}")]
    UnknownRegistration(String),
    #[error("issuer must be a non-empty string")]
    EmptyIssuer,
    #[error("registration id must be a non-empty string")]
    EmptyRegistrationId,
    #[error("owner_claim must be a non-empty claim name")]
    EmptyOwnerClaim,
    #[error(transparent)]
    Keys(#[from] JwkError),
}

struct IssuerEntry {
    config: TrustedIssuer,
    decoding_keys: HashMap<String, DecodingKey>,
    /// Unique across the verifier's life (never reused, even for a re-added id), so a
    /// cache entry stamped with it matches only the exact registration state it was
    /// verified under.
    generation: u64,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<IssuerEntry>>,
    by_issuer: HashMap<String, Vec<Arc<IssuerEntry>>>,
}

impl Registry {
    fn put(&mut self, entry: Arc<IssuerEntry>) {
        self.remove(&entry.config.registration_id);
        let siblings = self.by_issuer.entry(entry.config.issuer.clone()).or_default();
        siblings.push(Arc::clone(&entry));
        // Candidates are tried in registration-id order (ids sort by creation time), never
        // in the order a process happened to register them: the same token maps to the same
        // org on every node, the earliest registration first.
        siblings.sort_by(|left, right| left.config.registration_id.cmp(&right.config.registration_id));
        self.by_id.insert(entry.config.registration_id.clone(), entry);
    }

    fn remove(&mut self, registration_id: &str) -> Option<Arc<IssuerEntry>> {
        let removed = self.by_id.remove(registration_id)?;
        if let Some(siblings) = self.by_issuer.get_mut(&removed.config.issuer) {
            siblings.retain(|entry| entry.config.registration_id != registration_id);
            if siblings.is_empty() {
                self.by_issuer.remove(&removed.config.issuer);
            }
        }
        Some(removed)
    }
}

/// Verifies agent tokens offline. Cheap to share: `Send + Sync`, interior locking.
pub struct Verifier {
    registry: RwLock<Registry>,
    next_generation: AtomicU64,
    cache: TokenCache,
    signature_checks: AtomicU64,
    rules: TokenRules,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

/// The parts of a token that do not depend on which registration verifies it.
struct ParsedToken<'token> {
    signed_part: &'token str,
    signature_segment: &'token str,
    kid: String,
    claims: Map<String, Value>,
}

impl Verifier {
    /// A verifier with no trusted issuers and a cache of [`DEFAULT_CACHE_CAPACITY`].
    pub fn new() -> Verifier {
        Verifier::with_cache_capacity(DEFAULT_CACHE_CAPACITY)
    }

    /// A verifier whose cache holds about `capacity` tokens; zero disables caching.
    pub fn with_cache_capacity(capacity: usize) -> Verifier {
        Verifier {
            registry: RwLock::new(Registry::default()),
            next_generation: AtomicU64::new(1),
            cache: TokenCache::new(capacity),
            signature_checks: AtomicU64::new(0),
            rules: TokenRules::default(),
        }
    }

    /// The same verifier holding tokens to `rules`.
    pub fn with_rules(mut self, rules: TokenRules) -> Verifier {
        self.rules = rules;
        self
    }

    /// The time rules this verifier holds tokens to.
    pub fn rules(&self) -> TokenRules {
        self.rules
    }

    /// Adds a registration, or replaces the one with the same `registration_id`. Tokens
    /// cached under the previous state are verified again on their next use.
    pub fn upsert_issuer(&self, issuer: TrustedIssuer) -> Result<(), IssuerError> {
        let entry = self.build_entry(issuer, None)?;
        self.registry.write().put(entry);
        Ok(())
    }

    /// Removes a registration; its tokens, cached or not, are refused from now on.
    /// Returns whether it existed.
    pub fn remove_issuer(&self, registration_id: &str) -> bool {
        self.registry.write().remove(registration_id).is_some()
    }

    /// Replaces every key of a registration (cached tokens are checked again).
    pub fn replace_keys(&self, registration_id: &str, keys: JwkSet) -> Result<(), IssuerError> {
        self.change(registration_id, |config| {
            config.keys = keys;
            true
        })
    }

    /// Adds a key, e.g. the next key of a rotation. Adding cannot invalidate anything, so
    /// cached tokens stay cached. Adding a key that is already present is a no-op.
    pub fn add_key(&self, registration_id: &str, key: Jwk) -> Result<(), IssuerError> {
        self.change(registration_id, |config| {
            if !config.keys.keys.contains(&key) {
                config.keys.keys.push(key);
            }
            false
        })
    }

    /// Removes a key (a retired key whose last token has expired, or a compromised one).
    /// Tokens it signed are refused from now on, cached ones included. Returns whether the
    /// key existed. Removing the last key leaves a registration that verifies nothing,
    /// which is refused: remove the registration instead.
    pub fn remove_key(&self, registration_id: &str, kid: &str) -> Result<bool, IssuerError> {
        let mut existed = false;
        self.change(registration_id, |config| {
            let before = config.keys.keys.len();
            config.keys.keys.retain(|key| key.kid.as_deref() != Some(kid));
            existed = config.keys.keys.len() != before;
            existed
        })?;
        Ok(existed)
    }

    /// The public keys of a registration, e.g. to serve the embedded issuer's JWKS.
    pub fn issuer_keys(&self, registration_id: &str) -> Option<JwkSet> {
        self.registry.read().by_id.get(registration_id).map(|entry| entry.config.keys.clone())
    }

    /// How many signatures have been checked: a cache hit does not add one. For metrics
    /// and for tests proving the cache works.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Tokens currently cached (including stale ones not yet evicted).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Verifies `token` at `now_epoch_seconds` (the caller's clock, so tests and replays
    /// are deterministic). A token verified before and still valid is answered from the
    /// cache without a signature check.
    pub fn verify(&self, token: &str, now_epoch_seconds: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let token_hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.cache.get(&token_hash) {
            if self.is_current(&cached) {
                if cached.is_expired(now_epoch_seconds) {
                    return Err(TokenError::Expired);
                }
                if cached.is_not_yet_valid(now_epoch_seconds) {
                    return Err(TokenError::NotYetValid);
                }
                return Ok(cached.token);
            }
            // Its registration changed or went away: forget it and decide afresh.
            self.cache.remove(&token_hash);
        }
        let (verified, generation, not_before_epoch_seconds, leeway_seconds) =
            self.verify_uncached(token, now_epoch_seconds)?;
        let verified = Arc::new(verified);
        let entry = CacheEntry { token: Arc::clone(&verified), generation, not_before_epoch_seconds, leeway_seconds };
        self.cache.insert(token_hash, entry, now_epoch_seconds);
        Ok(verified)
    }

    fn is_current(&self, cached: &CacheEntry) -> bool {
        self.registry
            .read()
            .by_id
            .get(&cached.token.registration_id)
            .is_some_and(|entry| entry.generation == cached.generation)
    }

    /// The token, its registration's generation, its `nbf`, and the leeway it was held to.
    fn verify_uncached(
        &self,
        token: &str,
        now_epoch_seconds: i64,
    ) -> Result<(VerifiedToken, u64, i64, i64), TokenError> {
        let parsed = parse(token)?;
        let issuer = required_string(&parsed.claims, "iss")?;
        let candidates: Vec<Arc<IssuerEntry>> = {
            let registry = self.registry.read();
            let Some(registrations) = registry.by_issuer.get(issuer) else {
                return Err(TokenError::UntrustedIssuer(quoted(issuer)));
            };
            registrations.iter().filter(|entry| entry.decoding_keys.contains_key(&parsed.kid)).cloned().collect()
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKeyId(quoted(&parsed.kid)));
        }
        // A bad encoding is a malformed token; a well-encoded wrong-length value is
        // simply not an ES256 signature.
        if URL_SAFE_NO_PAD.decode(parsed.signature_segment).is_err() {
            return Err(TokenError::Malformed("signature is not base64url"));
        }
        if parsed.signature_segment.len() != SIGNATURE_SEGMENT_CHARS {
            return Err(TokenError::BadSignature);
        }
        let mut refusal = TokenError::BadSignature;
        // Usually one candidate. With several (registrations sharing an iss and kid), the
        // first whose key verifies and whose rules accept the claims wins.
        for entry in candidates {
            let Some(key) = entry.decoding_keys.get(&parsed.kid) else {
                continue;
            };
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            // The algorithm is fixed here, never read from the header.
            let signature_valid = jsonwebtoken::crypto::verify(
                parsed.signature_segment,
                parsed.signed_part.as_bytes(),
                key,
                Algorithm::ES256,
            )
            .unwrap_or(false);
            if !signature_valid {
                continue;
            }
            match interpret(&entry, &parsed, now_epoch_seconds, &self.rules) {
                Ok((verified, not_before)) => {
                    let leeway = self.rules.leeway_seconds(&entry.config.kind);
                    return Ok((verified, entry.generation, not_before, leeway));
                }
                Err(error) => refusal = error,
            }
        }
        Err(refusal)
    }

    /// Builds a new registration state; `generation` keeps the current one when the change
    /// cannot invalidate a cached token.
    fn build_entry(&self, issuer: TrustedIssuer, generation: Option<u64>) -> Result<Arc<IssuerEntry>, IssuerError> {
        if issuer.registration_id.is_empty() {
            return Err(IssuerError::EmptyRegistrationId);
        }
        if issuer.issuer.is_empty() {
            return Err(IssuerError::EmptyIssuer);
        }
        if let IssuerKind::External { owner_claim, .. } = &issuer.kind
            && owner_claim.is_empty()
        {
            return Err(IssuerError::EmptyOwnerClaim);
        }
        issuer.keys.validate()?;
        let mut decoding_keys = HashMap::with_capacity(issuer.keys.keys.len());
        for (index, key) in issuer.keys.keys.iter().enumerate() {
            let invalid = |reason: String| IssuerError::Keys(JwkError::InvalidKey { index, reason });
            // `validate` above guarantees a kid and well-formed coordinates.
            let kid = key.kid.clone().ok_or_else(|| invalid("kid is missing".to_owned()))?;
            let decoding_key =
                DecodingKey::from_ec_components(&key.x, &key.y).map_err(|error| invalid(error.to_string()))?;
            decoding_keys.insert(kid, decoding_key);
        }
        let generation = generation.unwrap_or_else(|| self.next_generation.fetch_add(1, Ordering::Relaxed));
        Ok(Arc::new(IssuerEntry { config: issuer, decoding_keys, generation }))
    }

    /// Applies `edit` to a copy of a registration; `edit` returns whether the change can
    /// invalidate cached tokens.
    fn change(&self, registration_id: &str, edit: impl FnOnce(&mut TrustedIssuer) -> bool) -> Result<(), IssuerError> {
        // The write lock is held across the edit so two concurrent changes cannot lose
        // one another; key changes are rare, verification only takes the read lock.
        let mut registry = self.registry.write();
        let Some(current) = registry.by_id.get(registration_id) else {
            return Err(IssuerError::UnknownRegistration(registration_id.to_owned()));
        };
        let mut config = current.config.clone();
        let keep_generation = current.generation;
        let invalidates = edit(&mut config);
        let entry = self.build_entry(config, (!invalidates).then_some(keep_generation))?;
        registry.put(entry);
        Ok(())
    }
}

/// Splits and decodes the token without trusting anything in it yet.
fn parse(token: &str) -> Result<ParsedToken<'_>, TokenError> {
    let mut segments = token.split('.');
    let (Some(header_segment), Some(payload_segment), Some(signature_segment), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated segments"));
    };
    let header_bytes =
        URL_SAFE_NO_PAD.decode(header_segment).map_err(|_| TokenError::Malformed("header is not base64url"))?;
    // A map, not a derived struct: serde would also accept a JSON array positionally.
    let mut header: Map<String, Value> =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(TokenError::Malformed("header has no string alg"));
    };
    if alg != "ES256" {
        return Err(TokenError::UnsupportedAlgorithm(quoted(alg)));
    }
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    let kid = match header.remove("kid") {
        None => return Err(TokenError::MissingKeyId),
        Some(Value::String(kid)) => kid,
        Some(_) => return Err(TokenError::Malformed("header kid is not a string")),
    };
    let payload_bytes =
        URL_SAFE_NO_PAD.decode(payload_segment).map_err(|_| TokenError::Malformed("claims are not base64url"))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload_bytes).map_err(|_| TokenError::Malformed("claims are not a JSON object"))?;
    let signed_part = &token[..header_segment.len() + 1 + payload_segment.len()];
    Ok(ParsedToken { signed_part, signature_segment, kid, claims })
}

/// Applies the time, audience and mapping rules of one registration to claims whose
/// signature it has verified. Returns the token and its `nbf` (for the cache).
fn interpret(
    entry: &IssuerEntry,
    parsed: &ParsedToken<'_>,
    now_epoch_seconds: i64,
    rules: &TokenRules,
) -> Result<(VerifiedToken, i64), TokenError> {
    let claims = &parsed.claims;
    let leeway = rules.leeway_seconds(&entry.config.kind);
    let expires_at = required_integer(claims, "exp")?;
    if now_epoch_seconds > expires_at.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    let not_before = optional_integer(claims, "nbf")?;
    if let Some(not_before) = not_before
        && now_epoch_seconds.saturating_add(leeway) < not_before
    {
        return Err(TokenError::NotYetValid);
    }
    if let IssuerKind::External { .. } = entry.config.kind {
        let issued_at = optional_integer(claims, "iat")?;
        if issued_at.is_some_and(|issued_at| issued_at > now_epoch_seconds.saturating_add(leeway)) {
            return Err(invalid("iat", "is in the future"));
        }
        let lifetime = expires_at.saturating_sub(issued_at.unwrap_or(now_epoch_seconds));
        if lifetime > rules.external_max_lifetime_seconds {
            return Err(invalid("exp", "is further from iat (or now) than the longest token lifetime accepted"));
        }
    }
    if let Some(expected) = &entry.config.audience {
        check_audience(claims, expected)?;
    }
    let config = &entry.config;
    let verified = match &config.kind {
        IssuerKind::Embedded => {
            let agent_claims = agent_claims(claims)?;
            agent_claims.check_shape().map_err(TokenError::Claims)?;
            let scopes = agent_claims.scopes().map(str::to_owned).collect();
            VerifiedToken {
                registration_id: config.registration_id.clone(),
                issuer: agent_claims.iss,
                key_id: parsed.kid.clone(),
                scopes,
                agent_id: agent_claims.sub,
                act_for: agent_claims.act_for,
                org_id: agent_claims.org,
                mode: agent_claims.mode,
                jti: Some(agent_claims.jti),
                expires_at_epoch_seconds: agent_claims.exp,
                external_issuer: false,
                used_act_claim: false,
            }
        }
        IssuerKind::External { owner_claim, owners } => {
            let subject = required_string(claims, "sub")?;
            let owner = required_string(claims, owner_claim)?;
            let org_id =
                owners.get(owner).ok_or_else(|| TokenError::UnmappedOwner { owner_claim: owner_claim.clone() })?;
            let actor = actor_subject(claims)?;
            let (agent_id, act_for, mode) = match actor {
                // RFC 8693: `act.sub` is the party acting, `sub` the one acted for.
                Some(actor) => (actor.to_owned(), subject.to_owned(), AgentMode::Delegated),
                None => (subject.to_owned(), org_id.clone(), AgentMode::Autonomous),
            };
            VerifiedToken {
                registration_id: config.registration_id.clone(),
                issuer: config.issuer.clone(),
                key_id: parsed.kid.clone(),
                agent_id,
                act_for,
                org_id: org_id.clone(),
                mode,
                scopes: optional_string(claims, "scope")?
                    .map(|scope| scope.split_ascii_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                jti: optional_string(claims, "jti")?.map(str::to_owned),
                expires_at_epoch_seconds: expires_at,
                external_issuer: true,
                used_act_claim: actor.is_some(),
            }
        }
    };
    Ok((verified, not_before.unwrap_or(i64::MIN)))
}

fn agent_claims(claims: &Map<String, Value>) -> Result<AgentClaims, TokenError> {
    let mode = required_string(claims, "mode")?;
    let mode = mode.parse::<AgentMode>().map_err(|_| TokenError::InvalidClaim {
        claim: "mode".to_owned(),
        reason: "must be autonomous, delegated or hybrid",
    })?;
    Ok(AgentClaims {
        iss: required_string(claims, "iss")?.to_owned(),
        aud: required_string(claims, "aud")?.to_owned(),
        sub: required_string(claims, "sub")?.to_owned(),
        org: required_string(claims, "org")?.to_owned(),
        act_for: required_string(claims, "act_for")?.to_owned(),
        mode,
        scope: required_string(claims, "scope")?.to_owned(),
        iat: required_integer(claims, "iat")?,
        nbf: required_integer(claims, "nbf")?,
        exp: required_integer(claims, "exp")?,
        jti: required_string(claims, "jti")?.to_owned(),
    })
}

/// RFC 7519 4.1.3: `aud` is one string or an array of strings, and must name us.
fn check_audience(claims: &Map<String, Value>, expected: &str) -> Result<(), TokenError> {
    let matches = match claims.get("aud") {
        None => return Err(TokenError::MissingClaim("aud".to_owned())),
        Some(Value::String(audience)) => audience == expected,
        Some(Value::Array(audiences)) => {
            if !audiences.iter().all(Value::is_string) {
                return Err(invalid("aud", "must be a string or an array of strings"));
            }
            audiences.iter().any(|audience| audience.as_str() == Some(expected))
        }
        Some(_) => return Err(invalid("aud", "must be a string or an array of strings")),
    };
    if matches { Ok(()) } else { Err(TokenError::WrongAudience) }
}

/// `act.sub` of an RFC 8693 `act` claim, if the token has one.
fn actor_subject(claims: &Map<String, Value>) -> Result<Option<&str>, TokenError> {
    match claims.get("act") {
        None => Ok(None),
        Some(Value::Object(actor)) => match actor.get("sub") {
            Some(Value::String(subject)) if !subject.is_empty() => Ok(Some(subject)),
            _ => Err(invalid("act", "must be an object with a non-empty string `sub`")),
        },
        Some(_) => Err(invalid("act", "must be an object with a non-empty string `sub`")),
    }
}

fn invalid(claim: &str, reason: &'static str) -> TokenError {
    TokenError::InvalidClaim { claim: claim.to_owned(), reason }
}

fn required_string<'a>(claims: &'a Map<String, Value>, claim: &str) -> Result<&'a str, TokenError> {
    optional_string(claims, claim)?.ok_or_else(|| TokenError::MissingClaim(claim.to_owned()))
}

fn optional_string<'a>(claims: &'a Map<String, Value>, claim: &str) -> Result<Option<&'a str>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(claim, "must be a string")),
    }
}

fn required_integer(claims: &Map<String, Value>, claim: &str) -> Result<i64, TokenError> {
    optional_integer(claims, claim)?.ok_or_else(|| TokenError::MissingClaim(claim.to_owned()))
}

fn optional_integer(claims: &Map<String, Value>, claim: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        // Fractional NumericDates are legal JWT but never produced by bahi or mainstream
        // issuers; refusing them keeps time arithmetic in integers.
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(claim, "must be an integer number of seconds since the epoch")),
    }
}

/// A token-supplied value for an error message: quoted, escaped, and cut short.
fn quoted(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    if text.chars().count() <= MAX_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head:?}...")
    }
}
