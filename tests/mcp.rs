//! The MCP surface (`/mcp`), end to end: a spawned `bahi serve` and the official `mcp`
//! Python SDK as the client (`tests/fixtures/mcp_client.py`, from `scripts/python-env.sh`;
//! the test script passes its interpreter in `BAHI_TEST_PYTHON`). Tools answer what the JSON
//! API answers, with the same credentials, scopes and error codes.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{TestDatabase, TestServer, client, register};
use reqwest::Client;
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-the-mcp-tests-0123456789";
const MODEL: &str = "mcp-test-model";

/// Every tool the surface promises (docs/api.md, README's MCP section).
const TOOLS: &[&str] = &[
    "account",
    "list_api_keys",
    "create_api_key",
    "revoke_api_key",
    "list_agents",
    "create_agent",
    "mint_agent_token",
    "revoke_agent",
    "list_models",
    "audit_call",
    "attribution",
    "org_events",
    "statement",
    "top_up",
];

/// The SDK's interpreter, or `None` (said plainly) outside CI when it was not prepared.
fn sdk_python() -> Option<String> {
    match std::env::var("BAHI_TEST_PYTHON") {
        Ok(python) if !python.is_empty() => Some(python),
        _ if std::env::var_os("CI").is_some() => panic!("CI must run the MCP SDK tests: BAHI_TEST_PYTHON is not set"),
        _ => {
            eprintln!(
                "mcp.rs: BAHI_TEST_PYTHON not set (scripts/python-env.sh): the official-SDK MCP checks DID NOT RUN"
            );
            None
        }
    }
}

