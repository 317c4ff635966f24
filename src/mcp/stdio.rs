//! `bahi mcp --stdio`: MCP for local agent hosts that start their servers as processes.
//! Each JSON-RPC message read from stdin (one per line, as MCP's stdio transport frames
//! them) is posted to a bahi server's `/mcp` with the credential from the environment, and
//! the server's answer is written to stdout as one line. The server answers statelessly, so
//! a relay of single messages is the whole transport; every tool runs on the server, under
//! the same scopes as the JSON API.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Longest JSON-RPC message relayed (a tool call's arguments are small).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest wait for the server's answer to one message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Relays stdin to `url`'s `/mcp` and its answers to stdout until stdin ends.
pub async fn relay(url: &str, credential: &str) -> anyhow::Result<()> {
    let endpoint = format!("{}/mcp", url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(ANSWER_TIMEOUT).build()?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        for answer in answers(&client, &endpoint, credential, &line).await {
            stdout.write_all(answer.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
        }
        stdout.flush().await?;
    }
    Ok(())
}

/// The lines to write for one message: the server's answer(s), none for a notification, or
/// a JSON-RPC error for a request the server could not answer.
async fn answers(client: &reqwest::Client, endpoint: &str, credential: &str, message: &str) -> Vec<String> {
    let id = serde_json::from_str::<Value>(message).ok().and_then(|value| value.get("id").cloned());
    if message.len() > MAX_MESSAGE_BYTES {
        return error_answer(id, -32600, format!("message larger than {MAX_MESSAGE_BYTES} bytes"));
    }
    let sent = client
        .post(endpoint)
        .bearer_auth(credential)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(message.to_owned())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => return error_answer(id, -32000, format!("bahi at {endpoint} did not answer: {error}")),
    };
    let status = response.status();
    let is_event_stream = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => return error_answer(id, -32000, format!("bahi's answer broke off: {error}")),
    };
    if status.is_success() {
        return if is_event_stream { event_stream_data(&body) } else { non_empty(body) };
    }
    // A refusal before MCP (401, 429): the contract's error, as a JSON-RPC error.
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|value| value["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("bahi answered {status}"));
    error_answer(id, -32001, message)
}

fn non_empty(body: String) -> Vec<String> {
    if body.trim().is_empty() { Vec::new() } else { vec![body.trim().to_owned()] }
}

/// The `data:` lines of an event stream, one JSON-RPC message each.
fn event_stream_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.trim().to_owned())
        .filter(|data| !data.is_empty())
        .collect()
}

/// A JSON-RPC error answer for a request (`id`); a notification gets none.
fn error_answer(id: Option<Value>, code: i64, message: String) -> Vec<String> {
    match id {
        None | Some(Value::Null) => Vec::new(),
        Some(id) => vec![json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_give_their_data_lines_and_notifications_get_no_error() {
        assert_eq!(event_stream_data("event: message\ndata: {\"id\":1}\n\n"), vec!["{\"id\":1}".to_owned()]);
        assert!(error_answer(None, -32000, "x".into()).is_empty());
        assert_eq!(error_answer(Some(json!(7)), -32000, "x".into()).len(), 1);
    }
}
