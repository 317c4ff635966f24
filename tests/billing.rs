//! Metering and INR billing through a spawned server: exact rupee arithmetic, concurrent
//! holds that never overspend, usage idempotency, hold expiry, budgets, human-only top-ups,
//! operator and gateway credentials.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDatabase, TestServer, client, error_code, register};
use reqwest::{Client, Response};
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-tests-0123456789abcdef";

fn start(database: &TestDatabase, extra: &[(&str, &str)]) -> TestServer {
    let mut environment = vec![("BAHI_OPERATOR_KEY", OPERATOR_KEY)];
    environment.extend_from_slice(extra);
    TestServer::start_with(&database.url(), &environment)
}

async fn send(
    client: &Client,
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    credential: &str,
    body: Value,
) -> Response {
    client.request(method, server.url(path)).bearer_auth(credential).json(&body).send().await.unwrap()
}

async fn set_price(client: &Client, server: &TestServer, model: &str, input: &str, output: &str) {
    let body = json!({"input_per_million": {"currency": "inr", "amount": input}, "output_per_million": {"currency": "inr", "amount": output}});
    put_price(client, server, model, body).await;
}

/// Sets a model's price with the operator's default hold for calls without `max_cost`.
async fn set_price_and_hold(client: &Client, server: &TestServer, model: &str, input: &str, output: &str, hold: &str) {
    put_price(
        client,
        server,
        model,
        json!({"input_per_million": input, "output_per_million": output, "default_hold": hold}),
    )
    .await;
}

