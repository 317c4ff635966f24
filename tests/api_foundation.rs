//! Black-box tests of the foundation through a spawned `bahi serve` on port 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use bahi::store::{EventStore, Store};

use common::{TestDatabase, TestServer, client, register, run_cli};
use serde_json::{Value, json};

async fn assert_error(response: reqwest::Response, status: u16, error_type: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let request_id =
        response.headers().get("x-request-id").expect("x-request-id on every response").to_str().unwrap().to_owned();
    // The Anthropic SDK reads `request-id`; OpenAI's and most tools `x-request-id`.
    assert_eq!(response.headers().get("request-id").expect("request-id on every response"), request_id.as_str());
    assert_eq!(response.headers().get("content-type").unwrap(), "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], error_type, "{body}");
    assert_eq!(body["error"]["type"], bahi::transport::error_class(status), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty() && !message.contains("Failed to"), "framework wording: {message}");
    assert_eq!(body["error"]["request_id"], request_id.as_str());
    body
}

#[tokio::test]
async fn healthz_register_and_account_work_with_no_configuration() {
    for database in TestDatabase::all().await {
        let server = TestServer::start(&database.url());
        let client = client();
        let health = client.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert!(health.headers().contains_key("x-request-id"));

        let response = client
            .post(server.url("/v1/auth/agent-register"))
            .json(&json!({"org_name": "Acme Batch Jobs", "agent_name": "ingest-pipeline"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        let org_id = body["org_id"].as_str().unwrap();
        let api_key = body["api_key"].as_str().unwrap();
        assert!(org_id.starts_with("org_"));
        assert!(body["api_key_id"].as_str().unwrap().starts_with("key_"));
        assert!(api_key.starts_with("bahi_live_") && api_key.len() >= "bahi_live_".len() + 27);

        for header in ["authorization", "x-api-key"] {
            let value = if header == "authorization" { format!("Bearer {api_key}") } else { api_key.to_owned() };
            let account = client.get(server.url("/v1/auth/account")).header(header, value).send().await.unwrap();
            assert_eq!(account.status(), 200, "{header}");
            let account: Value = account.json().await.unwrap();
            assert_eq!(account["org_id"], org_id);
            assert_eq!(account["display_name"], "Acme Batch Jobs");
            assert_eq!(account["plan"], "free");
            assert_eq!(account["environment"], "live");
            assert_eq!(account["credit_balance"], json!({"currency": "inr", "amount": "0.00"}));
            assert!(account["members"].is_array());
        }

        // Every body field is optional, and so is the body.
        let empty = client.post(server.url("/v1/auth/agent-register")).send().await.unwrap();
        assert_eq!(empty.status(), 201, "{}", database.engine());

        let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let appended: i64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("bahi_events_appended_total "))
            .and_then(|value| value.parse().ok())
            .unwrap();
        let health: Value = client.get(server.url("/healthz")).send().await.unwrap().json().await.unwrap();
        // Two registrations (two events each) and the embedded issuer's first signing key,
        // plus a coalesced key-use record if the five-second flush has run.
        assert!(appended >= 5, "{metrics}");
        assert_eq!(health["log_position"], appended, "this process appended the whole log");
        assert!(metrics.contains("bahi_writer_commit_seconds_bucket"));
        assert!(metrics.contains("bahi_projection_lag_events"));
    }
}

#[tokio::test]
async fn bad_requests_get_the_json_error_body() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let register_url = server.url("/v1/auth/agent-register");

    let malformed = client
        .post(&register_url)
        .header("content-type", "application/json")
        .body("{\"org_name\": ")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "invalid_json").await;

    let wrong_type = client.post(&register_url).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_error(wrong_type, 415, "unsupported_media_type").await;

    let unknown_field = client.post(&register_url).json(&json!({"org_nmae": "typo"})).send().await.unwrap();
    let body = assert_error(unknown_field, 400, "invalid_request").await;
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with("invalid request body: org_nmae: unknown field"),
        "{body}"
    );

    let wrong_field_type = client.post(&register_url).json(&json!({"org_name": 42})).send().await.unwrap();
    let body = assert_error(wrong_field_type, 400, "invalid_request").await;
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with("invalid request body: org_name: invalid type"),
        "{body}"
    );

    let blank_name = client.post(&register_url).json(&json!({"org_name": "  "})).send().await.unwrap();
    assert_error(blank_name, 400, "invalid_request").await;

    // Just over the 1 MiB limit, on a connection of its own: the server answers 413 without
    // reading the body and closes that connection.
    let oversized = format!("{{\"org_name\": \"{}\"}}", "x".repeat(1024 * 1024 + 1024));
    let too_large = common::client()
        .post(&register_url)
        .header("content-type", "application/json")
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_error(too_large, 413, "request_too_large").await;

    let missing = client.get(server.url("/v1/no-such-thing")).send().await.unwrap();
    assert_error(missing, 404, "not_found").await;

    let wrong_method = client.delete(server.url("/v1/auth/account")).send().await.unwrap();
    assert_error(wrong_method, 405, "method_not_allowed").await;

    let no_credential = client.get(server.url("/v1/auth/account")).send().await.unwrap();
    assert_error(no_credential, 401, "unauthorized").await;

    let malformed_key = client.get(server.url("/v1/auth/account")).bearer_auth("not-a-key").send().await.unwrap();
    assert_error(malformed_key, 401, "unauthorized").await;

    let unknown_key = client
        .get(server.url("/v1/auth/account"))
        .bearer_auth("bahi_live_0123456789abcdefghijABCDEFGHIJ0123")
        .send()
        .await
        .unwrap();
    assert_error(unknown_key, 401, "unauthorized").await;

    // The client's own request id is echoed when well-formed.
    let echoed = client.get(server.url("/healthz")).header("x-request-id", "trace-123").send().await.unwrap();
    assert_eq!(echoed.headers().get("x-request-id").unwrap(), "trace-123");
}

