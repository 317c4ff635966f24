//! The inference proxy's cost (issue 25): a fast fake OpenAI upstream in this process,
//! called by the same load generator directly (the floor) and through a bahi node, in the
//! same run; then the node's memory with many streamed calls held open at once.
//!
//! The node runs in a child process (this binary again, `proxy-server`), so that its CPU
//! and its peak RSS are its own, not the load generator's or the fake upstream's.

// Rates, ratios, percentiles and megabytes are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::serve::ListenerExt;
use bahi_domain::event::RateLimit;
use http_body_util::BodyExt;
use hyper::header::HeaderValue as ClientHeaderValue;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{mpsc, watch};

use crate::api::{BENCH_OPERATOR_KEY, LoadConnection, LoadRequest, load};

/// The model of the throughput points: the fake answers at once.
const FAST_MODEL: &str = "bench-fast";
/// The model of the memory point: the fake sends a stream's first event, then waits until
/// the benchmark releases every held stream.
const HOLD_OPEN_MODEL: &str = "hold-open";
/// What the fake upstream expects as its API key (bahi forwards the configured one).
const UPSTREAM_KEY: &str = "sk-bench-fake-upstream";
/// The node's default rate limit: far above anything this machine can send.
const RATE_LIMIT: RateLimit = RateLimit { requests: 100_000_000, interval_seconds: 1 };
/// Credit granted to the bench org (INR): holds never run out.
const CREDIT: &str = "100000000";
const REPLY_WORDS: [&str; 8] = ["This", " is", " a", " fast", " reply", " from", " the", " fake."];
const STREAM_END: &[u8] = b"data: [DONE]\n\n";

/// The fake upstream's answers, rendered once: they are OpenAI's shapes (as
/// tests/fixtures/fake_upstream.py sends them), and the fake must cost next to nothing.
struct Replies {
    completion: Bytes,
    /// A role chunk, one chunk per word, a finish chunk, `data: [DONE]`.
    stream: Arc<[Bytes]>,
    /// The same with `"usage": null` on every chunk and a usage chunk before `[DONE]`, as
    /// OpenAI answers `stream_options.include_usage` (which bahi always asks for).
    stream_with_usage: Arc<[Bytes]>,
}

