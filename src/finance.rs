//! Statements as a stream of bytes, shared by `GET /v1/statements` and `bahi statement`.
//!
//! The store reads ledger entries in log order on its own task and hands them over in
//! batches through a small bounded channel; the consumer formats each batch as it is
//! polled. The channel bounds what is in flight, so memory stays flat however many rows
//! the period holds, and a consumer that goes away (a client that disconnects) stops the
//! reader at its next send.

use bahi_reports::{StatementFormat, StatementHeader, StatementWriter};
use futures::Stream;
use tokio::sync::mpsc;

use crate::store::{EntrySender, Store, StoreError};

/// Batches of entries in flight between the reader task and the formatter.
const BATCHES_IN_FLIGHT: usize = 4;

/// The statement of `header`'s org and period (its opening balance is read here), as chunks
/// of CSV or JSON. An error after the first chunk ends the stream with that error.
pub async fn statement_stream(
    store: &Store,
    org_id: &str,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    period: bahi_reports::Period,
    format: StatementFormat,
) -> Result<impl Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static, StoreError> {
    let (Some(start), Some(until)) = (period.from, period.until) else {
        return Err(StoreError::Corrupt("a statement period has both ends".into()));
    };
    let opening_balance = store.balance_before(org_id, start).await?;
    let header = StatementHeader { org_id: org_id.to_owned(), from, to, period, opening_balance };
    let (sender, receiver): (EntrySender, _) = mpsc::channel(BATCHES_IN_FLIGHT);
    let reader_store = store.clone();
    let reader_org = org_id.to_owned();
    tokio::spawn(async move { reader_store.stream_ledger_entries(&reader_org, start, until, sender).await });

    let mut first_chunk = Vec::new();
    let writer = StatementWriter::begin(format, header, &mut first_chunk);
    let state = Formatting { receiver, writer: Some(writer), first_chunk: Some(first_chunk) };
    Ok(futures::stream::unfold(state, next_chunk))
}

struct Formatting {
    receiver: mpsc::Receiver<Result<Vec<bahi_reports::LedgerEntry>, StoreError>>,
    /// `None` once the statement is finished or failed: the stream then ends.
    writer: Option<StatementWriter>,
    first_chunk: Option<Vec<u8>>,
}

async fn next_chunk(mut state: Formatting) -> Option<(Result<Vec<u8>, std::io::Error>, Formatting)> {
    if let Some(first) = state.first_chunk.take() {
        return Some((Ok(first), state));
    }
    let writer = state.writer.as_mut()?;
    match state.receiver.recv().await {
        Some(Ok(batch)) => {
            // About 200 bytes a CSV row; the buffer grows if a row is longer.
            let mut out = Vec::with_capacity(batch.len() * 256);
            for entry in &batch {
                if let Err(error) = writer.entry(entry, &mut out) {
                    state.writer = None;
                    return Some((Err(std::io::Error::other(error.to_string())), state));
                }
            }
            Some((Ok(out), state))
        }
        Some(Err(error)) => {
            tracing::error!(%error, "statement stream failed");
            state.writer = None;
            Some((Err(std::io::Error::other(error.to_string())), state))
        }
        None => {
            let writer = state.writer.take()?;
            let mut out = Vec::new();
            let totals = writer.finish(&mut out);
            if totals.recorded_mismatches > 0 {
                tracing::warn!(
                    mismatches = totals.recorded_mismatches,
                    "statement rows whose recorded balance differs from the running balance"
                );
            }
            Some((Ok(out), state))
        }
    }
}

/// `bahi statement`: brings the read models up to the log's head (the server may have been
/// stopped before its projections caught up), then writes the statement to stdout.
pub async fn statement_command(args: &crate::cli::StatementArgs) -> anyhow::Result<std::process::ExitCode> {
    use crate::store::EventStore;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    let (from, to, period) = bahi_reports::statement_period(&args.from, &args.to)?;
    let format = StatementFormat::parse(&args.format)?;
    let org_id = bahi_domain::ids::OrgId::parse(&args.org)?;
    let store = Store::open(&args.database.database_url).await?;
    store.migrate().await?;
    crate::projector::catch_up_projections(&store, None).await?;
    if !store.org_exists(org_id.as_str()).await? {
        anyhow::bail!("no such org {org_id}");
    }
    let chunks = statement_stream(&store, org_id.as_str(), from, to, period, format).await?;
    let mut chunks = std::pin::pin!(chunks);
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = chunks.next().await {
        stdout.write_all(&chunk?).await?;
    }
    stdout.flush().await?;
    Ok(std::process::ExitCode::SUCCESS)
}
