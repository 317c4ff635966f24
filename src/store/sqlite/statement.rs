//! SQLite statements read with rusqlite on a blocking thread.
//!
//! sqlx runs each SQLite connection on a worker thread and hands every row over to the async
//! side one at a time; at a million rows that hand-over, not SQLite, is most of a
//! statement's time. Here a dedicated thread steps the query itself, decodes rows into
//! batches and sends each batch over the statement's bounded channel, so the formatter on
//! the async side works in parallel and memory stays flat. rusqlite links the same
//! `libsqlite3-sys` as sqlx, so there is one SQLite in the binary.
//!
//! The connection is the thread's own, read-only, on the same file. The database is in WAL
//! mode, so the read sees one consistent snapshot while the writer goes on committing.

use std::path::Path;
use std::time::Duration;

use bahi_domain::chain::format_recorded_at;
use bahi_reports::LedgerEntry;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::store::StoreError;
use crate::store::read_models::{EntrySender, STATEMENT_BATCH, money};
use crate::store::sqlite::parse_time;
use crate::store::sqlite::read_models::{FIRST_POSITION, LAST_POSITION, LEDGER_ENTRIES_IN_RANGE};

/// Opens a read-only connection to the SQLite database at `path`, for reads too large for
/// sqlx's row-by-row hand-over. It never creates the file: a missing database is an error.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    // A reader waits rather than fails while another connection recovers the WAL index.
    connection.busy_timeout(Duration::from_secs(10))?;
    // The same 8 MiB page cache as the sqlx readers: a statement reads one ordered range,
    // and a larger cache would only add to its memory.
    connection.pragma_update(None, "cache_size", -8192)?;
    Ok(connection)
}

fn entry_from_row(row: &Row<'_>) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        position: row.get(0)?,
        entry_type: row.get(1)?,
        occurred_at: parse_time(
            row.get_ref(2)?.as_str().map_err(|error| StoreError::Corrupt(format!("occurred_at: {error}")))?,
        )?,
        reference: row.get(3)?,
        description: row.get(4)?,
        call_id: row.get(5)?,
        credential_kind: row.get(6)?,
        credential_id: row.get(7)?,
        agent_id: row.get(8)?,
        agent_name: row.get(9)?,
        act_for: row.get(10)?,
        model: row.get(11)?,
        input_tokens: row.get(12)?,
        output_tokens: row.get(13)?,
        debit: money(row.get(14)?)?,
        credit: money(row.get(15)?)?,
        hold_released: money(row.get(16)?)?,
        balance_after: money(row.get(17)?)?,
    })
}

/// Sends the org's ledger entries in `[from, until)` in log order, in batches, until done or
/// the receiver goes away; a failure is sent as the stream's last message. Blocking: run it
/// on a thread of its own (`tokio::task::spawn_blocking`).
pub fn stream_ledger_entries(
    path: &Path,
    org_id: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    sender: &EntrySender,
) {
    if let Err(error) = send_ledger_entries(path, org_id, from, until, sender) {
        let _ = sender.blocking_send(Err(error));
    }
}

fn send_ledger_entries(
    path: &Path,
    org_id: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    sender: &EntrySender,
) -> Result<(), StoreError> {
    let mut connection = open_read_only(path)?;
    // One read transaction, so that the bounds and the rows come from the same snapshot.
    let transaction = connection.transaction()?;
    let (from, until) = (format_recorded_at(from), format_recorded_at(until));
    let bound = |sql: &str| -> Result<Option<i64>, StoreError> {
        Ok(transaction.query_row(sql, params![org_id, from, until], |row| row.get(0)).optional()?)
    };
    let (Some(first), Some(last)) = (bound(FIRST_POSITION)?, bound(LAST_POSITION)?) else { return Ok(()) };
    let mut statement = transaction.prepare(LEDGER_ENTRIES_IN_RANGE)?;
    let mut rows = statement.query(params![org_id, first, last, from, until])?;
    send_in_batches(&mut rows, STATEMENT_BATCH, entry_from_row, StoreError::from, sender)
}

/// Decodes `rows` and sends them in batches of `size`, in order; a failure to step is
/// turned into an error by `step_error`. Stops reading, without an error, when the receiver
/// has gone away (a client disconnected, a reader was aborted). Blocking.
pub fn send_in_batches<T>(
    rows: &mut rusqlite::Rows<'_>,
    size: usize,
    mut decode: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    step_error: impl Fn(rusqlite::Error) -> StoreError,
    sender: &tokio::sync::mpsc::Sender<Result<Vec<T>, StoreError>>,
) -> Result<(), StoreError> {
    let mut batch = Vec::with_capacity(size);
    while let Some(row) = rows.next().map_err(&step_error)? {
        batch.push(decode(row)?);
        if batch.len() == size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(size));
            if sender.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = sender.blocking_send(Ok(batch));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_database_is_an_error_and_is_not_created() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing.db");
        assert!(open_read_only(&path).is_err());
        assert!(!path.exists(), "a read-only open must never create the file");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_ends_the_stream_with_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing.db");
        let (sender, mut receiver) = tokio::sync::mpsc::channel(4);
        let (from, until) = ("2026-01-01T00:00:00Z".parse().unwrap(), "2026-02-01T00:00:00Z".parse().unwrap());
        tokio::task::spawn_blocking(move || stream_ledger_entries(&path, "org_A", from, until, &sender));
        assert!(matches!(receiver.recv().await, Some(Err(StoreError::Rusqlite(_)))));
        assert!(receiver.recv().await.is_none());
    }
}
