//! Scale-out on PostgreSQL (issue 28): `bahi serve` nodes, the release binary in child
//! processes, sharing one fresh database on the PostgreSQL server, as operators run them.
//!
//! - `cluster-revocation`: three nodes under authorize+usage load; a key is made, seen to
//!   work on every node, revoked on one, and every node is polled until it answers 401. The
//!   node that took the revocation is the same-run floor (one probe's round trip).
//! - `cluster-scaling`: the same client load against 1, 2 and 3 nodes, each on a fresh
//!   database, with the CPU each party used, so that the ratio and where it saturates can be
//!   read together.
//!
//! The database is created by the benchmark and dropped after it.

// Rates, ratios, percentiles and CPU shares are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection};
use tokio::io::AsyncBufReadExt;

use crate::api::{BENCH_OPERATOR_KEY, LoadConnection, LoadRequest};

const MODEL: &str = "bench-model";
/// Every node's default rate limit (divided by the node count): far above this machine.
const RATE_LIMIT: &str = "1000000000/1";
/// The longest a node may take from its start to listening: it loads the whole log first.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(600);
/// Load runs this long before anything is measured.
const WARM_UP: Duration = Duration::from_secs(1);
/// A node that has not answered 401 this long after the revocation counts as a miss.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(10);

/// What both cluster benchmarks take from the command line.
pub struct ClusterOptions {
    /// The PostgreSQL server, without a database: `postgres://postgres@127.0.0.1:5432`.
    pub postgres: String,
    /// The `bahi` binary; built with `cargo build --release` when not given.
    pub bahi: Option<PathBuf>,
    /// Load connections (authorize+usage pairs), dealt round-robin over the nodes.
    pub connections: usize,
    /// Seconds per measured point (scaling).
    pub seconds: u64,
    /// Revocations measured (revocation).
    pub samples: usize,
    /// Node counts measured, in this order (scaling).
    pub nodes: Vec<usize>,
}

/// The release `bahi` beside this binary's target directory, built (or found up to date)
/// first, so that a run measures the code in the tree.
pub(crate) fn bahi_binary(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the workspace directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the release bahi binary (cargo build --release -p bahi --bin bahi)");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "bahi", "--bin", "bahi"])
        .current_dir(workspace)
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build --release -p bahi failed");
    let executable = std::env::current_exe()?;
    let target = executable.parent().and_then(Path::parent).context("the target directory")?;
    let path = target.join("release").join("bahi");
    anyhow::ensure!(path.exists(), "{} was not built", path.display());
    Ok(path)
}

/// A database of the benchmark's own on the server, dropped by `drop`.
pub(crate) struct Database {
    server: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl Database {
    pub(crate) async fn create(server: &str, label: &str) -> anyhow::Result<Database> {
        let server = server.trim_end_matches('/').to_owned();
        let name = format!("bahi_bench_{label}_{}", hex::encode(bahi::identity::random_bytes::<6>()));
        let mut connection = sqlx::PgConnection::connect(&format!("{server}/postgres"))
            .await
            .with_context(|| format!("connecting to {server}/postgres"))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut connection).await?;
        connection.close().await?;
        let url = format!("{server}/{name}");
        Ok(Database { server, name, url })
    }

    pub(crate) async fn drop(self) -> anyhow::Result<()> {
        let mut connection = sqlx::PgConnection::connect(&format!("{}/postgres", self.server)).await?;
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        Ok(())
    }
}

/// A `bahi serve` child process.
pub(crate) struct Node {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) address: SocketAddr,
}

