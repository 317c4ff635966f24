//! The node's agent-identity runtime: the embedded issuer's signing key (unsealed in
//! memory only), the token verifier kept in step with the ledger, and JWK sets fetched
//! from external issuers' `jwks_uri`.
//!
//! Private keys are in the event log only sealed (AES-256-GCM) under a 32-byte
//! key-encryption key that never enters the database: `BAHI_KEY_ENCRYPTION_KEY` (64 hex
//! characters), or else a key file (`BAHI_KEY_FILE`, by default `<sqlite path>.kek` or
//! `./bahi.kek`), created with mode 0600 on first start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::SharedClock;
use anyhow::{Context, bail};
use bahi_domain::State;
use bahi_domain::command::NewSigningKey;
use bahi_domain::ids::IssuerId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};

use crate::agent_token::{IssuerKind, JwkSet, SigningKey, TokenError, TrustedIssuer, VerifiedToken, Verifier};

/// The registration id of the embedded issuer in the verifier.
pub const EMBEDDED_REGISTRATION: &str = "embedded";
/// How long a fetched JWK set is used before it is fetched again.
pub const JWKS_CACHE_SECONDS: i64 = 300;
/// At most one refetch per issuer per this many seconds, however many unknown kids arrive.
pub const JWKS_REFRESH_MIN_SECONDS: i64 = 30;
/// Timeout of one JWKS fetch.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted from a `jwks_uri`.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The verifier is rebuilt at least this often, so retired keys leave it when their time is up.
const RESYNC_SECONDS: i64 = 30;

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    bytes
}

/// The bytes of a new entity id: time-ordered (see `time_ordered_bytes`).
pub fn new_id_bytes() -> [u8; 16] {
    bahi_domain::ids::time_ordered_bytes(Utc::now().timestamp_millis(), random_bytes())
}

