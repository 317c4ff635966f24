//! API benchmarks: credential resolution in memory, agent tokens, and HTTP endpoints on
//! loopback against a trivial axum JSON endpoint measured in the same run.

// Rates, ratios and percentiles are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bahi_domain::credential::{Environment, KeyPrefix, NewApiKey, Scope, SecretHash};
use bahi_domain::event::RateLimit;
use bahi_domain::ids::{ApiKeyId, OrgId};
use bahi_domain::{Command, State, evolve};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use bahi::config::ServerConfig;
use bahi::limits::RateLimiter;

pub(crate) fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Resolving an API key to its principal in memory (hash, lookup, checks, one token-bucket
/// step) beside a bare SHA-256 of the same key text.
pub fn credentials(seconds: u64) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let prefix = KeyPrefix::parse("bahi").map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut state = State::default();
    let now = chrono::Utc::now();
    let mut secrets = Vec::new();
    // 10,000 orgs with one key each: a realistic map, not a one-entry one.
    for index in 0..10_000u32 {
        let mut random = [0u8; 32];
        random[..4].copy_from_slice(&index.to_be_bytes());
        let key = NewApiKey::generate(&prefix, Environment::Live, random);
        let mut id_bytes = [0u8; 16];
        id_bytes[..4].copy_from_slice(&index.to_be_bytes());
        let command = Command::RegisterOrg {
            org_id: OrgId::from_random(id_bytes),
            display_name: format!("org {index}"),
            environment: Environment::Live,
            first_key: bahi_domain::command::NewKeyRecord {
                key_id: ApiKeyId::from_random(id_bytes),
                hash: key.hash,
                display_prefix: key.display_prefix,
                environment: Environment::Live,
                name: None,
                scopes: Scope::ORG_DEFAULT.to_vec(),
                expires_at: None,
                rate_limit: Some(RateLimit { requests: 1_000_000_000, interval_seconds: 1 }),
                budget: None,
                metadata: None,
            },
            first_agent: None,
        };
        for event in bahi_domain::decide(&state, &command, now).map_err(|error| anyhow::anyhow!("{error}"))? {
            evolve(&mut state, &event);
        }
        secrets.push(key.secret);
    }
    let limiter = RateLimiter::default();

    let mut count = 0u64;
    let started = Instant::now();
    let mut sink = 0u8;
    while started.elapsed() < duration {
        for secret in &secrets[..1000] {
            sink ^= Sha256::digest(secret.as_bytes())[0];
        }
        count += 1000;
    }
    let bare = per_second(count, started.elapsed());

    let mut count = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let now = chrono::Utc::now();
        for secret in &secrets[..1000] {
            let parsed = bahi_domain::credential::parse_api_key(secret).map_err(|error| anyhow::anyhow!("{error}"))?;
            let key = state.api_key_by_hash(&SecretHash::of(secret)).context("key")?;
            let live = parsed.environment == key.environment && key.revoked_at.is_none() && key.expires_at.is_none();
            let decision = limiter.take(
                key.id.as_str(),
                key.rate_limit.unwrap_or(RateLimit { requests: 1, interval_seconds: 1 }),
                now,
            );
            sink ^= u8::from(live && decision.allowed);
        }
        count += 1000;
    }
    let resolved = per_second(count, started.elapsed());
    println!("{:<52} {:>14} {:>8}", "what (one thread)", "per second", "ratio");
    println!("{:<52} {bare:>14.0} {:>8.2}", "bare SHA-256 of the key (baseline)", 1.0);
    println!(
        "{:<52} {resolved:>14.0} {:>8.2}",
        "key -> principal: parse, hash, lookup, rate-limit step",
        resolved / bare
    );
    std::hint::black_box(sink);

    println!();
    println!("{:<52} {:>14} {:>8}", "agent tokens (one thread)", "per second", "ratio");
    let figures = crate::tokens::bench(duration);
    let baseline = figures.iter().find(|(name, _)| name.contains("baseline")).map_or(1.0, |(_, rate)| *rate);
    for (name, rate) in figures {
        println!("{name:<52} {rate:>14.0} {:>8.2}", rate / baseline);
    }
    Ok(())
}