impl Node {
    /// `bahi serve` on 127.0.0.1:0 and `database_url`, configured as scripts/cluster.sh
    /// configures a cluster node (the bench's operator key, `key_encryption_key`, an issuer,
    /// BAHI_CLUSTER_NODES = `cluster_nodes`, RATE_LIMIT for every bucket), its standard error
    /// in `log`; returned once it says where it listens.
    pub(crate) async fn start(
        bahi: &Path,
        database_url: &str,
        log: &Path,
        key_encryption_key: &str,
        cluster_nodes: usize,
    ) -> anyhow::Result<Node> {
        let mut child = tokio::process::Command::new(bahi)
            .args(["serve", "--listen", "127.0.0.1:0", "--database", database_url])
            .env("BAHI_OPERATOR_KEY", BENCH_OPERATOR_KEY)
            .env("BAHI_KEY_ENCRYPTION_KEY", key_encryption_key)
            .env("BAHI_ISSUER", "http://127.0.0.1:8080")
            .env("BAHI_CLUSTER_NODES", cluster_nodes.to_string())
            .env("BAHI_DEFAULT_RATE_LIMIT", RATE_LIMIT)
            .env("BAHI_ANONYMOUS_RATE_LIMIT", RATE_LIMIT)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bahi.display()))?;
        let pid = child.id().context("the node's pid")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let address = loop {
            let line = tokio::time::timeout(NODE_START_TIMEOUT, lines.next_line())
                .await
                .with_context(|| format!("a node did not start within {NODE_START_TIMEOUT:?}"))??
                .with_context(|| format!("the node exited before listening (log {})", log.display()))?;
            if let Some(address) = line.strip_prefix("bahi listening on http://") {
                break address.parse()?;
            }
        };
        // Keep reading, so that the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Node { child, pid, address })
    }

    /// Asks the node to stop gracefully (SIGTERM); `wait` waits for it.
    pub(crate) fn terminate(&self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
    }

    /// Waits for the node to exit (SIGKILL after 30 s); whether it exited by itself, with
    /// success.
    pub(crate) async fn wait(mut self) -> bool {
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status.is_ok_and(|status| status.success()),
            Err(_) => {
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

/// Nodes on one database; `shutdown` stops them and drops it.
struct Cluster {
    nodes: Vec<Node>,
    database: Database,
    logs: PathBuf,
}

impl Cluster {
    /// A fresh database and `count` nodes on it, started one after the other (the first
    /// migrates the database), configured as scripts/cluster.sh configures a cluster: one
    /// operator key, key-encryption key and issuer for all, BAHI_CLUSTER_NODES = count.
    async fn start(bahi: &Path, server: &str, label: &str, count: usize) -> anyhow::Result<Cluster> {
        let database = Database::create(server, label).await?;
        let logs = std::env::temp_dir().join(format!("bahi-bench-{}", database.name));
        std::fs::create_dir_all(&logs)?;
        let key_encryption_key = hex::encode(bahi::identity::random_bytes::<32>());
        let mut cluster = Cluster { nodes: Vec::new(), database, logs };
        for index in 0..count {
            match cluster.start_node(bahi, index, count, &key_encryption_key).await {
                Ok(node) => cluster.nodes.push(node),
                Err(error) => {
                    cluster.shutdown().await;
                    return Err(error);
                }
            }
        }
        Ok(cluster)
    }

    async fn start_node(&self, bahi: &Path, index: usize, count: usize, kek: &str) -> anyhow::Result<Node> {
        let log = self.logs.join(format!("node-{index}.log"));
        Node::start(bahi, &self.database.url, &log, kek, count).await.with_context(|| format!("node {index}"))
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.address).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|node| node.pid).collect()
    }

    /// SIGTERM to every node, a wait for each (SIGKILL after 30 s), then the database dropped.
    async fn shutdown(self) {
        for node in &self.nodes {
            node.terminate();
        }
        for node in self.nodes {
            node.wait().await;
        }
        if let Err(error) = self.database.drop().await {
            eprintln!("could not drop the benchmark's database: {error}");
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

/// An org with credit, a price for MODEL, through the first node's HTTP API: the org's id
/// and its owner key (which makes and revokes keys, and carries the load).
async fn setup(address: SocketAddr) -> anyhow::Result<(String, String)> {
    let base = format!("http://{address}");
    let client = reqwest::Client::new();
    let registered: Value = client
        .post(format!("{base}/v1/auth/agent-register"))
        .json(&json!({"org_name": "cluster bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let org_id = registered["org_id"].as_str().context("org")?.to_owned();
    let key = registered["api_key"].as_str().context("key")?.to_owned();
    client
        .put(format!("{base}/v1/admin/prices/{MODEL}"))
        .bearer_auth(BENCH_OPERATOR_KEY)
        .json(&json!({"input_per_million": "1", "output_per_million": "2"}))
        .send()
        .await?
        .error_for_status()
        .context("setting the price")?;
    client
        .post(format!("{base}/v1/admin/credits/grants"))
        .bearer_auth(BENCH_OPERATOR_KEY)
        .json(&json!({"org_id": org_id, "amount": "1000000000", "reason": "cluster bench"}))
        .send()
        .await?
        .error_for_status()
        .context("granting credit")?;
    Ok((org_id, key))
}

fn bearer(credential: &str) -> anyhow::Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {credential}"))?)
}

/// One completed authorize+usage pair of the load.
#[derive(Clone, Copy)]
struct Pair {
    done: Instant,
    authorize_micros: u64,
    pair_micros: u64,
}

/// What a load task brought back.
#[derive(Default)]
struct LoadRecord {
    pairs: Vec<Pair>,
    failures: u64,
}

/// Authorize (a hold of ₹1) then usage, in a loop, on `connections` connections dealt
/// round-robin over `addresses`, until `stop`.
fn spawn_load(
    addresses: &[SocketAddr],
    connections: usize,
    key: &str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<LoadRecord>>> {
    let key = bearer(key)?;
    let operator = bearer(BENCH_OPERATOR_KEY)?;
    let hold = Bytes::from(json!({"model": MODEL, "max_cost": "1"}).to_string());
    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let address = addresses[index % addresses.len()];
        let (key, operator, hold, stop) = (key.clone(), operator.clone(), hold.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut record = LoadRecord::default();
            let Ok(mut connection) = LoadConnection::open(address).await else {
                record.failures += 1;
                return record;
            };
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let request =
                    LoadRequest { method: Method::POST, path: "/v1/authorize", bearer: Some(&key), body: hold.clone() };
                let call_id = connection.send(request).await.and_then(|body| {
                    let value: Value = serde_json::from_slice(&body).ok()?;
                    value["call_id"].as_str().map(str::to_owned)
                });
                let authorized = Instant::now();
                let settled = match call_id {
                    Some(call_id) => {
                        let usage = json!({"call_id": call_id, "model": MODEL, "input_tokens": 1000, "output_tokens": 500, "status": "succeeded"});
                        let request = LoadRequest {
                            method: Method::POST,
                            path: "/v1/usage",
                            bearer: Some(&operator),
                            body: Bytes::from(usage.to_string()),
                        };
                        connection.send(request).await.is_some()
                    }
                    None => false,
                };
                if settled {
                    let done = Instant::now();
                    record.pairs.push(Pair {
                        done,
                        authorize_micros: (authorized - sent).as_micros() as u64,
                        pair_micros: (done - sent).as_micros() as u64,
                    });
                } else {
                    record.failures += 1;
                    // A refused or broken exchange: a fresh connection, without spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if let Ok(fresh) = LoadConnection::open(address).await {
                        connection = fresh;
                    }
                }
            }
            record
        }));
    }
    Ok(tasks)
}

async fn collect_load(tasks: Vec<tokio::task::JoinHandle<LoadRecord>>) -> LoadRecord {
    let mut all = LoadRecord::default();
    for task in tasks {
        if let Ok(mut record) = task.await {
            all.pairs.append(&mut record.pairs);
            all.failures += record.failures;
        }
    }
    all
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub(crate) fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU ticks (USER_HZ, 100 a second) of a process, user + system, every thread.
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some((_, fields)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
    ticks(11) + ticks(12)
}

/// The PostgreSQL server's processes: (pid, ticks, whether it serves `database`).
fn postgres_processes(database: &str) -> Vec<(u32, u64, bool)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut processes = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if !std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres") {
            continue;
        }
        // A backend's title names its database: "postgres: USER DATABASE HOST(PORT) STATE".
        let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&title).contains(database);
        processes.push((pid, process_ticks(pid), ours));
    }
    processes
}

