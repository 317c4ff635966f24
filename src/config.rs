//! Server configuration, from flags and `BAHI_*` environment variables (see `bahi serve --help`).

use bahi_domain::credential::{Environment, KeyPrefix, SecretHash};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub environment: Environment,
    pub key_prefix: KeyPrefix,
    pub legacy_key_prefixes: Vec<KeyPrefix>,
    /// Only the hash of the operator credential is kept.
    pub operator_key_hash: Option<SecretHash>,
    pub hold_ttl_seconds: u64,
    pub issuer: String,
}

impl ServerConfig {
    pub fn accepts_key_prefix(&self, prefix: &str) -> bool {
        self.key_prefix.as_str() == prefix || self.legacy_key_prefixes.iter().any(|legacy| legacy.as_str() == prefix)
    }
}
