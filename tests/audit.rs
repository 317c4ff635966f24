//! Audit and finance through a spawned server: the three-question answer of a call (who
//! made it, for whom, who paid) for every kind of credential, cross-org isolation, the org's
//! own event log, attribution, statements that reconcile with the balance and with
//! attribution, the `bahi statement` CLI, bad input, and identical answers after a restart
//! and after `bahi rebuild`.
//!
//! Calls are produced at library level through the writer (the metering endpoints are
//! another issue's), then the real server answers over HTTP on the same database.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bahi::clock::ManualClock;
use bahi::metrics::Metrics;
use bahi::server::open_and_load;
use bahi::store::{EventStore, Store};
use bahi::writer::{CommandContext, Writer, writer};
use bahi_domain::Command;
use bahi_domain::billing::Price;
use bahi_domain::claims::AgentMode;
use bahi_domain::command::{NewKeyRecord, NewSession};
use bahi_domain::credential::{Environment, KeyPrefix, NewApiKey, Role, Scope, SecretHash};
use bahi_domain::event::CallAttribution;
use bahi_domain::ids::{AgentId, ApiKeyId, CallId, OrgId, TokenId, TopupId, UserId};
use bahi_domain::money::Money;
use chrono::Utc;
use common::{TestDatabase, TestServer, client, random16, run_cli};
use rand::RngCore;
use reqwest::{Client, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

const OPERATOR_KEY: &str = "operator-secret-for-audit-tests-0123456789";
const GPT: &str = "gpt-4o";
const CLAUDE: &str = "claude-sonnet";

fn money(text: &str) -> Money {
    Money::parse(text).unwrap()
}

/// An API key: the command record and its secret.
fn new_key(scopes: &[Scope]) -> (NewKeyRecord, String) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = NewApiKey::generate(&KeyPrefix::parse("bahi").unwrap(), Environment::Live, secret);
    let record = NewKeyRecord {
        key_id: ApiKeyId::from_random(random16()),
        hash: key.hash,
        display_prefix: key.display_prefix,
        environment: Environment::Live,
        name: Some("audit test key".into()),
        scopes: scopes.to_vec(),
        expires_at: None,
        rate_limit: None,
        budget: None,
        metadata: None,
    };
    (record, key.secret)
}

/// A console session: the command's record and the cookie header that presents it.
fn new_session() -> (NewSession, String) {
    let secret = hex::encode(random16());
    (
        NewSession { hash: SecretHash::of(&secret), expires_at: Utc::now() + chrono::Duration::days(1) },
        format!("bahi_session={secret}"),
    )
}

struct Running {
    store: Store,
    writer: Writer,
    clock: Arc<ManualClock>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_writer(database: &TestDatabase) -> Running {
    let (store, shared) = open_and_load(&database.url()).await.unwrap();
    let position = shared.read().position;
    let (committed, _) = watch::channel(position);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let (writer, task) = writer(store.clone(), shared, Arc::new(Metrics::default()), committed, clock.clone());
    Running { store, writer, clock, task: tokio::spawn(task.run()) }
}

impl Running {
    async fn submit(&self, command: Command) {
        self.writer.submit(command, CommandContext::default()).await.unwrap();
    }

