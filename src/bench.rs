//! `bahi bench`: throughput figures beside a baseline measured in the same run, so a ratio
//! (not an absolute number on a shared, noisy machine) is what we track.

// Rates and ratios are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bahi_domain::Command;
use bahi_domain::chain::truncate_to_micros;
use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{Environment, KeyPrefix, NewApiKey, Scope};
use bahi_domain::ids::{ApiKeyId, EventId, OrgId};
use clap::{Args, ValueEnum};
use parking_lot::RwLock;
use rand::RngCore;
use tokio::sync::watch;

use crate::ledger::{CommittedEvent, Ledger};
use crate::metrics::Metrics;
use crate::server::open_and_load;
use crate::store::{EventStore, Store, StoredEvent};
use crate::writer::{CommandContext, catch_up_shared, writer};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Benchmark {
    /// Acknowledged durable appends through the writer at 1/16/64/256 producers, beside raw
    /// batched INSERTs of the same rows into the same schema.
    Append,
    /// Appends at 64 producers while the log grows to --events, reported per segment.
    Sustained,
    /// Folding --events events into every projection (memory and SQL), beside reading the
    /// same rows without folding.
    Replay,
    /// A statement of --events ledger rows streamed as CSV, beside a bare CSV write of the
    /// same rows (time and peak memory).
    Statement,
    /// Attribution over --events calls grouped by agent (and more), beside the ungrouped total.
    Attribution,
    /// Key resolution in memory vs bare SHA-256; agent-token verification vs bare ES256.
    Credentials,
    /// HTTP on loopback at --connections: account, authorize, authorize+usage pairs, each
    /// beside a trivial axum JSON endpoint.
    Http,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub benchmark: Benchmark,
    /// Database (a fresh SQLite file in a temporary directory when omitted). Use an empty
    /// database: the benchmark writes into it.
    #[arg(long)]
    pub database: Option<String>,
    /// Seconds per measured point (append).
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Events for sustained and replay.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Concurrent connections (http).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

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
        org_id: OrgId::from_random(random()),
        display_name: format!("bench org {index}"),
        environment: Environment::Live,
        first_key: NewKeyRecord {
            key_id: ApiKeyId::from_random(random()),
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
    }
}

