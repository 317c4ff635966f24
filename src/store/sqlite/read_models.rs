//! SQLite SQL of the audit read models: applying their row operations, and reading them.
//! Times are stored as fixed-width RFC 3339 text (microseconds, `Z`), so text comparison is
//! time comparison.

use bahi_domain::chain::format_recorded_at;
use bahi_reports::{AttributionRow, GroupKey, Period};
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Row};

use crate::store::read_models::{
    AttributionBind, AttributionQuery, AuditEvent, CallEvent, CallRecord, attribution_query, attribution_row, money,
    sql,
};
use crate::store::{StoreError, hash_from_bytes};

use crate::store::sqlite::parse_time;

fn optional_time(text: Option<&str>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(parse_time).transpose()
}

pub async fn audit_call(pool: &SqlitePool, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
    let row = sqlx::query(sql::AUDIT_CALL).bind(call_id).fetch_optional(pool).await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(CallRecord {
        call_id: row.try_get(0)?,
        org_id: row.try_get(1)?,
        credential_kind: row.try_get(2)?,
        credential_id: row.try_get(3)?,
        agent_id: row.try_get(4)?,
        agent_name: row.try_get(5)?,
        act_for: row.try_get(6)?,
        model: row.try_get(7)?,
        hold: money(row.try_get(8)?)?,
        authorized_at: parse_time(row.try_get::<&str, _>(9)?)?,
        input_tokens: row.try_get(10)?,
        output_tokens: row.try_get(11)?,
        cost: row.try_get::<Option<i64>, _>(12)?.map(money).transpose()?,
        status: row.try_get(13)?,
        settled_at: optional_time(row.try_get::<Option<&str>, _>(14)?)?,
    }))
}

pub async fn call_events(pool: &SqlitePool, call_id: &str) -> Result<Vec<CallEvent>, StoreError> {
    let rows = sqlx::query(sql::CALL_EVENTS).bind(call_id).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(CallEvent {
                position: row.try_get(0)?,
                event_type: row.try_get(1)?,
                hash: hash_from_bytes(row.try_get::<&[u8], _>(2)?)?,
                payload: row.try_get(3)?,
            })
        })
        .collect()
}

pub async fn org_events(
    pool: &SqlitePool,
    org_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = sqlx::query(sql::ORG_EVENTS).bind(org_id).bind(after).bind(limit).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(AuditEvent {
                position: row.try_get(0)?,
                event_type: row.try_get(1)?,
                recorded_at: parse_time(row.try_get::<&str, _>(2)?)?,
                payload: row.try_get(3)?,
                hash: hash_from_bytes(row.try_get::<&[u8], _>(4)?)?,
            })
        })
        .collect()
}

pub async fn org_exists(pool: &SqlitePool, org_id: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(sql::ORG_EXISTS).bind(org_id).fetch_optional(pool).await?;
    Ok(found.is_some())
}

pub async fn balance_before(
    pool: &SqlitePool,
    org_id: &str,
    before: DateTime<Utc>,
) -> Result<bahi_domain::Money, StoreError> {
    let micros: Option<i64> = sqlx::query_scalar(sql::BALANCE_BEFORE)
        .bind(org_id)
        .bind(format_recorded_at(before))
        .fetch_optional(pool)
        .await?;
    money(micros.unwrap_or(0))
}

/// The first position of the org's entries in `[from, until)` (bound: org, from, until),
/// found through the time index, so that the rows themselves are read as one range of the
/// primary key.
pub(super) const FIRST_POSITION: &str = "SELECT position FROM read_ledger_entries \
WHERE org_id = ? AND occurred_at >= ? AND occurred_at < ? ORDER BY occurred_at ASC, position ASC LIMIT 1";
/// The last position of the org's entries in `[from, until)`, as `FIRST_POSITION`.
pub(super) const LAST_POSITION: &str = "SELECT position FROM read_ledger_entries \
WHERE org_id = ? AND occurred_at >= ? AND occurred_at < ? ORDER BY occurred_at DESC, position DESC LIMIT 1";

/// The ledger entries of an org between two positions and two times, in log order (bound:
/// org, first and last position, from, until). `+occurred_at` keeps SQLite on the
/// primary-key range (rows arrive in position order, no sort) instead of the time index; the
/// time test still drops rows outside the period. The columns are `LedgerEntry`'s, in order.
pub(super) const LEDGER_ENTRIES_IN_RANGE: &str = concat!(
    "SELECT ",
    sql::statement_columns!(),
    " WHERE e.org_id = ? AND e.position >= ? AND e.position <= ? AND +e.occurred_at >= ? AND +e.occurred_at < ? \
     ORDER BY e.position"
);

pub async fn attribution(
    pool: &SqlitePool,
    org_id: &str,
    period: Period,
    group_by: &[GroupKey],
) -> Result<Vec<AttributionRow>, StoreError> {
    let AttributionQuery { sql, binds } = attribution_query(org_id, period, group_by);
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            AttributionBind::Text(text) => query.bind(text),
            AttributionBind::Time(time) => query.bind(format_recorded_at(time)),
        };
    }
    let rows = query.fetch_all(pool).await?;
    let key_count: usize = group_by.iter().map(|key| crate::store::read_models::group_columns(*key).len()).sum();
    rows.iter()
        .map(|row| {
            let keys =
                (0..key_count).map(|index| row.try_get::<Option<String>, _>(index)).collect::<Result<Vec<_>, _>>()?;
            let sums = [
                row.try_get(key_count)?,
                row.try_get(key_count + 1)?,
                row.try_get(key_count + 2)?,
                row.try_get(key_count + 3)?,
            ];
            attribution_row(group_by, keys.into_iter(), sums)
        })
        .collect()
}

impl crate::store::ReadModels for super::SqliteStore {
    async fn audit_call(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        audit_call(self.pool(), call_id).await
    }
    async fn call_events(&self, call_id: &str) -> Result<Vec<CallEvent>, StoreError> {
        call_events(self.pool(), call_id).await
    }
    async fn org_events(&self, org_id: &str, after: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        org_events(self.pool(), org_id, after, limit).await
    }
    async fn org_exists(&self, org_id: &str) -> Result<bool, StoreError> {
        org_exists(self.pool(), org_id).await
    }
    async fn balance_before(&self, org_id: &str, before: DateTime<Utc>) -> Result<bahi_domain::Money, StoreError> {
        balance_before(self.pool(), org_id, before).await
    }
    /// Read with rusqlite on a blocking thread of its own (`statement.rs`).
    async fn stream_ledger_entries(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        sender: crate::store::EntrySender,
    ) {
        let path = self.read_models_path().to_path_buf();
        let org_id = org_id.to_owned();
        // Kept here so that a reader that panics ends the stream with an error, not with a
        // closing balance as if every row had been read.
        let on_failure = sender.clone();
        let reader = tokio::task::spawn_blocking(move || {
            super::statement::stream_ledger_entries(&path, &org_id, from, until, &sender);
        });
        if let Err(error) = reader.await {
            tracing::error!(%error, "the statement reader thread failed");
            let _ = on_failure.send(Err(StoreError::Corrupt("the statement reader failed".into()))).await;
        }
    }
    async fn attribution_rows(
        &self,
        org_id: &str,
        period: Period,
        group_by: &[GroupKey],
    ) -> Result<Vec<AttributionRow>, StoreError> {
        attribution(self.pool(), org_id, period, group_by).await
    }
}
