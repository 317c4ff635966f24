//! Server configuration, from flags and `BAHI_*` environment variables (see `bahi serve --help`).

use bahi_domain::credential::{Environment, KeyPrefix, SecretHash};
use bahi_domain::event::RateLimit;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub environment: Environment,
    pub key_prefix: KeyPrefix,
    pub legacy_key_prefixes: Vec<KeyPrefix>,
    /// Only the hash of the operator credential is kept.
    pub operator_key_hash: Option<SecretHash>,
    pub hold_ttl_seconds: u64,
    pub issuer: String,
    /// Token bucket of a key without its own `rate_limit`, and of console sessions.
    pub default_rate_limit: RateLimit,
    /// Per client address, for agent-register, signup and login.
    pub anonymous_rate_limit: RateLimit,
    /// Mark the session cookie `Secure` (serve behind TLS).
    pub secure_cookies: bool,
    /// Seals the embedded issuer's private keys; never stored in the database.
    pub key_encryption_key: [u8; 32],
}

/// The default key file: beside the SQLite file, or `bahi.kek` in the working directory.
pub fn default_key_file(database_url: &str) -> std::path::PathBuf {
    match database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:")) {
        Some(path) if !path.is_empty() && !path.starts_with(':') => {
            let path = path.split('?').next().unwrap_or(path);
            std::path::PathBuf::from(format!("{path}.kek"))
        }
        _ => std::path::PathBuf::from("bahi.kek"),
    }
}

/// Parses `REQUESTS/SECONDS`, e.g. `600/60`.
pub fn parse_rate_limit(text: &str) -> Option<RateLimit> {
    let (requests, interval) = text.split_once('/')?;
    let limit = RateLimit { requests: requests.trim().parse().ok()?, interval_seconds: interval.trim().parse().ok()? };
    bahi_domain::command::check_rate_limit(limit).ok().map(|()| limit)
}

impl ServerConfig {
    pub fn accepts_key_prefix(&self, prefix: &str) -> bool {
        self.key_prefix.as_str() == prefix || self.legacy_key_prefixes.iter().any(|legacy| legacy.as_str() == prefix)
    }
}