/// One connection of the load generator: HTTP/1.1 over its own TCP stream, one request at a
/// time, as a gateway's upstream connection would be. The generator shares the machine with
/// the server, so it is kept lean: reqwest's pool, URL parsing and `json!` bodies per request
/// took a quarter of the CPU in the authorize+usage phase (perf), CPU the server then lacked.
pub(crate) struct LoadConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
}

impl LoadConnection {
    pub(crate) async fn open(address: std::net::SocketAddr) -> anyhow::Result<LoadConnection> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(LoadConnection { sender })
    }

    /// Sends one request; the body when the status is 2xx, None on any failure.
    pub(crate) async fn send(&mut self, request: LoadRequest<'_>) -> Option<hyper::body::Bytes> {
        let (status, body) = self.exchange(request).await?;
        status.is_success().then_some(body)
    }

    /// Sends one request; its status and body, None when the exchange itself failed.
    pub(crate) async fn exchange(
        &mut self,
        request: LoadRequest<'_>,
    ) -> Option<(hyper::StatusCode, hyper::body::Bytes)> {
        let mut builder = hyper::Request::builder().method(request.method).uri(request.path).header("host", "bench");
        if let Some(bearer) = request.bearer {
            builder = builder.header("authorization", bearer);
        }
        if !request.body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        let built = builder.body(http_body_util::Full::new(request.body)).ok()?;
        self.exchange_built(built).await
    }

    /// Sends a request the caller built (with headers of its own, such as a session
    /// cookie); its status and body, None when the exchange itself failed or was not
    /// answered within `EXCHANGE_TIMEOUT`.
    pub(crate) async fn exchange_built(
        &mut self,
        request: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
    ) -> Option<(hyper::StatusCode, hyper::body::Bytes)> {
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let exchange = async {
            self.sender.ready().await.ok()?;
            let response = self.sender.send_request(request).await.ok()?;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?.to_bytes();
            Some((status, body))
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(answer) => answer,
            Err(_) => {
                // Said at once: a request a server never answers is a finding, not a figure,
                // and without a bound the benchmark waited for it for ever.
                eprintln!("a {method} {path} was not answered within {EXCHANGE_TIMEOUT:?}");
                None
            }
        }
    }
}

/// The longest a benchmark waits for one answer before it counts the exchange as failed.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A request of the load generator, its header values prepared before timing.
pub(crate) struct LoadRequest<'a> {
    pub(crate) method: hyper::Method,
    pub(crate) path: &'a str,
    pub(crate) bearer: Option<&'a hyper::header::HeaderValue>,
    pub(crate) body: hyper::body::Bytes,
}