impl Replies {
    fn render() -> Replies {
        let usage = json!({
            "prompt_tokens": 12,
            "completion_tokens": REPLY_WORDS.len(),
            "total_tokens": 12 + REPLY_WORDS.len(),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        });
        let head = json!({"id": "chatcmpl-bench", "created": 1_765_000_000, "model": FAST_MODEL});
        let mut completion = head.clone();
        completion["object"] = json!("chat.completion");
        completion["choices"] = json!([{
            "index": 0,
            "message": {"role": "assistant", "content": REPLY_WORDS.concat(), "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop",
        }]);
        completion["usage"] = usage.clone();
        completion["service_tier"] = json!("default");
        completion["system_fingerprint"] = json!("fp_bench");
        let stream = |include_usage: bool| -> Arc<[Bytes]> {
            let chunk = |choices: Value, usage: Option<&Value>| {
                let mut chunk = head.clone();
                chunk["object"] = json!("chat.completion.chunk");
                chunk["service_tier"] = json!("default");
                chunk["system_fingerprint"] = json!("fp_bench");
                chunk["choices"] = choices;
                if include_usage {
                    chunk["usage"] = usage.cloned().unwrap_or(Value::Null);
                }
                Bytes::from(format!("data: {chunk}\n\n"))
            };
            let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
            let mut events =
                vec![chunk(choice(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null), None)];
            for word in REPLY_WORDS {
                events.push(chunk(choice(json!({"content": word}), Value::Null), None));
            }
            events.push(chunk(choice(json!({}), json!("stop")), None));
            if include_usage {
                events.push(chunk(json!([]), Some(&usage)));
            }
            events.push(Bytes::from_static(STREAM_END));
            events.into()
        };
        Replies {
            completion: Bytes::from(completion.to_string()),
            stream: stream(false),
            stream_with_usage: stream(true),
        }
    }
}

#[derive(Clone)]
struct FakeUpstream {
    replies: Arc<Replies>,
    /// Becomes true when the held streams may finish.
    release: watch::Receiver<bool>,
    /// Streams of HOLD_OPEN_MODEL started.
    held: Arc<AtomicUsize>,
}

#[derive(serde::Deserialize)]
struct FakeRequest<'a> {
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// `POST /v1/chat/completions` of the fake: no delay, no work beyond reading the request's
/// model and stream switches.
async fn fake_chat(State(fake): State<FakeUpstream>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let answer = |status: StatusCode, content_type: &'static str, body: Body| {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        == Some(UPSTREAM_KEY);
    if !authorized {
        let error =
            r#"{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        return answer(StatusCode::UNAUTHORIZED, "application/json", Body::from(error));
    }
    let Ok(request) = serde_json::from_slice::<FakeRequest>(&body) else {
        let error = r#"{"error":{"message":"bad body","type":"invalid_request_error","param":null,"code":null}}"#;
        return answer(StatusCode::BAD_REQUEST, "application/json", Body::from(error));
    };
    if !request.stream {
        return answer(StatusCode::OK, "application/json", Body::from(fake.replies.completion.clone()));
    }
    let events = if request.stream_options.is_some_and(|options| options.include_usage) {
        fake.replies.stream_with_usage.clone()
    } else {
        fake.replies.stream.clone()
    };
    let hold = request.model == HOLD_OPEN_MODEL;
    if hold {
        fake.held.fetch_add(1, Ordering::Relaxed);
    }
    // One event per body frame, so that hyper writes each as a chunk of its own.
    let chunks =
        futures::stream::unfold((0usize, events, fake.release), move |(index, events, mut release)| async move {
            let event = events.get(index)?.clone();
            if hold && index == 1 {
                let _ = release.wait_for(|released| *released).await;
            }
            Some((Ok::<Bytes, Infallible>(event), (index + 1, events, release)))
        });
    let mut response = answer(StatusCode::OK, "text/event-stream; charset=utf-8", Body::from_stream(chunks));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The fake upstream on 127.0.0.1:0; its address.
async fn start_fake_upstream(fake: FakeUpstream) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    // As bahi's own transport and reqwest do: a streamed event is not held back by Nagle.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let router = axum::Router::new().route("/v1/chat/completions", axum::routing::post(fake_chat)).with_state(fake);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(address)
}

/// `bahi-bench proxy-server --database URL`: a bahi node on 127.0.0.1:0 configured as
/// `bahi serve` would be with the bench's operator key and RATE_LIMIT, until its standard
/// input closes. It prints `bahi listening on http://ADDRESS` on standard output.
pub async fn serve_child(database: Option<String>) -> anyhow::Result<()> {
    let database = database.context("proxy-server needs --database")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // The connection cap `bahi serve` derives from the open-file limit.
    let transport = bahi::transport::TransportLimits {
        max_connections: bahi::transport::default_max_connections(),
        ..bahi::transport::TransportLimits::default()
    };
    let config = crate::api::bench_config(RATE_LIMIT, transport)?;
    bahi::server::serve_on(listener, &database, config, async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    })
    .await
}

/// A `/proc/<pid>/status` field in kB (VmRSS, VmHWM), as megabytes.
fn status_megabytes(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kilobytes: f64 = line.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kilobytes / 1024.0)
}

/// CPU seconds (user + system, every thread) process `pid` has used, from /proc; 0 where
/// that is unavailable. Fields 14 and 15 of proc(5), in USER_HZ (100).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, fields)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One measured point: the load generator's figures and the CPU each process spent.
struct Point {
    rate: f64,
    p50: u64,
    p99: u64,
    failures: u64,
    /// CPU of this process (load generator and fake upstream), µs per request.
    bench_cpu: f64,
    /// CPU of the bahi node, µs per request (0 for direct calls).
    bahi_cpu: f64,
}

