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
    /// Timeouts and the connection cap of the HTTP transport.
    pub transport: crate::transport::TransportLimits,
    /// Clock leeway and lifetime rules for agent tokens.
    pub token_rules: crate::agent_token::TokenRules,
    /// Whether the operator may move the clock forward (tests only).
    pub test_clock: bool,
    /// Body cap, upstream timeouts and the cap on calls in flight of the inference proxy.
    pub proxy: ProxyLimits,
    /// Nodes serving one log behind a balancer: each node's token buckets hold 1/N of a
    /// rate limit, so that N nodes together allow the limit, not N times it.
    pub cluster_nodes: u32,
}

impl ServerConfig {
    /// This node's share of `limit`: `requests / cluster_nodes`, rounded up (at least 1),
    /// over the same interval.
    pub fn per_node(&self, limit: RateLimit) -> RateLimit {
        let nodes = self.cluster_nodes.max(1);
        RateLimit { requests: limit.requests.div_ceil(nodes).max(1), interval_seconds: limit.interval_seconds }
    }
}

/// The default key file: beside the SQLite file, or `bahi.kek` in the working directory.
pub fn default_key_file(database_url: &str) -> std::path::PathBuf {
    match sqlite_path(database_url) {
        Some(path) => std::path::PathBuf::from(format!("{}.kek", path.display())),
        None => std::path::PathBuf::from("bahi.kek"),
    }
}

/// The SQLite file of `database_url`, if it names one.
fn sqlite_path(database_url: &str) -> Option<std::path::PathBuf> {
    let path = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.starts_with(':')).then(|| std::path::PathBuf::from(path))
}

/// Whether `key_file` sits in the same directory as the SQLite database, so that copying
/// that directory (a backup, a support bundle) copies the key that unseals the issuer's
/// private keys along with the sealed keys themselves.
pub fn key_file_beside_database(key_file: &std::path::Path, database_url: &str) -> bool {
    let Some(database) = sqlite_path(database_url) else { return false };
    let directory = |path: &std::path::Path| {
        let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
    };
    directory(key_file) == directory(&database)
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

/// Limits of the proxy (`bahi serve --help`).
#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    /// Largest request body a client may send to a proxied endpoint.
    pub max_body_bytes: usize,
    pub connect_timeout: std::time::Duration,
    /// Longest wait for the upstream's next bytes (its answer head included).
    pub read_timeout: std::time::Duration,
    /// Upstream calls in flight at once; one more is 503 before anything is held.
    pub max_streams: usize,
    /// How long a call whose client left is still read, to learn the upstream's usage.
    pub drain_timeout: std::time::Duration,
}

impl Default for ProxyLimits {
    fn default() -> ProxyLimits {
        ProxyLimits {
            max_body_bytes: 4 * 1024 * 1024,
            connect_timeout: std::time::Duration::from_secs(10),
            read_timeout: std::time::Duration::from_secs(300),
            max_streams: 4096,
            drain_timeout: std::time::Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_file_is_beside_the_database_and_is_flagged() {
        let directory = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", directory.path().join("bahi.db").display());
        let key_file = default_key_file(&database_url);
        assert_eq!(key_file, directory.path().join("bahi.db.kek"));
        assert!(key_file_beside_database(&key_file, &database_url));
        assert!(key_file_beside_database(std::path::Path::new("bahi.kek"), "sqlite://bahi.db"));
        assert!(key_file_beside_database(std::path::Path::new("./bahi.kek"), "sqlite:bahi.db?mode=rwc"));
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(!key_file_beside_database(&elsewhere.path().join("bahi.kek"), &database_url));
        assert!(!key_file_beside_database(std::path::Path::new("bahi.kek"), "postgres://postgres@localhost/test"));
    }
}
