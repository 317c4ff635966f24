//! Reads of the audit read models (ledger entries, calls, each org's events), the same on
//! both engines. The SQL lives in `sqlite_read_models.rs` and `postgres_read_models.rs`.

use bahi_domain::Money;
use bahi_reports::{AttributionRow, GroupKey, LedgerEntry, Period};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::{Store, StoreError, postgres_read_models, sqlite_read_models, sqlite_statement};

/// Ledger entries per message of a statement stream: large enough that the channel costs
/// nothing per row, small enough that memory stays flat.
pub const STATEMENT_BATCH: usize = 512;
/// Most groups an attribution report returns.
pub const MAX_ATTRIBUTION_GROUPS: usize = 50_000;

/// A call as the audit answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call_id: String,
    pub org_id: String,
    pub credential_kind: String,
    pub credential_id: String,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub act_for: String,
    pub model: String,
    pub hold: Money,
    pub authorized_at: DateTime<Utc>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost: Option<Money>,
    pub status: Option<String>,
    pub settled_at: Option<DateTime<Utc>>,
}

/// An event of the log as shown to auditors: its position, type, time, payload and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub position: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub payload: Vec<u8>,
    pub hash: [u8; 32],
}

/// Sender side of a statement stream: batches of entries in log order, or the error that
/// ended the stream.
pub type EntrySender = mpsc::Sender<Result<Vec<LedgerEntry>, StoreError>>;

pub(crate) fn money(micros: i64) -> Result<Money, StoreError> {
    Money::from_micros(micros).map_err(|_| StoreError::Corrupt(format!("amount of {micros} micro-rupees")))
}

/// The SQL expressions of each group key, shared by both engines (plain column names and
/// one CASE, no engine-specific functions).
pub(crate) fn group_columns(key: GroupKey) -> &'static [&'static str] {
    match key {
        GroupKey::Agent => &["agent_id", "agent_name"],
        GroupKey::ActFor => &["act_for"],
        GroupKey::Model => &["model"],
        GroupKey::ApiKey => &["CASE WHEN credential_kind = 'api_key' THEN credential_id END"],
        GroupKey::Day => &["occurred_day"],
    }
}

/// Fills an attribution row's keys from the text columns in `group_columns` order.
pub(crate) fn attribution_row(
    group_by: &[GroupKey],
    mut keys: impl Iterator<Item = Option<String>>,
    sums: [i64; 4],
) -> Result<AttributionRow, StoreError> {
    let mut row = AttributionRow::default();
    for key in group_by {
        match key {
            GroupKey::Agent => {
                row.agent_id = keys.next().flatten();
                row.agent_name = keys.next().flatten();
            }
            GroupKey::ActFor => row.act_for = keys.next().flatten(),
            GroupKey::Model => row.model = keys.next().flatten(),
            GroupKey::ApiKey => row.api_key = keys.next().flatten(),
            GroupKey::Day => row.day = keys.next().flatten(),
        }
    }
    let [calls, input_tokens, output_tokens, cost_micros] = sums;
    row.calls = calls;
    row.input_tokens = input_tokens;
    row.output_tokens = output_tokens;
    row.cost = money(cost_micros)?;
    Ok(row)
}

/// An attribution query: the key columns, then calls and sums (cast back to BIGINT because
/// PostgreSQL sums bigints as numeric), grouped by the keys.
pub(crate) fn attribution_sql(group_by: &[GroupKey], condition: &str) -> String {
    let columns: Vec<&str> = group_by.iter().flat_map(|key| group_columns(*key).iter().copied()).collect();
    let select = columns.iter().map(|column| format!("{column}, ")).collect::<String>();
    let group = if columns.is_empty() { String::new() } else { format!(" GROUP BY {}", columns.join(", ")) };
    format!(
        "SELECT {select}count(*), CAST(coalesce(sum(input_tokens), 0) AS BIGINT), \
         CAST(coalesce(sum(output_tokens), 0) AS BIGINT), CAST(coalesce(sum(debit_micros), 0) AS BIGINT) FROM read_ledger_entries WHERE {condition}{group} LIMIT {}",
        MAX_ATTRIBUTION_GROUPS + 1
    )
}

