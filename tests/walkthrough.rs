//! The README's first-hour walk-through, run as written against a fresh server: every command in its
//! `sh` block runs in one bash session, and every `# …` line after a command is the shape its
//! output must have. A README whose commands or answers drift from the server fails here.
//!
//! The only substitutions: `cargo run --release --` becomes this build's `bahi` binary, and
//! `localhost:8080` a free port on 127.0.0.1, in a temporary working directory.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use serde_json::Value;

/// One command of the walk-through and the answer its `#` line promises, if any.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Option<String>,
}

/// The `sh` block under README's "## The first hour", cut into commands (a line ending in `\`
/// continues) each followed by its expected answer (a `#` line that is not prose: it starts
/// with `{` or names a fixed text such as `log intact:`).
fn walkthrough_steps() -> Vec<Step> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## The first hour").expect("README has its first-hour walk-through")..];
    let block_start = section.find("```sh\n").unwrap() + "```sh\n".len();
    let block = &section[block_start..block_start + section[block_start..].find("```").unwrap()];
    let mut steps: Vec<Step> = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            if is_expected_answer(comment) {
                let step = steps.last_mut().expect("an answer follows a command");
                assert!(step.expected.is_none(), "two answers for {:?}", step.command);
                step.expected = Some(comment.to_owned());
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        pending.push_str(line);
        pending.push('\n');
        if !line.ends_with('\\') {
            steps.push(Step { command: std::mem::take(&mut pending), expected: None });
        }
    }
    steps
}

fn is_expected_answer(comment: &str) -> bool {
    comment.starts_with('{') || comment.starts_with("log intact:")
}

/// Whether `actual` has the shape `expected` promises: every key the sample shows is there
/// with a matching value (more keys are fine: fields are added, never renamed); `"…"` matches
/// anything, `"abc…"` a string starting `abc`; other strings, numbers and booleans match
/// exactly; arrays match element by element and in length.
fn matches(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(pattern), _) if pattern == "…" => Ok(()),
        (Value::String(pattern), Value::String(text)) if pattern.ends_with('…') => {
            let prefix = pattern.trim_end_matches('…');
            text.starts_with(prefix)
                .then_some(())
                .ok_or_else(|| format!("{path}: {text:?} does not start with {prefix:?}"))
        }
        (Value::Object(expected), Value::Object(actual)) => {
            for (key, value) in expected {
                let found = actual.get(key).ok_or_else(|| format!("{path}.{key}: missing"))?;
                matches(value, found, &format!("{path}.{key}"))?;
            }
            Ok(())
        }
        (Value::Array(expected), Value::Array(actual)) => {
            if expected.len() != actual.len() {
                return Err(format!("{path}: {} items where the README shows {}", actual.len(), expected.len()));
            }
            expected
                .iter()
                .zip(actual)
                .enumerate()
                .try_for_each(|(index, (e, a))| matches(e, a, &format!("{path}[{index}]")))
        }
        (expected, actual) if expected == actual => Ok(()),
        (expected, actual) => Err(format!("{path}: {actual} where the README shows {expected}")),
    }
}

/// Checks one command's output against its `#` line.
fn check(step: &Step, output: &str) -> Result<(), String> {
    let Some(expected) = &step.expected else { return Ok(()) };
    if let Some(prefix) = expected.strip_suffix("… events verified").or(expected.strip_suffix('…')) {
        return output
            .trim()
            .starts_with(prefix)
            .then_some(())
            .ok_or_else(|| format!("{output:?} does not start with {prefix:?}"));
    }
    let expected: Value =
        serde_json::from_str(expected).map_err(|error| format!("README sample is not JSON: {error}"))?;
    let actual: Value =
        serde_json::from_str(output.trim()).map_err(|error| format!("the answer is not JSON ({error}): {output}"))?;
    matches(&expected, &actual, "$")
}

const MARKER: &str = "@@walkthrough-step@@";

fn tool_missing(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|out| !out.status.success())
        .unwrap_or(true)
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    for tool in ["bash", "curl", "jq"] {
        if tool_missing(tool) {
            assert!(std::env::var("CI").is_err(), "CI must run the README walk-through: install {tool}");
            eprintln!("{tool} is missing: the README walk-through test DID NOT RUN");
            return;
        }
    }
    let steps = walkthrough_steps();
    assert!(steps.len() >= 20 && steps.iter().filter(|step| step.expected.is_some()).count() >= 12, "{steps:#?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let binary = common::BINARY;
    let mut script = String::from("set -euo pipefail\n");
    for step in &steps {
        let command = step
            .command
            .replace("cargo run --release --", binary)
            .replace("serve &", &format!("serve --listen 127.0.0.1:{port} &"))
            .replace("localhost:8080", &format!("127.0.0.1:{port}"));
        script.push_str(&command);
        script.push_str(&format!("printf '\\n{MARKER}\\n'\n"));
    }
    let directory = tempfile::tempdir().unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(directory.path())
        .env("RUST_LOG", "warn")
        .env_remove("BAHI_DATABASE_URL")
        .env_remove("BAHI_OPERATOR_KEY")
        .env_remove("BAHI_KEY_ENCRYPTION_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the walk-through failed: {stderr}\n{stdout}");
    let outputs: Vec<&str> = stdout.split(&format!("\n{MARKER}\n")).collect();
    assert_eq!(outputs.len(), steps.len() + 1, "{stdout}");
    let failures: Vec<String> = steps
        .iter()
        .zip(&outputs)
        .filter_map(|(step, output)| {
            check(step, output)
                .err()
                .map(|error| format!("{}\n  -> {error}\n  answer: {}", step.command.trim(), output.trim()))
        })
        .collect();
    assert!(failures.is_empty(), "README answers that no longer hold:\n{}", failures.join("\n"));
}

#[test]
fn a_changed_shape_is_caught() {
    let expected: Value = serde_json::from_str(r#"{"id": "agt_…", "usage": {"calls": 0}, "tags": []}"#).unwrap();
    let good: Value =
        serde_json::from_str(r#"{"id": "agt_1", "usage": {"calls": 0, "cost": 1}, "tags": [], "more": 1}"#).unwrap();
    assert_eq!(matches(&expected, &good, "$"), Ok(()));
    for bad in [
        r#"{"id": "key_1", "usage": {"calls": 0}, "tags": []}"#,
        r#"{"agent_id": "agt_1", "usage": {"calls": 0}, "tags": []}"#,
        r#"{"id": "agt_1", "usage": {"calls": "0"}, "tags": []}"#,
        r#"{"id": "agt_1", "usage": {"calls": 0}, "tags": [1]}"#,
    ] {
        assert!(matches(&expected, &serde_json::from_str(bad).unwrap(), "$").is_err(), "{bad}");
    }
}
