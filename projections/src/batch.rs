//! Turns a page of row operations into batches of rows per table, so that an engine can
//! apply a page with a few multi-row statements instead of one statement per row.
//!
//! The result must be exactly what applying the operations one by one, in order, gives.
//! Within one `RowBatch` no table row is touched by two different buffers, so the buffers
//! commute and an engine may write them in any order. Operations on the same row that
//! follow each other are merged where the merge is provably the same as applying both
//! (see each case below); where it is not, the planner closes the batch and starts the next
//! one, which the engine applies after it. In a log the domain produced, that never happens
//! (a key is revoked after it was created, a call settled after it was authorized), so a
//! page is normally one batch.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::{AuthorizedCallRow, LedgerEntryRow, SettledCallRow, SqlOperation};

/// A row of `read_orgs`, written as a full upsert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRow {
    pub org_id: String,
    pub display_name: String,
    pub plan: String,
    pub environment: String,
    pub registered_at: DateTime<Utc>,
    pub position: i64,
}

/// A row of `read_api_keys`: an upsert of every column but `revoked_at`, which is merged as
/// `coalesce(existing revoked_at, this revoked_at)` (a revocation that followed the upsert
/// in the same page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub key_id: String,
    pub org_id: String,
    pub name: Option<String>,
    pub display_prefix: String,
    pub scopes: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub position: i64,
}

/// A revocation of a key whose row is not in the same batch: an UPDATE of an existing row
/// (`revoked_at = coalesce(revoked_at, this)`, `position = this`), nothing when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRevocation {
    pub key_id: String,
    pub revoked_at: DateTime<Utc>,
    pub position: i64,
}

/// A row of `read_calls` inserted when missing; with a settlement or an expiry later in the
/// same page, an existing row also gets the settlement's columns and position, or the
/// expiry's position, exactly as the UPDATEs that would have followed the insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    pub authorized: AuthorizedCallRow,
    pub settlement: Option<SettledCallRow>,
    pub expired_position: Option<i64>,
}

/// A hold expiry of a call whose row is not in the same batch: an UPDATE of the row's
/// `expired_position`, nothing when the row is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallExpiry {
    pub call_id: String,
    pub position: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgEventRow {
    pub org_id: String,
    pub position: i64,
}

/// A page of the log planned for a group of projections: its row batches, in the order an
/// engine must apply them, and the position of its last event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlannedPage {
    pub last_position: i64,
    pub batches: Vec<RowBatch>,
}

/// Rows to write, per table. Ledger entries, calls and org events are inserted only when
/// missing (the first operation on a key wins, as with one-by-one
/// `ON CONFLICT DO NOTHING`); orgs and keys are upserted (the last one wins).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowBatch {
    pub orgs: Vec<OrgRow>,
    pub api_keys: Vec<ApiKeyRow>,
    pub key_revocations: Vec<KeyRevocation>,
    /// `balance_after_micros` is filled from an earlier entry of the same org in the page
    /// where the event carried none; still `None` means "the org's previous entry in the
    /// table", which is then already committed (the engine looks it up, else 0).
    pub ledger_entries: Vec<LedgerEntryRow>,
    pub calls: Vec<CallRow>,
    /// Settlements and expiries update disjoint columns, so they commute with each other.
    pub settlements: Vec<SettledCallRow>,
    pub expiries: Vec<CallExpiry>,
    pub org_events: Vec<OrgEventRow>,
}

impl RowBatch {
    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
            && self.api_keys.is_empty()
            && self.key_revocations.is_empty()
            && self.ledger_entries.is_empty()
            && self.calls.is_empty()
            && self.settlements.is_empty()
            && self.expiries.is_empty()
            && self.org_events.is_empty()
    }

    /// Rows this batch writes (for figures and tests).
    pub fn rows(&self) -> usize {
        self.orgs.len()
            + self.api_keys.len()
            + self.key_revocations.len()
            + self.ledger_entries.len()
            + self.calls.len()
            + self.settlements.len()
            + self.expiries.len()
            + self.org_events.len()
    }
}

