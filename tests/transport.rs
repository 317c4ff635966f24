//! The HTTP transport against raw TCP clients: slow and stalled clients are cut off, the
//! connection cap holds, and requests hyper cannot parse still get the contract's JSON
//! error with an `x-request-id`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestDatabase, TestServer, client};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for anything the server should do "soon"; generous for a loaded machine.
const BOUNDED_WAIT: Duration = Duration::from_secs(20);

fn address(server: &TestServer) -> String {
    server.base_url.trim_start_matches("http://").to_owned()
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(address(server)).await.unwrap()
}

/// Reads until the server closes the connection (or resets it); panics if that does not
/// happen within `within`. Returns what was read.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the server kept the connection open for {within:?}; read {received:?}");
    received
}

struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }
}

/// Reads one response (head, and a body of `content-length` bytes) within `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<RawResponse> {
    tokio::time::timeout(within, async {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).into_owned();
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let mut response = RawResponse { status, head, body: Vec::new() };
                let length: usize = response.header("content-length").map_or(0, |value| value.parse().unwrap());
                while received.len() < end + 4 + length {
                    let count = stream.read(&mut buffer).await.unwrap();
                    assert!(count > 0, "connection closed mid-body");
                    received.extend_from_slice(&buffer[..count]);
                }
                response.body = received[end + 4..end + 4 + length].to_vec();
                return response;
            }
            let count = stream.read(&mut buffer).await.unwrap();
            assert!(count > 0, "connection closed before a response: {received:?}");
            received.extend_from_slice(&buffer[..count]);
        }
    })
    .await
    .ok()
}

/// Splits bytes read from a connection into responses (bodies of `content-length`).
fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut responses = Vec::new();
    while let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut response = RawResponse { status, head, body: Vec::new() };
        let length: usize = response.header("content-length").map_or(0, |value| value.parse().unwrap());
        response.body = bytes[end + 4..end + 4 + length].to_vec();
        bytes = &bytes[end + 4 + length..];
        responses.push(response);
    }
    responses
}

