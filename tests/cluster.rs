//! Two `bahi serve` nodes on one PostgreSQL log: every decision a node's writer makes, and
//! every credential it is shown, is judged at the head of the log, not at what this node
//! happened to have folded. These tests skip, saying so, without PostgreSQL (CI requires it).
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDatabase, TestServer, client, error_code, register};
use reqwest::{Client, Response};
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-tests-0123456789abcdef";

/// Two nodes of one cluster: they share the operator key, the key-encryption key and the
/// issuer name.
async fn two_nodes() -> Option<(TestDatabase, TestServer, TestServer)> {
    let database = TestDatabase::postgres().await?;
    let key_encryption_key = hex::encode([5u8; 32]);
    let environment = [
        ("BAHI_OPERATOR_KEY", OPERATOR_KEY),
        ("BAHI_KEY_ENCRYPTION_KEY", key_encryption_key.as_str()),
        ("BAHI_ISSUER", "https://bahi.test"),
    ];
    let first = TestServer::start_with(&database.url(), &environment);
    let second = TestServer::start_with(&database.url(), &environment);
    Some((database, first, second))
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

async fn set_price(client: &Client, server: &TestServer, model: &str) {
    let body = json!({"input_per_million": {"currency": "inr", "amount": "10"}, "output_per_million": {"currency": "inr", "amount": "30"}});
    let response =
        send(client, server, reqwest::Method::PUT, &format!("/v1/admin/prices/{model}"), OPERATOR_KEY, body).await;
    assert_eq!(response.status(), 200);
}

async fn grant(client: &Client, server: &TestServer, org_id: &str, amount: &str) {
    let body = json!({"org_id": org_id, "amount": amount, "reason": "test credit"});
    let response = send(client, server, reqwest::Method::POST, "/v1/admin/credits/grants", OPERATOR_KEY, body).await;
    assert_eq!(response.status(), 201);
}

async fn authorize(client: &Client, server: &TestServer, key: &str, max_cost: &str) -> Response {
    let body = json!({"model": "m", "max_cost": max_cost});
    send(client, server, reqwest::Method::POST, "/v1/authorize", key, body).await
}

async fn usage(client: &Client, server: &TestServer, call_id: &str) -> Response {
    let body =
        json!({"call_id": call_id, "model": "m", "input_tokens": 1000, "output_tokens": 100, "status": "succeeded"});
    send(client, server, reqwest::Method::POST, "/v1/usage", OPERATOR_KEY, body).await
}

/// An org with credit and a priced model, made on `server`.
async fn funded_org(client: &Client, server: &TestServer, amount: &str) -> (String, String) {
    let (org_id, key) = register(client, server, "Acme").await;
    set_price(client, server, "m").await;
    grant(client, server, &org_id, amount).await;
    (org_id, key)
}

/// A call authorized with a hold on one node settles on the other at once: never 404.
#[tokio::test]
async fn a_hold_made_on_one_node_settles_on_the_other_at_once() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    let (_, key) = funded_org(&client, &first, "100").await;
    for _ in 0..5 {
        let response = authorize(&client, &first, &key, "1").await;
        assert_eq!(response.status(), 200);
        let call_id = response.json::<Value>().await.unwrap()["call_id"].as_str().unwrap().to_owned();
        let response = usage(&client, &second, &call_id).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}

/// An org and key made on one node authorize, with a hold, on the other at once.
#[tokio::test]
async fn an_org_made_on_one_node_authorizes_on_the_other_at_once() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    for _ in 0..5 {
        let (_, key) = funded_org(&client, &first, "100").await;
        let response = authorize(&client, &second, &key, "1").await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}

/// A key made on one node authenticates on the other at once.
#[tokio::test]
async fn a_key_made_on_one_node_authenticates_on_the_other_at_once() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    let (_, key) = register(&client, &first, "Acme").await;
    for round in 0..20 {
        let (new_key, _) = create_key(&client, &first, &key).await;
        let response = client.get(second.url("/v1/auth/account")).bearer_auth(&new_key).send().await.unwrap();
        assert_eq!(response.status(), 200, "round {round}: {}", response.text().await.unwrap());
    }
}

