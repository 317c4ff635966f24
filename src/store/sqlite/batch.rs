//! SQLite: writes a planned `RowBatch` with multi-row statements, a few hundred rows each,
//! instead of one statement per row, through rusqlite on a blocking thread: sqlx copied
//! every bound value and handed every statement to its worker thread and back.

use std::ops::Range;

use bahi_domain::chain::format_recorded_at;
use bahi_projections::batch::{CallExpiry, DailyUsageRow, RowBatch};
use bahi_projections::{LedgerEntryRow, SettledCallRow};
use chrono::{DateTime, Utc};
use rusqlite::Transaction;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

use crate::store::StoreError;

/// Rows per statement. A chunk always takes the largest size that fits, so only these few
/// distinct statements exist per table and each is prepared once and cached. 512 rows of the
/// widest table (20 values) stay far below SQLite's limit of 32,766 bound values.
const CHUNK_ROWS: [usize; 5] = [512, 128, 32, 8, 1];

fn tuples(rows: usize, values: usize) -> String {
    let tuple = format!("({})", vec!["?"; values].join(", "));
    vec![tuple; rows].join(", ")
}

/// A bound value. Text is bound from the row where it lives rather than from a copy: SQLite
/// copies bound text itself, and the copies made first were a tenth of a rebuild's
/// instructions.
type Bound<'r> = ToSqlOutput<'r>;

fn text(value: &str) -> Bound<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(value.as_bytes()))
}

fn optional_text(value: Option<&str>) -> Bound<'_> {
    value.map_or(ToSqlOutput::Borrowed(ValueRef::Null), text)
}

fn integer<'r>(value: i64) -> Bound<'r> {
    ToSqlOutput::Owned(Value::Integer(value))
}

fn optional_integer<'r>(value: Option<i64>) -> Bound<'r> {
    ToSqlOutput::Owned(value.map_or(Value::Null, Value::Integer))
}

fn time<'r>(value: DateTime<Utc>) -> Bound<'r> {
    ToSqlOutput::Owned(Value::Text(format_recorded_at(value)))
}

fn optional_time<'r>(value: Option<DateTime<Utc>>) -> Bound<'r> {
    ToSqlOutput::Owned(value.map_or(Value::Null, |value| Value::Text(format_recorded_at(value))))
}

/// Runs `statement(rows)` over `rows` in chunks, binding the values `bind` gives each row.
/// Returns the chunks whose statement changed fewer rows than it had (an insert-if-missing
/// that met rows already there; an UPDATE of rows that are missing).
fn write_chunked<T>(
    transaction: &Transaction<'_>,
    rows: &[T],
    statement: impl Fn(usize) -> String,
    bind: impl for<'r> Fn(&'r T) -> Vec<Bound<'r>>,
) -> Result<Vec<Range<usize>>, StoreError> {
    let mut short = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let size = CHUNK_ROWS.iter().copied().find(|&size| size <= rows.len() - start).unwrap_or(1);
        let chunk = start..start + size;
        let mut prepared = transaction.prepare_cached(&statement(size))?;
        let mut index = 1;
        for row in &rows[chunk.clone()] {
            for value in bind(row) {
                prepared.raw_bind_parameter(index, value)?;
                index += 1;
            }
        }
        if prepared.raw_execute()? < size {
            short.push(chunk.clone());
        }
        start = chunk.end;
    }
    Ok(short)
}