/// Runs `load` at `connections` against `address` with one fixed request, checking each
/// answer with `check`; CPU is read around it for this process and the node's.
#[allow(clippy::too_many_arguments)]
async fn point(
    address: SocketAddr,
    connections: usize,
    duration: Duration,
    bearer: ClientHeaderValue,
    path: &'static str,
    body: Bytes,
    check: fn(&[u8]) -> bool,
    node_pid: u32,
) -> anyhow::Result<Point> {
    let own_pid = std::process::id();
    let (bench_before, bahi_before) = (cpu_seconds(own_pid), cpu_seconds(node_pid));
    let started = Instant::now();
    let (rate, p50, p99, failures) = load(address, connections, duration, move |connection| {
        let (bearer, body) = (bearer.clone(), body.clone());
        Box::pin(async move {
            let request = LoadRequest { method: hyper::Method::POST, path, bearer: Some(&bearer), body };
            connection.send(request).await.is_some_and(|answer| check(&answer))
        })
    })
    .await?;
    let requests = (rate * started.elapsed().as_secs_f64()).max(1.0);
    Ok(Point {
        rate,
        p50,
        p99,
        failures,
        bench_cpu: (cpu_seconds(own_pid) - bench_before) * 1e6 / requests,
        bahi_cpu: (cpu_seconds(node_pid) - bahi_before) * 1e6 / requests,
    })
}

fn whole_completion(answer: &[u8]) -> bool {
    answer.ends_with(b"}") && answer.windows(7).any(|window| window == b"\"usage\"")
}

fn whole_stream(answer: &[u8]) -> bool {
    answer.ends_with(STREAM_END)
}

/// The node in its child process, with its address.
struct Node {
    child: tokio::process::Child,
    pid: u32,
    address: SocketAddr,
}

impl Node {
    async fn start(database_url: &str) -> anyhow::Result<Node> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["proxy-server", "--database", database_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the bahi node (this binary, proxy-server)")?;
        let pid = child.id().context("the node's pid")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let address = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .context("the node did not start within 60 s")??
                .context("the node exited before listening")?;
            if let Some(address) = line.strip_prefix("bahi listening on http://") {
                break address.parse()?;
            }
        };
        // Keep reading, so that the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Node { child, pid, address })
    }

    /// Closes the node's standard input (its signal to stop) and waits for it to exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => anyhow::ensure!(status?.success(), "the node exited with a failure"),
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("the node did not stop within 60 s");
            }
        }
        Ok(())
    }
}

