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

use crate::store::{EntrySender, ReadModels, Store, StoreError};

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
    request_id: String,
) -> Result<impl Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + use<>, StoreError> {
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
    let state = Formatting {
        receiver,
        writer: Some(writer),
        first_chunk: Some(first_chunk),
        format,
        org_id: org_id.to_owned(),
        // The body is sent after the handler returned, outside the request's scope.
        request_id,
        failed: None,
    };
    Ok(futures::stream::unfold(state, next_chunk))
}

struct Formatting {
    receiver: mpsc::Receiver<Result<Vec<bahi_reports::LedgerEntry>, StoreError>>,
    /// `None` once the statement is finished or failed: the stream then ends.
    writer: Option<StatementWriter>,
    first_chunk: Option<Vec<u8>>,
    format: StatementFormat,
    org_id: String,
    request_id: String,
    /// The error that stopped the statement, sent after the chunk that says so in the body.
    failed: Option<std::io::Error>,
}

impl Formatting {
    /// Ends a statement that cannot be finished so that it is never taken for a whole one:
    /// `out` (the rows so far), then a last CSV row of type `error` or a JSON `error` field
    /// in place of the totals, then an error, which aborts the HTTP body (the client sees
    /// the transfer fail) and makes `bahi statement` exit non-zero. The detail goes to the
    /// log only.
    fn fail(mut self, mut out: Vec<u8>, detail: String) -> (Result<Vec<u8>, std::io::Error>, Formatting) {
        tracing::error!(request_id = %self.request_id, org_id = %self.org_id, %detail, "statement stopped before its end");
        self.writer = None;
        let quote = if self.request_id.is_empty() {
            String::new()
        } else {
            format!("; quote the request id {} when reporting it", self.request_id)
        };
        let message = format!("statement incomplete: an internal error stopped it after the rows above{quote}");
        match self.format {
            // The same 18 columns as every row; the message holds no comma or quote.
            StatementFormat::Csv => {
                out.extend_from_slice(format!(",,error,{},{message}{}\r\n", self.org_id, ",".repeat(13)).as_bytes());
            }
            StatementFormat::Json => {
                let error = serde_json::json!({
                    "type": "internal_error",
                    "message": message,
                    "request_id": self.request_id,
                });
                out.extend_from_slice(format!("],\"error\":{error}}}\n").as_bytes());
            }
        }
        self.failed = Some(std::io::Error::other(detail));
        (Ok(out), self)
    }
}

async fn next_chunk(mut state: Formatting) -> Option<(Result<Vec<u8>, std::io::Error>, Formatting)> {
    if let Some(first) = state.first_chunk.take() {
        return Some((Ok(first), state));
    }
    if let Some(error) = state.failed.take() {
        // Pending once first: hyper flushes what it holds (the incomplete-statement row)
        // while the body is pending, and an error drops the connection with its buffer.
        tokio::task::yield_now().await;
        return Some((Err(error), state));
    }
    let writer = state.writer.as_mut()?;
    match state.receiver.recv().await {
        Some(Ok(batch)) => {
            // About 200 bytes a CSV row; the buffer grows if a row is longer.
            let mut out = Vec::with_capacity(batch.len() * 256);
            for entry in &batch {
                if let Err(error) = writer.entry(entry, &mut out) {
                    return Some(state.fail(out, error.to_string()));
                }
            }
            Some((Ok(out), state))
        }
        Some(Err(error)) => Some(state.fail(Vec::new(), error.to_string())),
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
