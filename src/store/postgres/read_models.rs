//! PostgreSQL SQL of the audit read models: applying their row operations, and reading them.

use bahi_reports::{AttributionRow, GroupKey, LedgerEntry, Period};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Row};

use crate::store::read_models::{
    AttributionBind, AttributionQuery, AuditEvent, CallEvent, CallRecord, EntrySender, STATEMENT_BATCH,
    attribution_query, attribution_row, money, sql,
};
use crate::store::{StoreError, hash_from_bytes};

pub async fn audit_call(pool: &PgPool, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
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
        authorized_at: row.try_get(9)?,
        input_tokens: row.try_get(10)?,
        output_tokens: row.try_get(11)?,
        cost: row.try_get::<Option<i64>, _>(12)?.map(money).transpose()?,
        status: row.try_get(13)?,
        settled_at: row.try_get(14)?,
    }))
}

pub async fn call_events(pool: &PgPool, call_id: &str) -> Result<Vec<CallEvent>, StoreError> {
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

pub async fn org_events(pool: &PgPool, org_id: &str, after: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = sqlx::query(sql::ORG_EVENTS).bind(org_id).bind(after).bind(limit).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(AuditEvent {
                position: row.try_get(0)?,
                event_type: row.try_get(1)?,
                recorded_at: row.try_get(2)?,
                payload: row.try_get(3)?,
                hash: hash_from_bytes(row.try_get::<&[u8], _>(4)?)?,
            })
        })
        .collect()
}

pub async fn org_exists(pool: &PgPool, org_id: &str) -> Result<bool, StoreError> {
    let found: Option<i32> = sqlx::query_scalar(sql::ORG_EXISTS).bind(org_id).fetch_optional(pool).await?;
    Ok(found.is_some())
}

pub async fn balance_before(
    pool: &PgPool,
    org_id: &str,
    before: DateTime<Utc>,
) -> Result<bahi_domain::Money, StoreError> {
    let micros: Option<i64> =
        sqlx::query_scalar(sql::BALANCE_BEFORE).bind(org_id).bind(before).fetch_optional(pool).await?;
    money(micros.unwrap_or(0))
}

fn entry_from_row(row: &PgRow) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        position: row.try_get(0)?,
        entry_type: row.try_get(1)?,
        occurred_at: row.try_get(2)?,
        reference: row.try_get(3)?,
        description: row.try_get(4)?,
        call_id: row.try_get(5)?,
        credential_kind: row.try_get(6)?,
        credential_id: row.try_get(7)?,
        agent_id: row.try_get(8)?,
        agent_name: row.try_get(9)?,
        act_for: row.try_get(10)?,
        model: row.try_get(11)?,
        input_tokens: row.try_get(12)?,
        output_tokens: row.try_get(13)?,
        debit: money(row.try_get(14)?)?,
        credit: money(row.try_get(15)?)?,
        hold_released: money(row.try_get(16)?)?,
        balance_after: money(row.try_get(17)?)?,
    })
}

pub async fn stream_ledger_entries(
    pool: &PgPool,
    org_id: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    sender: &EntrySender,
) -> Result<(), StoreError> {
    let mut rows = sqlx::query(concat!(
        "SELECT ",
        sql::statement_columns!(),
        " WHERE e.org_id = $1 AND e.occurred_at >= $2 AND e.occurred_at < $3 ORDER BY e.position"
    ))
    .bind(org_id)
    .bind(from)
    .bind(until)
    .fetch(pool);
    let mut batch = Vec::with_capacity(STATEMENT_BATCH);
    while let Some(row) = rows.try_next().await? {
        batch.push(entry_from_row(&row)?);
        if batch.len() == STATEMENT_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(STATEMENT_BATCH));
            if sender.send(Ok(full)).await.is_err() {
                // The reader went away (client disconnected): stop reading.
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = sender.send(Ok(batch)).await;
    }
    Ok(())
}

pub async fn attribution(
    pool: &PgPool,
    org_id: &str,
    period: Period,
    group_by: &[GroupKey],
) -> Result<Vec<AttributionRow>, StoreError> {
    let AttributionQuery { sql, binds } = attribution_query(org_id, period, group_by);
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            AttributionBind::Text(text) => query.bind(text),
            AttributionBind::Time(time) => query.bind(time),
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
                row.try_get::<i64, _>(key_count + 1)?,
                row.try_get::<i64, _>(key_count + 2)?,
                row.try_get::<i64, _>(key_count + 3)?,
            ];
            attribution_row(group_by, keys.into_iter(), sums)
        })
        .collect()
}

impl crate::store::ReadModels for super::PostgresStore {
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
    async fn stream_ledger_entries(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        sender: crate::store::EntrySender,
    ) {
        if let Err(error) = stream_ledger_entries(self.pool(), org_id, from, until, &sender).await {
            let _ = sender.send(Err(error)).await;
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
