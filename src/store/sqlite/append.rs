//! SQLite appends through rusqlite, one blocking call per batch.
//!
//! Through sqlx an append is four hand-overs between the async runtime and sqlx's worker
//! thread (BEGIN, the head check, the INSERT, COMMIT), and each waits for a runtime worker
//! to poll the append again. Under load the runtime's workers are busy deciding the next
//! batch, so a 64-event append took 2.2 ms against 1.5 ms for a raw append of twice the
//! rows (measured with `bahi-bench append`). Here the whole transaction is one synchronous
//! call on a blocking thread. rusqlite links the same libsqlite3-sys as sqlx.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use bahi_domain::chain::format_recorded_at;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::store::{StoreError, StoredEvent};

/// Opens the appending connection on a database that sqlx already created and migrated,
/// with the writer's settings: WAL, `synchronous=FULL` (an acknowledged commit survives
/// power loss), statement journals in memory, and SQLite's default 2 MB page cache.
pub fn open_appender(path: &Path) -> Result<Connection, StoreError> {
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", true)?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    // Small on purpose. Every commit ends with SQLite truncating its page cache to the
    // database's size (`pager_end_transaction` → `pcache1TruncateUnsafe`), which walks the
    // cache's hash table; with 64 MiB that walk grew with the log until it was 4.6% of the
    // writer phase's samples, and the writer's CPU per event rose from 12 to 17-20 µs by a
    // million events. With 2 MB it stays near 11-12 µs: 64-producer appends went from 60-62k
    // to 68-72k events/s (BENCHMARKS.md). Ids are time-ordered, so new events and streams go
    // near the right edge of their B-trees, and the streams an append moves on are mostly
    // recent ones: a small cache holds what is hot, and a miss is a read from the OS cache.
    connection.pragma_update(None, "cache_size", -2000)?;
    // Checkpoints run on the checkpointer's thread (below), not inside an append's commit.
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    // When the log restarts, a file grown past this (by a long reader, say) is cut back.
    // Above RESTART_WAL_FRAMES, so that a log restarted as usual is reused in place.
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    Ok(connection)
}

/// The least time between two checkpoints. Each copies the pages changed since the last one
/// into the database file and syncs it; the hot pages (the end of the log, the end of
/// `streams`) change in every commit, so fewer checkpoints write them fewer times.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Frames (4 KiB pages) in the write-ahead log past which the checkpointer also restarts it,
/// 64 MiB. A PASSIVE checkpoint copies frames but never makes the next append start the log
/// again from its beginning: that takes a checkpoint that finds no frame left to copy, and
/// under continuous appends new frames always arrive first. So the log only grew: 674 MB
/// beside a database of 270 MB after one `bench append` run. Every commit then wrote to new
/// blocks at the end of the file, and ext4 allocated and zeroed them and synced the file's
/// size: 12-14% of the appending thread was the kernel zeroing pages in `pwrite` (perf).
const RESTART_WAL_FRAMES: i64 = 16_384;
/// How long a restarting checkpoint may wait for the appender's commit and for readers of
/// the log. While it waits, new appends wait too; a commit takes about a millisecond.
const RESTART_WAIT: Duration = Duration::from_millis(20);
/// See `open_appender`: twice the restart threshold.
const WAL_SIZE_LIMIT_BYTES: i64 = 2 * RESTART_WAL_FRAMES * 4096;
/// The checkpointer's usual busy timeout (a PASSIVE checkpoint waits for nobody).
const CHECKPOINT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies the write-ahead log into the database file on a thread of its own.
///
/// With SQLite's automatic checkpoint, the commit that takes the log past 1,000 pages copies
/// them and syncs the database file before it returns: 9% of the appending thread's time
/// in a profile of `bahi-bench append`, and a commit that took several times the usual
/// latency. Here the appender only says that it committed; a PASSIVE checkpoint never
/// blocks an append or a reader. The thread ends when the last handle is dropped.
pub struct Checkpointer {
    wake: SyncSender<()>,
}

