//! Crash campaign (issue 23): rounds of concurrent load, SIGKILL mid-load, restart, retry
//! of everything unanswered with the same idempotency key or call id, and `bahi verify`;
//! then every acknowledged answer is compared with the log. 0 lost, 0 billed twice, on
//! both engines. `BAHI_CRASH_ROUNDS` raises the number of rounds (default 3).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{TestDatabase, TestServer, run_cli};
use parking_lot::Mutex;
use reqwest::Client;
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-tests-0123456789abcdef";
const WORKERS: usize = 12;

#[derive(Default)]
struct Record {
    /// Grant idempotency key -> the grant id when acknowledged.
    grants: BTreeMap<String, Option<String>>,
    /// Call ids acknowledged by authorize -> the settled cost when usage was acknowledged.
    calls: BTreeMap<String, Option<String>>,
}

impl Record {
    fn settled(&self) -> usize {
        self.calls.values().filter(|cost| cost.is_some()).count()
    }
}

/// Steps each worker takes at most in a round, should the kill never come.
const MAX_STEPS: usize = 5_000;

fn start(database: &TestDatabase) -> TestServer {
    TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)])
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

async fn grant(client: &Client, server_url: &str, org_id: &str, key: &str) -> Option<String> {
    let response = client
        .post(format!("{server_url}/v1/admin/credits/grants"))
        .bearer_auth(OPERATOR_KEY)
        .header("idempotency-key", key)
        .json(&json!({"org_id": org_id, "amount": "1.00", "reason": "crash campaign"}))
        .send()
        .await
        .ok()?;
    if response.status() != 201 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    Some(body["grant_id"].as_str()?.to_owned())
}

async fn authorize(client: &Client, server_url: &str, api_key: &str) -> Option<String> {
    let response = client
        .post(format!("{server_url}/v1/authorize"))
        .bearer_auth(api_key)
        .json(&json!({"model": "m", "max_cost": "0.50"}))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    Some(response.json::<Value>().await.ok()?["call_id"].as_str()?.to_owned())
}

/// 1,000 input and 1,000 output tokens at ₹100/M each: ₹0.20.
async fn settle(client: &Client, server_url: &str, call_id: &str) -> Option<String> {
    let response = client
        .post(format!("{server_url}/v1/usage"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"call_id": call_id, "model": "m", "input_tokens": 1000, "output_tokens": 1000, "status": "succeeded"}))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    Some(response.json::<Value>().await.ok()?["cost"]["amount"].as_str()?.to_owned())
}

/// One round's load: each worker grants, authorizes and settles until the server is gone.
async fn load(server_url: String, org_id: String, api_key: String, round: usize, record: Arc<Mutex<Record>>) {
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (server_url, org_id, api_key, record) =
                (server_url.clone(), org_id.clone(), api_key.clone(), record.clone());
            tokio::spawn(async move {
                let client = client();
                for step in 0..MAX_STEPS {
                    let key = format!("round-{round}-worker-{worker}-step-{step}");
                    record.lock().grants.insert(key.clone(), None);
                    let granted = grant(&client, &server_url, &org_id, &key).await;
                    let Some(grant_id) = granted else { break };
                    record.lock().grants.insert(key, Some(grant_id));
                    let Some(call_id) = authorize(&client, &server_url, &api_key).await else { break };
                    record.lock().calls.insert(call_id.clone(), None);
                    let Some(cost) = settle(&client, &server_url, &call_id).await else { break };
                    record.lock().calls.insert(call_id, Some(cost));
                }
            })
        })
        .collect();
    // Killed from outside while these run: each worker stops at its first unanswered request.
    for worker in workers {
        worker.await.unwrap();
    }
}

/// Retries, on the restarted server, everything the killed one left unanswered.
async fn retry_unanswered(server_url: &str, org_id: &str, record: &Mutex<Record>) {
    let client = client();
    let grants: Vec<String> =
        record.lock().grants.iter().filter(|(_, id)| id.is_none()).map(|(key, _)| key.clone()).collect();
    for key in grants {
        let grant_id = grant(&client, server_url, org_id, &key).await.expect("a retried grant is answered");
        record.lock().grants.insert(key, Some(grant_id));
    }
    let calls: Vec<String> =
        record.lock().calls.iter().filter(|(_, cost)| cost.is_none()).map(|(id, _)| id.clone()).collect();
    for call_id in calls {
        let cost = settle(&client, server_url, &call_id).await.expect("a retried usage is answered");
        record.lock().calls.insert(call_id, Some(cost));
    }
}

/// Every event of the org, in log order.
async fn all_org_events(server_url: &str, api_key: &str) -> Vec<Value> {
    let client = client();
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = client
            .get(format!("{server_url}/v1/audit/events?after={after}&limit=1000"))
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        events.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) if page["has_more"] == true => after = next,
            _ => return events,
        }
    }
}