/// Org, models and credit on the node, through its HTTP API as an operator would; the
/// org's API key.
async fn configure(base: &str, upstream: SocketAddr) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let registered: Value = client
        .post(format!("{base}/v1/auth/agent-register"))
        .json(&json!({"org_name": "proxy bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let org_id = registered["org_id"].as_str().context("org")?.to_owned();
    let key = registered["api_key"].as_str().context("key")?.to_owned();
    for model in [FAST_MODEL, HOLD_OPEN_MODEL] {
        client
            .put(format!("{base}/v1/admin/models/{model}"))
            .bearer_auth(BENCH_OPERATOR_KEY)
            .json(&json!({
                "provider": "openai",
                "upstream_base_url": format!("http://{upstream}/v1"),
                "upstream_api_key": UPSTREAM_KEY,
                "input_per_million": "1",
                "output_per_million": "2",
                "max_output_tokens": 64,
            }))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("configuring {model}"))?;
    }
    client
        .post(format!("{base}/v1/admin/credits/grants"))
        .bearer_auth(BENCH_OPERATOR_KEY)
        .json(&json!({"org_id": org_id, "amount": CREDIT, "reason": "proxy bench"}))
        .send()
        .await?
        .error_for_status()
        .context("granting credit")?;
    Ok(key)
}

fn chat_body(model: &str, stream: bool) -> Bytes {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say something short about ledgers."}],
        "max_tokens": 16,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    Bytes::from(body.to_string())
}

/// What `open_streams` read, in MB.
struct OpenStreams {
    /// The node's VmRSS and VmHWM with the streams open.
    rss: f64,
    peak: f64,
    /// This process's VmRSS before and with the streams open: the load generator and the
    /// fake upstream also hold two connections a stream (the same-run baseline).
    bench_before: f64,
    bench_open: f64,
    /// Streams whose first chunk came; streams that then ended whole.
    opened: usize,
    whole: usize,
}

/// Opens `count` streamed calls of HOLD_OPEN_MODEL through the node, each on a connection
/// of its own, and reads each one's first chunk; then reads the memory of the node and of
/// this process, releases the streams and reads each to its end.
async fn open_streams(
    node: &Node,
    count: usize,
    bearer: &ClientHeaderValue,
    release: watch::Sender<bool>,
) -> anyhow::Result<OpenStreams> {
    let bench_before = status_megabytes(std::process::id(), "VmRSS")?;
    let body = chat_body(HOLD_OPEN_MODEL, true);
    let (opened_sender, mut opened) = mpsc::channel::<bool>(count.max(1));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (address, bearer, body, opened) = (node.address, bearer.clone(), body.clone(), opened_sender.clone());
        tasks.push(tokio::spawn(async move {
            let first = async {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                let request = hyper::Request::builder()
                    .method(hyper::Method::POST)
                    .uri("/v1/chat/completions")
                    .header("host", "bench")
                    .header("authorization", bearer)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(body))?;
                let response = sender.send_request(request).await?;
                anyhow::ensure!(response.status().is_success(), "status {}", response.status());
                let mut body = response.into_body();
                loop {
                    let frame = body.frame().await.context("the stream ended before its first chunk")??;
                    if frame.data_ref().is_some_and(|data| !data.is_empty()) {
                        break;
                    }
                }
                // The connection's driver task lives on; keep the sender too.
                anyhow::Ok((sender, body))
            }
            .await;
            let _ = opened.send(first.is_ok()).await;
            let (_sender, body) = first.ok()?;
            let rest = body.collect().await.ok()?.to_bytes();
            Some(whole_stream(&rest))
        }));
    }
    drop(opened_sender);
    let mut open = 0;
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(120), opened.recv()).await {
            Ok(Some(true)) => open += 1,
            Ok(Some(false)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let rss = status_megabytes(node.pid, "VmRSS")?;
    let peak = status_megabytes(node.pid, "VmHWM")?;
    let bench_open = status_megabytes(std::process::id(), "VmRSS")?;
    let _ = release.send(true);
    let mut whole = 0;
    for task in tasks {
        if let Ok(Some(true)) = task.await {
            whole += 1;
        }
    }
    Ok(OpenStreams { rss, peak, bench_before, bench_open, opened: open, whole })
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The proxy benchmark: see the module's documentation.
pub async fn proxy(seconds: u64, connections: usize, streams: usize, database: Option<String>) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let load_at_start = load_average();
    let directory = crate::tempfile_dir::TempDir::new("proxy")?;
    let database_url = database.unwrap_or_else(|| format!("sqlite://{}", directory.path.join("bench.db").display()));

    let (release_sender, release) = watch::channel(false);
    let held = Arc::new(AtomicUsize::new(0));
    let fake = FakeUpstream { replies: Arc::new(Replies::render()), release, held: held.clone() };
    let upstream = start_fake_upstream(fake).await?;

    let node = Node::start(&database_url).await?;
    let base = format!("http://{}", node.address);
    let key = configure(&base, upstream).await?;
    let bahi_bearer = ClientHeaderValue::from_str(&format!("Bearer {key}"))?;
    let upstream_bearer = ClientHeaderValue::from_str(&format!("Bearer {UPSTREAM_KEY}"))?;

    // One call of each kind through the node first: the benchmark measures answers that are
    // right, not fast failures.
    let mut probe = LoadConnection::open(node.address).await?;
    for (stream, check) in [(false, whole_completion as fn(&[u8]) -> bool), (true, whole_stream)] {
        let request = LoadRequest {
            method: hyper::Method::POST,
            path: "/v1/chat/completions",
            bearer: Some(&bahi_bearer),
            body: chat_body(FAST_MODEL, stream),
        };
        let answer = probe.send(request).await.context("a proxied call failed")?;
        anyhow::ensure!(check(&answer), "a proxied answer is not whole: {}", String::from_utf8_lossy(&answer));
    }
    drop(probe);

    // Memory first, on a node that has served nothing else, so that VmHWM is this point's.
    let idle_rss = status_megabytes(node.pid, "VmRSS")?;
    let open = open_streams(&node, streams, &bahi_bearer, release_sender).await?;
    let (open_rss, open_peak, opened, whole) = (open.rss, open.peak, open.opened, open.whole);

    let mut points = Vec::new();
    for (label, stream) in [("plain", false), ("streamed", true)] {
        let body = chat_body(FAST_MODEL, stream);
        let check = if stream { whole_stream } else { whole_completion };
        let path = "/v1/chat/completions";
        let direct =
            point(upstream, connections, duration, upstream_bearer.clone(), path, body.clone(), check, node.pid)
                .await?;
        let proxied =
            point(node.address, connections, duration, bahi_bearer.clone(), path, body, check, node.pid).await?;
        points.push((label, direct, proxied));
    }
    // bahi's own bookkeeping for a call, alone: the hold and the settlement over HTTP.
    let bookkeeping = bookkeeping_pairs(node.address, connections, duration, &bahi_bearer, node.pid).await?;
    let load_at_end = load_average();
    let run_peak = status_megabytes(node.pid, "VmHWM")?;
    node.stop().await?;

    println!(
        "engine: {}; {connections} connections; {seconds} s a point; load generator and fake upstream in this process, \
         the bahi node in a child; load average {load_at_start} at the start, {load_at_end} at the end",
        if database_url.starts_with("sqlite") { "sqlite" } else { "postgres" }
    );
    println!(
        "{:<46} {:>11} {:>6} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10} {:>8}",
        "what", "requests/s", "ratio", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "bench µs", "bahi µs", "failures"
    );
    let ms = |micros: u64| micros as f64 / 1000.0;
    let mut goals = Vec::new();
    for (label, direct, proxied) in &points {
        println!(
            "{:<46} {:>11.0} {:>6.2} {:>8.2} {:>8.2} {:>9} {:>9} {:>10.1} {:>10} {:>8}",
            format!("direct to the fake, {label} (floor)"),
            direct.rate,
            1.0,
            ms(direct.p50),
            ms(direct.p99),
            "-",
            "-",
            direct.bench_cpu,
            "-",
            direct.failures
        );
        let added_p50 = ms(proxied.p50) - ms(direct.p50);
        let added_p99 = ms(proxied.p99) - ms(direct.p99);
        let ratio = proxied.rate / direct.rate;
        println!(
            "{:<46} {:>11.0} {:>6.2} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>10.1} {:>10.1} {:>8}",
            format!("through bahi, {label}"),
            proxied.rate,
            ratio,
            ms(proxied.p50),
            ms(proxied.p99),
            added_p50,
            added_p99,
            proxied.bench_cpu,
            proxied.bahi_cpu,
            proxied.failures
        );
        goals.push(format!(
            "{label}: added p50 {added_p50:.2} ms < 0.5 {}; added p99 {added_p99:.2} ms < 2 {}; ratio {ratio:.2} >= 0.7 {}",
            verdict(added_p50 < 0.5),
            verdict(added_p99 < 2.0),
            verdict(ratio >= 0.7)
        ));
    }
    println!(
        "{:<46} {:>11.0} {:>6} {:>8.2} {:>8.2} {:>9} {:>9} {:>10.1} {:>10.1} {:>8}",
        "bahi alone: authorize + usage pairs, no upstream",
        bookkeeping.rate,
        "-",
        ms(bookkeeping.p50),
        ms(bookkeeping.p99),
        "-",
        "-",
        bookkeeping.bench_cpu,
        bookkeeping.bahi_cpu,
        bookkeeping.failures
    );
    println!(
        "(streamed: {} SSE events, latency to the end of the stream; bench µs, bahi µs: CPU per request of this \
         process (load generator and fake) and of the node)",
        Replies::render().stream_with_usage.len()
    );
    println!();
    println!(
        "memory of the node (its own process): VmRSS {idle_rss:.1} MB after setup; with {opened} of {streams} streams \
         open (first chunk read; the fake held {}): VmRSS {open_rss:.1} MB, VmHWM {open_peak:.1} MB, {:.1} kB a stream \
         above setup; {whole} streams then ended whole; VmHWM over the whole run {run_peak:.1} MB",
        held.load(Ordering::Relaxed),
        (open_rss - idle_rss) * 1024.0 / streams.max(1) as f64
    );
    println!(
        "baseline, this process (load generator and fake upstream, also two connections a stream): VmRSS {:.1} MB \
         before, {:.1} MB with the streams open, {:.1} kB a stream",
        open.bench_before,
        open.bench_open,
        (open.bench_open - open.bench_before) * 1024.0 / streams.max(1) as f64
    );
    println!("open-file limit {}; the node's connection cap {}", open_file_limit(), connection_cap());
    println!();
    for goal in goals {
        println!("goal, {goal}");
    }
    println!(
        "goal, peak RSS with {streams} open streams {open_peak:.1} MB < 100 MB: {}",
        verdict(open_peak < 100.0 && opened == streams)
    );
    Ok(())
}

/// Authorize (a hold) + usage pairs on the node at `connections`: what the proxy records
/// for every call, without an upstream.
async fn bookkeeping_pairs(
    address: SocketAddr,
    connections: usize,
    duration: Duration,
    bearer: &ClientHeaderValue,
    node_pid: u32,
) -> anyhow::Result<Point> {
    let operator = ClientHeaderValue::from_str(&format!("Bearer {BENCH_OPERATOR_KEY}"))?;
    let bearer = bearer.clone();
    let with_hold = Bytes::from(json!({"model": FAST_MODEL, "max_cost": "0.01"}).to_string());
    let own_pid = std::process::id();
    let (bench_before, bahi_before) = (cpu_seconds(own_pid), cpu_seconds(node_pid));
    let started = Instant::now();
    let (rate, p50, p99, failures) = load(address, connections, duration, move |connection| {
        let (bearer, operator, body) = (bearer.clone(), operator.clone(), with_hold.clone());
        Box::pin(async move {
            let request = LoadRequest { method: hyper::Method::POST, path: "/v1/authorize", bearer: Some(&bearer), body };
            let Some(authorized) = connection.send(request).await else { return false };
            let Ok(authorized) = serde_json::from_slice::<Value>(&authorized) else { return false };
            let usage = json!({"call_id": authorized["call_id"], "model": FAST_MODEL, "input_tokens": 12, "output_tokens": 8, "status": "succeeded"});
            let request = LoadRequest {
                method: hyper::Method::POST,
                path: "/v1/usage",
                bearer: Some(&operator),
                body: Bytes::from(usage.to_string()),
            };
            connection.send(request).await.is_some()
        })
    })
    .await?;
    let requests = (rate * started.elapsed().as_secs_f64()).max(1.0);
    Ok(Point {
        rate,
        p50,
        p99,
        failures,
        bench_cpu: (cpu_seconds(own_pid) - bench_before) * 1e6 / requests,
        bahi_cpu: (cpu_seconds(node_pid) - bahi_before) * 1e6 / requests,
    })
}

fn open_file_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|line| line.starts_with("Max open files"))?.to_owned();
            Some(line.trim_start_matches("Max open files").split_whitespace().next()?.to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The node's connection cap: the child inherits this process's open-file limit.
fn connection_cap() -> usize {
    bahi::transport::default_max_connections()
}
