//! The log holds only what it can read back (issue 23): amounts and balances are bounded at
//! the API, `bahi verify` decodes every event, and a node that meets an event it cannot
//! read says so in `/healthz` and `/readyz` instead of answering 500s behind an "ok".
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use parking_lot::Mutex;

use bahi::store::{EventStore, Store, StoredEvent};
use bahi_domain::ids::{OrgId, TopupId, UserId};
use common::{TestDatabase, TestServer, client, random16, register, run_cli};
use reqwest::{Client, Response};
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-tests-0123456789abcdef";

fn start(database_url: &str) -> TestServer {
    TestServer::start_with(database_url, &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)])
}

/// The status and message of an answer that must be an error in the contract's shape.
async fn refusal(response: Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["request_id"].is_string(), "{body}");
    (status, body["error"]["message"].as_str().unwrap().to_owned())
}

async fn health(client: &Client, server: &TestServer, path: &str) -> (u16, Value) {
    let response = client.get(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn grant(client: &Client, server: &TestServer, org_id: &str, amount: &str) -> Response {
    client
        .post(server.url("/v1/admin/credits/grants"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"org_id": org_id, "amount": amount, "reason": "limits"}))
        .send()
        .await
        .unwrap()
}

async fn balance(client: &Client, server: &TestServer, key: &str) -> String {
    let account: Value =
        client.get(server.url("/v1/auth/account")).bearer_auth(key).send().await.unwrap().json().await.unwrap();
    account["credit_balance"]["amount"].as_str().unwrap().to_owned()
}

/// Issue 23: a self-service human sent two top-ups of 10^12 INR; both were 201, the second's
/// balance no longer decoded, and the server could not start again. Now an amount past the
/// single-amount limit, or a credit past the balance limit, is a 400 naming the limit, and
/// the server stays healthy and restarts.
#[tokio::test]
async fn over_limit_top_ups_and_grants_are_refused_naming_the_limit_and_the_server_restarts() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let mut server = start(&database.url());
        let client = client();
        let signup = client
            .post(server.url("/me/signup"))
            .json(&json!({"email": "owner@example.com", "password": "Owner-Pass-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(signup.status(), 201);
        let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let top_up = |amount: &str, reference: &str| {
            client
                .post(server.url("/me/credits/topups"))
                .header("cookie", &cookie)
                .json(&json!({"amount": amount, "payment_reference": reference}))
                .send()
        };
        for reference in ["pay_1", "pay_2"] {
            let (status, message) = refusal(top_up("1000000000000", reference).await.unwrap()).await;
            assert_eq!(status, 400, "{engine}");
            assert_eq!(message, "amount exceeds the maximum of 1000000000.00 INR", "{engine}");
        }
        let (status, message) = refusal(top_up("1000000000.000001", "pay_3").await.unwrap()).await;
        assert_eq!((status, message.as_str()), (400, "amount exceeds the maximum of 1000000000.00 INR"));
        let at_limit = top_up("1000000000", "pay_4").await.unwrap();
        assert_eq!(at_limit.status(), 201, "{engine}");
        let at_limit: Value = at_limit.json().await.unwrap();
        assert_eq!(at_limit["balance"]["amount"], "1000000000.00");

        // Operator grants: the same single-amount limit, then the balance limit.
        let (org_id, key) = register(&client, &server, "Granted").await;
        // A double serde_json would read back one ulp off without float_roundtrip: the
        // writer's round trip must not refuse it.
        let with_metadata = client
            .post(server.url("/v1/auth/account/api-keys"))
            .bearer_auth(&key)
            .json(&json!({"metadata": {"ratio": 1.0715660391465826e-75}}))
            .send()
            .await
            .unwrap();
        assert_eq!(with_metadata.status(), 201, "{engine}");
        let (status, message) = refusal(grant(&client, &server, &org_id, "1000000000000").await).await;
        assert_eq!((status, message.as_str()), (400, "amount exceeds the maximum of 1000000000.00 INR"));
        let (status, _) = refusal(grant(&client, &server, &org_id, "1000000000.000001").await).await;
        assert_eq!(status, 400);
        // 999 grants at the single limit and one short of it by a micro-rupee: the balance
        // stops a micro-rupee below its limit. Sent 50 at a time, so group commit batches them.
        let mut amounts = vec!["1000000000"; 999];
        amounts.push("999999999.999999");
        for chunk in amounts.chunks(50) {
            let answers =
                futures::future::join_all(chunk.iter().map(|amount| grant(&client, &server, &org_id, amount)));
            for answer in answers.await {
                assert_eq!(answer.status(), 201, "{engine}");
            }
        }
        assert_eq!(balance(&client, &server, &key).await, "999999999999.999999");
        let (status, message) = refusal(grant(&client, &server, &org_id, "0.000002").await).await;
        assert_eq!(status, 400, "{engine}");
        assert_eq!(message, "the balance would exceed the maximum of 1000000000000.00 INR");
        assert_eq!(grant(&client, &server, &org_id, "0.000001").await.status(), 201, "exactly at the limit");
        assert_eq!(balance(&client, &server, &key).await, "1000000000000.00");

        let (status, body) = health(&client, &server, "/healthz").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{engine}");
        server.terminate();
        let (code, stdout, stderr) = run_cli(&["verify", "--database", &database.url()]);
        assert_eq!(code, 0, "{engine}: {stdout}{stderr}");
        let server = start(&database.url());
        assert_eq!(balance(&client, &server, &key).await, "1000000000000.00", "{engine}: after a restart");
        let (code, stdout, stderr) = run_cli(&["rebuild", "--database", &database.url()]);
        assert_eq!(code, 0, "{engine}: {stdout}{stderr}");
    }
}

/// Appends, behind the writer's back, a top-up whose `balance_after` is past what decodes
/// (the bytes issue 23's log held), with a correct hash chain. Returns its position.
async fn append_unreadable_event(database_url: &str) -> i64 {
    let store = Store::open(database_url).await.unwrap();
    let (head, head_hash) = store.head().await.unwrap();
    let org_id = OrgId::from_random(random16());
    let payload = json!({
        "topup_id": TopupId::from_random(random16()).to_string(),
        "org_id": org_id.to_string(),
        "amount": {"currency": "inr", "amount": "1000000000000.00"},
        "payment_reference": "pay_2",
        "user_id": UserId::from_random(random16()).to_string(),
        "balance_after": {"currency": "inr", "amount": "2000000000000.00"},
        "topped_up_at": "2026-12-05T10:00:00Z",
    });
    let recorded_at = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z").unwrap().to_utc();
    let mut row = StoredEvent {
        position: head + 1,
        stream_id: org_id.to_string(),
        stream_version: 1,
        event_id: bahi_domain::ids::EventId::from_random(random16()).to_string(),
        event_type: "CreditsToppedUp".into(),
        schema_version: 1,
        recorded_at,
        payload: serde_json::to_vec(&payload).unwrap(),
        metadata: br#"{"actor":{"kind":"system","id":"test"}}"#.to_vec(),
        hash: [0; 32],
    };
    row.hash = row.expected_hash(&head_hash);
    store.append(head, &[row]).await.unwrap();
    store.close().await;
    head + 1
}

/// `bahi verify` decodes as well as re-hashes: an event with a correct chain that does not
/// decode is named by position (exit 1), and `bahi serve` refuses to start on it, naming it.
#[tokio::test]
async fn verify_names_the_first_event_that_does_not_decode_and_serve_refuses_to_start() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let server = start(&database.url());
        let client = client();
        register(&client, &server, "Before").await;
        drop(server);
        let position = append_unreadable_event(&database.url()).await;

        let (code, stdout, stderr) = run_cli(&["verify", "--database", &database.url()]);
        assert_eq!(code, 1, "{engine}: {stdout}{stderr}");
        assert!(stderr.contains(&format!("log broken at position {position}")), "{engine}: {stderr}");
        assert!(stderr.contains("does not decode"), "{engine}: {stderr}");

        let mut serve = std::process::Command::new(common::BINARY);
        serve.args(["serve", "--listen", "127.0.0.1:0", "--database", &database.url()]).env("RUST_LOG", "error");
        if engine == "postgres" {
            serve.env("BAHI_KEY_ENCRYPTION_KEY", "7e".repeat(32));
        }
        let output = serve.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{engine}: {stderr}");
        assert!(stderr.contains(&format!("at position {position}")), "{engine}: {stderr}");
        assert!(stderr.contains("bahi verify"), "{engine}: {stderr}");
    }
}