/// Runs the SDK client on one scenario and returns the JSON it printed.
fn mcp_client(python: &str, server: &TestServer, credential: &str, scenario: &str, argument: Option<&Value>) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_client.py");
    let mut command = Command::new(python);
    command.args([script, &server.url("/mcp"), credential, scenario]);
    if let Some(argument) = argument {
        command.arg(argument.to_string());
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "mcp_client.py {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

/// Calls tools in order in one MCP session; one result per call, `{tool, is_error, structured, text}`.
fn call_tools(python: &str, server: &TestServer, credential: &str, calls: &[(&str, Value)]) -> Vec<Value> {
    let calls: Vec<Value> = calls.iter().map(|(tool, arguments)| json!([tool, arguments])).collect();
    let answer = mcp_client(python, server, credential, "calls", Some(&Value::Array(calls)));
    answer["results"].as_array().unwrap().clone()
}

fn call_tool(python: &str, server: &TestServer, credential: &str, tool: &str, arguments: Value) -> Value {
    call_tools(python, server, credential, &[(tool, arguments)]).remove(0)
}

/// A tool's structured answer, asserting it is not an error.
fn answered(result: &Value) -> &Value {
    assert_eq!(result["is_error"], false, "{result}");
    &result["structured"]
}

/// A tool's error code, asserting it is an error in the JSON API's shape.
fn refused(result: &Value) -> &str {
    assert_eq!(result["is_error"], true, "{result}");
    let error = &result["structured"];
    for field in ["type", "code", "message", "request_id"] {
        assert!(error[field].is_string(), "{field} missing: {result}");
    }
    assert_eq!(serde_json::from_str::<Value>(result["text"].as_str().unwrap()).unwrap(), *error, "{result}");
    error["code"].as_str().unwrap()
}

async fn operator_call(
    client: &Client,
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let response = client.request(method, server.url(path)).bearer_auth(OPERATOR_KEY).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

/// A priced model, credit granted, and one call authorized by `key`: its `call_id`.
async fn authorized_call(client: &Client, server: &TestServer, org_id: &str, key: &str) -> String {
    let prices = json!({"input_per_million": "1.00", "output_per_million": "2.00"});
    operator_call(client, server, reqwest::Method::PUT, &format!("/v1/admin/prices/{MODEL}"), prices).await;
    let grant = json!({"org_id": org_id, "amount": "100.00", "reason": "mcp test"});
    operator_call(client, server, reqwest::Method::POST, "/v1/admin/credits/grants", grant).await;
    let response =
        client.post(server.url("/v1/authorize")).bearer_auth(key).json(&json!({"model": MODEL})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["call_id"].as_str().unwrap().to_owned()
}

fn start_server() -> (TestDatabase, TestServer) {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    (database, server)
}

#[tokio::test]
async fn mcp_refuses_without_a_credential_in_the_contracts_shape() {
    let (_database, server) = start_server();
    let client = client();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let response = client
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(body["error"]["request_id"], request_id.as_str(), "{body}");

    // A console cookie is not an MCP credential, and a forged key is 401 too.
    for (name, value) in [("cookie", "bahi_session=anything"), ("authorization", "Bearer bahi_live_not-a-real-key")] {
        let response = client.post(server.url("/mcp")).header(name, value).json(&initialize).send().await.unwrap();
        assert_eq!(response.status(), 401, "{name}");
    }

    // What is not MCP is refused in the contract's shape as well, never rmcp's plain text.
    let (_, key) = register(&client, &server, "mcp-shape").await;
    let response = client.get(server.url("/mcp")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
}

#[tokio::test]
async fn mcp_tools_with_the_official_sdk() {
    let Some(python) = sdk_python() else { return };
    let (_database, server) = start_server();
    let client = client();
    let (org_id, key) = register(&client, &server, "mcp-org").await;
    let (_, other_key) = register(&client, &server, "other-org").await;

    // initialize + list: every tool, each with an object input schema.
    let listed = mcp_client(&python, &server, &key, "tools", None);
    assert_eq!(listed["server"]["name"], "bahi", "{listed}");
    let tools = listed["tools"].as_array().unwrap();
    for name in TOOLS {
        let tool =
            tools.iter().find(|tool| tool["name"] == *name).unwrap_or_else(|| panic!("no tool {name}: {listed}"));
        assert_eq!(tool["input_schema"]["type"], "object", "{tool}");
    }
    assert_eq!(tools.len(), TOOLS.len(), "{listed}");

    // An agent: create, mint a token (which works on the JSON API), revoke (which ends it).
    let created = call_tool(
        &python,
        &server,
        &key,
        "create_agent",
        json!({"name": "mcp-agent", "scopes": ["inference", "audit:read"]}),
    );
    let agent_id = answered(&created)["id"].as_str().unwrap().to_owned();
    let minted =
        call_tool(&python, &server, &key, "mint_agent_token", json!({"agent_id": agent_id, "ttl_seconds": 600}));
    let token = answered(&minted)["access_token"].as_str().unwrap().to_owned();
    let models = client.get(server.url("/v1/models")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(models.status(), 200);

    // The agent token over MCP: its scopes apply exactly as on the JSON API.
    let as_agent = call_tools(
        &python,
        &server,
        &token,
        &[("list_models", json!({})), ("create_agent", json!({"name": "not-allowed"}))],
    );
    assert_eq!(answered(&as_agent[0])["object"], "list");
    assert_eq!(refused(&as_agent[1]), "insufficient_scope");

    // Bad arguments are the JSON API's 400 as a tool error: same code, same message, an
    // unknown field refused rather than ignored.
    let bad = call_tools(
        &python,
        &server,
        &key,
        &[("create_agent", json!({"name": 5})), ("mint_agent_token", json!({"agent_id": agent_id, "ttl": 5}))],
    );
    assert_eq!(refused(&bad[0]), "invalid_request");
    let http_bad =
        client.post(server.url("/me/agents")).bearer_auth(&key).json(&json!({"name": 5})).send().await.unwrap();
    assert_eq!(http_bad.status(), 400);
    let http_error: Value = http_bad.json().await.unwrap();
    // The JSON API adds where in its body text the error is ("at line 1 column 9"); a tool's
    // arguments arrive parsed, so only that position is missing.
    let message = bad[0]["structured"]["message"].as_str().unwrap();
    assert!(http_error["error"]["message"].as_str().unwrap().starts_with(message), "{message} / {http_error}");
    assert_eq!(refused(&bad[1]), "invalid_request");
    assert!(bad[1]["structured"]["message"].as_str().unwrap().contains("ttl"), "{}", bad[1]);

    // Another org's agent is not found, never a hint.
    let foreign = call_tool(&python, &server, &other_key, "revoke_agent", json!({"agent_id": agent_id}));
    assert_eq!(refused(&foreign), "not_found");

    let revoked = call_tool(&python, &server, &key, "revoke_agent", json!({"agent_id": agent_id}));
    assert_eq!(answered(&revoked)["status"], "revoked");
    let models = client.get(server.url("/v1/models")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(models.status(), 401, "a revoked agent's token still works");

    // A call authorized on the JSON API, looked up over MCP; another org cannot see it.
    let call_id = authorized_call(&client, &server, &org_id, &key).await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let period = json!({"from": today, "to": today});
    let results = call_tools(
        &python,
        &server,
        &key,
        &[
            ("audit_call", json!({"call_id": call_id})),
            ("statement", period.clone()),
            ("statement", json!({"from": today, "to": today, "format": "csv"})),
            ("top_up", json!({"amount": "10.00", "payment_reference": "mcp-attempt"})),
            ("account", json!({})),
        ],
    );
    let audit = answered(&results[0]);
    assert_eq!(audit["call_id"], call_id.as_str(), "{audit}");
    assert_eq!(audit["payer_org_id"], org_id.as_str(), "{audit}");
    assert_eq!(audit["model"], MODEL, "{audit}");

    let statement = answered(&results[1]);
    let http_statement: Value = client
        .get(server.url(&format!("/v1/statements?from={today}&to={today}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(statement["closing_balance"], http_statement["closing_balance"], "{statement}");
    assert_eq!(statement["rows"], http_statement["rows"], "{statement}");
    assert!(statement["rows"].as_array().unwrap().iter().any(|row| row["type"] == "grant"), "{statement}");

    assert_eq!(results[2]["is_error"], false, "{}", results[2]);
    assert!(results[2]["structured"].is_null(), "CSV comes as text: {}", results[2]);
    let csv = results[2]["text"].as_str().unwrap();
    assert!(csv.starts_with("position,occurred_at,type,"), "{csv}");
    assert!(csv.contains(",grant,"), "{csv}");

    // The money action is there, and refused as the JSON API refuses it: same code, same message.
    assert_eq!(refused(&results[3]), "human_only");
    let http_top_up = client
        .post(server.url("/me/credits/topups"))
        .bearer_auth(&key)
        .json(&json!({"amount": "10.00", "payment_reference": "http-attempt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(http_top_up.status(), 403);
    let http_error: Value = http_top_up.json().await.unwrap();
    assert_eq!(results[3]["structured"]["code"], http_error["error"]["code"]);
    assert_eq!(results[3]["structured"]["message"], http_error["error"]["message"]);
    assert_eq!(results[3]["structured"]["type"], http_error["error"]["type"]);
    assert_eq!(answered(&results[4])["credit_balance"]["amount"], "100.00", "the refused top-up moved money");

    let foreign = call_tool(&python, &server, &other_key, "audit_call", json!({"call_id": call_id}));
    assert_eq!(refused(&foreign), "not_found");

    // The official client without a credential is refused, not served.
    let refusal = mcp_client(&python, &server, "", "no_credential", None);
    assert_eq!(refusal["refused"], true, "{refusal}");
}

/// One JSON-RPC `tools/call` over plain HTTP, as any MCP client sends it: the HTTP status
/// and the JSON answer.
async fn raw_tool_call(client: &Client, server: &TestServer, key: &str, tool: &str, arguments: &Value) -> (u16, Value) {
    let body =
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}});
    let response = client
        .post(server.url("/mcp"))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{tool} {arguments}: {status} not JSON: {text:?}")))
}

/// Hostile arguments to every tool (each field of a valid sample replaced by a wrong type,
/// an edge number or hostile text; arguments that are not an object): never a 5xx or an
/// internal error; a refusal is either a JSON-RPC error or a tool error in the JSON API's shape.
#[tokio::test]
async fn hostile_tool_arguments_are_refused_never_crash() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(
        &database.url(),
        &[("BAHI_OPERATOR_KEY", OPERATOR_KEY), ("BAHI_DEFAULT_RATE_LIMIT", "1000000/1")],
    );
    let client = client();
    let (_, key) = register(&client, &server, "mcp-hostile").await;
    let unknown = "0000000000000000000000";
    let samples: Vec<(&str, Value)> = vec![
        ("account", json!({})),
        ("list_api_keys", json!({"limit": 10, "starting_after": format!("key_{unknown}")})),
        (
            "create_api_key",
            json!({"name": "k", "scopes": ["inference"], "expires_at": "2099-01-01T00:00:00Z",
                "rate_limit": {"requests": 100, "interval_seconds": 60}, "budget": {"amount": "5.00", "period": "day"},
                "metadata": {"team": "search"}}),
        ),
        ("revoke_api_key", json!({"api_key_id": format!("key_{unknown}")})),
        ("list_agents", json!({})),
        ("create_agent", json!({"name": "a", "mode": "autonomous", "scopes": ["inference"]})),
        (
            "mint_agent_token",
            json!({"agent_id": format!("agt_{unknown}"), "ttl_seconds": 600, "scopes": ["inference"]}),
        ),
        ("revoke_agent", json!({"agent_id": format!("agt_{unknown}")})),
        ("list_models", json!({})),
        ("audit_call", json!({"call_id": format!("call_{unknown}")})),
        ("attribution", json!({"from": "2026-01-01", "to": "2026-12-31", "group_by": "agent,model"})),
        ("org_events", json!({"after": 0, "limit": 10})),
        ("statement", json!({"from": "2026-01-01", "to": "2026-01-31", "format": "csv"})),
        ("top_up", json!({"amount": "1.00", "payment_reference": "p"})),
    ];
    let hostile_values = [
        json!(null),
        json!(-1),
        json!(u64::MAX),
        json!(1e308),
        json!(true),
        json!([]),
        json!({}),
        json!("x".repeat(10_000)),
        json!("\u{0000}\u{202e}ℤ😀"),
        json!("../../etc/passwd"),
        json!("2026-02-30"),
        json!("agt_'; drop table events; --"),
    ];
    let mut sent = 0;
    for (tool, sample) in &samples {
        let mut cases: Vec<Value> = vec![json!("x"), json!([]), json!(5), json!({"unknown_field": 1})];
        for field in sample.as_object().unwrap().keys() {
            for value in &hostile_values {
                let mut arguments = sample.clone();
                arguments[field] = value.clone();
                cases.push(arguments);
            }
        }
        for arguments in &cases {
            let (status, answer) = raw_tool_call(&client, &server, &key, tool, arguments).await;
            let what = format!("{tool} {}", arguments.to_string().chars().take(200).collect::<String>());
            assert_eq!(status, 200, "{what}: {answer}");
            if answer["error"].is_object() {
                continue; // a JSON-RPC refusal of the call itself (arguments not an object)
            }
            let result = &answer["result"];
            if result["isError"] == true {
                let error = &result["structuredContent"];
                for field in ["type", "code", "message", "request_id"] {
                    assert!(error[field].is_string(), "{what}: {answer}");
                }
                assert_ne!(error["code"], "internal_error", "{what}: {answer}");
            } else {
                assert!(result["content"].is_array(), "{what}: {answer}");
            }
            sent += 1;
        }
    }
    assert!(sent > 300, "{sent} hostile calls answered");
}

/// `bahi mcp --stdio`, started by the official SDK's stdio client as a local agent host
/// starts its servers, relays to a running server: the same tools, the same scopes.
#[tokio::test]
async fn bahi_mcp_stdio_relays_to_the_server_for_a_local_agent_host() {
    let Some(python) = sdk_python() else { return };
    let (_database, server) = start_server();
    let client = client();
    let (org_id, key) = register(&client, &server, "Stdio Org").await;
    let script = r#"
import asyncio, json, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

async def main(binary, url, key):
    parameters = StdioServerParameters(command=binary, args=["mcp", "--stdio", "--url", url],
                                       env={"BAHI_API_KEY": key, "RUST_LOG": "warn"})
    async with stdio_client(parameters) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = [tool.name for tool in (await session.list_tools()).tools]
            account = await session.call_tool("account", {})
            top_up = await session.call_tool("top_up", {"amount": "10", "payment_reference": "pay_1"})
            text = lambda result: "".join(block.text for block in result.content if block.type == "text")
            print(json.dumps({"tools": tools, "account": text(account),
                              "top_up_refused": bool(getattr(top_up, "is_error", getattr(top_up, "isError", False))),
                              "top_up": text(top_up)}))

asyncio.run(main(*sys.argv[1:]))
"#;
    let output = Command::new(&python).args(["-c", script, common::BINARY, &server.base_url, &key]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    let tools: Vec<&str> = answer["tools"].as_array().unwrap().iter().map(|tool| tool.as_str().unwrap()).collect();
    assert!(TOOLS.iter().all(|tool| tools.contains(tool)), "{tools:?}");
    assert!(answer["account"].as_str().unwrap().contains(&org_id), "{answer}");
    assert_eq!(answer["top_up_refused"], true, "{answer}");
    assert!(answer["top_up"].as_str().unwrap().contains("human_only"), "{answer}");
}
