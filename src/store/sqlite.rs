//! SQLite: one file, zero setup. One writer connection that appends with `BEGIN IMMEDIATE`
//! under `synchronous=FULL` in WAL mode (an acknowledged commit survives power loss), and a
//! separate pool for reads and read-model writes.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bahi_domain::chain::format_recorded_at;
use bahi_projections::batch::RowBatch;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};
use tokio::sync::Mutex;

use super::migrate::{SQLITE, checksum};
use super::{EventStore, MAX_READ_PAGE, StoreError, StoredEvent, hash_from_bytes, is_dumpable_table};

const EVENT_COLUMNS: &str =
    "position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, payload, metadata, hash";

/// Rows per INSERT statement. A batch is split into these fixed sizes so that only a handful
/// of distinct statements exist, each prepared once and cached.
const INSERT_CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// Page cache of the pool's connections (negative: KiB), 8 MiB.
const READER_CACHE: &str = "-8192";
/// Page cache for a projection transaction of more than LARGE_PAGE_ROWS rows, 256 MiB.
const LARGE_PAGE_CACHE: &str = "-262144";
/// Above any live page (PROJECTION_PAGE events at up to ~6 rows each), so that only rebuild
/// pages leave the writer's connection.
const LARGE_PAGE_ROWS: usize = 8_000;

