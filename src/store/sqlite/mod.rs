//! SQLite: one file, zero setup. One writer connection that appends with `BEGIN IMMEDIATE`
//! under `synchronous=FULL` in WAL mode (an acknowledged commit survives power loss), and a
//! separate pool for reads and read-model writes.

pub(crate) mod append;
pub(crate) mod batch;
pub(crate) mod bulk;
pub(crate) mod read_models;
pub(crate) mod statement;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bahi_domain::chain::format_recorded_at;
use bahi_projections::batch::{PlannedPage, RowBatch};
use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};
use tokio::sync::Mutex;

use super::migrate::{SQLITE, SQLITE_READ_FILE, SQLITE_READ_MODELS, checksum};
use super::{EventStore, MAX_READ_PAGE, StoreError, StoredEvent, hash_from_bytes, is_dumpable_table};

const EVENT_COLUMNS: &str =
    "position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, payload, metadata, hash";

/// Rows per INSERT statement. A batch is split into these fixed sizes so that only a handful
/// of distinct statements exist, each prepared once and cached.
const INSERT_CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// Page cache of the pool's connections (negative: KiB), 8 MiB.
const READER_CACHE: &str = "-8192";
/// Page cache of the projection writer (negative: KiB), 64 MiB: live pages insert at random
/// places in the read-model B-trees.
const PROJECTION_CACHE: i64 = -65536;
/// Page cache for a projection transaction of more than LARGE_PAGE_ROWS rows, 256 MiB.
const LARGE_PAGE_CACHE: i64 = -262144;
/// Above any live page (PROJECTION_PAGE events at up to ~6 rows each), so that only rebuild
/// pages get the large cache.
const LARGE_PAGE_ROWS: usize = 8_000;
/// Page cache of the one transaction of `bahi rebuild` (negative: KiB), 1 GiB: the pages it
/// dirties stay in memory until the commit (a million gateway events dirty about 400 MB).
/// Beyond that SQLite spills pages to the WAL and rewrites those touched again.
const REBUILD_CACHE: i64 = -1_048_576;
/// Page size of a new read-model file, in bytes.
pub const READ_MODELS_PAGE_SIZE: i64 = 16_384;
/// Distinct statements the projection writer keeps prepared: a few chunk sizes per table.
const PROJECTION_STATEMENTS: usize = 64;

#[derive(Clone)]
pub struct SqliteStore {
    /// The log's database file, for readers with a connection of their own (the bulk log
    /// reader).
    path: PathBuf,
    /// The read models' database file (see `read_models_path`).
    read_models_path: PathBuf,
    /// The connection that applies migrations (one at a time, behind its lock).
    migrator: Arc<Mutex<SqliteConnection>>,
    /// The one connection that writes projection pages: rusqlite on the read-model file
    /// alone, used from a blocking thread. Its transactions never wait for an append.
    projection_writer: Arc<std::sync::Mutex<rusqlite::Connection>>,
    /// The one connection that appends to the log (see `sqlite::append`).
    appender: Arc<std::sync::Mutex<rusqlite::Connection>>,
    /// Checkpoints the write-ahead log after appends, off the appending thread.
    checkpointer: Arc<append::Checkpointer>,
    pool: SqlitePool,
    insert_statements: Arc<Vec<(usize, String)>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SqliteStore")
    }
}

fn insert_statement(rows: usize) -> String {
    let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES {placeholders}")
}

/// Reads a stored time: the form bahi writes directly, any other RFC 3339 through chrono.
pub(super) fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    if let Some(time) = bahi_domain::timestamp::parse_utc(text) {
        return Ok(time);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt(format!("bad time {text:?}")))
}

fn event_from_row(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        position: row.try_get(0)?,
        stream_id: row.try_get(1)?,
        stream_version: row.try_get(2)?,
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        schema_version: row.try_get(5)?,
        recorded_at: parse_time(row.try_get::<&str, _>(6)?)?,
        payload: row.try_get(7)?,
        metadata: row.try_get(8)?,
        hash: hash_from_bytes(row.try_get::<&[u8], _>(9)?)?,
    })
}