/// Every event of the org, in log order, once the projection has caught up with the log.
async fn org_events(server_url: &str, api_key: &str, expected_grants: usize) -> Vec<Value> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let caught_up = common::eventually(|| {
        let events = events.clone();
        async move {
            let read = all_org_events(server_url, api_key).await;
            let grants = read.iter().filter(|event| event["type"] == "CreditsGranted").count();
            *events.lock() = read;
            grants >= expected_grants
        }
    })
    .await;
    assert!(caught_up, "the audit projection did not catch up with the log");
    events.lock().clone()
}

#[tokio::test]
async fn kill_restart_verify_rounds_lose_nothing_and_bill_nothing_twice() {
    let rounds: usize = std::env::var("BAHI_CRASH_ROUNDS").ok().and_then(|text| text.parse().ok()).unwrap_or(3);
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let mut server = start(&database);
        let client = client();
        let registered: Value = client
            .post(server.url("/v1/auth/agent-register"))
            .json(&json!({"org_name": "crash"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let org_id = registered["org_id"].as_str().unwrap().to_owned();
        let api_key = registered["api_key"].as_str().unwrap().to_owned();
        let price = json!({"input_per_million": "100", "output_per_million": "100"});
        let response =
            client.put(server.url("/v1/admin/prices/m")).bearer_auth(OPERATOR_KEY).json(&price).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let record = Arc::new(Mutex::new(Record::default()));

        for round in 0..rounds {
            let running =
                tokio::spawn(load(server.base_url.clone(), org_id.clone(), api_key.clone(), round, record.clone()));
            // Kill mid-load: once the round has settled a varying number of calls.
            let target = record.lock().settled() + 30 + 30 * (round % 4);
            let loaded = common::eventually(|| async { record.lock().settled() >= target }).await;
            assert!(loaded, "{engine}: round {round}: the load settled fewer than {target} calls");
            server.kill();
            running.await.unwrap();
            let (code, stdout, stderr) = run_cli(&["verify", "--database", &database.url()]);
            assert_eq!(code, 0, "{engine}: round {round}: {stdout}{stderr}");
            server = start(&database);
            retry_unanswered(&server.base_url, &org_id, &record).await;
        }

        let record = std::mem::take(&mut *record.lock());
        let grant_ids: BTreeSet<&str> = record.grants.values().map(|id| id.as_deref().unwrap()).collect();
        assert_eq!(grant_ids.len(), record.grants.len(), "{engine}: one grant per idempotency key");
        let events = org_events(&server.base_url, &api_key, grant_ids.len()).await;
        let logged_grants: Vec<&str> = events
            .iter()
            .filter(|event| event["type"] == "CreditsGranted")
            .map(|event| event["data"]["grant_id"].as_str().unwrap())
            .collect();
        let logged_grant_set: BTreeSet<&str> = logged_grants.iter().copied().collect();
        assert_eq!(logged_grants.len(), logged_grant_set.len(), "{engine}: no grant recorded twice");
        assert_eq!(logged_grant_set, grant_ids, "{engine}: every acknowledged grant is in the log, and only those");
        let settled: Vec<&str> = events
            .iter()
            .filter(|event| event["type"] == "UsageRecorded")
            .map(|event| event["data"]["call_id"].as_str().unwrap())
            .collect();
        let settled_set: BTreeSet<&str> = settled.iter().copied().collect();
        assert_eq!(settled.len(), settled_set.len(), "{engine}: no call billed twice");
        let acknowledged: BTreeSet<&str> = record.calls.keys().map(String::as_str).collect();
        assert!(acknowledged.is_subset(&settled_set), "{engine}: every acknowledged call is billed");
        assert_eq!(acknowledged.len(), settled_set.len(), "{engine}: only calls that were authorized are billed");
        for cost in record.calls.values() {
            assert_eq!(cost.as_deref(), Some("0.20"), "{engine}");
        }
        // Balance = ₹1 per grant - ₹0.20 per settled call, exactly.
        let micros = 1_000_000 * grant_ids.len() as i64 - 200_000 * settled_set.len() as i64;
        let expected = format!("{}.{:02}", micros / 1_000_000, micros % 1_000_000 / 10_000);
        let account: Value = client
            .get(server.url("/v1/auth/account"))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(account["credit_balance"]["amount"], expected.as_str(), "{engine}: {account}");
        assert!(!grant_ids.is_empty() && !settled_set.is_empty(), "{engine}: the load did some work");
        eprintln!(
            "{engine}: {rounds} rounds, {} grants, {} calls settled, 0 lost, 0 billed twice",
            grant_ids.len(),
            settled_set.len()
        );
        server.kill();
        let (code, stdout, stderr) = run_cli(&["verify", "--database", &database.url()]);
        assert_eq!(code, 0, "{engine}: {stdout}{stderr}");
    }
}