/// A row of `read_usage_daily`: an org's usage entries of one UTC day with one attribution,
/// summed. Attribution over whole days reads these instead of every entry, so a month of a
/// million calls is a few thousand rows. A key column the entries leave empty (no agent, say)
/// is stored as '' because a primary key holds no NULL; readers turn '' back into none. The
/// credential id is kept for API keys only, the one kind attribution groups by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DailyUsageKey {
    pub org_id: String,
    pub day: String,
    pub agent_id: String,
    pub agent_name: String,
    pub act_for: String,
    pub model: String,
    pub credential_kind: String,
    pub credential_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsageRow {
    pub key: DailyUsageKey,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub debit_micros: i64,
    /// The latest entry summed in. An engine adds a row only to one whose position is
    /// lower, so applying the same rows twice cannot count them twice.
    pub position: i64,
}

impl RowBatch {
    /// The batch's usage entries summed per `read_usage_daily` key, in key order. Engines
    /// add these to the table in the same transaction as the entries themselves.
    pub fn daily_usage(&self) -> Vec<DailyUsageRow> {
        let mut sums: std::collections::BTreeMap<DailyUsageKey, DailyUsageRow> = std::collections::BTreeMap::new();
        for entry in self.ledger_entries.iter().filter(|entry| entry.entry_type == crate::entry_type::USAGE) {
            let text = |value: &Option<String>| value.clone().unwrap_or_default();
            let key = DailyUsageKey {
                org_id: entry.org_id.clone(),
                day: entry.occurred_day.clone(),
                agent_id: text(&entry.agent_id),
                agent_name: text(&entry.agent_name),
                act_for: text(&entry.act_for),
                model: text(&entry.model),
                credential_kind: text(&entry.credential_kind),
                // Only an API key's id is a group (attribution by api_key); an agent token's
                // id is often one call's, and keeping it would keep a row per call.
                credential_id: if entry.credential_kind.as_deref() == Some("api_key") {
                    text(&entry.credential_id)
                } else {
                    String::new()
                },
            };
            let row = sums.entry(key.clone()).or_insert(DailyUsageRow {
                key,
                calls: 0,
                input_tokens: 0,
                output_tokens: 0,
                debit_micros: 0,
                position: entry.position,
            });
            // Saturating: a day's sums of bounded amounts cannot reach i64::MAX in practice,
            // and the engine's column would refuse what did.
            row.calls = row.calls.saturating_add(1);
            row.input_tokens = row.input_tokens.saturating_add(entry.input_tokens.unwrap_or(0));
            row.output_tokens = row.output_tokens.saturating_add(entry.output_tokens.unwrap_or(0));
            row.debit_micros = row.debit_micros.saturating_add(entry.debit_micros);
            row.position = row.position.max(entry.position);
        }
        sums.into_values().collect()
    }
}

/// The planner's maps: foldhash instead of std's SipHash. With SipHash and a set of every
/// (org, position) key, a SQLite rebuild of 200,000 gateway events took 11.35G instructions,
/// 11.02G without (callgrind).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// The orgs that already have a row of a table keyed by (org, position) at the latest
/// position seen. Operations come in log order, so a repeated key can only be at that
/// position; this replaces a set of every key of the run.
#[derive(Default)]
struct SeenAtPosition {
    position: i64,
    orgs: Vec<String>,
}

impl SeenAtPosition {
    /// Whether (org_id, position) is new; remembers it.
    fn first(&mut self, org_id: &str, position: i64) -> bool {
        debug_assert!(position >= self.position, "operations out of log order");
        if position != self.position {
            self.position = position;
            self.orgs.clear();
        } else if self.orgs.iter().any(|seen| seen == org_id) {
            return false;
        }
        self.orgs.push(org_id.to_owned());
        true
    }
}

