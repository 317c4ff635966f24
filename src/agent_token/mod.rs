//! ES256 agent tokens (docs/api.md "Credentials", docs/design.md "Credentials").
//!
//! - [`SigningKey`]: the embedded issuer's P-256 key; `kid` is its RFC 7638 thumbprint;
//!   [`SigningKey::sign`] mints a compact JWS of [`AgentClaims`].
//! - [`Jwk`] / [`JwkSet`]: public keys for `/.well-known/jwks.json` and for issuer
//!   registrations; user input is validated strictly.
//! - [`seal`] / [`unseal`]: AES-256-GCM sealing of private keys, so the event log only
//!   ever holds them encrypted.
//! - [`Verifier`]: offline verification against trusted issuer registrations, with a
//!   bounded cache keyed by token hash that respects registration changes.

mod cache;
mod jwk;
mod seal;
mod signing;
mod verifier;

#[cfg(test)]
mod tests;

pub use bahi_domain::claims::{AgentClaims, AgentMode};
pub use jwk::{Jwk, JwkError, JwkSet, MAX_KEY_ID_CHARS, MAX_KEYS_PER_SET};
pub use seal::{SealError, UPSTREAM_KEY_DOMAIN, seal, seal_in_domain, unseal, unseal_in_domain};
pub use signing::{KeyError, SignError, SigningKey};
pub use verifier::{
    DEFAULT_CACHE_CAPACITY, DEFAULT_EXTERNAL_LEEWAY_SECONDS, DEFAULT_EXTERNAL_MAX_LIFETIME_SECONDS,
    EMBEDDED_LEEWAY_SECONDS, IssuerError, IssuerKind, MAX_TOKEN_BYTES, TokenError, TokenRules, TrustedIssuer,
    VerifiedToken, Verifier,
};
