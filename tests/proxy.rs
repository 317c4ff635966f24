//! The inference proxy, end to end: a fake OpenAI/Anthropic upstream (a test fixture,
//! `tests/fixtures/fake_upstream.py`), a spawned `bahi serve`, and the official `openai`
//! and `anthropic` Python SDKs as clients (from `scripts/python-env.sh`; the test script
//! passes their interpreter in `BAHI_TEST_PYTHON`). bahi's code paths are all real.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use bahi_domain::Money;
use bahi_domain::billing::{Price, call_cost};
use common::{TestDatabase, TestServer, client, eventually};
use reqwest::{Client, Response};
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-the-proxy-tests-0123456789";

/// The fake upstream, killed when dropped.
struct FakeUpstream {
    child: Child,
    port: u16,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake_upstream.py");
        let mut child = Command::new("python3").arg(script).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("PORT ").and_then(|port| port.parse().ok()).expect("PORT <n> first");
        FakeUpstream { child, port }
    }

    fn openai_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn anthropic_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The prices every model here is configured with, per provider.
fn openai_price() -> Price {
    Price { input_per_million: Money::parse("100").unwrap(), output_per_million: Money::parse("200").unwrap() }
}

fn anthropic_price() -> Price {
    Price { input_per_million: Money::parse("300").unwrap(), output_per_million: Money::parse("1500").unwrap() }
}

