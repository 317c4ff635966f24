//! Orgs, humans and API keys through a spawned server: the whole key lifecycle, scopes,
//! cross-org isolation, rate limits, sessions, members.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    TEST_CLOCK_OPERATOR_KEY, TestDatabase, TestServer, advance_clock, client, error_code, register, with_test_clock,
};
use reqwest::{Client, Response};
use serde_json::{Value, json};

async fn create_key(client: &Client, server: &TestServer, key: &str, body: Value) -> Value {
    let response =
        client.post(server.url("/v1/auth/account/api-keys")).bearer_auth(key).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

async fn list_keys(client: &Client, server: &TestServer, key: &str) -> Vec<Value> {
    let response = client.get(server.url("/v1/auth/account/api-keys")).header("x-api-key", key).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["data"].as_array().unwrap().clone()
}

async fn account_status(client: &Client, server: &TestServer, key: &str) -> u16 {
    client.get(server.url("/v1/auth/account")).bearer_auth(key).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn create_list_revoke_delete_and_rotate() {
    for database in TestDatabase::all().await {
        let server = TestServer::start(&database.url());
        let client = client();
        let (_, first_key) = register(&client, &server, "Acme").await;

        let created = create_key(
            &client,
            &server,
            &first_key,
            json!({
                "name": "production-worker",
                "expires_at": "2099-01-01T00:00:00Z",
                "scopes": ["inference", "account:read"],
                "rate_limit": {"requests": 100, "interval_seconds": 60},
                "budget": {"amount": "500.00", "period": "month"},
                "metadata": {"team": "engineering"}
            }),
        )
        .await;
        let secret = created["api_key"].as_str().unwrap().to_owned();
        let key_id = created["api_key_id"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("bahi_live_"));
        assert_eq!(created["name"], "production-worker");
        // Every time is answered with microseconds, as stored, whatever its value.
        assert_eq!(created["expires_at"], "2099-01-01T00:00:00.000000Z");
        let created_at = created["created_at"].as_str().unwrap();
        assert!(
            created_at.len() == 27 && created_at.ends_with('Z') && created_at.as_bytes()[19] == b'.',
            "{created_at}"
        );
        assert_eq!(created["scopes"], json!(["inference", "account:read"]));
        assert_eq!(created["status"], "active");
        // What goes in comes out the same way: the money object an answer shows is accepted
        // as input (a bare decimal string is accepted too), and settings read back as sent.
        let money = json!({"currency": "inr", "amount": "500.00"});
        assert_eq!(created["budget"]["amount"], money);
        assert_eq!(created["rate_limit"], json!({"requests": 100, "interval_seconds": 60}));
        let (_, other_org_key) = register(&client, &server, "Shapes").await;
        let same_shape =
            create_key(&client, &server, &other_org_key, json!({"budget": {"amount": money, "period": "month"}})).await;
        assert_eq!(same_shape["budget"]["amount"], money);
        assert!(secret.starts_with(created["prefix"].as_str().unwrap()));

        // The new key works with both headers.
        assert_eq!(account_status(&client, &server, &secret).await, 200);
        let by_header = client.get(server.url("/v1/auth/account")).header("x-api-key", &secret).send().await.unwrap();
        assert_eq!(by_header.status(), 200);

        // The list shows it (and the first key) without any secret.
        let listed = list_keys(&client, &server, &first_key).await;
        assert_eq!(listed.len(), 2);
        let text = serde_json::to_string(&listed).unwrap();
        assert!(!text.contains(&secret) && !text.contains(&first_key), "a listing never contains a secret");
        let entry = listed.iter().find(|key| key["api_key_id"] == key_id.as_str()).unwrap();
        assert_eq!(entry["metadata"], json!({"team": "engineering"}));
        assert_eq!(entry["rate_limit"], json!({"requests": 100, "interval_seconds": 60}));
        assert_eq!(entry["budget"]["amount"], json!({"currency": "inr", "amount": "500.00"}));
        assert_eq!(entry["usage"], json!({"calls": 0, "cost": {"currency": "inr", "amount": "0.00"}}));
        assert!(entry["last_used_at"].is_string(), "the key was just used: {entry}");
        assert!(entry["created_at"].is_string());

        // Rotation (seed 002): create the replacement, switch, revoke the old one.
        let replacement = create_key(&client, &server, &first_key, json!({"name": "production-worker-2"})).await;
        let new_secret = replacement["api_key"].as_str().unwrap().to_owned();
        assert_eq!(account_status(&client, &server, &new_secret).await, 200);
        let revoked = client
            .post(server.url(&format!("/v1/auth/account/api-keys/{key_id}/revoke")))
            .bearer_auth(&first_key)
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), 200);
        let revoked: Value = revoked.json().await.unwrap();
        assert_eq!(revoked["status"], "revoked");
        assert_eq!(
            account_status(&client, &server, &secret).await,
            401,
            "{}: revoked key is 401 at once",
            database.engine()
        );
        assert_eq!(account_status(&client, &server, &new_secret).await, 200);
        // Revoking again is harmless.
        let again = client
            .post(server.url(&format!("/v1/auth/account/api-keys/{key_id}/revoke")))
            .bearer_auth(&first_key)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 200);

        // DELETE: 401 at once and gone from the list.
        let replacement_id = replacement["api_key_id"].as_str().unwrap();
        let deleted = client
            .delete(server.url(&format!("/v1/auth/account/api-keys/{replacement_id}")))
            .bearer_auth(&first_key)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 200);
        assert_eq!(account_status(&client, &server, &new_secret).await, 401);
        let listed = list_keys(&client, &server, &first_key).await;
        assert!(listed.iter().all(|key| key["api_key_id"] != replacement_id));
        assert!(listed.iter().any(|key| key["api_key_id"] == key_id.as_str() && key["status"] == "revoked"));

        // After a restart everything is the same (it was all folded from the log).
        drop(server);
        let server = TestServer::start(&database.url());
        assert_eq!(account_status(&client, &server, &secret).await, 401);
        assert_eq!(account_status(&client, &server, &new_secret).await, 401);
        assert_eq!(account_status(&client, &server, &first_key).await, 200);
    }
}

