//! PostgreSQL: the scale-out engine. Every append is one transaction that first moves the
//! single `log_head` row by compare-and-swap (so writers on different nodes serialize and
//! positions stay gapless), then inserts the batch with one UNNEST statement, then notifies
//! other nodes once per commit.

pub(crate) mod batch;
pub(crate) mod bulk;
pub(crate) mod read_models;

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

/// How long `reset_projections` waits to empty the read models while readers hold them.
pub const RESET_LOCK_TIMEOUT_MILLISECONDS: u64 = 3_000;

/// Arbitrary constant for the advisory lock that serializes migrations across nodes.
const MIGRATION_LOCK_KEY: i64 = 0x6261_6869_6d69_6772;

/// Arbitrary constant for the advisory lock that every append takes for its transaction.
const APPEND_LOCK_KEY: i64 = 0x6261_6869_6170_7064;
/// How long a node holding the append lock (`LogLock`) may sit between its statements
/// before the server ends its session, and with it the lock: a node paused or cut off while
/// holding it holds up every other node's appends at most this long.
const LOG_LOCK_IDLE_TIMEOUT: &str = "2s";
/// How long taking the append lock waits before the batch is refused as contended.
const LOG_LOCK_WAIT_TIMEOUT: &str = "5s";

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

/// How long a statement waits for a connection: while the database is away (a restart),
/// sqlx keeps trying to connect until then, and the request is then answered 503
/// `unavailable` (nothing was sent) rather than left waiting; the writer's batch waiting
/// behind it fails the same way. It was 10 s, longer than clients wait.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

impl PostgresStore {
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new().max_connections(8).acquire_timeout(ACQUIRE_TIMEOUT).connect(url).await?;
        Ok(PostgresStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Takes the append lock for a transaction of its own (see `LogLock`).
    pub async fn lock_log(&self) -> Result<LogLock, StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('idle_in_transaction_session_timeout', $1, true), \
                    set_config('lock_timeout', $2, true), pg_advisory_xact_lock($3)",
        )
        .bind(LOG_LOCK_IDLE_TIMEOUT)
        .bind(LOG_LOCK_WAIT_TIMEOUT)
        .bind(APPEND_LOCK_KEY)
        .execute(&mut *transaction)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(database) if database.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                StoreError::LogBusy
            }
            _ => StoreError::Database(error),
        })?;
        Ok(LogLock { transaction })
    }

    /// Replays every page `pages` brings into new read-model tables and puts them in place
    /// of the old ones with their checkpoints, all in one transaction (see
    /// `projector::rebuild_projections`). An error or a page that fails rolls it all back:
    /// the read models, their keys and indexes stay as they were.
    ///
    /// The new tables are built aside, in the schema `REBUILD_SCHEMA`, which the transaction
    /// puts first on its search path so that the pages' statements write there. Readers
    /// see the old read models until the swap at the end: it drops them and moves the new
    /// ones in, under an exclusive lock held only from the swap to the commit (it waits at
    /// most `SWAP_LOCK_TIMEOUT_MILLISECONDS` at a time for readers already there, and tries
    /// again up to `SWAP_ATTEMPTS` times before it fails the rebuild).
    ///
    /// The tables written by plain inserts (`TABLES_KEYED_AFTER_REBUILD`) get their primary
    /// keys, and every table its secondary indexes, only once the last page is in; they are
    /// then built from sorted keys. Rows inserted in log order would otherwise land all over
    /// each B-tree (1,000 orgs interleave), one descent and often a page split each.
    /// Measured with psql on the 1M gateway log's rows: 4.6 s to fill the heaps and build the
    /// keys after, against 11.9 s inserting in log order with the keys in place.
    pub async fn rebuild_projections(
        &self,
        mut pages: tokio::sync::mpsc::Receiver<Result<PlannedPage, StoreError>>,
    ) -> Result<i64, StoreError> {
        let tables: Vec<&str> = super::projection_reset_tables().collect();
        let mut transaction = self.pool.begin().await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text").fetch_one(&mut *transaction).await?;
        let Aside { keys_after, indexes } = make_tables_aside(&mut transaction, &schema, &tables).await?;
        execute(&mut transaction, format!("SET LOCAL search_path = {REBUILD_SCHEMA}")).await?;
        let mut position = 0;
        while let Some(page) = pages.recv().await {
            let page = page?;
            for batch in &page.batches {
                batch::write(&mut transaction, batch).await?;
            }
            position = page.last_position;
        }
        // A repeated key, a broken invariant, fails here and rolls the rebuild back.
        for statement in keys_after.into_iter().chain(indexes) {
            execute(&mut transaction, statement).await?;
        }
        let names: Vec<&str> = bahi_projections::PROJECTIONS.iter().map(|projection| projection.name).collect();
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, position) SELECT name, $2 FROM UNNEST($1::text[]) AS u(name)",
        )
        .bind(&names)
        .bind(position)
        .execute(&mut *transaction)
        .await?;
        swap_in_rebuilt(&mut transaction, &schema, &tables).await?;
        transaction.commit().await?;
        Ok(position)
    }
}