/// Two nodes on one PostgreSQL log: an event neither can read lands (behind their backs);
/// each reports not ready in `/healthz` and `/readyz`, naming the position, and refuses
/// commands with 503 instead of answering 500s behind an "ok".
#[tokio::test]
async fn nodes_that_meet_an_unreadable_event_report_not_ready_naming_its_position() {
    let Some(database) = TestDatabase::postgres().await else { return };
    let first = start(&database.url());
    let second = start(&database.url());
    let client = client();
    let (org_id, _) = register(&client, &first, "Cluster").await;
    let position = append_unreadable_event(&database.url()).await;

    for server in [&first, &second] {
        let seen = Arc::new(Mutex::new(Value::Null));
        let unready = common::eventually(|| {
            let seen = seen.clone();
            let client = client.clone();
            async move {
                let (status, body) = health(&client, server, "/healthz").await;
                assert!(status == 200 || status == 503, "{body}");
                *seen.lock() = body;
                status == 503
            }
        })
        .await;
        let body = seen.lock().clone();
        assert!(unready, "still {body} 10 s after an unreadable event landed");
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["unreadable_position"], position);
        assert_eq!(body["log_position"], position - 1);
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("position {position}")) && reason.contains("does not decode"), "{reason}");
        let (status, mut ready) = health(&client, server, "/readyz").await;
        // The tailer's detail moves on between the two reads; the verdict must not.
        let (mut body, tailer) = (body.clone(), ready.as_object_mut().unwrap().remove("tailer"));
        assert!(tailer.is_some(), "a PostgreSQL node reports its tailer: {ready}");
        body.as_object_mut().unwrap().remove("tailer");
        assert_eq!((status, &ready), (503, &body));

        let response = grant(&client, server, &org_id, "1").await;
        let (status, message) = refusal(response).await;
        assert_eq!(status, 503, "{message}");
        assert!(message.contains("not ready"), "{message}");
        let registered = client.post(server.url("/v1/auth/agent-register")).json(&json!({})).send().await.unwrap();
        assert_eq!(registered.status(), 503);
    }
}