impl Store {
    pub async fn audit_call(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite_read_models::audit_call(store.pool(), call_id).await,
            Store::Postgres(store) => postgres_read_models::audit_call(store.pool(), call_id).await,
        }
    }

    /// The events of a call in log order: (position, type, hash).
    pub async fn call_events(&self, call_id: &str) -> Result<Vec<(i64, String, [u8; 32])>, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite_read_models::call_events(store.pool(), call_id).await,
            Store::Postgres(store) => postgres_read_models::call_events(store.pool(), call_id).await,
        }
    }

    /// An org's events after `after`, in log order, at most `limit`.
    pub async fn org_events(&self, org_id: &str, after: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite_read_models::org_events(store.pool(), org_id, after, limit).await,
            Store::Postgres(store) => postgres_read_models::org_events(store.pool(), org_id, after, limit).await,
        }
    }

    /// Whether the org exists in the directory read model.
    pub async fn org_exists(&self, org_id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite_read_models::org_exists(store.pool(), org_id).await,
            Store::Postgres(store) => postgres_read_models::org_exists(store.pool(), org_id).await,
        }
    }

    /// The org's balance after its last ledger entry before `before` (zero if none).
    pub async fn balance_before(&self, org_id: &str, before: DateTime<Utc>) -> Result<Money, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite_read_models::balance_before(store.pool(), org_id, before).await,
            Store::Postgres(store) => postgres_read_models::balance_before(store.pool(), org_id, before).await,
        }
    }

    /// Sends the org's ledger entries in `[from, until)` in log order, in batches, until done
    /// or the receiver goes away. A failure is sent as the stream's last message.
    pub async fn stream_ledger_entries(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        sender: EntrySender,
    ) {
        match self {
            Store::Sqlite(store) => {
                let path = store.read_models_path().to_path_buf();
                let org_id = org_id.to_owned();
                // Kept here so that a reader that panics ends the stream with an error, not
                // with a closing balance as if every row had been read.
                let on_failure = sender.clone();
                let reader = tokio::task::spawn_blocking(move || {
                    sqlite_statement::stream_ledger_entries(&path, &org_id, from, until, &sender);
                });
                if let Err(error) = reader.await {
                    tracing::error!(%error, "the statement reader thread failed");
                    let _ = on_failure.send(Err(StoreError::Corrupt("the statement reader failed".into()))).await;
                }
            }
            Store::Postgres(store) => {
                let result =
                    postgres_read_models::stream_ledger_entries(store.pool(), org_id, from, until, &sender).await;
                if let Err(error) = result {
                    let _ = sender.send(Err(error)).await;
                }
            }
        }
    }

    /// Settled usage of the org in `period` grouped by `group_by`, sorted by the group keys.
    /// More than MAX_ATTRIBUTION_GROUPS groups is `Ok(None)`.
    pub async fn attribution(
        &self,
        org_id: &str,
        period: Period,
        group_by: &[GroupKey],
    ) -> Result<Option<Vec<AttributionRow>>, StoreError> {
        let mut rows = match self {
            Store::Sqlite(store) => sqlite_read_models::attribution(store.pool(), org_id, period, group_by).await?,
            Store::Postgres(store) => postgres_read_models::attribution(store.pool(), org_id, period, group_by).await?,
        };
        if rows.len() > MAX_ATTRIBUTION_GROUPS {
            return Ok(None);
        }
        // Sorted here rather than in SQL: the engines order NULLs and text differently.
        rows.sort_by(|a, b| {
            (&a.agent_id, &a.agent_name, &a.act_for, &a.model, &a.api_key, &a.day).cmp(&(
                &b.agent_id,
                &b.agent_name,
                &b.act_for,
                &b.model,
                &b.api_key,
                &b.day,
            ))
        });
        Ok(Some(rows))
    }
}