/// Writes every row of `batch` inside the caller's transaction.
///
/// The insert-if-missing tables use `INSERT OR IGNORE`, not `ON CONFLICT DO NOTHING`. Both
/// skip a row whose key exists. But a statement that may abort half-way (any constraint
/// left at ABORT, such as NOT NULL) makes SQLite copy every page it changes into a
/// statement journal first. `OR IGNORE` leaves nothing to abort. That journal was a quarter
/// of a rebuild's writing thread; `OR IGNORE` took the three tables' share from 14.6 s to
/// 9.2 s on a million gateway events (BENCHMARKS.md); `read_calls` followed later (its
/// upsert had kept the journal). The only other constraints are NOT NULL, on columns that
/// the row types fill with values that are never null. The orgs and keys upserts keep
/// theirs: they are a few rows per registration.
pub fn write(transaction: &Transaction<'_>, batch: &RowBatch) -> Result<(), StoreError> {
    write_chunked(
        transaction,
        &batch.orgs,
        |rows| {
            format!(
                "INSERT INTO read_orgs (org_id, display_name, plan, environment, registered_at, position) VALUES {} \
                 ON CONFLICT (org_id) DO UPDATE SET display_name = excluded.display_name, plan = excluded.plan, \
                 environment = excluded.environment, registered_at = excluded.registered_at, position = excluded.position",
                tuples(rows, 6)
            )
        },
        |row| {
            vec![
                text(&row.org_id),
                text(&row.display_name),
                text(&row.plan),
                text(&row.environment),
                time(row.registered_at),
                integer(row.position),
            ]
        },
    )?;
    write_chunked(
        transaction,
        &batch.api_keys,
        |rows| {
            format!(
                "INSERT INTO read_api_keys (key_id, org_id, name, display_prefix, scopes, created_at, expires_at, revoked_at, position) \
                 VALUES {} ON CONFLICT (key_id) DO UPDATE SET org_id = excluded.org_id, name = excluded.name, \
                 display_prefix = excluded.display_prefix, scopes = excluded.scopes, created_at = excluded.created_at, \
                 expires_at = excluded.expires_at, revoked_at = coalesce(read_api_keys.revoked_at, excluded.revoked_at), \
                 position = excluded.position",
                tuples(rows, 9)
            )
        },
        |row| {
            vec![
                text(&row.key_id),
                text(&row.org_id),
                optional_text(row.name.as_deref()),
                text(&row.display_prefix),
                text(&row.scopes),
                time(row.created_at),
                optional_time(row.expires_at),
                optional_time(row.revoked_at),
                integer(row.position),
            ]
        },
    )?;
    write_chunked(
        transaction,
        &batch.key_revocations,
        |rows| {
            format!(
                "UPDATE read_api_keys SET revoked_at = coalesce(read_api_keys.revoked_at, v.column2), position = v.column3 \
                 FROM (VALUES {}) AS v WHERE read_api_keys.key_id = v.column1",
                tuples(rows, 3)
            )
        },
        |row| vec![text(&row.key_id), time(row.revoked_at), integer(row.position)],
    )?;
    // A row without its own balance repeats the org's previous entry: the planner filled
    // it from the entries it saw where it could, so what is left is already in the table.
    // Only those rows take the statement that looks it up; a plain multi-row VALUES is
    // cheaper (about 5% of a rebuild, BENCHMARKS.md). The planner leaves a row without a
    // balance only when it does not know its org's latest balance (it saw no earlier entry,
    // or that one's balance came from the table too), and then it puts no earlier entry of
    // that org in this batch. So writing the others first changes nothing the statement
    // could find: it looks at earlier positions only.
    let (balanced, unbalanced): (Vec<&LedgerEntryRow>, Vec<&LedgerEntryRow>) =
        batch.ledger_entries.iter().partition(|row| row.balance_after_micros.is_some());
    write_chunked(
        transaction,
        &balanced,
        |rows| format!("INSERT OR IGNORE INTO read_ledger_entries ({LEDGER_COLUMNS}) VALUES {}", tuples(rows, 20)),
        ledger_values,
    )?;
    write_chunked(
        transaction,
        &unbalanced,
        |rows| {
            format!(
                "INSERT OR IGNORE INTO read_ledger_entries ({LEDGER_COLUMNS}) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, v.column9, \
                 v.column10, v.column11, v.column12, v.column13, v.column14, v.column15, v.column16, v.column17, v.column18, \
                 v.column19, coalesce(v.column20, (SELECT e.balance_after_micros FROM read_ledger_entries e \
                 WHERE e.org_id = v.column1 AND e.position < v.column2 ORDER BY e.position DESC LIMIT 1), 0) \
                 FROM (VALUES {}) AS v",
                tuples(rows, 20)
            )
        },
        ledger_values,
    )?;
    // Insert-if-missing, with a settlement or expiry later in the same page already in the
    // row. `OR IGNORE`, like the tables above, so that SQLite keeps no statement journal.
    // A row skipped because the call was there already (authorized twice: never in a log
    // the domain wrote, but a page must give what one event at a time gives) still gets its
    // settlement and expiry from the UPDATEs that would have followed its insert. Those run
    // only for a chunk that inserted fewer rows than it had, and on the rows it did insert
    // they write the values already there.
    let short = write_chunked(
        transaction,
        &batch.calls,
        |rows| {
            format!(
                "INSERT OR IGNORE INTO read_calls (call_id, org_id, credential_kind, credential_id, agent_id, agent_name, \
                 act_for, model, hold_micros, authorized_at, input_tokens, output_tokens, cost_micros, status, settled_at, \
                 authorized_position, settled_position, expired_position) VALUES {}",
                tuples(rows, 18)
            )
        },
        |row| {
            let authorized = &row.authorized;
            let settlement = row.settlement.as_ref();
            vec![
                text(&authorized.call_id),
                text(&authorized.org_id),
                text(&authorized.credential_kind),
                text(&authorized.credential_id),
                optional_text(authorized.agent_id.as_deref()),
                optional_text(authorized.agent_name.as_deref()),
                text(&authorized.act_for),
                text(&authorized.model),
                integer(authorized.hold_micros),
                time(authorized.authorized_at),
                optional_integer(settlement.map(|settled| settled.input_tokens)),
                optional_integer(settlement.map(|settled| settled.output_tokens)),
                optional_integer(settlement.map(|settled| settled.cost_micros)),
                optional_text(settlement.map(|settled| settled.status.as_str())),
                optional_time(settlement.map(|settled| settled.settled_at)),
                integer(authorized.position),
                optional_integer(settlement.map(|settled| settled.position)),
                optional_integer(row.expired_position),
            ]
        },
    )?;
    for chunk in short {
        let calls = &batch.calls[chunk];
        let settlements: Vec<SettledCallRow> = calls.iter().filter_map(|call| call.settlement.clone()).collect();
        let expiries: Vec<CallExpiry> = calls
            .iter()
            .filter_map(|call| {
                let position = call.expired_position?;
                Some(CallExpiry { call_id: call.authorized.call_id.clone(), position })
            })
            .collect();
        write_settlements(transaction, &settlements)?;
        write_expiries(transaction, &expiries)?;
    }
    // Calls whose rows were written by an earlier page: the planner never puts a call both
    // here and among the rows above, and settlements and expiries touch different columns.
    write_settlements(transaction, &batch.settlements)?;
    write_expiries(transaction, &batch.expiries)?;
    write_chunked(
        transaction,
        &batch.org_events,
        |rows| format!("INSERT OR IGNORE INTO read_org_events (org_id, position) VALUES {}", tuples(rows, 2)),
        |row| vec![text(&row.org_id), integer(row.position)],
    )?;
    write_daily_usage(transaction, &batch.daily_usage())
}

