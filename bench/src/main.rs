//! `bahi-bench`: throughput figures beside a baseline measured in the same run, so a ratio
//! (not an absolute number on a shared, noisy machine) is what we track. The production
//! crate holds no benchmark code; this binary drives it through its public API.

// Rates and ratios are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

mod api;
mod cluster;
mod console;
mod proxy;
mod read_models;
mod reports;
mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bahi_domain::Command;
use bahi_domain::billing::{Price, UsageStatus};
use bahi_domain::chain::truncate_to_micros;
use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{Environment, KeyPrefix, NewApiKey, Scope};
use bahi_domain::event::CallAttribution;
use bahi_domain::ids::{ApiKeyId, CallId, EventId, OrgId, TopupId};
use bahi_domain::money::Money;
use clap::{Parser, ValueEnum};
use parking_lot::RwLock;
use rand::RngCore;
use tokio::sync::watch;

use bahi::ledger::{CommittedEvent, Ledger};
use bahi::metrics::Metrics;
use bahi::server::open_and_load;
use bahi::store::{EventStore, LoadPage, Store, StoreError, StoredEvent};
use bahi::writer::{CommandContext, catch_up_shared, writer};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Benchmark {
    /// Acknowledged durable appends through the writer at 1/16/64/256 producers, beside raw
    /// batched INSERTs of the same rows into the same schema.
    Append,
    /// Appends at 64 producers while the log grows to --events, reported per segment.
    Sustained,
    /// Folding --events events into every projection (memory and SQL), beside reading the
    /// same rows without folding, and the SQL engine alone copying the projections' rows.
    Replay,
    /// Loading the log into memory first thing in this process, as `bahi serve` starts,
    /// beside loading's reader alone. Give --database a log made by `replay` (or this) to
    /// measure a cold start; a log filled by this run is not one, and the output says so.
    Load,
    /// A statement of --events ledger rows streamed as CSV, beside a bare CSV write of the
    /// same rows (time and peak memory).
    Statement,
    /// Attribution over --events calls grouped by agent (and more), beside the ungrouped total.
    Attribution,
    /// Key resolution in memory vs bare SHA-256; agent-token verification vs bare ES256.
    Credentials,
    /// HTTP on loopback at --connections: /healthz, account, authorize (a durable hold each),
    /// authorize+usage pairs, each beside a trivial axum JSON endpoint; then the engine alone
    /// inserting the authorizations' rows in batches of --connections.
    Http,
    /// The inference proxy (issue 25): a fast fake OpenAI upstream in this process, called
    /// directly (the baseline) and through a bahi node in a child process at --connections,
    /// plain and streamed; then the node's peak memory with --open-streams streams open.
    Proxy,
    /// Scale-out (issue 28): three `bahi serve` nodes (the release binary) on one fresh
    /// PostgreSQL database under authorize+usage load at --connections; --samples times a key
    /// is made, checked on every node, revoked on one, and every node is probed until it
    /// answers 401: p50/p99/max from the revoke's answer, beside the revoking node's.
    ClusterRevocation,
    /// Scale-out (issue 28): authorize+usage pairs/s at --connections against --nodes nodes
    /// (1, 2 and 3) on one PostgreSQL server, a fresh database each, with the CPU each party
    /// used.
    ClusterScaling,
    /// Console pages (issue 27: render times over an org with 1,000,000 calls): a `bahi
    /// serve` node (the release binary) on a fresh database (SQLite, or --database naming a
    /// PostgreSQL server) makes an org with a human who logs in; stopped, its log gets
    /// --calls calls of that org appended by this process over the last 30 days (real,
    /// chained events, then `bahi verify`); restarted, its projections catch up. Then GET
    /// /console/usage, /console/audit (plain and with a call), /console/statements, --samples
    /// times each on one keep-alive connection, each beside the JSON requests that answer
    /// the same figures. Goal: each Usage and Audit page p50 under 300 ms.
    Console,
    /// The bahi node that `proxy` starts in a child process (not a benchmark).
    #[value(hide = true)]
    ProxyServer,
}