#[tokio::test]
async fn a_key_of_the_other_environment_is_401() {
    let database = TestDatabase::sqlite();
    let test_server = TestServer::start_with(&database.url(), &[("BAHI_ENVIRONMENT", "test")]);
    let client = client();
    let (_, test_key) = register(&client, &test_server, "sandbox").await;
    assert!(test_key.starts_with("bahi_test_"));
    let ok = client.get(test_server.url("/v1/auth/account")).bearer_auth(&test_key).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    drop(test_server);

    let live_server = TestServer::start(&database.url());
    let refused = client.get(live_server.url("/v1/auth/account")).bearer_auth(&test_key).send().await.unwrap();
    let body = assert_error(refused, 401, "unauthorized").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("test"));
}

/// Load the server, SIGKILL it mid-load, and check that every acknowledged registration is
/// in the log, the log verifies, and a restarted server serves the acknowledged keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_acknowledged_event() {
    for database in TestDatabase::all().await {
        let mut server = TestServer::start(&database.url());
        let client = client();
        let acknowledged = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for _ in 0..16 {
            let client = client.clone();
            let url = server.url("/v1/auth/agent-register");
            let acknowledged = acknowledged.clone();
            workers.push(tokio::spawn(async move {
                // Bounded: at most 2000 requests per worker, and they stop when the server dies.
                for _ in 0..2000 {
                    let Ok(response) = client.post(&url).json(&json!({"org_name": "load"})).send().await else { break };
                    if response.status() != 201 {
                        break;
                    }
                    let Ok(body) = response.json::<Value>().await else { break };
                    acknowledged.lock().push(body["api_key"].as_str().unwrap().to_owned());
                }
            }));
        }
        // Kill mid-load: once a few dozen registrations were acknowledged.
        let loaded = common::eventually(|| async { acknowledged.lock().len() >= 50 }).await;
        assert!(loaded, "{}: the load ran", database.engine());
        server.kill();
        for worker in workers {
            worker.await.unwrap();
        }
        let acknowledged = acknowledged.lock().clone();
        assert!(acknowledged.len() > 10, "{}: the load ran ({} acknowledged)", database.engine(), acknowledged.len());

        let (code, stdout, stderr) = run_cli(&["verify", "--database", &database.url()]);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", database.engine());

        let restarted = TestServer::start(&database.url());
        let unique: HashSet<&String> = acknowledged.iter().collect();
        assert_eq!(unique.len(), acknowledged.len());
        for key in &acknowledged {
            let response = client.get(restarted.url("/v1/auth/account")).bearer_auth(key).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}: an acknowledged key was lost", database.engine());
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_drains_and_leaves_projections_at_the_head() {
    let database = TestDatabase::sqlite();
    let mut server = TestServer::start(&database.url());
    let client = client();
    for index in 0..5 {
        register(&client, &server, &format!("org {index}")).await;
    }
    let status = server.terminate();
    assert!(status.success(), "graceful exit: {status:?}");
    // The stop emptied both write-ahead logs into their files: the files alone hold
    // everything committed.
    let TestDatabase::Sqlite { path, .. } = &database else { unreachable!() };
    for suffix in ["-wal", ".read-wal"] {
        let log = format!("{}{suffix}", path.display());
        let bytes = std::fs::metadata(&log).map(|metadata| metadata.len()).unwrap_or(0);
        assert_eq!(bytes, 0, "{log} still holds {bytes} bytes after a graceful stop");
    }
    let (code, stdout, _) = run_cli(&["verify", "--database", &database.url()]);
    assert_eq!(code, 0);
    // Five registrations of two events each, and the first signing key.
    assert!(stdout.contains("11 events verified"), "{stdout}");
    let store = Store::open(&database.url()).await.unwrap();
    assert_eq!(store.checkpoint("directory").await.unwrap(), 11, "projection caught up before exit");
    assert_eq!(store.dump_table("read_orgs").await.unwrap().len(), 5);
}
