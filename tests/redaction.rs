//! Events served to people carry no secret material (issue 23, defect 3): the audit log
//! shows that a password was set, a session started or a key was made, never the argon2
//! hash, the session's or key's hash, or a sealed private key. The stored bytes are what
//! the chain hashed, so `bahi verify` still passes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDatabase, TestServer, client, run_cli};
use reqwest::{Client, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const OPERATOR_KEY: &str = "operator-secret-for-tests-0123456789abcdef";

fn cookie(response: &Response) -> String {
    response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

async fn post(client: &Client, server: &TestServer, cookie: &str, path: &str, body: Value) -> Value {
    let response = client.post(server.url(path)).header("cookie", cookie).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

/// Every field named in `redaction::SECRET_FIELDS` that a page shows, with its value.
fn secret_fields<'a>(value: &'a Value, found: &mut Vec<(&'a str, &'a Value)>) {
    match value {
        Value::Object(fields) => {
            for (name, value) in fields {
                if bahi_domain::redaction::SECRET_FIELDS.contains(&name.as_str()) {
                    found.push((name, value));
                }
                secret_fields(value, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| secret_fields(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn audit_events_show_no_password_session_or_key_hashes_and_the_chain_still_verifies() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
        let client = client();
        let signup = client
            .post(server.url("/me/signup"))
            .json(&json!({"email": "owner@example.com", "password": "Correct-Horse-9", "org_name": "Acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!(signup.status(), 201, "{engine}");
        let session = cookie(&signup);
        let org_id = signup.json::<Value>().await.unwrap()["org_id"].as_str().unwrap().to_owned();
        let login = client
            .post(server.url("/me/login"))
            .json(&json!({"email": "owner@example.com", "password": "Correct-Horse-9"}))
            .send()
            .await
            .unwrap();
        let second_session = cookie(&login);
        let key = post(&client, &server, &session, "/v1/auth/account/api-keys", json!({"name": "ci"})).await;
        let key = key["api_key"].as_str().unwrap().to_owned();
        let agent =
            post(&client, &server, &session, "/me/agents", json!({"name": "auditor", "scopes": ["audit:read"]})).await;
        let token_path = format!("/me/agents/{}/token", agent["id"].as_str().unwrap());
        let token = post(&client, &server, &session, &token_path, json!({})).await;
        let token = token["access_token"].as_str().unwrap().to_owned();
        let session_secrets: Vec<String> = [&session, &second_session]
            .iter()
            .map(|cookie| cookie.split_once('=').unwrap().1.to_owned())
            .chain([key.clone()])
            .map(|secret| hex::encode(Sha256::digest(secret.as_bytes())))
            .collect();

        let readers = [
            ("agent token with audit:read", format!("Bearer {token}"), "/v1/audit/events?limit=1000".to_owned()),
            ("api key", format!("Bearer {key}"), "/v1/audit/events?limit=1000".to_owned()),
            ("operator", format!("Bearer {OPERATOR_KEY}"), format!("/v1/audit/events?limit=1000&org_id={org_id}")),
        ];
        for (who, authorization, path) in readers {
            let mut body = String::new();
            for _ in 0..50 {
                let response =
                    client.get(server.url(&path)).header("authorization", &authorization).send().await.unwrap();
                assert_eq!(response.status(), 200, "{engine}: {who}");
                body = response.text().await.unwrap();
                if body.contains("AgentTokenMinted") {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let page: Value = serde_json::from_str(&body).unwrap();
            let types: Vec<&str> =
                page["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
            for expected in ["UserSignedUp", "SessionStarted", "ApiKeyCreated", "AgentTokenMinted"] {
                assert!(types.contains(&expected), "{engine}: {who}: {types:?}");
            }
            assert!(!body.contains("$argon2"), "{engine}: {who} reads a password hash: {body}");
            for secret in &session_secrets {
                assert!(!body.contains(secret.as_str()), "{engine}: {who} reads a session or key hash");
            }
            let mut found = Vec::new();
            secret_fields(&page, &mut found);
            assert!(found.len() >= 4, "{engine}: {who}: the fields are shown, redacted: {found:?}");
            for (name, value) in found {
                assert_eq!(value, bahi_domain::redaction::REDACTED, "{engine}: {who}: {name}");
            }
        }
        drop(server);
        let (code, stdout, stderr) = run_cli(&["verify", "--database", &database.url()]);
        assert_eq!(code, 0, "{engine}: {stdout}{stderr}");
    }
}