/// The read models live beside the log in `<database>.read`: a file that holds only what
/// the log can rebuild, with a write lock of its own.
pub fn read_models_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".read");
    PathBuf::from(name)
}

/// The schema the read-model file is attached as, on every connection that reads it.
const READ_MODELS_SCHEMA: &str = "read_models";
/// Applies the read-model migrations the read-model file does not have yet (see
/// `SQLITE_READ_MODELS`), in one transaction, on a connection of its own: unqualified
/// `CREATE TABLE` creates in a connection's main file, and here that is the read file.
fn migrate_read_models(path: &Path) -> Result<(), StoreError> {
    let mut connection = rusqlite::Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let applied: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let migrations = SQLITE_READ_MODELS
        .iter()
        .filter_map(|version| SQLITE.iter().find(|m| m.version == *version))
        .chain(SQLITE_READ_FILE);
    for (count, migration) in (1..).zip(migrations) {
        if count > applied {
            transaction.execute_batch(migration.sql)?;
            transaction.pragma_update(None, "user_version", count)?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// Attaches the read-model file to a sqlx connection: WAL like the log, but
/// `synchronous=NORMAL`, since a projection transaction lost to a power cut is projected
/// again from its checkpoint (rows and checkpoint commit together).
async fn attach_read_models(
    connection: &mut SqliteConnection,
    read_models_path: &Path,
    cache_size: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!("ATTACH DATABASE ? AS {READ_MODELS_SCHEMA}")))
        .bind(read_models_path.to_string_lossy().into_owned())
        .execute(&mut *connection)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "PRAGMA {READ_MODELS_SCHEMA}.journal_mode = WAL; PRAGMA {READ_MODELS_SCHEMA}.synchronous = NORMAL; \
         PRAGMA {READ_MODELS_SCHEMA}.cache_size = {cache_size};"
    )))
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Opens the projection writer on the read-model file: WAL, `synchronous=NORMAL` as in
/// `attach_read_models`.
fn open_projection_writer(read_models_path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let connection = rusqlite::Connection::open_with_flags(
        read_models_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(10))?;
    // Only a new, empty file takes this; an existing file keeps its page size. Against
    // 4 KiB pages, a million gateway events rebuilt 10% faster (83-91k -> 96-97k ev/s) and a
    // million-row statement streamed in 0.70 s instead of 0.76-0.80 s (BENCHMARKS.md). The
    // log's own file keeps 4 KiB: larger pages made its appends slower.
    connection.pragma_update(None, "page_size", READ_MODELS_PAGE_SIZE)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // A multi-row INSERT with ON CONFLICT keeps a statement journal of every page it
    // changes; in a temporary file that was a pwrite per page, 41% of a rebuild's writing
    // thread in a profile. In memory it is a copy.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.pragma_update(None, "cache_size", PROJECTION_CACHE)?;
    connection.set_prepared_statement_cache_capacity(PROJECTION_STATEMENTS);
    Ok(connection)
}