/// A key made on one node is found by id on the other at once (here, to revoke it).
#[tokio::test]
async fn a_key_made_on_one_node_is_revoked_on_the_other_at_once() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    let (_, key) = register(&client, &first, "Acme").await;
    // The owner's key is known to the second node before the test begins.
    let response = client.get(second.url("/v1/auth/account")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(response.status(), 200);
    for round in 0..5 {
        let (_, key_id) = create_key(&client, &first, &key).await;
        let path = format!("/v1/auth/account/api-keys/{key_id}/revoke");
        let response = send(&client, &second, reqwest::Method::POST, &path, &key, json!({})).await;
        assert_eq!(response.status(), 200, "round {round}: {}", response.text().await.unwrap());
    }
}

/// A user who signed up on one node logs in on the other at once.
#[tokio::test]
async fn a_user_who_signed_up_on_one_node_logs_in_on_the_other_at_once() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    for round in 0..10 {
        let email = format!("user{round}-{}@example.com", hex::encode(common::random16()));
        let credentials = json!({"email": email, "password": "Correct horse battery 9"});
        let response = client.post(first.url("/me/signup")).json(&credentials).send().await.unwrap();
        assert_eq!(response.status(), 201);
        let response = client.post(second.url("/me/login")).json(&credentials).send().await.unwrap();
        assert_eq!(response.status(), 200, "round {round}: {}", response.text().await.unwrap());
    }
}

/// A gateway key made on one node records usage on the other at once.
#[tokio::test]
async fn a_gateway_key_made_on_one_node_records_usage_on_the_other_at_once() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    let (_, key) = funded_org(&client, &first, "100").await;
    for round in 0..10 {
        let response = authorize(&client, &first, &key, "1").await;
        assert_eq!(response.status(), 200);
        let call_id = response.json::<Value>().await.unwrap()["call_id"].as_str().unwrap().to_owned();
        let response =
            send(&client, &first, reqwest::Method::POST, "/v1/admin/gateway-keys", OPERATOR_KEY, json!({})).await;
        assert_eq!(response.status(), 201);
        let gateway_key = response.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned();
        let body =
            json!({"call_id": call_id, "model": "m", "input_tokens": 10, "output_tokens": 10, "status": "succeeded"});
        let response = send(&client, &second, reqwest::Method::POST, "/v1/usage", &gateway_key, body).await;
        assert_eq!(response.status(), 200, "round {round}: {}", response.text().await.unwrap());
    }
}

/// A new API key of the org whose key is `key`, made on `server`: (secret, id).
async fn create_key(client: &Client, server: &TestServer, key: &str) -> (String, String) {
    let response =
        send(client, server, reqwest::Method::POST, "/v1/auth/account/api-keys", key, json!({"name": "k"})).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    (created["api_key"].as_str().unwrap().to_owned(), created["api_key_id"].as_str().unwrap().to_owned())
}

/// Authorizations spread over both nodes, each settled on the other node: every settlement
/// is 200.
#[tokio::test]
async fn load_split_over_two_nodes_settles_every_call() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    let (_, key) = funded_org(&client, &first, "1000").await;
    // The second node's writer appends once, so that its authorizations succeed and the
    // test is about settlements.
    set_price(&client, &second, "m").await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8usize {
        let (client, key) = (client.clone(), key.clone());
        let urls = [first.base_url.clone(), second.base_url.clone()];
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for call in 0..25usize {
                let node = (worker + call) % 2;
                let body = json!({"model": "m", "max_cost": "1"});
                let response = client
                    .post(format!("{}/v1/authorize", urls[node]))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let call_id = response.json::<Value>().await.unwrap()["call_id"].as_str().unwrap().to_owned();
                let body = json!({"call_id": call_id, "model": "m", "input_tokens": 1000, "output_tokens": 100, "status": "succeeded"});
                let response = client
                    .post(format!("{}/v1/usage", urls[1 - node]))
                    .bearer_auth(OPERATOR_KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        });
    }
    let mut statuses = Vec::new();
    while let Some(result) = tasks.join_next().await {
        statuses.extend(result.unwrap());
    }
    let not_found = statuses.iter().filter(|status| **status == 404).count();
    assert_eq!(not_found, 0, "{not_found} of {} settlements were 404", statuses.len());
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
}

