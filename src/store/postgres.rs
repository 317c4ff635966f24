//! PostgreSQL: the scale-out engine. Every append is one transaction that first moves the
//! single `log_head` row by compare-and-swap (so writers on different nodes serialize and
//! positions stay gapless), then inserts the batch with one UNNEST statement, then notifies
//! other nodes once per commit.

use std::time::Duration;

use bahi_projections::batch::{PlannedPage, RowBatch};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};

use super::migrate::{POSTGRES, checksum};
use super::{EventStore, MAX_READ_PAGE, StoreError, StoredEvent, hash_from_bytes, is_dumpable_table};

/// The channel other nodes LISTEN on; the payload is the new head position.
pub const NOTIFY_CHANNEL: &str = "bahi_events";

/// How long a rebuild waits to empty the read models while readers hold them.
pub const RESET_LOCK_TIMEOUT_MILLISECONDS: u64 = 3_000;

/// Arbitrary constant for the advisory lock that serializes migrations across nodes.
const MIGRATION_LOCK_KEY: i64 = 0x6261_6869_6d69_6772;

#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

/// The columns' types are fixed by the migrations, so the values are decoded without sqlx's
/// per-value type check; a NULL or a malformed value is still an error.
fn event_from_row(row: &PgRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        position: row.try_get_unchecked(0)?,
        stream_id: row.try_get_unchecked(1)?,
        stream_version: row.try_get_unchecked(2)?,
        event_id: row.try_get_unchecked(3)?,
        event_type: row.try_get_unchecked(4)?,
        schema_version: row.try_get_unchecked(5)?,
        recorded_at: row.try_get_unchecked::<DateTime<Utc>, _>(6)?,
        payload: row.try_get_unchecked(7)?,
        metadata: row.try_get_unchecked(8)?,
        hash: hash_from_bytes(row.try_get_unchecked::<&[u8], _>(9)?)?,
    })
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let pool =
            PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
        Ok(PostgresStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Empties every projection and applies every run `pages` brings, then moves every
    /// checkpoint to the last run's position, all in one transaction (see
    /// `projector::rebuild_projections`). An error or a run that fails rolls it all back:
    /// the read models, their keys and indexes stay as they were.
    ///
    /// The tables written by plain inserts (`TABLES_KEYED_AFTER_REBUILD`) lose their primary
    /// keys, and every projection table its secondary indexes, until the last run is in; they
    /// are then built from sorted keys. Rows inserted in log order would otherwise land
    /// all over each B-tree (1,000 orgs interleave), one descent and often a page split each.
    /// Measured with psql on the 1M gateway log's rows: 4.6 s to fill the heaps and build the
    /// keys after, against 11.9 s inserting in log order with the keys in place.
    ///
    /// The `TRUNCATE` that starts it takes an exclusive lock on the read models until the
    /// commit: readers wait for the rebuilt tables rather than see them half-filled. It waits
    /// at most `RESET_LOCK_TIMEOUT_MILLISECONDS` for readers already there, as
    /// `reset_projections` does.
    pub async fn rebuild_projections(
        &self,
        mut pages: tokio::sync::mpsc::Receiver<Result<PlannedPage, StoreError>>,
    ) -> Result<i64, StoreError> {
        let tables: Vec<&str> = super::projection_reset_tables().collect();
        let mut transaction = self.begin_emptied().await?;
        // Keys and indexes as the catalog holds them, so that the ones built at the end are
        // the ones the migrations declared.
        let keys: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT t.relname::text, k.conname::text, pg_get_constraintdef(k.oid) FROM pg_constraint k \
             JOIN pg_class t ON t.oid = k.conrelid \
             WHERE k.contype = 'p' AND t.relname = ANY($1) AND t.relnamespace = current_schema()::regnamespace \
             ORDER BY t.relname",
        )
        .bind(TABLES_KEYED_AFTER_REBUILD)
        .fetch_all(&mut *transaction)
        .await?;
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.relname::text, pg_get_indexdef(x.indexrelid) FROM pg_index x \
             JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
             WHERE t.relname = ANY($1) AND t.relnamespace = current_schema()::regnamespace \
             AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid) \
             ORDER BY i.relname",
        )
        .bind(&tables)
        .fetch_all(&mut *transaction)
        .await?;
        for (table, key, _) in &keys {
            sqlx::query(AssertSqlSafe(format!("ALTER TABLE \"{table}\" DROP CONSTRAINT \"{key}\"")))
                .execute(&mut *transaction)
                .await?;
        }
        for (index, _) in &indexes {
            sqlx::query(AssertSqlSafe(format!("DROP INDEX \"{index}\""))).execute(&mut *transaction).await?;
        }
        let mut position = 0;
        while let Some(page) = pages.recv().await {
            let page = page?;
            for batch in &page.batches {
                super::postgres_batch::write(&mut transaction, batch).await?;
            }
            position = page.last_position;
        }
        // A repeated key, a broken invariant, fails here and rolls the rebuild back.
        for (table, key, definition) in &keys {
            sqlx::query(AssertSqlSafe(format!("ALTER TABLE \"{table}\" ADD CONSTRAINT \"{key}\" {definition}")))
                .execute(&mut *transaction)
                .await?;
        }
        for (_, definition) in &indexes {
            sqlx::query(AssertSqlSafe(definition.clone())).execute(&mut *transaction).await?;
        }
        let names: Vec<&str> = bahi_projections::PROJECTIONS.iter().map(|projection| projection.name).collect();
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, position) SELECT name, $2 FROM UNNEST($1::text[]) AS u(name)",
        )
        .bind(&names)
        .bind(position)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(position)
    }

    /// Begins a transaction whose first statement empties every projection table and the
    /// checkpoints with one `TRUNCATE`, after waiting at most `RESET_LOCK_TIMEOUT_MILLISECONDS`
    /// for readers' locks (`reset_projections` says why).
    async fn begin_emptied(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let tables: Vec<&str> = super::projection_reset_tables().collect();
        let mut transaction = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!("SET LOCAL lock_timeout = {RESET_LOCK_TIMEOUT_MILLISECONDS}")))
            .execute(&mut *transaction)
            .await?;
        sqlx::query(AssertSqlSafe(format!("TRUNCATE TABLE {}", tables.join(", ")))).execute(&mut *transaction).await?;
        Ok(transaction)
    }
}