/// A statement that cannot be finished is never cut off silently: the rows so far, then a
/// last row (CSV) or field (JSON) saying it is incomplete, and then the body is aborted, so
/// the client's transfer fails; `bahi statement` writes the same and exits non-zero.
#[tokio::test]
async fn a_statement_that_cannot_be_finished_says_so_in_its_body() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let server = start(&database.url());
        let client = client();
        let (org_id, key) = register(&client, &server, "Statement").await;
        assert_eq!(grant(&client, &server, &org_id, "10").await.status(), 201);
        let today = chrono::Utc::now().date_naive().to_string();
        let url = server.url(&format!("/v1/statements?from={today}&to={today}&format=csv"));
        let whole = client.get(&url).bearer_auth(&key).send().await.unwrap().text().await.unwrap();
        assert!(whole.contains(",closing_balance,"), "{engine}: {whole}");

        // A ledger row whose amount no decoder reads, behind the projection's back.
        let copy = format!(
            "INSERT INTO read_ledger_entries (org_id, position, entry_type, occurred_at, occurred_day, reference, \
             description, call_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, input_tokens, \
             output_tokens, debit_micros, credit_micros, released_micros, balance_after_micros) \
             SELECT org_id, position + 1000000, entry_type, occurred_at, occurred_day, reference, description, call_id, \
             credential_kind, credential_id, agent_id, agent_name, act_for, model, input_tokens, output_tokens, \
             9000000000000000000, credit_micros, released_micros, balance_after_micros \
             FROM read_ledger_entries WHERE org_id = '{org_id}'"
        );
        match &database {
            TestDatabase::Sqlite { path, .. } => {
                let read_models = format!("sqlite://{}.read", path.display());
                let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&read_models).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(copy)).execute(&mut connection).await.unwrap();
            }
            TestDatabase::Postgres { .. } => {
                database.execute_raw(&copy).await.unwrap();
            }
        }

        for (format, marker) in [("csv", ",,error,"), ("json", "],\"error\":{")] {
            let url = server.url(&format!("/v1/statements?from={today}&to={today}&format={format}"));
            let mut response = client.get(&url).bearer_auth(&key).send().await.unwrap();
            assert_eq!(response.status(), 200, "{engine}");
            let mut body = Vec::new();
            let ended = loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => break "cleanly",
                    Err(_) => break "with an error",
                }
            };
            let body = String::from_utf8(body).unwrap();
            assert!(body.contains(marker) && body.contains("statement incomplete"), "{engine} {format}: {body}");
            assert!(!body.contains("closing_balance"), "{engine} {format}: {body}");
            assert_eq!(ended, "with an error", "{engine} {format}: the transfer must fail too");
        }
        drop(server);
        let (code, stdout, stderr) =
            run_cli(&["statement", "--org", &org_id, "--from", &today, "--to", &today, "--database", &database.url()]);
        assert_ne!(code, 0, "{engine}: {stdout}");
        assert!(stdout.contains(",,error,") && stdout.contains("statement incomplete"), "{engine}: {stdout}{stderr}");
    }
}