/// Where each keyed row of the open batch sits, to merge later operations into it.
#[derive(Default)]
struct OpenBatch {
    rows: RowBatch,
    orgs: HashMap<String, usize>,
    api_keys: HashMap<String, usize>,
    key_revocations: HashMap<String, usize>,
    /// Orgs with an entry in this batch whose balance only the database can supply.
    unresolved_balances: FastSet<String>,
    calls: HashMap<String, usize>,
    settlements: HashMap<String, usize>,
    expiries: HashMap<String, usize>,
}

/// Plans a page. `operations` are in log order (the order one-by-one application would use).
pub fn plan(operations: impl IntoIterator<Item = SqlOperation>) -> Vec<RowBatch> {
    let mut planner = Planner::default();
    for operation in operations {
        planner.push(operation);
    }
    planner.finish()
}

/// Plans operations one at a time, in log order, into row batches; `plan` does it for a
/// whole page at once. The projection runner keeps one planner from page to page
/// (`take_batches`), so that what it learnt of balances carries over.
#[derive(Default)]
pub struct Planner {
    batches: Vec<RowBatch>,
    open: OpenBatch,
    /// The balance each org's latest entry stores, of every entry this planner has seen.
    balances: HashMap<String, i64>,
    /// Ledger entries seen: a repeated one is not inserted, so it must not feed `balances`
    /// either, whichever batch the first one went to.
    ledger_entries: SeenAtPosition,
    org_events: SeenAtPosition,
    /// The tables were empty when this planner saw the first event of the log.
    from_empty_tables: bool,
}

impl Planner {
    /// A planner for a rebuild: the tables start empty and it sees the log from its first
    /// event. An entry that repeats its org's previous balance then always gets it from the
    /// planner (0 when the org has no earlier entry, as the lookup in the database would
    /// give), so no row of a rebuild needs the database to fill its balance: PostgreSQL's
    /// rebuild writes the ledger without its primary key, which that lookup would use.
    pub fn from_empty_tables() -> Self {
        Planner { from_empty_tables: true, ..Planner::default() }
    }

