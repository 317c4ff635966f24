//! Fuzz harness for what the server decodes from the outside: agent tokens (arbitrary text,
//! mutated valid tokens, correctly signed tokens with hostile headers and claims) and the
//! request bodies and query strings of every POST/PUT/GET route, posted to the real server.
//! No input may panic the verifier; no request may get a 5xx, and every 4xx has the
//! contract's JSON error shape with the request's id.
//!
//! Cases: `BAHI_FUZZ_CASES` sets both the cases of each token property and the bodies sent
//! to each route (defaults in `cases`); e.g. `BAHI_FUZZ_CASES=2000 cargo test --test fuzz_api`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use bahi::agent_token::{AgentClaims, AgentMode, IssuerKind, JwkSet, SigningKey, TrustedIssuer, Verifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestDatabase, TestServer, client, register};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

fn case_count(default: u32) -> u32 {
    std::env::var("BAHI_FUZZ_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

fn cases(default: u32) -> ProptestConfig {
    ProptestConfig { cases: case_count(default), ..ProptestConfig::default() }
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Strings meant to break parsers: boundary amounts, near-valid ids and times, control
/// characters, unicode, long text.
fn hostile_string() -> BoxedStrategy<String> {
    let fixed: Vec<String> = [
        "9999999999999.999999",
        "1000000000000",
        "1000000000000.000001",
        "-0",
        "0",
        "0.000001",
        "0.0000001",
        "-1",
        "1e3",
        " 1",
        ".5",
        "5.",
        "+1",
        "",
        "NaN",
        "１",
        "org_",
        "org_0358zaprdx37W8vExUbqvv",
        "call_",
        "call_a-b_c",
        "key_ü",
        "usr_x",
        "agt_x",
        "tok_x",
        "inr",
        "usd",
        "live",
        "test",
        "owner",
        "finance",
        "inference",
        "usage:write",
        "month",
        "total",
        "autonomous",
        "delegated",
        "succeeded",
        "failed",
        "2026-11-23T04:37:22Z",
        "+262142-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "2026-02-30",
        "2026-12-05",
        "a@b.co",
        "Passw0rdPassw0rd",
        "\u{202e}evil",
        "\u{ffff}",
        "\"",
        "\\",
        "\u{0}\u{1f}",
        "ES256",
        "none",
        "http://127.0.0.1:1/jwks.json",
    ]
    .iter()
    .map(|text| (*text).to_owned())
    .collect();
    prop_oneof![
        4 => prop::sample::select(fixed),
        2 => any::<String>(),
        1 => "[0-9a-zA-Z_.:+@-]{0,40}",
        1 => (prop::sample::select(vec!["a", "é", "\u{1F600}", "0"]), 1_000..40_000usize)
            .prop_map(|(unit, count)| unit.repeat(count)),
    ]
    .boxed()
}

/// A fragment of JSON text, usually valid, often of the wrong type or out of range.
fn hostile_fragment() -> BoxedStrategy<String> {
    let fixed = prop::sample::select(vec![
        "null",
        "true",
        "false",
        "[]",
        "{}",
        "[null]",
        "\"\"",
        "0",
        "-0",
        "-1",
        "1.5",
        "1e3",
        "1E400",
        "4294967296",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        r#"{"currency":"inr","amount":"1"}"#,
        r#"{"currency":"usd","amount":"1"}"#,
        r#"{"currency":"inr","amount":1}"#,
        r#"{"requests":0,"interval_seconds":0}"#,
        r#"{"requests":4294967295,"interval_seconds":1}"#,
        r#"{"amount":"1","period":"century"}"#,
        r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":"k"}]}"#,
        "\"\\ud800\"",
        "[1,]",
        "",
    ])
    .prop_map(str::to_owned);
    let deep = (1usize..300, any::<bool>()).prop_map(|(depth, objects)| {
        if objects {
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        } else {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
    });
    prop_oneof![
        3 => fixed,
        3 => hostile_string().prop_map(|text| quoted(&text)),
        1 => proptest::collection::vec(hostile_string(), 0..4)
            .prop_map(|items| format!("[{}]", items.iter().map(|item| quoted(item)).collect::<Vec<_>>().join(","))),
        1 => deep,
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(String),
    Remove,
    Duplicate,
    AddField(String, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => hostile_fragment().prop_map(Edit::Replace),
        2 => Just(Edit::Remove),
        1 => Just(Edit::Duplicate),
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
            Edit::Duplicate | Edit::AddField(..) => {}
        }
    }
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
            if index == target
                && let Edit::AddField(name, text) = edit
            {
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

/// A body for a route whose valid body is `sample`: the sample with one node changed,
/// hostile JSON, or arbitrary bytes.
fn hostile_body(sample: Value) -> BoxedStrategy<Vec<u8>> {
    let edited =
        (any::<prop::sample::Index>(), proptest::collection::vec(edit(), 1..3)).prop_map(move |(target, edits)| {
            let mut value = sample.clone();
            for edit in edits {
                let text = render(&value, target.index(node_count(&value)), &edit, &mut 0).unwrap_or_default();
                match serde_json::from_str(&text) {
                    Ok(parsed) => value = parsed,
                    Err(_) => return text.into_bytes(),
                }
            }
            value.to_string().into_bytes()
        });
    prop_oneof![
        6 => edited,
        2 => hostile_fragment().prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ]
    .boxed()
}

fn draw<T: std::fmt::Debug>(runner: &mut TestRunner, strategy: &impl Strategy<Value = T>) -> T {
    strategy.new_tree(runner).unwrap().current()
}

// ---- agent tokens ----

const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "https://bahi.test";
const EXTERNAL_ISSUER: &str = "https://idp.example";

fn claims() -> AgentClaims {
    AgentClaims {
        iss: ISSUER.into(),
        aud: "bahi".into(),
        sub: "agt_7".into(),
        org: "org_3".into(),
        act_for: "usr_5".into(),
        mode: AgentMode::Delegated,
        scope: "inference audit:read".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 600,
        jti: "tok_42".into(),
    }
}

struct Keys {
    embedded: SigningKey,
    external: SigningKey,
    verifier: Verifier,
}

fn keys() -> Keys {
    let embedded = SigningKey::from_random_bytes([1; 32]).unwrap();
    let external = SigningKey::from_random_bytes([2; 32]).unwrap();
    let verifier = Verifier::new();
    verifier
        .upsert_issuer(TrustedIssuer {
            registration_id: "embedded".into(),
            issuer: ISSUER.into(),
            audience: Some("bahi".into()),
            kind: IssuerKind::Embedded,
            keys: JwkSet { keys: vec![embedded.public_jwk()] },
        })
        .unwrap();
    verifier
        .upsert_issuer(TrustedIssuer {
            registration_id: "iss_external".into(),
            issuer: EXTERNAL_ISSUER.into(),
            audience: None,
            kind: IssuerKind::External {
                owner_claim: "org".into(),
                owners: [("acme".to_owned(), "org_3".to_owned())].into_iter().collect(),
            },
            keys: JwkSet { keys: vec![external.public_jwk()] },
        })
        .unwrap();
    Keys { embedded, external, verifier }
}

/// A compact JWS of any header and claims text, correctly signed by `key`.
fn signed(key: &SigningKey, header: &[u8], claims: &[u8]) -> String {
    let signed_part = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.private_pkcs8_der()).unwrap();
    let signature = pair.sign(&SystemRandom::new(), signed_part.as_bytes()).unwrap();
    format!("{signed_part}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// What the verifier accepts is a well-formed token that is valid now.
fn check_verdict(keys: &Keys, token: &str) -> Result<(), TestCaseError> {
    if let Ok(verified) = keys.verifier.verify(token, NOW) {
        prop_assert!(verified.expires_at_epoch_seconds >= NOW - 60, "{verified:?}");
        prop_assert!(!verified.org_id.is_empty() && !verified.agent_id.is_empty(), "{verified:?}");
        if !verified.external_issuer {
            prop_assert!(verified.agent_id.starts_with("agt_") && verified.org_id.starts_with("org_"));
        }
        // A second look answers from the cache, alike.
        prop_assert_eq!(keys.verifier.verify(token, NOW).ok(), Some(verified));
    }
    Ok(())
}

fn byte_edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
    proptest::collection::vec(
        (any::<prop::sample::Index>(), 0..4u8, prop_oneof![any::<u8>(), prop::sample::select(b".-_=A0a/+ ".to_vec())]),
        1..5,
    )
}

proptest! {
    #![proptest_config(cases(1_000))]

    /// Any text, and three base64url segments of any bytes.
    #[test]
    fn tokens_of_arbitrary_text_are_refused(
        text in prop_oneof![hostile_string(), "[A-Za-z0-9_.-]{0,600}"],
        header in proptest::collection::vec(any::<u8>(), 0..80),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let keys = keys();
        prop_assert!(keys.verifier.verify(&text, NOW).is_err() || text.matches('.').count() == 2);
        check_verdict(&keys, &text)?;
        let segments = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&payload), "A".repeat(86));
        prop_assert!(keys.verifier.verify(&segments, NOW).is_err());
    }

    /// A valid token with bytes inserted, removed, replaced or cut: refused or, when the
    /// change left it intact, accepted as the same token.
    #[test]
    fn mutated_valid_tokens_never_panic(edits in byte_edits()) {
        let keys = keys();
        let token = keys.embedded.sign(&claims()).unwrap();
        let mut bytes = token.into_bytes();
        for (at, kind, byte) in edits {
            let index = at.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(index, byte),
                1 if index < bytes.len() => { bytes.remove(index); }
                2 if index < bytes.len() => bytes[index] = byte,
                _ => bytes.truncate(index),
            }
        }
        check_verdict(&keys, &String::from_utf8_lossy(&bytes))?;
    }

    /// Correctly signed tokens, embedded or external, whose header or claims have one node
    /// changed to a hostile value: the signature holds, so every claim rule is exercised.
    #[test]
    fn signed_tokens_with_hostile_headers_and_claims_never_panic(
        external in any::<bool>(),
        in_header in prop::bool::weighted(0.3),
        target in any::<prop::sample::Index>(),
        edit in edit(),
    ) {
        let keys = keys();
        let key = if external { &keys.external } else { &keys.embedded };
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()});
        let mut claims = serde_json::to_value(claims()).unwrap();
        if external {
            claims["iss"] = json!(EXTERNAL_ISSUER);
            claims["org"] = json!("acme");
            claims["act"] = json!({"sub": "agent-9"});
        }
        let (header, claims) = if in_header {
            (render(&header, target.index(node_count(&header)), &edit, &mut 0).unwrap_or_default(), claims.to_string())
        } else {
            (header.to_string(), render(&claims, target.index(node_count(&claims)), &edit, &mut 0).unwrap_or_default())
        };
        check_verdict(&keys, &signed(key, header.as_bytes(), claims.as_bytes()))?;
    }
}

// ---- request bodies and query strings of every route, against the real server ----

const OPERATOR_KEY: &str = "operator-secret-for-fuzzing-0123456789abcdef";

/// Every `(METHOD, path)` the routers declare, read from the sources so that a new route
/// is fuzzed without being listed here.
fn declared_routes() -> BTreeSet<(String, String)> {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for declaration in source.split(".route(\"").skip(1) {
            let (path, rest) = declaration.split_once('"').unwrap();
            let handlers = &rest[..rest.find(")\n").unwrap_or(rest.len()).min(rest.len())];
            for method in ["get", "post", "put", "delete"] {
                if handlers.contains(&format!("{method}(")) {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
    }
    routes
}

struct Fixture {
    cookie: String,
    key: String,
    agent_id: String,
    call_id: String,
    gateway_key: String,
}

impl Fixture {
    /// The path with its parameters filled: existing resources where the route only reads
    /// or mints, well-formed unknown ids where it would revoke something the fuzzing needs.
    fn path(&self, path: &str) -> String {
        let destructive = path.ends_with("/revoke");
        let agent = if destructive { "agt_0000000000000000000000" } else { self.agent_id.as_str() };
        path.replace("/me/agents/{id}", &format!("/me/agents/{agent}"))
            .replace("/api-keys/{id}", "/api-keys/key_0000000000000000000000")
            .replace("/gateway-keys/{id}", "/gateway-keys/key_0000000000000000000000")
            .replace("/issuers/{id}", "/issuers/iss_0000000000000000000000")
            .replace("{jti}", "tok_0000000000000000000000")
            .replace("{model}", "fuzz-model")
            .replace("{call_id}", &self.call_id)
    }

    /// The credential a route is meant for, as (header, value); none for the open routes
    /// and for logging out, which must not end the session the fuzzing uses.
    fn credential(&self, path: &str) -> Option<(&'static str, String)> {
        if ["/me/signup", "/me/login", "/v1/auth/agent-register", "/me/logout", "/me/logout-all"].contains(&path) {
            None
        } else if path.starts_with("/v1/admin") || path == "/v1/usage" {
            Some(("authorization", format!("Bearer {OPERATOR_KEY}")))
        } else if path.starts_with("/me/") || path.starts_with("/v1/auth/account/members") {
            Some(("cookie", self.cookie.clone()))
        } else {
            Some(("authorization", format!("Bearer {}", self.key)))
        }
    }

    /// A valid body for the route, which the fuzzing then changes.
    fn sample(&self, path: &str) -> Value {
        match path {
            "/v1/auth/agent-register" => json!({"org_name": "Fuzz", "agent_name": "fuzzer"}),
            "/v1/auth/account/api-keys" => {
                json!({"name": "k", "scopes": ["inference"], "expires_at": "2099-01-01T00:00:00Z",
                "rate_limit": {"requests": 100, "interval_seconds": 60}, "budget": {"amount": "5.00", "period": "day"},
                "metadata": {"team": "search"}})
            }
            "/me/signup" => json!({"email": "fuzz@example.com", "password": "Fuzz-Passw0rd", "org_name": "Fuzz"}),
            "/me/login" => json!({"email": "owner@example.com", "password": "Owner-Passw0rd"}),
            "/v1/auth/account/members" => {
                json!({"email": "member@example.com", "role": "finance", "password": "Member-Passw0rd"})
            }
            "/me/agents" => json!({"name": "a", "mode": "autonomous", "scopes": ["inference"],
                "budget": {"amount": "1", "period": "total"}, "rate_limit": {"requests": 1, "interval_seconds": 1}}),
            "/me/agents/{id}/token" => json!({"ttl_seconds": 600, "scopes": ["inference"]}),
            "/me/issuers" => json!({"issuer": "https://idp.example", "jwks": {"keys": []}, "audience": "bahi",
                "owner_claim": "org", "owners": {"acme": "org_0000000000000000000000"}}),
            "/v1/authorize" => json!({"model": "fuzz-model", "max_cost": "0.01"}),
            "/v1/usage" => json!({"call_id": self.call_id, "model": "fuzz-model", "input_tokens": 10,
                "output_tokens": 20, "status": "succeeded"}),
            "/v1/admin/prices/{model}" => json!({"input_per_million": {"currency": "inr", "amount": "1"},
                "output_per_million": "2"}),
            "/me/credits/topups" => json!({"amount": "1.00", "payment_reference": "pay_fuzz"}),
            "/v1/admin/credits/grants" => {
                json!({"org_id": "org_0000000000000000000000", "amount": "1", "reason": "fuzz"})
            }
            "/v1/admin/gateway-keys" => json!({"name": "gw"}),
            _ => json!({}),
        }
    }
}

/// The contract for any answer to a hostile request: below 500, and a 4xx is the JSON
/// error shape carrying the request's id.
async fn check_answer(response: reqwest::Response, what: &str) {
    let status = response.status().as_u16();
    assert!(status < 500, "{what}: {status} {:?}", response.text().await);
    let request_id = response.headers().get("x-request-id").map(|value| value.to_str().unwrap().to_owned());
    assert!(request_id.is_some(), "{what}: no x-request-id");
    if status >= 400 {
        let text = response.text().await.unwrap();
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {status} body is not JSON: {text:?}"));
        let error = &body["error"];
        assert!(error["type"].is_string() && error["message"].is_string(), "{what}: {status} {body}");
        assert_eq!(error["request_id"].as_str(), request_id.as_deref(), "{what}: {status} {body}");
    }
}

async fn setup(client: &reqwest::Client, server: &TestServer) -> Fixture {
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": "owner@example.com", "password": "Owner-Passw0rd", "org_name": "Fuzz owner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let org_id = signup.json::<Value>().await.unwrap()["org_id"].as_str().unwrap().to_owned();
    let created: Value = client
        .post(server.url("/v1/auth/account/api-keys"))
        .header("cookie", &cookie)
        .json(&json!({"name": "fuzz"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let operator = |request: reqwest::RequestBuilder| request.bearer_auth(OPERATOR_KEY);
    let price = operator(client.put(server.url("/v1/admin/prices/fuzz-model")))
        .json(&json!({"input_per_million": "1", "output_per_million": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(price.status(), 200);
    let granted = operator(client.post(server.url("/v1/admin/credits/grants")))
        .json(&json!({"org_id": org_id, "amount": "1000000", "reason": "fuzz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 201);
    let agent: Value = client
        .post(server.url("/me/agents"))
        .bearer_auth(&key)
        .json(&json!({"name": "fuzz agent"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let authorized: Value = client
        .post(server.url("/v1/authorize"))
        .bearer_auth(&key)
        .json(&json!({"model": "fuzz-model", "max_cost": "1.00"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gateway: Value = operator(client.post(server.url("/v1/admin/gateway-keys")))
        .json(&json!({"name": "gw"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Fixture {
        cookie,
        key,
        agent_id: agent["id"].as_str().unwrap().to_owned(),
        call_id: authorized["call_id"].as_str().unwrap().to_owned(),
        gateway_key: gateway["api_key"].as_str().unwrap().to_owned(),
    }
}

/// Query strings for the routes that read one, hostile in every parameter.
fn hostile_query() -> BoxedStrategy<String> {
    let names = prop::sample::select(vec![
        "after",
        "limit",
        "org_id",
        "from",
        "to",
        "group_by",
        "format",
        "starting_after",
        "x",
        "",
    ]);
    let values = prop_oneof![
        prop::sample::select(vec![
            "-1",
            "0",
            "1",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "1e3",
            "18446744073709551616",
            "2026-12-05",
            "2026-02-30",
            "9999-12-31",
            "0000-01-01",
            "+262142-01-01",
            "2026-12-05T00:00:00Z",
            "csv",
            "json",
            "xml",
            "agent,model,day,api_key,act_for",
            "agent,agent",
            "%FF",
            "%00",
            "%E2%80%AE",
            "",
            "org_0000000000000000000000",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9%_.,:+-]{0,40}",
    ];
    proptest::collection::vec((names, values), 0..4)
        .prop_map(|pairs| pairs.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("&"))
        .boxed()
}

/// Starts the server once and sends hostile bodies to every POST and PUT route and hostile
/// query strings to every GET route, with the credential each route expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_hostile_requests_with_a_json_4xx_or_success() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(
        &database.url(),
        &[("BAHI_OPERATOR_KEY", OPERATOR_KEY), ("BAHI_DEFAULT_RATE_LIMIT", "1000000/1")],
    );
    let client = client();
    let unpooled = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let fixture = setup(&client, &server).await;
    let bodies_per_route = case_count(40) as usize;
    let mut runner = TestRunner::new(ProptestConfig::default());
    let routes = declared_routes();
    assert!(routes.len() >= 30, "the routers were read: {routes:?}");
    let mut sent = 0;
    for (method, path) in &routes {
        let url = server.url(&fixture.path(path));
        let credential = fixture.credential(path);
        let with_credential = |request: reqwest::RequestBuilder| match &credential {
            Some((name, value)) => request.header(*name, value),
            None => request,
        };
        match method.as_str() {
            "POST" | "PUT" => {
                let strategy = hostile_body(fixture.sample(path));
                for index in 0..bodies_per_route {
                    let body = draw(&mut runner, &strategy);
                    let content_type = match index % 10 {
                        8 => Some("text/plain"),
                        9 => None,
                        _ => Some("application/json"),
                    };
                    let mut request =
                        with_credential(unpooled.request(method.parse().unwrap(), &url)).body(body.clone());
                    if let Some(content_type) = content_type {
                        request = request.header("content-type", content_type);
                    }
                    let what = format!("{method} {path} {content_type:?} {:?}", String::from_utf8_lossy(&body));
                    match request.send().await {
                        Ok(response) => check_answer(response, &what).await,
                        // Only a body past the limit may meet the early 413's reset (above).
                        Err(error) => assert!(body.len() > bahi::http::extract::MAX_BODY_BYTES, "{what}: {error}"),
                    }
                    sent += 1;
                }
                // Past the body limit, on a connection of its own: the server answers 413 as
                // soon as it sees the length and closes without reading the rest (no lingering
                // close), so the client may meet a reset while it is still writing. That is
                // not a server error; an answer that does arrive has the JSON error shape (a
                // route that reads no body answers as it would without one).
                let oversized = format!("{{\"name\":\"{}\"}}", "a".repeat(1_100_000));
                let request = with_credential(unpooled.request(method.parse().unwrap(), &url))
                    .header("content-type", "application/json")
                    .body(oversized);
                match request.send().await {
                    Ok(response) => check_answer(response, &format!("{method} {path} oversized")).await,
                    Err(error) => assert!(error.is_request(), "{method} {path} oversized: {error}"),
                }
            }
            "GET" | "DELETE" => {
                let strategy = hostile_query();
                for _ in 0..bodies_per_route.div_ceil(4) {
                    let query = draw(&mut runner, &strategy);
                    let request = with_credential(client.request(method.parse().unwrap(), format!("{url}?{query}")));
                    check_answer(request.send().await.unwrap(), &format!("{method} {path}?{query}")).await;
                    sent += 1;
                }
            }
            _ => unreachable!(),
        }
    }
    // The gateway key meters too: a hostile usage body from it is refused the same way.
    let strategy = hostile_body(fixture.sample("/v1/usage"));
    for _ in 0..bodies_per_route.div_ceil(4) {
        let body = draw(&mut runner, &strategy);
        let request = client
            .post(server.url("/v1/usage"))
            .bearer_auth(&fixture.gateway_key)
            .header("content-type", "application/json")
            .body(body.clone());
        check_answer(request.send().await.unwrap(), &format!("gateway usage {:?}", String::from_utf8_lossy(&body)))
            .await;
    }
    eprintln!("{sent} hostile requests to {} routes", routes.len());
    // The server is still up and its log intact.
    let (_, key) = register(&client, &server, "after fuzzing").await;
    assert!(key.starts_with("bahi_live_"));
}