/// Runs `connections` tasks, each on a connection of its own, issuing `request` for
/// `duration`; returns (requests/s, p50 µs, p99 µs, failures).
pub(crate) async fn load<F>(
    address: std::net::SocketAddr,
    connections: usize,
    duration: Duration,
    request: F,
) -> anyhow::Result<(f64, u64, u64, u64)>
where
    F: for<'c> Fn(&'c mut LoadConnection) -> futures::future::BoxFuture<'c, bool> + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(LoadConnection::open(address).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for mut connection in opened {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                if request(&mut connection).await {
                    latencies.push(sent.elapsed().as_micros() as u64);
                } else {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        if let Ok((mut part, failed)) = task.await {
            latencies.append(&mut part);
            failures += failed;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile =
        |fraction: f64| latencies.get(((latencies.len() as f64) * fraction) as usize).copied().unwrap_or(0);
    Ok((per_second(latencies.len() as u64, elapsed), percentile(0.50), percentile(0.99), failures))
}

pub(crate) const BENCH_OPERATOR_KEY: &str = "bench-operator-key-0123456789abcdefghijklmnop";

/// HTTP on loopback at `connections` connections: a trivial axum JSON endpoint, this
/// server's `/healthz`, the account endpoint, authorize (every one a durable hold), and
/// authorize + usage pairs; then the engine alone inserting the authorizations' rows.
pub async fn http(seconds: u64, connections: usize, database: Option<String>) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let directory =
        std::env::temp_dir().join(format!("bahi-bench-http-{}", hex::encode(bahi::identity::random_bytes::<8>())));
    std::fs::create_dir_all(&directory)?;
    let database_url = database.unwrap_or_else(|| format!("sqlite://{}", directory.join("bench.db").display()));

    let trivial_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let trivial_address = trivial_listener.local_addr()?;
    let trivial =
        axum::Router::new().route("/trivial", axum::routing::get(|| async { axum::Json(json!({"ok": true})) }));
    tokio::spawn(async move { axum::serve(trivial_listener, trivial).await });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let config = bench_config(
        RateLimit { requests: 1_000_000_000, interval_seconds: 1 },
        bahi::transport::TransportLimits::default(),
    )?;
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let url = database_url.clone();
    let server = tokio::spawn(async move {
        bahi::server::serve_on(listener, &url, config, async {
            let _ = stop_receiver.await;
        })
        .await
    });
    let base = format!("http://{address}");
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    // Wait for the node to answer.
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered: Value = client
        .post(format!("{base}/v1/auth/agent-register"))
        .json(&json!({"org_name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let org_id = registered["org_id"].as_str().context("org")?.to_owned();
    let key = registered["api_key"].as_str().context("key")?.to_owned();
    client
        .put(format!("{base}/v1/admin/prices/bench-model"))
        .bearer_auth(BENCH_OPERATOR_KEY)
        .json(&json!({"input_per_million": "1", "output_per_million": "2"}))
        .send()
        .await?;
    client
        .post(format!("{base}/v1/admin/credits/grants"))
        .bearer_auth(BENCH_OPERATOR_KEY)
        .json(&json!({"org_id": org_id, "amount": "1000000000", "reason": "bench"}))
        .send()
        .await?;

    println!(
        "engine: {}; {connections} connections; {seconds} s per point; client and server share the machine",
        if database_url.starts_with("sqlite") { "sqlite" } else { "postgres" }
    );
    println!(
        "{:<44} {:>12} {:>8} {:>10} {:>10} {:>9}",
        "endpoint", "requests/s", "ratio", "p50 µs", "p99 µs", "failures"
    );
    let (baseline, p50, p99, failures) = load(trivial_address, connections, duration, |connection| {
        Box::pin(async move {
            let request = LoadRequest {
                method: hyper::Method::GET,
                path: "/trivial",
                bearer: None,
                body: hyper::body::Bytes::new(),
            };
            connection.send(request).await.is_some()
        })
    })
    .await?;
    println!("{:<44} {baseline:>12.0} {:>8.2} {p50:>10} {p99:>10} {failures:>9}", "trivial axum JSON (baseline)", 1.0);

    let bearer = hyper::header::HeaderValue::from_str(&format!("Bearer {key}"))?;
    let operator = hyper::header::HeaderValue::from_str(&format!("Bearer {BENCH_OPERATOR_KEY}"))?;
    let bearer_b = bearer.clone();
    let (rate, p50, p99, failures) = load(address, connections, duration, move |connection| {
        let bearer = bearer_b.clone();
        Box::pin(async move {
            let request = LoadRequest {
                method: hyper::Method::GET,
                path: "/v1/auth/account",
                bearer: Some(&bearer),
                body: hyper::body::Bytes::new(),
            };
            connection.send(request).await.is_some()
        })
    })
    .await?;
    println!("{:<44} {rate:>12.0} {:>8.2} {p50:>10} {p99:>10} {failures:>9}", "GET /v1/auth/account", rate / baseline);

    let (healthz, p50, p99, failures) = load(address, connections, duration, |connection| {
        Box::pin(async move {
            let request = LoadRequest {
                method: hyper::Method::GET,
                path: "/healthz",
                bearer: None,
                body: hyper::body::Bytes::new(),
            };
            connection.send(request).await.is_some()
        })
    })
    .await?;
    println!(
        "{:<44} {healthz:>12.0} {:>8.2} {p50:>10} {p99:>10} {failures:>9}",
        "GET /healthz (this server's trivial endpoint)",
        healthz / baseline
    );

    let bearer_c = bearer.clone();
    let default_hold = hyper::body::Bytes::from(json!({"model": "bench-model"}).to_string());
    let (authorizations, p50, p99, failures) = load(address, connections, duration, move |connection| {
        let (bearer, body) = (bearer_c.clone(), default_hold.clone());
        Box::pin(async move {
            let request =
                LoadRequest { method: hyper::Method::POST, path: "/v1/authorize", bearer: Some(&bearer), body };
            connection.send(request).await.is_some()
        })
    })
    .await?;
    println!(
        "{:<44} {authorizations:>12.0} {:>8.2} {p50:>10} {p99:>10} {failures:>9}",
        "POST /v1/authorize (durable default hold)",
        authorizations / baseline
    );

    let with_hold = hyper::body::Bytes::from(json!({"model": "bench-model", "max_cost": "1"}).to_string());
    let (rate, p50, p99, failures) = load(address, connections, duration, move |connection| {
        let (bearer, operator, body) = (bearer.clone(), operator.clone(), with_hold.clone());
        Box::pin(async move {
            let request = LoadRequest { method: hyper::Method::POST, path: "/v1/authorize", bearer: Some(&bearer), body };
            let Some(authorized) = connection.send(request).await else { return false };
            #[derive(serde::Deserialize)]
            struct Authorized<'a> {
                #[serde(borrow)]
                call_id: std::borrow::Cow<'a, str>,
            }
            let Ok(authorized) = serde_json::from_slice::<Authorized>(&authorized) else { return false };
            let usage = json!({"call_id": authorized.call_id, "model": "bench-model", "input_tokens": 1000, "output_tokens": 500, "status": "succeeded"});
            let request =
                LoadRequest { method: hyper::Method::POST, path: "/v1/usage", bearer: Some(&operator), body: hyper::body::Bytes::from(usage.to_string()) };
            connection.send(request).await.is_some()
        })
    })
    .await?;
    println!("{:<44} {rate:>12.0} {:>8} {p50:>10} {p99:>10} {failures:>9}", "authorize (hold) + usage, pairs/s", "-");

    let _ = stop_sender.send(());
    server.await??;
    // The engine alone writing the rows those authorizations wrote, in batches of the size
    // the writer forms at this many connections, on the same database.
    let store = bahi::store::Store::open(&database_url).await?;
    let raw = crate::raw_authorizations(&store, connections, duration).await?;
    store.close().await;
    println!("{:<44} {raw:>12.0}", "raw batched insert of CallAuthorized rows");
    println!(
        "authorize (durable hold): {:.2} of this server's /healthz, {:.2} of the raw insert ceiling",
        authorizations / healthz,
        authorizations / raw
    );
    let _ = std::fs::remove_dir_all(&directory);
    Ok(())
}

/// A node configured as `bahi serve` would be for a benchmark: the bench's operator key, a
/// fresh key-encryption key, `rate_limit` for every bucket, and `transport`'s limits.
pub fn bench_config(
    rate_limit: RateLimit,
    transport: bahi::transport::TransportLimits,
) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig {
        environment: Environment::Live,
        key_prefix: KeyPrefix::parse("bahi").map_err(|error| anyhow::anyhow!("{error}"))?,
        legacy_key_prefixes: Vec::new(),
        operator_key_hash: Some(SecretHash::of(BENCH_OPERATOR_KEY)),
        hold_ttl_seconds: 600,
        issuer: String::new(),
        default_rate_limit: rate_limit,
        anonymous_rate_limit: rate_limit,
        secure_cookies: false,
        key_encryption_key: bahi::identity::random_bytes(),
        transport,
        token_rules: bahi::agent_token::TokenRules::default(),
        test_clock: false,
        proxy: bahi::config::ProxyLimits::default(),
        cluster_nodes: 1,
    })
}