/// Rows exactly as the writer would store them for `count` register commands, chained after
/// `ledger`'s head. Used by the raw baseline and to fill a log quickly.
fn prebuilt_rows(ledger: &mut Ledger, count: usize) -> Vec<StoredEvent> {
    let now = truncate_to_micros(chrono::Utc::now());
    let mut rows = Vec::with_capacity(count * 2);
    for index in 0..count {
        let events = bahi_domain::decide(&ledger.state, &register_command(index), now).unwrap_or_default();
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
    rows
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

/// Runs `producers` tasks, each submitting commands and awaiting its answer, for `seconds`.
/// Returns acknowledged events per second.
async fn writer_rate(store: Store, producers: usize, duration: Duration) -> anyhow::Result<(f64, i64)> {
    let shared = Arc::new(RwLock::new(Ledger::new()));
    catch_up_shared(&store, &shared).await?;
    let position = shared.read().position;
    let (committed, _) = watch::channel(position);
    let metrics = Arc::new(Metrics::default());
    let (handle, task) = writer(store, shared.clone(), metrics, committed);
    let task = tokio::spawn(task.run());
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for producer in 0..producers {
        let handle = handle.clone();
        workers.push(tokio::spawn(async move {
            let mut acknowledged = 0i64;
            let mut index = producer * 1_000_000;
            while Instant::now() < deadline {
                let outcome = handle.submit(register_command(index), CommandContext::default()).await;
                acknowledged += outcome.map(|outcome| outcome.events.len() as i64).unwrap_or(0);
                index += 1;
            }
            acknowledged
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await?;
    }
    let elapsed = started.elapsed();
    drop(handle);
    task.await?;
    Ok((total as f64 / elapsed.as_secs_f64(), shared.read().position))
}

/// Raw batched INSERTs of prebuilt rows, `batch_commands` commands per transaction.
async fn raw_rate(store: &Store, batch_commands: usize, duration: Duration) -> anyhow::Result<f64> {
    let (position, head_hash) = store.head().await?;
    let mut ledger = Ledger::new();
    ledger.position = position;
    ledger.head_hash = head_hash;
    // Fresh streams only, so stream versions start at 1 exactly as the writer would assign.
    let started = Instant::now();
    let deadline = started + duration;
    let mut appended = 0i64;
    while Instant::now() < deadline {
        let before = ledger.position;
        let rows = prebuilt_rows(&mut ledger, batch_commands);
        store.append(before, &rows).await?;
        appended += rows.len() as i64;
    }
    Ok(appended as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.benchmark {
        Benchmark::Append => append(&args).await,
        Benchmark::Sustained => sustained(&args).await,
        Benchmark::Replay => replay(&args).await,
        Benchmark::Statement => crate::bench_reports::statement(&args).await,
        Benchmark::Attribution => crate::bench_reports::attribution(&args).await,
        Benchmark::Credentials => crate::bench_api::credentials(args.seconds),
        Benchmark::Http => crate::bench_api::http(args.seconds, args.connections, args.database.clone()).await,
    }
}

async fn append(args: &BenchArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    let (store, _directory) = fresh_store(&args.database, "append").await?;
    println!("engine: {}; {} s per point; each command appends 2 events", store.engine(), args.seconds);
    println!("{:>10} {:>16} {:>16} {:>8}", "producers", "writer ev/s", "raw ev/s", "ratio");
    for producers in [1usize, 16, 64, 256] {
        let (writer, _) = writer_rate(store.clone(), producers, duration).await?;
        let raw = raw_rate(&store, producers, duration).await?;
        println!("{producers:>10} {writer:>16.0} {raw:>16.0} {:>8.2}", writer / raw);
    }
    Ok(())
}

async fn sustained(args: &BenchArgs) -> anyhow::Result<()> {
    let (store, _directory) = fresh_store(&args.database, "sustained").await?;
    let segment = Duration::from_secs(args.seconds);
    println!("engine: {}; 64 producers until the log holds {} events", store.engine(), args.events);
    println!("{:>12} {:>16} {:>16} {:>8}", "log size", "writer ev/s", "raw ev/s", "ratio");
    loop {
        let (rate, position) = writer_rate(store.clone(), 64, segment).await?;
        let raw = raw_rate(&store, 64, segment).await?;
        let (head, _) = store.head().await?;
        println!("{position:>12} {rate:>16.0} {raw:>16.0} {:>8.2}", rate / raw);
        if head >= args.events {
            return Ok(());
        }
    }
}

async fn replay(args: &BenchArgs) -> anyhow::Result<()> {
    let (store, directory) = fresh_store(&args.database, "replay").await?;
    let (mut head, _) = store.head().await?;
    if head < args.events {
        println!("filling the log to {} events …", args.events);
        let shared = Arc::new(RwLock::new(Ledger::new()));
        catch_up_shared(&store, &shared).await?;
        let mut ledger = shared.read().clone();
        while ledger.position < args.events {
            let before = ledger.position;
            let rows = prebuilt_rows(&mut ledger, 2000);
            store.append(before, &rows).await?;
        }
        head = ledger.position;
    }
    let url = match (&args.database, &directory) {
        (Some(url), _) => url.clone(),
        (None, Some(directory)) => format!("sqlite://{}", directory.path.join("bench.db").display()),
        (None, None) => unreachable!(),
    };

    let started = Instant::now();
    let mut position = 0;
    loop {
        let page = store.read_after(position, crate::store::MAX_READ_PAGE).await?;
        let Some(last) = page.last() else { break };
        position = last.position;
    }
    let read_rate = head as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (_, shared) = open_and_load(&url).await.context("loading")?;
    let memory_rate = head as f64 / started.elapsed().as_secs_f64();
    drop(shared);

    store.reset_projections().await?;
    let started = Instant::now();
    crate::projector::catch_up_projections(&store, None).await?;
    let sql_rate = head as f64 / started.elapsed().as_secs_f64();

    println!("engine: {}; {head} events", store.engine());
    println!("{:<40} {:>14} {:>8}", "what", "events/s", "vs read");
    println!("{:<40} {read_rate:>14.0} {:>8.2}", "read rows only (baseline)", 1.0);
    println!("{:<40} {memory_rate:>14.0} {:>8.2}", "read + decode + fold in memory", memory_rate / read_rate);
    println!("{:<40} {sql_rate:>14.0} {:>8.2}", "read + decode + SQL projections", sql_rate / read_rate);
    Ok(())
}
