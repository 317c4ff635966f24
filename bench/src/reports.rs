//! `bahi-bench statement` and `bahi-bench attribution`: the finance read paths at a million
//! rows, each beside a baseline measured in the same run.
//!
//! The read model is filled directly with prebuilt ledger rows (the benchmarks measure
//! reading, not projecting), in batches so that filling does not inflate peak memory.

// Rates, ratios and megabytes are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use bahi_domain::Money;
use bahi_projections::{LedgerEntryRow, entry_type};
use bahi_reports::{GroupKey, LedgerEntry, Period, StatementFormat, StatementHeader, StatementWriter};
use chrono::{DateTime, Duration, TimeZone, Utc};
use futures::StreamExt;

use crate::BenchArgs;
use bahi::store::{EventStore, ReadModels, Store};

const ORG: &str = "org_BenchFinance";
const AGENTS: usize = 100;
const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-70b"];
const FILL_BATCH: usize = 10_000;
/// One top-up every this many rows keeps the balance positive.
const TOPUP_EVERY: i64 = 100;
const TOPUP_MICROS: i64 = 1_000 * 1_000_000;
const DAYS: i64 = 30;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap_or_default()
}

/// Row `index` (from 0) of `count`, and the balance after it given the balance before.
fn bench_row(index: i64, count: i64, balance_micros: &mut i64) -> LedgerEntryRow {
    let occurred_at = start() + Duration::microseconds(index * (DAYS * 86_400_000_000 / count.max(1)));
    let topup = index % TOPUP_EVERY == 0;
    let debit_micros = if topup { 0 } else { 1_000 + (index % 997) * 13 };
    let credit_micros = if topup { TOPUP_MICROS } else { 0 };
    *balance_micros += credit_micros - debit_micros;
    // Not `index % AGENTS`: every TOPUP_EVERY-th row is a top-up, which would starve agent 0.
    let agent = usize::try_from(index / 7).unwrap_or(0) % AGENTS;
    LedgerEntryRow {
        org_id: ORG.to_owned(),
        position: index + 1,
        entry_type: if topup { entry_type::TOPUP } else { entry_type::USAGE },
        occurred_at,
        occurred_day: occurred_at.format("%Y-%m-%d").to_string(),
        reference: if topup { format!("top_{index:020}") } else { format!("call_{index:022}") },
        description: Some(if topup { format!("payment {index}, \"bank\"") } else { "succeeded".to_owned() }),
        call_id: (!topup).then(|| format!("call_{index:022}")),
        credential_kind: (!topup).then(|| "agent_token".to_owned()),
        credential_id: (!topup).then(|| format!("tok_{index:022}")),
        agent_id: (!topup).then(|| format!("agt_bench{agent:03}")),
        agent_name: (!topup).then(|| format!("bench agent {agent}")),
        act_for: (!topup).then(|| ORG.to_owned()),
        model: (!topup).then(|| MODELS[agent % MODELS.len()].to_owned()),
        input_tokens: (!topup).then_some(1_000 + index % 5_000),
        output_tokens: (!topup).then_some(100 + index % 700),
        debit_micros,
        credit_micros,
        released_micros: 0,
        balance_after_micros: Some(*balance_micros),
    }
}

fn as_entry(row: &LedgerEntryRow) -> anyhow::Result<LedgerEntry> {
    Ok(LedgerEntry {
        position: row.position,
        occurred_at: row.occurred_at,
        entry_type: row.entry_type.to_owned(),
        reference: row.reference.clone(),
        description: row.description.clone(),
        call_id: row.call_id.clone(),
        credential_kind: row.credential_kind.clone(),
        credential_id: row.credential_id.clone(),
        agent_id: row.agent_id.clone(),
        agent_name: row.agent_name.clone(),
        act_for: row.act_for.clone(),
        model: row.model.clone(),
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        debit: Money::from_micros(row.debit_micros)?,
        credit: Money::from_micros(row.credit_micros)?,
        hold_released: Money::from_micros(row.released_micros)?,
        balance_after: Money::from_micros(row.balance_after_micros.unwrap_or(0))?,
    })
}

struct Fresh {
    store: Store,
    directory: Option<std::path::PathBuf>,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(directory) = &self.directory {
            let _ = std::fs::remove_dir_all(directory);
        }
    }
}

async fn fill(args: &BenchArgs, label: &str) -> anyhow::Result<Fresh> {
    let (url, directory) = match &args.database {
        Some(url) => (url.clone(), None),
        None => {
            let directory = std::env::temp_dir().join(format!("bahi-bench-{label}-{}", std::process::id()));
            std::fs::create_dir_all(&directory)?;
            (format!("sqlite://{}", directory.join("bench.db").display()), Some(directory))
        }
    };
    let store = Store::open(&url).await?;
    store.migrate().await?;
    let fresh = Fresh { store, directory };
    let started = Instant::now();
    let mut balance = 0;
    let mut index = 0;
    while index < args.events {
        let end = (index + FILL_BATCH as i64).min(args.events);
        let rows: Vec<LedgerEntryRow> = (index..end).map(|i| bench_row(i, args.events, &mut balance)).collect();
        crate::read_models::insert_ledger_entries(&fresh.store, &rows)
            .await
            .context("filling the ledger read model")?;
        index = end;
    }
    crate::read_models::finish_ledger_entries(&fresh.store)
        .await
        .context("summing and analyzing the ledger read model")?;
    println!(
        "engine: {}; {} ledger rows of one org filled in {:.1} s",
        fresh.store.engine(),
        args.events,
        started.elapsed().as_secs_f64()
    );
    Ok(fresh)
}

