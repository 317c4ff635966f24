//! PostgreSQL: writes a planned `RowBatch` with one UNNEST statement per table, so a page
//! costs a handful of round trips instead of one per row.

use bahi_projections::LedgerEntryRow;
use bahi_projections::batch::{CallRow, DailyUsageRow, OrgEventRow, RowBatch};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;
use sqlx::postgres::PgCopyIn;

use crate::store::StoreError;

/// Rows per statement, whatever a batch holds. PostgreSQL materializes a multi-array UNNEST
/// before inserting it, and past `work_mem` it spills to disk (a whole run of a million
/// events took 17.8-20.3 s that way, BENCHMARKS.md). Batches are a page's now, at most
/// 10,000 events, but nothing here relies on it.
const STATEMENT_ROWS: usize = 10_000;

/// One column of a batch, gathered from its rows.
fn column<'a, T, V>(rows: &'a [T], get: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(get).collect()
}

/// Writes every row of `batch` inside the caller's transaction.
pub async fn write(connection: &mut PgConnection, batch: &RowBatch) -> Result<(), StoreError> {
    for rows in batch.orgs.chunks(STATEMENT_ROWS) {
        sqlx::query(
            "INSERT INTO read_orgs (org_id, display_name, plan, environment, registered_at, position) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[]) \
             ON CONFLICT (org_id) DO UPDATE SET display_name = excluded.display_name, plan = excluded.plan, \
             environment = excluded.environment, registered_at = excluded.registered_at, position = excluded.position",
        )
        .bind(column(rows, |row| row.org_id.as_str()))
        .bind(column(rows, |row| row.display_name.as_str()))
        .bind(column(rows, |row| row.plan.as_str()))
        .bind(column(rows, |row| row.environment.as_str()))
        .bind(column(rows, |row| row.registered_at))
        .bind(column(rows, |row| row.position))
        .execute(&mut *connection)
        .await?;
    }
    for rows in batch.api_keys.chunks(STATEMENT_ROWS) {
        sqlx::query(
            "INSERT INTO read_api_keys (key_id, org_id, name, display_prefix, scopes, created_at, expires_at, revoked_at, position) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], \
             $7::timestamptz[], $8::timestamptz[], $9::bigint[]) \
             ON CONFLICT (key_id) DO UPDATE SET org_id = excluded.org_id, name = excluded.name, \
             display_prefix = excluded.display_prefix, scopes = excluded.scopes, created_at = excluded.created_at, \
             expires_at = excluded.expires_at, revoked_at = coalesce(read_api_keys.revoked_at, excluded.revoked_at), \
             position = excluded.position",
        )
        .bind(column(rows, |row| row.key_id.as_str()))
        .bind(column(rows, |row| row.org_id.as_str()))
        .bind(column(rows, |row| row.name.as_deref()))
        .bind(column(rows, |row| row.display_prefix.as_str()))
        .bind(column(rows, |row| row.scopes.as_str()))
        .bind(column(rows, |row| row.created_at))
        .bind(column(rows, |row| row.expires_at))
        .bind(column(rows, |row| row.revoked_at))
        .bind(column(rows, |row| row.position))
        .execute(&mut *connection)
        .await?;
    }
    for rows in batch.key_revocations.chunks(STATEMENT_ROWS) {
        sqlx::query(
            "UPDATE read_api_keys AS k SET revoked_at = coalesce(k.revoked_at, u.revoked_at), position = u.position \
             FROM UNNEST($1::text[], $2::timestamptz[], $3::bigint[]) AS u(key_id, revoked_at, position) \
             WHERE k.key_id = u.key_id",
        )
        .bind(column(rows, |row| row.key_id.as_str()))
        .bind(column(rows, |row| row.revoked_at))
        .bind(column(rows, |row| row.position))
        .execute(&mut *connection)
        .await?;
    }
    // Ledger entries and org events are keyed by (org, position): an event gives at most one
    // row of each, and a page is applied once (its checkpoint is compared and moved in this
    // transaction), so a key can never be inserted twice. They are plain inserts, without
    // `ON CONFLICT DO NOTHING`, which probes each index before inserting: that made 100,000
    // ledger rows take 643-744 ms instead of 479-523 ms (psql, BENCHMARKS.md). A duplicate
    // would be a broken invariant, and fails the page instead of passing unseen.
    //
    // Both go in with a binary COPY, which PostgreSQL takes faster than any INSERT, except
    // ledger entries that carry no balance of their own (a hold expiry of an org whose
    // latest balance the planner does not know): their statement looks up the org's previous
    // entry, which is never in this batch, so writing them after the others changes nothing
    // it finds. A rebuild has none (`Planner::from_empty_tables`).
    let (balanced, without_balance): (Vec<&LedgerEntryRow>, Vec<&LedgerEntryRow>) =
        batch.ledger_entries.iter().partition(|row| row.balance_after_micros.is_some());
    copy_in(connection, LEDGER_ENTRIES_COPY, &balanced, |out, row| encode_ledger_entry(out, row)).await?;
    copy_in(connection, ORG_EVENTS_COPY, &batch.org_events, encode_org_event).await?;
    for rows in without_balance.chunks(STATEMENT_ROWS) {
        // Such a row repeats the org's previous entry: the planner filled every balance it
        // could from the entries it saw, so what is left is already in the table (a
        // statement does not see its own rows, and it need not).
        sqlx::query(
            "INSERT INTO read_ledger_entries (org_id, position, entry_type, occurred_at, occurred_day, reference, description, \
             call_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, input_tokens, output_tokens, \
             debit_micros, credit_micros, released_micros, balance_after_micros) \
             SELECT u.org_id, u.position, u.entry_type, u.occurred_at, u.occurred_day, u.reference, u.description, u.call_id, \
             u.credential_kind, u.credential_id, u.agent_id, u.agent_name, u.act_for, u.model, u.input_tokens, \
             u.output_tokens, u.debit_micros, u.credit_micros, u.released_micros, \
             coalesce(u.balance_after_micros, (SELECT e.balance_after_micros FROM read_ledger_entries e \
             WHERE e.org_id = u.org_id AND e.position < u.position ORDER BY e.position DESC LIMIT 1), 0) \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::bigint[], \
             $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[]) \
             AS u(org_id, position, entry_type, occurred_at, occurred_day, reference, description, call_id, credential_kind, \
             credential_id, agent_id, agent_name, act_for, model, input_tokens, output_tokens, debit_micros, credit_micros, \
             released_micros, balance_after_micros)",
        )
        .bind(column(rows, |row| row.org_id.as_str()))
        .bind(column(rows, |row| row.position))
        .bind(column(rows, |row| row.entry_type))
        .bind(column(rows, |row| row.occurred_at))
        .bind(column(rows, |row| row.occurred_day.as_str()))
        .bind(column(rows, |row| row.reference.as_str()))
        .bind(column(rows, |row| row.description.as_deref()))
        .bind(column(rows, |row| row.call_id.as_deref()))
        .bind(column(rows, |row| row.credential_kind.as_deref()))
        .bind(column(rows, |row| row.credential_id.as_deref()))
        .bind(column(rows, |row| row.agent_id.as_deref()))
        .bind(column(rows, |row| row.agent_name.as_deref()))
        .bind(column(rows, |row| row.act_for.as_deref()))
        .bind(column(rows, |row| row.model.as_deref()))
        .bind(column(rows, |row| row.input_tokens))
        .bind(column(rows, |row| row.output_tokens))
        .bind(column(rows, |row| row.debit_micros))
        .bind(column(rows, |row| row.credit_micros))
        .bind(column(rows, |row| row.released_micros))
        .bind(column(rows, |row| row.balance_after_micros))
        .execute(&mut *connection)
        .await?;
    }
    if !batch.calls.is_empty() {
        // A batch's calls are nearly always new: they go in with a binary COPY, inside a
        // savepoint. A call already in the table (authorized again after its retention
        // ended, or written by an earlier page) makes the COPY fail as a whole, and then
        // the upsert does the batch's work instead, with its insert-if-missing semantics.
        sqlx::query("SAVEPOINT copy_calls").execute(&mut *connection).await?;
        match copy_in(connection, CALLS_COPY, &batch.calls, encode_call).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT copy_calls").execute(&mut *connection).await?;
            }
            Err(StoreError::Database(sqlx::Error::Database(error))) if error.is_unique_violation() => {
                sqlx::query("ROLLBACK TO SAVEPOINT copy_calls").execute(&mut *connection).await?;
                upsert_calls(connection, &batch.calls).await?;
            }
            Err(error) => return Err(error),
        }
    }
    for rows in batch.settlements.chunks(STATEMENT_ROWS) {
        sqlx::query(
            "UPDATE read_calls AS c SET input_tokens = u.input_tokens, output_tokens = u.output_tokens, \
             cost_micros = u.cost_micros, status = u.status, settled_at = u.settled_at, settled_position = u.position \
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::timestamptz[], $7::bigint[]) \
             AS u(call_id, input_tokens, output_tokens, cost_micros, status, settled_at, position) \
             WHERE c.call_id = u.call_id",
        )
        .bind(column(rows, |row| row.call_id.as_str()))
        .bind(column(rows, |row| row.input_tokens))
        .bind(column(rows, |row| row.output_tokens))
        .bind(column(rows, |row| row.cost_micros))
        .bind(column(rows, |row| row.status.as_str()))
        .bind(column::<_, DateTime<Utc>>(rows, |row| row.settled_at))
        .bind(column(rows, |row| row.position))
        .execute(&mut *connection)
        .await?;
    }
    for rows in batch.expiries.chunks(STATEMENT_ROWS) {
        sqlx::query(
            "UPDATE read_calls AS c SET expired_position = u.position \
             FROM UNNEST($1::text[], $2::bigint[]) AS u(call_id, position) WHERE c.call_id = u.call_id",
        )
        .bind(column(rows, |row| row.call_id.as_str()))
        .bind(column(rows, |row| row.position))
        .execute(&mut *connection)
        .await?;
    }
    write_daily_usage(connection, &batch.daily_usage()).await
}