/// The writer's round trip (`check_reads_back`): an event whose amount the decoder refuses,
/// or whose metadata reads back with another idempotency record, is refused; a JSON number
/// in key metadata reads back as the same double (serde_json's `float_roundtrip`).
#[test]
fn the_writers_round_trip_refuses_what_does_not_read_back() {
    use bahi::ledger::{Idempotency, check_reads_back};
    use bahi_domain::event::CreditsToppedUp;
    use bahi_domain::{Event, Money};

    let top_up = |balance_after: Money| -> Event {
        CreditsToppedUp {
            topup_id: TopupId::from_random(random16()),
            org_id: OrgId::from_random(random16()),
            amount: Money::MAX_AMOUNT,
            payment_reference: "pay_1".into(),
            user_id: UserId::from_random(random16()),
            balance_after,
            topped_up_at: chrono::Utc::now(),
        }
        .into()
    };
    let metadata = br#"{"actor":{"kind":"system","id":"bahi"}}"#;
    let fits = top_up(Money::MAX_BALANCE);
    assert_eq!(check_reads_back(&fits, &fits.payload_bytes(), metadata, None), Ok(()));
    // A sum past the decoder's limit (what issue 23's second top-up recorded).
    let past = top_up(Money::MAX_BALANCE.checked_add(Money::MAX_AMOUNT).unwrap());
    let refusal = check_reads_back(&past, &past.payload_bytes(), metadata, None).unwrap_err();
    assert!(refusal.contains("amount is too large"), "{refusal}");
    // The metadata must carry the command's idempotency record, as loading reads it.
    let idempotency = Idempotency { key: "caller:key".into(), request_hash: [7; 32] };
    assert!(check_reads_back(&fits, &fits.payload_bytes(), metadata, Some(&idempotency)).is_err());
    let with_key = format!(
        r#"{{"actor":{{"kind":"system","id":"bahi"}},"idempotency_key":"caller:key","request_hash":"{}"}}"#,
        hex::encode([7u8; 32])
    );
    assert_eq!(check_reads_back(&fits, &fits.payload_bytes(), with_key.as_bytes(), Some(&idempotency)), Ok(()));
    assert!(check_reads_back(&fits, &fits.payload_bytes(), with_key.as_bytes(), None).is_err());

    // Doubles that serde_json's default parser reads back one ulp off.
    for number in [1.0715660391465826e-75, -1.81996730402717e-179, -1.603964615428183e143] {
        let value: serde_json::Value = serde_json::from_str(&json!({ "x": number }).to_string()).unwrap();
        assert_eq!(value["x"].as_f64(), Some(number));
    }
}