/// Throughput of bahi's hot paths, each beside a baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "bahi-bench", version)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub benchmark: Benchmark,
    /// Database (a fresh SQLite file in a temporary directory when omitted). Use an empty
    /// database: the benchmark writes into it. For console: a PostgreSQL server, on which it
    /// makes (and drops) a database of its own.
    #[arg(long)]
    pub database: Option<String>,
    /// Seconds per measured point (append).
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Events for sustained and replay.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Concurrent connections (http, proxy).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Streamed calls held open at once through the proxy while its memory is read (proxy).
    #[arg(long, default_value_t = 1000)]
    pub open_streams: usize,
    /// The log that `replay` folds.
    #[arg(long, value_enum, default_value_t = ReplayLog::Gateway)]
    pub log: ReplayLog,
    /// Producer counts measured by `append`.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64, 256])]
    pub producers: Vec<usize>,
    /// The PostgreSQL server the cluster benchmarks make (and drop) their database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    /// The `bahi` binary the cluster and console benchmarks start (default: `cargo build
    /// --release`'s).
    #[arg(long)]
    pub bahi: Option<std::path::PathBuf>,
    /// Revocations measured (cluster-revocation, default 300); timed requests of each page
    /// and baseline (console, default 20).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Calls of the org whose console pages are timed (console).
    #[arg(long, default_value_t = 1_000_000)]
    pub calls: usize,
    /// Node counts measured, in this order (cluster-scaling).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3])]
    pub nodes: Vec<usize>,
}

/// Commands generated per measured second, before timing starts: enough for 120,000
/// events/s, so a point only ends early (and says so) above that rate.
const COMMANDS_PER_SECOND: usize = 60_000;

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A realistic command: an org and its first key (two events, about 600 bytes).
fn register_command(index: usize) -> Command {
    let key =
        NewApiKey::generate(&KeyPrefix::parse("bahi").unwrap_or_else(|_| unreachable!()), Environment::Live, random());
    Command::RegisterOrg {
        org_id: OrgId::from_random(bahi::identity::new_id_bytes()),
        display_name: format!("bench org {index}"),
        environment: Environment::Live,
        first_key: NewKeyRecord {
            key_id: ApiKeyId::from_random(bahi::identity::new_id_bytes()),
            hash: key.hash,
            display_prefix: key.display_prefix,
            environment: Environment::Live,
            name: Some(format!("bench key {index}")),
            scopes: Scope::ORG_DEFAULT.to_vec(),
            expires_at: None,
            rate_limit: None,
            budget: None,
            metadata: None,
        },
        first_agent: None,
    }
}

/// Rows exactly as the writer would store them for `count` register commands, chained after
/// `ledger`'s head. Used by the raw baseline and to fill a log quickly.
fn prebuilt_rows(ledger: &mut Ledger, count: usize) -> anyhow::Result<Vec<StoredEvent>> {
    let commands: Vec<Command> = (0..count).map(register_command).collect();
    rows_for_commands(ledger, &commands)
}

/// Chains `events` after `ledger`'s head as the writer would store them, and folds them.
fn push_rows(
    ledger: &mut Ledger,
    events: Vec<bahi_domain::Event>,
    now: chrono::DateTime<chrono::Utc>,
    rows: &mut Vec<StoredEvent>,
) {
    for event in events {
        let mut row = StoredEvent {
            position: ledger.position + 1,
            stream_id: event.stream_id().to_owned(),
            stream_version: ledger.next_stream_version(event.stream_id()),
            event_id: EventId::from_random(random()).to_string(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            recorded_at: now,
            payload: event.payload_bytes(),
            metadata: br#"{"actor":{"kind":"system","id":"bench"}}"#.to_vec(),
            hash: [0; 32],
        };
        row.hash = row.expected_hash(&ledger.head_hash);
        let committed = CommittedEvent { position: row.position, recorded_at: now, event };
        let _ = ledger.fold(&row, &committed, None);
        rows.push(row);
    }
}

/// Orgs of the gateway-shaped log. Calls go to them in turn, so their rows interleave in
/// every per-org index as they do on a gateway that serves many orgs at once.
const GATEWAY_ORGS: usize = 1_000;
/// Calls authorized and not yet settled at any moment of the gateway-shaped log: a call's
/// usage arrives this many authorizations after it.
const GATEWAY_CALLS_IN_FLIGHT: usize = 256;
const GATEWAY_MODEL: &str = "bench-model";

/// Which log `bench replay` folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayLog {
    /// What a gateway's log mostly holds: calls authorized with a hold, then settled by their
    /// usage, across 1,000 orgs with credit, a third of the calls made by agents. Every SQL
    /// projection gets rows.
    Gateway,
    /// Org registrations only (an org and its first key per command): the directory
    /// projection and the orgs' audit events, none of the money tables.
    Registrations,
}

/// Generates the commands of the gateway-shaped log (see `ReplayLog::Gateway`).
struct GatewayLog {
    orgs: Vec<(OrgId, ApiKeyId)>,
    in_flight: std::collections::VecDeque<CallId>,
    calls: usize,
}

