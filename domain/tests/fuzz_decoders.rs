//! Fuzz harness for the pure decoders: event payloads (every event type, as loading decodes
//! them), money strings and objects, API keys, ids, hashes, times, claims and the small text
//! parsers. Inputs are arbitrary bytes and structured-but-hostile JSON (valid JSON with wrong
//! types, huge numbers, unicode, deep nesting, long strings, boundary amounts). Every decoder
//! must answer Ok or Err, never panic; what it accepts must round-trip.
//!
//! Cases per property: `BAHI_FUZZ_CASES` (default in `cases`), e.g.
//! `BAHI_FUZZ_CASES=20000 cargo test --release -p bahi-domain --test fuzz_decoders`.
#![allow(clippy::unwrap_used)]

use std::sync::LazyLock;

use bahi_domain::claims::AgentClaims;
use bahi_domain::credential::{
    Environment, KeyPrefix, NewApiKey, Role, Scope, SecretHash, check_password, normalize_email, parse_api_key,
};
use bahi_domain::event::Event;
use bahi_domain::ids::{AgentId, ApiKeyId, CallId, EventId, IssuerId, OrgId, TokenId, TopupId, UserId};
use bahi_domain::money::{MAX_ABS_AMOUNT_MICROS, Money, MoneyError};
use bahi_domain::timestamp::parse_utc;
use bahi_domain::{State, evolve};
use proptest::prelude::*;
use serde_json::Value;

/// `BAHI_FUZZ_CASES` when set, else `default`: CI runs the default, a longer campaign sets it.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("BAHI_FUZZ_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

const TIME: &str = "\"2026-11-23T04:37:22.246950Z\"";
const LATER: &str = "\"2026-11-24T04:37:22Z\"";
const HASH: &str = "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"";
const ORG: &str = "\"org_0358zaprdx37W8vExUbqvv\"";
const USER: &str = "\"usr_0358zaprdx37W8vExUbqvu\"";
const KEY: &str = "\"key_0358zaprhBZoRC0gPLUUQa\"";
const AGENT: &str = "\"agt_0358zaprhBZoRC0gPLUUQb\"";
const CALL: &str = "\"call_3uQ1NtqHd5a698737sFrM7\"";
const ATTRIBUTION: &str = r#"{"credential_kind":"api_key","credential_id":"key_0358zaprhBZoRC0gPLUUQa","agent_id":null,"agent_name":null,"act_for":"org_0358zaprdx37W8vExUbqvv"}"#;
const PRICE: &str = r#"{"input_per_million":{"currency":"inr","amount":"50.00"},"output_per_million":{"currency":"inr","amount":"150"}}"#;