async fn put_price(client: &Client, server: &TestServer, model: &str, body: Value) -> Value {
    let path = format!("/v1/admin/prices/{model}");
    let response = send(client, server, reqwest::Method::PUT, &path, OPERATOR_KEY, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn grant(client: &Client, server: &TestServer, org_id: &str, amount: &str) -> Value {
    let response = send(
        client,
        server,
        reqwest::Method::POST,
        "/v1/admin/credits/grants",
        OPERATOR_KEY,
        json!({"org_id": org_id, "amount": amount, "reason": "test credit"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn authorize(client: &Client, server: &TestServer, credential: &str, body: Value) -> Response {
    send(client, server, reqwest::Method::POST, "/v1/authorize", credential, body).await
}

async fn usage(client: &Client, server: &TestServer, call_id: &str, model: &str, input: u64, output: u64) -> Response {
    usage_with_status(client, server, call_id, model, input, output, "succeeded").await
}

async fn usage_with_status(
    client: &Client,
    server: &TestServer,
    call_id: &str,
    model: &str,
    input: u64,
    output: u64,
    status: &str,
) -> Response {
    let body =
        json!({"call_id": call_id, "model": model, "input_tokens": input, "output_tokens": output, "status": status});
    send(client, server, reqwest::Method::POST, "/v1/usage", OPERATOR_KEY, body).await
}

async fn account(client: &Client, server: &TestServer, key: &str) -> Value {
    client.get(server.url("/v1/auth/account")).bearer_auth(key).send().await.unwrap().json().await.unwrap()
}

/// The audit answer for a call (`GET /v1/audit/calls/{id}`).
async fn audit_call(client: &Client, server: &TestServer, key: &str, call_id: &str) -> Value {
    let response = client.get(server.url(&format!("/v1/audit/calls/{call_id}"))).bearer_auth(key).send().await.unwrap();
    response.json().await.unwrap()
}

/// The types of a call's events, in the order its audit answer lists them.
fn event_types(audit: &Value) -> Vec<&str> {
    audit["events"].as_array().unwrap().iter().map(|event| event["type"].as_str().unwrap()).collect()
}

/// Today's statement as JSON.
async fn todays_statement(client: &Client, server: &TestServer, key: &str) -> Value {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let path = format!("/v1/statements?from={today}&to={today}&format=json");
    client.get(server.url(&path)).bearer_auth(key).send().await.unwrap().json().await.unwrap()
}

fn amount(money: &Value) -> String {
    assert_eq!(money["currency"], "inr");
    money["amount"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn exact_rupee_arithmetic_on_hand_computed_calls() {
    for database in TestDatabase::all().await {
        let server = start(&database, &[]);
        let client = client();
        let (org_id, key) = register(&client, &server, "Acme").await;
        set_price(&client, &server, "krutrim-2", "50", "150").await;
        set_price(&client, &server, "big-model", "3.75", "15").await;
        let granted = grant(&client, &server, &org_id, "100").await;
        assert_eq!(amount(&granted["balance"]), "100.00");

        // 1,234 input at ₹50/M + 567 output at ₹150/M = 0.0617 + 0.08505 = 0.14675. Without
        // max_cost the hold is what 4,096 tokens each way cost: 4,096 × ₹200/M = 0.8192.
        let authorized: Value =
            authorize(&client, &server, &key, json!({"model": "krutrim-2"})).await.json().await.unwrap();
        let call_id = authorized["call_id"].as_str().unwrap();
        assert!(call_id.starts_with("call_"));
        assert_eq!(authorized["org_id"], org_id.as_str());
        assert_eq!(authorized["credential_id"].as_str().unwrap()[..4], *"key_");
        assert_eq!(amount(&authorized["hold"]), "0.8192");
        let settled: Value = usage(&client, &server, call_id, "krutrim-2", 1234, 567).await.json().await.unwrap();
        assert_eq!(amount(&settled["cost"]), "0.14675");
        assert_eq!(amount(&settled["balance"]), "99.85325");

        // 1M input at ₹3.75/M + 1M output at ₹15/M = 18.75, with a hold of 20 released.
        let authorized: Value = authorize(&client, &server, &key, json!({"model": "big-model", "max_cost": "20"}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(amount(&authorized["hold"]), "20.00");
        let during = account(&client, &server, &key).await;
        assert_eq!(amount(&during["available_balance"]), "79.85325");
        let settled: Value =
            usage(&client, &server, authorized["call_id"].as_str().unwrap(), "big-model", 1_000_000, 1_000_000)
                .await
                .json()
                .await
                .unwrap();
        assert_eq!(amount(&settled["cost"]), "18.75");
        assert_eq!(amount(&settled["balance"]), "81.10325");
        let after = account(&client, &server, &key).await;
        assert_eq!(amount(&after["credit_balance"]), "81.10325", "{}", database.engine());
        assert_eq!(amount(&after["available_balance"]), "81.10325");
        assert_eq!(amount(&after["held"]), "0.00");

        // The key's usage counts both calls.
        let keys: Value = client
            .get(server.url("/v1/auth/account/api-keys"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(keys["data"][0]["usage"]["calls"], 2);
        assert_eq!(amount(&keys["data"][0]["usage"]["cost"]), "18.89675");

        // A price change is an event; a call authorized before it keeps its price.
        let before_change: Value =
            authorize(&client, &server, &key, json!({"model": "krutrim-2"})).await.json().await.unwrap();
        set_price(&client, &server, "krutrim-2", "1000", "1000").await;
        let settled: Value =
            usage(&client, &server, before_change["call_id"].as_str().unwrap(), "krutrim-2", 1234, 567)
                .await
                .json()
                .await
                .unwrap();
        assert_eq!(amount(&settled["cost"]), "0.14675");

        // Unpriced models are 400 unknown_model.
        let response = authorize(&client, &server, &key, json!({"model": "no-such-model"})).await;
        assert_eq!(error_code(response).await, (400, "unknown_model".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_holds_of_one_against_ten_yield_exactly_ten() {
    for database in TestDatabase::all().await {
        let server = start(&database, &[]);
        let client = client();
        let (org_id, key) = register(&client, &server, "Acme").await;
        set_price(&client, &server, "m", "1", "1").await;
        grant(&client, &server, &org_id, "10").await;
        let mut handles = Vec::new();
        for _ in 0..40 {
            let (client, url, key) = (client.clone(), server.url("/v1/authorize"), key.clone());
            handles.push(tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&json!({"model": "m", "max_cost": "1"}))
                    .send()
                    .await
                    .unwrap();
                error_type_or_ok(response).await
            }));
        }
        let mut granted = 0;
        let mut refused = 0;
        for handle in handles {
            match handle.await.unwrap() {
                (200, _) => granted += 1,
                (402, kind) if kind == "insufficient_credits" => refused += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!((granted, refused), (10, 30), "{}", database.engine());
        let after = account(&client, &server, &key).await;
        assert_eq!(amount(&after["credit_balance"]), "10.00");
        assert_eq!(amount(&after["available_balance"]), "0.00");
        assert_eq!(amount(&after["held"]), "10.00");
    }
}

async fn error_type_or_ok(response: Response) -> (u16, String) {
    if response.status() == 200 { (200, String::new()) } else { error_code(response).await }
}

#[tokio::test]
async fn usage_is_idempotent_on_call_id_and_conflicts_on_other_content() {
    let database = TestDatabase::sqlite();
    let server = start(&database, &[]);
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    set_price(&client, &server, "m", "10", "20").await;
    grant(&client, &server, &org_id, "5").await;
    let authorized: Value = authorize(&client, &server, &key, json!({"model": "m"})).await.json().await.unwrap();
    let call_id = authorized["call_id"].as_str().unwrap();
    let first: Value = usage(&client, &server, call_id, "m", 1000, 1000).await.json().await.unwrap();
    // Another call moves the balance; a replay of the first still answers what it answered.
    let other: Value = authorize(&client, &server, &key, json!({"model": "m"})).await.json().await.unwrap();
    usage(&client, &server, other["call_id"].as_str().unwrap(), "m", 500, 0).await;
    let replay = usage(&client, &server, call_id, "m", 1000, 1000).await;
    assert_eq!(replay.status(), 200);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay, first, "same body again: same answer");
    let conflict = usage(&client, &server, call_id, "m", 1000, 1001).await;
    assert_eq!(error_code(conflict).await, (409, "conflict".to_owned()));
    let balance = account(&client, &server, &key).await;
    assert_eq!(amount(&balance["credit_balance"]), "4.965", "billed once: 5 - 0.03 - 0.005");

    let unknown = usage(&client, &server, "call_0000000000000000000000", "m", 1, 1).await;
    assert_eq!(error_code(unknown).await, (404, "not_found".to_owned()));
    let malformed = usage(&client, &server, "not-a-call", "m", 1, 1).await;
    assert_eq!(error_code(malformed).await, (400, "invalid_id".to_owned()));
    let fresh: Value = authorize(&client, &server, &key, json!({"model": "m"})).await.json().await.unwrap();
    let wrong_model = usage(&client, &server, fresh["call_id"].as_str().unwrap(), "other-model", 1, 1).await;
    assert_eq!(error_code(wrong_model).await.0, 400);
    let negative = send(&client, &server, reqwest::Method::POST, "/v1/usage", OPERATOR_KEY,
        json!({"call_id": fresh["call_id"], "model": "m", "input_tokens": -1, "output_tokens": 1, "status": "succeeded"})).await;
    assert_eq!(error_code(negative).await.0, 400);

    // Only the operator or a gateway key reports usage.
    let by_org_key = send(&client, &server, reqwest::Method::POST, "/v1/usage", &key,
        json!({"call_id": fresh["call_id"], "model": "m", "input_tokens": 1, "output_tokens": 1, "status": "succeeded"})).await;
    assert_eq!(error_code(by_org_key).await, (403, "operator_only".to_owned()));
    let gateway: Value = send(
        &client,
        &server,
        reqwest::Method::POST,
        "/v1/admin/gateway-keys",
        OPERATOR_KEY,
        json!({"name": "edge-1"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(gateway["scopes"], json!(["usage:write"]));
    let gateway_key = gateway["api_key"].as_str().unwrap();
    let by_gateway = send(&client, &server, reqwest::Method::POST, "/v1/usage", gateway_key,
        json!({"call_id": fresh["call_id"], "model": "m", "input_tokens": 1, "output_tokens": 1, "status": "succeeded"})).await;
    assert_eq!(by_gateway.status(), 200);
    let price_by_gateway = send(
        &client,
        &server,
        reqwest::Method::PUT,
        "/v1/admin/prices/m",
        gateway_key,
        json!({"input_per_million": "1", "output_per_million": "1"}),
    )
    .await;
    assert_eq!(error_code(price_by_gateway).await, (403, "insufficient_scope".to_owned()));
    let nobody = client.post(server.url("/v1/usage")).json(&json!({})).send().await.unwrap();
    assert_eq!(error_code(nobody).await.0, 401);
}

#[tokio::test]
async fn holds_expire_and_release_credit_and_late_usage_is_still_billed() {
    let database = TestDatabase::sqlite();
    let server = start(&database, &[("BAHI_HOLD_TTL_SECONDS", "60"), ("BAHI_TEST_CLOCK", "true")]);
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    set_price(&client, &server, "m", "100", "100").await;
    grant(&client, &server, &org_id, "5").await;
    let held: Value =
        authorize(&client, &server, &key, json!({"model": "m", "max_cost": "5"})).await.json().await.unwrap();
    let refused = authorize(&client, &server, &key, json!({"model": "m", "max_cost": "1"})).await;
    assert_eq!(error_code(refused).await, (402, "insufficient_credits".to_owned()));
    // A minute later the hold has expired; the node's expirer releases its credit.
    common::advance_clock(&client, &server, OPERATOR_KEY, 61).await;
    let released =
        common::eventually(|| async { amount(&account(&client, &server, &key).await["held"]) == "0.00" }).await;
    assert!(released, "the expired hold was released");
    let again = authorize(&client, &server, &key, json!({"model": "m", "max_cost": "1"})).await;
    assert_eq!(again.status(), 200);
    // Usage arriving after the hold expired is billed all the same: a served call is never free.
    let late: Value =
        usage(&client, &server, held["call_id"].as_str().unwrap(), "m", 10_000, 0).await.json().await.unwrap();
    assert_eq!(amount(&late["cost"]), "1.00");
    assert_eq!(amount(&late["balance"]), "4.00");
    // The call's audit answer lists all three of its events, in log order.
    let audit = audit_call(&client, &server, &key, held["call_id"].as_str().unwrap()).await;
    assert_eq!(event_types(&audit), ["CallAuthorized", "HoldExpired", "UsageRecorded"], "{audit}");
    let positions: Vec<i64> =
        audit["events"].as_array().unwrap().iter().map(|event| event["position"].as_i64().unwrap()).collect();
    assert!(positions.is_sorted(), "{audit}");
    assert_eq!(amount(&audit["cost"]), "1.00");
}

#[tokio::test]
async fn budgets_of_keys_and_agents_are_enforced() {
    let database = TestDatabase::sqlite();
    let server = start(&database, &[]);
    let client = client();
    let (org_id, owner_key) = register(&client, &server, "Acme").await;
    // Each call holds 0.30 of the budget until it is settled.
    set_price_and_hold(&client, &server, "m", "100", "100", "0.30").await;
    grant(&client, &server, &org_id, "1000").await;
    let limited: Value = send(
        &client,
        &server,
        reqwest::Method::POST,
        "/v1/auth/account/api-keys",
        &owner_key,
        json!({"scopes": ["inference", "account:read"], "budget": {"amount": "1.00", "period": "day"}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let limited_key = limited["api_key"].as_str().unwrap();
    // Spend 0.60 twice: the first leaves room, the second spends past the budget.
    for _ in 0..2 {
        let call: Value = authorize(&client, &server, limited_key, json!({"model": "m"})).await.json().await.unwrap();
        let settled = usage(&client, &server, call["call_id"].as_str().unwrap(), "m", 6000, 0).await;
        assert_eq!(settled.status(), 200);
    }
    let refused = authorize(&client, &server, limited_key, json!({"model": "m"})).await;
    assert_eq!(error_code(refused).await, (402, "budget_exceeded".to_owned()));
    let keys: Value = client
        .get(server.url("/v1/auth/account/api-keys"))
        .bearer_auth(&owner_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let view =
        keys["data"].as_array().unwrap().iter().find(|key| key["api_key_id"] == limited["api_key_id"]).unwrap().clone();
    assert_eq!(amount(&view["budget"]["spent"]), "1.20");
    assert_eq!(view["budget"]["period"], "day");
    let resets_at = chrono::DateTime::parse_from_rfc3339(view["budget"]["resets_at"].as_str().unwrap()).unwrap();
    assert_eq!(resets_at.time(), chrono::NaiveTime::MIN, "resets at 00:00 UTC");

    // An agent's budget counts open holds: two holds of 1.5 do not fit in 2.
    let agent: Value = send(
        &client,
        &server,
        reqwest::Method::POST,
        "/me/agents",
        &owner_key,
        json!({"name": "spender", "budget": {"amount": "2", "period": "total"}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let token: Value = send(
        &client,
        &server,
        reqwest::Method::POST,
        &format!("/me/agents/{}/token", agent["id"].as_str().unwrap()),
        &owner_key,
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    let token = token["access_token"].as_str().unwrap();
    let first = authorize(&client, &server, token, json!({"model": "m", "max_cost": "1.5"})).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["agent_id"], agent["id"]);
    let second = authorize(&client, &server, token, json!({"model": "m", "max_cost": "1.5"})).await;
    assert_eq!(error_code(second).await, (402, "budget_exceeded".to_owned()));
    // Settling the first (cost 0.5) frees the rest of its hold.
    usage(&client, &server, first["call_id"].as_str().unwrap(), "m", 5000, 0).await;
    let third = authorize(&client, &server, token, json!({"model": "m", "max_cost": "1.5"})).await;
    assert_eq!(third.status(), 200);
}

#[tokio::test]
async fn top_ups_are_human_only_idempotent_and_amounts_are_exact() {
    for database in TestDatabase::all().await {
        let server = start(&database, &[]);
        let client = client();
        let signup = client
            .post(server.url("/me/signup"))
            .json(&json!({"email": "owner@example.com", "password": "Owner-Pass-1"}))
            .send()
            .await
            .unwrap();
        let owner = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let topup = |cookie: String, body: Value| {
            let client = client.clone();
            let url = server.url("/me/credits/topups");
            async move { client.post(url).header("cookie", cookie).json(&body).send().await.unwrap() }
        };
        let first = topup(owner.clone(), json!({"amount": "250.50", "payment_reference": "pay_001"})).await;
        assert_eq!(first.status(), 201);
        let first: Value = first.json().await.unwrap();
        assert_eq!(amount(&first["balance"]), "250.50");
        assert!(first["topup_id"].as_str().unwrap().starts_with("top_"));
        // The same payment again: the same answer, credited once.
        let again: Value = topup(owner.clone(), json!({"amount": "250.50", "payment_reference": "pay_001"}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["topup_id"], first["topup_id"]);
        assert_eq!(again["balance"], first["balance"]);
        let conflict = topup(owner.clone(), json!({"amount": "300", "payment_reference": "pay_001"})).await;
        assert_eq!(error_code(conflict).await.0, 409);
        let second: Value = topup(
            owner.clone(),
            json!({"amount": {"currency": "inr", "amount": "0.000001"}, "payment_reference": "pay_002"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(amount(&second["balance"]), "250.500001", "{}", database.engine());

        // Bad amounts are 400.
        for bad in [
            json!("1.0000001"),
            json!("-5"),
            json!("0"),
            json!(10),
            json!(10.5),
            json!("abc"),
            json!({"currency": "usd", "amount": "1"}),
            json!("1e3"),
        ] {
            let response = topup(owner.clone(), json!({"amount": bad, "payment_reference": "pay_bad"})).await;
            assert_eq!(error_code(response).await.0, 400, "{bad}");
        }

        // Keys and agent tokens are 403 human_only, whatever their scopes.
        let key: Value = client
            .post(server.url("/v1/auth/account/api-keys"))
            .header("cookie", &owner)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = key["api_key"].as_str().unwrap();
        let by_key = client
            .post(server.url("/me/credits/topups"))
            .bearer_auth(key)
            .json(&json!({"amount": "1", "payment_reference": "k"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(by_key).await, (403, "human_only".to_owned()));
        let agent: Value = send(&client, &server, reqwest::Method::POST, "/me/agents", key, json!({"name": "a"}))
            .await
            .json()
            .await
            .unwrap();
        let token: Value = send(
            &client,
            &server,
            reqwest::Method::POST,
            &format!("/me/agents/{}/token", agent["id"].as_str().unwrap()),
            key,
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
        let by_token = client
            .post(server.url("/me/credits/topups"))
            .bearer_auth(token["access_token"].as_str().unwrap())
            .json(&json!({"amount": "1", "payment_reference": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(by_token).await, (403, "human_only".to_owned()));

        // Finance may top up; an auditor may not.
        for (email, role, expected) in [("fin@example.com", "finance", 201), ("aud@example.com", "auditor", 403)] {
            let added = client
                .post(server.url("/v1/auth/account/members"))
                .header("cookie", &owner)
                .json(&json!({"email": email, "role": role, "password": "Member-Pass-1"}))
                .send()
                .await
                .unwrap();
            assert_eq!(added.status(), 201);
            let login = client
                .post(server.url("/me/login"))
                .json(&json!({"email": email, "password": "Member-Pass-1"}))
                .send()
                .await
                .unwrap();
            let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
            let response = topup(cookie, json!({"amount": "1", "payment_reference": format!("pay_{role}")})).await;
            assert_eq!(response.status().as_u16(), expected, "{role}");
        }
    }
}

#[tokio::test]
async fn grants_take_an_idempotency_key_and_operators_are_checked() {
    let database = TestDatabase::sqlite();
    let server = start(&database, &[]);
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    let grant_with_key = |idempotency_key: &'static str, amount: &'static str| {
        client
            .post(server.url("/v1/admin/credits/grants"))
            .bearer_auth(OPERATOR_KEY)
            .header("idempotency-key", idempotency_key)
            .json(&json!({"org_id": org_id, "amount": amount, "reason": "promo"}))
            .send()
    };
    let first: Value = grant_with_key("grant-1", "10").await.unwrap().json().await.unwrap();
    let again: Value = grant_with_key("grant-1", "10").await.unwrap().json().await.unwrap();
    assert_eq!(first["grant_id"], again["grant_id"]);
    assert_eq!(amount(&account(&client, &server, &key).await["credit_balance"]), "10.00", "granted once");
    let conflict = grant_with_key("grant-1", "11").await.unwrap();
    assert_eq!(error_code(conflict).await, (409, "idempotency_conflict".to_owned()));

    let by_org = send(
        &client,
        &server,
        reqwest::Method::POST,
        "/v1/admin/credits/grants",
        &key,
        json!({"org_id": org_id, "amount": "1", "reason": "x"}),
    )
    .await;
    assert_eq!(error_code(by_org).await, (403, "operator_only".to_owned()));
    let unknown_org = send(
        &client,
        &server,
        reqwest::Method::POST,
        "/v1/admin/credits/grants",
        OPERATOR_KEY,
        json!({"org_id": "org_0000000000000000000000", "amount": "1", "reason": "x"}),
    )
    .await;
    assert_eq!(error_code(unknown_org).await, (404, "not_found".to_owned()));
    let bad_price = send(
        &client,
        &server,
        reqwest::Method::PUT,
        "/v1/admin/prices/m",
        OPERATOR_KEY,
        json!({"input_per_million": "-1", "output_per_million": "1"}),
    )
    .await;
    assert_eq!(error_code(bad_price).await.0, 400);
    let bad_model = send(
        &client,
        &server,
        reqwest::Method::PUT,
        "/v1/admin/prices/bad%20model",
        OPERATOR_KEY,
        json!({"input_per_million": "1", "output_per_million": "1"}),
    )
    .await;
    assert_eq!(error_code(bad_model).await.0, 400);
    let no_scope: Value = send(
        &client,
        &server,
        reqwest::Method::POST,
        "/v1/auth/account/api-keys",
        &key,
        json!({"scopes": ["account:read"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let refused = authorize(&client, &server, no_scope["api_key"].as_str().unwrap(), json!({"model": "m"})).await;
    assert_eq!(error_code(refused).await, (403, "insufficient_scope".to_owned()));
}

/// The whole path over HTTP: an agent token authorizes, the gateway reports usage, and the
/// auditor's and finance's answers agree with the account.
#[tokio::test]
async fn a_metered_agent_call_is_answered_by_audit_and_statements() {
    for database in TestDatabase::all().await {
        let server = start(&database, &[]);
        let client = client();
        let (org_id, key) = register(&client, &server, "Acme").await;
        set_price(&client, &server, "krutrim-2", "50", "150").await;
        grant(&client, &server, &org_id, "100").await;
        let agent: Value =
            send(&client, &server, reqwest::Method::POST, "/me/agents", &key, json!({"name": "nightly-reconciler"}))
                .await
                .json()
                .await
                .unwrap();
        let agent_id = agent["id"].as_str().unwrap();
        let token: Value =
            send(&client, &server, reqwest::Method::POST, &format!("/me/agents/{agent_id}/token"), &key, json!({}))
                .await
                .json()
                .await
                .unwrap();
        let token = token["access_token"].as_str().unwrap();
        let authorized: Value = authorize(&client, &server, token, json!({"model": "krutrim-2", "max_cost": "1"}))
            .await
            .json()
            .await
            .unwrap();
        let call_id = authorized["call_id"].as_str().unwrap();
        assert_eq!(authorized["agent_id"], agent_id);
        usage(&client, &server, call_id, "krutrim-2", 1234, 567).await;

        let audit = audit_call(&client, &server, &key, call_id).await;
        assert_eq!(audit["agent"]["id"], agent_id, "{}: {audit}", database.engine());
        assert_eq!(audit["agent"]["name"], "nightly-reconciler");
        assert_eq!(audit["act_for"], org_id.as_str());
        assert_eq!(audit["payer_org_id"], org_id.as_str());
        assert_eq!(audit["credential"]["kind"], "agent_token");
        assert_eq!(amount(&audit["cost"]), "0.14675");
        assert_eq!(event_types(&audit), ["CallAuthorized", "UsageRecorded"]);

        let statement = todays_statement(&client, &server, &key).await;
        let balance = account(&client, &server, &key).await;
        assert_eq!(statement["closing_balance"], balance["credit_balance"], "{statement}");
        assert_eq!(amount(&balance["credit_balance"]), "99.85325");
    }
}

#[tokio::test]
async fn concurrent_calls_without_max_cost_hold_the_default_and_never_overspend() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let server = start(&database, &[]);
        let client = client();
        let (org_id, key) = register(&client, &server, "Acme").await;
        // ₹100/M each way, a default hold of ₹1: 10,000 output tokens cost exactly the hold.
        set_price_and_hold(&client, &server, "m", "100", "100", "1.00").await;
        grant(&client, &server, &org_id, "10.00").await;
        let attempts = (0..100).map(|_| {
            let (client, key, url) = (client.clone(), key.clone(), server.url("/v1/authorize"));
            tokio::spawn(async move {
                let response = client.post(url).bearer_auth(key).json(&json!({"model": "m"})).send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        });
        let mut authorized = Vec::new();
        for attempt in futures::future::join_all(attempts).await {
            let (status, body) = attempt.unwrap();
            match status {
                200 => authorized.push(body),
                402 => assert_eq!(body["error"]["code"], "insufficient_credits", "{engine}: {body}"),
                other => panic!("{engine}: unexpected {other}: {body}"),
            }
        }
        assert_eq!(authorized.len(), 10, "{engine}: ₹10 holds exactly ten calls of ₹1");
        for call in &authorized {
            assert_eq!(amount(&call["hold"]), "1.00", "{engine}: {call}");
            let call_id = call["call_id"].as_str().unwrap();
            // Short and opaque like every other id: no binding sealed into it.
            assert!(call_id.starts_with("call_") && call_id.len() < 40, "{engine}: {call_id}");
            let settled = usage(&client, &server, call_id, "m", 0, 10_000).await;
            assert_eq!(settled.status(), 200, "{engine}");
        }
        let balance = account(&client, &server, &key).await;
        assert_eq!(amount(&balance["credit_balance"]), "0.00", "{engine}: never below zero");
        let refused = authorize(&client, &server, &key, json!({"model": "m"})).await;
        assert_eq!(error_code(refused).await, (402, "insufficient_credits".to_owned()), "{engine}");
    }
}

#[tokio::test]
async fn a_call_that_costs_more_than_its_hold_is_billed_in_full_and_the_statement_shows_it() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let mut server = start(&database, &[]);
        let client = client();
        let (org_id, key) = register(&client, &server, "Acme").await;
        set_price_and_hold(&client, &server, "m", "10", "20", "1.00").await;
        grant(&client, &server, &org_id, "5").await;
        let authorized: Value = authorize(&client, &server, &key, json!({"model": "m"})).await.json().await.unwrap();
        let call_id = authorized["call_id"].as_str().unwrap().to_owned();
        // The price changes after the authorization: the call keeps the price it was given.
        set_price(&client, &server, "m", "1000", "1000").await;
        // The hold is in the log: a restarted node still knows the call.
        server.kill();
        let server = start(&database, &[]);
        // 100,000 input at ₹10/M + 250,000 output at ₹20/M = 1 + 5 = ₹6, past the ₹1 hold.
        let settled = usage_with_status(&client, &server, &call_id, "m", 100_000, 250_000, "cancelled").await;
        assert_eq!(settled.status(), 200, "{engine}");
        let settled: Value = settled.json().await.unwrap();
        assert_eq!(amount(&settled["cost"]), "6.00", "{engine}: a cancelled call bills what it served");
        assert_eq!(amount(&settled["balance"]), "-1.00", "{engine}: below zero by the excess only");
        let replay: Value = usage_with_status(&client, &server, &call_id, "m", 100_000, 250_000, "cancelled")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(replay, settled, "{engine}: same body again, same answer, billed once");
        let conflict = usage_with_status(&client, &server, &call_id, "m", 100_000, 250_000, "failed").await;
        assert_eq!(conflict.status(), 409, "{engine}");
        let statement = todays_statement(&client, &server, &key).await;
        assert_eq!(amount(&statement["closing_balance"]), "-1.00", "{engine}: {statement}");
    }
}

#[tokio::test]
async fn usage_status_is_one_of_three_and_each_bills_its_tokens() {
    let database = TestDatabase::sqlite();
    let server = start(&database, &[]);
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    set_price(&client, &server, "m", "1000", "1000").await;
    grant(&client, &server, &org_id, "100").await;
    let call = || async {
        let body = json!({"model": "m", "max_cost": "5"});
        let authorized: Value = authorize(&client, &server, &key, body).await.json().await.unwrap();
        authorized["call_id"].as_str().unwrap().to_owned()
    };
    for unknown in ["ok", "SUCCEEDED", "", "timeout"] {
        let call_id = call().await;
        let refused = usage_with_status(&client, &server, &call_id, "m", 1, 1, unknown).await;
        let (status, body) = (refused.status().as_u16(), refused.text().await.unwrap());
        assert_eq!(status, 400, "{unknown}: {body}");
        assert!(body.contains("succeeded") && body.contains("cancelled"), "lists the allowed values: {body}");
    }
    for status in ["succeeded", "failed", "cancelled"] {
        let call_id = call().await;
        let settled: Value =
            usage_with_status(&client, &server, &call_id, "m", 500, 500, status).await.json().await.unwrap();
        assert_eq!(amount(&settled["cost"]), "1.00", "{status}: 1,000 tokens at ₹1,000/M");
    }
}

/// A server started without an operator key says so on every operator endpoint, whatever is
/// presented (the README's first walk-through got "malformed API key" for its price step).
#[tokio::test]
async fn operator_endpoints_without_an_operator_key_say_why() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let price = json!({"input_per_million": "1", "output_per_million": "1"});
    for credential in [Some("operator-secret-for-tests-0123456789abcdef"), Some("not-a-key"), None] {
        let mut request = client.put(server.url("/v1/admin/prices/m")).json(&price);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{credential:?}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("BAHI_OPERATOR_KEY"), "{credential:?}: {message}");
    }
}
