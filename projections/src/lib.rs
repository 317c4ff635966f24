//! Read models folded from bahi's events.
//!
//! The in-memory read model every node serves its hot path from is `bahi_domain::State`
//! folded with `evolve` (see ARCHITECTURE.md). This crate holds the SQL read models: each is
//! a pure function from one event to the row operations it causes. The `bahi` crate runs
//! them against SQLite or PostgreSQL with a checkpoint per projection, written in the same
//! transaction as the rows; this crate knows nothing of SQL engines.

pub mod batch;

use bahi_domain::Event;
use bahi_domain::credential::Scope;
use bahi_domain::event::CallAttribution;
use chrono::{DateTime, Utc};

/// One row change a projection asks for. Every operation is idempotent by primary key, so
/// replaying from a checkpoint can never double-count.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlOperation {
    UpsertOrg {
        org_id: String,
        display_name: String,
        plan: String,
        environment: String,
        registered_at: DateTime<Utc>,
        position: i64,
    },
    UpsertApiKey {
        key_id: String,
        org_id: String,
        name: Option<String>,
        display_prefix: String,
        scopes: String,
        created_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        position: i64,
    },
    RevokeApiKey {
        key_id: String,
        revoked_at: DateTime<Utc>,
        position: i64,
    },
    /// One line of an org's ledger (statements and attribution read these).
    InsertLedgerEntry(LedgerEntryRow),
    /// A call as authorized: who made it, for whom, who pays.
    UpsertAuthorizedCall(AuthorizedCallRow),
    /// A call's settlement: tokens, cost, when, and the settling event's position.
    SettleCall(SettledCallRow),
    /// A call's hold expired unsettled: the position of that event.
    ExpireCall {
        call_id: String,
        position: i64,
    },
    /// An event that belongs to an org, so the org (and only it) can read it in the audit log.
    InsertOrgEvent {
        org_id: String,
        position: i64,
    },
}

/// The kinds of ledger entry, as statements name them.
pub mod entry_type {
    pub const TOPUP: &str = "topup";
    pub const GRANT: &str = "grant";
    pub const USAGE: &str = "usage";
    /// A hold that expired unsettled: it never moved the balance, but releasing it is listed.
    pub const HOLD_RELEASE: &str = "hold_release";
}

/// A row of `read_ledger_entries`. Amounts are integer micro-rupees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntryRow {
    pub org_id: String,
    pub position: i64,
    pub entry_type: &'static str,
    pub occurred_at: DateTime<Utc>,
    /// `YYYY-MM-DD` of `occurred_at` in UTC, so that grouping by day is the same on every engine.
    pub occurred_day: String,
    /// The top-up or grant id, or the call id.
    pub reference: String,
    /// The payment reference, the grant's reason, or the usage status.
    pub description: Option<String>,
    pub call_id: Option<String>,
    pub credential_kind: Option<String>,
    pub credential_id: Option<String>,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub act_for: Option<String>,
    pub model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub debit_micros: i64,
    pub credit_micros: i64,
    /// Credit held for a call and released by this entry (listed, never moves the balance).
    pub released_micros: i64,
    /// The balance after this entry, as the event recorded it. `None` when the event does not
    /// carry one because it cannot move the balance (a hold expiry): the engine then repeats
    /// the org's previous entry's balance.
    pub balance_after_micros: Option<i64>,
}

/// A call as authorized; `position` is the authorization's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedCallRow {
    pub call_id: String,
    pub org_id: String,
    pub credential_kind: String,
    pub credential_id: String,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub act_for: String,
    pub model: String,
    pub hold_micros: i64,
    pub authorized_at: DateTime<Utc>,
    pub position: i64,
}

/// A call's settlement; `position` is the usage event's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledCallRow {
    pub call_id: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
    pub status: String,
    pub settled_at: DateTime<Utc>,
    pub position: i64,
}

/// A SQL projection: its name (the checkpoint's key), the tables it owns (emptied by
/// `bahi rebuild`), and its fold.
pub struct Projection {
    pub name: &'static str,
    pub tables: &'static [&'static str],
    pub apply: fn(&Event, i64) -> Vec<SqlOperation>,
}

pub const PROJECTIONS: &[Projection] = &[
    Projection { name: "directory", tables: &["read_orgs", "read_api_keys"], apply: directory },
    // One projection for the audit tables: the events are decoded once for all of them.
    Projection {
        name: "audit",
        tables: &["read_ledger_entries", "read_calls", "read_org_events", "read_usage_daily"],
        apply: audit,
    },
];

pub fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" ")
}

/// Orgs and API keys as listed to their owners.
pub fn directory(event: &Event, position: i64) -> Vec<SqlOperation> {
    match event {
        Event::OrgRegistered(registered) => vec![SqlOperation::UpsertOrg {
            org_id: registered.org_id.to_string(),
            display_name: registered.display_name.clone(),
            plan: registered.plan.clone(),
            environment: registered.environment.as_str().to_owned(),
            registered_at: registered.registered_at,
            position,
        }],
        Event::ApiKeyCreated(created) => vec![SqlOperation::UpsertApiKey {
            key_id: created.key_id.to_string(),
            org_id: created.org_id.to_string(),
            name: created.name.clone(),
            display_prefix: created.display_prefix.clone(),
            scopes: scopes_text(&created.scopes),
            created_at: created.created_at,
            expires_at: created.expires_at,
            position,
        }],
        Event::ApiKeyRevoked(revoked) => vec![SqlOperation::RevokeApiKey {
            key_id: revoked.key_id.to_string(),
            revoked_at: revoked.revoked_at,
            position,
        }],
        _ => Vec::new(),
    }
}