/// Refusals are decided at the head too: credit granted on one node is there for an
/// authorization on the other, and credit spent on one node is gone on the other.
#[tokio::test]
async fn refusals_see_what_the_other_node_did() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    let (org_id, key) = register(&client, &first, "Acme").await;
    // The second node's writer appends once, so that it knows the org and the price.
    set_price(&client, &second, "m").await;
    let response = authorize(&client, &second, &key, "1").await;
    assert_eq!(error_code(response).await, (402, "insufficient_credits".to_owned()));

    grant(&client, &first, &org_id, "10").await;
    let response = authorize(&client, &second, &key, "1").await;
    assert_eq!(response.status(), 200, "credit granted on the first node: {}", response.text().await.unwrap());

    let response = authorize(&client, &first, &key, "9").await;
    assert_eq!(response.status(), 200);
    let response = authorize(&client, &second, &key, "1").await;
    assert_eq!(error_code(response).await, (402, "insufficient_credits".to_owned()));
}

async fn ready(client: &Client, server: &TestServer) -> (u16, Value) {
    let response = client.get(server.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A node whose tailer cannot read the log says so in `/readyz` (503, with the tailer's
/// last error) instead of answering "ok" while other nodes' revocations go unseen, and is
/// ready again once the log reads. `/healthz` (liveness) stays 200 meanwhile.
#[tokio::test]
async fn readyz_tells_the_truth_about_a_tailer_that_cannot_read_the_log() {
    let Some((database, first, _second)) = two_nodes().await else {
        eprintln!("cluster.rs: no PostgreSQL: readiness test DID NOT RUN");
        return;
    };
    let client = client();
    let (_, owner_key) = register(&client, &first, "Readiness").await;
    let became_ready = common::eventually(|| async { ready(&client, &first).await.0 == 200 }).await;
    let (_, detail) = ready(&client, &first).await;
    assert!(became_ready, "{detail}");
    assert_eq!(detail["tailer"]["failures"], 0, "{detail}");

    // The log table out of reach: every catch-up fails, as with a dropped grant or a lost server.
    database.execute_raw("ALTER TABLE events RENAME TO events_out_of_reach").await.unwrap();
    database.execute_raw("ALTER TABLE log_head RENAME TO log_head_out_of_reach").await.unwrap();
    let not_ready = common::eventually(|| async { ready(&client, &first).await.0 == 503 }).await;
    let (_, detail) = ready(&client, &first).await;
    assert!(not_ready, "{detail}");
    assert_eq!(detail["status"], "not_ready");
    assert!(detail["tailer"]["last_error"].as_str().is_some_and(|error| !error.is_empty()), "{detail}");
    assert!(detail["tailer"]["failures"].as_u64().unwrap() > 0);
    assert_eq!(client.get(first.url("/healthz")).send().await.unwrap().status(), 200, "liveness is not readiness");
    // A credential is not judged from a view that may miss revocations, and the node cannot
    // reach the head of the log to refresh it: 503 (retry), never a 500.
    let account = client.get(first.url("/v1/auth/account")).bearer_auth(&owner_key).send().await.unwrap();
    assert_eq!(account.status(), 503, "{}", account.text().await.unwrap());
    let metrics = client.get(first.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|line| line.starts_with("bahi_tailer_failures_total ") && !line.ends_with(" 0")),
        "{metrics}"
    );

    database.execute_raw("ALTER TABLE events_out_of_reach RENAME TO events").await.unwrap();
    database.execute_raw("ALTER TABLE log_head_out_of_reach RENAME TO log_head").await.unwrap();
    let ready_again = common::eventually(|| async { ready(&client, &first).await.0 == 200 }).await;
    assert!(ready_again, "{}", ready(&client, &first).await.1);
}

/// `scripts/cluster.sh`, the one command that starts a local cluster: three nodes on one
/// PostgreSQL database behind Debian's nginx. A key made through the load balancer works on
/// every node, and its revocation holds on every node.
#[tokio::test]
async fn the_cluster_script_serves_three_nodes_behind_nginx() {
    let Some(database) = TestDatabase::postgres().await else {
        eprintln!("cluster.rs: no PostgreSQL: the cluster script test DID NOT RUN");
        return;
    };
    let has_nginx = std::process::Command::new("sh").args(["-c", "command -v nginx || ls /usr/sbin/nginx"]).output();
    if !has_nginx.is_ok_and(|output| output.status.success()) {
        assert!(std::env::var_os("CI").is_none(), "CI must run the cluster script test: nginx is missing");
        eprintln!("cluster.rs: no nginx: the cluster script test DID NOT RUN (apt-get install nginx)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut script = Script(
        std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
            .arg("3")
            .env("BAHI_BINARY", common::BINARY)
            .env("BAHI_CLUSTER_DATABASE", database.url())
            .env("BAHI_CLUSTER_PORT", port.to_string())
            .env("BAHI_OPERATOR_KEY", OPERATOR_KEY)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = script.0.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("bahi cluster on ") {
                let _ = sender.send(url.to_owned());
            }
        }
    });
    let url = receiver.recv_timeout(std::time::Duration::from_secs(120)).expect("the cluster started");
    let client = client();
    let registered: Value =
        client.post(format!("{url}/v1/auth/agent-register")).send().await.unwrap().json().await.unwrap();
    let key = registered["api_key"].as_str().unwrap();
    for _ in 0..6 {
        // Round robin: six requests meet all three nodes, each of which knows the key.
        let response = client.get(format!("{url}/v1/auth/account")).bearer_auth(key).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let key_id = registered["api_key_id"].as_str().unwrap();
    let revoke =
        client.post(format!("{url}/v1/auth/account/api-keys/{key_id}/revoke")).bearer_auth(key).send().await.unwrap();
    assert_eq!(revoke.status(), 200);
    // Other nodes learn of it within the propagation bound (a NOTIFY, or the tailer's poll).
    let statuses = || async {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(client.get(format!("{url}/v1/auth/account")).bearer_auth(key).send().await.unwrap().status());
        }
        statuses
    };
    let refused_everywhere =
        common::eventually(|| async { statuses().await.iter().all(|status| *status == 401) }).await;
    assert!(refused_everywhere, "a revoked key is refused on every node");
    assert!(statuses().await.iter().all(|status| *status == 401), "and stays refused");
    let _ = std::process::Command::new("kill").args(["-TERM", &script.0.id().to_string()]).status();
    assert!(script.0.wait().unwrap().success(), "the script stops its nodes and nginx, and exits 0");
}

/// The cluster script's process, stopped (SIGTERM: it stops its nodes and nginx) when a
/// test ends, however it ends.
struct Script(std::process::Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// Rate limits across nodes: with `BAHI_CLUSTER_NODES=2` each node holds half of a key's
/// limit, so two nodes together allow the limit, not twice it.
#[tokio::test]
async fn two_nodes_together_allow_a_keys_rate_limit_once() {
    let Some(database) = TestDatabase::postgres().await else {
        eprintln!("cluster.rs: no PostgreSQL: the cluster rate-limit test DID NOT RUN");
        return;
    };
    let key_encryption_key = hex::encode([5u8; 32]);
    let environment = [
        ("BAHI_OPERATOR_KEY", OPERATOR_KEY),
        ("BAHI_KEY_ENCRYPTION_KEY", key_encryption_key.as_str()),
        ("BAHI_ISSUER", "https://bahi.test"),
        ("BAHI_CLUSTER_NODES", "2"),
    ];
    let nodes =
        [TestServer::start_with(&database.url(), &environment), TestServer::start_with(&database.url(), &environment)];
    let client = client();
    let (_, owner_key) = register(&client, &nodes[0], "Acme").await;
    let body = json!({"name": "limited", "rate_limit": {"requests": 5, "interval_seconds": 3600}});
    let created = send(&client, &nodes[0], reqwest::Method::POST, "/v1/auth/account/api-keys", &owner_key, body).await;
    assert_eq!(created.status(), 201);
    let limited: Value = created.json().await.unwrap();
    let limited = limited["api_key"].as_str().unwrap();
    let mut allowed = 0;
    for node in &nodes {
        for _ in 0..5 {
            let response = client.get(node.url("/v1/auth/account")).bearer_auth(limited).send().await.unwrap();
            match response.status().as_u16() {
                200 => allowed += 1,
                429 => assert_eq!(response.headers()["x-ratelimit-limit"], "3", "each node holds 5/2, rounded up"),
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(allowed, 6, "two nodes allow 3 each: the limit of 5, rounded up per node");
}

/// LISTEN/NOTIFY is only a wake-up: with every LISTEN connection cut (a NOTIFY sent while a
/// listener is away is lost), a revocation on one node still reaches the other, by log
/// position, within the poll bound, and the lost connection is counted.
#[tokio::test]
async fn a_revocation_reaches_a_node_whose_listen_connection_was_cut() {
    let Some((database, first, second)) = two_nodes().await else {
        eprintln!("cluster.rs: no PostgreSQL: the reconnect test DID NOT RUN");
        return;
    };
    let client = client();
    let (_, owner_key) = register(&client, &first, "Acme").await;
    let created =
        send(&client, &first, reqwest::Method::POST, "/v1/auth/account/api-keys", &owner_key, json!({"name": "k"}))
            .await;
    let created: Value = created.json().await.unwrap();
    let (key, key_id) = (created["api_key"].as_str().unwrap(), created["api_key_id"].as_str().unwrap());
    let account = |key: &str| {
        let request = client.get(second.url("/v1/auth/account")).bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(account(key).await, 200);

    let cut = database
        .execute_raw(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
        )
        .await;
    assert!(cut.is_ok(), "{cut:?}");
    let path = format!("/v1/auth/account/api-keys/{key_id}/revoke");
    assert_eq!(send(&client, &first, reqwest::Method::POST, &path, &owner_key, json!({})).await.status(), 200);
    let refused = common::eventually(|| async { account(key).await == 401 }).await;
    assert!(refused, "the revocation reached the other node without its notification");
    let counted = common::eventually(|| async {
        let health: Value = client.get(second.url("/readyz")).send().await.unwrap().json().await.unwrap();
        health["tailer"]["reconnects"].as_u64().is_some_and(|reconnects| reconnects >= 1)
    })
    .await;
    assert!(counted, "the lost LISTEN connection is counted");
    assert_eq!(client.get(second.url("/readyz")).send().await.unwrap().status(), 200, "and the node is ready");
}

/// Waits for the one backend of `database_url`'s database whose statement is the writer's
/// append (`WITH locked AS ...`) and which waits on `waiting_on` (a wait event or its type),
/// and terminates it.
async fn terminate_waiting_append(database_url: &str, waiting_on: &str) {
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(database_url).await.unwrap();
    for _ in 0..500 {
        let terminated: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND $1 IN (wait_event_type, wait_event) AND query LIKE 'WITH locked AS%'",
        )
        .bind(waiting_on)
        .fetch_all(&mut connection)
        .await
        .unwrap();
        if !terminated.is_empty() {
            return;
        }
        // sleep-ok: the append is the node's, in its own time; looked for every 20 ms.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no append waited on {waiting_on} within 10 s");
}

/// A grant with an idempotency key; its status, body and `retry-after`.
async fn keyed_grant(client: &Client, base_url: &str, org_id: &str, key: &str) -> (u16, Value, Option<String>) {
    let body = json!({"org_id": org_id, "amount": "5", "reason": "test credit"});
    let response = client
        .post(format!("{base_url}/v1/admin/credits/grants"))
        .bearer_auth(OPERATOR_KEY)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
    (response.status().as_u16(), response.json().await.unwrap(), retry_after)
}

/// How many grants the log holds for `org_id`, read straight from the database.
async fn grants_in_log(database_url: &str, org_id: &str) -> usize {
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(database_url).await.unwrap();
    let payloads: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT payload FROM events WHERE event_type = 'CreditsGranted'")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    payloads.iter().filter(|(payload,)| serde_json::from_slice::<Value>(payload).unwrap()["org_id"] == org_id).count()
}

/// The one 500 of the cluster campaign: a commit whose database connection is terminated
/// under it. Here the append waits on a row lock another connection holds on the log head,
/// and its backend is terminated: the node must answer 503 `commit_outcome_unknown` with
/// `retry-after` (it answered 500 `internal_error`), and the retry with the same
/// idempotency key is recorded once.
#[tokio::test]
async fn a_commit_whose_connection_is_terminated_is_503_and_its_retry_is_recorded_once() {
    let Some(database) = TestDatabase::postgres().await else { return };
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    let client = client();
    let (org_id, _) = register(&client, &server, "terminated").await;

    let mut locker = <sqlx::PgConnection as sqlx::Connection>::connect(&database.url()).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT position FROM log_head FOR UPDATE").execute(&mut locker).await.unwrap();
    let pending = {
        let (client, url, org_id) = (client.clone(), server.base_url.clone(), org_id.clone());
        tokio::spawn(async move { keyed_grant(&client, &url, &org_id, "terminated-grant").await })
    };
    terminate_waiting_append(&database.url(), "Lock").await;
    let (status, body, retry_after) = pending.await.unwrap();
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("commit_outcome_unknown")), "{body}");
    assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    let (status, first, _) = keyed_grant(&client, &server.base_url, &org_id, "terminated-grant").await;
    assert_eq!(status, 201, "{first}");
    let (status, again, _) = keyed_grant(&client, &server.base_url, &org_id, "terminated-grant").await;
    assert_eq!((status, &again["grant_id"]), (201, &first["grant_id"]), "{again}");
    assert_eq!(grants_in_log(&database.url(), &org_id).await, 1);
}

/// The other side of an unknown outcome: the commit happened and only its answer was lost.
/// On a server of the test's own (its configuration changes), a synchronous standby that
/// never comes makes every commit wait after it is durable; the waiting append's backend is
/// terminated (PostgreSQL: "the transaction has already committed locally"). The node
/// answers 503 `commit_outcome_unknown`; the retry with the same key finds the grant that
/// was recorded and answers it, and the log holds it once.
#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_503_and_its_retry_answers_the_recorded_grant() {
    if common::postgres_admin_url().is_none() {
        return;
    }
    let owned = match common::OwnedPostgres::start() {
        Ok(owned) => owned,
        Err(why) => {
            assert!(std::env::var("CI").is_err(), "CI must run PostgreSQL of its own: {why}");
            eprintln!("a PostgreSQL server of the test's own could not start ({why}): this test DID NOT RUN");
            return;
        }
    };
    let database = TestDatabase::on(owned.admin_url()).await;
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    let client = client();
    let (org_id, _) = register(&client, &server, "lost-answer").await;

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&owned.admin_url()).await.unwrap();
    // One statement at a time: ALTER SYSTEM refuses to run in a transaction block.
    for statement in ["ALTER SYSTEM SET synchronous_standby_names = 'nobody'", "SELECT pg_reload_conf()"] {
        sqlx::raw_sql(statement).execute(&mut admin).await.unwrap();
    }
    // sleep-ok: pg_reload_conf signals the backends, which read the file at their next command.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let pending = {
        let (client, url, org_id) = (client.clone(), server.base_url.clone(), org_id.clone());
        tokio::spawn(async move { keyed_grant(&client, &url, &org_id, "lost-answer-grant").await })
    };
    terminate_waiting_append(&database.url(), "SyncRep").await;
    let (status, body, retry_after) = pending.await.unwrap();
    for statement in ["ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"] {
        sqlx::raw_sql(statement).execute(&mut admin).await.unwrap();
    }
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("commit_outcome_unknown")), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(grants_in_log(&database.url(), &org_id).await, 1, "the commit happened");

    let (status, retried, _) = keyed_grant(&client, &server.base_url, &org_id, "lost-answer-grant").await;
    assert_eq!(status, 201, "{retried}");
    assert_eq!(grants_in_log(&database.url(), &org_id).await, 1, "the retry recorded nothing more");
    drop(server);
    drop(database);
}