/// The statements that finish a rebuild's new tables once their rows are in: the keys of
/// `TABLES_KEYED_AFTER_REBUILD`, then every secondary index.
struct Aside {
    keys_after: Vec<String>,
    indexes: Vec<String>,
}

/// Makes an empty copy of every table of `tables` (in `schema`) in `REBUILD_SCHEMA`: the same
/// columns, owner and grants, and the primary keys that the pages' statements need; the
/// rest of the keys and the indexes are returned, to be built after the rows.
async fn make_tables_aside(
    transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    schema: &str,
    tables: &[&str],
) -> Result<Aside, StoreError> {
    // Keys and indexes as the catalog holds them, so that the new tables get the ones
    // the migrations declared, under the same names.
    let keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT t.relname::text, k.conname::text, pg_get_constraintdef(k.oid) FROM pg_constraint k \
         JOIN pg_class t ON t.oid = k.conrelid \
         WHERE k.contype = 'p' AND t.relname = ANY($1) AND t.relnamespace = current_schema()::regnamespace \
         ORDER BY t.relname",
    )
    .bind(tables)
    .fetch_all(&mut **transaction)
    .await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.relname::text, pg_get_indexdef(x.indexrelid) FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         WHERE t.relname = ANY($1) AND t.relnamespace = current_schema()::regnamespace \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid) \
         ORDER BY i.relname",
    )
    .bind(tables)
    .fetch_all(&mut **transaction)
    .await?;
    let indexes = indexes
        .iter()
        .map(|(name, definition)| aside_index(definition, schema).ok_or_else(|| unexpected_index(name, definition)))
        .collect::<Result<Vec<String>, StoreError>>()?;
    let (keyed_first, keyed_after): (Vec<_>, Vec<_>) =
        keys.iter().partition(|(table, _, _)| !TABLES_KEYED_AFTER_REBUILD.contains(&table.as_str()));

    execute(transaction, format!("CREATE SCHEMA {REBUILD_SCHEMA}")).await?;
    for table in tables {
        // LIKE copies the columns, their types, collations and NOT NULLs, and nothing else.
        execute(transaction, format!("CREATE TABLE {REBUILD_SCHEMA}.\"{table}\" (LIKE \"{schema}\".\"{table}\")"))
            .await?;
    }
    // An operator's grants on the read models (a read-only role for auditors, say) and
    // their owner go over to the new tables.
    let access: Vec<String> = sqlx::query_scalar(
        "SELECT format('GRANT %s ON %I.%I TO %s%s', a.privilege_type, $2::text, c.relname, \
         CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, \
         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
         FROM pg_class c, aclexplode(c.relacl) a \
         WHERE c.relname = ANY($1) AND c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' \
         AND a.grantee <> c.relowner \
         UNION ALL \
         SELECT format('ALTER TABLE %I.%I OWNER TO %I', $2::text, c.relname, pg_get_userbyid(c.relowner)) \
         FROM pg_class c WHERE c.relname = ANY($1) AND c.relnamespace = current_schema()::regnamespace \
         AND c.relkind = 'r' AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)",
    )
    .bind(tables)
    .bind(REBUILD_SCHEMA)
    .fetch_all(&mut **transaction)
    .await?;
    for statement in access {
        execute(transaction, statement).await?;
    }
    for (table, key, definition) in &keyed_first {
        execute(transaction, add_key(table, key, definition)).await?;
    }
    Ok(Aside {
        keys_after: keyed_after.iter().map(|(table, key, definition)| add_key(table, key, definition)).collect(),
        indexes,
    })
}