/// The machine's busy and total ticks, from /proc/stat (every core).
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|value| value.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU used so far by each party.
struct CpuSnapshot {
    at: Instant,
    bench: u64,
    nodes: u64,
    postgres: HashMap<u32, (u64, bool)>,
    machine: (u64, u64),
}

impl CpuSnapshot {
    fn take(nodes: &[u32], database: &str) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            bench: process_ticks(std::process::id()),
            nodes: nodes.iter().map(|pid| process_ticks(*pid)).sum(),
            postgres: postgres_processes(database).into_iter().map(|(pid, ticks, ours)| (pid, (ticks, ours))).collect(),
            machine: machine_ticks(),
        }
    }
}

/// Cores each party kept busy between two snapshots (a process that exited meanwhile is
/// missed; PostgreSQL's backends live as long as the nodes' pools).
struct CpuUse {
    bench: f64,
    nodes: f64,
    postgres_ours: f64,
    postgres_other: f64,
    machine_busy: f64,
    machine_cores: f64,
}

impl CpuUse {
    fn between(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUse {
        let seconds = (after.at - before.at).as_secs_f64().max(1e-3);
        let cores = |ticks: u64| ticks as f64 / 100.0 / seconds;
        let (mut ours, mut other) = (0u64, 0u64);
        for (pid, (ticks, serves_ours)) in &after.postgres {
            let spent = ticks.saturating_sub(before.postgres.get(pid).map_or(0, |(ticks, _)| *ticks));
            if *serves_ours { ours += spent } else { other += spent }
        }
        let busy = after.machine.0.saturating_sub(before.machine.0);
        let total = after.machine.1.saturating_sub(before.machine.1).max(1);
        let machine_cores = std::thread::available_parallelism().map_or(1, |count| count.get()) as f64;
        CpuUse {
            bench: cores(after.bench.saturating_sub(before.bench)),
            nodes: cores(after.nodes.saturating_sub(before.nodes)),
            postgres_ours: cores(ours),
            postgres_other: cores(other),
            machine_busy: busy as f64 / total as f64 * machine_cores,
            machine_cores,
        }
    }

    fn describe(&self) -> String {
        format!(
            "client {:.2}, nodes {:.2}, PostgreSQL {:.2} (+{:.2} its other processes), machine busy {:.2} of {:.0}",
            self.bench, self.nodes, self.postgres_ours, self.postgres_other, self.machine_busy, self.machine_cores
        )
    }
}

/// A GET /v1/auth/account with `credential` on `connection`: its status, when it came.
async fn probe(connection: &mut LoadConnection, credential: &HeaderValue) -> Option<StatusCode> {
    let request =
        LoadRequest { method: Method::GET, path: "/v1/auth/account", bearer: Some(credential), body: Bytes::new() };
    connection.exchange(request).await.map(|(status, _)| status)
}

/// A POST of the owner's, sent again while the node answers 503 (the log-head race lost to
/// the other nodes' appends more often than its writer tries; nothing was recorded); the
/// last answer. `busy` counts the retries.
async fn retried(
    connection: &mut LoadConnection,
    address: SocketAddr,
    path: &str,
    owner: &HeaderValue,
    body: Bytes,
    busy: &mut usize,
) -> anyhow::Result<(StatusCode, Bytes)> {
    for _ in 0..1000 {
        let request = LoadRequest { method: Method::POST, path, bearer: Some(owner), body: body.clone() };
        match connection.exchange(request).await {
            Some(answer) if answer.0 != StatusCode::SERVICE_UNAVAILABLE => return Ok(answer),
            Some(_) => *busy += 1,
            // The connection broke (the node closes it after some errors): a fresh one.
            None => *connection = LoadConnection::open(address).await?,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("{path} on {address}: 1,000 attempts failed")
}

/// One revocation's outcome on one node.
struct Propagation {
    node: usize,
    /// From the revoke's answer to the first 401's arrival; None: none within the timeout.
    micros: Option<u64>,
    /// Probes sent until then (1: the first probe after the answer was already refused).
    probes: u32,
}

/// Probes `connection` until it answers 401.
async fn until_refused(
    node: usize,
    address: SocketAddr,
    connection: &mut LoadConnection,
    credential: &HeaderValue,
    answered: Instant,
) -> Propagation {
    let mut probes = 0;
    loop {
        probes += 1;
        let status = probe(connection, credential).await;
        if status == Some(StatusCode::UNAUTHORIZED) {
            return Propagation { node, micros: Some(answered.elapsed().as_micros() as u64), probes };
        }
        if answered.elapsed() > PROPAGATION_TIMEOUT {
            return Propagation { node, micros: None, probes };
        }
        if status.is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if let Ok(fresh) = LoadConnection::open(address).await {
                *connection = fresh;
            }
        }
    }
}

fn row(what: &str, sorted: &[u64]) {
    println!(
        "{what:<58} {:>7} {:>9.2} {:>9.2} {:>9.2}",
        sorted.len(),
        millis(percentile(sorted, 0.50)),
        millis(percentile(sorted, 0.99)),
        millis(sorted.last().copied().unwrap_or(0)),
    );
}

/// Where the revocation loop is, on stderr when BAHI_BENCH_TRACE is set (a run that stalls
/// says where).
fn progress(sample: usize, phase: &str) {
    if std::env::var_os("BAHI_BENCH_TRACE").is_some() {
        eprintln!("{:?} sample {sample}: {phase}", std::time::SystemTime::now());
    }
}

/// `bahi-bench cluster-revocation`.
pub async fn revocation(options: &ClusterOptions) -> anyhow::Result<()> {
    let bahi = bahi_binary(&options.bahi)?;
    let cluster = Cluster::start(&bahi, &options.postgres, "revocation", 3).await?;
    let result = revocation_on(&cluster, options).await;
    cluster.shutdown().await;
    result
}

async fn revocation_on(cluster: &Cluster, options: &ClusterOptions) -> anyhow::Result<()> {
    let addresses = cluster.addresses();
    let (_org_id, owner_key) = setup(addresses[0]).await?;
    let owner = bearer(&owner_key)?;
    let mut control = Vec::new();
    let mut probes = Vec::new();
    for address in &addresses {
        control.push(LoadConnection::open(*address).await?);
        probes.push(LoadConnection::open(*address).await?);
    }
    let load_before = load_average();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&addresses, options.connections, &owner_key, stop.clone())?;
    tokio::time::sleep(WARM_UP).await;

    let cpu_before = CpuSnapshot::take(&cluster.pids(), &cluster.database.name);
    let started = Instant::now();
    let mut floor = Vec::new();
    let mut others = Vec::new();
    let mut known = Vec::new();
    let (mut missed, mut first_probe_refused, mut unseen_at_first) = (0usize, 0usize, 0usize);
    let mut busy = 0usize;
    for sample in 0..options.samples {
        let (made_on, revoked_on) = (sample % addresses.len(), (sample + 1) % addresses.len());
        progress(sample, "make");
        let body = Bytes::from(json!({"name": format!("revocation {sample}")}).to_string());
        let (status, created) =
            retried(&mut control[made_on], addresses[made_on], "/v1/auth/account/api-keys", &owner, body, &mut busy)
                .await
                .context("creating a key")?;
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "creating a key: {status} {}",
            String::from_utf8_lossy(&created)
        );
        let created: Value = serde_json::from_slice(&created)?;
        let secret = bearer(created["api_key"].as_str().context("api_key")?)?;
        let key_id = created["api_key_id"].as_str().context("api_key_id")?.to_owned();

        progress(sample, "check");
        // The key works on every node before it is revoked.
        for (node, connection) in probes.iter_mut().enumerate() {
            let sent = Instant::now();
            let mut status = probe(connection, &secret).await;
            if status == Some(StatusCode::OK) {
                known.push(sent.elapsed().as_micros() as u64);
            }
            let mut attempts = 0;
            while status != Some(StatusCode::OK) {
                unseen_at_first += 1;
                attempts += 1;
                anyhow::ensure!(attempts < 1000, "node {node} never accepted a new key ({status:?})");
                tokio::time::sleep(Duration::from_millis(1)).await;
                if status.is_none() {
                    *connection = LoadConnection::open(addresses[node]).await?;
                }
                status = probe(connection, &secret).await;
            }
        }

        progress(sample, "revoke");
        let path = format!("/v1/auth/account/api-keys/{key_id}/revoke");
        let (status, answer) =
            retried(&mut control[revoked_on], addresses[revoked_on], &path, &owner, Bytes::from("{}"), &mut busy)
                .await
                .context("revoking")?;
        let answered = Instant::now();
        anyhow::ensure!(status == StatusCode::OK, "revoking: {status} {}", String::from_utf8_lossy(&answer));
        progress(sample, "probe");
        let outcomes = futures::future::join_all(
            probes
                .iter_mut()
                .enumerate()
                .map(|(node, connection)| until_refused(node, addresses[node], connection, &secret, answered)),
        )
        .await;
        for outcome in outcomes {
            match outcome.micros {
                None => missed += 1,
                Some(micros) if outcome.node == revoked_on => floor.push(micros),
                Some(micros) => {
                    others.push(micros);
                    if outcome.probes == 1 {
                        first_probe_refused += 1;
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu = CpuUse::between(&cpu_before, &CpuSnapshot::take(&cluster.pids(), &cluster.database.name));
    let load_during = load_average();
    stop.store(true, Ordering::Relaxed);
    let record = collect_load(load).await;
    let window = |pair: &&Pair| pair.done >= started && pair.done <= started + elapsed;
    let mut authorize: Vec<u64> = record.pairs.iter().filter(window).map(|pair| pair.authorize_micros).collect();
    let pairs = authorize.len();
    authorize.sort_unstable();
    floor.sort_unstable();
    others.sort_unstable();
    known.sort_unstable();

    println!(
        "cluster-revocation: 3 bahi nodes (release binary) on one PostgreSQL database; load: {} connections of authorize+usage pairs dealt round-robin over the nodes",
        options.connections
    );
    println!(
        "{} revocations in {:.1} s (made on node i, revoked on node i+1, every node probed with GET /v1/auth/account until 401)",
        options.samples,
        elapsed.as_secs_f64()
    );
    println!("load average before: {load_before}; at the end: {load_during}");
    println!("CPU (cores) while measuring: {}", cpu.describe());
    println!(
        "{:<58} {:>7} {:>9} {:>9} {:>9}",
        "from the revoke's answer to the first 401", "samples", "p50 ms", "p99 ms", "max ms"
    );
    row("the node that took the revocation (floor: one probe)", &floor);
    row("each of the other two nodes (propagation)", &others);
    println!("{:<58} {:>7} {:>9} {:>9} {:>9}", "baselines in the same run", "", "", "", "");
    row("probe round trip, key known (GET /v1/auth/account 200)", &known);
    row("load: POST /v1/authorize round trip", &authorize);
    println!(
        "load: {:.0} authorize+usage pairs/s while measuring, {} failures",
        pairs as f64 / elapsed.as_secs_f64(),
        record.failures
    );
    println!(
        "other nodes already refusing at the first probe: {first_probe_refused} of {}; not refusing within {PROPAGATION_TIMEOUT:?}: {missed}; a new key refused at first by a node: {unseen_at_first}; makes and revocations retried after a 503: {busy}",
        others.len()
    );
    let p99 = percentile(&others, 0.99);
    println!(
        "goal p99 < 50 ms: {} (p99 {:.2} ms; over the floor's p99: {:+.2} ms)",
        if p99 < 50_000 && missed == 0 { "met" } else { "not met" },
        millis(p99),
        millis(p99) - millis(percentile(&floor, 0.99)),
    );
    Ok(())
}

/// `bahi-bench cluster-scaling`.
pub async fn scaling(options: &ClusterOptions) -> anyhow::Result<()> {
    let bahi = bahi_binary(&options.bahi)?;
    let duration = Duration::from_secs(options.seconds);
    println!(
        "cluster-scaling: authorize+usage pairs on {} connections dealt round-robin over the nodes, {} s a point, each point on a fresh database",
        options.connections, options.seconds
    );
    println!(
        "{:>5} {:>10} {:>8} {:>9} {:>9} {:>8}  {:<14}  CPU in cores while measuring",
        "nodes", "pairs/s", "vs 1", "p50 ms", "p99 ms", "failures", "load average"
    );
    let mut single: Option<f64> = None;
    for &count in &options.nodes {
        let cluster = Cluster::start(&bahi, &options.postgres, "scaling", count).await?;
        let result = scaling_point(&cluster, options.connections, duration).await;
        cluster.shutdown().await;
        let (rate, mut latencies, failures, cpu, load) = result?;
        latencies.sort_unstable();
        if count == 1 {
            single = Some(rate);
        }
        let ratio = single.map_or_else(|| "-".to_owned(), |single| format!("{:.2}", rate / single));
        println!(
            "{count:>5} {rate:>10.0} {ratio:>8} {:>9.2} {:>9.2} {failures:>8}  {load:<14}  {}",
            millis(percentile(&latencies, 0.50)),
            millis(percentile(&latencies, 0.99)),
            cpu.describe()
        );
    }
    Ok(())
}

type ScalingPoint = (f64, Vec<u64>, u64, CpuUse, String);

async fn scaling_point(cluster: &Cluster, connections: usize, duration: Duration) -> anyhow::Result<ScalingPoint> {
    let addresses = cluster.addresses();
    let (_org_id, key) = setup(addresses[0]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&addresses, connections, &key, stop.clone())?;
    tokio::time::sleep(WARM_UP).await;
    let before = CpuSnapshot::take(&cluster.pids(), &cluster.database.name);
    tokio::time::sleep(duration).await;
    let after = CpuSnapshot::take(&cluster.pids(), &cluster.database.name);
    let load_average = load_average();
    stop.store(true, Ordering::Relaxed);
    let record = collect_load(load).await;
    let measured: Vec<u64> = record
        .pairs
        .iter()
        .filter(|pair| pair.done >= before.at && pair.done <= after.at)
        .map(|pair| pair.pair_micros)
        .collect();
    let rate = measured.len() as f64 / (after.at - before.at).as_secs_f64();
    Ok((rate, measured, record.failures, CpuUse::between(&before, &after), load_average))
}