#[derive(Clone)]
pub struct SqliteStore {
    /// The database file, for readers with a connection of their own (the bulk log reader,
    /// statements); `None` in memory.
    path: Option<PathBuf>,
    writer: Arc<Mutex<SqliteConnection>>,
    /// The connection appends go through (see `sqlite_append`), for a database file; in
    /// memory, appends use `writer`. Only the holder of `writer`'s lock uses it, so the two
    /// never meet at SQLite's write lock.
    appender: Option<Arc<std::sync::Mutex<rusqlite::Connection>>>,
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

pub(super) fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
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

impl SqliteStore {
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // The triggers on `events` can abort a multi-row INSERT, so SQLite keeps a
            // statement journal for it; in a temporary file that cost a pwrite per page
            // (9% of the writer connection's time in a profile). In memory it is a copy.
            .pragma("temp_store", "MEMORY");
        let filename = options.get_filename();
        let path =
            (filename != Path::new(":memory:") && !filename.as_os_str().is_empty()).then(|| filename.to_path_buf());
        // 64 MiB of page cache for the writer (default 2 MiB): the `streams` B-tree is written
        // at random places and is about 40 MiB at a million streams. Readers stream ordered
        // ranges and get 8 MiB each, so that a streamed statement stays small in memory.
        let writer = SqliteConnection::connect_with(&options.clone().pragma("cache_size", "-65536")).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.pragma("cache_size", READER_CACHE))
            .await?;
        let insert_statements = INSERT_CHUNK_SIZES.iter().map(|&rows| (rows, insert_statement(rows))).collect();
        let appender = match &path {
            Some(path) => Some(Arc::new(std::sync::Mutex::new(super::sqlite_append::open_appender(path)?))),
            None => None,
        };
        Ok(SqliteStore {
            path,
            writer: Arc::new(Mutex::new(writer)),
            appender,
            pool,
            insert_statements: Arc::new(insert_statements),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl EventStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
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
        Ok(())
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
        let mut writer = self.writer.lock().await;
        if let Some(appender) = &self.appender {
            // The rows are copied so that the blocking thread owns them; that is tens of
            // microseconds against a commit of a millisecond or more.
            let appender = appender.clone();
            let statements = self.insert_statements.clone();
            let events = events.to_vec();
            let appended = tokio::task::spawn_blocking(move || {
                let mut connection = appender.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                super::sqlite_append::append(&mut connection, &statements, expected_head, &events)
            })
            .await;
            drop(writer);
            // A panic on the blocking thread is reported as an error; the transaction it
            // held was rolled back when its connection guard unwound.
            return appended.map_err(|error| StoreError::Corrupt(format!("the append thread failed: {error}")))?;
        }
        let mut transaction = writer.begin_with("BEGIN IMMEDIATE").await?;
        let actual: i64 =
            sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(&mut *transaction).await?;
        if actual != expected_head {
            return Err(StoreError::HeadMoved { expected: expected_head, actual });
        }
        let mut remaining = events;
        while !remaining.is_empty() {
            let (rows, statement) = self
                .insert_statements
                .iter()
                .find(|(rows, _)| *rows <= remaining.len())
                .ok_or_else(|| StoreError::Corrupt("no insert chunk size fits".into()))?;
            let (chunk, rest) = remaining.split_at(*rows);
            let mut query = sqlx::query(AssertSqlSafe(statement.clone()));
            for event in chunk {
                query = query
                    .bind(event.position)
                    .bind(event.stream_id.as_str())
                    .bind(event.stream_version)
                    .bind(event.event_id.as_str())
                    .bind(event.event_type.as_str())
                    .bind(event.schema_version)
                    .bind(format_recorded_at(event.recorded_at))
                    .bind(event.payload.as_slice())
                    .bind(event.metadata.as_slice())
                    .bind(event.hash.as_slice());
            }
            query.execute(&mut *transaction).await?;
            remaining = rest;
        }
        transaction.commit().await?;
        Ok(())
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
        batches: &[RowBatch],
        position: i64,
    ) -> Result<bool, StoreError> {
        // A rebuild-sized page inserts at random places all over the read-model B-trees,
        // which outgrow the readers' 8 MiB page cache; with it, pages were evicted and read
        // again within one transaction. Such a page gets a large cache for its transaction.
        let large = batches.iter().map(RowBatch::rows).sum::<usize>() > LARGE_PAGE_ROWS;
        if !large {
            // Live pages take turns with the writer's commits on the writer's own connection
            // (a fair, first-come lock) instead of meeting it at SQLite's write lock, where the
            // loser sleeps in SQLite's busy handler (1, 2, 5 … 100 ms steps) and a projector
            // with pages queued can take the lock again and again: authorize+usage p99 was
            // 110-140 ms that way, 15 ms before projection pages were pipelined.
            let mut writer = self.writer.lock().await;
            return Self::apply_on(&mut writer, projections, from_position, batches, position).await;
        }
        let mut connection = self.pool.acquire().await?;
        if large {
            sqlx::query(AssertSqlSafe(format!("PRAGMA cache_size = {LARGE_PAGE_CACHE}")))
                .execute(&mut *connection)
                .await?;
        }
        let applied = Self::apply_on(&mut connection, projections, from_position, batches, position).await;
        if large {
            let reset = sqlx::query(AssertSqlSafe(format!("PRAGMA cache_size = {READER_CACHE}")));
            if reset.execute(&mut *connection).await.is_err() {
                // The rows are committed (or not) already; a connection that kept the large
                // cache must not serve readers, so it leaves the pool.
                let _ = connection.close().await;
            }
        }
        applied
    }

    async fn reset_projections(&self) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for projection in bahi_projections::PROJECTIONS {
            for table in projection.tables {
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&mut *transaction).await?;
            }
        }
        sqlx::query("DELETE FROM projection_checkpoints").execute(&mut *transaction).await?;
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

impl SqliteStore {
    async fn apply_on(
        connection: &mut SqliteConnection,
        projections: &[&str],
        from_position: i64,
        batches: &[RowBatch],
        position: i64,
    ) -> Result<bool, StoreError> {
        let mut transaction = connection.begin_with("BEGIN IMMEDIATE").await?;
        for projection in projections {
            let current: Option<i64> = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = ?")
                .bind(*projection)
                .fetch_optional(&mut *transaction)
                .await?;
            if current.unwrap_or(0) != from_position {
                return Ok(false);
            }
        }
        for batch in batches {
            super::sqlite_batch::write(&mut transaction, batch).await?;
        }
        for projection in projections {
            sqlx::query(
                "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            )
            .bind(*projection)
            .bind(position)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(true)
    }
}