/// Where a rebuild builds the new read models, inside its transaction: no other session
/// ever sees this schema.
const REBUILD_SCHEMA: &str = "bahi_rebuild";

/// How long a rebuild waits at a time to take the old read models from their readers, and
/// how many times it tries before it fails: about 10 s in all. Readers that come while it
/// waits queue behind it, so each wait is short.
const SWAP_LOCK_TIMEOUT_MILLISECONDS: u64 = 1_000;
const SWAP_ATTEMPTS: u32 = 8;

async fn execute(
    transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    statement: String,
) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(statement)).execute(&mut **transaction).await?;
    Ok(())
}

fn add_key(table: &str, key: &str, definition: &str) -> String {
    format!("ALTER TABLE {REBUILD_SCHEMA}.\"{table}\" ADD CONSTRAINT \"{key}\" {definition}")
}

/// `definition` (an index of `schema`'s read models, as `pg_get_indexdef` gives it: `CREATE
/// [UNIQUE] INDEX name ON schema.table USING …`) made for the same table in the rebuild's
/// schema; None for any other shape.
fn aside_index(definition: &str, schema: &str) -> Option<String> {
    let (head, rest) = definition.split_once(" ON ")?;
    let (table, method) = rest.split_once(" USING ")?;
    let table = table.strip_prefix(&format!("{schema}.")).or_else(|| table.strip_prefix(&format!("\"{schema}\".")))?;
    Some(format!("{head} ON {REBUILD_SCHEMA}.{table} USING {method}"))
}

fn unexpected_index(name: &str, definition: &str) -> StoreError {
    StoreError::Corrupt(format!("the read-model index {name} has a definition a rebuild cannot copy: {definition}"))
}

