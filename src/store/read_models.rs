//! Reads of the audit read models (ledger entries, calls, each org's events): the
//! `ReadModels` trait, which both engines implement (`sqlite/read_models.rs`,
//! `postgres/read_models.rs`), and what the two share.

use bahi_domain::Money;
use bahi_reports::{AttributionRow, GroupKey, LedgerEntry, Period};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use std::future::Future;

use super::{Store, StoreError};

/// SQL the two engines share: written once with `$n` placeholders, which PostgreSQL takes
/// as positions and SQLite as names bound in order of first appearance (each query names
/// them in ascending order). Engine-specific SQL stays in the engine's module.
pub(crate) mod sql {
    /// A ledger entry's attribution column; a hold release (whose event names only the call)
    /// takes it from the call's row, so that every statement row says whose call it was.
    /// The sub-select runs for hold releases only.
    macro_rules! attributed {
        ($column:literal) => {
            concat!(
                "CASE WHEN e.entry_type = 'hold_release' THEN (SELECT c.",
                $column,
                " FROM read_calls c WHERE c.call_id = e.call_id) ELSE e.",
                $column,
                " END"
            )
        };
    }

    /// The select list of a statement's ledger entries (`read_ledger_entries e`), in
    /// `LedgerEntry` order.
    macro_rules! statement_columns {
        () => {
            concat!(
                "e.position, e.entry_type, e.occurred_at, e.reference, e.description, e.call_id, ",
                $crate::store::read_models::sql::attributed!("credential_kind"),
                ", ",
                $crate::store::read_models::sql::attributed!("credential_id"),
                ", ",
                $crate::store::read_models::sql::attributed!("agent_id"),
                ", ",
                $crate::store::read_models::sql::attributed!("agent_name"),
                ", ",
                $crate::store::read_models::sql::attributed!("act_for"),
                ", ",
                $crate::store::read_models::sql::attributed!("model"),
                ", e.input_tokens, e.output_tokens, e.debit_micros, e.credit_micros, e.released_micros, \
                 e.balance_after_micros FROM read_ledger_entries e"
            )
        };
    }
    pub(crate) use {attributed, statement_columns};

    /// A call's audit row (bound: call id).
    pub const AUDIT_CALL: &str = "SELECT call_id, org_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, hold_micros, \
         authorized_at, input_tokens, output_tokens, cost_micros, status, settled_at FROM read_calls WHERE call_id = $1";
    /// A call's events in log order (bound: call id).
    pub const CALL_EVENTS: &str = "SELECT e.position, e.event_type, e.hash, e.payload FROM read_calls c \
         JOIN events e ON e.position IN (c.authorized_position, c.settled_position, c.expired_position) \
         WHERE c.call_id = $1 ORDER BY e.position";
    /// An org's events after a position, in log order (bound: org, after, limit).
    pub const ORG_EVENTS: &str = "SELECT e.position, e.event_type, e.recorded_at, e.payload, e.hash FROM read_org_events o \
         JOIN events e ON e.position = o.position WHERE o.org_id = $1 AND o.position > $2 ORDER BY o.position LIMIT $3";
    /// Whether an org is in the directory (bound: org).
    pub const ORG_EXISTS: &str = "SELECT 1 FROM read_orgs WHERE org_id = $1";
    /// The balance after the org's last entry before a time (bound: org, time).
    pub const BALANCE_BEFORE: &str = "SELECT balance_after_micros FROM read_ledger_entries WHERE org_id = $1 AND occurred_at < $2 \
         ORDER BY occurred_at DESC, position DESC LIMIT 1";
}

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

/// One of a call's events: its position, type, hash and stored payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEvent {
    pub position: i64,
    pub event_type: String,
    pub hash: [u8; 32],
    pub payload: Vec<u8>,
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

/// A value an attribution query binds: text, or a time (each engine binds times its way).
pub(crate) enum AttributionBind {
    Text(String),
    Time(DateTime<Utc>),
}

/// An attribution query and its values, bound in order: `$1`, `$2`, … each appear once, in
/// ascending order, so both engines bind them alike.
pub(crate) struct AttributionQuery {
    pub sql: String,
    pub binds: Vec<AttributionBind>,
}

/// The rows attribution sums, as columns named as `read_ledger_entries` names them: whole
/// days from `read_usage_daily` (its '' back to none), the parts of days at the period's ends
/// from the entries themselves.
const DAILY_USAGE_ROWS: &str = "SELECT NULLIF(agent_id, '') AS agent_id, NULLIF(agent_name, '') AS agent_name, \
     NULLIF(act_for, '') AS act_for, NULLIF(model, '') AS model, NULLIF(credential_kind, '') AS credential_kind, \
     NULLIF(credential_id, '') AS credential_id, day AS occurred_day, calls, input_tokens, output_tokens, debit_micros \
     FROM read_usage_daily WHERE org_id = ";
const ENTRY_ROWS: &str = "SELECT agent_id, agent_name, act_for, model, credential_kind, credential_id, occurred_day, \
     1 AS calls, coalesce(input_tokens, 0) AS input_tokens, coalesce(output_tokens, 0) AS output_tokens, debit_micros \
     FROM read_ledger_entries WHERE entry_type = 'usage' AND org_id = ";