/// The audit read models: ledger entries, calls with their events, and each org's events.
pub fn audit(event: &Event, position: i64) -> Vec<SqlOperation> {
    let mut operations = org_events(event, position);
    operations.extend(ledger_entries(event, position));
    operations.extend(calls(event, position));
    operations
}

/// Which org may read an event in its audit log.
pub fn org_events(event: &Event, position: i64) -> Vec<SqlOperation> {
    match event.org_id() {
        Some(org_id) => vec![SqlOperation::InsertOrgEvent { org_id: org_id.to_string(), position }],
        None => Vec::new(),
    }
}

fn day_of(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d").to_string()
}

/// Token counts are bounded far below `i64::MAX` by the domain; saturate rather than wrap.
fn tokens(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

pub(crate) fn money_entry(
    org_id: String,
    position: i64,
    entry_type: &'static str,
    occurred_at: DateTime<Utc>,
    reference: String,
    description: Option<String>,
) -> LedgerEntryRow {
    LedgerEntryRow {
        org_id,
        position,
        entry_type,
        occurred_at,
        occurred_day: day_of(occurred_at),
        reference,
        description,
        call_id: None,
        credential_kind: None,
        credential_id: None,
        agent_id: None,
        agent_name: None,
        act_for: None,
        model: None,
        input_tokens: None,
        output_tokens: None,
        debit_micros: 0,
        credit_micros: 0,
        released_micros: 0,
        balance_after_micros: None,
    }
}

fn with_attribution(mut row: LedgerEntryRow, attribution: &CallAttribution) -> LedgerEntryRow {
    row.credential_kind = Some(attribution.credential_kind.clone());
    row.credential_id = Some(attribution.credential_id.clone());
    row.agent_id = attribution.agent_id.clone();
    row.agent_name = attribution.agent_name.clone();
    row.act_for = Some(attribution.act_for.clone());
    row
}

/// A usage row's description: the call's status, and whether bahi estimated its tokens
/// (a proxied call whose upstream gave no usage).
fn usage_description(recorded: &bahi_domain::event::UsageRecorded) -> String {
    match recorded.usage_source {
        Some(bahi_domain::billing::UsageSource::Estimated) => format!("{}, usage estimated", recorded.status),
        _ => recorded.status.clone(),
    }
}

/// One ledger entry per money event of an org: credits, debits, and released holds.
pub fn ledger_entries(event: &Event, position: i64) -> Vec<SqlOperation> {
    let row = match event {
        Event::CreditsToppedUp(topped_up) => LedgerEntryRow {
            credit_micros: topped_up.amount.micros(),
            balance_after_micros: Some(topped_up.balance_after.micros()),
            ..money_entry(
                topped_up.org_id.to_string(),
                position,
                entry_type::TOPUP,
                topped_up.topped_up_at,
                topped_up.topup_id.to_string(),
                Some(topped_up.payment_reference.clone()),
            )
        },
        Event::CreditsGranted(granted) => LedgerEntryRow {
            credit_micros: granted.amount.micros(),
            balance_after_micros: Some(granted.balance_after.micros()),
            ..money_entry(
                granted.org_id.to_string(),
                position,
                entry_type::GRANT,
                granted.granted_at,
                granted.grant_id.to_string(),
                Some(granted.reason.clone()),
            )
        },
        Event::UsageRecorded(recorded) => {
            let row = money_entry(
                recorded.org_id.to_string(),
                position,
                entry_type::USAGE,
                recorded.settled_at,
                recorded.call_id.to_string(),
                Some(usage_description(recorded)),
            );
            LedgerEntryRow {
                call_id: Some(recorded.call_id.to_string()),
                model: Some(recorded.model.clone()),
                input_tokens: Some(tokens(recorded.input_tokens)),
                output_tokens: Some(tokens(recorded.output_tokens)),
                debit_micros: recorded.cost.micros(),
                released_micros: recorded.hold_released.micros(),
                balance_after_micros: Some(recorded.balance_after.micros()),
                ..with_attribution(row, &recorded.attribution)
            }
        }
        Event::HoldExpired(expired) => LedgerEntryRow {
            call_id: Some(expired.call_id.to_string()),
            released_micros: expired.released.micros(),
            ..money_entry(
                expired.org_id.to_string(),
                position,
                entry_type::HOLD_RELEASE,
                expired.expired_at,
                expired.call_id.to_string(),
                None,
            )
        },
        _ => return Vec::new(),
    };
    vec![SqlOperation::InsertLedgerEntry(row)]
}

/// One row per call: attribution at authorization, tokens and cost at settlement, and the
/// position of each of the call's events (authorization, settlement, hold expiry), which is
/// how the call's audit answer lists them.
pub fn calls(event: &Event, position: i64) -> Vec<SqlOperation> {
    match event {
        Event::CallAuthorized(authorized) => {
            let attribution = &authorized.attribution;
            vec![SqlOperation::UpsertAuthorizedCall(AuthorizedCallRow {
                call_id: authorized.call_id.to_string(),
                org_id: authorized.org_id.to_string(),
                credential_kind: attribution.credential_kind.clone(),
                credential_id: attribution.credential_id.clone(),
                agent_id: attribution.agent_id.clone(),
                agent_name: attribution.agent_name.clone(),
                act_for: attribution.act_for.clone(),
                model: authorized.model.clone(),
                hold_micros: authorized.hold.micros(),
                authorized_at: authorized.authorized_at,
                position,
            })]
        }
        Event::UsageRecorded(recorded) => vec![SqlOperation::SettleCall(SettledCallRow {
            call_id: recorded.call_id.to_string(),
            input_tokens: tokens(recorded.input_tokens),
            output_tokens: tokens(recorded.output_tokens),
            cost_micros: recorded.cost.micros(),
            status: recorded.status.clone(),
            settled_at: recorded.settled_at,
            position,
        })],
        Event::HoldExpired(expired) => {
            vec![SqlOperation::ExpireCall { call_id: expired.call_id.to_string(), position }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bahi_domain::Money;
    use bahi_domain::event::{HoldExpired, PriceSet, UsageRecorded};
    use bahi_domain::ids::{CallId, OrgId};

    fn attribution() -> CallAttribution {
        CallAttribution {
            credential_kind: "agent_token".into(),
            credential_id: "tok_1".into(),
            agent_id: Some("agt_1".into()),
            agent_name: Some("bot".into()),
            act_for: "usr_1".into(),
        }
    }

    fn usage() -> Event {
        UsageRecorded {
            call_id: CallId::parse("call_1").unwrap(),
            org_id: OrgId::parse("org_1").unwrap(),
            attribution: attribution(),
            model: "m".into(),
            input_tokens: 10,
            output_tokens: 20,
            status: "succeeded".into(),
            cost: Money::parse("0.5").unwrap(),
            hold_released: Money::parse("1").unwrap(),
            balance_after: Money::parse("9.5").unwrap(),
            request_hash: "h".into(),
            settled_at: "2026-03-04T23:59:59Z".parse().unwrap(),
            usage_source: None,
        }
        .into()
    }

    #[test]
    fn usage_is_a_debit_with_its_attribution_and_settles_its_call() {
        let operations = audit(&usage(), 7);
        assert_eq!(operations[0], SqlOperation::InsertOrgEvent { org_id: "org_1".into(), position: 7 });
        let SqlOperation::InsertLedgerEntry(row) = &operations[1] else { panic!("{operations:?}") };
        assert_eq!(row.entry_type, entry_type::USAGE);
        assert_eq!((row.debit_micros, row.credit_micros, row.released_micros), (500_000, 0, 1_000_000));
        assert_eq!(row.balance_after_micros, Some(9_500_000));
        assert_eq!(row.occurred_day, "2026-03-04");
        assert_eq!(row.agent_id.as_deref(), Some("agt_1"));
        assert_eq!(row.act_for.as_deref(), Some("usr_1"));
        assert_eq!((row.input_tokens, row.output_tokens), (Some(10), Some(20)));
        assert!(matches!(
            &operations[2],
            SqlOperation::SettleCall(settled) if settled.cost_micros == 500_000 && settled.position == 7
        ));
        assert_eq!(operations.len(), 3);
    }

    #[test]
    fn a_hold_expiry_is_listed_without_moving_the_balance() {
        let expired: Event = HoldExpired {
            call_id: CallId::parse("call_1").unwrap(),
            org_id: OrgId::parse("org_1").unwrap(),
            released: Money::parse("2").unwrap(),
            expired_at: "2026-03-05T00:00:00Z".parse().unwrap(),
        }
        .into();
        let operations = ledger_entries(&expired, 8);
        let [SqlOperation::InsertLedgerEntry(row)] = operations.as_slice() else { panic!("one ledger row") };
        assert_eq!((row.debit_micros, row.credit_micros, row.released_micros), (0, 0, 2_000_000));
        // The engine repeats the previous balance: the event carries none.
        assert_eq!(row.balance_after_micros, None);
        assert_eq!(row.entry_type, entry_type::HOLD_RELEASE);
        // The call keeps the expiry's position, so its audit answer lists the event.
        assert_eq!(calls(&expired, 8), [SqlOperation::ExpireCall { call_id: "call_1".into(), position: 8 }]);
    }

    #[test]
    fn events_without_an_org_are_nobodys() {
        let price: Event = PriceSet {
            model: "m".into(),
            price: bahi_domain::billing::Price { input_per_million: Money::ZERO, output_per_million: Money::ZERO },
            default_hold: None,
            set_at: "2026-03-05T00:00:00Z".parse().unwrap(),
        }
        .into();
        assert_eq!(audit(&price, 3), Vec::new());
    }
}