/// Drops the old read models and moves the rebuilt ones into `schema`, in the caller's
/// transaction. Taking the old tables from their readers waits at most
/// `SWAP_LOCK_TIMEOUT_MILLISECONDS` at a time (readers that come meanwhile queue behind the
/// wait), so on a lock timeout it steps back, lets them through and tries again, up to
/// `SWAP_ATTEMPTS` times.
async fn swap_in_rebuilt(
    transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    schema: &str,
    tables: &[&str],
) -> Result<(), StoreError> {
    execute(transaction, format!("SET LOCAL lock_timeout = {SWAP_LOCK_TIMEOUT_MILLISECONDS}")).await?;
    let drop = format!(
        "DROP TABLE {}",
        tables.iter().map(|table| format!("\"{schema}\".\"{table}\"")).collect::<Vec<_>>().join(", ")
    );
    let mut attempt = 1;
    loop {
        execute(transaction, "SAVEPOINT swap".into()).await?;
        match execute(transaction, drop.clone()).await {
            Ok(()) => break,
            Err(StoreError::Database(sqlx::Error::Database(error)))
                if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) && attempt < SWAP_ATTEMPTS =>
            {
                execute(transaction, "ROLLBACK TO SAVEPOINT swap".into()).await?;
                tracing::info!(attempt, "readers hold the read models; the rebuild waits to swap them");
                tokio::time::sleep(Duration::from_millis(200)).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
    for table in tables {
        execute(transaction, format!("ALTER TABLE {REBUILD_SCHEMA}.\"{table}\" SET SCHEMA \"{schema}\"")).await?;
    }
    execute(transaction, format!("DROP SCHEMA {REBUILD_SCHEMA}")).await?;
    Ok(())
}

/// PostgreSQL's SQLSTATE for a lock timeout.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The projection tables whose rows `postgres::batch::write` inserts without looking for an
/// existing key (no `ON CONFLICT`, no `UPDATE`, no lookup of an earlier row: a rebuild's
/// planner fills every balance itself), so a rebuild may write them without their primary
/// keys. The new `read_calls` has its key from the start: its settlements and expiries
/// update rows by call id, and its COPY falls back to an upsert on a repeated one.
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
        head_on(&self.pool).await
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
        if append_on(&self.pool, expected_head, events).await? {
            return Ok(());
        }
        let (actual, _) = self.head().await?;
        Err(StoreError::HeadMoved { expected: expected_head, actual })
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
            batch::write(&mut transaction, batch).await?;
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
    /// its short transaction. While it waits for the lock, every new reader of those tables
    /// queues behind it, so it waits at most `RESET_LOCK_TIMEOUT_MILLISECONDS` (a long
    /// statement export, say) and then fails, rather than stall the API's reads. (`bahi
    /// rebuild` builds new tables aside instead: `rebuild_projections`.)
    async fn reset_projections(&self) -> Result<(), StoreError> {
        let tables: Vec<&str> = super::projection_reset_tables().collect();
        let mut transaction = self.pool.begin().await?;
        execute(&mut transaction, format!("SET LOCAL lock_timeout = {RESET_LOCK_TIMEOUT_MILLISECONDS}")).await?;
        execute(&mut transaction, format!("TRUNCATE TABLE {}", tables.join(", "))).await?;
        transaction.commit().await?;
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

/// The append lock held across several statements, by a node whose append lost the race
/// for the log head: while it holds it, no other node's append can commit, so the events it
/// reads, folds and decides after taking it are at the head, and its append cannot lose
/// again. Every append takes the same lock for its own transaction.
pub struct LogLock {
    transaction: sqlx::Transaction<'static, sqlx::Postgres>,
}

impl LogLock {
    /// Appends `events` after `expected_head` and commits, which releases the lock.
    pub async fn append(mut self, expected_head: i64, events: &[StoredEvent]) -> Result<(), StoreError> {
        match append_on(&mut *self.transaction, expected_head, events).await {
            Ok(true) => Ok(self.transaction.commit().await?),
            Ok(false) => {
                let (actual, _) = head_on(&mut *self.transaction).await?;
                self.release().await;
                Err(StoreError::HeadMoved { expected: expected_head, actual })
            }
            Err(error) => {
                self.release().await;
                Err(error)
            }
        }
    }

    /// Ends the transaction, appending nothing. A connection lost meanwhile has freed the
    /// lock already.
    pub async fn release(self) {
        if let Err(error) = self.transaction.rollback().await {
            tracing::debug!(%error, "releasing the append lock failed; its session is gone");
        }
    }
}

/// Position and hash of the last event, read on `executor`.
async fn head_on<'c>(executor: impl sqlx::PgExecutor<'c>) -> Result<(i64, [u8; 32]), StoreError> {
    let row = sqlx::query("SELECT position, hash FROM log_head WHERE id").fetch_one(executor).await?;
    Ok((row.try_get(0)?, hash_from_bytes(row.try_get::<&[u8], _>(1)?)?))
}

/// Appends `events` after `expected_head` in one statement on `executor`, taking the append
/// lock for its transaction. Returns false, appending nothing, when the head was elsewhere.
async fn append_on<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    expected_head: i64,
    events: &[StoredEvent],
) -> Result<bool, StoreError> {
    let Some(last) = events.last() else { return Ok(true) };
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
    // notified and the head is reported moved. The swap also needs the append lock
    // (`LogLock`), which a node that lost the race holds while it catches up and decides
    // again; it is released after the commit is visible.
    let moved: bool = sqlx::query_scalar(
        "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock($15)), head AS ( \
             UPDATE log_head SET position = $1, hash = $2 \
             WHERE id AND position = $3 AND EXISTS (SELECT 1 FROM locked) RETURNING position \
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
    .bind(APPEND_LOCK_KEY)
    .fetch_one(executor)
    .await?;
    Ok(moved)
}