/// The attribution of `org_id`'s usage in `period`: the key columns, then calls and sums
/// (cast back to BIGINT because PostgreSQL sums bigints as numeric), grouped by the keys.
pub(crate) fn attribution_query(org_id: &str, period: Period, group_by: &[GroupKey]) -> AttributionQuery {
    let mut binds = Vec::new();
    let mut placeholder = |value: AttributionBind| {
        binds.push(value);
        format!("${}", binds.len())
    };
    let split = period.split_at_days();
    let mut parts = Vec::new();
    if let Some(days) = split.days {
        let mut part = format!("{DAILY_USAGE_ROWS}{}", placeholder(AttributionBind::Text(org_id.to_owned())));
        if let Some(first) = days.first {
            part += &format!(" AND day >= {}", placeholder(AttributionBind::Text(first.to_string())));
        }
        if let Some(end) = days.end {
            part += &format!(" AND day < {}", placeholder(AttributionBind::Text(end.to_string())));
        }
        parts.push(part);
    }
    for end in split.ends {
        let mut part = format!("{ENTRY_ROWS}{}", placeholder(AttributionBind::Text(org_id.to_owned())));
        if let Some(from) = end.from {
            part += &format!(" AND occurred_at >= {}", placeholder(AttributionBind::Time(from)));
        }
        if let Some(until) = end.until {
            part += &format!(" AND occurred_at < {}", placeholder(AttributionBind::Time(until)));
        }
        parts.push(part);
    }
    let columns: Vec<&str> = group_by.iter().flat_map(|key| group_columns(*key).iter().copied()).collect();
    let select = columns.iter().map(|column| format!("{column}, ")).collect::<String>();
    let group = if columns.is_empty() { String::new() } else { format!(" GROUP BY {}", columns.join(", ")) };
    let sql = format!(
        "SELECT {select}CAST(coalesce(sum(calls), 0) AS BIGINT), CAST(coalesce(sum(input_tokens), 0) AS BIGINT), \
         CAST(coalesce(sum(output_tokens), 0) AS BIGINT), CAST(coalesce(sum(debit_micros), 0) AS BIGINT) \
         FROM ({}) AS usage{group} LIMIT {}",
        parts.join(" UNION ALL "),
        MAX_ATTRIBUTION_GROUPS + 1
    );
    AttributionQuery { sql, binds }
}

/// What both engines read from the audit read models.
pub trait ReadModels: Send + Sync {
    fn audit_call(&self, call_id: &str) -> impl Future<Output = Result<Option<CallRecord>, StoreError>> + Send;
    /// The events of a call in log order: (position, type, hash, payload).
    fn call_events(&self, call_id: &str) -> impl Future<Output = Result<Vec<CallEvent>, StoreError>> + Send;
    /// An org's events after `after`, in log order, at most `limit`.
    fn org_events(
        &self,
        org_id: &str,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;
    /// Whether the org exists in the directory read model.
    fn org_exists(&self, org_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The org's balance after its last ledger entry before `before` (zero if none).
    fn balance_before(
        &self,
        org_id: &str,
        before: DateTime<Utc>,
    ) -> impl Future<Output = Result<Money, StoreError>> + Send;
    /// Sends the org's ledger entries in `[from, until)` in log order, in batches, until done
    /// or the receiver goes away. A failure is sent as the stream's last message.
    fn stream_ledger_entries(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        sender: EntrySender,
    ) -> impl Future<Output = ()> + Send;
    /// Settled usage of the org in `period` grouped by `group_by`, in any order, at most
    /// MAX_ATTRIBUTION_GROUPS + 1 groups.
    fn attribution_rows(
        &self,
        org_id: &str,
        period: Period,
        group_by: &[GroupKey],
    ) -> impl Future<Output = Result<Vec<AttributionRow>, StoreError>> + Send;
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Sqlite($store) => $call.await,
            Store::Postgres($store) => $call.await,
        }
    };
}

impl ReadModels for Store {
    async fn audit_call(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        delegate!(self, store => store.audit_call(call_id))
    }
    async fn call_events(&self, call_id: &str) -> Result<Vec<CallEvent>, StoreError> {
        delegate!(self, store => store.call_events(call_id))
    }
    async fn org_events(&self, org_id: &str, after: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        delegate!(self, store => store.org_events(org_id, after, limit))
    }
    async fn org_exists(&self, org_id: &str) -> Result<bool, StoreError> {
        delegate!(self, store => store.org_exists(org_id))
    }
    async fn balance_before(&self, org_id: &str, before: DateTime<Utc>) -> Result<Money, StoreError> {
        delegate!(self, store => store.balance_before(org_id, before))
    }
    async fn stream_ledger_entries(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        sender: EntrySender,
    ) {
        delegate!(self, store => store.stream_ledger_entries(org_id, from, until, sender))
    }
    async fn attribution_rows(
        &self,
        org_id: &str,
        period: Period,
        group_by: &[GroupKey],
    ) -> Result<Vec<AttributionRow>, StoreError> {
        delegate!(self, store => store.attribution_rows(org_id, period, group_by))
    }
}

impl Store {
    /// Settled usage of the org in `period` grouped by `group_by`, sorted by the group keys.
    /// More than MAX_ATTRIBUTION_GROUPS groups is `Ok(None)`.
    pub async fn attribution(
        &self,
        org_id: &str,
        period: Period,
        group_by: &[GroupKey],
    ) -> Result<Option<Vec<AttributionRow>>, StoreError> {
        let mut rows = self.attribution_rows(org_id, period, group_by).await?;
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
