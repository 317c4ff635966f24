//! The contract, fuzzed: schemathesis (PyPI, installed by `scripts/python-env.sh`) reads
//! `GET /openapi.json` from a live server and sends what the document allows and what it
//! does not, once per kind of credential: an API key with every scope, an agent token, a
//! console session and the operator key. Every check runs (`--checks all`): no 5xx, no answer
//! outside the document (status, content type, headers, body schema), bad input refused
//! with a 4xx, auth enforced. schemathesis' exit status is the verdict. Its settings file,
//! `tests/fixtures/schemathesis.toml`, widens one check and says why.
//!
//! Bounded and reproducible: `MAX_EXAMPLES` test cases per operation and phase, a fixed
//! `SEED`, no example database between runs. In CI (`CI` set) it must run; elsewhere,
//! without the venv, it says plainly that it did not.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::{TestDatabase, TestServer, client};
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-the-contract-fuzz-0123456789";
/// Test cases per operation (schemathesis' `--max-examples`): with the coverage phase's
/// own cases this keeps the four runs within a few minutes of a debug build on 2 cores.
const MAX_EXAMPLES: &str = "5";
const SEED: &str = "26";
const SETTINGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schemathesis.toml");

/// The venv's `schemathesis`, beside `BAHI_TEST_PYTHON`; `None` (said plainly) outside CI.
fn schemathesis() -> Option<PathBuf> {
    match std::env::var("BAHI_TEST_PYTHON") {
        Ok(python) if !python.is_empty() => {
            let binary = PathBuf::from(python).with_file_name("schemathesis");
            assert!(binary.exists(), "{} is missing: run scripts/python-env.sh", binary.display());
            Some(binary)
        }
        _ if std::env::var_os("CI").is_some() => panic!("CI must run schemathesis: BAHI_TEST_PYTHON is not set"),
        _ => {
            eprintln!("contract_fuzz.rs: BAHI_TEST_PYTHON not set (scripts/python-env.sh): schemathesis DID NOT RUN");
            None
        }
    }
}

/// The four credentials, each as the header schemathesis sends with every request, and the
/// operations left out of that run (with why).
struct Credential {
    name: &'static str,
    /// A header sent with every request, or (the session) none: the cookie is given to
    /// schemathesis as the `session_cookie` scheme's value, so that it sends it only where
    /// the document declares it and knows what leaving it out means.
    header: Option<String>,
    session: Option<String>,
    /// operationIds this run must not call, beyond `EXCLUDED`.
    excluded: &'static [&'static str],
}

/// Left out of every run: the test clock's route exists only under `bahi serve --test-clock`
/// (elsewhere 404, as for any unknown path), and a moved clock would expire the token.
const EXCLUDED: &[&str] = &["post_v1_admin_test_clock_advance"];

fn bearer(name: &'static str, secret: &str) -> Credential {
    Credential { name, header: Some(format!("Authorization: Bearer {secret}")), session: None, excluded: &[] }
}

/// A human's org (signup), then from its session an API key with every scope, an agent
/// and a token of that agent.
async fn credentials(server: &TestServer) -> Vec<Credential> {
    let client = client();
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": "fuzz@example.com", "password": "fuzz-the-contract-26", "org_name": "fuzz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("bahi_session="), "{cookie}");

    let key: Value = client
        .post(server.url("/v1/auth/account/api-keys"))
        .header("cookie", &cookie)
        .json(&json!({"name": "fuzz"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_key = key["api_key"].as_str().unwrap().to_owned();

    let scopes = ["inference", "keys:write", "agents:write", "audit:read", "statements:read", "account:read"];
    let agent = client
        .post(server.url("/me/agents"))
        .bearer_auth(&api_key)
        .json(&json!({"name": "fuzzer", "scopes": scopes}))
        .send();
    let agent: Value = agent.await.unwrap().json().await.unwrap();
    let agent_id = agent["id"].as_str().unwrap();
    let token = client
        .post(server.url(&format!("/me/agents/{agent_id}/token")))
        .bearer_auth(&api_key)
        .json(&json!({"ttl_seconds": 3600}))
        .send();
    let token: Value = token.await.unwrap().json().await.unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();

    vec![
        bearer("api key", &api_key),
        bearer("agent token", &token),
        // Logging out would end the session the rest of the run stands on; the other runs
        // call both routes (and get the session-only refusal).
        Credential {
            name: "session",
            header: None,
            session: Some(cookie.trim_start_matches("bahi_session=").to_owned()),
            excluded: &["post_me_logout", "post_me_logout_all"],
        },
        bearer("operator key", OPERATOR_KEY),
    ]
}

#[tokio::test]
async fn schemathesis_finds_nothing_with_any_credential() {
    let Some(schemathesis) = schemathesis() else { return };
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    let credentials = credentials(&server).await;
    let workspace = tempfile::tempdir().unwrap();

    let mut failed = Vec::new();
    for credential in &credentials {
        let started = Instant::now();
        let mut settings = std::fs::read_to_string(SETTINGS).unwrap();
        if let Some(session) = &credential.session {
            settings.push_str(&format!("\n[auth.openapi.session_cookie]\napi_key = \"{session}\"\n"));
        }
        let settings_file = workspace.path().join("schemathesis.toml");
        std::fs::write(&settings_file, settings).unwrap();
        let mut command = Command::new(&schemathesis);
        command
            .current_dir(workspace.path())
            .args(["--config-file", settings_file.to_str().unwrap()])
            .args(["run", &server.url("/openapi.json"), "--checks", "all"])
            .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED, "--generation-database", "none"])
            .arg("--no-color")
            .env("SCHEMATHESIS_HOOKS", "")
            .env_remove("SCHEMATHESIS_CONFIG");
        if let Some(header) = &credential.header {
            command.args(["--header", header]);
        }
        for operation in EXCLUDED.iter().chain(credential.excluded) {
            command.args(["--exclude-operation-id", operation]);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprintln!(
            "--- schemathesis, {} ({:.0?}):\n{stdout}{}",
            credential.name,
            started.elapsed(),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            failed.push(credential.name);
        }
    }
    assert!(failed.is_empty(), "schemathesis failed with: {failed:?} (its report is printed above)");
}

/// schemathesis' first find: serde reads a struct from a JSON array too, so `[null, null]`
/// was an agent-register with no fields (201, an org made). A body is an object or a 400.
#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    for body in ["[null, null]", "[]", " [\"name\"]"] {
        let response = client
            .post(server.url("/v1/auth/agent-register"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request", "{body}: {answer}");
    }
    // The array serde would have read as the struct: refused as not an object.
    let response = client
        .post(server.url("/v1/auth/agent-register"))
        .header("content-type", "application/json")
        .body("[null, null]")
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"]["message"].as_str().unwrap().contains("must be a JSON object"), "{answer}");
    // An object still passes, with or without whitespace before it.
    let response = client
        .post(server.url("/v1/auth/agent-register"))
        .header("content-type", "application/json")
        .body(" \n{\"org_name\": \"objects pass\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}
