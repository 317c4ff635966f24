//! Credential formats: API key text and its hash, environments, scopes.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{base62, is_base62};

/// The environment a server runs in and a key belongs to; a key never crosses environments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<Environment> {
        match text {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// SHA-256 of a secret: the only form in which a key or session secret is ever kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretHash([u8; 32]);

/// A hash of a session cookie or key is itself a secret to whoever reads logs: Debug hides it.
impl fmt::Debug for SecretHash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SecretHash([redacted])")
    }
}

impl SecretHash {
    pub fn of(secret: &str) -> SecretHash {
        SecretHash(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> SecretHash {
        SecretHash(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        // A table, not a format! per byte: this runs for every key event the writer
        // serializes (it was 3% of a bench append profile as format! calls).
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(64);
        for byte in self.0 {
            text.push(char::from(DIGITS[usize::from(byte >> 4)]));
            text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        text
    }

    pub fn from_hex(text: &str) -> Option<SecretHash> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(SecretHash(bytes))
    }
}

impl Serialize for SecretHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretHash, D::Error> {
        let text = String::deserialize(deserializer)?;
        SecretHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("bad hash"))
    }
}

/// Random bytes in a key: 256 bits, well above the 160 the contract requires.
pub const API_KEY_RANDOM_BYTES: usize = 32;
/// Characters of the random part kept for display (`bahi_live_AbC123…`): 36 of 256 bits.
pub const DISPLAY_PREFIX_RANDOM_CHARACTERS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialFormatError {
    #[error("API key prefix must be 1 to 16 lowercase letters, digits or '-'")]
    BadPrefix,
    #[error("malformed API key")]
    Malformed,
}

/// A key prefix such as `bahi` (configurable) or a legacy one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn parse(text: &str) -> Result<KeyPrefix, CredentialFormatError> {
        let valid = !text.is_empty()
            && text.len() <= 16
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid { Ok(KeyPrefix(text.to_owned())) } else { Err(CredentialFormatError::BadPrefix) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A freshly generated API key. It exists only between generation and the create response;
/// the ledger keeps its hash and display prefix.
pub struct NewApiKey {
    pub secret: String,
    pub hash: SecretHash,
    pub display_prefix: String,
}

impl NewApiKey {
    pub fn generate(prefix: &KeyPrefix, environment: Environment, random: [u8; API_KEY_RANDOM_BYTES]) -> NewApiKey {
        let random_text = base62(&random);
        let secret = format!("{}_{}_{}", prefix.as_str(), environment.as_str(), random_text);
        let display_prefix = format!(
            "{}_{}_{}",
            prefix.as_str(),
            environment.as_str(),
            &random_text[..DISPLAY_PREFIX_RANDOM_CHARACTERS]
        );
        NewApiKey { hash: SecretHash::of(&secret), secret, display_prefix }
    }
}

/// The parts of presented key text: `<prefix>_<env>_<random>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedApiKey<'a> {
    pub prefix: &'a str,
    pub environment: Environment,
}

/// Checks the shape of presented key text without looking it up. The random part must be
/// base62 of at least 27 characters (160 bits).
pub fn parse_api_key(text: &str) -> Result<ParsedApiKey<'_>, CredentialFormatError> {
    let mut parts = text.rsplitn(3, '_');
    let random = parts.next().ok_or(CredentialFormatError::Malformed)?;
    let environment = parts.next().and_then(Environment::parse);
    let prefix = parts.next().ok_or(CredentialFormatError::Malformed)?;
    let environment = environment.ok_or(CredentialFormatError::Malformed)?;
    KeyPrefix::parse(prefix).map_err(|_| CredentialFormatError::Malformed)?;
    if random.len() < 27 || random.len() > 64 || !is_base62(random) {
        return Err(CredentialFormatError::Malformed);
    }
    Ok(ParsedApiKey { prefix, environment })
}

/// The scopes of the contract. Operator-only scopes are never granted to org credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "inference")]
    Inference,
    #[serde(rename = "keys:write")]
    KeysWrite,
    #[serde(rename = "agents:write")]
    AgentsWrite,
    #[serde(rename = "audit:read")]
    AuditRead,
    #[serde(rename = "statements:read")]
    StatementsRead,
    #[serde(rename = "account:read")]
    AccountRead,
    #[serde(rename = "usage:write")]
    UsageWrite,
    #[serde(rename = "credits:grant")]
    CreditsGrant,
    #[serde(rename = "prices:write")]
    PricesWrite,
}