/// Adds the batch's usage to `read_usage_daily`, each row only to one that has not seen its
/// position yet (the same rows applied twice count once).
fn write_daily_usage(transaction: &Transaction<'_>, rows: &[DailyUsageRow]) -> Result<(), StoreError> {
    write_chunked(
        transaction,
        rows,
        |rows| {
            format!(
                "INSERT INTO read_usage_daily (org_id, day, agent_id, agent_name, act_for, model, credential_kind, \
                 credential_id, calls, input_tokens, output_tokens, debit_micros, position) VALUES {} \
                 ON CONFLICT (org_id, day, agent_id, agent_name, act_for, model, credential_kind, credential_id) \
                 DO UPDATE SET calls = calls + excluded.calls, input_tokens = input_tokens + excluded.input_tokens, \
                 output_tokens = output_tokens + excluded.output_tokens, \
                 debit_micros = debit_micros + excluded.debit_micros, position = excluded.position \
                 WHERE position < excluded.position",
                tuples(rows, 13)
            )
        },
        |row| {
            let key = &row.key;
            vec![
                text(&key.org_id),
                text(&key.day),
                text(&key.agent_id),
                text(&key.agent_name),
                text(&key.act_for),
                text(&key.model),
                text(&key.credential_kind),
                text(&key.credential_id),
                integer(row.calls),
                integer(row.input_tokens),
                integer(row.output_tokens),
                integer(row.debit_micros),
                integer(row.position),
            ]
        },
    )?;
    Ok(())
}

const LEDGER_COLUMNS: &str = "org_id, position, entry_type, occurred_at, occurred_day, reference, description, \
     call_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, input_tokens, output_tokens, \
     debit_micros, credit_micros, released_micros, balance_after_micros";

/// The values of a ledger entry, in `LEDGER_COLUMNS` order.
fn ledger_values<'r>(row: &'r &LedgerEntryRow) -> Vec<Bound<'r>> {
    vec![
        text(&row.org_id),
        integer(row.position),
        text(row.entry_type),
        time(row.occurred_at),
        text(&row.occurred_day),
        text(&row.reference),
        optional_text(row.description.as_deref()),
        optional_text(row.call_id.as_deref()),
        optional_text(row.credential_kind.as_deref()),
        optional_text(row.credential_id.as_deref()),
        optional_text(row.agent_id.as_deref()),
        optional_text(row.agent_name.as_deref()),
        optional_text(row.act_for.as_deref()),
        optional_text(row.model.as_deref()),
        optional_integer(row.input_tokens),
        optional_integer(row.output_tokens),
        integer(row.debit_micros),
        integer(row.credit_micros),
        integer(row.released_micros),
        optional_integer(row.balance_after_micros),
    ]
}

fn write_settlements(transaction: &Transaction<'_>, settlements: &[SettledCallRow]) -> Result<(), StoreError> {
    write_chunked(
        transaction,
        settlements,
        |rows| {
            format!(
                "UPDATE read_calls SET input_tokens = v.column2, output_tokens = v.column3, cost_micros = v.column4, \
                 status = v.column5, settled_at = v.column6, settled_position = v.column7 \
                 FROM (VALUES {}) AS v WHERE read_calls.call_id = v.column1",
                tuples(rows, 7)
            )
        },
        |row| {
            vec![
                text(&row.call_id),
                integer(row.input_tokens),
                integer(row.output_tokens),
                integer(row.cost_micros),
                text(&row.status),
                time(row.settled_at),
                integer(row.position),
            ]
        },
    )?;
    Ok(())
}

fn write_expiries(transaction: &Transaction<'_>, expiries: &[CallExpiry]) -> Result<(), StoreError> {
    write_chunked(
        transaction,
        expiries,
        |rows| {
            format!(
                "UPDATE read_calls SET expired_position = v.column2 FROM (VALUES {}) AS v WHERE read_calls.call_id = v.column1",
                tuples(rows, 2)
            )
        },
        |row| vec![text(&row.call_id), integer(row.position)],
    )?;
    Ok(())
}