impl SqliteStore {
    /// Opens the file, creating it when missing.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(url, true).await
    }

    /// Opens the file only if it exists: offline commands read a ledger, they never start one.
    pub async fn open_existing(url: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(url, false).await
    }

    async fn open_with(url: &str, create: bool) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // The triggers on `events` can abort a multi-row INSERT, so SQLite keeps a
            // statement journal for it; in a temporary file that cost a pwrite per page
            // (9% of the writer connection's time in a profile). In memory it is a copy.
            .pragma("temp_store", "MEMORY");
        let filename = options.get_filename();
        if url.contains(":memory:") || url.contains("mode=memory") || filename.as_os_str().is_empty() {
            return Err(StoreError::UnsupportedUrl(format!(
                "{url} (an in-memory SQLite database: bahi keeps its log in a file, e.g. sqlite://bahi.db)"
            )));
        }
        let path = filename.to_path_buf();
        if !create && !path.exists() {
            return Err(StoreError::NoDatabase(path.display().to_string()));
        }
        let read_models_path = read_models_path(&path);
        // Migrations of the log's file need no read-model file: migration 4 names `main`.
        let migrator = SqliteConnection::connect_with(&options).await?;
        let projection_writer = Arc::new(std::sync::Mutex::new(open_projection_writer(&read_models_path)?));
        // Readers stream ordered ranges and get 8 MiB of page cache each, so that a
        // streamed statement stays small in memory.
        let attached = read_models_path.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_connect(move |connection, _| {
                let attached = attached.clone();
                Box::pin(async move { attach_read_models(connection, &attached, READER_CACHE).await })
            })
            .connect_with(options.pragma("cache_size", READER_CACHE))
            .await?;
        let insert_statements = INSERT_CHUNK_SIZES.iter().map(|&rows| (rows, insert_statement(rows))).collect();
        let appender = Arc::new(std::sync::Mutex::new(append::open_appender(&path)?));
        let checkpointer = Arc::new(append::Checkpointer::spawn(&path)?);
        Ok(SqliteStore {
            path,
            read_models_path,
            migrator: Arc::new(Mutex::new(migrator)),
            projection_writer,
            appender,
            checkpointer,
            pool,
            insert_statements: Arc::new(insert_statements),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_models_path(&self) -> &Path {
        &self.read_models_path
    }

    /// See `Store::close`.
    pub async fn close(&self) {
        let files = [self.path.clone(), self.read_models_path.clone()];
        let emptied = tokio::task::spawn_blocking(move || {
            for file in files {
                match empty_write_ahead_log(&file) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(file = %file.display(), "another connection kept the write-ahead log at stop");
                    }
                    Err(error) => {
                        tracing::warn!(%error, file = %file.display(), "could not empty the write-ahead log at stop");
                    }
                }
            }
        })
        .await;
        if let Err(error) = emptied {
            tracing::warn!(%error, "the write-ahead log checkpoint at stop failed");
        }
        self.pool.close().await;
    }

    /// Empties every projection and applies every page `pages` brings, then moves every
    /// checkpoint to the last page's position, all in one transaction on the read-model file
    /// (see `projector::rebuild_projections`). An error or a page that fails rolls it all
    /// back: the read models stay as they were.
    pub async fn rebuild_projections(
        &self,
        mut pages: tokio::sync::mpsc::Receiver<Result<PlannedPage, StoreError>>,
    ) -> Result<i64, StoreError> {
        let writer = self.projection_writer.clone();
        on_blocking_thread(writer, "rebuild", move |connection| {
            connection.pragma_update(None, "cache_size", REBUILD_CACHE)?;
            let rebuilt = rebuild_on(connection, &mut pages);
            connection.pragma_update(None, "cache_size", PROJECTION_CACHE)?;
            // The transaction is committed or rolled back by now: give the pages back.
            connection.execute_batch("PRAGMA shrink_memory")?;
            rebuilt
        })
        .await
    }
}

fn rebuild_on(
    connection: &mut rusqlite::Connection,
    pages: &mut tokio::sync::mpsc::Receiver<Result<PlannedPage, StoreError>>,
) -> Result<i64, StoreError> {
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for statement in super::projection_reset_statements() {
        transaction.execute(&statement, [])?;
    }
    // The tables are empty now: their secondary indexes are dropped and built again after
    // the last page, from sorted keys, instead of being kept up to date row by row (the
    // ledger's time index is one B-tree insert per entry otherwise). DDL is transactional in
    // SQLite: a failed rebuild rolls back to the indexes as they were.
    let indexes = secondary_indexes(&transaction)?;
    for (name, _) in &indexes {
        transaction.execute(&format!("DROP INDEX \"{name}\""), [])?;
    }
    let mut position = 0;
    while let Some(page) = pages.blocking_recv() {
        let page = page?;
        for batch in &page.batches {
            batch::write(&transaction, batch)?;
        }
        position = page.last_position;
    }
    for (_, definition) in &indexes {
        transaction.execute(definition, [])?;
    }
    for projection in bahi_projections::PROJECTIONS {
        transaction.execute(
            "INSERT INTO projection_checkpoints (name, position) VALUES (?1, ?2)",
            rusqlite::params![projection.name, position],
        )?;
    }
    transaction.commit()?;
    Ok(position)
}