impl Scope {
    /// What an org key created without `scopes` gets.
    pub const ORG_DEFAULT: [Scope; 6] = [
        Scope::Inference,
        Scope::KeysWrite,
        Scope::AgentsWrite,
        Scope::AuditRead,
        Scope::StatementsRead,
        Scope::AccountRead,
    ];
    pub const OPERATOR: [Scope; 3] = [Scope::UsageWrite, Scope::CreditsGrant, Scope::PricesWrite];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::KeysWrite => "keys:write",
            Scope::AgentsWrite => "agents:write",
            Scope::AuditRead => "audit:read",
            Scope::StatementsRead => "statements:read",
            Scope::AccountRead => "account:read",
            Scope::UsageWrite => "usage:write",
            Scope::CreditsGrant => "credits:grant",
            Scope::PricesWrite => "prices:write",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ORG_DEFAULT.into_iter().chain(Scope::OPERATOR).find(|scope| scope.as_str() == text)
    }

    pub fn is_org_scope(self) -> bool {
        Scope::ORG_DEFAULT.contains(&self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_parses_and_hashes() {
        let prefix = KeyPrefix::parse("bahi").unwrap();
        let key = NewApiKey::generate(&prefix, Environment::Live, [7; 32]);
        assert!(key.secret.starts_with("bahi_live_"));
        assert_eq!(key.secret.len(), "bahi_live_".len() + 43);
        let parsed = parse_api_key(&key.secret).unwrap();
        assert_eq!(parsed, ParsedApiKey { prefix: "bahi", environment: Environment::Live });
        assert_eq!(key.hash, SecretHash::of(&key.secret));
        assert_eq!(SecretHash::from_hex(&key.hash.to_hex()), Some(key.hash));
        assert!(key.display_prefix.starts_with("bahi_live_") && key.display_prefix.len() == 16);
    }

    #[test]
    fn legacy_prefix_with_dash_parses() {
        let parsed = parse_api_key("sk-ar_test_0123456789012345678901234567").unwrap();
        assert_eq!(parsed.prefix, "sk-ar");
        assert_eq!(parsed.environment, Environment::Test);
    }

    #[test]
    fn malformed_keys_refused() {
        for bad in [
            "",
            "bahi",
            "bahi_live",
            "bahi_prod_0123456789012345678901234567",
            "bahi_live_short",
            "BAHI_live_0123456789012345678901234567",
            "bahi_live_01234567890123456789012345678-",
        ] {
            assert!(parse_api_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scopes_round_trip() {
        for scope in Scope::ORG_DEFAULT.into_iter().chain(Scope::OPERATOR) {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("admin"), None);
    }
}

/// A human member's role in an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Finance,
    Auditor,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Finance => "finance",
            Role::Auditor => "auditor",
            Role::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Owner, Role::Admin, Role::Finance, Role::Auditor, Role::Member]
            .into_iter()
            .find(|role| role.as_str() == text)
    }

    /// What a console session of this role may do, in the same scope vocabulary as keys, so
    /// that one check serves every credential.
    pub fn scopes(self) -> Vec<Scope> {
        match self {
            Role::Owner | Role::Admin => Scope::ORG_DEFAULT.to_vec(),
            Role::Finance => vec![Scope::AccountRead, Scope::StatementsRead],
            // An auditor sees the audit trail and the statements it reconciles with.
            Role::Auditor => vec![Scope::AccountRead, Scope::AuditRead, Scope::StatementsRead],
            Role::Member => vec![Scope::AccountRead, Scope::Inference, Scope::AgentsWrite],
        }
    }
}

/// Longest accepted email address (RFC 5321's path limit).
pub const MAX_EMAIL_LENGTH: usize = 254;

/// Trims and lower-cases an email address and checks its shape (one `@`, a dot in the
/// domain, no spaces). Deliverability is not this function's business.
pub fn normalize_email(text: &str) -> Option<String> {
    let email = text.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let valid = email.len() <= MAX_EMAIL_LENGTH
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    valid.then_some(email)
}

pub const MIN_PASSWORD_LENGTH: usize = 12;
pub const MAX_PASSWORD_LENGTH: usize = 256;

/// Passwords long enough to pass the length rule that lists of breached passwords still
/// rank near their top; compared ignoring case.
const COMMON_PASSWORDS: [&str; 16] = [
    "123456789012",
    "1234567890123",
    "12345678901234",
    "qwertyuiopasdf",
    "qwertyuiop123",
    "qwerty123456",
    "password1234",
    "password12345",
    "password123456",
    "passwordpassword",
    "iloveyou1234",
    "abcdefghijkl",
    "administrator",
    "letmein12345",
    "welcome12345",
    "changeme1234",
];

/// The console's password rule, after NIST SP 800-63B: length (12 to 256 characters, any
/// characters, spaces included) rather than composition rules, and not a well-known
/// password or one character repeated.
pub fn check_password(password: &str) -> Result<(), &'static str> {
    let length = password.chars().count();
    if !(MIN_PASSWORD_LENGTH..=MAX_PASSWORD_LENGTH).contains(&length) {
        return Err("password must be 12 to 256 characters; a passphrase of a few words is a good one");
    }
    let lowered = password.to_lowercase();
    let mut characters = lowered.chars();
    let first = characters.next();
    if characters.all(|character| Some(character) == first) || COMMON_PASSWORDS.contains(&lowered.as_str()) {
        return Err("password is too easy to guess: it is a well-known password; choose another");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod human_tests {
    use super::*;

    #[test]
    fn emails_normalize_and_refuse_bad_shapes() {
        assert_eq!(normalize_email("  Asha@Example.COM ").unwrap(), "asha@example.com");
        for bad in ["", "asha", "@example.com", "asha@", "asha@example", "a b@example.com", "a@b@c.com", "a@.com"] {
            assert!(normalize_email(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_judged_by_length_not_composition() {
        assert!(check_password("correct horse battery staple").is_ok(), "a passphrase without digits or capitals");
        assert!(check_password("Owner-Pass-1").is_ok());
        assert!(check_password("Sh0rt-Pass1").is_err(), "eleven characters");
        assert!(check_password(&"x".repeat(257)).is_err());
        assert!(check_password("Password1234").is_err(), "well known, whatever its case");
        assert!(check_password("aaaaaaaaaaaaaaaa").is_err(), "one character repeated");
    }

    #[test]
    fn roles_round_trip_and_finance_cannot_write_keys() {
        for role in ["owner", "admin", "finance", "auditor", "member"] {
            assert_eq!(Role::parse(role).unwrap().as_str(), role);
        }
        assert!(!Role::Finance.scopes().contains(&Scope::KeysWrite));
        assert!(Role::Auditor.scopes().contains(&Scope::AuditRead));
        assert!(Role::Auditor.scopes().contains(&Scope::StatementsRead), "an auditor reads statements");
        assert!(!Role::Auditor.scopes().contains(&Scope::KeysWrite));
        assert!(!Role::Finance.scopes().contains(&Scope::AuditRead));
    }
}