/// This node's `bahi_projection_runner` gauge.
async fn runs_projections(client: &Client, server: &TestServer) -> bool {
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    metrics.lines().any(|line| line == "bahi_projection_runner 1")
}

/// Waits up to `seconds` for exactly one of `servers` to run the projections; its index.
async fn the_projection_runner(client: &Client, servers: &[&TestServer], seconds: u64) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let mut runners = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            if runs_projections(client, server).await {
                runners.push(index);
            }
        }
        match runners.as_slice() {
            [runner] => return *runner,
            _ if std::time::Instant::now() < deadline => {
                // sleep-ok: polling the nodes' gauges while the lock changes hands.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            _ => panic!("{} nodes run the projections, not one", runners.len()),
        }
    }
}

/// A call made on `maker` and settled there is in `reader`'s audit answer at once.
async fn audited_at_once(client: &Client, maker: &TestServer, reader: &TestServer, key: &str) {
    let response = authorize(client, maker, key, "1").await;
    assert_eq!(response.status(), 200);
    let call_id = response.json::<Value>().await.unwrap()["call_id"].as_str().unwrap().to_owned();
    assert_eq!(usage(client, maker, &call_id).await.status(), 200);
    let response = client.get(reader.url(&format!("/v1/audit/calls/{call_id}"))).bearer_auth(key).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let call: Value = response.json().await.unwrap();
    assert_eq!(call["status"], "succeeded", "{call}");
}

