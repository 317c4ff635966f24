//! The event store: one trait, two engines (SQLite embedded, PostgreSQL for scale-out).
//!
//! The store only persists and reads; it never decides. Appends are compare-and-swap on the
//! log head: the caller says which position it believes is last, and the append fails with
//! `HeadMoved` if another writer got there first.

mod migrate;
mod postgres;
mod read_models;
mod sqlite;

use std::future::Future;

use bahi_domain::chain::{RecordView, chain_hash, format_recorded_at};
use bahi_projections::batch::RowBatch;
use chrono::{DateTime, Utc};

pub use postgres::PostgresStore;
pub use read_models::{
    AuditEvent, CallEvent, CallRecord, EntrySender, MAX_ATTRIBUTION_GROUPS, ReadModels, STATEMENT_BATCH,
};

pub fn postgres_notify_channel() -> &'static str {
    postgres::NOTIFY_CHANNEL
}
pub use sqlite::read_models_path as sqlite_read_models_path;
pub use sqlite::{READ_MODELS_PAGE_SIZE, SqliteStore};

/// Every projection table, then the checkpoints: what a rebuild empties.
fn projection_reset_tables() -> impl Iterator<Item = &'static str> {
    bahi_projections::PROJECTIONS
        .iter()
        .flat_map(|projection| projection.tables.iter().copied())
        .chain(std::iter::once("projection_checkpoints"))
}

/// The statements that empty every projection table and then the checkpoints, in one
/// transaction (SQLite's `reset_projections` and its one-transaction rebuild).
fn projection_reset_statements() -> impl Iterator<Item = String> {
    projection_reset_tables().map(|table| format!("DELETE FROM {table}"))
}

/// The largest page `read_after` returns, whatever the caller asks.
pub const MAX_READ_PAGE: i64 = 10_000;

/// One row of the log as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_id: String,
    pub event_type: String,
    pub schema_version: i32,
    pub recorded_at: DateTime<Utc>,
    pub payload: Vec<u8>,
    pub metadata: Vec<u8>,
    pub hash: [u8; 32],
}

impl StoredEvent {
    /// The hash this row must carry after `previous_hash`.
    pub fn expected_hash(&self, previous_hash: &[u8; 32]) -> [u8; 32] {
        self.expected_hash_with(previous_hash, &format_recorded_at(self.recorded_at))
    }

    /// `expected_hash` with `recorded_at` already formatted by `format_recorded_at`: the
    /// writer formats it once per clock reading instead of once per event.
    pub fn expected_hash_with(&self, previous_hash: &[u8; 32], recorded_at: &str) -> [u8; 32] {
        debug_assert_eq!(recorded_at, format_recorded_at(self.recorded_at));
        chain_hash(
            previous_hash,
            &RecordView {
                position: self.position,
                stream_id: &self.stream_id,
                stream_version: self.stream_version,
                event_id: &self.event_id,
                event_type: &self.event_type,
                schema_version: self.schema_version,
                recorded_at,
                payload: &self.payload,
                metadata: &self.metadata,
            },
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From the rusqlite connections that work off the async runtime: bulk reads,
    /// statements and SQLite appends.
    #[error("database error: {0}")]
    Rusqlite(#[from] rusqlite::Error),
    #[error("the log head moved: expected position {expected}, found {actual}")]
    HeadMoved { expected: i64, actual: i64 },
    /// The append lock (`LogLock`) was held by another node for longer than its wait
    /// allows: nothing was appended.
    #[error("another node held the append lock too long")]
    LogBusy,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "no ledger at {0}: check the path (offline commands read an existing database; `bahi serve` or `bahi migrate` creates one)"
    )]
    NoDatabase(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("migration error: {0}")]
    Migration(String),
    #[error("could not start the store's checkpoint thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Whether the database could be reached for a statement that failed, and if so whether
/// it may have run: what a caller can be told of an error that is the database's absence,
/// not the request's or a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No connection could be had (refused, or none within the pool's acquire timeout):
    /// nothing was sent.
    NotConnected,
    /// The connection was lost (closed, reset, or its backend terminated by an administrator
    /// or a shutdown) with the statement sent or being sent: it may have been committed.
    Lost,
}

impl StoreError {
    /// `Some` when the error is the database being away (a restart, a terminated backend, a
    /// network fault), which a retry once it is back may get past; `None` for everything
    /// else (a bug, corrupt data, a constraint).
    pub fn reach(&self) -> Option<Reach> {
        let StoreError::Database(error) = self else { return None };
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => Some(Reach::NotConnected),
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => Some(Reach::Lost),
            // Class 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown,
            // cannot connect now (starting up or shutting down).
            sqlx::Error::Database(database) => match database.code().as_deref() {
                Some(code) if code.starts_with("08") => Some(Reach::Lost),
                Some("57P01" | "57P02" | "57P03") => Some(Reach::Lost),
                // The server ended a session idle in its transaction: a node that held the
                // append lock (`LogLock`) while it was paused.
                Some("25P03") => Some(Reach::Lost),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What both engines provide. Implementations are cheap to clone handles over pools.
pub trait EventStore: Send + Sync {
    /// Applies pending migrations (idempotent; refuses an edited migration).
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Position and hash of the last event (0 and the genesis hash when empty).
    fn head(&self) -> impl Future<Output = Result<(i64, [u8; 32]), StoreError>> + Send;
    /// Events with position > `after`, in order, at most `limit` (capped at MAX_READ_PAGE).
    fn read_after(&self, after: i64, limit: i64) -> impl Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send;
    /// Appends a batch in one transaction, if and only if the head is still `expected_head`.
    fn append(&self, expected_head: i64, events: &[StoredEvent])
    -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A projection's checkpoint (0 when it has never run).
    fn checkpoint(&self, projection: &str) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Writes the row batches (in order) of the events after `from_position` up to
    /// `position` and moves the checkpoint of every projection in `projections` there, in one
    /// transaction. Returns false, changing nothing, when any of those checkpoints is no
    /// longer `from_position` (another runner, on this or another node, applied them first).
    fn apply_projections(
        &self,
        projections: &[&str],
        from_position: i64,
        batches: Vec<RowBatch>,
        position: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Empties every projection table and checkpoint, so that the runner projects the log
    /// again from its start. `bahi rebuild` empties them inside its own transaction instead.
    fn reset_projections(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every row of a read-model table as text, ordered, for comparing two folds.
    fn dump_table(&self, table: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// The store chosen by URL.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens (creating an SQLite file when missing) without migrating.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::open(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::open(url).await?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Opens an existing database only (an SQLite file that is missing is an error, not a
    /// new empty ledger): for offline commands, where a typo must not pass as an empty log.
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::open_existing(url).await?))
        } else {
            Store::open(url).await
        }
    }

    /// Closes the store after a graceful stop. On SQLite both files' write-ahead logs are
    /// first copied into the files and emptied, so that `bahi.db` and `bahi.db.read` hold
    /// everything committed without their `-wal` files and the next start has nothing to
    /// recover. A checkpoint that cannot finish is logged and changes nothing: the log keeps
    /// the pages, and the next start copies them.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.pool().close().await,
        }
    }