    async fn stop(self) -> Store {
        drop(self.writer);
        self.task.await.unwrap();
        self.store
    }
}

/// What the scenario made, for the assertions.
struct Scenario {
    org_a: OrgId,
    org_b: OrgId,
    owner: UserId,
    key_a: String,
    key_a_id: ApiKeyId,
    narrow_key_a: String,
    key_b: String,
    auditor_cookie: String,
    finance_cookie: String,
    autonomous_agent: AgentId,
    delegated_agent: AgentId,
    /// Calls of org A by kind: api key, agent token, delegated token, external `act` token.
    call_by_key: CallId,
    call_by_agent: CallId,
    call_by_delegate: CallId,
    call_by_external: CallId,
    /// Authorized with a hold and never settled: the hold expires.
    call_expired: CallId,
    call_b: CallId,
    token_agent: TokenId,
    token_delegate: TokenId,
}

fn attribution(kind: &str, credential_id: &str, agent: Option<(&str, Option<&str>)>, act_for: &str) -> CallAttribution {
    CallAttribution {
        credential_kind: kind.into(),
        credential_id: credential_id.into(),
        agent_id: agent.map(|(id, _)| id.to_owned()),
        agent_name: agent.and_then(|(_, name)| name.map(str::to_owned)),
        act_for: act_for.into(),
    }
}

async fn call(running: &Running, org: &OrgId, who: CallAttribution, model: &str, tokens: Option<(u64, u64)>) -> CallId {
    let call_id = CallId::from_random(random16());
    running
        .submit(Command::Authorize {
            call_id: call_id.clone(),
            org_id: org.clone(),
            attribution: who,
            model: model.into(),
            max_cost: Some(money("1.00")),
            hold_ttl_seconds: if tokens.is_some() { 600 } else { 1 },
        })
        .await;
    if let Some((input_tokens, output_tokens)) = tokens {
        running
            .submit(Command::RecordUsage {
                call_id: call_id.clone(),
                model: model.into(),
                input_tokens,
                output_tokens,
                status: bahi_domain::billing::UsageStatus::Succeeded,
                request_hash: hex::encode(random16()),
                usage_source: None,
            })
            .await;
    }
    call_id
}

async fn build_scenario(database: &TestDatabase) -> Scenario {
    let running = start_writer(database).await;
    let org_a = OrgId::from_random(random16());
    let owner = UserId::from_random(random16());
    let (owner_session, _) = new_session();
    running
        .submit(Command::SignUp {
            org_id: org_a.clone(),
            org_name: "Asha Labs".into(),
            environment: Environment::Live,
            user_id: owner.clone(),
            email: "owner@asha.example".into(),
            password_hash: "$argon2id$unused".into(),
            session: owner_session,
        })
        .await;
    let mut cookies = Vec::new();
    for (role, email) in [(Role::Auditor, "auditor@asha.example"), (Role::Finance, "finance@asha.example")] {
        let user_id = UserId::from_random(random16());
        running
            .submit(Command::AddMember {
                org_id: org_a.clone(),
                added_by: owner.clone(),
                user_id: user_id.clone(),
                email: email.into(),
                password_hash: "$argon2id$unused".into(),
                role,
            })
            .await;
        let (session, cookie) = new_session();
        running.submit(Command::LogIn { user_id, session }).await;
        cookies.push(cookie);
    }
    let (key_record, key_a) = new_key(&Scope::ORG_DEFAULT);
    let key_a_id = key_record.key_id.clone();
    running.submit(Command::CreateApiKey { org_id: org_a.clone(), key: key_record }).await;
    let (narrow_record, narrow_key_a) = new_key(&[Scope::Inference]);
    running.submit(Command::CreateApiKey { org_id: org_a.clone(), key: narrow_record }).await;

    let mut agents = Vec::new();
    for (name, mode, act_for) in [
        ("ledger-bot", AgentMode::Autonomous, org_a.to_string()),
        ("asha's assistant", AgentMode::Delegated, owner.to_string()),
    ] {
        let agent_id = AgentId::from_random(random16());
        running
            .submit(Command::CreateAgent {
                org_id: org_a.clone(),
                agent_id: agent_id.clone(),
                name: name.into(),
                mode,
                act_for,
                scopes: Scope::ORG_DEFAULT.to_vec(),
                budget: None,
                rate_limit: None,
            })
            .await;
        agents.push(agent_id);
    }
    let (key_b_record, key_b) = new_key(&Scope::ORG_DEFAULT);
    let org_b = OrgId::from_random(random16());
    running
        .submit(Command::RegisterOrg {
            org_id: org_b.clone(),
            display_name: "Other Org".into(),
            environment: Environment::Live,
            first_key: key_b_record,
            first_agent: None,
        })
        .await;

    for (model, input, output) in [(GPT, "2.50", "10"), (CLAUDE, "3", "15")] {
        running
            .submit(Command::SetPrice {
                model: model.into(),
                price: Price { input_per_million: money(input), output_per_million: money(output) },
                default_hold: None,
            })
            .await;
    }
    running
        .submit(Command::Grant {
            org_id: org_a.clone(),
            grant_id: TopupId::from_random(random16()),
            amount: money("100"),
            reason: "welcome, \"early\" customer".into(),
        })
        .await;
    running
        .submit(Command::TopUp {
            org_id: org_a.clone(),
            topup_id: TopupId::from_random(random16()),
            amount: money("50.25"),
            payment_reference: "=pay_0001".into(),
            user_id: owner.clone(),
        })
        .await;
    running
        .submit(Command::Grant {
            org_id: org_b.clone(),
            grant_id: TopupId::from_random(random16()),
            amount: money("10"),
            reason: "trial".into(),
        })
        .await;

    let key_a_id_text = key_a_id.to_string();
    let token_agent = TokenId::from_random(random16());
    let token_delegate = TokenId::from_random(random16());
    let (autonomous, delegated) = (agents[0].to_string(), agents[1].to_string());
    let call_by_key =
        call(&running, &org_a, attribution("api_key", &key_a_id_text, None, org_a.as_str()), GPT, Some((1234, 567)))
            .await;
    let call_by_agent = call(
        &running,
        &org_a,
        attribution("agent_token", token_agent.as_str(), Some((&autonomous, Some("ledger-bot"))), org_a.as_str()),
        GPT,
        Some((20_000, 1_000)),
    )
    .await;
    let call_by_delegate = call(
        &running,
        &org_a,
        attribution(
            "agent_token",
            token_delegate.as_str(),
            Some((&delegated, Some("asha's assistant"))),
            owner.as_str(),
        ),
        CLAUDE,
        Some((999, 1)),
    )
    .await;
    // A bring-your-own issuer's token with `act`: act.sub is the agent, sub the principal.
    let call_by_external = call(
        &running,
        &org_a,
        attribution("agent_token", "ext-jti-77", Some(("iss_Ekam:ekam-agent-8", None)), "priya@ekam.example"),
        CLAUDE,
        Some((10, 10)),
    )
    .await;
    let call_expired =
        call(&running, &org_a, attribution("api_key", &key_a_id_text, None, org_a.as_str()), GPT, None).await;
    running.clock.advance(chrono::TimeDelta::milliseconds(1100));
    running.submit(Command::ExpireHolds).await;
    let call_b =
        call(&running, &org_b, attribution("api_key", "key_other", None, org_b.as_str()), GPT, Some((5, 5))).await;
    running.stop().await;
    Scenario {
        org_a,
        org_b,
        owner,
        key_a,
        key_a_id,
        narrow_key_a,
        key_b,
        auditor_cookie: cookies[0].clone(),
        finance_cookie: cookies[1].clone(),
        autonomous_agent: agents[0].clone(),
        delegated_agent: agents[1].clone(),
        call_by_key,
        call_by_agent,
        call_by_delegate,
        call_by_external,
        call_expired,
        call_b,
        token_agent,
        token_delegate,
    }
}

async fn get(client: &Client, server: &TestServer, credential: &str, path: &str) -> Response {
    let request = client.get(server.url(path));
    let request = if credential.starts_with("bahi_session=") {
        request.header("cookie", credential)
    } else {
        request.bearer_auth(credential)
    };
    request.send().await.unwrap()
}

async fn get_json(client: &Client, server: &TestServer, credential: &str, path: &str) -> Value {
    let response = get(client, server, credential, path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn status_and_type(client: &Client, server: &TestServer, credential: &str, path: &str) -> (u16, String) {
    let response = get(client, server, credential, path).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(body["error"]["request_id"].is_string(), "{path}: error body shape: {body}");
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

fn amount(value: &Value) -> Money {
    assert_eq!(value["currency"], "inr", "{value}");
    money(value["amount"].as_str().unwrap())
}

fn today() -> String {
    Utc::now().format("%Y-%m-%d").to_string()
}

fn tomorrow() -> String {
    (Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string()
}

async fn start_server(database: &TestDatabase) -> TestServer {
    TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)])
}

#[tokio::test]
async fn a_call_answers_who_made_it_for_whom_and_who_paid() {
    for database in TestDatabase::all().await {
        let scenario = build_scenario(&database).await;
        let server = start_server(&database).await;
        let client = client();
        let engine = database.engine();
        let store = Store::open(&database.url()).await.unwrap();
        let log = store.read_after(0, 10_000).await.unwrap();
        let hash_at = |position: i64| hex::encode(log[usize::try_from(position - 1).unwrap()].hash);

        let by_key =
            get_json(&client, &server, &scenario.key_a, &format!("/v1/audit/calls/{}", scenario.call_by_key)).await;
        assert_eq!(by_key["call_id"], scenario.call_by_key.as_str());
        assert_eq!(by_key["agent"], Value::Null, "{engine}");
        assert_eq!(by_key["act_for"], scenario.org_a.as_str());
        assert_eq!(by_key["payer_org_id"], scenario.org_a.as_str());
        assert_eq!(by_key["credential"], json!({"kind": "api_key", "id": scenario.key_a_id.as_str()}));
        assert_eq!(by_key["model"], GPT);
        assert_eq!((by_key["input_tokens"].as_i64(), by_key["output_tokens"].as_i64()), (Some(1234), Some(567)));
        // 1,234 × 2.50/M + 567 × 10/M = 0.003085 + 0.00567 = 0.008755.
        assert_eq!(amount(&by_key["cost"]), money("0.008755"));
        assert!(by_key["authorized_at"].as_str().unwrap() <= by_key["settled_at"].as_str().unwrap());
        let events = by_key["events"].as_array().unwrap();
        let types: Vec<&str> = events.iter().map(|event| event["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["CallAuthorized", "UsageRecorded"], "{engine}");
        for event in events {
            let position = event["position"].as_i64().unwrap();
            assert_eq!(event["hash"], hash_at(position), "{engine}: the hash is the log's");
            assert_eq!(log[usize::try_from(position - 1).unwrap()].event_type, event["type"].as_str().unwrap());
        }

        let by_agent =
            get_json(&client, &server, &scenario.key_a, &format!("/v1/audit/calls/{}", scenario.call_by_agent)).await;
        assert_eq!(by_agent["agent"], json!({"id": scenario.autonomous_agent.as_str(), "name": "ledger-bot"}));
        assert_eq!(by_agent["act_for"], scenario.org_a.as_str());
        assert_eq!(by_agent["credential"], json!({"kind": "agent_token", "id": scenario.token_agent.as_str()}));
        assert_eq!(by_agent["payer_org_id"], scenario.org_a.as_str());

        let by_delegate = get_json(
            &client,
            &server,
            &scenario.auditor_cookie,
            &format!("/v1/audit/calls/{}", scenario.call_by_delegate),
        )
        .await;
        assert_eq!(by_delegate["agent"], json!({"id": scenario.delegated_agent.as_str(), "name": "asha's assistant"}));
        assert_eq!(by_delegate["act_for"], scenario.owner.as_str(), "{engine}: a delegated call acts for its human");
        assert_eq!(by_delegate["credential"]["id"], scenario.token_delegate.as_str());
        assert_eq!(by_delegate["model"], CLAUDE);

        let by_external =
            get_json(&client, &server, &scenario.key_a, &format!("/v1/audit/calls/{}", scenario.call_by_external))
                .await;
        assert_eq!(by_external["agent"], json!({"id": "iss_Ekam:ekam-agent-8", "name": null}));
        assert_eq!(by_external["act_for"], "priya@ekam.example");
        assert_eq!(by_external["credential"], json!({"kind": "agent_token", "id": "ext-jti-77"}));
        assert_eq!(by_external["payer_org_id"], scenario.org_a.as_str());

        let expired =
            get_json(&client, &server, &scenario.key_a, &format!("/v1/audit/calls/{}", scenario.call_expired)).await;
        assert_eq!(expired["settled_at"], Value::Null);
        assert_eq!(expired["cost"], Value::Null);
        let types: Vec<&str> =
            expired["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["CallAuthorized", "HoldExpired"], "{engine}");

        // Another org's call is 404 both ways; the operator sees any org's.
        let path_b = format!("/v1/audit/calls/{}", scenario.call_b);
        assert_eq!(status_and_type(&client, &server, &scenario.key_a, &path_b).await, (404, "not_found".into()));
        let path_a = format!("/v1/audit/calls/{}", scenario.call_by_key);
        assert_eq!(status_and_type(&client, &server, &scenario.key_b, &path_a).await, (404, "not_found".into()));
        let seen_by_operator = get_json(&client, &server, OPERATOR_KEY, &path_b).await;
        assert_eq!(seen_by_operator["payer_org_id"], scenario.org_b.as_str());
        // Unknown and malformed ids; credentials without audit:read.
        let unknown = format!("/v1/audit/calls/{}", CallId::from_random(random16()));
        assert_eq!(status_and_type(&client, &server, &scenario.key_a, &unknown).await.0, 404);
        assert_eq!(status_and_type(&client, &server, &scenario.key_a, "/v1/audit/calls/nope").await.0, 400);
        assert_eq!(
            status_and_type(&client, &server, &scenario.narrow_key_a, &path_a).await,
            (403, "insufficient_scope".into())
        );
        assert_eq!(status_and_type(&client, &server, &scenario.finance_cookie, &path_a).await.0, 403);
        assert_eq!(status_and_type(&client, &server, "bahi_live_nope", &path_a).await.0, 401);
    }
}

#[tokio::test]
async fn the_event_log_shows_an_org_its_own_events_only_in_order() {
    for database in TestDatabase::all().await {
        let scenario = build_scenario(&database).await;
        let server = start_server(&database).await;
        let client = client();
        let engine = database.engine();
        let store = Store::open(&database.url()).await.unwrap();
        let log = store.read_after(0, 10_000).await.unwrap();

        let all = get_json(&client, &server, &scenario.key_a, "/v1/audit/events?limit=1000").await;
        let events = all["data"].as_array().unwrap();
        assert_eq!(all["has_more"], false);
        let b_events = get_json(&client, &server, &scenario.key_b, "/v1/audit/events").await;
        let b_positions: Vec<i64> =
            b_events["data"].as_array().unwrap().iter().map(|e| e["position"].as_i64().unwrap()).collect();
        assert!(!b_positions.is_empty());
        let mut last = 0;
        for event in events {
            let position = event["position"].as_i64().unwrap();
            assert!(position > last, "{engine}: log order");
            last = position;
            assert!(!b_positions.contains(&position), "{engine}: never another org's event");
            let stored = &log[usize::try_from(position - 1).unwrap()];
            assert_eq!(event["type"], stored.event_type.as_str());
            assert_eq!(event["hash"], hex::encode(stored.hash));
            assert_eq!(event["data"], bahi_domain::event::served_payload(&stored.payload).unwrap());
            assert!(event["recorded_at"].as_str().unwrap().ends_with('Z'));
            let type_name = event["type"].as_str().unwrap();
            assert!(
                !["PriceSet", "SigningKeyAdded"].contains(&type_name),
                "{engine}: events without an org are hidden"
            );
        }
        let org_a_text = scenario.org_a.to_string();
        let expected: Vec<i64> = log
            .iter()
            .filter(|stored| {
                let event =
                    bahi_domain::Event::decode(&stored.event_type, stored.schema_version, &stored.payload).unwrap();
                event.org_id().map(|org| org.as_str()) == Some(org_a_text.as_str())
            })
            .map(|stored| stored.position)
            .collect();
        let shown: Vec<i64> = events.iter().map(|e| e["position"].as_i64().unwrap()).collect();
        assert_eq!(shown, expected, "{engine}: every event of the org, nothing else");

        // Pages of 3 concatenate to the whole.
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let page = get_json(
                &client,
                &server,
                &scenario.auditor_cookie,
                &format!("/v1/audit/events?after={after}&limit=3"),
            )
            .await;
            let data = page["data"].as_array().unwrap();
            assert!(data.len() <= 3);
            paged.extend(data.iter().map(|e| e["position"].as_i64().unwrap()));
            if page["has_more"] == false {
                break;
            }
            after = page["next_after"].as_i64().unwrap();
        }
        assert_eq!(paged, expected, "{engine}");

        // The operator names the org; an org naming another org gets 404.
        let as_operator =
            get_json(&client, &server, OPERATOR_KEY, &format!("/v1/audit/events?org_id={}&limit=1000", scenario.org_b))
                .await;
        assert_eq!(as_operator["data"], b_events["data"]);
        let other = format!("/v1/audit/events?org_id={}", scenario.org_b);
        assert_eq!(status_and_type(&client, &server, &scenario.key_a, &other).await.0, 404);
        assert_eq!(status_and_type(&client, &server, OPERATOR_KEY, "/v1/audit/events").await.0, 400);
        for bad in ["limit=0", "limit=1001", "after=-1", "after=abc", "limit=1.5", "colour=red", "org_id=nope"] {
            let (status, _) =
                status_and_type(&client, &server, &scenario.key_a, &format!("/v1/audit/events?{bad}")).await;
            assert_eq!(status, 400, "{engine}: {bad}");
        }
    }
}

fn csv_lines(body: &str) -> Vec<Vec<String>> {
    // A small RFC 4180 reader: enough to check what the statement writes.
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "CRLF line ends");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(field.is_empty() && row.is_empty(), "the body ends with CRLF");
    rows
}

#[tokio::test]
async fn statements_reconcile_with_the_balance_and_with_attribution() {
    for database in TestDatabase::all().await {
        let scenario = build_scenario(&database).await;
        let server = start_server(&database).await;
        let client = client();
        let engine = database.engine();
        let (today, tomorrow) = (today(), tomorrow());

        let account = get_json(&client, &server, &scenario.key_a, "/v1/auth/account").await;
        let balance = amount(&account["credit_balance"]);
        let statement_path = format!("/v1/statements?from={today}&to={today}&format=json");
        let statement = get_json(&client, &server, &scenario.finance_cookie, &statement_path).await;
        let opening = amount(&statement["opening_balance"]);
        let closing = amount(&statement["closing_balance"]);
        let credits = amount(&statement["total_credits"]);
        let debits = amount(&statement["total_debits"]);
        assert_eq!(opening, Money::ZERO, "{engine}");
        assert_eq!(opening.checked_add(credits).unwrap().checked_sub(debits).unwrap(), closing, "{engine}");
        assert_eq!(closing, balance, "{engine}: closing is the account balance");
        assert_eq!(credits, money("150.25"));
        let rows = statement["rows"].as_array().unwrap();
        let types: Vec<&str> = rows.iter().map(|row| row["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["grant", "topup", "usage", "usage", "usage", "usage", "hold_release"], "{engine}");
        let mut running = opening;
        for row in rows {
            running = running.checked_add(amount(&row["credit"])).unwrap().checked_sub(amount(&row["debit"])).unwrap();
            assert_eq!(amount(&row["balance"]), running, "{engine}: running balance");
            assert_eq!(row["recorded_balance"], row["balance"]);
        }
        let release = rows.last().unwrap();
        assert_eq!(release["call_id"], scenario.call_expired.as_str());
        assert_eq!((amount(&release["debit"]), amount(&release["credit"])), (Money::ZERO, Money::ZERO));
        assert_eq!(amount(&release["hold_released"]), money("1.00"));
        // The release says whose call it was, as the call's other rows do.
        assert_eq!(release["credential"], json!({"kind": "api_key", "id": scenario.key_a_id.as_str()}), "{engine}");
        assert_eq!(
            (&release["model"], &release["act_for"]),
            (&json!(GPT), &json!(scenario.org_a.as_str())),
            "{engine}"
        );
        let usage = &rows[2];
        assert_eq!(usage["call_id"], scenario.call_by_key.as_str());
        assert_eq!(usage["credential"], json!({"kind": "api_key", "id": scenario.key_a_id.as_str()}));
        assert_eq!(usage["model"], GPT);
        assert_eq!(usage["input_tokens"], 1234);
        assert_eq!(rows[4]["agent"]["id"], scenario.delegated_agent.as_str());
        assert_eq!(rows[4]["act_for"], scenario.owner.as_str());

        // A later period opens at the balance and holds no rows.
        let later =
            get_json(&client, &server, &scenario.key_a, &format!("/v1/statements?from={tomorrow}&to={tomorrow}")).await;
        assert_eq!(amount(&later["opening_balance"]), balance);
        assert_eq!(amount(&later["closing_balance"]), balance);
        assert_eq!(later["rows"], json!([]));

        // Attribution over the same period sums to the usage debits exactly, however grouped.
        let usage_debits = rows
            .iter()
            .filter(|row| row["type"] == "usage")
            .fold(Money::ZERO, |sum, row| sum.checked_add(amount(&row["debit"])).unwrap());
        assert_eq!(usage_debits, debits);
        for group_by in ["", "agent", "act_for", "model", "api_key", "day", "agent,act_for,model,api_key,day"] {
            let report = get_json(
                &client,
                &server,
                &scenario.auditor_cookie,
                &format!("/v1/audit/attribution?from={today}&to={today}&group_by={group_by}"),
            )
            .await;
            let rows = report["rows"].as_array().unwrap();
            let cost = rows.iter().fold(Money::ZERO, |sum, row| sum.checked_add(amount(&row["cost"])).unwrap());
            assert_eq!(cost, usage_debits, "{engine}: group_by={group_by}");
            assert_eq!(amount(&report["totals"]["cost"]), usage_debits);
            let calls: i64 = rows.iter().map(|row| row["calls"].as_i64().unwrap()).sum();
            assert_eq!(calls, 4, "{engine}: settled calls, group_by={group_by}");
        }
        let by_agent = get_json(&client, &server, &scenario.key_a, "/v1/audit/attribution?group_by=agent").await;
        let agents: Vec<Value> = by_agent["rows"].as_array().unwrap().iter().map(|row| row["agent"].clone()).collect();
        assert_eq!(agents.len(), 4, "{engine}: keys (no agent), two agents, the external one: {agents:?}");
        assert!(agents.contains(&Value::Null));
        assert!(agents.contains(&json!({"id": scenario.autonomous_agent.as_str(), "name": "ledger-bot"})));
        let by_key = get_json(&client, &server, &scenario.key_a, "/v1/audit/attribution?group_by=api_key,model").await;
        let key_row = by_key["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["api_key"] == scenario.key_a_id.as_str())
            .unwrap()
            .clone();
        assert_eq!(key_row["calls"], 1);
        assert_eq!(key_row["model"], GPT);
        assert_eq!((key_row["input_tokens"].as_i64(), key_row["output_tokens"].as_i64()), (Some(1234), Some(567)));
        // Nothing happened tomorrow.
        let nothing = get_json(
            &client,
            &server,
            &scenario.key_a,
            &format!("/v1/audit/attribution?from={tomorrow}&group_by=agent"),
        )
        .await;
        assert_eq!(nothing["rows"], json!([]));

        // CSV: header, opening row, one row per entry, closing row; RFC 4180; plain decimals.
        let response =
            get(&client, &server, &scenario.key_a, &format!("/v1/statements?from={today}&to={today}&format=csv")).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
        assert!(response.headers()["content-disposition"].to_str().unwrap().contains(".csv"));
        let body = response.text().await.unwrap();
        let lines = csv_lines(&body);
        assert_eq!(lines[0][0], "position");
        assert_eq!(lines[0].len(), 18);
        assert!(lines.iter().all(|line| line.len() == 18), "{engine}: every row has every column");
        assert_eq!(lines[1][2], "opening_balance");
        assert_eq!(lines[1][17], "0.00");
        assert_eq!(lines.len(), 2 + rows.len() + 1);
        let grant = &lines[2];
        assert_eq!(
            (grant[2].as_str(), grant[4].as_str(), grant[15].as_str()),
            ("grant", "welcome, \"early\" customer", "100.00")
        );
        assert_eq!(lines[3][4], "'=pay_0001", "{engine}: a formula-like reference is defused");
        assert_eq!(lines[3][15], "50.25");
        assert_eq!(lines[4][14], "0.008755");
        let closing_line = lines.last().unwrap();
        assert_eq!(closing_line[2], "closing_balance");
        assert_eq!(money(&closing_line[17]), balance);
        // Summary rows carry balances only: a spreadsheet's column sums count each amount once.
        for summary in [&lines[1], closing_line] {
            assert_eq!((summary[14].as_str(), summary[15].as_str(), summary[16].as_str()), ("", "", ""), "{engine}");
        }
        let column_sum = |index: usize| {
            lines[1..]
                .iter()
                .filter(|line| !line[index].is_empty())
                .fold(Money::ZERO, |sum, line| sum.checked_add(money(&line[index])).unwrap())
        };
        assert_eq!(column_sum(14), debits, "{engine}: the debit column sums to the debits, once");
        assert_eq!(column_sum(15), credits, "{engine}: the credit column sums to the credits, once");
        let reconciled = money(&lines[1][17]).checked_add(column_sum(15)).unwrap().checked_sub(column_sum(14)).unwrap();
        assert_eq!(reconciled, balance, "{engine}: opening + credit column - debit column = closing");

        // The offline CLI writes the same bytes.
        let url = database.url();
        let org = scenario.org_a.to_string();
        let (code, stdout, stderr) = run_cli(&[
            "statement",
            "--database",
            &url,
            "--org",
            &org,
            "--from",
            &today,
            "--to",
            &today,
            "--format",
            "csv",
        ]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout, body, "{engine}: CLI and HTTP agree");
        let (code, _, stderr) =
            run_cli(&["statement", "--database", &url, "--org", &org, "--from", &tomorrow, "--to", &today]);
        assert_ne!(code, 0);
        assert!(stderr.contains("from must not be after to"), "{stderr}");

        // Roles and scopes: finance, auditors and keys read statements; finance reads no audit.
        let auditor_statement = get_json(&client, &server, &scenario.auditor_cookie, &statement_path).await;
        assert_eq!(auditor_statement, statement, "{engine}: the auditor reads the same statement");
        assert_eq!(status_and_type(&client, &server, &scenario.narrow_key_a, &statement_path).await.0, 403);
        assert_eq!(status_and_type(&client, &server, &scenario.finance_cookie, "/v1/audit/attribution").await.0, 403);
        let operator_statement = get_json(
            &client,
            &server,
            OPERATOR_KEY,
            &format!("/v1/statements?from={today}&to={today}&org_id={}", scenario.org_b),
        )
        .await;
        assert_eq!(amount(&operator_statement["total_credits"]), money("10"));
        assert_eq!(operator_statement["rows"].as_array().unwrap().len(), 2);

        // Bad input is a JSON 400.
        for bad in [
            "/v1/statements?to=2026-01-31".to_owned(),
            "/v1/statements?from=2026-01-01".to_owned(),
            "/v1/statements?from=2026-13-01&to=2026-12-31".to_owned(),
            "/v1/statements?from=2026-02-01&to=2026-01-31".to_owned(),
            "/v1/statements?from=2026-01-01T00:00:00Z&to=2026-01-31".to_owned(),
            "/v1/statements?from=2026-01-01&to=2026-01-31&format=xml".to_owned(),
            "/v1/statements?from=2026-01-01&to=2026-01-31&colour=red".to_owned(),
            "/v1/audit/attribution?group_by=agent,colour".to_owned(),
            "/v1/audit/attribution?from=yesterday".to_owned(),
            "/v1/audit/attribution?from=2026-02-01&to=2026-01-31".to_owned(),
        ] {
            let (status, error_type) = status_and_type(&client, &server, &scenario.key_a, &bad).await;
            assert_eq!((status, error_type.as_str()), (400, "invalid_request"), "{engine}: {bad}");
        }
        let other = format!("/v1/statements?from={today}&to={today}&org_id={}", scenario.org_b);
        assert_eq!(status_and_type(&client, &server, &scenario.key_a, &other).await.0, 404);
    }
}

/// Every audit and finance answer of the scenario, as text.
async fn answers(client: &Client, server: &TestServer, scenario: &Scenario) -> Vec<(String, String)> {
    let (today, tomorrow) = (today(), tomorrow());
    let mut paths: Vec<String> = [
        &scenario.call_by_key,
        &scenario.call_by_agent,
        &scenario.call_by_delegate,
        &scenario.call_by_external,
        &scenario.call_expired,
    ]
    .iter()
    .map(|call| format!("/v1/audit/calls/{call}"))
    .collect();
    paths.extend([
        format!("/v1/statements?from={today}&to={today}&format=json"),
        format!("/v1/statements?from={today}&to={today}&format=csv"),
        format!("/v1/statements?from={tomorrow}&to={tomorrow}&format=csv"),
        "/v1/audit/attribution?group_by=agent,act_for,model,api_key,day".to_owned(),
        format!("/v1/audit/attribution?from={today}&to={today}&group_by=model"),
        "/v1/audit/events?limit=1000".to_owned(),
    ]);
    let mut answers = Vec::new();
    for path in paths {
        let response = get(client, server, &scenario.key_a, &path).await;
        assert_eq!(response.status(), 200, "{path}");
        answers.push((path, response.text().await.unwrap()));
    }
    answers
}

/// Events are append-only: a later answer may hold events recorded since (a key's last use
/// is recorded when the node stops), never different ones.
fn same_answers(before: &[(String, String)], after: &[(String, String)], what: &str) {
    assert_eq!(before.len(), after.len());
    for ((path, old), (_, new)) in before.iter().zip(after) {
        if path.starts_with("/v1/audit/events") {
            let old: Value = serde_json::from_str(old).unwrap();
            let new: Value = serde_json::from_str(new).unwrap();
            let (old, new) = (old["data"].as_array().unwrap(), new["data"].as_array().unwrap());
            assert_eq!(&new[..old.len()], &old[..], "{what}: {path}");
            assert!(new[old.len()..].iter().all(|event| event["type"] == "ApiKeyUsed"), "{what}: {path}");
        } else {
            assert_eq!(old, new, "{what}: {path}");
        }
    }
}

#[tokio::test]
async fn every_answer_is_the_same_after_a_restart_and_after_rebuild() {
    for database in TestDatabase::all().await {
        let scenario = build_scenario(&database).await;
        let client = client();
        let mut server = start_server(&database).await;
        let first = answers(&client, &server, &scenario).await;
        assert!(server.terminate().success());

        let mut server = start_server(&database).await;
        let restarted = answers(&client, &server, &scenario).await;
        same_answers(&first, &restarted, &format!("{}: restart", database.engine()));
        assert!(server.terminate().success());

        let tables = ["read_ledger_entries", "read_calls", "read_org_events"];
        let store = Store::open(&database.url()).await.unwrap();
        let mut live = Vec::new();
        for table in tables {
            live.push(store.dump_table(table).await.unwrap());
        }
        assert!(live.iter().all(|rows| !rows.is_empty()));
        let (code, stdout, stderr) = run_cli(&["rebuild", "--database", &database.url()]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        for (table, rows) in tables.iter().zip(&live) {
            assert_eq!(&store.dump_table(table).await.unwrap(), rows, "{}: {table} rebuilt", database.engine());
        }
        let server = start_server(&database).await;
        let rebuilt = answers(&client, &server, &scenario).await;
        same_answers(&first, &rebuilt, &format!("{}: rebuild", database.engine()));
    }
}

/// The cookie a signup or login answer sets.
fn set_cookie(response: &Response) -> String {
    let header = response.headers().get("set-cookie").unwrap().to_str().unwrap();
    header.split(';').next().unwrap().to_owned()
}

async fn post_json(
    client: &Client,
    server: &TestServer,
    credential: Option<&str>,
    path: &str,
    body: Value,
) -> Response {
    let request = client.post(server.url(path)).json(&body);
    let request = match credential {
        Some(cookie) if cookie.starts_with("bahi_session=") => request.header("cookie", cookie),
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    request.send().await.unwrap()
}

/// The string values of every secret-named field in a payload (at any depth).
fn secret_values(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                match field {
                    Value::String(text) if bahi_domain::event::is_secret_field(name) && !text.is_empty() => {
                        found.push(text.clone());
                    }
                    _ => secret_values(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| secret_values(item, found)),
        _ => {}
    }
}

/// Paths of secret-named fields that are served with a value other than the redaction mark.
fn unredacted_fields(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let path = format!("{path}.{name}");
                let marked = field.is_null() || *field == Value::String(bahi_domain::event::REDACTED.into());
                if bahi_domain::event::is_secret_field(name) && !marked {
                    found.push(path.clone());
                }
                unredacted_fields(field, &path, found);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                unredacted_fields(item, &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn auditors_and_audit_tokens_never_read_password_session_or_key_hashes() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let mut server = start_server(&database).await;
        let client = client();
        let signup = post_json(
            &client,
            &server,
            None,
            "/me/signup",
            json!({"email": "owner@asha.example", "password": "Owner-Pass-1", "org_name": "Asha"}),
        )
        .await;
        assert_eq!(signup.status(), 201);
        let owner = set_cookie(&signup);
        let signup: Value = signup.json().await.unwrap();
        let org_id = signup["org_id"].as_str().map(str::to_owned).unwrap_or_default();
        let login = post_json(
            &client,
            &server,
            None,
            "/me/login",
            json!({"email": "owner@asha.example", "password": "Owner-Pass-1"}),
        )
        .await;
        assert_eq!(login.status(), 200);
        let second_owner_session = set_cookie(&login);
        let added = post_json(
            &client,
            &server,
            Some(&owner),
            "/v1/auth/account/members",
            json!({"email": "auditor@asha.example", "role": "auditor", "password": "Auditor-Pass-1"}),
        )
        .await;
        assert_eq!(added.status(), 201);
        let login = post_json(
            &client,
            &server,
            None,
            "/me/login",
            json!({"email": "auditor@asha.example", "password": "Auditor-Pass-1"}),
        )
        .await;
        assert_eq!(login.status(), 200);
        let auditor = set_cookie(&login);
        let key = post_json(
            &client,
            &server,
            Some(&owner),
            "/v1/auth/account/api-keys",
            json!({"name": "worker", "metadata": {"db_password": "metadata-secret-value"}}),
        )
        .await;
        assert_eq!(key.status(), 201);
        let key: Value = key.json().await.unwrap();
        let api_key = key["api_key"].as_str().unwrap().to_owned();
        let agent = post_json(
            &client,
            &server,
            Some(&owner),
            "/me/agents",
            json!({"name": "auditor-bot", "scopes": ["audit:read"]}),
        )
        .await;
        assert_eq!(agent.status(), 201);
        let agent: Value = agent.json().await.unwrap();
        let token = post_json(
            &client,
            &server,
            Some(&owner),
            &format!("/me/agents/{}/token", agent["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
        assert_eq!(token.status(), 200);
        let token: Value = token.json().await.unwrap();
        let token = token["access_token"].as_str().unwrap().to_owned();
        let rotated = post_json(&client, &server, Some(OPERATOR_KEY), "/v1/admin/signing-keys/rotate", json!({})).await;
        assert!(rotated.status().is_success(), "{engine}: rotate {}", rotated.status());
        assert_eq!(
            post_json(&client, &server, Some(&second_owner_session), "/me/logout", json!({})).await.status(),
            200
        );

        // Every secret the log holds, read from the stored payloads.
        let store = Store::open(&database.url()).await.unwrap();
        let log = store.read_after(0, 10_000).await.unwrap();
        let mut secrets = Vec::new();
        for stored in &log {
            secret_values(&serde_json::from_slice(&stored.payload).unwrap(), &mut secrets);
        }
        let types: Vec<&str> = log.iter().map(|stored| stored.event_type.as_str()).collect();
        for expected in
            ["UserSignedUp", "MemberAdded", "SessionStarted", "SessionEnded", "ApiKeyCreated", "SigningKeyAdded"]
        {
            assert!(types.contains(&expected), "{engine}: the log has a {expected}");
        }
        for cookie in [&owner, &second_owner_session, &auditor] {
            let session = cookie.trim_start_matches("bahi_session=");
            secrets.push(SecretHash::of(session).to_hex());
        }
        secrets.push(SecretHash::of(&api_key).to_hex());
        assert!(secrets.iter().any(|secret| secret.starts_with("$argon2")), "{engine}: the log holds password hashes");
        assert!(secrets.contains(&"metadata-secret-value".to_owned()));

        let operator_path = format!("/v1/audit/events?org_id={org_id}&limit=1000");
        for (who, credential, path) in [
            ("auditor session", auditor.as_str(), "/v1/audit/events?limit=1000"),
            ("audit:read agent token", token.as_str(), "/v1/audit/events?limit=1000"),
            ("operator", OPERATOR_KEY, operator_path.as_str()),
        ] {
            let response = get(&client, &server, credential, path).await;
            assert_eq!(response.status(), 200, "{engine}: {who}");
            let body = response.text().await.unwrap();
            assert!(!body.contains("$argon2"), "{engine}: {who} read a password hash");
            for secret in &secrets {
                assert!(!body.contains(secret.as_str()), "{engine}: {who} read {secret}");
            }
            let served: Value = serde_json::from_str(&body).unwrap();
            let data = served["data"].as_array().unwrap();
            let mut found = Vec::new();
            for event in data {
                // The row's own `hash` is the chain's and is public; its data is checked whole.
                unredacted_fields(&event["data"], event["type"].as_str().unwrap(), &mut found);
            }
            assert!(found.is_empty(), "{engine}: {who} read secret fields {found:?}");
            let signed_up = data.iter().find(|event| event["type"] == "UserSignedUp").unwrap();
            assert_eq!(signed_up["data"]["password_hash"], bahi_domain::event::REDACTED, "{engine}: marked");
            assert_eq!(signed_up["data"]["email"], "owner@asha.example", "{engine}: the rest is shown");
            let session = data.iter().find(|event| event["type"] == "SessionStarted").unwrap();
            assert_eq!(session["data"]["session_hash"], bahi_domain::event::REDACTED, "{engine}: marked");
        }
        assert!(server.terminate().success());

        // The stored bytes are untouched: the chain still verifies.
        let (code, stdout, stderr) = run_cli(&["verify", "--database", &database.url()]);
        assert_eq!(code, 0, "{engine}: {stdout}{stderr}");
    }
}