async fn configure(client: &Client, server: &TestServer, model: &str, body: Value) {
    let response = client
        .put(server.url(&format!("/v1/admin/models/{model}")))
        .bearer_auth(OPERATOR_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{model}: {}", response.text().await.unwrap());
}

/// bahi in front of the fake, with every model the tests and the SDK smoke use.
async fn gateway(database: &TestDatabase) -> (TestServer, FakeUpstream) {
    let upstream = FakeUpstream::start();
    let server = TestServer::start_with(
        &database.url(),
        &[("BAHI_OPERATOR_KEY", OPERATOR_KEY), ("BAHI_DEFAULT_RATE_LIMIT", "100000/1")],
    );
    let client = client();
    let openai = |price: Price| {
        json!({"provider": "openai", "upstream_base_url": upstream.openai_url(), "upstream_api_key": "sk-upstream-openai",
               "input_per_million": price.input_per_million.to_string(), "output_per_million": price.output_per_million.to_string()})
    };
    let anthropic = |price: Price| {
        json!({"provider": "anthropic", "upstream_base_url": upstream.anthropic_url(), "upstream_api_key": "sk-upstream-anthropic",
               "input_per_million": price.input_per_million.to_string(), "output_per_million": price.output_per_million.to_string()})
    };
    for model in
        ["gpt-4o-mini", "gpt-4o-mini-fail-429", "text-embedding-3-small", "gpt-no-usage", "gpt-slow", "gpt-cut"]
    {
        configure(&client, &server, model, openai(openai_price())).await;
    }
    for model in ["claude-sonnet-4-5", "claude-sonnet-4-5-fail-429", "claude-no-usage"] {
        configure(&client, &server, model, anthropic(anthropic_price())).await;
    }
    (server, upstream)
}

/// A new org with an agent-bound key and `credit` INR: (org id, key, agent id).
async fn funded_org(client: &Client, server: &TestServer, credit: &str) -> (String, String, String) {
    let registered: Value = client
        .post(server.url("/v1/auth/agent-register"))
        .json(&json!({"agent_name": "proxy-tester"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org_id = registered["org_id"].as_str().unwrap().to_owned();
    let response = client
        .post(server.url("/v1/admin/credits/grants"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"org_id": org_id, "amount": credit, "reason": "proxy test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let key = registered["api_key"].as_str().unwrap().to_owned();
    (org_id, key, registered["agent_id"].as_str().unwrap().to_owned())
}

/// The SDKs' interpreter, or `None` (said plainly) outside CI when it was not prepared.
fn sdk_python() -> Option<String> {
    match std::env::var("BAHI_TEST_PYTHON") {
        Ok(python) if !python.is_empty() => Some(python),
        _ if std::env::var_os("CI").is_some() => panic!("CI must run the SDK tests: BAHI_TEST_PYTHON is not set"),
        _ => {
            eprintln!(
                "proxy.rs: BAHI_TEST_PYTHON not set (scripts/python-env.sh): the official-SDK checks DID NOT RUN"
            );
            None
        }
    }
}

fn run_python(python: &str, arguments: &[&str]) -> (bool, String) {
    let output = Command::new(python).args(arguments).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

async fn get_json(client: &Client, server: &TestServer, credential: &str, path: &str) -> Value {
    let response = client.get(server.url(path)).bearer_auth(credential).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn chat(client: &Client, server: &TestServer, key: &str, body: Value) -> Response {
    client.post(server.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().await.unwrap()
}

/// The org's statement rows of today.
async fn usage_rows(client: &Client, server: &TestServer, key: &str) -> Vec<Value> {
    let today = chrono::Utc::now().format("%Y-%m-%d");
    let statement = get_json(client, server, key, &format!("/v1/statements?from={today}&to={today}&format=json")).await;
    statement["rows"].as_array().unwrap().iter().filter(|row| row["type"] == "usage").cloned().collect()
}

/// What a row's tokens cost at the price its model was configured with.
fn expected_cost(row: &Value) -> Money {
    let price = if row["model"].as_str().unwrap().starts_with("claude") { anthropic_price() } else { openai_price() };
    call_cost(&price, row["input_tokens"].as_u64().unwrap(), row["output_tokens"].as_u64().unwrap()).unwrap()
}

fn amount(value: &Value) -> Money {
    Money::parse(value["amount"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_official_sdks_work_through_bahi_with_a_key_and_an_agent_token_and_each_call_bills_its_tokens() {
    let Some(python) = sdk_python() else { return };
    let database = TestDatabase::sqlite();
    let (server, _upstream) = gateway(&database).await;
    let client = client();
    let (_, key, agent_id) = funded_org(&client, &server, "100").await;
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk_smoke.py");
    let (passed, output) = run_python(&python, &[smoke, &server.base_url, "--api-key", &key]);
    assert!(passed, "the SDKs with a key:\n{output}");
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
    let token = minted["access_token"].as_str().unwrap();
    let (passed, output) = run_python(&python, &[smoke, &server.base_url, "--api-key", token]);
    assert!(passed, "the SDKs with an agent token:\n{output}");
    // Anthropic's SDKs have sent the API key as x-api-key: a token works there too.
    let messages =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let response =
        client.post(server.url("/v1/messages")).header("x-api-key", token).json(&messages).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    // Every proxied call settled once, at exactly its upstream's tokens × its model's price.
    let rows = usage_rows(&client, &server, &key).await;
    assert_eq!(rows.len(), 21, "ten calls per run (embeddings twice) and one more, each settled once");
    for row in &rows {
        assert_eq!(amount(&row["debit"]), expected_cost(row), "{row}");
        assert_eq!(row["agent"]["id"], agent_id.as_str(), "every call is the agent's: {row}");
        let failed = row["model"].as_str().unwrap().ends_with("fail-429");
        assert_eq!(row["description"], if failed { "failed" } else { "succeeded" }, "{row}");
    }
    let by_token = rows.iter().filter(|row| row["credential"]["kind"] == "agent_token").count();
    assert_eq!(by_token, 11);
}

#[tokio::test]
async fn a_client_that_leaves_after_the_first_chunk_is_billed_once_for_the_whole_answer() {
    let database = TestDatabase::sqlite();
    let (server, _upstream) = gateway(&database).await;
    let client = client();
    let (_, key, _) = funded_org(&client, &server, "10").await;
    let body = json!({"model": "gpt-slow", "stream": true, "messages": [{"role": "user", "content": "one two three"}]});
    let mut response = chat(&client, &server, &key, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let call_id = response.headers()["x-bahi-call-id"].to_str().unwrap().to_owned();
    assert!(response.chunk().await.unwrap().is_some(), "the first chunk arrives before the upstream is done");
    drop(response);

    let path = format!("/v1/audit/calls/{call_id}");
    let settled = eventually(|| async {
        let call = get_json(&client, &server, &key, &path).await;
        call["status"] == "succeeded"
    })
    .await;
    assert!(settled, "the call settles although its client left");
    let call = get_json(&client, &server, &key, &path).await;
    assert_eq!((call["input_tokens"].as_u64(), call["output_tokens"].as_u64()), (Some(3), Some(8)), "{call}");
    assert_eq!(call["usage_source"], "upstream");
    assert_eq!(usage_rows(&client, &server, &key).await.len(), 1, "settled once");
}

#[tokio::test]
async fn an_upstream_without_usage_settles_an_estimate_marked_in_the_audit_and_the_statement() {
    let database = TestDatabase::sqlite();
    let (server, _upstream) = gateway(&database).await;
    let client = client();
    let (_, key, _) = funded_org(&client, &server, "10").await;
    let mut call_ids = Vec::new();
    for stream in [false, true] {
        let body = json!({"model": "gpt-no-usage", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let response = chat(&client, &server, &key, body).await;
        assert_eq!(response.status(), 200);
        call_ids.push(response.headers()["x-bahi-call-id"].to_str().unwrap().to_owned());
        response.bytes().await.unwrap();
    }
    let messages =
        json!({"model": "claude-no-usage", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let response = client.post(server.url("/v1/messages")).bearer_auth(&key).json(&messages).send().await.unwrap();
    assert_eq!(response.status(), 200);
    call_ids.push(response.headers()["x-bahi-call-id"].to_str().unwrap().to_owned());
    response.bytes().await.unwrap();
    for call_id in &call_ids {
        let path = format!("/v1/audit/calls/{call_id}");
        let estimated =
            eventually(|| async { get_json(&client, &server, &key, &path).await["usage_source"] == "estimated" }).await;
        assert!(estimated, "{}", get_json(&client, &server, &key, &path).await);
        let call = get_json(&client, &server, &key, &path).await;
        assert!(call["output_tokens"].as_u64().unwrap() > 0, "what was served is billed: {call}");
    }
    let rows = usage_rows(&client, &server, &key).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|row| row["description"] == "succeeded, usage estimated"), "{rows:?}");
}

/// What a refusal's body must hold.
type BodyCheck = Box<dyn Fn(Value)>;
/// A refused request: path, credential, body, status, and the check of its body.
type RefusalCase<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, BodyCheck);

#[tokio::test]
async fn refusals_answer_in_each_providers_shape_and_hold_nothing() {
    let database = TestDatabase::sqlite();
    let (server, upstream) = gateway(&database).await;
    let client = client();
    let (_, broke_key, _) = funded_org(&client, &server, "0.000001").await;
    let chat_body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let messages_body =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let openai_error = |status: u16, code: &'static str| {
        move |body: Value| {
            assert_eq!(body["error"]["code"], code, "{body}");
            assert_eq!(body["error"]["type"], bahi::transport::error_class(status), "{body}");
            assert!(body["error"]["message"].as_str().is_some_and(|message| !message.is_empty()));
        }
    };
    let anthropic_error = |status: u16| {
        move |body: Value| {
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["error"]["type"], bahi::transport::error_class(status), "{body}");
        }
    };
    let cases: Vec<RefusalCase> = vec![
        (
            "/v1/chat/completions",
            Some(broke_key.as_str()),
            chat_body.to_string().into(),
            402,
            Box::new(openai_error(402, "insufficient_credits")),
        ),
        (
            "/v1/messages",
            Some(broke_key.as_str()),
            messages_body.to_string().into(),
            402,
            Box::new(anthropic_error(402)),
        ),
        ("/v1/chat/completions", None, chat_body.to_string().into(), 401, Box::new(openai_error(401, "unauthorized"))),
        (
            "/v1/messages",
            Some("bahi_live_forged0000000000000000000000000"),
            messages_body.to_string().into(),
            401,
            Box::new(anthropic_error(401)),
        ),
        (
            "/v1/chat/completions",
            Some(broke_key.as_str()),
            b"{not json".to_vec(),
            400,
            Box::new(openai_error(400, "invalid_json")),
        ),
        (
            "/v1/chat/completions",
            Some(broke_key.as_str()),
            json!({"model": "no-such-model"}).to_string().into(),
            404,
            Box::new(openai_error(404, "not_found")),
        ),
        (
            "/v1/chat/completions",
            Some(broke_key.as_str()),
            json!({"model": "claude-sonnet-4-5"}).to_string().into(),
            400,
            Box::new(openai_error(400, "invalid_request")),
        ),
        (
            "/v1/chat/completions",
            Some(broke_key.as_str()),
            json!({"model": "gpt-4o-mini", "max_tokens": -1}).to_string().into(),
            400,
            Box::new(openai_error(400, "invalid_request")),
        ),
        (
            "/v1/chat/completions",
            Some(broke_key.as_str()),
            json!({"model": "gpt-4o-mini", "max_tokens": 1_000_000_000}).to_string().into(),
            400,
            Box::new(openai_error(400, "invalid_request")),
        ),
        (
            "/v1/chat/completions",
            Some(broke_key.as_str()),
            vec![b' '; 5 * 1024 * 1024],
            413,
            Box::new(openai_error(413, "request_too_large")),
        ),
    ];
    // A console session is not an inference credential: the cookie alone is no credential.
    let cookie_only = client
        .post(server.url("/v1/chat/completions"))
        .header("cookie", "bahi_session=anything")
        .json(&chat_body)
        .send()
        .await
        .unwrap();
    assert_eq!(cookie_only.status(), 401);
    for (path, credential, body, status, check) in cases {
        let mut request = client.post(server.url(path)).header("content-type", "application/json").body(body);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        check(response.json().await.unwrap());
    }
    let account = get_json(&client, &server, &broke_key, "/v1/auth/account").await;
    assert_eq!(amount(&account["held"]), Money::ZERO, "nothing refused holds credit: {account}");
    let forwarded: Value =
        client.get(format!("{}/_requests", upstream.anthropic_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(forwarded, json!([]), "no refused call reached the upstream");

    // Each SDK raises its own error for a 402, with bahi's message.
    let Some(python) = sdk_python() else { return };
    let script = r#"
import sys, openai, anthropic
base, key = sys.argv[1], sys.argv[2]
try:
    openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    sys.exit("openai: no error")
except openai.APIStatusError as error:
    assert error.status_code == 402 and "credit" in error.message, error.message
try:
    anthropic.Anthropic(base_url=base, api_key=key, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    sys.exit("anthropic: no error")
except anthropic.APIStatusError as error:
    assert error.status_code == 402 and "credit" in error.message, error.message
print("both SDKs raised on 402")
"#;
    let (passed, output) = run_python(&python, &["-c", script, &server.base_url, &broke_key]);
    assert!(passed, "{output}");
}

#[tokio::test]
async fn a_hundred_concurrent_streams_against_credit_for_ten_holds_proxy_exactly_ten() {
    let database = TestDatabase::sqlite();
    let (server, upstream) = gateway(&database).await;
    let client = client();
    // Input is free and each output token costs 1 INR: a call with max_tokens 8 holds and,
    // for the fake's 8-token answer, costs exactly 8 INR.
    let price = json!({"provider": "openai", "upstream_base_url": upstream.openai_url(), "upstream_api_key": "sk-x",
                       "input_per_million": "0", "output_per_million": "1000000"});
    configure(&client, &server, "gpt-slow-ten", price).await;
    let (_, key, _) = funded_org(&client, &server, "80").await;
    let body = json!({"model": "gpt-slow-ten", "stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "go"}]});
    let calls = (0..100).map(|_| {
        let (client, url, key, body) = (client.clone(), server.url("/v1/chat/completions"), key.clone(), body.clone());
        tokio::spawn(async move {
            let response = client.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            response.bytes().await.unwrap();
            status
        })
    });
    let statuses = futures::future::join_all(calls).await;
    let proxied = statuses.iter().filter(|status| *status.as_ref().unwrap() == 200).count();
    let refused = statuses.iter().filter(|status| *status.as_ref().unwrap() == 402).count();
    assert_eq!((proxied, refused), (10, 90));
    let settled = eventually(|| async { usage_rows(&client, &server, &key).await.len() == 10 }).await;
    assert!(settled);
    let account = get_json(&client, &server, &key, "/v1/auth/account").await;
    assert_eq!(amount(&account["credit_balance"]), Money::ZERO, "{account}");
    assert_eq!(amount(&account["held"]), Money::ZERO, "{account}");
}

#[tokio::test]
async fn models_are_listed_in_openais_shape_and_their_upstream_key_is_never_shown() {
    let database = TestDatabase::sqlite();
    let (server, _upstream) = gateway(&database).await;
    let client = client();
    let (_, key, _) = funded_org(&client, &server, "1").await;
    let listed = get_json(&client, &server, &key, "/v1/models").await;
    assert_eq!(listed["object"], "list");
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|model| model["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"gpt-4o-mini") && ids.contains(&"claude-sonnet-4-5"), "{listed}");
    assert!(listed["data"].as_array().unwrap().iter().all(|model| model["object"] == "model"));
    let text = std::fs::read(database.url().trim_start_matches("sqlite://")).unwrap_or_default();
    assert!(
        !text.windows(b"sk-upstream".len()).any(|window| window == b"sk-upstream"),
        "no upstream key in the database file"
    );
    for bad in [
        json!({"provider": "openai", "upstream_base_url": "ftp://x", "upstream_api_key": "k", "input_per_million": "1", "output_per_million": "1"}),
        json!({"provider": "mistral", "upstream_base_url": "https://x", "upstream_api_key": "k", "input_per_million": "1", "output_per_million": "1"}),
        json!({"provider": "openai", "upstream_base_url": "https://x", "upstream_api_key": "", "input_per_million": "1", "output_per_million": "1"}),
        json!({"provider": "openai", "upstream_base_url": "https://x", "upstream_api_key": "k", "input_per_million": "-1", "output_per_million": "1"}),
    ] {
        let response =
            client.put(server.url("/v1/admin/models/m")).bearer_auth(OPERATOR_KEY).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let response =
        client.put(server.url("/v1/admin/models/m")).bearer_auth(&key).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 403, "an org's key is not the operator");
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_in_the_providers_shape_and_releases_its_hold() {
    let database = TestDatabase::sqlite();
    let (server, _upstream) = gateway(&database).await;
    let client = client();
    // Port 9 (discard) on loopback: nothing listens there, so the connection is refused.
    for (model, provider, url) in
        [("gpt-gone", "openai", "http://127.0.0.1:9/v1"), ("claude-gone", "anthropic", "http://127.0.0.1:9")]
    {
        let body = json!({"provider": provider, "upstream_base_url": url, "upstream_api_key": "k",
                          "input_per_million": "1", "output_per_million": "1"});
        configure(&client, &server, model, body).await;
    }
    let (_, key, _) = funded_org(&client, &server, "1").await;
    let response = chat(&client, &server, &key, json!({"model": "gpt-gone", "messages": []})).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["error"]["type"].as_str(), body["error"]["code"].as_str()),
        (Some("api_error"), Some("upstream_unavailable"))
    );
    assert!(!body.to_string().contains("127.0.0.1"), "the upstream's address is not the client's business: {body}");
    let messages = json!({"model": "claude-gone", "max_tokens": 8, "messages": []});
    let response = client.post(server.url("/v1/messages")).bearer_auth(&key).json(&messages).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.json::<Value>().await.unwrap()["type"], "error");
    let released = eventually(|| async {
        let account = get_json(&client, &server, &key, "/v1/auth/account").await;
        amount(&account["held"]) == Money::ZERO
    })
    .await;
    assert!(released, "a call that never left holds nothing");
    let rows = usage_rows(&client, &server, &key).await;
    assert!(rows.iter().all(|row| amount(&row["debit"]) == Money::ZERO && row["description"] == "failed"), "{rows:?}");
}

#[tokio::test]
async fn a_stream_the_upstream_cuts_short_bills_what_was_served_as_an_estimate() {
    let database = TestDatabase::sqlite();
    let (server, _upstream) = gateway(&database).await;
    let client = client();
    let (_, key, _) = funded_org(&client, &server, "10").await;
    let body = json!({"model": "gpt-cut", "stream": true, "messages": [{"role": "user", "content": "go on"}]});
    let response = chat(&client, &server, &key, body).await;
    assert_eq!(response.status(), 200);
    let call_id = response.headers()["x-bahi-call-id"].to_str().unwrap().to_owned();
    let _ = response.bytes().await; // the client may see the cut as an error, or a short body
    let path = format!("/v1/audit/calls/{call_id}");
    let settled = eventually(|| async { get_json(&client, &server, &key, &path).await["status"] == "cancelled" }).await;
    let call = get_json(&client, &server, &key, &path).await;
    assert!(settled, "{call}");
    assert_eq!(call["usage_source"], "estimated", "{call}");
    assert!(call["output_tokens"].as_u64().unwrap() > 0, "the chunks served are billed: {call}");
    assert_eq!(usage_rows(&client, &server, &key).await.len(), 1);
}

#[tokio::test]
async fn the_upstream_gets_its_own_key_and_model_name_and_never_the_clients_credential() {
    let database = TestDatabase::sqlite();
    let (server, upstream) = gateway(&database).await;
    let client = client();
    let renamed = json!({"provider": "openai", "upstream_base_url": upstream.openai_url(), "upstream_api_key": "sk-upstream-openai",
                         "upstream_model": "gpt-4o-mini", "input_per_million": "1", "output_per_million": "1"});
    configure(&client, &server, "house-model", renamed).await;
    let (_, key, _) = funded_org(&client, &server, "10").await;
    let response = client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("openai-beta", "assistants=v2")
        .json(&json!({"model": "house-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let messages =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let response = client
        .post(server.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2026-10-21")
        .header("anthropic-beta", "some-feature-2026")
        .json(&messages)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let seen: Value =
        client.get(format!("{}/_requests", upstream.anthropic_url())).send().await.unwrap().json().await.unwrap();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!Value::Array(seen.clone()).to_string().contains(&key), "the client's bahi key never reaches the upstream");
    let (chat, message) = (&seen[0], &seen[1]);
    assert_eq!(chat["headers"]["authorization"], "Bearer sk-upstream-openai");
    assert_eq!(chat["body"]["model"], "gpt-4o-mini", "the upstream's own name for the model");
    assert_eq!(chat["headers"]["openai-beta"], "assistants=v2");
    assert_eq!(message["headers"]["x-api-key"], "sk-upstream-anthropic");
    assert_eq!(message["headers"]["anthropic-version"], "2026-10-21", "the client's API version is kept");
    assert_eq!(message["headers"]["anthropic-beta"], "some-feature-2026");
    assert!(message["headers"].get("authorization").is_none(), "{message}");
}
