//! What an event looks like when it is shown to a person (the audit log, exports, logs):
//! its stored payload with every secret replaced by [`REDACTED`]. The stored bytes are never
//! touched (they are what the chain hashes); redaction happens on the way out.
//!
//! The rule is by field name, recursively, so that a new event (or a user's metadata object)
//! carrying a hash, a sealed key or a password is covered without anyone remembering to list
//! it: a field whose name contains `hash`, `sealed`, `secret`, `private` or `password` is
//! redacted, and so are a JWK's private parameters.

use serde_json::Value;

/// The value that replaces a secret in a served event.
pub const REDACTED: &str = "[redacted]";

const SECRET_NAME_PARTS: &[&str] = &["hash", "sealed", "secret", "private", "password"];

/// RFC 7518's private key parameters (EC, RSA and symmetric keys).
const JWK_PRIVATE_PARAMETERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Whether a field of that name holds secret material and is never shown.
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
}

/// Replaces, in place, every secret in a payload with [`REDACTED`] (nulls stay null, so an
/// absent secret is not mistaken for a present one).
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let is_jwk = fields.contains_key("kty");
            for (name, field) in fields.iter_mut() {
                let secret = is_secret_field(name) || (is_jwk && JWK_PRIVATE_PARAMETERS.contains(&name.as_str()));
                if secret {
                    if !field.is_null() {
                        *field = Value::String(REDACTED.to_owned());
                    }
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A stored payload as it may be served: parsed, then redacted.
pub fn served_payload(payload: &[u8]) -> Result<Value, serde_json::Error> {
    let mut value: Value = serde_json::from_slice(payload)?;
    redact(&mut value);
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::billing::Price;
    use crate::claims::AgentMode;
    use crate::credential::{Environment, Role, Scope, SecretHash};
    use crate::event::*;
    use crate::ids::{AgentId, ApiKeyId, CallId, IssuerId, OrgId, TokenId, TopupId, UserId};
    use crate::money::Money;

    const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    const SEALED: &str = "c2VhbGVkLXByaXZhdGUta2V5LWJ5dGVz";

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 0).unwrap()
    }

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn secret_hash() -> SecretHash {
        SecretHash::of("a session or key secret")
    }

    /// One realistic event of every type, every optional field filled.
    fn one_of_each() -> Vec<Event> {
        let org_id = OrgId::from_random([1; 16]);
        let user_id = UserId::from_random([2; 16]);
        let key_id = ApiKeyId::from_random([3; 16]);
        let agent_id = AgentId::from_random([4; 16]);
        let token_id = TokenId::from_random([5; 16]);
        let issuer_id = IssuerId::from_random([6; 16]);
        let call_id = CallId::from_random([7; 16]);
        let rate_limit = Some(RateLimit { requests: 10, interval_seconds: 60 });
        let budget = Some(Budget { amount: money("5"), period: BudgetPeriod::Month });
        let attribution = CallAttribution {
            credential_kind: "api_key".into(),
            credential_id: key_id.to_string(),
            agent_id: Some(agent_id.to_string()),
            agent_name: Some("bot".into()),
            act_for: org_id.to_string(),
        };
        let price = Price { input_per_million: money("1"), output_per_million: money("2") };
        let public_jwk = json!({"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ", "kid": "k1", "d": "cHJpdmF0ZQ"});
        vec![
            OrgRegistered {
                org_id: org_id.clone(),
                display_name: "Asha".into(),
                plan: "free".into(),
                environment: Environment::Live,
                registered_at: at(),
            }
            .into(),
            ApiKeyCreated {
                key_id: key_id.clone(),
                org_id: org_id.clone(),
                name: Some("k".into()),
                key_hash: secret_hash(),
                display_prefix: "bahi_live_ab".into(),
                environment: Environment::Live,
                scopes: Scope::ORG_DEFAULT.to_vec(),
                created_at: at(),
                expires_at: Some(at()),
                rate_limit,
                budget,
                metadata: Some(json!({"team": "search", "nested": [{"db_password": "hunter2"}]})),
            }
            .into(),
            UserSignedUp {
                user_id: user_id.clone(),
                org_id: org_id.clone(),
                email: "owner@asha.example".into(),
                password_hash: PASSWORD_HASH.into(),
                role: Role::Owner,
                signed_up_at: at(),
            }
            .into(),
            MemberAdded {
                user_id: user_id.clone(),
                org_id: org_id.clone(),
                email: "auditor@asha.example".into(),
                password_hash: PASSWORD_HASH.into(),
                role: Role::Auditor,
                added_by: user_id.clone(),
                added_at: at(),
            }
            .into(),
            SessionStarted {
                user_id: user_id.clone(),
                org_id: org_id.clone(),
                session_hash: secret_hash(),
                started_at: at(),
                expires_at: at(),
            }
            .into(),
            SessionEnded {
                user_id: user_id.clone(),
                org_id: org_id.clone(),
                session_hash: secret_hash(),
                ended_at: at(),
            }
            .into(),
            UserSessionsEnded { user_id: user_id.clone(), org_id: org_id.clone(), ended_at: at() }.into(),
            ApiKeyRevoked { key_id: key_id.clone(), org_id: org_id.clone(), revoked_at: at(), deleted: true }.into(),
            ApiKeyUsed { key_id: key_id.clone(), org_id: org_id.clone(), last_used_at: at() }.into(),
            AgentCreated {
                agent_id: agent_id.clone(),
                org_id: org_id.clone(),
                name: "bot".into(),
                mode: AgentMode::Autonomous,
                act_for: org_id.to_string(),
                scopes: vec![Scope::Inference],
                budget,
                rate_limit,
                created_at: at(),
            }
            .into(),
            AgentRevoked { agent_id: agent_id.clone(), org_id: org_id.clone(), revoked_at: at() }.into(),
            AgentTokenMinted {
                token_id: token_id.clone(),
                agent_id: agent_id.clone(),
                org_id: org_id.clone(),
                key_id: "k1".into(),
                scopes: vec![Scope::Inference],
                issued_at: at(),
                expires_at: at(),
            }
            .into(),
            AgentTokenRevoked { token_id, agent_id: agent_id.clone(), org_id: org_id.clone(), revoked_at: at() }.into(),
            SigningKeyAdded {
                key_id: "k1".into(),
                public_jwk: public_jwk.clone(),
                sealed_private_key: SEALED.into(),
                added_at: at(),
            }
            .into(),
            SigningKeyRetired { key_id: "k1".into(), retired_at: at(), verify_until: at() }.into(),
            IssuerRegistered {
                issuer_id: issuer_id.clone(),
                org_id: org_id.clone(),
                issuer: "https://issuer.example".into(),
                jwks: Some(json!({"keys": [public_jwk]})),
                jwks_uri: Some("https://issuer.example/jwks.json".into()),
                audience: Some("bahi".into()),
                owner_claim: "org".into(),
                owners: BTreeMap::from([("asha".to_owned(), org_id.clone())]),
                registered_at: at(),
            }
            .into(),
            IssuerRevoked { issuer_id, org_id: org_id.clone(), revoked_at: at() }.into(),
            PriceSet { model: "gpt".into(), price, default_hold: None, set_at: at() }.into(),
            CreditsToppedUp {
                topup_id: TopupId::from_random([8; 16]),
                org_id: org_id.clone(),
                amount: money("1"),
                payment_reference: "pay_1".into(),
                user_id,
                balance_after: money("1"),
                topped_up_at: at(),
            }
            .into(),
            CreditsGranted {
                grant_id: TopupId::from_random([9; 16]),
                org_id: org_id.clone(),
                amount: money("1"),
                reason: "trial".into(),
                balance_after: money("2"),
                granted_at: at(),
            }
            .into(),
            CallAuthorized {
                call_id: call_id.clone(),
                org_id: org_id.clone(),
                attribution: attribution.clone(),
                model: "gpt".into(),
                price,
                hold: money("1"),
                authorized_at: at(),
                hold_expires_at: at(),
            }
            .into(),
            UsageRecorded {
                call_id: call_id.clone(),
                org_id: org_id.clone(),
                attribution,
                model: "gpt".into(),
                input_tokens: 1,
                output_tokens: 2,
                status: "succeeded".into(),
                cost: money("0.1"),
                hold_released: money("1"),
                balance_after: money("1.9"),
                request_hash: "ab".repeat(32),
                settled_at: at(),
                usage_source: Some(crate::billing::UsageSource::Estimated),
            }
            .into(),
            HoldExpired { call_id, org_id: org_id.clone(), released: money("1"), expired_at: at() }.into(),
            GatewayKeyCreated {
                key_id: key_id.clone(),
                name: Some("gateway".into()),
                key_hash: secret_hash(),
                display_prefix: "bahi_live_cd".into(),
                created_at: at(),
            }
            .into(),
            GatewayKeyRevoked { key_id: key_id.clone(), revoked_at: at() }.into(),
            ModelConfigured {
                model: "m".into(),
                provider: crate::billing::Provider::Anthropic,
                upstream_base_url: "https://api.anthropic.com".into(),
                sealed_upstream_api_key: SEALED.into(),
                upstream_model: None,
                price,
                default_hold: None,
                max_output_tokens: None,
                configured_at: at(),
            }
            .into(),
            ApiKeyBoundToAgent { key_id, agent_id, org_id, bound_at: at() }.into(),
        ]
    }

    /// Every field name in a served value that looks like a secret and still has a value.
    fn surviving_secrets(value: &Value, path: &str, found: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (name, field) in fields {
                    let path = format!("{path}.{name}");
                    if is_secret_field(name) && *field != Value::String(REDACTED.into()) && !field.is_null() {
                        found.push(path.clone());
                    }
                    surviving_secrets(field, &path, found);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    surviving_secrets(item, &format!("{path}[{index}]"), found);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn no_event_type_serves_secret_material() {
        let events = one_of_each();
        let covered: BTreeSet<&str> = events.iter().map(Event::event_type).collect();
        let every: BTreeSet<&str> = Event::TYPES.iter().copied().collect();
        assert_eq!(covered, every, "a new event type needs a sample here");
        let secrets = [PASSWORD_HASH.to_owned(), SEALED.to_owned(), secret_hash().to_hex(), "hunter2".into()];
        for event in &events {
            let stored = event.payload_bytes();
            let served = served_payload(&stored).unwrap();
            let mut found = Vec::new();
            surviving_secrets(&served, event.event_type(), &mut found);
            assert!(found.is_empty(), "secret fields served: {found:?}");
            let text = served.to_string();
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{}: secret material served: {text}", event.event_type());
            }
            assert!(!text.contains("cHJpdmF0ZQ"), "{}: a JWK's private parameter served", event.event_type());
            // The stored bytes are what the chain hashed: serving leaves them as they were.
            assert_eq!(event.payload_bytes(), stored);
        }
    }

    #[test]
    fn debug_output_of_every_event_type_carries_no_secret() {
        let secrets = [PASSWORD_HASH.to_owned(), SEALED.to_owned(), secret_hash().to_hex()];
        for event in one_of_each() {
            let text = format!("{event:?}");
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{}: Debug shows a secret: {text}", event.event_type());
            }
            // Debug prints a hash as its bytes, in decimal.
            let bytes = format!("{:?}", secret_hash().as_bytes());
            assert!(!text.contains(&bytes[1..bytes.len() - 1]), "{}: Debug shows a hash: {text}", event.event_type());
        }
    }

    #[test]
    fn redaction_keeps_public_fields_and_nulls() {
        let mut value = json!({"key_id": "key_1", "key_hash": "ab", "expires_at": null, "password_hash": null});
        redact(&mut value);
        assert_eq!(value, json!({"key_id": "key_1", "key_hash": REDACTED, "expires_at": null, "password_hash": null}));
    }
}