/// Checks the contract's error shape and that `x-request-id` names the body's request id.
fn assert_json_error(response: &RawResponse, status: u16, error_type: &str) {
    assert_eq!(response.status, status, "{}", response.head);
    assert!(
        response.header("content-type").is_some_and(|value| value.starts_with("application/json")),
        "{}",
        response.head
    );
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"]["code"], error_type, "{body}");
    assert_eq!(body["error"]["type"], bahi::transport::error_class(status), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
    let request_id = body["error"]["request_id"].as_str().unwrap();
    assert!(!request_id.is_empty());
    assert_eq!(response.header("x-request-id").as_deref(), Some(request_id), "{}", response.head);
}

#[tokio::test]
async fn a_stalled_request_head_is_closed_after_the_header_read_timeout() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_HEADER_READ_TIMEOUT_SECONDS", "1")]);

    // Half a head, then nothing.
    let mut stream = connect(&server).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: bahi\r\nx-slow: ").await.unwrap();
    read_until_closed(&mut stream, BOUNDED_WAIT).await;

    // Connected, never a byte.
    let mut silent = connect(&server).await;
    read_until_closed(&mut silent, BOUNDED_WAIT).await;

    // A head that trickles in, a byte at a time, is cut off too: the timeout counts from
    // its first byte, not from the last.
    let mut trickle = connect(&server).await;
    let closed = tokio::time::timeout(BOUNDED_WAIT, async {
        for byte in b"GET /healthz HTTP/1.1\r\nhost: bahi\r\nx-slow: ".iter().cycle() {
            if trickle.write_all(&[*byte]).await.is_err() {
                return;
            }
            // sleep-ok: the client is slow on purpose; the server's timeout is what is tested.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickling head kept its connection");

    // The server is still there for a well-behaved client.
    assert_eq!(client().get(server.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_IDLE_TIMEOUT_SECONDS", "1")]);
    let mut stream = connect(&server).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: bahi\r\n\r\n").await.unwrap();
    let response = read_response(&mut stream, BOUNDED_WAIT).await.expect("an answer");
    assert_eq!(response.status, 200);
    // Kept alive for a while, then closed.
    read_until_closed(&mut stream, BOUNDED_WAIT).await;
}

#[tokio::test]
async fn a_stalled_request_body_is_a_408_in_the_contract_s_shape() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_BODY_READ_TIMEOUT_SECONDS", "1")]);
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"POST /v1/auth/agent-register HTTP/1.1\r\nhost: bahi\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"org_name\": ",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream, BOUNDED_WAIT).await.expect("an answer to a stalled body");
    assert_json_error(&response, 408, "request_timeout");
    read_until_closed(&mut stream, BOUNDED_WAIT).await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(
        &database.url(),
        &[
            ("BAHI_MAX_CONNECTIONS", "2"),
            ("BAHI_IDLE_TIMEOUT_SECONDS", "600"),
            ("BAHI_HEADER_READ_TIMEOUT_SECONDS", "600"),
        ],
    );
    // Two kept-alive connections take the whole cap.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&server).await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: bahi\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut stream, BOUNDED_WAIT).await.expect("an answer").status, 200);
        held.push(stream);
    }
    // A third is not served while they stay. (A correct server never answers it here, so
    // this wait cannot fail spuriously.)
    let mut waiting = connect(&server).await;
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nhost: bahi\r\n\r\n").await.unwrap();
    assert!(
        read_response(&mut waiting, Duration::from_secs(1)).await.is_none(),
        "a connection beyond the cap was served"
    );
    // When they go, it is served, and so is everyone else.
    drop(held);
    let response = read_response(&mut waiting, BOUNDED_WAIT).await.expect("served once the others closed");
    assert_eq!(response.status, 200);
    drop(waiting);
    assert_eq!(client().get(server.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn request_heads_hyper_cannot_parse_get_the_json_error_and_a_request_id() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());

    let long_uri = format!("/healthz?{}", "a".repeat(64 * 1024));
    let long_header = format!("x-long: {}", "b".repeat(200 * 1024));
    let cases: [(Vec<u8>, u16, &str); 5] = [
        (b"GET /healthz HTTP/1.1\r\nhost: bahi\r\nx-bad: a\x7fb\r\n\r\n".to_vec(), 400, "invalid_request"),
        (b"GET /healthz HTTP/1.1\r\nhost: bahi\r\nx-b\x7fd: a\r\n\r\n".to_vec(), 400, "invalid_request"),
        (format!("GET {long_uri} HTTP/1.1\r\nhost: bahi\r\n\r\n").into_bytes(), 414, "uri_too_long"),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: bahi\r\n{long_header}\r\n\r\n").into_bytes(),
            431,
            "request_header_fields_too_large",
        ),
        (b"G\x01T /healthz HTTP/1.1\r\nhost: bahi\r\n\r\n".to_vec(), 400, "invalid_request"),
    ];
    for (request, status, error_type) in cases {
        let mut stream = connect(&server).await;
        // The server may answer and close before it has read everything sent.
        let _ = stream.write_all(&request).await;
        let response = read_response(&mut stream, BOUNDED_WAIT).await.expect("an answer");
        assert_json_error(&response, status, error_type);
    }

    // After a good request on the same connection, too.
    let mut stream = connect(&server).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: bahi\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut stream, BOUNDED_WAIT).await.expect("an answer").status, 200);
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: bahi\r\nx-bad: a\x7fb\r\n\r\n").await.unwrap();
    let response = read_response(&mut stream, BOUNDED_WAIT).await.expect("an answer");
    assert_json_error(&response, 400, "invalid_request");

    // Pipelined behind a good one, in the same packet.
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nhost: bahi\r\n\r\nGET /healthz HTTP/1.1\r\nhost: bahi\r\nx-bad: a\x7fb\r\n\r\n",
        )
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, BOUNDED_WAIT).await;
    let responses = parse_responses(&received);
    assert_eq!(responses.len(), 2, "{}", String::from_utf8_lossy(&received));
    assert_eq!(responses[0].status, 200);
    assert_json_error(&responses[1], 400, "invalid_request");

    // Behind a response that is not JSON (Prometheus text), too.
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nhost: bahi\r\n\r\nGET /healthz HTTP/1.1\r\nhost: bahi\r\nx-bad: a\x7fb\r\n\r\n",
        )
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, BOUNDED_WAIT).await;
    let responses = parse_responses(&received);
    assert_eq!(responses.len(), 2, "{}", String::from_utf8_lossy(&received));
    assert_eq!(responses[0].status, 200);
    assert_json_error(&responses[1], 400, "invalid_request");

    // On a kept-alive HTTP/1.0 connection, where hyper answers in HTTP/1.0.
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"GET /healthz HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\nx-bad: a\x7fb\r\n\r\n",
        )
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, BOUNDED_WAIT).await;
    let responses = parse_responses(&received);
    assert_eq!(responses.len(), 2, "{}", String::from_utf8_lossy(&received));
    assert_json_error(&responses[1], 400, "invalid_request");

    // Ordinary requests are untouched by all this.
    assert_eq!(client().get(server.url("/healthz")).send().await.unwrap().status(), 200);
}