impl GatewayLog {
    /// A price, then GATEWAY_ORGS orgs, each registered and granted credit.
    fn setup() -> anyhow::Result<(GatewayLog, Vec<Command>)> {
        let price = Price { input_per_million: Money::parse("2.50")?, output_per_million: Money::parse("10")? };
        let mut commands = vec![Command::SetPrice { model: GATEWAY_MODEL.to_owned(), price, default_hold: None }];
        let mut orgs = Vec::with_capacity(GATEWAY_ORGS);
        for index in 0..GATEWAY_ORGS {
            let register = register_command(index);
            let Command::RegisterOrg { org_id, first_key, .. } = &register else { unreachable!() };
            orgs.push((org_id.clone(), first_key.key_id.clone()));
            let grant = Command::Grant {
                org_id: org_id.clone(),
                grant_id: TopupId::from_random(random()),
                amount: Money::parse("1000000")?,
                reason: "bench credit".to_owned(),
            };
            commands.push(register);
            commands.push(grant);
        }
        Ok((GatewayLog { orgs, in_flight: std::collections::VecDeque::new(), calls: 0 }, commands))
    }

    /// The next `count` commands: an authorization, and the usage of the call
    /// GATEWAY_CALLS_IN_FLIGHT authorizations back once there is one.
    fn next_commands(&mut self, count: usize) -> anyhow::Result<Vec<Command>> {
        let mut commands = Vec::with_capacity(count);
        while commands.len() < count {
            if self.in_flight.len() >= GATEWAY_CALLS_IN_FLIGHT
                && let Some(call_id) = self.in_flight.pop_front()
            {
                let index = self.calls;
                commands.push(Command::RecordUsage {
                    call_id,
                    model: GATEWAY_MODEL.to_owned(),
                    input_tokens: 200 + (index % 1800) as u64,
                    output_tokens: 50 + (index % 700) as u64,
                    status: UsageStatus::Succeeded,
                    request_hash: hex::encode(random::<16>()),
                    usage_source: None,
                });
                continue;
            }
            let index = self.calls;
            self.calls += 1;
            // A stride coprime to GATEWAY_ORGS visits every org before any org again.
            let (org_id, key_id) = &self.orgs[(index * 7) % self.orgs.len()];
            let attribution = gateway_attribution(index, org_id, key_id);
            let call_id = CallId::from_random(random());
            commands.push(Command::Authorize {
                call_id: call_id.clone(),
                org_id: org_id.clone(),
                attribution,
                model: GATEWAY_MODEL.to_owned(),
                max_cost: Some(Money::parse("1")?),
                hold_ttl_seconds: 3600,
            });
            self.in_flight.push_back(call_id);
        }
        Ok(commands)
    }
}

/// Who made call `index` of a gateway-shaped log: every third call an agent (one of 50,
/// acting for one of 20 users) with a token of its own, the rest the org's API key `key_id`.
pub(crate) fn gateway_attribution(index: usize, org_id: &OrgId, key_id: &ApiKeyId) -> CallAttribution {
    if index.is_multiple_of(3) {
        CallAttribution {
            credential_kind: "agent_token".to_owned(),
            credential_id: format!("tok_bench{index}"),
            agent_id: Some(format!("agt_bench{}", index % 50)),
            agent_name: Some(format!("bench agent {}", index % 50)),
            act_for: format!("user_bench{}", index % 20),
        }
    } else {
        CallAttribution {
            credential_kind: "api_key".to_owned(),
            credential_id: key_id.to_string(),
            agent_id: None,
            agent_name: None,
            act_for: org_id.to_string(),
        }
    }
}

/// Rows for `commands`, each decided against and folded into `ledger`. A command the domain
/// refuses is an error: a log that silently lacks it would measure something else.
fn rows_for_commands(ledger: &mut Ledger, commands: &[Command]) -> anyhow::Result<Vec<StoredEvent>> {
    let now = truncate_to_micros(chrono::Utc::now());
    let mut rows = Vec::with_capacity(commands.len() * 2);
    for command in commands {
        push_decided(ledger, command, now, &mut rows)?;
    }
    Ok(rows)
}

/// Decides `command` against `ledger` at `now` (its events stamped `now`), and chains and
/// folds its events into `rows` as the writer would. A refusal is an error.
pub(crate) fn push_decided(
    ledger: &mut Ledger,
    command: &Command,
    now: chrono::DateTime<chrono::Utc>,
    rows: &mut Vec<StoredEvent>,
) -> anyhow::Result<()> {
    let events = bahi_domain::decide(&ledger.state, command, now)
        .map_err(|error| anyhow::anyhow!("the bench log's command was refused: {error}"))?;
    push_rows(ledger, events, now, rows);
    Ok(())
}

async fn fresh_store(database: &Option<String>, label: &str) -> anyhow::Result<(Store, Option<tempfile_dir::TempDir>)> {
    match database {
        Some(url) => {
            let store = Store::open(url).await?;
            store.migrate().await?;
            Ok((store, None))
        }
        None => {
            let directory = tempfile_dir::TempDir::new(label)?;
            let url = format!("sqlite://{}", directory.path.join("bench.db").display());
            let store = Store::open(&url).await?;
            store.migrate().await?;
            Ok((store, Some(directory)))
        }
    }
}