#[tokio::test]
async fn keys_expire_and_bad_settings_are_400() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &with_test_clock());
    let client = client();
    let (_, key) = register(&client, &server, "Acme").await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let expiring = create_key(&client, &server, &key, json!({"expires_at": soon})).await;
    let expiring = expiring["api_key"].as_str().unwrap().to_owned();
    assert_eq!(account_status(&client, &server, &expiring).await, 200);
    advance_clock(&client, &server, TEST_CLOCK_OPERATOR_KEY, 61).await;
    assert_eq!(account_status(&client, &server, &expiring).await, 401);

    let url = server.url("/v1/auth/account/api-keys");
    for (body, expected) in [
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "invalid_request"),
        (json!({"expires_at": "tomorrow"}), "invalid_request"),
        (json!({"scopes": ["inference", "admin"]}), "invalid_request"),
        (json!({"scopes": []}), "invalid_request"),
        (json!({"metadata": [1, 2]}), "invalid_request"),
        (json!({"metadata": {"blob": "x".repeat(5000)}}), "invalid_request"),
        (json!({"rate_limit": {"requests": 0, "interval_seconds": 60}}), "invalid_request"),
        (json!({"budget": {"amount": "1.0000001", "period": "day"}}), "invalid_request"),
        (json!({"budget": {"amount": "10", "period": "week"}}), "invalid_request"),
        (json!({"name": ""}), "invalid_request"),
        (json!({"nmae": "typo"}), "invalid_request"),
    ] {
        let response = client.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
        assert_eq!(error_code(response).await, (400, expected.to_owned()), "{body}");
    }
    let response = client.get(server.url("/v1/auth/account/api-keys?limit=0")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(error_code(response).await.0, 400);
    let response =
        client.post(server.url("/v1/auth/account/api-keys/not-an-id/revoke")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(error_code(response).await, (400, "invalid_id".to_owned()));
}

#[tokio::test]
async fn scopes_are_enforced_and_other_orgs_are_404() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let (_, owner_key) = register(&client, &server, "Acme").await;
    let read_only = create_key(&client, &server, &owner_key, json!({"scopes": ["account:read"]})).await;
    let read_only = read_only["api_key"].as_str().unwrap().to_owned();
    assert_eq!(account_status(&client, &server, &read_only).await, 200);
    let response = client
        .post(server.url("/v1/auth/account/api-keys"))
        .bearer_auth(&read_only)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "insufficient_scope".to_owned()));
    let inference_only = create_key(&client, &server, &owner_key, json!({"scopes": ["inference", "keys:write"]})).await;
    let inference_only = inference_only["api_key"].as_str().unwrap();
    // A key cannot grant a scope it does not hold, nor an operator scope.
    let response = client
        .post(server.url("/v1/auth/account/api-keys"))
        .bearer_auth(inference_only)
        .json(&json!({"scopes": ["audit:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "insufficient_scope".to_owned()));
    let response = client
        .post(server.url("/v1/auth/account/api-keys"))
        .bearer_auth(&owner_key)
        .json(&json!({"scopes": ["usage:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await.0, 403);
    let response = client.get(server.url("/v1/auth/account")).bearer_auth(inference_only).send().await.unwrap();
    assert_eq!(error_code(response).await, (403, "insufficient_scope".to_owned()));

    // Another org can neither see, revoke nor delete my key: 404, as if it did not exist.
    let (_, other_key) = register(&client, &server, "Other").await;
    let mine = list_keys(&client, &server, &owner_key).await;
    let my_key_id = mine[0]["api_key_id"].as_str().unwrap();
    for request in [
        client.post(server.url(&format!("/v1/auth/account/api-keys/{my_key_id}/revoke"))),
        client.delete(server.url(&format!("/v1/auth/account/api-keys/{my_key_id}"))),
        client.get(server.url(&format!("/v1/auth/account/api-keys/{my_key_id}"))),
    ] {
        let response = request.bearer_auth(&other_key).send().await.unwrap();
        assert_eq!(error_code(response).await, (404, "not_found".to_owned()));
    }
    let unknown = "key_0000000000000000000000";
    let response = client
        .post(server.url(&format!("/v1/auth/account/api-keys/{unknown}/revoke")))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (404, "not_found".to_owned()));
    assert_eq!(list_keys(&client, &server, &other_key).await.len(), 1);
    assert_eq!(account_status(&client, &server, &owner_key).await, 200);
}

#[tokio::test]
async fn rate_limits_carry_headers_and_refuse_with_429() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let (_, owner_key) = register(&client, &server, "Acme").await;
    let limited =
        create_key(&client, &server, &owner_key, json!({"rate_limit": {"requests": 3, "interval_seconds": 60}})).await;
    let limited = limited["api_key"].as_str().unwrap().to_owned();
    for expected_remaining in ["2", "1", "0"] {
        let response = client.get(server.url("/v1/auth/account")).bearer_auth(&limited).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ratelimit-limit"], "3");
        assert_eq!(response.headers()["x-ratelimit-remaining"], expected_remaining);
        let reset: i64 = response.headers()["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(reset >= chrono::Utc::now().timestamp());
    }
    let refused = client.get(server.url("/v1/auth/account")).bearer_auth(&limited).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "one token per 20 s: {retry_after}");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(error_code(refused).await, (429, "rate_limited".to_owned()));
    // Other keys have their own buckets; every authenticated answer carries the headers.
    let response = client.get(server.url("/v1/auth/account")).bearer_auth(&owner_key).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-ratelimit-limit"));
}

#[tokio::test]
async fn agent_register_is_rate_limited_per_client_address() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_ANONYMOUS_RATE_LIMIT", "2/60")]);
    let client = client();
    for _ in 0..2 {
        let response = client.post(server.url("/v1/auth/agent-register")).json(&json!({})).send().await.unwrap();
        assert_eq!(response.status(), 201);
    }
    let refused = client.post(server.url("/v1/auth/agent-register")).json(&json!({})).send().await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_code(refused).await, (429, "rate_limited".to_owned()));
}

fn session_cookie(response: &Response) -> String {
    let header = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        header.contains("HttpOnly") && header.contains("SameSite=Lax") && header.contains("Max-Age=2592000"),
        "{header}"
    );
    header.split(';').next().unwrap().to_owned()
}

async fn with_cookie(client: &Client, server: &TestServer, cookie: &str, path: &str) -> u16 {
    client.get(server.url(path)).header("cookie", cookie).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn signup_login_logout_and_logout_everywhere() {
    for database in TestDatabase::all().await {
        let server = TestServer::start(&database.url());
        let client = client();
        let signup = client
            .post(server.url("/me/signup"))
            .json(&json!({"email": "Asha@Example.com", "password": "Correct-Horse-9", "org_name": "Asha Labs"}))
            .send()
            .await
            .unwrap();
        assert_eq!(signup.status(), 201);
        let first_session = session_cookie(&signup);
        let body: Value = signup.json().await.unwrap();
        assert_eq!(body["email"], "asha@example.com");
        assert_eq!(body["role"], "owner");

        let account: Value = client
            .get(server.url("/v1/auth/account"))
            .header("cookie", &first_session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(account["display_name"], "Asha Labs");
        assert_eq!(
            account["members"],
            json!([{"user_id": body["user_id"], "email": "asha@example.com", "role": "owner"}])
        );

        // The same email cannot sign up twice; a wrong password cannot log in.
        let again = client
            .post(server.url("/me/signup"))
            .json(&json!({"email": "asha@example.com", "password": "Correct-Horse-9"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(again).await, (409, "email_taken".to_owned()));
        let wrong = client
            .post(server.url("/me/login"))
            .json(&json!({"email": "asha@example.com", "password": "Wrong-Horse-9"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(wrong).await, (401, "unauthorized".to_owned()));
        let nobody = client
            .post(server.url("/me/login"))
            .json(&json!({"email": "nobody@example.com", "password": "Wrong-Horse-9"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(nobody).await, (401, "unauthorized".to_owned()));
        let weak = client
            .post(server.url("/me/signup"))
            .json(&json!({"email": "b@example.com", "password": "short"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(weak).await.0, 400);
        // Length, not composition: a passphrase passes, a well-known password does not.
        let signup = |email: &'static str, password: &'static str| {
            client.post(server.url("/me/signup")).json(&json!({"email": email, "password": password})).send()
        };
        assert_eq!(signup("c@example.com", "correct horse battery staple").await.unwrap().status(), 201);
        assert_eq!(error_code(signup("d@example.com", "Password1234").await.unwrap()).await.0, 400);

        let login = |password: &'static str| {
            client
                .post(server.url("/me/login"))
                .json(&json!({"email": "ASHA@example.com", "password": password}))
                .send()
        };
        let second = login("Correct-Horse-9").await.unwrap();
        assert_eq!(second.status(), 200);
        let second_session = session_cookie(&second);
        let third_session = session_cookie(&login("Correct-Horse-9").await.unwrap());

        // Logout ends only this session.
        let logout = client.post(server.url("/me/logout")).header("cookie", &first_session).send().await.unwrap();
        assert_eq!(logout.status(), 200);
        assert!(logout.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
        assert_eq!(with_cookie(&client, &server, &first_session, "/v1/auth/account").await, 401);
        assert_eq!(with_cookie(&client, &server, &second_session, "/v1/auth/account").await, 200);

        // Logout everywhere ends every session of the user.
        let everywhere =
            client.post(server.url("/me/logout-all")).header("cookie", &second_session).send().await.unwrap();
        assert_eq!(everywhere.status(), 200);
        assert_eq!(with_cookie(&client, &server, &second_session, "/v1/auth/account").await, 401);
        assert_eq!(
            with_cookie(&client, &server, &third_session, "/v1/auth/account").await,
            401,
            "{}",
            database.engine()
        );
        // A new login works again.
        let fourth = session_cookie(&login("Correct-Horse-9").await.unwrap());
        assert_eq!(with_cookie(&client, &server, &fourth, "/v1/auth/account").await, 200);

        // An API key cannot log out (there is no session to end).
        let (_, key) = register(&client, &server, "Keyed").await;
        let response = client.post(server.url("/me/logout")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(error_code(response).await, (403, "human_only".to_owned()));
    }
}

#[tokio::test]
async fn an_owner_adds_members_whose_roles_limit_them() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": "owner@example.com", "password": "Owner-Pass-1"}))
        .send()
        .await
        .unwrap();
    let owner = session_cookie(&signup);
    let added = client
        .post(server.url("/v1/auth/account/members"))
        .header("cookie", &owner)
        .json(&json!({"email": "fin@example.com", "role": "finance", "password": "Finance-Pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let bad_role = client
        .post(server.url("/v1/auth/account/members"))
        .header("cookie", &owner)
        .json(&json!({"email": "x@example.com", "role": "emperor", "password": "Finance-Pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad_role).await.0, 400);

    let finance = client
        .post(server.url("/me/login"))
        .json(&json!({"email": "fin@example.com", "password": "Finance-Pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(finance.status(), 200);
    let finance = session_cookie(&finance);
    let account: Value = client
        .get(server.url("/v1/auth/account"))
        .header("cookie", &finance)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roles: Vec<&str> =
        account["members"].as_array().unwrap().iter().map(|member| member["role"].as_str().unwrap()).collect();
    assert_eq!(roles.len(), 2);
    assert!(roles.contains(&"owner") && roles.contains(&"finance"));

    // Finance may not create keys nor add members; the owner may create keys by session.
    let response = client
        .post(server.url("/v1/auth/account/api-keys"))
        .header("cookie", &finance)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "insufficient_scope".to_owned()));
    let response = client
        .post(server.url("/v1/auth/account/members"))
        .header("cookie", &finance)
        .json(&json!({"email": "y@example.com", "role": "member", "password": "Member-Pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await.0, 403);
    let response = client
        .post(server.url("/v1/auth/account/api-keys"))
        .header("cookie", &owner)
        .json(&json!({"name": "console"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // An API key cannot add members: that is for a human owner.
    let key: Value = response.json().await.unwrap();
    let response = client
        .post(server.url("/v1/auth/account/members"))
        .bearer_auth(key["api_key"].as_str().unwrap())
        .json(&json!({"email": "z@example.com", "role": "member", "password": "Member-Pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "human_only".to_owned()));
}

#[tokio::test]
async fn the_database_holds_no_raw_key_and_no_raw_password() {
    let database = TestDatabase::sqlite();
    let mut server = TestServer::start(&database.url());
    let client = client();
    let (_, first_key) = register(&client, &server, "Acme").await;
    let created = create_key(&client, &server, &first_key, json!({"name": "scan me"})).await;
    let second_key = created["api_key"].as_str().unwrap().to_owned();
    let password = "Very-Secret-Pass-42";
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": "scan@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    let cookie = session_cookie(&signup);
    let cookie_value = cookie.split_once('=').unwrap().1.to_owned();
    server.terminate();

    let common::TestDatabase::Sqlite { path, .. } = &database else { unreachable!() };
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        if let Ok(content) = std::fs::read(&file) {
            bytes.extend(content);
        }
    }
    assert!(bytes.len() > 4096, "the database was read");
    let contains = |needle: &str| bytes.windows(needle.len()).any(|window| window == needle.as_bytes());
    for secret in [first_key.as_str(), second_key.as_str(), password, cookie_value.as_str()] {
        assert!(!contains(secret), "found a raw secret in the database file");
    }
    // The hash of the key is there, so the scan can find what it looks for.
    let hash = bahi_domain::credential::SecretHash::of(&second_key).to_hex();
    assert!(contains(&hash));
}

#[tokio::test]
async fn last_use_is_coalesced_into_at_most_one_event_per_key_per_minute() {
    for database in TestDatabase::all().await {
        let mut server = TestServer::start(&database.url());
        let client = client();
        let (_, key) = register(&client, &server, "Acme").await;
        for _ in 0..25 {
            assert_eq!(account_status(&client, &server, &key).await, 200);
        }
        // A graceful stop flushes what the node holds in memory.
        assert!(server.terminate().success());
        let store = bahi::store::Store::open(&database.url()).await.unwrap();
        let events = bahi::store::EventStore::read_after(&store, 0, 1000).await.unwrap();
        let uses = events.iter().filter(|event| event.event_type == "ApiKeyUsed").count();
        assert_eq!(uses, 1, "{}: 25 uses within a minute are one event", database.engine());
        drop(store);
        let server = TestServer::start(&database.url());
        let listed = list_keys(&client, &server, &key).await;
        assert!(listed[0]["last_used_at"].is_string(), "the last use survived the restart");
    }
}

#[tokio::test]
async fn legacy_prefixes_stay_valid_after_the_prefix_changes() {
    let database = TestDatabase::sqlite();
    let client = client();
    let server = TestServer::start_with(&database.url(), &[("BAHI_KEY_PREFIX", "ob")]);
    let (_, old_key) = register(&client, &server, "Acme").await;
    assert!(old_key.starts_with("ob_live_"));
    drop(server);

    let server =
        TestServer::start_with(&database.url(), &[("BAHI_KEY_PREFIX", "br"), ("BAHI_LEGACY_KEY_PREFIXES", "ob")]);
    assert_eq!(account_status(&client, &server, &old_key).await, 200, "a legacy key stays valid");
    let new_key = create_key(&client, &server, &old_key, json!({"name": "new"})).await;
    assert!(new_key["api_key"].as_str().unwrap().starts_with("br_live_"));
    drop(server);

    let server = TestServer::start_with(&database.url(), &[("BAHI_KEY_PREFIX", "br")]);
    assert_eq!(account_status(&client, &server, &old_key).await, 401, "a prefix no longer configured is refused");
}