/// Peak resident memory of this process so far (VmHWM), in bytes; 0 where unknown.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kilobytes| kilobytes * 1024)
}

/// Resets VmHWM to the current RSS (Linux: writing 5 to clear_refs), so the peak measured
/// next belongs to what runs next, not to filling.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A sink that counts what it is given.
#[derive(Default)]
struct Counting {
    bytes: u64,
}

impl Write for Counting {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.bytes += buffer.len() as u64;
        Ok(buffer.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub async fn statement(args: &BenchArgs) -> anyhow::Result<()> {
    let fresh = fill(args, "statement").await?;
    let (from, to, period) = bahi_reports::statement_period(
        "2026-01-01",
        &(start() + Duration::days(DAYS - 1)).format("%Y-%m-%d").to_string(),
    )?;

    // Baseline: the same rows, built in memory one at a time and written as CSV by the same
    // writer, without the database.
    reset_peak_rss();
    let started = Instant::now();
    let header = StatementHeader { org_id: ORG.to_owned(), from, to, period, opening_balance: Money::ZERO };
    let mut sink = Counting::default();
    let mut buffer = Vec::with_capacity(1 << 16);
    let mut writer = StatementWriter::begin(StatementFormat::Csv, header, &mut buffer);
    let mut balance = 0;
    for index in 0..args.events {
        writer.entry(&as_entry(&bench_row(index, args.events, &mut balance))?, &mut buffer)?;
        if buffer.len() >= 1 << 16 {
            sink.write_all(&buffer)?;
            buffer.clear();
        }
    }
    let baseline_totals = writer.finish(&mut buffer);
    sink.write_all(&buffer)?;
    let baseline_seconds = started.elapsed().as_secs_f64();
    let baseline_peak = peak_rss_bytes();

    // The database side alone: entries read and decoded, then dropped.
    let started = Instant::now();
    let (sender, mut receiver) = tokio::sync::mpsc::channel(4);
    let reader_store = fresh.store.clone();
    let (start_time, until) = (period.from.unwrap_or_default(), period.until.unwrap_or_default());
    let reader = tokio::spawn(async move { reader_store.stream_ledger_entries(ORG, start_time, until, sender).await });
    let mut read_rows = 0;
    while let Some(batch) = receiver.recv().await {
        read_rows += batch?.len();
    }
    reader.await?;
    let read_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(read_rows as i64 == args.events, "read {read_rows} rows");

    reset_peak_rss();
    let started = Instant::now();
    let mut streamed = Counting::default();
    let chunks =
        bahi::finance::statement_stream(&fresh.store, ORG, from, to, period, StatementFormat::Csv, String::new())
            .await?;
    let mut chunks = std::pin::pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        streamed.write_all(&chunk?)?;
    }
    let streamed_seconds = started.elapsed().as_secs_f64();
    let streamed_peak = peak_rss_bytes();

    anyhow::ensure!(
        streamed.bytes == sink.bytes,
        "the streamed statement ({} bytes) differs in size from the baseline ({} bytes)",
        streamed.bytes,
        sink.bytes
    );
    println!(
        "statement of {} rows, CSV {:.1} MB; closing balance {} (opening + credits − debits)",
        args.events,
        megabytes(sink.bytes),
        baseline_totals.closing_balance
    );
    println!("{:<44} {:>10} {:>12} {:>14}", "what", "seconds", "rows/s", "peak RSS MB");
    println!(
        "{:<44} {baseline_seconds:>10.2} {:>12.0} {:>14.1}",
        "bare CSV write of the same rows (baseline)",
        args.events as f64 / baseline_seconds,
        megabytes(baseline_peak)
    );
    println!(
        "{:<44} {streamed_seconds:>10.2} {:>12.0} {:>14.1}",
        "statement streamed from the database",
        args.events as f64 / streamed_seconds,
        megabytes(streamed_peak)
    );
    println!(
        "{:<44} {read_seconds:>10.2} {:>12.0}",
        "database read alone (rows decoded, dropped)",
        args.events as f64 / read_seconds
    );
    println!("ratio (streamed / baseline time): {:.2}", streamed_seconds / baseline_seconds);
    Ok(())
}

pub async fn attribution(args: &BenchArgs) -> anyhow::Result<()> {
    let fresh = fill(args, "attribution").await?;
    let usage_rows = args.events - (args.events + TOPUP_EVERY - 1) / TOPUP_EVERY;
    println!("{usage_rows} settled calls across {AGENTS} agents and {} models", MODELS.len());
    println!("{:<44} {:>10} {:>8} {:>10}", "query (best of 3)", "seconds", "groups", "vs total");
    let mut baseline = 0.0;
    for (label, group_by) in [
        ("total, no grouping (baseline)", vec![]),
        ("group_by=agent", vec![GroupKey::Agent]),
        ("group_by=day", vec![GroupKey::Day]),
        ("group_by=agent,act_for,model,api_key,day", GroupKey::ALL.to_vec()),
    ] {
        let mut best = f64::MAX;
        let mut groups = 0;
        let mut cost = Money::ZERO;
        for _ in 0..3 {
            let started = Instant::now();
            let rows = fresh.store.attribution(ORG, Period::ALL, &group_by).await?.context("too many groups")?;
            best = best.min(started.elapsed().as_secs_f64());
            groups = rows.len();
            cost = bahi_reports::attribution::totals(&rows)?.cost;
        }
        if group_by.is_empty() {
            baseline = best;
        }
        println!("{label:<44} {best:>10.3} {groups:>8} {:>10.2}   (cost {cost})", best / baseline);
    }
    Ok(())
}