/// A temporary directory without a dev-dependency in the binary.
mod tempfile_dir {
    use std::path::PathBuf;

    pub struct TempDir {
        pub path: PathBuf,
    }

    impl TempDir {
        pub fn new(label: &str) -> std::io::Result<TempDir> {
            let mut random = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
            let path = std::env::temp_dir().join(format!("bahi-bench-{label}-{}", hex::encode(random)));
            std::fs::create_dir_all(&path)?;
            Ok(TempDir { path })
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Commands for `producers` producers, generated before timing so that the measured CPU is
/// the writer's (and the database's), not the generator's random bytes, SHA-256 and base62.
///
/// They are generated in one sequence and dealt out in turn (producer p gets commands p,
/// p + producers, …), so that the commands in flight together were minted together, as a
/// gateway mints ids when each request arrives. Ids are time-ordered, and the `streams`
/// table is keyed by them: dealt out in blocks instead, one pool per producer, the 64
/// commands of a batch came from 64 moments of the generation phase and inserted at 64
/// places in that B-tree, while the raw baseline's rows inserted at its end.
fn command_pools(producers: usize, seconds: u64, first_index: usize) -> Vec<Vec<Command>> {
    let per_producer = (COMMANDS_PER_SECOND * seconds as usize).div_ceil(producers);
    let mut pools: Vec<Vec<Command>> = (0..producers).map(|_| Vec::with_capacity(per_producer)).collect();
    for offset in 0..per_producer * producers {
        pools[offset % producers].push(register_command(first_index + offset));
    }
    pools
}

/// CPU seconds (user + system, every thread) this process has used so far, from
/// /proc/self/stat; 0 where that is unavailable. On a shared machine, CPU per event is a
/// steadier figure than events per second.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some((_, fields)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of proc(5); `fields` starts at field 3. Linux
    // reports them in USER_HZ, which is 100 on every architecture Rust targets.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// One measured point.
struct Measured {
    events_per_second: f64,
    events: i64,
    seconds: f64,
    /// Process CPU (all threads: producers, writer, database driver) per event, microseconds.
    cpu_micros_per_event: f64,
    /// True when a producer used up its pre-generated commands before the deadline.
    exhausted: bool,
    /// Mean events per committed transaction.
    batch_events: f64,
}

/// Runs one task per pool, each submitting its commands one at a time and awaiting the
/// answer (so a producer has at most one command in flight), until the deadline or until its
/// pool is used up. Counts acknowledged events only: an answer arrives after the commit.
async fn writer_rate(store: Store, pools: Vec<Vec<Command>>, duration: Duration) -> anyhow::Result<(Measured, i64)> {
    let shared = Arc::new(RwLock::new(Ledger::new()));
    catch_up_shared(&store, &shared).await?;
    let position = shared.read().position;
    let (committed, _) = watch::channel(position);
    let metrics = Arc::new(Metrics::default());
    let (handle, task) = writer(store, shared.clone(), metrics.clone(), committed, Arc::new(bahi::clock::SystemClock));
    let task = tokio::spawn(task.run());
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for pool in pools {
        let handle = handle.clone();
        workers.push(tokio::spawn(async move {
            let mut acknowledged = 0i64;
            let mut commands = pool.into_iter();
            loop {
                // The unused commands go back to the caller, so freeing them is not timed.
                if Instant::now() >= deadline {
                    return (acknowledged, false, commands);
                }
                let Some(command) = commands.next() else { return (acknowledged, true, commands) };
                let outcome = handle.submit(command, CommandContext::default()).await;
                acknowledged += outcome.map(|outcome| outcome.events.len() as i64).unwrap_or(0);
            }
        }));
    }
    let mut events = 0;
    let mut exhausted = false;
    let mut unused = Vec::with_capacity(workers.len());
    for worker in workers {
        let (acknowledged, ran_out, commands) = worker.await?;
        events += acknowledged;
        exhausted |= ran_out;
        unused.push(commands);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_micros_per_event = (process_cpu_seconds() - cpu_before) * 1e6 / events.max(1) as f64;
    drop(unused);
    drop(handle);
    task.await?;
    let position = shared.read().position;
    let batches = metrics.batches_committed.load(std::sync::atomic::Ordering::Relaxed).max(1);
    let batch_events = metrics.events_appended.load(std::sync::atomic::Ordering::Relaxed) as f64 / batches as f64;
    let measured = Measured {
        events_per_second: events as f64 / seconds,
        events,
        seconds,
        cpu_micros_per_event,
        exhausted,
        batch_events,
    };
    Ok((measured, position))
}

/// Raw batched INSERTs through `EventStore::append` (no decide, no fold, no hashing in the
/// timed part): `events` rows prebuilt before timing, chained after the head, appended
/// `batch_commands` commands per transaction until done or the deadline passes.
async fn raw_rate(store: &Store, batch_commands: usize, events: i64, duration: Duration) -> anyhow::Result<Measured> {
    let (position, head_hash) = store.head().await?;
    let mut ledger = Ledger::new();
    ledger.position = position;
    ledger.head_hash = head_hash;
    // Fresh streams only, so stream versions start at 1 exactly as the writer would assign.
    let commands = usize::try_from(events.max(2) / 2).unwrap_or(1);
    let mut batches = Vec::with_capacity(commands.div_ceil(batch_commands));
    let mut built = 0;
    while built < commands {
        let count = batch_commands.min(commands - built);
        let before = ledger.position;
        batches.push((before, prebuilt_rows(&mut ledger, count)?));
        built += count;
    }
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let mut appended = 0i64;
    let mut exhausted = true;
    let batch_events = batches.first().map_or(0.0, |(_, rows)| rows.len() as f64);
    for (before, rows) in &batches {
        if Instant::now() >= deadline {
            exhausted = false;
            break;
        }
        store.append(*before, rows).await?;
        appended += rows.len() as i64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_micros_per_event = (process_cpu_seconds() - cpu_before) * 1e6 / appended.max(1) as f64;
    Ok(Measured {
        events_per_second: appended as f64 / seconds,
        events: appended,
        seconds,
        cpu_micros_per_event,
        exhausted,
        batch_events,
    })
}

/// The engine alone writing what durable authorizations write: `CallAuthorized` rows of one
/// org, prebuilt and chained before timing, appended `batch_rows` to a transaction (the batch
/// the writer forms at that many connections) until the deadline. Returns rows per second.
pub async fn raw_authorizations(store: &Store, batch_rows: usize, duration: Duration) -> anyhow::Result<f64> {
    let (position, head_hash) = store.head().await?;
    let mut ledger = Ledger::new();
    ledger.position = position;
    ledger.head_hash = head_hash;
    let org_id = OrgId::from_random(bahi::identity::new_id_bytes());
    let attribution = CallAttribution {
        credential_kind: "api_key".into(),
        credential_id: ApiKeyId::from_random(bahi::identity::new_id_bytes()).to_string(),
        agent_id: None,
        agent_name: None,
        act_for: org_id.to_string(),
    };
    let price = Price { input_per_million: Money::parse("1")?, output_per_million: Money::parse("2")? };
    let hold = Money::parse("0.0123")?;
    let now = truncate_to_micros(chrono::Utc::now());
    // Enough rows for 100,000 authorizations a second, so the point ends at its deadline.
    let total = usize::try_from(duration.as_secs().max(1))? * 100_000;
    let mut batches = Vec::with_capacity(total.div_ceil(batch_rows));
    for _ in 0..total.div_ceil(batch_rows) {
        let before = ledger.position;
        let events = (0..batch_rows)
            .map(|_| {
                bahi_domain::event::CallAuthorized {
                    call_id: CallId::from_random(bahi::identity::new_id_bytes()),
                    org_id: org_id.clone(),
                    attribution: attribution.clone(),
                    model: GATEWAY_MODEL.to_owned(),
                    price,
                    hold,
                    authorized_at: now,
                    hold_expires_at: now + chrono::Duration::seconds(600),
                }
                .into()
            })
            .collect();
        let mut rows = Vec::with_capacity(batch_rows);
        push_rows(&mut ledger, events, now, &mut rows);
        batches.push((before, rows));
    }
    let started = Instant::now();
    let mut appended = 0usize;
    for (before, rows) in &batches {
        if started.elapsed() >= duration {
            break;
        }
        store.append(*before, rows).await?;
        appended += rows.len();
    }
    Ok(appended as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    bahi::allocator::configure();
    let args = BenchArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.benchmark {
        Benchmark::Append => append(&args).await,
        Benchmark::Sustained => sustained(&args).await,
        Benchmark::Replay => replay(&args).await,
        Benchmark::Load => load(&args).await,
        Benchmark::Statement => crate::reports::statement(&args).await,
        Benchmark::Attribution => crate::reports::attribution(&args).await,
        Benchmark::Credentials => crate::api::credentials(args.seconds),
        Benchmark::Http => crate::api::http(args.seconds, args.connections, args.database.clone()).await,
        Benchmark::Proxy => {
            crate::proxy::proxy(args.seconds, args.connections, args.open_streams, args.database.clone()).await
        }
        Benchmark::ClusterRevocation => crate::cluster::revocation(&cluster_options(&args)).await,
        Benchmark::ClusterScaling => crate::cluster::scaling(&cluster_options(&args)).await,
        Benchmark::Console => crate::console::console(&console_options(&args)).await,
        Benchmark::ProxyServer => crate::proxy::serve_child(args.database.clone()).await,
    }
}

fn console_options(args: &BenchArgs) -> crate::console::ConsoleOptions {
    crate::console::ConsoleOptions {
        database: args.database.clone(),
        bahi: args.bahi.clone(),
        calls: args.calls,
        samples: args.samples.unwrap_or(20),
    }
}

fn cluster_options(args: &BenchArgs) -> crate::cluster::ClusterOptions {
    crate::cluster::ClusterOptions {
        postgres: args.postgres.clone(),
        bahi: args.bahi.clone(),
        connections: args.connections,
        seconds: args.seconds,
        samples: args.samples.unwrap_or(300),
        nodes: args.nodes.clone(),
    }
}

async fn append(args: &BenchArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    let (store, _directory) = fresh_store(&args.database, "append").await?;
    println!(
        "engine: {}; up to {} s per point; each command appends 2 events; commands and raw rows are generated before timing",
        store.engine(),
        args.seconds
    );
    println!(
        "{:>10} {:>12} {:>6} {:>10} {:>9} {:>12} {:>6} {:>10} {:>9} {:>7} {:>10}",
        "producers",
        "writer ev/s",
        "s",
        "CPU µs/ev",
        "ev/batch",
        "raw ev/s",
        "s",
        "CPU µs/ev",
        "ev/batch",
        "ratio",
        "log size"
    );
    let mut next_index = 0;
    for &producers in &args.producers {
        let pools = command_pools(producers, args.seconds, next_index);
        next_index += pools.iter().map(Vec::len).sum::<usize>();
        let (writer, _) = writer_rate(store.clone(), pools, duration).await?;
        // The same number of events as the writer acknowledged, in transactions of the same
        // number of commands as the writer's batches (one command per producer in flight).
        let raw = raw_rate(&store, producers, writer.events, duration).await?;
        let (head, _) = store.head().await?;
        println!(
            "{producers:>10} {:>12.0} {:>6.2} {:>10.1} {:>9.1} {:>12.0} {:>6.2} {:>10.1} {:>9.1} {:>7.2} {head:>10}{}",
            writer.events_per_second,
            writer.seconds,
            writer.cpu_micros_per_event,
            writer.batch_events,
            raw.events_per_second,
            raw.seconds,
            raw.cpu_micros_per_event,
            raw.batch_events,
            writer.events_per_second / raw.events_per_second,
            if writer.exhausted { "  (command pool used up before the deadline)" } else { "" }
        );
    }
    Ok(())
}

async fn sustained(args: &BenchArgs) -> anyhow::Result<()> {
    let (store, _directory) = fresh_store(&args.database, "sustained").await?;
    let segment = Duration::from_secs(args.seconds);
    println!(
        "engine: {}; 64 producers, {} s segments, until the log holds {} events (writer and raw rows both grow it)",
        store.engine(),
        args.seconds,
        args.events
    );
    println!(
        "{:>10} {:>12} {:>10} {:>9} {:>12} {:>10} {:>7}",
        "log size", "writer ev/s", "CPU µs/ev", "ev/batch", "raw ev/s", "CPU µs/ev", "ratio"
    );
    let mut next_index = 0;
    let mut lowest_rate = f64::MAX;
    let mut lowest_ratio = f64::MAX;
    loop {
        let pools = command_pools(64, args.seconds, next_index);
        next_index += pools.iter().map(Vec::len).sum::<usize>();
        let (writer, _) = writer_rate(store.clone(), pools, segment).await?;
        let raw = raw_rate(&store, 64, writer.events, segment).await?;
        let (head, _) = store.head().await?;
        let ratio = writer.events_per_second / raw.events_per_second;
        lowest_rate = lowest_rate.min(writer.events_per_second);
        lowest_ratio = lowest_ratio.min(ratio);
        println!(
            "{head:>10} {:>12.0} {:>10.1} {:>9.1} {:>12.0} {:>10.1} {ratio:>7.2}",
            writer.events_per_second,
            writer.cpu_micros_per_event,
            writer.batch_events,
            raw.events_per_second,
            raw.cpu_micros_per_event
        );
        if head >= args.events {
            println!("lowest writer rate {lowest_rate:.0} ev/s; lowest ratio {lowest_ratio:.2}");
            return Ok(());
        }
    }
}

/// A log of at least `args.events` events (`--log` shaped): the store, its temporary
/// directory when no database was given, the head, the URL, and whether this run filled it.
async fn filled_log(
    args: &BenchArgs,
    label: &str,
) -> anyhow::Result<(Store, Option<tempfile_dir::TempDir>, i64, String, bool)> {
    let (store, directory) = fresh_store(&args.database, label).await?;
    let (mut head, _) = store.head().await?;
    let filled = head < args.events;
    if head < args.events {
        println!("filling the log to {} events …", args.events);
        let shared = Arc::new(RwLock::new(Ledger::new()));
        catch_up_shared(&store, &shared).await?;
        let mut ledger = shared.read().clone();
        let mut gateway = None;
        while ledger.position < args.events {
            let before = ledger.position;
            let rows = match args.log {
                ReplayLog::Registrations => prebuilt_rows(&mut ledger, 2000)?,
                ReplayLog::Gateway => match gateway.as_mut() {
                    None => {
                        let (log, setup) = GatewayLog::setup()?;
                        gateway = Some(log);
                        rows_for_commands(&mut ledger, &setup)?
                    }
                    Some(log) => rows_for_commands(&mut ledger, &log.next_commands(2000)?)?,
                },
            };
            store.append(before, &rows).await?;
        }
        head = ledger.position;
    }
    let url = match (&args.database, &directory) {
        (Some(url), _) => url.clone(),
        (None, Some(directory)) => format!("sqlite://{}", directory.path.join("bench.db").display()),
        (None, None) => unreachable!(),
    };
    Ok((store, directory, head, url, filled))
}

/// Rows per second through the page reader that rebuilding uses (on SQLite rusqlite on a
/// blocking thread, which loading uses too; on PostgreSQL one binary COPY parsed into
/// `StoredEvent`s), reading the whole log.
async fn page_reader_rate(store: &Store) -> anyhow::Result<f64> {
    reader_rate(|sender| store.spawn_page_reader(0, None, bahi::store::MAX_READ_PAGE, sender), Vec::len).await
}

/// Rows per second through the reader that loading uses (`Store::spawn_load_reader`: on
/// PostgreSQL the COPY's bytes, cut into pages of rows), reading the whole log.
async fn load_reader_rate(store: &Store) -> anyhow::Result<f64> {
    reader_rate(|sender| store.spawn_load_reader(0, bahi::writer::DECODED_CHUNK, sender), LoadPage::len).await
}

/// Rows per second through the reader `spawn` starts, counting each page's rows by `rows`.
async fn reader_rate<T>(
    spawn: impl FnOnce(tokio::sync::mpsc::Sender<Result<T, StoreError>>) -> tokio::task::JoinHandle<()>,
    rows: impl Fn(&T) -> usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (sender, mut pages) = tokio::sync::mpsc::channel(2);
    let reader = spawn(sender);
    let mut total = 0;
    while let Some(page) = pages.recv().await {
        total += rows(&page?);
    }
    reader.await?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn load(args: &BenchArgs) -> anyhow::Result<()> {
    // The load is measured first: anything before it in this process (a fill, another
    // read) leaves the allocator and the caches unlike a server's start.
    let (store, _directory, head, url, filled) = filled_log(args, "load").await?;
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let (_, shared) = open_and_load(&url).await.context("loading")?;
    let load_seconds = started.elapsed().as_secs_f64();
    let load_cpu_micros_per_event = (process_cpu_seconds() - cpu_before) * 1e6 / head as f64;
    drop(shared);

    let reader_rate = load_reader_rate(&store).await?;
    let load_rate = head as f64 / load_seconds;

    println!("engine: {}; {head} events; log: {:?}", store.engine(), args.log);
    if filled {
        println!("this run filled the log, so the load below is not a cold start: run again for one");
    }
    println!("{:<40} {:>14} {:>8} {:>10}", "what", "events/s", "vs read", "CPU µs/ev");
    println!("{:<40} {reader_rate:>14.0} {:>8.2} {:>10}", "read rows, load's reader (baseline)", 1.0, "-");
    println!(
        "{:<40} {load_rate:>14.0} {:>8.2} {load_cpu_micros_per_event:>10.2}",
        "load: read + decode + fold in memory",
        load_rate / reader_rate
    );
    Ok(())
}

async fn replay(args: &BenchArgs) -> anyhow::Result<()> {
    let (store, _directory, head, url, _) = filled_log(args, "replay").await?;

    let started = Instant::now();
    let mut position = 0;
    loop {
        let page = store.read_after(position, bahi::store::MAX_READ_PAGE).await?;
        let Some(last) = page.last() else { break };
        position = last.position;
    }
    let read_rate = head as f64 / started.elapsed().as_secs_f64();

    let bulk_rate = page_reader_rate(&store).await?;

    let started = Instant::now();
    let (_, shared) = open_and_load(&url).await.context("loading")?;
    let memory_rate = head as f64 / started.elapsed().as_secs_f64();
    drop(shared);

    let started = Instant::now();
    bahi::projector::rebuild_projections(&store).await?;
    let sql_rate = head as f64 / started.elapsed().as_secs_f64();

    let engine_rate = head as f64 / engine_copy_seconds(&store).await?;

    println!("engine: {}; {head} events; log: {:?}", store.engine(), args.log);
    println!("{:<40} {:>14} {:>8}", "what", "events/s", "vs read");
    println!("{:<40} {read_rate:>14.0} {:>8.2}", "read rows only (baseline)", 1.0);
    println!("{:<40} {bulk_rate:>14.0} {:>8.2}", "read rows, rebuild's page reader", bulk_rate / read_rate);
    println!("{:<40} {memory_rate:>14.0} {:>8.2}", "read + decode + fold in memory", memory_rate / read_rate);
    println!("{:<40} {sql_rate:>14.0} {:>8.2}", "read + decode + SQL projections", sql_rate / read_rate);
    println!("{:<40} {engine_rate:>14.0} {:>8.2}", "engine alone: copy those rows, key order", engine_rate / read_rate);
    println!("SQL projections at {:.2} of the engine alone writing the same rows", sql_rate / engine_rate);
    Ok(())
}

/// Every projection table with its primary key, the order `engine_copy_seconds` copies in.
const PROJECTION_KEYS: [(&str, &str); 5] = [
    ("read_orgs", "org_id"),
    ("read_api_keys", "key_id"),
    ("read_ledger_entries", "org_id, position"),
    ("read_calls", "call_id"),
    ("read_org_events", "org_id, position"),
];

/// Seconds the database alone takes to write the rows the SQL projections hold: each table
/// copied by one `INSERT … SELECT` into a new table of the same schema, in primary-key order
/// (the order the engine writes fastest), with its indexes, in one transaction, durable as
/// the projections' own. No bahi code runs in it, so it bounds what a rebuild can reach on
/// this schema and machine. The copies are dropped afterwards.
async fn engine_copy_seconds(store: &Store) -> anyhow::Result<f64> {
    for projection in bahi_projections::PROJECTIONS {
        for table in projection.tables {
            anyhow::ensure!(
                PROJECTION_KEYS.iter().any(|(known, _)| known == table),
                "bench: no key order for projection table {table}"
            );
        }
    }
    let copy = |table: &str| format!("engine_copy_{table}");
    match store {
        Store::Sqlite(sqlite) => {
            let path = sqlite.read_models_path().to_owned();
            tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
                let mut connection = rusqlite::Connection::open(&path)?;
                connection.busy_timeout(Duration::from_secs(10))?;
                // The read file's durability and the page cache the rebuild writes with (a
                // million gateway events fit).
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                connection.pragma_update(None, "cache_size", -1_048_576)?;
                let mut definitions = Vec::new();
                for (table, key) in PROJECTION_KEYS {
                    connection.execute_batch(&format!("DROP TABLE IF EXISTS {}", copy(table)))?;
                    let mut statement = connection
                        .prepare("SELECT type, sql FROM sqlite_master WHERE tbl_name = ?1 AND sql IS NOT NULL")?;
                    let rows = statement
                        .query_map([table], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
                        .collect::<Result<Vec<_>, _>>()?;
                    let (tables, indexes): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(kind, _)| kind == "table");
                    let create = tables.first().context("bench: a projection table without its SQL")?;
                    definitions.push((
                        table,
                        key,
                        create.1.replacen(table, &copy(table), 1),
                        indexes.iter().map(|(_, sql)| sql.replace(table, &copy(table))).collect::<Vec<_>>(),
                    ));
                }
                let started = Instant::now();
                let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                for (table, key, create, indexes) in &definitions {
                    transaction.execute_batch(create)?;
                    transaction
                        .execute(&format!("INSERT INTO {} SELECT * FROM {table} ORDER BY {key}", copy(table)), [])?;
                    for index in indexes {
                        transaction.execute_batch(index)?;
                    }
                }
                transaction.commit()?;
                let seconds = started.elapsed().as_secs_f64();
                for (table, _) in PROJECTION_KEYS {
                    connection.execute_batch(&format!("DROP TABLE {}", copy(table)))?;
                }
                Ok(seconds)
            })
            .await?
        }
        Store::Postgres(postgres) => {
            let pool = postgres.pool();
            for (table, _) in PROJECTION_KEYS {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {}", copy(table)))).execute(pool).await?;
            }
            let started = Instant::now();
            let mut transaction = pool.begin().await?;
            // As the projections' own transactions commit.
            sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *transaction).await?;
            for (table, key) in PROJECTION_KEYS {
                let statement = format!(
                    "CREATE TABLE {copy} (LIKE {table} INCLUDING ALL); INSERT INTO {copy} SELECT * FROM {table} ORDER BY {key}",
                    copy = copy(table)
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *transaction).await?;
            }
            transaction.commit().await?;
            let seconds = started.elapsed().as_secs_f64();
            for (table, _) in PROJECTION_KEYS {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {}", copy(table)))).execute(pool).await?;
            }
            Ok(seconds)
        }
    }
}