impl Checkpointer {
    pub fn spawn(path: &Path) -> Result<Checkpointer, StoreError> {
        let connection =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        connection.busy_timeout(CHECKPOINT_BUSY_TIMEOUT)?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("bahi-checkpoint".into())
            .spawn(move || checkpoint_when_woken(&connection, &woken))
            .map_err(StoreError::Thread)?;
        Ok(Checkpointer { wake })
    }

    /// Called after each commit; never waits.
    pub fn committed(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn checkpoint_when_woken(connection: &Connection, woken: &Receiver<()>) {
    while woken.recv().is_ok() {
        // A failed checkpoint leaves the pages in the write-ahead log, where every reader
        // still finds them; the next one copies them.
        // The second column is the number of frames in the log.
        let frames = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1));
        match frames {
            Ok(frames) if frames > RESTART_WAL_FRAMES => restart(connection),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "a write-ahead log checkpoint failed; the next commit retries it"),
        }
        std::thread::sleep(CHECKPOINT_INTERVAL);
    }
}

/// A RESTART checkpoint right after a PASSIVE one: little is left to copy, and once no
/// reader uses the log the next append starts it again from its beginning. If the appender
/// or a reader holds on for longer than RESTART_WAIT it gives up, and the next checkpoint
/// tries again.
fn restart(connection: &Connection) {
    if connection.busy_timeout(RESTART_WAIT).is_err() {
        return;
    }
    let restarted = connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get::<_, i64>(0));
    if let Err(error) = restarted {
        tracing::debug!(%error, "the write-ahead log was busy; it restarts at a later checkpoint");
    }
    if let Err(error) = connection.busy_timeout(CHECKPOINT_BUSY_TIMEOUT) {
        tracing::warn!(%error, "could not reset the checkpointer's busy timeout");
    }
}

/// Appends `events` after `expected_head` in one `BEGIN IMMEDIATE` transaction, in
/// multi-row INSERTs of the sizes `statements` gives (largest first).
pub fn append(
    connection: &mut Connection,
    statements: &[(usize, String)],
    expected_head: i64,
    events: &[StoredEvent],
) -> Result<(), StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let actual: i64 = transaction.query_row("SELECT coalesce(max(position), 0) FROM events", [], |row| row.get(0))?;
    if actual != expected_head {
        return Err(StoreError::HeadMoved { expected: expected_head, actual });
    }
    let mut remaining = events;
    while !remaining.is_empty() {
        let (rows, text) = statements
            .iter()
            .find(|(rows, _)| *rows <= remaining.len())
            .ok_or_else(|| StoreError::Corrupt("no insert chunk size fits".into()))?;
        let (chunk, rest) = remaining.split_at(*rows);
        let mut statement = transaction.prepare_cached(text)?;
        for (index, event) in chunk.iter().enumerate() {
            let first = index * 10;
            statement.raw_bind_parameter(first + 1, event.position)?;
            statement.raw_bind_parameter(first + 2, event.stream_id.as_str())?;
            statement.raw_bind_parameter(first + 3, event.stream_version)?;
            statement.raw_bind_parameter(first + 4, event.event_id.as_str())?;
            statement.raw_bind_parameter(first + 5, event.event_type.as_str())?;
            statement.raw_bind_parameter(first + 6, event.schema_version)?;
            statement.raw_bind_parameter(first + 7, format_recorded_at(event.recorded_at))?;
            statement.raw_bind_parameter(first + 8, event.payload.as_slice())?;
            statement.raw_bind_parameter(first + 9, event.metadata.as_slice())?;
            statement.raw_bind_parameter(first + 10, event.hash.as_slice())?;
        }
        statement.raw_execute()?;
        remaining = rest;
    }
    transaction.commit()?;
    Ok(())
}
