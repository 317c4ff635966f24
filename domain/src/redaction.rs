//! What of an event may be shown to people. The log keeps every byte it hashed; secret
//! material (hashes of passwords, sessions and keys, sealed private keys) is replaced when
//! an event is served: audit pages, exports, logs.

use serde_json::Value;

/// Payload fields that hold secret material, wherever they appear in a payload.
pub const SECRET_FIELDS: &[&str] = &["password_hash", "session_hash", "key_hash", "sealed_private_key"];

/// Field names that look secret but are not: `request_hash` is the SHA-256 of a usage
/// report's body, which its sender holds, kept to tell a replay from a conflict.
pub const NOT_SECRET_FIELDS: &[&str] = &["request_hash"];

/// Words that mark a field as secret material. A field whose name holds one of them must be
/// in `SECRET_FIELDS` or `NOT_SECRET_FIELDS`: `looks_secret` lets a test find any new one.
const SECRET_WORDS: &[&str] = &["hash", "sealed", "secret", "private", "password", "upstream_api_key"];

/// What a served event shows in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// Replaces every secret field of `payload`, at any depth, with `REDACTED`.
pub fn redact(payload: &mut Value) {
    match payload {
        Value::Object(fields) => {
            for (name, value) in fields.iter_mut() {
                if is_secret(name) {
                    *value = Value::String(REDACTED.to_owned());
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A secret field: listed, or named like one and not known to be public. Unknown names that
/// look secret are redacted too, so a new field leaks nothing before it is classified.
fn is_secret(name: &str) -> bool {
    SECRET_FIELDS.contains(&name) || (looks_secret(name) && !NOT_SECRET_FIELDS.contains(&name))
}

/// Whether a field's name marks it as secret material.
pub fn looks_secret(name: &str) -> bool {
    let lowercase = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| lowercase.contains(word))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_replaced_at_any_depth_and_the_rest_is_kept() {
        let mut payload = json!({
            "user_id": "usr_1",
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "first_key": {"key_hash": "ab12", "name": "ci"},
            "keys": [{"sealed_private_key": "v1.xyz"}],
            "request_hash": "ef",
            "sealed_upstream_api_key": "v1.abc",
        });
        redact(&mut payload);
        assert_eq!(
            payload,
            json!({
                "user_id": "usr_1",
                "password_hash": REDACTED,
                "first_key": {"key_hash": REDACTED, "name": "ci"},
                "keys": [{"sealed_private_key": REDACTED}],
                "request_hash": "ef",
                "sealed_upstream_api_key": REDACTED,
            })
        );
    }

    #[test]
    fn every_listed_secret_looks_secret() {
        for name in SECRET_FIELDS.iter().chain(NOT_SECRET_FIELDS) {
            assert!(looks_secret(name), "{name}");
        }
    }
}