/// One node of a cluster folds events into the shared read models, the other follows its
/// checkpoints (every node's runner folding every event raced page by page and threw the
/// losers' work away). Reads on the follower still see what was just recorded on either node;
/// once the runner is killed, the follower takes over and its reads stay fresh.
#[tokio::test]
async fn one_node_runs_the_projections_and_another_takes_over_when_it_dies() {
    let Some((_database, first, second)) = two_nodes().await else { return };
    let client = client();
    let (_, key) = funded_org(&client, &first, "100").await;
    let mut nodes = [Some(first), Some(second)];
    let runner = {
        let servers: Vec<&TestServer> = nodes.iter().flatten().collect();
        the_projection_runner(&client, &servers, 5).await
    };
    let follower = 1 - runner;
    {
        let (runner_node, follower_node) = (nodes[runner].as_ref().unwrap(), nodes[follower].as_ref().unwrap());
        audited_at_once(&client, runner_node, follower_node, &key).await;
        audited_at_once(&client, follower_node, follower_node, &key).await;
    }
    nodes[runner].take().unwrap().kill();
    let survivor = nodes[follower].as_ref().unwrap();
    assert_eq!(the_projection_runner(&client, &[survivor], 5).await, 0);
    audited_at_once(&client, survivor, survivor, &key).await;
}