fn money(amount: &str) -> String {
    format!(r#"{{"currency":"inr","amount":"{amount}"}}"#)
}

/// One valid stored payload per event type, in an order that folds (the org before its
/// keys, a call's authorization before its usage). A type without a sample here is still
/// fuzzed with arbitrary bytes and hostile JSON, just not by mutating a valid payload.
static SAMPLES: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    vec![
        (
            "OrgRegistered",
            format!(
                r#"{{"org_id":{ORG},"display_name":"Acme","plan":"free","environment":"live","registered_at":{TIME}}}"#
            ),
        ),
        (
            "ApiKeyCreated",
            format!(
                r#"{{"key_id":{KEY},"org_id":{ORG},"name":"worker","key_hash":{HASH},"display_prefix":"bahi_live_AbC123","environment":"live","scopes":["inference","keys:write"],"created_at":{TIME},"expires_at":null,"rate_limit":{{"requests":100,"interval_seconds":60}},"budget":{{"amount":{},"period":"month"}},"metadata":{{"team":"search"}}}}"#,
                money("500.00")
            ),
        ),
        (
            "UserSignedUp",
            format!(
                r#"{{"user_id":{USER},"org_id":{ORG},"email":"asha@example.com","password_hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA","role":"owner","signed_up_at":{TIME}}}"#
            ),
        ),
        (
            "MemberAdded",
            format!(
                r#"{{"user_id":"usr_Member1","org_id":{ORG},"email":"b@example.com","password_hash":"x","role":"finance","added_by":{USER},"added_at":{TIME}}}"#
            ),
        ),
        (
            "SessionStarted",
            format!(
                r#"{{"user_id":{USER},"org_id":{ORG},"session_hash":{HASH},"started_at":{TIME},"expires_at":{LATER}}}"#
            ),
        ),
        ("SessionEnded", format!(r#"{{"user_id":{USER},"org_id":{ORG},"session_hash":{HASH},"ended_at":{TIME}}}"#)),
        ("UserSessionsEnded", format!(r#"{{"user_id":{USER},"org_id":{ORG},"ended_at":{TIME}}}"#)),
        ("ApiKeyUsed", format!(r#"{{"key_id":{KEY},"org_id":{ORG},"last_used_at":{TIME}}}"#)),
        (
            "AgentCreated",
            format!(
                r#"{{"agent_id":{AGENT},"org_id":{ORG},"name":"bot","mode":"hybrid","act_for":{ORG},"scopes":["inference"],"budget":null,"rate_limit":null,"created_at":{TIME}}}"#
            ),
        ),
        (
            "AgentTokenMinted",
            format!(
                r#"{{"token_id":"tok_T1","agent_id":{AGENT},"org_id":{ORG},"key_id":"kid-1","scopes":["inference"],"issued_at":{TIME},"expires_at":{LATER}}}"#
            ),
        ),
        (
            "AgentTokenRevoked",
            format!(r#"{{"token_id":"tok_T1","agent_id":{AGENT},"org_id":{ORG},"revoked_at":{TIME}}}"#),
        ),
        (
            "SigningKeyAdded",
            format!(
                r#"{{"key_id":"kid-1","public_jwk":{{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"kid-1"}},"sealed_private_key":"AAAA","added_at":{TIME}}}"#
            ),
        ),
        ("SigningKeyRetired", format!(r#"{{"key_id":"kid-1","retired_at":{TIME},"verify_until":{LATER}}}"#)),
        (
            "IssuerRegistered",
            format!(
                r#"{{"issuer_id":"iss_I1","org_id":{ORG},"issuer":"https://idp.example","jwks":{{"keys":[]}},"jwks_uri":null,"audience":"bahi","owner_claim":"org","owners":{{"acme":{ORG}}},"registered_at":{TIME}}}"#
            ),
        ),
        ("IssuerRevoked", format!(r#"{{"issuer_id":"iss_I1","org_id":{ORG},"revoked_at":{TIME}}}"#)),
        ("PriceSet", format!(r#"{{"model":"krutrim-2","price":{PRICE},"set_at":{TIME}}}"#)),
        (
            "CreditsToppedUp",
            format!(
                r#"{{"topup_id":"top_P1","org_id":{ORG},"amount":{},"payment_reference":"pay_1","user_id":{USER},"balance_after":{},"topped_up_at":{TIME}}}"#,
                money("100"),
                money("100")
            ),
        ),
        (
            "CreditsGranted",
            format!(
                r#"{{"grant_id":"top_G1","org_id":{ORG},"amount":{},"reason":"trial","balance_after":{},"granted_at":{TIME}}}"#,
                money("0.000001"),
                money("100.000001")
            ),
        ),
        (
            "CallAuthorized",
            format!(
                r#"{{"call_id":{CALL},"org_id":{ORG},"attribution":{ATTRIBUTION},"model":"krutrim-2","price":{PRICE},"hold":{},"authorized_at":{TIME},"hold_expires_at":{LATER}}}"#,
                money("1.00")
            ),
        ),
        (
            "UsageRecorded",
            format!(
                r#"{{"call_id":{CALL},"org_id":{ORG},"attribution":{ATTRIBUTION},"model":"krutrim-2","input_tokens":1327,"output_tokens":477,"status":"succeeded","cost":{},"hold_released":{},"balance_after":{},"request_hash":"bbf8cc53a5e37d6af76d32029e1be958","settled_at":{TIME}}}"#,
                money("0.008088"),
                money("1.00"),
                money("99.991912")
            ),
        ),
        (
            "HoldExpired",
            format!(r#"{{"call_id":"call_Other1","org_id":{ORG},"released":{},"expired_at":{LATER}}}"#, money("1.00")),
        ),
        ("AgentRevoked", format!(r#"{{"agent_id":{AGENT},"org_id":{ORG},"revoked_at":{TIME}}}"#)),
        ("ApiKeyRevoked", format!(r#"{{"key_id":{KEY},"org_id":{ORG},"revoked_at":{TIME},"deleted":true}}"#)),
        (
            "GatewayKeyCreated",
            format!(
                r#"{{"key_id":"key_Gateway1","name":null,"key_hash":{HASH},"display_prefix":"bahi_live_GwKey1","created_at":{TIME}}}"#
            ),
        ),
        ("GatewayKeyRevoked", format!(r#"{{"key_id":"key_Gateway1","revoked_at":{TIME}}}"#)),
        (
            "ModelConfigured",
            format!(
                r#"{{"model":"gpt-4o","provider":"openai","upstream_base_url":"https://api.openai.com/v1","sealed_upstream_api_key":"AAAA","upstream_model":null,"price":{PRICE},"default_hold":null,"max_output_tokens":4096,"configured_at":{TIME}}}"#
            ),
        ),
        ("ApiKeyBoundToAgent", format!(r#"{{"key_id":{KEY},"agent_id":{AGENT},"org_id":{ORG},"bound_at":{TIME}}}"#)),
    ]
});

/// Each sample decoded and re-encoded: the exact bytes bahi's writer stores.
static STORED: LazyLock<Vec<(&'static str, Vec<u8>)>> = LazyLock::new(|| {
    SAMPLES
        .iter()
        .map(|(event_type, payload)| {
            let event = Event::decode(event_type, 1, payload.as_bytes())
                .unwrap_or_else(|error| panic!("sample {event_type} does not decode: {error}"));
            (*event_type, event.payload_bytes())
        })
        .collect()
});

/// The state after folding every sample: hostile events then meet existing orgs, keys, calls.
static FOLDED: LazyLock<State> = LazyLock::new(|| {
    let mut state = State::default();
    for (event_type, bytes) in STORED.iter() {
        evolve(&mut state, &Event::decode(event_type, 1, bytes).unwrap());
    }
    state
});

/// Amount strings at and around every boundary of `Money::parse`.
const BOUNDARY_AMOUNTS: &[&str] = &[
    "9999999999999.999999",
    "1000000000000",
    "1000000000000.000001",
    "-1000000000000",
    "-1000000000000.000001",
    "999999999999.999999",
    "10000000000000",
    "99999999999999999999",
    "18446744073709551616",
    "-0",
    "-0.0",
    "0",
    "0.000001",
    "0.0000001",
    "-0.000001",
    "1e3",
    "1E3",
    " 1",
    "1 ",
    ".5",
    "5.",
    "+1",
    "--1",
    "1.2.3",
    "1,000",
    "0x10",
    "NaN",
    "inf",
    "",
    "-",
    ".",
    "١٢",
    "１",
    "1\u{0}",
    "00000000000000000000000001",
    "0.000000000000000000000001",
];

/// Strings meant to break parsers: boundary amounts, near-valid ids, times at chrono's
/// edges, control characters, unicode, and long text.
fn hostile_string() -> BoxedStrategy<String> {
    let fixed: Vec<String> = BOUNDARY_AMOUNTS
        .iter()
        .map(|text| (*text).to_owned())
        .chain(
            [
                "org_",
                "org_0358zaprdx37W8vExUbqvv",
                "usr_0358zaprdx37W8vExUbqvu",
                "call_",
                "call_3uQ1NtqHd5a698737sFrM7",
                "call_a-b_c",
                "key_ü",
                "inr",
                "INR",
                "usd",
                "live",
                "test",
                "owner",
                "inference",
                "month",
                "autonomous",
                "2026-11-23T04:37:22Z",
                "9999-12-31T23:59:59.999999999Z",
                "0000-01-01T00:00:00Z",
                "+262143-12-31T23:59:59Z",
                "-262143-01-01T00:00:00Z",
                "+999999-01-01T00:00:00Z",
                "2016-12-31T23:59:60Z",
                "2026-02-30T00:00:00Z",
                "2026-11-23T04:37:22+23:59",
                "2026-11-23T04:37:22-23:59",
                "\u{feff}2026-11-23T04:37:22Z",
                "\u{202e}evil",
                "\u{ffff}\u{10ffff}",
                "e\u{301}",
                "\"",
                "\\",
                "\u{0}\u{1f}\u{7f}",
            ]
            .into_iter()
            .map(str::to_owned),
        )
        .collect();
    prop_oneof![
        4 => prop::sample::select(fixed),
        2 => any::<String>(),
        1 => "[0-9a-zA-Z_.:+-]{0,40}",
        1 => "call_[A-Za-z0-9_-]{60,1100}",
        1 => (prop::sample::select(vec!["a", "é", "\u{1F600}", "0", "\\"]), 1_000..70_000usize)
            .prop_map(|(unit, count)| unit.repeat(count)),
    ]
    .boxed()
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// A fragment of JSON text, usually valid, often of the wrong type or out of range.
fn hostile_fragment() -> BoxedStrategy<String> {
    let numbers = prop::sample::select(vec![
        "0",
        "-0",
        "1",
        "-1",
        "1.0",
        "1.5",
        "1e3",
        "1E400",
        "-1e-400",
        "0.1e-5",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "100000000000000000000000000000000000000000000000000000000000000000000000000",
        "01",
        "-",
        "NaN",
        "Infinity",
    ])
    .prop_map(str::to_owned);
    let deep = (1usize..400, prop::bool::ANY).prop_map(|(depth, objects)| {
        if objects {
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        } else {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
    });
    let money_objects = (hostile_string(), prop::sample::select(vec!["inr", "INR", "usd", ""]))
        .prop_map(|(amount, currency)| format!(r#"{{"currency":{},"amount":{}}}"#, quoted(currency), quoted(&amount)));
    prop_oneof![
        2 => prop::sample::select(vec!["null", "true", "false", "[]", "{}", "[null]", "{\"\":null}", "\"\"",
            r#"{"currency":"inr"}"#, r#"{"amount":"1"}"#, r#"{"currency":"inr","amount":"1","amount":"2"}"#,
            r#"{"currency":"inr","amount":1}"#, r#"{"currency":null,"amount":"1"}"#, r#"["inr","1"]"#,
            "\"\\ud800\"", "\"\\u0000\"", "[1,]", "{,}", ""]).prop_map(str::to_owned),
        2 => numbers,
        3 => hostile_string().prop_map(|text| quoted(&text)),
        2 => money_objects,
        1 => deep,
        1 => "[\\[\\]{}\":,0-9a-z ]{0,30}",
    ]
    .boxed()
}

/// How one node of a JSON document is changed.
#[derive(Debug, Clone)]
enum Edit {
    Replace(String),
    Remove,
    Duplicate,
    Wrap,
    AddField(String, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => hostile_fragment().prop_map(Edit::Replace),
        2 => Just(Edit::Remove),
        1 => Just(Edit::Duplicate),
        1 => Just(Edit::Wrap),
        1 => ("[a-z_]{1,12}", hostile_fragment()).prop_map(|(name, value)| Edit::AddField(name, value)),
    ]
}

/// Writes `value` as JSON text with node number `target` (pre-order) changed by `edit`.
fn render(value: &Value, target: usize, edit: &Edit, counter: &mut usize) -> Option<String> {
    let index = *counter;
    *counter += 1;
    if index == target {
        match edit {
            Edit::Replace(text) => return Some(text.clone()),
            Edit::Remove => return None,
            Edit::Wrap => return Some(format!("[{value}]")),
            Edit::Duplicate | Edit::AddField(..) => {}
        }
    }
    let hit = index == target;
    Some(match value {
        Value::Array(items) => {
            let mut parts = Vec::new();
            for item in items {
                let child = *counter;
                if let Some(text) = render(item, target, edit, counter) {
                    if child == target && matches!(edit, Edit::Duplicate) {
                        parts.push(text.clone());
                    }
                    parts.push(text);
                }
            }
            format!("[{}]", parts.join(","))
        }
        Value::Object(members) => {
            let mut parts = Vec::new();
            for (name, member) in members {
                let child = *counter;
                if let Some(text) = render(member, target, edit, counter) {
                    let part = format!("{}:{text}", quoted(name));
                    if child == target && matches!(edit, Edit::Duplicate) {
                        parts.push(part.clone());
                    }
                    parts.push(part);
                }
            }
            if hit && let Edit::AddField(name, text) = edit {
                parts.push(format!("{}:{text}", quoted(name)));
            }
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    })
}

fn node_count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(node_count).sum(),
        Value::Object(members) => members.values().map(node_count).sum(),
        _ => 0,
    }
}

/// The decoder's contract on any input: no panic; what it accepts re-encodes to bytes that
/// decode to the same event (the writer's round trip), and folds without panicking.
fn check_decode(event_type: &str, schema_version: i32, payload: &[u8]) -> Result<(), TestCaseError> {
    let Ok(event) = Event::decode(event_type, schema_version, payload) else { return Ok(()) };
    prop_assert_eq!(event.event_type(), event_type);
    let again = Event::decode(event_type, schema_version, &event.payload_bytes());
    prop_assert_eq!(again.as_ref().ok(), Some(&event), "{} does not round-trip: {:?}", event_type, again);
    let mut state = FOLDED.clone();
    evolve(&mut state, &event);
    Ok(())
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(Event::TYPES.to_vec()).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => prop::sample::select(Event::TYPES.to_vec()).prop_map(|name| name.to_lowercase()),
    ]
}

fn byte_edit() -> impl Strategy<Value = (prop::sample::Index, u8, u8)> {
    (
        any::<prop::sample::Index>(),
        0..4u8,
        prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\":,.-0123456789eE \\ntuflsa".to_vec())],
    )
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// Any bytes, any type name, any version.
    #[test]
    fn event_decoding_survives_arbitrary_bytes(
        name in event_type(),
        schema_version in prop_oneof![8 => Just(1i32), 1 => any::<i32>()],
        payload in prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), hostile_fragment().prop_map(String::into_bytes)],
    ) {
        check_decode(&name, schema_version, &payload)?;
        if !Event::TYPES.contains(&name.as_str()) || schema_version != 1 {
            prop_assert!(Event::decode(&name, schema_version, &payload).is_err());
        }
    }

    /// A valid stored payload of every type with one node replaced by a hostile value,
    /// removed, duplicated, wrapped, or given an unknown sibling.
    #[test]
    fn event_decoding_survives_hostile_json(sample in 0..64usize, target in any::<prop::sample::Index>(), edit in edit()) {
        let (event_type, stored) = &STORED[sample % STORED.len()];
        let value: Value = serde_json::from_slice(stored).unwrap();
        let target = target.index(node_count(&value));
        let payload = render(&value, target, &edit, &mut 0).unwrap_or_default();
        check_decode(event_type, 1, payload.as_bytes())?;
    }

    /// The exact stored bytes of every type with a few bytes inserted, removed, replaced or
    /// appended (this also drives the direct reader of the call events).
    #[test]
    fn event_decoding_survives_byte_edits(sample in 0..64usize, edits in proptest::collection::vec(byte_edit(), 1..6)) {
        let (event_type, stored) = &STORED[sample % STORED.len()];
        let mut bytes = stored.clone();
        for (at, kind, byte) in edits {
            let index = at.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(index, byte),
                1 if index < bytes.len() => { bytes.remove(index); }
                2 if index < bytes.len() => bytes[index] = byte,
                _ => bytes.truncate(index),
            }
        }
        check_decode(event_type, 1, &bytes)?;
    }

    /// Money from any text: Ok only within bounds, and then exactly what `Display` writes
    /// reads back to the same amount.
    #[test]
    fn money_parse_survives_any_text(text in prop_oneof![hostile_string(), "-?[0-9]{0,20}(\\.[0-9]{0,9})?", "[-+.eE0-9 ]{0,24}"]) {
        if let Ok(amount) = Money::parse(&text) {
            prop_assert!(amount.micros().abs() <= MAX_ABS_AMOUNT_MICROS);
            prop_assert_eq!(Money::parse(&amount.to_string()), Ok(amount));
            if let Ok(positive) = Money::parse_positive(&text) {
                prop_assert!(positive.is_positive());
            }
        }
    }

    /// Money's serde from hostile JSON: never panics, and a bare string or an inr object
    /// reads exactly what `Money::parse` reads.
    #[test]
    fn money_deserialize_survives_hostile_json(fragment in hostile_fragment(), amount in hostile_string()) {
        let _ = serde_json::from_str::<Money>(&fragment);
        let bare = serde_json::from_str::<Money>(&quoted(&amount)).ok();
        prop_assert_eq!(bare, Money::parse(&amount).ok());
        let object = serde_json::from_str::<Money>(&format!(r#"{{"amount":{},"currency":"inr"}}"#, quoted(&amount))).ok();
        prop_assert_eq!(object, Money::parse(&amount).ok());
    }

    /// Every valid amount: parse(display(m)) == m, and serde round-trips it.
    #[test]
    fn money_round_trips_every_valid_amount(micros in prop_oneof![
        -MAX_ABS_AMOUNT_MICROS..=MAX_ABS_AMOUNT_MICROS,
        -1_000_000i64..1_000_000,
        prop::sample::select(vec![-MAX_ABS_AMOUNT_MICROS, MAX_ABS_AMOUNT_MICROS, 0, 1, -1, 10, 100_000, 999_999]),
    ]) {
        let amount = Money::from_micros(micros).unwrap();
        prop_assert_eq!(Money::parse(&amount.to_string()), Ok(amount));
        let json = serde_json::to_string(&amount).unwrap();
        prop_assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), amount);
    }

    /// API key text of any shape: parsing never panics; what it accepts has the key's shape.
    #[test]
    fn api_key_parsing_survives_any_text(text in prop_oneof![
        hostile_string(),
        "[a-z0-9-]{0,18}_(live|test|prod|)_[A-Za-z0-9_]{0,70}",
        "[a-z_]{0,5}_{0,3}[A-Za-z0-9]{20,30}",
    ]) {
        if let Ok(parsed) = parse_api_key(&text) {
            prop_assert!(KeyPrefix::parse(parsed.prefix).is_ok());
            let random = text.rsplit('_').next().unwrap();
            prop_assert!((27..=64).contains(&random.len()) && random.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        let _ = SecretHash::from_hex(&text);
        let _ = normalize_email(&text);
        let _ = check_password(&text);
        let _ = (Scope::parse(&text), Role::parse(&text), Environment::parse(&text), KeyPrefix::parse(&text));
        let _ = text.parse::<bahi_domain::claims::AgentMode>();
        if let Some(time) = parse_utc(&text) {
            prop_assert_eq!(Some(time), text.parse::<chrono::DateTime<chrono::FixedOffset>>().ok().map(|time| time.to_utc()));
        }
    }

    /// Generated keys parse to their prefix and environment; a key with bytes changed never
    /// panics the parser.
    #[test]
    fn generated_api_keys_parse_and_mutants_do_not_panic(
        prefix in "[a-z0-9-]{1,16}",
        live in any::<bool>(),
        random in any::<[u8; 32]>(),
        edits in proptest::collection::vec(byte_edit(), 0..3),
    ) {
        let environment = if live { Environment::Live } else { Environment::Test };
        let key = NewApiKey::generate(&KeyPrefix::parse(&prefix).unwrap(), environment, random);
        let parsed = parse_api_key(&key.secret).unwrap();
        prop_assert_eq!((parsed.prefix, parsed.environment), (prefix.as_str(), environment));
        prop_assert!(key.secret.starts_with(&key.display_prefix));
        let mut bytes = key.secret.into_bytes();
        for (at, kind, byte) in edits {
            let index = at.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(index, byte),
                1 if index < bytes.len() => { bytes.remove(index); }
                2 if index < bytes.len() => bytes[index] = byte,
                _ => bytes.truncate(index),
            }
        }
        let _ = parse_api_key(&String::from_utf8_lossy(&bytes));
    }

    /// Every id kind, from text and through serde: no panic, and what is accepted carries
    /// the prefix and a bounded body.
    #[test]
    fn id_parsing_survives_any_text(
        body in prop_oneof![hostile_string(), "[A-Za-z0-9]{0,70}", "[A-Za-z0-9_-]{60,1100}"],
        prefix in prop::sample::select(vec!["", "org_", "usr_", "key_", "agt_", "tok_", "iss_", "call_", "top_", "evt_", "ORG_"]),
        fragment in hostile_fragment(),
    ) {
        let text = format!("{prefix}{body}");
        macro_rules! each_id {
            ($($id:ty),*) => {$(
                if let Ok(id) = <$id>::parse(&text) {
                    prop_assert!(id.as_str().starts_with(<$id>::PREFIX));
                    prop_assert!(id.as_str().len() <= <$id>::PREFIX.len() + 1_024);
                    prop_assert_eq!(serde_json::from_str::<$id>(&quoted(&text)).ok(), Some(id));
                } else {
                    prop_assert!(serde_json::from_str::<$id>(&quoted(&text)).is_err());
                }
                let _ = serde_json::from_str::<$id>(&fragment);
            )*};
        }
        each_id!(OrgId, UserId, ApiKeyId, AgentId, TokenId, IssuerId, CallId, TopupId, EventId);
    }

    /// Agent claims from hostile JSON: serde and the shape check never panic.
    #[test]
    fn agent_claims_survive_hostile_json(target in any::<prop::sample::Index>(), edit in edit()) {
        let claims = serde_json::json!({
            "iss": "https://bahi.test", "aud": "bahi", "sub": "agt_7", "org": "org_3", "act_for": "usr_5",
            "mode": "delegated", "scope": "inference", "iat": 1, "nbf": 1, "exp": 2, "jti": "tok_1"
        });
        let text = render(&claims, target.index(node_count(&claims)), &edit, &mut 0).unwrap_or_default();
        if let Ok(claims) = serde_json::from_str::<AgentClaims>(&text) {
            let _ = claims.check_shape();
            let _ = claims.scopes().count();
        }
    }
}

/// The boundary amounts of the brief, with their exact answers.
#[test]
fn money_boundaries_answer_exactly() {
    let max = Money::from_micros(MAX_ABS_AMOUNT_MICROS).unwrap();
    assert!(Money::parse("9999999999999.999999").is_err());
    assert_eq!(Money::parse(&max.to_string()), Ok(max));
    assert_eq!(Money::parse("-0"), Ok(Money::ZERO));
    assert_eq!(Money::parse("-0.000001").map(Money::micros), Ok(-1));
    assert_eq!(Money::parse("0.0000001"), Err(MoneyError::TooManyPlaces));
    for text in ["1e3", " 1", "1 ", ".5", "5.", "+1", "", "-", "１", "١٢", "1,000", "NaN"] {
        assert_eq!(Money::parse(text), Err(MoneyError::NotADecimal), "{text:?}");
    }
    assert!(Money::parse_positive("-0").is_err());
    // A JSON number is refused even when it is a whole one.
    assert!(serde_json::from_str::<Money>("1").is_err());
    assert!(serde_json::from_str::<Money>(r#"{"currency":"usd","amount":"1"}"#).is_err());
}

/// Every event type named by `Event::TYPES` has a sample here, and each sample decodes and
/// folds: the hostile-JSON property mutates a valid payload of every type.
#[test]
fn every_event_type_has_a_valid_sample() {
    let sampled: Vec<&str> = STORED.iter().map(|(event_type, _)| *event_type).collect();
    let missing: Vec<&&str> = Event::TYPES.iter().filter(|name| !sampled.contains(name)).collect();
    assert!(missing.is_empty(), "add a valid sample payload to SAMPLES for {missing:?}");
    assert_eq!(FOLDED.orgs.len(), 1);
    assert_eq!(FOLDED.calls_folded, 1);
}
/// Times at and past the edges of chrono's calendar, and forms chrono reads leniently.
const EDGE_TIMES: &[&str] = &[
    "+262142-12-31T23:59:59.999999999Z",
    "-262143-01-01T00:00:00Z",
    "+262143-01-01T00:00:00Z",
    "+12345-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "0000-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "2016-12-31T23:59:60Z",
    "2026-11-23T04:37:22+23:59",
    "2026-11-23T04:37:22-23:59",
    "2026-02-30T00:00:00Z",
];

/// Every node of every sample replaced by each of a fixed set of hostile values: wrong
/// types, numbers past every integer width, edge times, boundary amounts, deep nesting. An
/// exhaustive sweep, because random choice rarely lands a given value in a given field.
#[test]
fn every_field_of_every_event_takes_every_hostile_value() {
    let mut fragments: Vec<String> = [
        "null",
        "true",
        "[]",
        "{}",
        "\"\"",
        "0",
        "-1",
        "1.5",
        "1e3",
        "1E400",
        "18446744073709551616",
        "-9223372036854775809",
        r#"{"currency":"usd","amount":"1"}"#,
        r#"{"currency":"inr","amount":1}"#,
    ]
    .iter()
    .map(|text| (*text).to_owned())
    .collect();
    fragments.extend(EDGE_TIMES.iter().map(|time| quoted(time)));
    fragments.extend(BOUNDARY_AMOUNTS.iter().map(|amount| quoted(amount)));
    fragments.extend(BOUNDARY_AMOUNTS.iter().map(|amount| money(amount)));
    fragments.push(format!("{}1{}", "[".repeat(200), "]".repeat(200)));
    fragments.push(quoted(&"\u{1F600}".repeat(70_000)));
    let mut decoded = 0;
    for (event_type, stored) in STORED.iter() {
        let value: Value = serde_json::from_slice(stored).unwrap();
        for target in 0..node_count(&value) {
            for fragment in &fragments {
                let payload = render(&value, target, &Edit::Replace(fragment.clone()), &mut 0).unwrap();
                check_decode(event_type, 1, payload.as_bytes()).unwrap();
                decoded += usize::from(Event::decode(event_type, 1, payload.as_bytes()).is_ok());
            }
        }
    }
    // Some hostile values are valid ones (a string field takes any string): the sweep
    // reached the fold, not only the decoder's refusals.
    assert!(decoded > 100, "{decoded}");
}

/// Events are a stored, hash-chained API: the bytes bahi writes for each event type are
/// pinned here, so a refactor that changes one byte of any payload fails before it ships.
/// Regenerate only for a deliberate, versioned format change: `BAHI_BLESS_GOLDEN=1`.
#[test]
fn every_event_type_serializes_to_its_golden_bytes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden_events.txt");
    let mut written = String::new();
    for (event_type, bytes) in STORED.iter() {
        let payload = std::str::from_utf8(bytes).expect("payloads are UTF-8");
        written.push_str(&format!("{event_type}\t{payload}\n"));
    }
    if std::env::var_os("BAHI_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, &written).expect("the golden file is writable");
    }
    let golden = std::fs::read_to_string(&path).expect("tests/golden_events.txt exists");
    for (written_line, golden_line) in written.lines().zip(golden.lines()) {
        assert_eq!(written_line, golden_line, "an event's stored bytes changed");
    }
    assert_eq!(written.lines().count(), golden.lines().count(), "an event type was added or removed");
    assert_eq!(written.lines().count(), Event::TYPES.len());
}