/// The name and `CREATE INDEX` statement of every index the migrations declared on a
/// projection's table (not the primary keys, which SQLite makes itself and lists without SQL).
fn secondary_indexes(transaction: &rusqlite::Transaction<'_>) -> Result<Vec<(String, String)>, StoreError> {
    let tables: Vec<&str> =
        bahi_projections::PROJECTIONS.iter().flat_map(|projection| projection.tables.iter().copied()).collect();
    let mut statement = transaction.prepare(
        "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
    )?;
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)))?;
    let mut indexes = Vec::new();
    for row in rows {
        let (name, table, definition) = row?;
        if tables.contains(&table.as_str()) {
            indexes.push((name, definition));
        }
    }
    Ok(indexes)
}

impl EventStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut writer = self.migrator.lock().await;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS bahi_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )
        .execute(&mut *writer)
        .await?;
        for migration in SQLITE {
            let mut transaction = writer.begin_with("BEGIN IMMEDIATE").await?;
            let applied: Option<String> = sqlx::query_scalar("SELECT checksum FROM bahi_migrations WHERE version = ?")
                .bind(migration.version)
                .fetch_optional(&mut *transaction)
                .await?;
            match applied {
                Some(stored) if stored == checksum(migration) => {}
                Some(_) => {
                    return Err(StoreError::Migration(format!(
                        "migration {} ({}) was edited after it was applied; migrations are append-only",
                        migration.version, migration.name
                    )));
                }
                None => {
                    sqlx::raw_sql(migration.sql).execute(&mut *transaction).await?;
                    sqlx::query(
                        "INSERT INTO bahi_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(migration.version)
                    .bind(migration.name)
                    .bind(checksum(migration))
                    .bind(format_recorded_at(Utc::now()))
                    .execute(&mut *transaction)
                    .await?;
                }
            }
            transaction.commit().await?;
        }
        // A new or deleted read-model file gets its tables here; its projections then start
        // again from the beginning of the log. (Its IMMEDIATE transaction waits for any
        // projection page in progress at the read file's lock.)
        let path = self.read_models_path.clone();
        let migrated = tokio::task::spawn_blocking(move || migrate_read_models(&path)).await;
        drop(writer);
        migrated.map_err(|error| StoreError::Migration(format!("the read-model migration failed: {error}")))?
    }

    async fn head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        let row = sqlx::query("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok((0, bahi_domain::chain::GENESIS_HASH)),
            Some(row) => Ok((row.try_get(0)?, hash_from_bytes(row.try_get::<&[u8], _>(1)?)?)),
        }
    }

    async fn read_after(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, payload, metadata, hash \
             FROM events WHERE position > ? ORDER BY position LIMIT ?",
        )
        .bind(after)
        .bind(limit.clamp(1, MAX_READ_PAGE))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn append(&self, expected_head: i64, events: &[StoredEvent]) -> Result<(), StoreError> {
        // The rows are copied so that the blocking thread owns them; that is tens of
        // microseconds against a commit of a millisecond or more.
        let appender = self.appender.clone();
        let statements = self.insert_statements.clone();
        let events = events.to_vec();
        let checkpointer = self.checkpointer.clone();
        on_blocking_thread(appender, "append", move |connection| {
            let appended = append::append(connection, &statements, expected_head, &events);
            checkpointer.committed();
            appended
        })
        .await
    }

    async fn checkpoint(&self, projection: &str) -> Result<i64, StoreError> {
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = ?")
            .bind(projection)
            .fetch_optional(&self.pool)
            .await?;
        Ok(position.unwrap_or(0))
    }

    async fn apply_projections(
        &self,
        projections: &[&str],
        from_position: i64,
        batches: Vec<RowBatch>,
        position: i64,
    ) -> Result<bool, StoreError> {
        // A rebuild-sized page inserts at random places all over the read-model B-trees,
        // which outgrow the live pages' 64 MiB page cache; with a small cache, pages were
        // evicted and read again within one transaction. Such a page gets 256 MiB for its
        // transaction.
        let large = batches.iter().map(RowBatch::rows).sum::<usize>() > LARGE_PAGE_ROWS;
        let writer = self.projection_writer.clone();
        let projections: Vec<String> = projections.iter().map(|name| (*name).to_owned()).collect();
        on_blocking_thread(writer, "projection", move |connection| {
            if large {
                connection.pragma_update(None, "cache_size", LARGE_PAGE_CACHE)?;
            }
            let applied = apply_on(connection, &projections, from_position, &batches, position);
            if large {
                connection.pragma_update(None, "cache_size", PROJECTION_CACHE)?;
            }
            applied
        })
        .await
    }

    async fn reset_projections(&self) -> Result<(), StoreError> {
        // Deferred, not IMMEDIATE: IMMEDIATE would also lock the log's file, which this
        // transaction does not write.
        let mut transaction = self.pool.begin().await?;
        for statement in super::projection_reset_statements() {
            sqlx::query(AssertSqlSafe(statement)).execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn dump_table(&self, table: &str) -> Result<Vec<String>, StoreError> {
        if !is_dumpable_table(table) {
            return Err(StoreError::Corrupt(format!("{table} is not a read-model table")));
        }
        let columns: Vec<String> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid")))
                .fetch_all(&self.pool)
                .await?;
        Ok(sqlx::query_scalar(AssertSqlSafe(super::dump_query(table, &columns))).fetch_all(&self.pool).await?)
    }
}

/// Copies every page of `file`'s write-ahead log into it and truncates the log to zero
/// bytes (a TRUNCATE checkpoint), trying for up to five seconds while other connections
/// hold it. Returns false when they held it all that time.
fn empty_write_ahead_log(file: &Path) -> Result<bool, StoreError> {
    let connection = rusqlite::Connection::open_with_flags(
        file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(std::time::Duration::from_millis(100))?;
    // A checkpoint already running on another connection (the checkpointer's, woken by the
    // last commit) makes this one return busy at once, without waiting: so try again.
    for _ in 0..50 {
        // The first column is 1 when another connection kept the checkpoint from finishing.
        let busy: i64 = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy == 0 {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(false)
}

/// Runs `work` on a blocking thread with one of the store's rusqlite connections, held for
/// the whole call. A panic there is reported as an error naming `thread`; the transaction it
/// held was rolled back when its connection guard unwound.
async fn on_blocking_thread<T: Send + 'static>(
    connection: Arc<std::sync::Mutex<rusqlite::Connection>>,
    thread: &'static str,
    work: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let outcome = tokio::task::spawn_blocking(move || {
        let mut connection = connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut connection)
    })
    .await;
    outcome.map_err(|error| StoreError::Corrupt(format!("the {thread} thread failed: {error}")))?
}

/// Applies a page of projection rows and moves the checkpoints, in one transaction on the
/// read-model file (the only file this connection has, so `BEGIN IMMEDIATE` locks nothing
/// of the log's).
fn apply_on(
    connection: &mut rusqlite::Connection,
    projections: &[String],
    from_position: i64,
    batches: &[RowBatch],
    position: i64,
) -> Result<bool, StoreError> {
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for projection in projections {
        let current: Option<i64> = transaction
            .query_row("SELECT position FROM projection_checkpoints WHERE name = ?1", [projection], |row| row.get(0))
            .optional()?;
        if current.unwrap_or(0) != from_position {
            return Ok(false);
        }
    }
    for batch in batches {
        batch::write(&transaction, batch)?;
    }
    for projection in projections {
        transaction.execute(
            "INSERT INTO projection_checkpoints (name, position) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            rusqlite::params![projection, position],
        )?;
    }
    transaction.commit()?;
    Ok(true)
}