    /// Takes the append lock on PostgreSQL (`LogLock`), for a writer whose append lost the
    /// race for the log head; None on SQLite, whose one writer has no one to race.
    pub async fn lock_log(&self) -> Result<Option<LogLock>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(store) => store.lock_log().await.map(Some),
        }
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Refreshes the planner's statistics of every read-model table. After a bulk load
    /// (`bahi rebuild`) PostgreSQL otherwise plans attribution for a table it believes is
    /// nearly empty until autovacuum gets to it (measured: 2.36 s instead of 0.24 s grouped
    /// by agent over a million calls); SQLite's planner uses the same statistics.
    pub async fn analyze_read_models(&self) -> Result<(), StoreError> {
        for projection in bahi_projections::PROJECTIONS {
            for table in projection.tables {
                let statement = format!("ANALYZE {table}");
                match self {
                    Store::Sqlite(store) => {
                        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(store.pool()).await?;
                    }
                    Store::Postgres(store) => {
                        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(store.pool()).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Sqlite($store) => $call.await,
            Store::Postgres($store) => $call.await,
        }
    };
}

impl EventStore for Store {
    async fn migrate(&self) -> Result<(), StoreError> {
        delegate!(self, store => store.migrate())
    }
    async fn head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        delegate!(self, store => store.head())
    }
    async fn read_after(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        delegate!(self, store => store.read_after(after, limit))
    }
    async fn append(&self, expected_head: i64, events: &[StoredEvent]) -> Result<(), StoreError> {
        delegate!(self, store => store.append(expected_head, events))
    }
    async fn checkpoint(&self, projection: &str) -> Result<i64, StoreError> {
        delegate!(self, store => store.checkpoint(projection))
    }
    async fn apply_projections(
        &self,
        projections: &[&str],
        from_position: i64,
        batches: Vec<RowBatch>,
        position: i64,
    ) -> Result<bool, StoreError> {
        delegate!(self, store => store.apply_projections(projections, from_position, batches, position))
    }
    async fn reset_projections(&self) -> Result<(), StoreError> {
        delegate!(self, store => store.reset_projections())
    }
    async fn dump_table(&self, table: &str) -> Result<Vec<String>, StoreError> {
        delegate!(self, store => store.dump_table(table))
    }
}

/// A page of the log, or the error that ended the reading.
pub type PageSender = tokio::sync::mpsc::Sender<Result<Vec<StoredEvent>, StoreError>>;

pub use postgres::LogLock;
pub use postgres::bulk::{CopiedRows, RowRef};

/// A page of the log as loading reads it (`Store::spawn_load_reader`).
#[derive(Debug)]
pub enum LoadPage {
    /// Rows read into `StoredEvent`s (SQLite).
    Stored(Vec<StoredEvent>),
    /// Rows as PostgreSQL's binary COPY sent them, parsed by the loading decoders.
    Copied(CopiedRows),
}

impl LoadPage {
    /// The rows on the page.
    pub fn len(&self) -> usize {
        match self {
            LoadPage::Stored(rows) => rows.len(),
            LoadPage::Copied(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub type LoadPageSender = tokio::sync::mpsc::Sender<Result<LoadPage, StoreError>>;

/// On SQLite, pages at least this large are read in bulk (see `sqlite::bulk`): loading,
/// rebuilding and the live projection runner's pages of 1,000.
const BULK_PAGE_EVENTS: i64 = 1_000;

/// On PostgreSQL, only pages this large are read in bulk (see `postgres::bulk`): loading and
/// rebuilding. A bulk reading closes its connection when it ends (a COPY cannot be abandoned
/// on a pooled connection), which is nothing once per load but would be a new backend for
/// each of the live runner's frequent reads; those keep `read_after`.
const POSTGRES_BULK_PAGE_EVENTS: i64 = MAX_READ_PAGE;

impl Store {
    /// Sends the whole log after `after` for loading it into memory, in order, until the
    /// head of the log, or until the receiver goes away: on PostgreSQL pages of
    /// `copied_page_events` rows as the COPY sent them, on SQLite the bulk reader's pages of
    /// `MAX_READ_PAGE` events.
    pub fn spawn_load_reader(
        &self,
        after: i64,
        copied_page_events: usize,
        sender: LoadPageSender,
    ) -> tokio::task::JoinHandle<()> {
        if let Store::Postgres(postgres) = self {
            return tokio::spawn(postgres::bulk::read_copied_pages(
                postgres.pool().clone(),
                after,
                copied_page_events,
                sender,
            ));
        }
        let (page_sender, mut pages) = tokio::sync::mpsc::channel(1);
        let reader = self.spawn_page_reader(after, None, MAX_READ_PAGE, page_sender);
        tokio::spawn(async move {
            while let Some(page) = pages.recv().await {
                if sender.send(page.map(LoadPage::Stored)).await.is_err() {
                    reader.abort();
                    return;
                }
            }
        })
    }

    /// Sends the events after `after` (up to and including `until`) in pages of
    /// `page_events`, in order, until the head of the log, or until the receiver goes away.
    /// Large pages are read in bulk: on SQLite on a blocking thread through rusqlite, on
    /// PostgreSQL with one binary COPY (pages of `MAX_READ_PAGE` only); smaller pages
    /// through `read_after`.
    pub fn spawn_page_reader(
        &self,
        after: i64,
        until: Option<i64>,
        page_events: i64,
        sender: PageSender,
    ) -> tokio::task::JoinHandle<()> {
        if let Store::Sqlite(sqlite) = self
            && page_events >= BULK_PAGE_EVENTS
        {
            let path = sqlite.path().to_path_buf();
            let page_events = usize::try_from(page_events).expect("a bulk page holds a positive number of events");
            return tokio::task::spawn_blocking(move || {
                sqlite::bulk::read_pages(path, after, until, page_events, sender)
            });
        }
        if let Store::Postgres(postgres) = self
            && page_events >= POSTGRES_BULK_PAGE_EVENTS
        {
            let pool = postgres.pool().clone();
            let page_events = usize::try_from(page_events).expect("a bulk page holds a positive number of events");
            return tokio::spawn(postgres::bulk::read_pages(pool, after, until, page_events, sender));
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut position = after;
            loop {
                let limit = match until {
                    Some(until) if until <= position => return,
                    Some(until) => page_events.min(until - position),
                    None => page_events,
                };
                let page = match store.read_after(position, limit).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                position = last.position;
                if sender.send(Ok(page)).await.is_err() {
                    return;
                }
            }
        })
    }
}

/// Tables whose rows `dump_table` may read: read models only, never user input.
pub fn is_dumpable_table(table: &str) -> bool {
    bahi_projections::PROJECTIONS.iter().any(|projection| projection.tables.contains(&table))
}

/// Every row of `table` as one text value (columns joined by `|`, NULL as `-`), ordered:
/// the same SQL on both engines. `table` and `columns` come from the schema, never from input.
pub(crate) fn dump_query(table: &str, columns: &[String]) -> String {
    let expression = columns
        .iter()
        .map(|column| format!("coalesce(CAST({column} AS TEXT), '-')"))
        .collect::<Vec<_>>()
        .join(" || '|' || ");
    format!("SELECT {expression} FROM {table} ORDER BY 1")
}

pub(crate) fn hash_from_bytes(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("hash of {} bytes", bytes.len())))
}