/// Loads or creates the key-encryption key.
pub fn load_key_encryption_key(from_environment: Option<&str>, key_file: PathBuf) -> anyhow::Result<[u8; 32]> {
    let parse = |text: &str, source: &str| -> anyhow::Result<[u8; 32]> {
        let bytes = hex::decode(text.trim()).with_context(|| format!("{source} must be 64 hex characters"))?;
        bytes.try_into().map_err(|_| anyhow::anyhow!("{source} must be 64 hex characters (32 bytes)"))
    };
    if let Some(text) = from_environment.filter(|text| !text.is_empty()) {
        return parse(text, "BAHI_KEY_ENCRYPTION_KEY");
    }
    match std::fs::read_to_string(&key_file) {
        Ok(text) => parse(&text, &key_file.display().to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = random_bytes();
            if write_private_file(&key_file, &hex::encode(key))
                .with_context(|| format!("creating the key file {}", key_file.display()))?
            {
                tracing::info!(path = %key_file.display(), "created the key-encryption key file");
                Ok(key)
            } else {
                // Another process created it first: use theirs.
                let text =
                    std::fs::read_to_string(&key_file).with_context(|| format!("reading {}", key_file.display()))?;
                parse(&text, &key_file.display().to_string())
            }
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", key_file.display())),
    }
}

/// Writes `contents` to `path` only if no file is there, atomically: the text goes to a
/// private temporary file first, which is then hard-linked into place (linking never
/// replaces a file), so a concurrent reader never sees a half-written key. Returns false
/// when the file already existed.
fn write_private_file(path: &PathBuf, contents: &str) -> std::io::Result<bool> {
    use std::io::Write;
    let temporary = path.with_extension(format!("tmp-{}", hex::encode(random_bytes::<8>())));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    drop(file);
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

/// A new signing key, sealed for the log.
pub fn new_signing_key(key_encryption_key: &[u8; 32]) -> anyhow::Result<(SigningKey, NewSigningKey)> {
    let key = loop {
        // A random 32-byte string is a valid P-256 scalar except with negligible chance.
        if let Ok(key) = SigningKey::from_random_bytes(random_bytes()) {
            break key;
        }
    };
    let sealed = key.seal(key_encryption_key, random_bytes()).context("sealing the signing key")?;
    let record = NewSigningKey {
        key_id: key.kid().to_owned(),
        public_jwk: serde_json::to_value(key.public_jwk())?,
        sealed_private_key: URL_SAFE_NO_PAD.encode(sealed),
    };
    Ok((key, record))
}

pub struct Identity {
    key_encryption_key: [u8; 32],
    pub issuer: String,
    pub audience: String,
    pub verifier: Verifier,
    signing_keys: RwLock<HashMap<String, Arc<SigningKey>>>,
    synced_generation: AtomicU64,
    synced_at_seconds: AtomicI64,
    sync_lock: Mutex<()>,
    fetched: RwLock<HashMap<IssuerId, (JwkSet, i64)>>,
    http: reqwest::Client,
    clock: SharedClock,
}

impl Identity {
    pub fn new(key_encryption_key: [u8; 32], issuer: String, clock: SharedClock) -> Identity {
        Identity {
            key_encryption_key,
            audience: issuer.clone(),
            issuer,
            verifier: Verifier::new(),
            signing_keys: RwLock::new(HashMap::new()),
            synced_generation: AtomicU64::new(u64::MAX),
            synced_at_seconds: AtomicI64::new(0),
            sync_lock: Mutex::new(()),
            fetched: RwLock::new(HashMap::new()),
            http: reqwest::Client::builder().timeout(JWKS_FETCH_TIMEOUT).build().unwrap_or_default(),
            clock,
        }
    }

    /// The same identity, verifying tokens under `rules`.
    pub fn with_token_rules(mut self, rules: crate::agent_token::TokenRules) -> Identity {
        self.verifier = Verifier::new().with_rules(rules);
        self
    }

    pub fn key_encryption_key(&self) -> &[u8; 32] {
        &self.key_encryption_key
    }

    /// The key to sign with (unsealed once, then kept in memory).
    pub fn signing_key(&self, state: &State) -> anyhow::Result<Arc<SigningKey>> {
        let Some(record) = state.current_signing_key() else { bail!("the embedded issuer has no signing key yet") };
        if let Some(key) = self.signing_keys.read().get(&record.key_id) {
            return Ok(key.clone());
        }
        let sealed = URL_SAFE_NO_PAD.decode(&record.sealed_private_key).context("sealed key is not base64url")?;
        let key = SigningKey::from_sealed(&sealed, &self.key_encryption_key, &record.key_id).with_context(|| {
            format!(
                "cannot unseal signing key {}: BAHI_KEY_ENCRYPTION_KEY or the key file differs from the one it was sealed with",
                record.key_id
            )
        })?;
        let key = Arc::new(key);
        self.signing_keys.write().insert(record.key_id.clone(), key.clone());
        Ok(key)
    }

    /// The public keys that verify now: the current key and retired ones until their
    /// last token expired.
    pub fn published_keys(&self, state: &State, now: DateTime<Utc>) -> JwkSet {
        let keys = state
            .signing_keys
            .iter()
            .filter(|key| key.verify_until.is_none_or(|until| until > now))
            .filter_map(|key| serde_json::from_value(key.public_jwk.clone()).ok())
            .collect();
        JwkSet { keys }
    }

    /// Rebuilds the verifier's registrations from the ledger when issuer or key events
    /// changed it (or every RESYNC_SECONDS, for retirements that take effect with time).
    pub fn sync(&self, state: &State, now: DateTime<Utc>) {
        let now_seconds = now.timestamp();
        if self.synced_generation.load(Ordering::Acquire) == state.credentials_generation
            && now_seconds - self.synced_at_seconds.load(Ordering::Relaxed) < RESYNC_SECONDS
        {
            return;
        }
        let _guard = self.sync_lock.lock();
        let embedded = TrustedIssuer {
            registration_id: EMBEDDED_REGISTRATION.to_owned(),
            issuer: self.issuer.clone(),
            audience: Some(self.audience.clone()),
            kind: IssuerKind::Embedded,
            keys: self.published_keys(state, now),
        };
        self.upsert_if_changed(embedded);
        for record in state.issuers.values() {
            if record.revoked_at.is_some() {
                self.verifier.remove_issuer(record.id.as_str());
                continue;
            }
            let keys = match (&record.jwks, &record.jwks_uri) {
                (Some(inline), _) => match JwkSet::from_untrusted_value(inline) {
                    Ok(keys) => keys,
                    Err(error) => {
                        // Accepted at registration, so only a rule tightened since refuses it:
                        // the issuer then verifies nothing, and says why.
                        tracing::error!(issuer = %record.id, %error, "a registered JWK set no longer parses");
                        JwkSet::default()
                    }
                },
                (None, Some(_)) => {
                    self.fetched.read().get(&record.id).map(|(keys, _)| keys.clone()).unwrap_or_default()
                }
                (None, None) => JwkSet::default(),
            };
            let owners = record.owners.iter().map(|(owner, org)| (owner.clone(), org.to_string())).collect();
            self.upsert_if_changed(TrustedIssuer {
                registration_id: record.id.to_string(),
                issuer: record.issuer.clone(),
                audience: record.audience.clone(),
                kind: IssuerKind::External { owner_claim: record.owner_claim.clone(), owners },
                keys,
            });
        }
        self.synced_generation.store(state.credentials_generation, Ordering::Release);
        self.synced_at_seconds.store(now_seconds, Ordering::Relaxed);
    }

    fn upsert_if_changed(&self, issuer: TrustedIssuer) {
        // Re-registering identical keys would only cost every cached token a second
        // signature check.
        if self.verifier.issuer_keys(&issuer.registration_id).as_ref() == Some(&issuer.keys)
            && !issuer.keys.keys.is_empty()
        {
            return;
        }
        if issuer.keys.keys.is_empty() {
            self.verifier.remove_issuer(&issuer.registration_id);
            return;
        }
        if let Err(error) = self.verifier.upsert_issuer(issuer) {
            tracing::warn!(%error, "issuer registration refused by the verifier");
        }
    }

    /// Fetches an external issuer's JWK set (bounded in time and size) and stores it.
    pub async fn fetch_jwks(&self, issuer_id: &IssuerId, uri: &str) -> Result<JwkSet, String> {
        let keys = self.download_jwks(uri).await?;
        self.remember_jwks(issuer_id, keys.clone());
        Ok(keys)
    }

    /// Fetches a JWK set (bounded in time and size) without keeping it: a registration
    /// checks its proofs against it first, and only an accepted one is remembered.
    pub async fn download_jwks(&self, uri: &str) -> Result<JwkSet, String> {
        let response = self.http.get(uri).send().await.map_err(|error| format!("fetching jwks_uri failed: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("jwks_uri answered {}", response.status()));
        }
        if response.content_length().is_some_and(|length| length as usize > MAX_JWKS_BYTES) {
            return Err(format!("jwks_uri document is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let body = response.bytes().await.map_err(|error| format!("reading jwks_uri failed: {error}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("jwks_uri document is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let text = std::str::from_utf8(&body).map_err(|_| "jwks_uri document is not UTF-8".to_owned())?;
        JwkSet::from_untrusted_json(text).map_err(|error| error.to_string())
    }

    /// Keeps a fetched JWK set for a registration, and has the next sync pick it up.
    pub fn remember_jwks(&self, issuer_id: &IssuerId, keys: JwkSet) {
        self.fetched.write().insert(issuer_id.clone(), (keys, self.clock.now().timestamp()));
        self.synced_generation.store(u64::MAX, Ordering::Release);
    }

    /// The time rules every token is held to on this node (proofs of ownership included).
    pub fn token_rules(&self) -> crate::agent_token::TokenRules {
        self.verifier.rules()
    }

    /// Verifies a token; on an unknown `kid` from an issuer with a `jwks_uri`, refetches
    /// its keys (at most once per JWKS_REFRESH_MIN_SECONDS) and tries once more.
    pub async fn verify(
        &self,
        ledger: &crate::ledger::SharedLedger,
        token: &str,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let now = self.clock.now();
        self.sync(&ledger.read().state, now);
        let first = self.verifier.verify(token, now.timestamp());
        let Err(TokenError::UnknownKeyId(_) | TokenError::UntrustedIssuer(_)) = &first else { return first };
        let due: Vec<(IssuerId, String)> = {
            let ledger = ledger.read();
            let fetched = self.fetched.read();
            ledger
                .state
                .issuers
                .values()
                .filter(|record| record.revoked_at.is_none())
                .filter_map(|record| Some((record.id.clone(), record.jwks_uri.clone()?)))
                .filter(|(id, _)| {
                    fetched.get(id).is_none_or(|(_, at)| now.timestamp() - at >= JWKS_REFRESH_MIN_SECONDS)
                })
                .collect()
        };
        if due.is_empty() {
            return first;
        }
        for (issuer_id, uri) in due {
            if let Err(error) = self.fetch_jwks(&issuer_id, &uri).await {
                tracing::warn!(issuer = %issuer_id, %error, "refreshing a JWK set failed");
                // Remember the attempt so a flood of bad tokens cannot turn into a flood of fetches.
                let mut fetched = self.fetched.write();
                let entry = fetched.entry(issuer_id).or_insert_with(|| (JwkSet::default(), 0));
                entry.1 = now.timestamp();
            }
        }
        self.sync(&ledger.read().state, now);
        self.verifier.verify(token, now.timestamp())
    }

    /// Refreshes fetched JWK sets older than JWKS_CACHE_SECONDS (a background duty).
    pub async fn refresh_stale(&self, state_issuers: Vec<(IssuerId, String)>) {
        let now = self.clock.now().timestamp();
        for (issuer_id, uri) in state_issuers {
            let stale = self.fetched.read().get(&issuer_id).is_none_or(|(_, at)| now - at >= JWKS_CACHE_SECONDS);
            if stale && let Err(error) = self.fetch_jwks(&issuer_id, &uri).await {
                tracing::warn!(issuer = %issuer_id, %error, "fetching a JWK set failed");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_created_once_privately_and_shared_by_concurrent_starts() {
        let directory = std::env::temp_dir().join(format!("bahi-kek-test-{}", hex::encode(random_bytes::<8>())));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("bahi.db.kek");
        let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..8).map(|_| scope.spawn(|| load_key_encryption_key(None, path.clone()).unwrap())).collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|key| *key == keys[0]), "every start agrees on one key");
        assert_eq!(load_key_encryption_key(None, path.clone()).unwrap(), keys[0]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(&directory).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files are left behind");
        assert!(load_key_encryption_key(Some("abc"), path.clone()).is_err());
        assert_eq!(load_key_encryption_key(Some(&"01".repeat(32)), path).unwrap(), [1u8; 32]);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
