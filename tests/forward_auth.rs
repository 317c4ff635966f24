//! Forward-auth for an operator's own gateway, through a spawned server: allowed requests
//! answer 200 with the call in `x-bahi-*` headers and hold credit as `POST /v1/authorize`
//! does; denials carry their reason in headers; `?gateway=nginx` narrows every denial to
//! 401 or 403; hostile credentials and headers are refused plainly; and a real nginx, run
//! with the README's configuration, allows and refuses as the README says.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{TEST_CLOCK_OPERATOR_KEY, TestDatabase, TestServer, advance_clock, client, error_code, register};
use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-tests-0123456789abcdef";
const MODEL: &str = "krutrim-2";

fn start(database: &TestDatabase) -> TestServer {
    TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)])
}

async fn operator_post(client: &Client, server: &TestServer, operator_key: &str, path: &str, body: Value) -> Value {
    let response = client.post(server.url(path)).bearer_auth(operator_key).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

/// Prices `MODEL` (₹50 in, ₹150 out per million; a default hold of ₹1) and grants `amount` to `org_id`.
async fn price_and_grant(client: &Client, server: &TestServer, operator_key: &str, org_id: &str, amount: &str) {
    let body = json!({"input_per_million": "50", "output_per_million": "150", "default_hold": "1"});
    let response =
        client.put(server.url(&format!("/v1/admin/prices/{MODEL}"))).bearer_auth(operator_key).json(&body).send();
    assert_eq!(response.await.unwrap().status(), 200);
    if amount != "0" {
        let body = json!({"org_id": org_id, "amount": amount, "reason": "test credit"});
        operator_post(client, server, operator_key, "/v1/admin/credits/grants", body).await;
    }
}

async fn create_key(client: &Client, server: &TestServer, key: &str, body: Value) -> Value {
    let response = client.post(server.url("/v1/auth/account/api-keys")).bearer_auth(key).json(&body).send();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn revoke_key(client: &Client, server: &TestServer, key: &str, key_id: &str) {
    let path = format!("/v1/auth/account/api-keys/{key_id}/revoke");
    assert_eq!(client.post(server.url(&path)).bearer_auth(key).send().await.unwrap().status(), 200);
}

/// A forward-auth request as nginx sends it: GET, with the model; the caller adds the
/// client's credential headers.
fn forward_auth(client: &Client, server: &TestServer, query: &str) -> RequestBuilder {
    client.get(server.url(&format!("/v1/forward-auth{query}"))).header("x-bahi-model", MODEL)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |value| value.to_str().unwrap())
}

/// The status, the `x-bahi-*` reason headers (which must agree with the JSON body) and the
/// headers, of a denial.
async fn denial(response: Response) -> (u16, String, String, HeaderMap) {
    let headers = response.headers().clone();
    let (status, code) = error_code(response).await;
    assert_eq!(header(&headers, "x-bahi-error-code"), code, "{headers:?}");
    assert!(!header(&headers, "x-bahi-error-message").is_empty(), "{headers:?}");
    assert!(header(&headers, "x-request-id").starts_with("req_"), "{headers:?}");
    (status, code, header(&headers, "x-bahi-status").to_owned(), headers)
}

#[tokio::test]
async fn an_allowed_request_is_200_with_an_empty_body_and_the_call_in_headers() {
    for database in TestDatabase::all().await {
        let server = start(&database);
        let client = client();
        let (org_id, key) = register(&client, &server, "Acme").await;
        price_and_grant(&client, &server, OPERATOR_KEY, &org_id, "10").await;

        let response = forward_auth(&client, &server, "")
            .bearer_auth(&key)
            .header("x-original-method", "POST")
            .header("x-original-uri", "/v1/chat/completions")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", database.engine());
        let headers = response.headers().clone();
        assert!(response.bytes().await.unwrap().is_empty());
        let call_id = header(&headers, "x-bahi-call-id").to_owned();
        assert!(call_id.starts_with("call_"), "{headers:?}");
        assert_eq!(header(&headers, "x-bahi-org-id"), org_id);
        assert_eq!(header(&headers, "x-bahi-act-for"), org_id, "an org's key acts for the org");
        assert!(!headers.contains_key("x-bahi-agent-id"), "no agent behind an org's key");
        assert!(header(&headers, "x-request-id").starts_with("req_"));
        assert!(!header(&headers, "x-ratelimit-remaining").is_empty());

        // The same use case as POST /v1/authorize: the default hold is held ...
        let account: Value =
            client.get(server.url("/v1/auth/account")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
        assert_eq!(account["held"]["amount"], "1.00");
        // ... and the gateway settles it with its own key, as after /v1/authorize.
        let gateway = operator_post(&client, &server, OPERATOR_KEY, "/v1/admin/gateway-keys", json!({})).await;
        let usage = json!({"call_id": call_id, "model": MODEL, "input_tokens": 1234, "output_tokens": 567, "status": "succeeded"});
        let settled = operator_post(&client, &server, gateway["api_key"].as_str().unwrap(), "/v1/usage", usage).await;
        assert_eq!(settled["cost"]["amount"], "0.14675");
        assert_eq!(settled["balance"]["amount"], "9.85325");
        let audit: Value = client
            .get(server.url(&format!("/v1/audit/calls/{call_id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(audit["credential"]["kind"], "api_key");
        assert_eq!(audit["model"], MODEL);
    }
}

#[tokio::test]
async fn every_gateway_s_way_of_asking_is_allowed_and_agents_are_named() {
    let database = TestDatabase::sqlite();
    let server = start(&database);
    let client = client();
    // agent-register's key is bound to its agent: its calls name the agent.
    let registered: Value = client
        .post(server.url("/v1/auth/agent-register"))
        .json(&json!({"org_name": "Acme", "agent_name": "ingest"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (org_id, key, agent_id) = (
        registered["org_id"].as_str().unwrap(),
        registered["api_key"].as_str().unwrap(),
        registered["agent_id"].as_str().unwrap(),
    );
    price_and_grant(&client, &server, OPERATOR_KEY, org_id, "10").await;

    // nginx: GET with X-Original-*; the key in x-api-key this time.
    let response = forward_auth(&client, &server, "")
        .header("x-api-key", key)
        .header("x-original-method", "POST")
        .header("x-original-uri", "/v1/chat/completions")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-bahi-agent-id"), agent_id);
    // Traefik: GET with X-Forwarded-Method and -Uri.
    let response = client
        .get(server.url("/v1/forward-auth"))
        .bearer_auth(key)
        .header("x-bahi-model", MODEL)
        .header("x-forwarded-method", "POST")
        .header("x-forwarded-uri", "/v1/messages")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Envoy: the original method and path after the prefix; a body, if one comes, is not read.
    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let response = client
            .request(method.clone(), server.url("/v1/forward-auth/v1/chat/completions?stream=true"))
            .bearer_auth(key)
            .header("x-bahi-model", MODEL)
            .header("content-type", "application/json")
            .body("{not json, and never read")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert!(header(response.headers(), "x-bahi-call-id").starts_with("call_"));
    }
    // The gateway's root: Envoy appends "/", and the original path may be just that.
    for path in ["/v1/forward-auth/", "/v1/forward-auth/?q=1", "/v1/forward-auth//v1/x"] {
        let response =
            client.get(server.url(path)).bearer_auth(key).header("x-bahi-model", MODEL).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    // An agent token names its agent and whom it acts for.
    let agent: Value = client
        .post(server.url("/me/agents"))
        .bearer_auth(key)
        .json(&json!({"name": "helper"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_id = agent["id"].as_str().unwrap();
    let minted: Value = client
        .post(server.url(&format!("/me/agents/{agent_id}/token")))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["access_token"].as_str().unwrap();
    let response = forward_auth(&client, &server, "").bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-bahi-agent-id"), agent_id);
    assert_eq!(header(response.headers(), "x-bahi-org-id"), org_id);
    assert_eq!(header(response.headers(), "x-bahi-act-for"), org_id);
}

#[tokio::test]
async fn denials_carry_the_real_status_and_the_reason_in_headers() {
    let database = TestDatabase::sqlite();
    let server = start(&database);
    let client = client();
    let (org_id, owner_key) = register(&client, &server, "Acme").await;
    price_and_grant(&client, &server, OPERATOR_KEY, &org_id, "0").await;

    // No credit: 402, and nothing held.
    let response = forward_auth(&client, &server, "").bearer_auth(&owner_key).send().await.unwrap();
    let (status, code, real_status, _) = denial(response).await;
    assert_eq!((status, code.as_str(), real_status.as_str()), (402, "insufficient_credits", "402"));

    let body = json!({"org_id": org_id, "amount": "10", "reason": "test credit"});
    operator_post(&client, &server, OPERATOR_KEY, "/v1/admin/credits/grants", body).await;

    // No model: a clear 400 naming the header.
    let response = client.get(server.url("/v1/forward-auth")).bearer_auth(&owner_key).send().await.unwrap();
    let (status, code, _, headers) = denial(response).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    assert!(header(&headers, "x-bahi-error-message").contains("x-bahi-model"), "{headers:?}");
    // An unpriced model, as /v1/authorize says it.
    let response =
        client.get(server.url("/v1/forward-auth")).bearer_auth(&owner_key).header("x-bahi-model", "no-such-model");
    assert_eq!(denial(response.send().await.unwrap()).await.1, "unknown_model");
    // Two models (a gateway that appended the client's): neither is priced.
    let response = forward_auth(&client, &server, "").bearer_auth(&owner_key).header("x-bahi-model", "cheap-model");
    let (status, code, _, headers) = denial(response.send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    assert!(header(&headers, "x-bahi-error-message").contains("more than once"), "{headers:?}");

    // Revoked key: 401.
    let revoked = create_key(&client, &server, &owner_key, json!({"name": "soon revoked"})).await;
    revoke_key(&client, &server, &owner_key, revoked["api_key_id"].as_str().unwrap()).await;
    let response = forward_auth(&client, &server, "").bearer_auth(revoked["api_key"].as_str().unwrap()).send();
    let (status, code, real_status, headers) = denial(response.await.unwrap()).await;
    assert_eq!((status, code.as_str(), real_status.as_str()), (401, "unauthorized", "401"));
    assert!(header(&headers, "x-bahi-error-message").contains("revoked"), "{headers:?}");

    // A key without the inference scope: 403.
    let reader = create_key(&client, &server, &owner_key, json!({"scopes": ["audit:read"]})).await;
    let response = forward_auth(&client, &server, "").bearer_auth(reader["api_key"].as_str().unwrap()).send();
    assert_eq!(denial(response.await.unwrap()).await.1, "insufficient_scope");

    // Rate limited: 429 with retry-after and x-ratelimit-*.
    let limited =
        create_key(&client, &server, &owner_key, json!({"rate_limit": {"requests": 1, "interval_seconds": 60}}));
    let limited = limited.await["api_key"].as_str().unwrap().to_owned();
    let response = forward_auth(&client, &server, "").bearer_auth(&limited).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-ratelimit-remaining"), "0");
    let response = forward_auth(&client, &server, "").bearer_auth(&limited).send().await.unwrap();
    let (status, code, real_status, headers) = denial(response).await;
    assert_eq!((status, code.as_str(), real_status.as_str()), (429, "rate_limited", "429"));
    let retry_after: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{headers:?}");
    assert_eq!(header(&headers, "x-ratelimit-limit"), "1");
    assert_eq!(header(&headers, "x-ratelimit-remaining"), "0");

    // Budget: a key whose budget the default hold of ₹1 would pass.
    let budgeted = create_key(&client, &server, &owner_key, json!({"budget": {"amount": "0.50", "period": "month"}}));
    let budgeted = budgeted.await["api_key"].as_str().unwrap().to_owned();
    let response = forward_auth(&client, &server, "").bearer_auth(&budgeted).send().await.unwrap();
    let (status, code, _, _) = denial(response).await;
    assert_eq!((status, code.as_str()), (402, "budget_exceeded"));
}

#[tokio::test]
async fn nginx_mode_narrows_every_denial_to_401_or_403_and_keeps_the_real_status() {
    let database = TestDatabase::sqlite();
    let server = start(&database);
    let client = client();
    let (org_id, owner_key) = register(&client, &server, "Acme").await;
    price_and_grant(&client, &server, OPERATOR_KEY, &org_id, "0").await;
    let nginx = "?gateway=nginx";

    let response = forward_auth(&client, &server, nginx).bearer_auth(&owner_key).send().await.unwrap();
    let (status, code, real_status, _) = denial(response).await;
    assert_eq!((status, code.as_str(), real_status.as_str()), (403, "insufficient_credits", "402"));

    let body = json!({"org_id": org_id, "amount": "10", "reason": "test credit"});
    operator_post(&client, &server, OPERATOR_KEY, "/v1/admin/credits/grants", body).await;
    let response = client.get(server.url("/v1/forward-auth?gateway=nginx")).bearer_auth(&owner_key).send();
    let (status, code, real_status, _) = denial(response.await.unwrap()).await;
    assert_eq!((status, code.as_str(), real_status.as_str()), (403, "invalid_request", "400"));

    let revoked = create_key(&client, &server, &owner_key, json!({})).await;
    revoke_key(&client, &server, &owner_key, revoked["api_key_id"].as_str().unwrap()).await;
    let response = forward_auth(&client, &server, nginx).bearer_auth(revoked["api_key"].as_str().unwrap()).send();
    let (status, code, real_status, _) = denial(response.await.unwrap()).await;
    assert_eq!((status, code.as_str(), real_status.as_str()), (401, "unauthorized", "401"));
    let response = forward_auth(&client, &server, nginx).send().await.unwrap();
    assert_eq!(denial(response).await.0, 401, "no credential at all");

    let limited =
        create_key(&client, &server, &owner_key, json!({"rate_limit": {"requests": 1, "interval_seconds": 60}}));
    let limited = limited.await["api_key"].as_str().unwrap().to_owned();
    assert_eq!(forward_auth(&client, &server, nginx).bearer_auth(&limited).send().await.unwrap().status(), 200);
    let response = forward_auth(&client, &server, nginx).bearer_auth(&limited).send().await.unwrap();
    let (status, code, real_status, headers) = denial(response).await;
    assert_eq!((status, code.as_str(), real_status.as_str()), (403, "rate_limited", "429"));
    assert!(headers.contains_key("retry-after"), "{headers:?}");

    // A mode bahi does not know, or a parameter it does not take, is a configuration error.
    for query in ["?gateway=apache", "?gateway=nginx&mode=strict"] {
        let response = forward_auth(&client, &server, query).bearer_auth(&owner_key).send().await.unwrap();
        let (status, code, _, _) = denial(response).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{query}");
    }
    // Envoy's path route: the query string is the client's, never read as bahi's, so a client
    // cannot switch the mode.
    let response = client
        .post(server.url("/v1/forward-auth/v1/chat/completions?gateway=nginx&whatever=1"))
        .bearer_auth(revoked["api_key"].as_str().unwrap())
        .header("x-bahi-model", MODEL)
        .send()
        .await
        .unwrap();
    assert_eq!(denial(response).await.0, 401);
    let response = client
        .post(server.url("/v1/forward-auth/v1/chat/completions?gateway=nginx"))
        .bearer_auth(&owner_key)
        .send()
        .await
        .unwrap();
    assert_eq!(denial(response).await.0, 400, "the real status, not nginx's 403");
}

#[tokio::test]
async fn another_org_s_credential_bills_its_own_org_and_sees_nothing_of_this_one() {
    let database = TestDatabase::sqlite();
    let server = start(&database);
    let client = client();
    let (acme, acme_key) = register(&client, &server, "Acme").await;
    let (beta, beta_key) = register(&client, &server, "Beta").await;
    price_and_grant(&client, &server, OPERATOR_KEY, &acme, "10").await;

    let response = forward_auth(&client, &server, "").bearer_auth(&acme_key).send().await.unwrap();
    assert_eq!(header(response.headers(), "x-bahi-org-id"), acme);
    let acme_call = header(response.headers(), "x-bahi-call-id").to_owned();

    // Beta has no credit of its own; Acme's is not Beta's to spend.
    let response = forward_auth(&client, &server, "").bearer_auth(&beta_key).send().await.unwrap();
    assert_eq!(denial(response).await.1, "insufficient_credits");
    // Beta cannot see Acme's call, and a forward-auth answer never names another org.
    let response = client.get(server.url(&format!("/v1/audit/calls/{acme_call}"))).bearer_auth(&beta_key).send();
    assert_eq!(error_code(response.await.unwrap()).await, (404, "not_found".to_owned()));
    let body = json!({"org_id": beta, "amount": "5", "reason": "test credit"});
    operator_post(&client, &server, OPERATOR_KEY, "/v1/admin/credits/grants", body).await;
    let response = forward_auth(&client, &server, "").bearer_auth(&beta_key).send().await.unwrap();
    assert_eq!(header(response.headers(), "x-bahi-org-id"), beta);
    assert_eq!(header(response.headers(), "x-bahi-act-for"), beta);
    let account: Value =
        client.get(server.url("/v1/auth/account")).bearer_auth(&acme_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(account["held"]["amount"], "1.00", "only Acme's own call holds Acme's credit");
}

#[tokio::test]
async fn forged_expired_missing_and_mismatched_credentials_are_401() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &common::with_test_clock());
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    price_and_grant(&client, &server, TEST_CLOCK_OPERATOR_KEY, &org_id, "10").await;

    let forged_key = format!("bahi_live_{}", "A".repeat(32));
    let forged_token = "eyJhbGciOiJFUzI1NiIsImtpZCI6Im5vcGUifQ.eyJzdWIiOiJhZ3RfeCJ9.c2lnbmF0dXJl";
    let (_, other_key) = register(&client, &server, "Beta").await;
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("missing", vec![]),
        ("forged key", vec![("authorization", format!("Bearer {forged_key}"))]),
        ("malformed key", vec![("x-api-key", "not-a-key".to_owned())]),
        ("forged token", vec![("authorization", format!("Bearer {forged_token}"))]),
        ("token in x-api-key", vec![("x-api-key", forged_token.to_owned())]),
        ("basic auth", vec![("authorization", format!("Basic {key}"))]),
        ("empty bearer", vec![("authorization", "Bearer ".to_owned())]),
        ("mismatch", vec![("authorization", format!("Bearer {key}")), ("x-api-key", other_key.clone())]),
        ("test environment", vec![("authorization", format!("Bearer bahi_test_{}", "B".repeat(32)))]),
    ];
    for (what, headers) in cases {
        let mut request = forward_auth(&client, &server, "");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let (status, code, real_status, headers) = denial(request.send().await.unwrap()).await;
        assert_eq!((status, code.as_str(), real_status.as_str()), (401, "unauthorized", "401"), "{what}");
        let message = header(&headers, "x-bahi-error-message");
        assert!(!message.contains('"') && !message.contains('\\'), "{what}: JSON-safe {message:?}");
    }

    // A console session is not a gateway credential: a browser's cookie reaching a gateway
    // must not spend the org's credit.
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": "asha@example.com", "password": "Owner-Pass-1"}))
        .send()
        .await
        .unwrap();
    let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let response = forward_auth(&client, &server, "").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(denial(response).await.0, 401);

    // Expired: a key past its expires_at, and an agent token past its exp.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let expiring = create_key(&client, &server, &key, json!({"expires_at": soon})).await;
    let expiring = expiring["api_key"].as_str().unwrap().to_owned();
    let agent: Value = client
        .post(server.url("/me/agents"))
        .bearer_auth(&key)
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let minted: Value = client
        .post(server.url(&format!("/me/agents/{}/token", agent["id"].as_str().unwrap())))
        .bearer_auth(&key)
        .json(&json!({"ttl_seconds": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["access_token"].as_str().unwrap().to_owned();
    assert_eq!(forward_auth(&client, &server, "").bearer_auth(&expiring).send().await.unwrap().status(), 200);
    assert_eq!(forward_auth(&client, &server, "").bearer_auth(&token).send().await.unwrap().status(), 200);
    advance_clock(&client, &server, TEST_CLOCK_OPERATOR_KEY, 120).await;
    for credential in [&expiring, &token] {
        let response = forward_auth(&client, &server, "").bearer_auth(credential).send().await.unwrap();
        assert_eq!(denial(response).await.0, 401);
    }
}

#[tokio::test]
async fn hostile_header_values_and_model_names_are_4xx_never_5xx() {
    let database = TestDatabase::sqlite();
    let server = start(&database);
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    price_and_grant(&client, &server, OPERATOR_KEY, &org_id, "10").await;

    for model in [
        "../../etc/passwd",
        "krutrim 2",
        "model\"quote",
        "model,other",
        "<script>",
        "m;rm -rf",
        "",
        &"m".repeat(300),
        &"m".repeat(60_000),
    ] {
        let response =
            client.get(server.url("/v1/forward-auth")).bearer_auth(&key).header("x-bahi-model", model).send();
        let (status, code, _, _) = denial(response.await.unwrap()).await;
        // Refused as malformed, or (for a well-formed name) as no model bahi prices.
        assert_eq!(status, 400, "{model:?}");
        assert!(["invalid_request", "unknown_model"].contains(&code.as_str()), "{model:?}: {code}");
    }
    // Bytes that are not text (obs-text) in the model and in the original URI.
    let latin1 = reqwest::header::HeaderValue::from_bytes(b"mod\xe8le").unwrap();
    let response = client.get(server.url("/v1/forward-auth")).bearer_auth(&key).header("x-bahi-model", latin1.clone());
    assert_eq!(denial(response.send().await.unwrap()).await.0, 400);
    let response = forward_auth(&client, &server, "").bearer_auth(&key).header("x-original-uri", latin1).send();
    assert_eq!(response.await.unwrap().status(), 200, "the original URI is only logged");

    // Huge credentials and URIs: a 4xx in the contract's shape, or the transport's 431 for a
    // head past its limit; never a 5xx.
    let huge = "A".repeat(60_000);
    let response = forward_auth(&client, &server, "").bearer_auth(&huge).send().await.unwrap();
    assert_eq!(denial(response).await.0, 401);
    let response = forward_auth(&client, &server, "").header("x-api-key", &huge).send().await.unwrap();
    assert_eq!(denial(response).await.0, 401);
    let response = forward_auth(&client, &server, "")
        .bearer_auth(&key)
        .header("x-original-uri", format!("/{huge}"))
        .header("x-original-method", &huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = forward_auth(&client, &server, "").bearer_auth("B".repeat(200_000)).send().await.unwrap();
    assert_eq!(response.status(), 431);
    let response = client
        .get(server.url(&format!("/v1/forward-auth/{}", "p".repeat(50_000))))
        .bearer_auth(&key)
        .header("x-bahi-model", MODEL)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a long original path is only logged");

    // The server is still serving, and only the allowed calls hold credit.
    let account: Value =
        client.get(server.url("/v1/auth/account")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(account["held"]["amount"], "3.00");
}

// ---- a real nginx in front, configured as README's "Behind your own gateway" says ----

/// The ```nginx block of README's "Behind your own gateway" section, as written.
fn readme_nginx_configuration() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Behind your own gateway").expect("README has its gateway section")..];
    let start = section.find("```nginx\n").expect("the section has an nginx block") + "```nginx\n".len();
    section[start..start + section[start..].find("```").unwrap()].to_owned()
}

/// `text` with `from` replaced by `to`, which it must contain: a README edit that drops an
/// address fails here rather than testing something else.
fn replace_present(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "README's nginx block no longer contains {from:?}");
    text.replace(from, to)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn command_output(program: &str, arguments: &[&str]) -> Option<String> {
    let output = Command::new(program).args(arguments).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The nginx binary, on PATH or in /usr/sbin (where Debian puts it, off a non-root PATH).
/// CI must have it (`scripts/test.sh` installs it there); elsewhere it may be absent.
fn nginx_binary() -> Option<String> {
    let found = command_output("sh", &["-c", "command -v nginx || ls /usr/sbin/nginx"])
        .and_then(|found| found.lines().next().map(str::to_owned));
    assert!(
        found.is_some() || std::env::var("CI").is_err(),
        "CI must run the nginx forward-auth test: install nginx (scripts/test.sh does)"
    );
    found
}

/// A running nginx, killed when dropped (one process: `master_process off`).
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The whole nginx.conf: everything nginx writes stays in `directory`, it runs in the
/// foreground as the current user, and README's block is its http block's content.
fn nginx_configuration(directory: &Path, readme_block: &str) -> String {
    let directory = directory.display();
    format!(
        "daemon off;\nmaster_process off;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         access_log {directory}/access.log;\n\
         client_body_temp_path {directory}/client_body;\nproxy_temp_path {directory}/proxy;\n\
         fastcgi_temp_path {directory}/fastcgi;\nuwsgi_temp_path {directory}/uwsgi;\nscgi_temp_path {directory}/scgi;\n\
         {readme_block}\n}}\n"
    )
}

/// The model server behind nginx: answers 200 with the `x-bahi-*` headers (and whether a
/// credential) reached it, and keeps what it saw.
async fn start_upstream(seen: Arc<Mutex<Vec<Value>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
            let mut received = serde_json::Map::new();
            for (name, value) in &headers {
                let name = name.as_str();
                if name.starts_with("x-bahi-") || name == "authorization" || name == "x-api-key" {
                    received.insert(name.to_owned(), Value::String(value.to_str().unwrap_or("?").to_owned()));
                }
            }
            let received = Value::Object(received);
            seen.lock().unwrap().push(received.clone());
            axum::Json(received)
        }
    };
    let app = axum::Router::new().fallback(echo);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nginx_with_the_readme_configuration_allows_and_refuses() {
    let Some(nginx) = nginx_binary() else {
        eprintln!("nginx is not installed: the nginx forward-auth test DID NOT RUN (apt-get install nginx to run it)");
        return;
    };
    let database = TestDatabase::sqlite();
    let mut server = start(&database);
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    price_and_grant(&client, &server, OPERATOR_KEY, &org_id, "0").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream_port = start_upstream(seen.clone()).await;

    let directory = tempfile::tempdir().unwrap();
    let nginx_port = free_port();
    let bahi_address = server.base_url.trim_start_matches("http://").to_owned();
    let block = readme_nginx_configuration();
    let block = replace_present(&block, "127.0.0.1:8080", &bahi_address);
    let block = replace_present(&block, "127.0.0.1:9000", &format!("127.0.0.1:{upstream_port}"));
    let block = replace_present(&block, "listen 127.0.0.1:8000;", &format!("listen 127.0.0.1:{nginx_port};"));
    let configuration_path = directory.path().join("nginx.conf");
    std::fs::write(&configuration_path, nginx_configuration(directory.path(), &block)).unwrap();
    let prefix = format!("{}/", directory.path().display());
    let error_log = directory.path().join("error.log");
    let check = Command::new(&nginx)
        .args(["-t", "-p", &prefix, "-e", error_log.to_str().unwrap(), "-c", configuration_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
    let _nginx = Nginx(
        Command::new(&nginx)
            .args(["-p", &prefix, "-e", error_log.to_str().unwrap(), "-c", configuration_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let gateway = format!("http://127.0.0.1:{nginx_port}");
    let listening =
        common::eventually(|| async { tokio::net::TcpStream::connect(("127.0.0.1", nginx_port)).await.is_ok() });
    assert!(listening.await, "nginx did not listen: {}", std::fs::read_to_string(&error_log).unwrap_or_default());
    let chat = |credential: &str| {
        client
            .post(format!("{gateway}/v1/chat/completions"))
            .bearer_auth(credential)
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}))
    };
    let nginx_log = || std::fs::read_to_string(&error_log).unwrap_or_default();

    // No credit: 403 at the client, with the real reason visible.
    let response = chat(&key).send().await.unwrap();
    let headers = response.headers().clone();
    assert_eq!(response.status(), 403, "{headers:?} {}", nginx_log());
    assert_eq!(header(&headers, "x-bahi-status"), "402");
    assert_eq!(header(&headers, "x-bahi-error-code"), "insufficient_credits");
    assert!(header(&headers, "x-bahi-error-message").contains("insufficient credits"), "{headers:?}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert_eq!(body["error"]["code"], "insufficient_credits", "{body}");
    assert!(body["error"]["request_id"].as_str().unwrap().starts_with("req_"), "{body}");
    assert!(seen.lock().unwrap().is_empty(), "a refused request never reaches the upstream");

    // Allowed: 200 from the upstream, which saw the call and not the caller's credential.
    let body = json!({"org_id": org_id, "amount": "10", "reason": "test credit"});
    operator_post(&client, &server, OPERATOR_KEY, "/v1/admin/credits/grants", body).await;
    let response = chat(&key).header("x-bahi-call-id", "call_forged").header("x-bahi-agent-id", "agt_forged").send();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200, "{}", nginx_log());
    let received: Value = response.json().await.unwrap();
    let call_id = received["x-bahi-call-id"].as_str().unwrap();
    assert!(call_id.starts_with("call_") && call_id != "call_forged", "{received}");
    assert_eq!(received["x-bahi-org-id"], org_id.as_str());
    assert_eq!(received["x-bahi-act-for"], org_id.as_str());
    assert!(received.get("x-bahi-agent-id").is_none(), "a client's own x-bahi-agent-id is dropped: {received}");
    assert!(received.get("authorization").is_none(), "{received}");
    // The call nginx let through is bahi's, held and ready to settle.
    let audit = client.get(server.url(&format!("/v1/audit/calls/{call_id}"))).bearer_auth(&key).send();
    assert_eq!(audit.await.unwrap().status(), 200);
    // An agent's token: the upstream is told which agent.
    let agent: Value = client
        .post(server.url("/me/agents"))
        .bearer_auth(&key)
        .json(&json!({"name": "helper"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_id = agent["id"].as_str().unwrap();
    let minted: Value = client
        .post(server.url(&format!("/me/agents/{agent_id}/token")))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = chat(minted["access_token"].as_str().unwrap()).header("x-bahi-agent-id", "agt_forged").send();
    let received: Value = response.await.unwrap().json().await.unwrap();
    assert_eq!(received["x-bahi-agent-id"], agent_id, "{received}");

    // Revoked key: 401, with the reason.
    let revoked = create_key(&client, &server, &key, json!({})).await;
    revoke_key(&client, &server, &key, revoked["api_key_id"].as_str().unwrap()).await;
    let response = chat(revoked["api_key"].as_str().unwrap()).send().await.unwrap();
    let headers = response.headers().clone();
    assert_eq!(response.status(), 401, "{headers:?}");
    assert_eq!(header(&headers, "x-bahi-error-code"), "unauthorized");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");

    // Rate limited: 403, with the reason and when to retry.
    let limited = create_key(&client, &server, &key, json!({"rate_limit": {"requests": 1, "interval_seconds": 60}}));
    let limited = limited.await["api_key"].as_str().unwrap().to_owned();
    assert_eq!(chat(&limited).send().await.unwrap().status(), 200);
    let response = chat(&limited).send().await.unwrap();
    let headers = response.headers().clone();
    assert_eq!(response.status(), 403, "{headers:?}");
    assert_eq!(header(&headers, "x-bahi-status"), "429");
    assert_eq!(header(&headers, "x-bahi-error-code"), "rate_limited");
    assert!(!header(&headers, "retry-after").is_empty(), "{headers:?}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(seen.lock().unwrap().len(), 3, "only the three allowed requests reached the upstream");

    // bahi unreachable: nginx fails closed.
    server.kill();
    let response = chat(&key).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(seen.lock().unwrap().len(), 3, "nothing reaches the upstream without bahi's answer");
}