    /// Adds the next operation of the log.
    pub fn push(&mut self, operation: SqlOperation) {
        match operation {
            SqlOperation::UpsertOrg { org_id, display_name, plan, environment, registered_at, position } => {
                let row = OrgRow { org_id, display_name, plan, environment, registered_at, position };
                // A full upsert: the later one overwrites every column, as it would have.
                match self.open.orgs.get(&row.org_id) {
                    Some(&index) => self.open.rows.orgs[index] = row,
                    None => {
                        self.open.orgs.insert(row.org_id.clone(), self.open.rows.orgs.len());
                        self.open.rows.orgs.push(row);
                    }
                }
            }
            SqlOperation::UpsertApiKey {
                key_id,
                org_id,
                name,
                display_prefix,
                scopes,
                created_at,
                expires_at,
                position,
            } => {
                if self.open.key_revocations.contains_key(&key_id) {
                    // A revocation of an existing row came first; keep the order.
                    close(&mut self.batches, &mut self.open);
                }
                let mut row = ApiKeyRow {
                    key_id,
                    org_id,
                    name,
                    display_prefix,
                    scopes,
                    created_at,
                    expires_at,
                    revoked_at: None,
                    position,
                };
                match self.open.api_keys.get(&row.key_id) {
                    Some(&index) => {
                        // The upsert leaves revoked_at alone, so an earlier merged revocation stays.
                        row.revoked_at = self.open.rows.api_keys[index].revoked_at;
                        self.open.rows.api_keys[index] = row;
                    }
                    None => {
                        self.open.api_keys.insert(row.key_id.clone(), self.open.rows.api_keys.len());
                        self.open.rows.api_keys.push(row);
                    }
                }
            }
            SqlOperation::RevokeApiKey { key_id, revoked_at, position } => {
                if let Some(&index) = self.open.api_keys.get(&key_id) {
                    // The row exists after the upsert: the first revocation time stays, the
                    // position moves, as `coalesce(revoked_at, ?)` and `position = ?` would.
                    let row = &mut self.open.rows.api_keys[index];
                    row.revoked_at.get_or_insert(revoked_at);
                    row.position = position;
                } else if let Some(&index) = self.open.key_revocations.get(&key_id) {
                    let revocation = &mut self.open.rows.key_revocations[index];
                    revocation.position = position;
                } else {
                    self.open.key_revocations.insert(key_id.clone(), self.open.rows.key_revocations.len());
                    self.open.rows.key_revocations.push(KeyRevocation { key_id, revoked_at, position });
                }
            }
            SqlOperation::InsertLedgerEntry(mut row) => {
                if !self.ledger_entries.first(&row.org_id, row.position) {
                    return;
                }
                if row.balance_after_micros.is_none() {
                    if self.open.unresolved_balances.contains(&row.org_id) {
                        // Its previous entry's balance comes from the database once written.
                        close(&mut self.batches, &mut self.open);
                    }
                    row.balance_after_micros =
                        self.balances.get(&row.org_id).copied().or(self.from_empty_tables.then_some(0));
                }
                match row.balance_after_micros {
                    Some(balance) => {
                        self.balances.insert(row.org_id.clone(), balance);
                    }
                    None => {
                        self.balances.remove(&row.org_id);
                        self.open.unresolved_balances.insert(row.org_id.clone());
                    }
                }
                self.open.rows.ledger_entries.push(row);
            }
            SqlOperation::UpsertAuthorizedCall(authorized) => {
                if self.open.settlements.contains_key(&authorized.call_id)
                    || self.open.expiries.contains_key(&authorized.call_id)
                {
                    // An UPDATE of a row that did not exist yet came first; keep the order.
                    close(&mut self.batches, &mut self.open);
                }
                // Insert-if-missing: a second authorization of the same call changes nothing.
                if !self.open.calls.contains_key(&authorized.call_id) {
                    self.open.calls.insert(authorized.call_id.clone(), self.open.rows.calls.len());
                    self.open.rows.calls.push(CallRow { authorized, settlement: None, expired_position: None });
                }
            }
            SqlOperation::SettleCall(settled) => {
                if let Some(&index) = self.open.calls.get(&settled.call_id) {
                    // The UPDATE after the insert: every settlement column and the position.
                    self.open.rows.calls[index].settlement = Some(settled);
                } else if let Some(&index) = self.open.settlements.get(&settled.call_id) {
                    self.open.rows.settlements[index] = settled;
                } else {
                    self.open.settlements.insert(settled.call_id.clone(), self.open.rows.settlements.len());
                    self.open.rows.settlements.push(settled);
                }
            }
            SqlOperation::ExpireCall { call_id, position } => {
                if let Some(&index) = self.open.calls.get(&call_id) {
                    // The UPDATE after the insert.
                    self.open.rows.calls[index].expired_position = Some(position);
                } else if let Some(&index) = self.open.expiries.get(&call_id) {
                    self.open.rows.expiries[index].position = position;
                } else {
                    self.open.expiries.insert(call_id.clone(), self.open.rows.expiries.len());
                    self.open.rows.expiries.push(CallExpiry { call_id, position });
                }
            }
            SqlOperation::InsertOrgEvent { org_id, position } => {
                if self.org_events.first(&org_id, position) {
                    self.open.rows.org_events.push(OrgEventRow { org_id, position });
                }
            }
        }
    }

    /// The batches, in the order an engine must apply them.
    pub fn finish(mut self) -> Vec<RowBatch> {
        self.take_batches()
    }

    /// The batches planned so far (a page's), in the order an engine must apply them; the
    /// next operations go to new batches. The balances and the keys seen stay: the caller applies
    /// these batches before any that follow, so an org's latest entry here is still the
    /// latest one in the table when the next batches are written.
    pub fn take_batches(&mut self) -> Vec<RowBatch> {
        close(&mut self.batches, &mut self.open);
        std::mem::take(&mut self.batches)
    }
}