/// The projection tables whose rows `postgres_batch::write` inserts without looking for an
/// existing key (no `ON CONFLICT`, no `UPDATE`, no lookup of an earlier row: a rebuild's
/// planner fills every balance itself), so a rebuild may write them without their primary
/// keys. `read_calls` keeps its key: its settlements and expiries update rows by call id,
/// and its COPY falls back to an upsert on a repeated one.
const TABLES_KEYED_AFTER_REBUILD: [&str; 2] = ["read_ledger_entries", "read_org_events"];

impl EventStore for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut *transaction).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS bahi_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut *transaction)
        .await?;
        for migration in POSTGRES {
            let applied: Option<String> = sqlx::query_scalar("SELECT checksum FROM bahi_migrations WHERE version = $1")
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
                    sqlx::query("INSERT INTO bahi_migrations (version, name, checksum) VALUES ($1, $2, $3)")
                        .bind(migration.version)
                        .bind(migration.name)
                        .bind(checksum(migration))
                        .execute(&mut *transaction)
                        .await?;
                }
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        let row = sqlx::query("SELECT position, hash FROM log_head WHERE id").fetch_one(&self.pool).await?;
        Ok((row.try_get(0)?, hash_from_bytes(row.try_get::<&[u8], _>(1)?)?))
    }

    async fn read_after(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = limit.clamp(1, MAX_READ_PAGE);
        // Each row is converted as it arrives instead of after `fetch_all` has gathered the
        // page: a page of rows held at once kept sqlx's receive buffer from being reused and
        // grew two vectors by doubling, and the kernel zeroed fresh pages for all three (a
        // fifth of the reader's CPU in a profile of loading).
        let mut rows = sqlx::query(
            "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, payload, metadata, hash \
             FROM events WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch(&self.pool);
        let mut events = Vec::new();
        while let Some(row) = rows.try_next().await? {
            if events.is_empty() {
                // Reserved at the first row, so that the runner's frequent empty reads
                // allocate nothing.
                events.reserve_exact(usize::try_from(limit).unwrap_or(1));
            }
            events.push(event_from_row(&row)?);
        }
        Ok(events)
    }

    async fn append(&self, expected_head: i64, events: &[StoredEvent]) -> Result<(), StoreError> {
        let Some(last) = events.last() else { return Ok(()) };
        let mut positions = Vec::with_capacity(events.len());
        let mut stream_ids = Vec::with_capacity(events.len());
        let mut stream_versions = Vec::with_capacity(events.len());
        let mut event_ids = Vec::with_capacity(events.len());
        let mut event_types = Vec::with_capacity(events.len());
        let mut schema_versions = Vec::with_capacity(events.len());
        let mut recorded_ats = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut metadatas = Vec::with_capacity(events.len());
        let mut hashes = Vec::with_capacity(events.len());
        for event in events {
            positions.push(event.position);
            stream_ids.push(event.stream_id.as_str());
            stream_versions.push(event.stream_version);
            event_ids.push(event.event_id.as_str());
            event_types.push(event.event_type.as_str());
            schema_versions.push(event.schema_version);
            recorded_ats.push(event.recorded_at);
            payloads.push(event.payload.as_slice());
            metadatas.push(event.metadata.as_slice());
            hashes.push(event.hash.as_slice());
        }
        // One statement, so one round trip and one implicit transaction: the compare-and-swap
        // on log_head, the UNNEST insert (only when the swap moved the head; a data-modifying
        // WITH always runs to completion) and one pg_notify (CASE, so only when it moved), all
        // committed together or not at all; the reply comes after the commit is flushed.
        // Under READ COMMITTED a concurrent writer's swap makes this UPDATE wait, then re-check
        // `position = $3` against the new row and match nothing, so nothing is inserted or
        // notified and the head is reported moved.
        let moved: bool = sqlx::query_scalar(
            "WITH head AS ( \
                 UPDATE log_head SET position = $1, hash = $2 WHERE id AND position = $3 RETURNING position \
             ), inserted AS ( \
                 INSERT INTO events (position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, payload, metadata, hash) \
                 SELECT * FROM UNNEST($4::bigint[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::int[], $10::timestamptz[], $11::bytea[], $12::bytea[], $13::bytea[]) \
                 WHERE EXISTS (SELECT 1 FROM head) \
             ) \
             SELECT CASE WHEN EXISTS (SELECT 1 FROM head) THEN (SELECT true FROM pg_notify($14, $1::text)) ELSE false END",
        )
        .bind(last.position)
        .bind(last.hash.as_slice())
        .bind(expected_head)
        .bind(&positions)
        .bind(&stream_ids)
        .bind(&stream_versions)
        .bind(&event_ids)
        .bind(&event_types)
        .bind(&schema_versions)
        .bind(&recorded_ats)
        .bind(&payloads)
        .bind(&metadatas)
        .bind(&hashes)
        .bind(NOTIFY_CHANNEL)
        .fetch_one(&self.pool)
        .await?;
        if !moved {
            let (actual, _) = self.head().await?;
            return Err(StoreError::HeadMoved { expected: expected_head, actual });
        }
        Ok(())
    }

    async fn checkpoint(&self, projection: &str) -> Result<i64, StoreError> {
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
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
        let mut transaction = self.pool.begin().await?;
        // The read models hold nothing the log cannot rebuild, and the checkpoint commits
        // with its rows, so this transaction need not wait for its WAL flush: a crash can
        // lose only the last pages, which are then projected again from their checkpoint
        // (the SQLite read file runs with synchronous=NORMAL for the same reason).
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *transaction).await?;
        for projection in projections {
            sqlx::query(
                "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING",
            )
            .bind(*projection)
            .execute(&mut *transaction)
            .await?;
            // The row lock serializes runners on different nodes; the comparison makes a
            // runner that lost the race apply nothing.
            let current: i64 =
                sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
                    .bind(*projection)
                    .fetch_one(&mut *transaction)
                    .await?;
            if current != from_position {
                return Ok(false);
            }
        }
        for batch in &batches {
            super::postgres_batch::write(&mut transaction, batch).await?;
        }
        sqlx::query("UPDATE projection_checkpoints SET position = $2 WHERE name = ANY($1)")
            .bind(projections)
            .bind(position)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// One `TRUNCATE` of every read-model table and the checkpoints. A `DELETE` left every
    /// previous row behind as a dead tuple until a vacuum: each rebuild of the 1M-event log
    /// added a read model's worth of them, and after ten, `read_org_events` held 10M dead
    /// rows in 682 MB for 1M live ones (on this machine's server, whose autovacuum is off).
    /// `TRUNCATE` gives each table a fresh file at commit. It takes an exclusive lock for
    /// its short transaction, so readers wait that long instead of seeing the tables empty
    /// a moment earlier; a rebuild empties them either way. While it waits for the lock,
    /// every new reader of those tables queues behind it, so it waits at most
    /// `RESET_LOCK_TIMEOUT_MILLISECONDS` (a long statement export, say) and then fails the
    /// rebuild, which can be run again, rather than stall the API's reads.
    async fn reset_projections(&self) -> Result<(), StoreError> {
        self.begin_emptied().await?.commit().await?;
        Ok(())
    }

    async fn dump_table(&self, table: &str) -> Result<Vec<String>, StoreError> {
        if !is_dumpable_table(table) {
            return Err(StoreError::Corrupt(format!("{table} is not a read-model table")));
        }
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await?;
        Ok(sqlx::query_scalar(AssertSqlSafe(super::dump_query(table, &columns))).fetch_all(&self.pool).await?)
    }
}