/// Adds the batch's usage to `read_usage_daily`, each row only to one that has not seen its
/// position yet (the same rows applied twice count once).
async fn write_daily_usage(connection: &mut PgConnection, rows: &[DailyUsageRow]) -> Result<(), StoreError> {
    for rows in rows.chunks(STATEMENT_ROWS) {
        sqlx::query(
            "INSERT INTO read_usage_daily AS d (org_id, day, agent_id, agent_name, act_for, model, credential_kind, \
             credential_id, calls, input_tokens, output_tokens, debit_micros, position) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[]) \
             ON CONFLICT (org_id, day, agent_id, agent_name, act_for, model, credential_kind, credential_id) \
             DO UPDATE SET calls = d.calls + excluded.calls, input_tokens = d.input_tokens + excluded.input_tokens, \
             output_tokens = d.output_tokens + excluded.output_tokens, \
             debit_micros = d.debit_micros + excluded.debit_micros, position = excluded.position \
             WHERE d.position < excluded.position",
        )
        .bind(column(rows, |row| row.key.org_id.as_str()))
        .bind(column(rows, |row| row.key.day.as_str()))
        .bind(column(rows, |row| row.key.agent_id.as_str()))
        .bind(column(rows, |row| row.key.agent_name.as_str()))
        .bind(column(rows, |row| row.key.act_for.as_str()))
        .bind(column(rows, |row| row.key.model.as_str()))
        .bind(column(rows, |row| row.key.credential_kind.as_str()))
        .bind(column(rows, |row| row.key.credential_id.as_str()))
        .bind(column(rows, |row| row.calls))
        .bind(column(rows, |row| row.input_tokens))
        .bind(column(rows, |row| row.output_tokens))
        .bind(column(rows, |row| row.debit_micros))
        .bind(column(rows, |row| row.position))
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Inserts calls if missing; a settlement or expiry in the same batch also goes onto a row
/// that already existed, as the UPDATEs after the insert would have.
async fn upsert_calls(connection: &mut PgConnection, calls: &[CallRow]) -> Result<(), StoreError> {
    for rows in calls.chunks(STATEMENT_ROWS) {
        let settled = |get: fn(&bahi_projections::SettledCallRow) -> Option<i64>| {
            column(rows, move |row| row.settlement.as_ref().and_then(get))
        };
        // Insert-if-missing; a call settled or expired in the same page also sets that on a
        // row that already existed, as the UPDATEs after the insert would have. Every
        // settlement column is non-null when there is a settlement, so `coalesce` keeps the
        // row's own values exactly when there is none.
        sqlx::query(
            "INSERT INTO read_calls (call_id, org_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, \
             hold_micros, authorized_at, input_tokens, output_tokens, cost_micros, status, settled_at, \
             authorized_position, settled_position, expired_position) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::bigint[], $10::timestamptz[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], \
             $15::timestamptz[], $16::bigint[], $17::bigint[], $18::bigint[]) \
             ON CONFLICT (call_id) DO UPDATE SET input_tokens = coalesce(excluded.input_tokens, read_calls.input_tokens), \
             output_tokens = coalesce(excluded.output_tokens, read_calls.output_tokens), \
             cost_micros = coalesce(excluded.cost_micros, read_calls.cost_micros), \
             status = coalesce(excluded.status, read_calls.status), \
             settled_at = coalesce(excluded.settled_at, read_calls.settled_at), \
             settled_position = coalesce(excluded.settled_position, read_calls.settled_position), \
             expired_position = coalesce(excluded.expired_position, read_calls.expired_position) \
             WHERE excluded.settled_position IS NOT NULL OR excluded.expired_position IS NOT NULL",
        )
        .bind(column(rows, |row| row.authorized.call_id.as_str()))
        .bind(column(rows, |row| row.authorized.org_id.as_str()))
        .bind(column(rows, |row| row.authorized.credential_kind.as_str()))
        .bind(column(rows, |row| row.authorized.credential_id.as_str()))
        .bind(column(rows, |row| row.authorized.agent_id.as_deref()))
        .bind(column(rows, |row| row.authorized.agent_name.as_deref()))
        .bind(column(rows, |row| row.authorized.act_for.as_str()))
        .bind(column(rows, |row| row.authorized.model.as_str()))
        .bind(column(rows, |row| row.authorized.hold_micros))
        .bind(column(rows, |row| row.authorized.authorized_at))
        .bind(settled(|settled| Some(settled.input_tokens)))
        .bind(settled(|settled| Some(settled.output_tokens)))
        .bind(settled(|settled| Some(settled.cost_micros)))
        .bind(column(rows, |row| row.settlement.as_ref().map(|settled| settled.status.as_str())))
        .bind(column(rows, |row| row.settlement.as_ref().map(|settled| settled.settled_at)))
        .bind(column(rows, |row| row.authorized.position))
        .bind(settled(|settled| Some(settled.position)))
        .bind(column(rows, |row| row.expired_position))
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Bytes sent to the server per `CopyData` message.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// Rows of one binary `COPY … FROM STDIN`, in PostgreSQL's binary copy format.
struct CopyRows {
    bytes: Vec<u8>,
    rows: u64,
}

impl CopyRows {
    fn new() -> Self {
        let mut bytes = Vec::with_capacity(COPY_CHUNK_BYTES + 4096);
        // The signature, the flags (no OIDs) and the header extension's length.
        bytes.extend_from_slice(crate::store::postgres::bulk::SIGNATURE);
        bytes.extend_from_slice(&0_i32.to_be_bytes());
        bytes.extend_from_slice(&0_i32.to_be_bytes());
        Self { bytes, rows: 0 }
    }

    fn row(&mut self, fields: i16) {
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
    }

    fn text(&mut self, value: &str) -> Result<(), StoreError> {
        let length = i32::try_from(value.len()).map_err(|_| StoreError::Corrupt("a text of 2 GiB or more".into()))?;
        self.bytes.extend_from_slice(&length.to_be_bytes());
        self.bytes.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn optional_text(&mut self, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(value) => self.text(value),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    fn null(&mut self) {
        self.bytes.extend_from_slice(&(-1_i32).to_be_bytes());
    }

    fn bigint(&mut self, value: i64) {
        self.bytes.extend_from_slice(&8_i32.to_be_bytes());
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    fn optional_bigint(&mut self, value: Option<i64>) {
        match value {
            Some(value) => self.bigint(value),
            None => self.null(),
        }
    }

    /// A `timestamptz`: microseconds since 2000-01-01 UTC, computed as sqlx computes them
    /// when it binds a `DateTime<Utc>`, so a copied row holds what an INSERT would store.
    fn timestamp(&mut self, value: DateTime<Utc>) -> Result<(), StoreError> {
        let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|day| day.and_hms_opt(0, 0, 0));
        let microseconds = epoch
            .and_then(|epoch| (value.naive_utc() - epoch).num_microseconds())
            .ok_or_else(|| StoreError::Corrupt(format!("a time out of PostgreSQL's range: {value}")))?;
        self.bigint(microseconds);
        Ok(())
    }

    fn optional_timestamp(&mut self, value: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        match value {
            Some(value) => self.timestamp(value),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    /// Sends what is buffered once it is a chunk's worth.
    async fn send_full(&mut self, copy: &mut PgCopyIn<&mut PgConnection>) -> Result<(), StoreError> {
        if self.bytes.len() >= COPY_CHUNK_BYTES {
            copy.send(std::mem::take(&mut self.bytes)).await?;
            self.bytes.reserve(COPY_CHUNK_BYTES + 4096);
        }
        Ok(())
    }

    /// Ends the copy: the trailer, the last chunk, and the server's count of rows, which
    /// must be every row encoded.
    async fn finish(mut self, mut copy: PgCopyIn<&mut PgConnection>) -> Result<(), StoreError> {
        self.bytes.extend_from_slice(&(-1_i16).to_be_bytes());
        copy.send(self.bytes).await?;
        let copied = copy.finish().await?;
        if copied != self.rows {
            return Err(StoreError::Corrupt(format!("COPY took {copied} rows of {}", self.rows)));
        }
        Ok(())
    }
}

/// Inserts `rows` with one binary COPY (`statement`), each encoded by `encode`; nothing
/// when there are none. Fails on a key already in the table.
async fn copy_in<T>(
    connection: &mut PgConnection,
    statement: &str,
    rows: &[T],
    encode: impl Fn(&mut CopyRows, &T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut copy = connection.copy_in_raw(statement).await?;
    let mut out = CopyRows::new();
    for row in rows {
        encode(&mut out, row)?;
        out.send_full(&mut copy).await?;
    }
    out.finish(copy).await
}

const LEDGER_ENTRIES_COPY: &str = "COPY read_ledger_entries (org_id, position, entry_type, occurred_at, occurred_day, \
     reference, description, call_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, \
     input_tokens, output_tokens, debit_micros, credit_micros, released_micros, balance_after_micros) \
     FROM STDIN (FORMAT binary)";

fn encode_ledger_entry(out: &mut CopyRows, row: &LedgerEntryRow) -> Result<(), StoreError> {
    out.row(20);
    out.text(&row.org_id)?;
    out.bigint(row.position);
    out.text(row.entry_type)?;
    out.timestamp(row.occurred_at)?;
    out.text(&row.occurred_day)?;
    out.text(&row.reference)?;
    out.optional_text(row.description.as_deref())?;
    out.optional_text(row.call_id.as_deref())?;
    out.optional_text(row.credential_kind.as_deref())?;
    out.optional_text(row.credential_id.as_deref())?;
    out.optional_text(row.agent_id.as_deref())?;
    out.optional_text(row.agent_name.as_deref())?;
    out.optional_text(row.act_for.as_deref())?;
    out.optional_text(row.model.as_deref())?;
    out.optional_bigint(row.input_tokens);
    out.optional_bigint(row.output_tokens);
    out.bigint(row.debit_micros);
    out.bigint(row.credit_micros);
    out.bigint(row.released_micros);
    out.optional_bigint(row.balance_after_micros);
    Ok(())
}

const CALLS_COPY: &str = "COPY read_calls (call_id, org_id, credential_kind, credential_id, agent_id, agent_name, \
     act_for, model, hold_micros, authorized_at, input_tokens, output_tokens, cost_micros, status, settled_at, \
     authorized_position, settled_position, expired_position) FROM STDIN (FORMAT binary)";

fn encode_call(out: &mut CopyRows, row: &CallRow) -> Result<(), StoreError> {
    let authorized = &row.authorized;
    let settlement = row.settlement.as_ref();
    out.row(18);
    out.text(&authorized.call_id)?;
    out.text(&authorized.org_id)?;
    out.text(&authorized.credential_kind)?;
    out.text(&authorized.credential_id)?;
    out.optional_text(authorized.agent_id.as_deref())?;
    out.optional_text(authorized.agent_name.as_deref())?;
    out.text(&authorized.act_for)?;
    out.text(&authorized.model)?;
    out.bigint(authorized.hold_micros);
    out.timestamp(authorized.authorized_at)?;
    out.optional_bigint(settlement.map(|settled| settled.input_tokens));
    out.optional_bigint(settlement.map(|settled| settled.output_tokens));
    out.optional_bigint(settlement.map(|settled| settled.cost_micros));
    out.optional_text(settlement.map(|settled| settled.status.as_str()))?;
    out.optional_timestamp(settlement.map(|settled| settled.settled_at))?;
    out.bigint(authorized.position);
    out.optional_bigint(settlement.map(|settled| settled.position));
    out.optional_bigint(row.expired_position);
    Ok(())
}

const ORG_EVENTS_COPY: &str = "COPY read_org_events (org_id, position) FROM STDIN (FORMAT binary)";

fn encode_org_event(out: &mut CopyRows, row: &OrgEventRow) -> Result<(), StoreError> {
    out.row(2);
    out.text(&row.org_id)?;
    out.bigint(row.position);
    Ok(())
}