fn close(batches: &mut Vec<RowBatch>, open: &mut OpenBatch) {
    let mut finished = std::mem::take(open).rows;
    if finished.is_empty() {
        return;
    }
    // Inserted in key order, consecutive rows land on the same or the next B-tree leaf
    // instead of anywhere in the tree: ledger entries and org events cluster by org, calls
    // by their random ids. Within a batch no two rows of these tables share a key and none
    // reads another (a ledger entry that looks up its org's previous balance has no earlier
    // entry of that org in the page), so their order is free.
    finished.ledger_entries.sort_unstable_by(|a, b| (&a.org_id, a.position).cmp(&(&b.org_id, b.position)));
    finished.calls.sort_unstable_by(|a, b| a.authorized.call_id.cmp(&b.authorized.call_id));
    finished.org_events.sort_unstable_by(|a, b| (&a.org_id, a.position).cmp(&(&b.org_id, b.position)));
    batches.push(finished);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn key(key_id: &str, position: i64) -> SqlOperation {
        SqlOperation::UpsertApiKey {
            key_id: key_id.into(),
            org_id: "org_1".into(),
            name: None,
            display_prefix: "bahi_live_abc".into(),
            scopes: "inference".into(),
            created_at: time(position),
            expires_at: None,
            position,
        }
    }

    fn revoke(key_id: &str, position: i64) -> SqlOperation {
        SqlOperation::RevokeApiKey { key_id: key_id.into(), revoked_at: time(position), position }
    }

    fn entry(org_id: &str, position: i64, balance: Option<i64>) -> SqlOperation {
        let row =
            crate::money_entry(org_id.into(), position, crate::entry_type::USAGE, time(position), "r".into(), None);
        SqlOperation::InsertLedgerEntry(LedgerEntryRow { balance_after_micros: balance, ..row })
    }

    fn authorized(call_id: &str, position: i64) -> SqlOperation {
        SqlOperation::UpsertAuthorizedCall(AuthorizedCallRow {
            call_id: call_id.into(),
            org_id: "org_1".into(),
            credential_kind: "api_key".into(),
            credential_id: "key_1".into(),
            agent_id: None,
            agent_name: None,
            act_for: "org_1".into(),
            model: "m".into(),
            hold_micros: 1,
            authorized_at: time(position),
            position,
        })
    }

    fn settled(call_id: &str, position: i64) -> SqlOperation {
        SqlOperation::SettleCall(SettledCallRow {
            call_id: call_id.into(),
            input_tokens: position,
            output_tokens: 1,
            cost_micros: 1,
            status: "succeeded".into(),
            settled_at: time(position),
            position,
        })
    }

    #[test]
    fn a_revocation_after_its_key_merges_into_the_upsert() {
        let batches = plan([key("key_1", 1), revoke("key_1", 2), revoke("key_1", 3)]);
        assert_eq!(batches.len(), 1);
        let row = &batches[0].api_keys[0];
        assert_eq!((row.revoked_at, row.position), (Some(time(2)), 3));
        assert!(batches[0].key_revocations.is_empty());
    }

    #[test]
    fn an_upsert_after_a_revocation_of_an_existing_key_starts_a_new_batch() {
        let batches = plan([revoke("key_1", 1), key("key_1", 2)]);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].key_revocations.len(), 1);
        assert_eq!(batches[1].api_keys[0].revoked_at, None);
    }

    #[test]
    fn a_settlement_after_its_authorization_merges_and_the_reverse_does_not() {
        let batches =
            plan([authorized("call_1", 1), settled("call_1", 2), settled("call_2", 3), authorized("call_2", 4)]);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].calls.len(), 1);
        assert_eq!(batches[0].calls[0].settlement.as_ref().map(|settled| settled.position), Some(2));
        assert_eq!(batches[0].settlements.len(), 1);
        assert_eq!(batches[1].calls.len(), 1);
    }

    #[test]
    fn an_expiry_merges_into_its_calls_row_and_commutes_with_a_settlement() {
        let expire = |call_id: &str, position| SqlOperation::ExpireCall { call_id: call_id.into(), position };
        let batches = plan([
            authorized("call_1", 1),
            expire("call_1", 2),
            settled("call_1", 3),
            expire("call_2", 4),
            settled("call_2", 5),
            expire("call_3", 6),
            authorized("call_3", 7),
        ]);
        assert_eq!(batches.len(), 2, "call_3's expiry updates a row that must exist before its insert");
        let call = &batches[0].calls[0];
        assert_eq!(call.expired_position, Some(2));
        assert_eq!(call.settlement.as_ref().map(|settled| settled.position), Some(3));
        assert_eq!(
            batches[0].expiries,
            [
                CallExpiry { call_id: "call_2".into(), position: 4 },
                CallExpiry { call_id: "call_3".into(), position: 6 }
            ]
        );
        assert_eq!(batches[0].settlements.len(), 1);
        assert_eq!(batches[1].calls[0].expired_position, None);
    }

    #[test]
    fn a_missing_balance_repeats_the_orgs_previous_entry_in_the_page() {
        let batches = plan([
            entry("org_1", 1, Some(5)),
            entry("org_2", 2, None),
            entry("org_1", 3, None),
            entry("org_2", 4, None),
        ]);
        assert_eq!(batches.len(), 2, "org_2's second entry needs its first one written");
        let mut balances: Vec<_> = batches
            .iter()
            .flat_map(|batch| batch.ledger_entries.iter().map(|row| (row.position, row.balance_after_micros)))
            .collect();
        balances.sort_unstable();
        assert_eq!(balances, [(1, Some(5)), (2, None), (3, Some(5)), (4, None)]);
        assert_eq!(batches[1].ledger_entries[0].position, 4);
    }

    /// The balances a planner gives entries of `operations`, in position order.
    fn planned_balances(planner: &mut Planner, operations: Vec<SqlOperation>) -> Vec<(i64, Option<i64>)> {
        for operation in operations {
            planner.push(operation);
        }
        let mut balances: Vec<_> = planner
            .take_batches()
            .iter()
            .flat_map(|batch| batch.ledger_entries.iter().map(|row| (row.position, row.balance_after_micros)))
            .collect();
        balances.sort_unstable();
        balances
    }

    #[test]
    fn a_planner_carries_balances_from_run_to_run() {
        let mut planner = Planner::default();
        assert_eq!(planned_balances(&mut planner, vec![entry("org_1", 1, Some(5))]), [(1, Some(5))]);
        // The next run: org_1's entry repeats the previous run's balance; org_2 has no entry
        // this planner saw, so the database must supply its balance.
        let next = vec![entry("org_1", 2, None), entry("org_2", 3, None)];
        assert_eq!(planned_balances(&mut planner, next), [(2, Some(5)), (3, None)]);
    }

    #[test]
    fn a_rebuilds_planner_gives_every_entry_its_balance() {
        let mut planner = Planner::from_empty_tables();
        let first = vec![entry("org_1", 1, None), entry("org_2", 2, Some(7))];
        // An org without an earlier entry starts from 0, as the lookup in empty tables would.
        assert_eq!(planned_balances(&mut planner, first), [(1, Some(0)), (2, Some(7))]);
        let next = vec![entry("org_2", 3, None), entry("org_1", 4, Some(3)), entry("org_1", 5, None)];
        assert_eq!(planned_balances(&mut planner, next), [(3, Some(7)), (4, Some(3)), (5, Some(3))]);
    }

    #[test]
    fn rows_are_planned_in_key_order() {
        let event = |org_id: &str, position| SqlOperation::InsertOrgEvent { org_id: org_id.into(), position };
        let batches = plan([
            event("org_b", 1),
            entry("org_b", 1, Some(1)),
            authorized("call_z", 2),
            event("org_a", 2),
            entry("org_a", 3, Some(2)),
            event("org_b", 3),
            authorized("call_a", 4),
            event("org_a", 4),
            entry("org_b", 5, Some(3)),
        ]);
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        let org_events: Vec<_> = batch.org_events.iter().map(|row| (row.org_id.as_str(), row.position)).collect();
        assert_eq!(org_events, [("org_a", 2), ("org_a", 4), ("org_b", 1), ("org_b", 3)]);
        let entries: Vec<_> = batch.ledger_entries.iter().map(|row| (row.org_id.as_str(), row.position)).collect();
        assert_eq!(entries, [("org_a", 3), ("org_b", 1), ("org_b", 5)]);
        let calls: Vec<_> = batch.calls.iter().map(|row| row.authorized.call_id.as_str()).collect();
        assert_eq!(calls, ["call_a", "call_z"]);
    }

    #[test]
    fn first_insert_wins_and_last_upsert_wins() {
        let org = |name: &str, position| SqlOperation::UpsertOrg {
            org_id: "org_1".into(),
            display_name: name.into(),
            plan: "free".into(),
            environment: "live".into(),
            registered_at: time(0),
            position,
        };
        let batches = plan([
            org("first", 1),
            org("second", 2),
            SqlOperation::InsertOrgEvent { org_id: "org_1".into(), position: 1 },
            SqlOperation::InsertOrgEvent { org_id: "org_1".into(), position: 1 },
            entry("org_1", 1, Some(1)),
            entry("org_1", 1, Some(2)),
        ]);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].orgs.len(), 1);
        assert_eq!(batches[0].orgs[0].display_name, "second");
        assert_eq!(batches[0].org_events.len(), 1);
        assert_eq!(batches[0].ledger_entries.len(), 1);
        assert_eq!(batches[0].ledger_entries[0].balance_after_micros, Some(1));
    }

    #[test]
    fn daily_usage_sums_usage_entries_per_day_and_attribution() {
        let usage = |org_id: &str, position: i64, day: &str, agent: Option<&str>, debit: i64| {
            let SqlOperation::InsertLedgerEntry(row) = entry(org_id, position, Some(0)) else { unreachable!() };
            SqlOperation::InsertLedgerEntry(LedgerEntryRow {
                occurred_day: day.into(),
                agent_id: agent.map(Into::into),
                input_tokens: Some(10),
                output_tokens: Some(1),
                debit_micros: debit,
                ..row
            })
        };
        let topup = {
            let SqlOperation::InsertLedgerEntry(row) = entry("org_1", 5, Some(0)) else { unreachable!() };
            SqlOperation::InsertLedgerEntry(LedgerEntryRow { entry_type: crate::entry_type::TOPUP, ..row })
        };
        let batches = plan([
            usage("org_1", 1, "2026-01-01", None, 3),
            usage("org_1", 2, "2026-01-01", None, 4),
            usage("org_1", 3, "2026-01-01", Some("agt_1"), 5),
            usage("org_1", 4, "2026-01-02", None, 6),
            topup,
            usage("org_2", 6, "2026-01-01", None, 7),
        ]);
        let daily = batches[0].daily_usage();
        let summed: Vec<_> = daily
            .iter()
            .map(|row| {
                (
                    row.key.org_id.as_str(),
                    row.key.day.as_str(),
                    row.key.agent_id.as_str(),
                    row.calls,
                    row.input_tokens,
                    row.debit_micros,
                    row.position,
                )
            })
            .collect();
        assert_eq!(
            summed,
            [
                ("org_1", "2026-01-01", "", 2, 20, 7, 2),
                ("org_1", "2026-01-01", "agt_1", 1, 10, 5, 3),
                ("org_1", "2026-01-02", "", 1, 10, 6, 4),
                ("org_2", "2026-01-01", "", 1, 10, 7, 6),
            ],
            "the top-up is not usage; no agent is ''"
        );
    }
}
