//! SQLite: reading the log in bulk (loading at start-up, rebuilding projections) through
//! rusqlite on a blocking thread with its own read-only connection.
//!
//! sqlx-sqlite hands rows over one at a time from its worker thread (about 100k rows/s
//! here, most of it allocation and hand-over, not SQLite); one statement stepped in a
//! plain loop on a thread of its own reads the same rows several times faster. rusqlite
//! links the same libsqlite3-sys as sqlx, so the binary still holds one SQLite. WAL mode
//! lets this reader run beside the writer; the one statement reads one consistent snapshot.

use std::path::{Path, PathBuf};

use crate::store::{PageSender, StoreError, StoredEvent};

fn error(message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("reading the SQLite log: {message}"))
}

/// Sends the events after `after` (up to and including `until`) in pages of `page_events`,
/// in order, until the head of the log or until the receiver goes away. Blocking: run it on
/// a blocking thread.
pub fn read_pages(path: PathBuf, after: i64, until: Option<i64>, page_events: usize, sender: PageSender) {
    if let Err(failure) = read_pages_inner(&path, after, until, page_events, &sender) {
        let _ = sender.blocking_send(Err(failure));
    }
}

fn read_pages_inner(
    path: &Path,
    after: i64,
    until: Option<i64>,
    page_events: usize,
    sender: &PageSender,
) -> Result<(), StoreError> {
    let connection = crate::store::sqlite::statement::open_read_only(path)?;
    let mut statement = connection
        .prepare(
            "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, payload, metadata, hash \
             FROM events WHERE position > ?1 AND position <= ?2 ORDER BY position",
        )
        .map_err(error)?;
    let mut rows = statement.query((after, until.unwrap_or(i64::MAX))).map_err(error)?;
    let decode = |row: &rusqlite::Row<'_>| {
        // The time and the hash are read in place: copying each into an allocation of its
        // own, only to parse it and free it, was two of the seven allocations per row.
        let recorded_at = row.get_ref(6).map_err(error)?.as_str().map_err(error)?;
        let hash = row.get_ref(9).map_err(error)?.as_blob().map_err(error)?;
        Ok(StoredEvent {
            position: row.get(0).map_err(error)?,
            stream_id: row.get(1).map_err(error)?,
            stream_version: row.get(2).map_err(error)?,
            event_id: row.get(3).map_err(error)?,
            event_type: row.get(4).map_err(error)?,
            schema_version: row.get(5).map_err(error)?,
            recorded_at: crate::store::sqlite::parse_time(recorded_at)?,
            payload: row.get(7).map_err(error)?,
            metadata: row.get(8).map_err(error)?,
            hash: crate::store::hash_from_bytes(hash)?,
        })
    };
    crate::store::sqlite::statement::send_in_batches(&mut rows, page_events, decode, error, sender)
}
