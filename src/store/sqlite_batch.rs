//! SQLite: writes a planned `RowBatch` with multi-row statements, a few hundred rows each,
//! instead of one statement per row, through rusqlite on a blocking thread: sqlx copied
//! every bound value and handed every statement to its worker thread and back.

use bahi_domain::chain::format_recorded_at;
use bahi_projections::batch::RowBatch;
use rusqlite::Transaction;
use rusqlite::types::Value;

use super::StoreError;

/// Rows per statement. A chunk always takes the largest size that fits, so only these few
/// distinct statements exist per table and each is prepared once and cached. 512 rows of the
/// widest table (20 values) stay far below SQLite's limit of 32,766 bound values.
const CHUNK_ROWS: [usize; 5] = [512, 128, 32, 8, 1];

fn tuples(rows: usize, values: usize) -> String {
    let tuple = format!("({})", vec!["?"; values].join(", "));
    vec![tuple; rows].join(", ")
}

/// Runs `statement(rows)` over `rows` in chunks, binding the values `bind` gives each row.
fn write_chunked<T>(
    transaction: &Transaction<'_>,
    rows: &[T],
    statement: impl Fn(usize) -> String,
    bind: impl Fn(&T) -> Vec<Value>,
) -> Result<(), StoreError> {
    let mut remaining = rows;
    while !remaining.is_empty() {
        let size = CHUNK_ROWS.iter().copied().find(|&size| size <= remaining.len()).unwrap_or(1);
        let (chunk, rest) = remaining.split_at(size);
        let mut prepared = transaction.prepare_cached(&statement(size))?;
        let mut index = 1;
        for row in chunk {
            for value in bind(row) {
                prepared.raw_bind_parameter(index, value)?;
                index += 1;
            }
        }
        prepared.raw_execute()?;
        remaining = rest;
    }
    Ok(())
}

/// Writes every row of `batch` inside the caller's transaction.
///
/// The insert-if-missing tables use `INSERT OR IGNORE`, not `ON CONFLICT DO NOTHING`. Both
/// skip a row whose key exists. But a statement that may abort half-way (any constraint
/// left at ABORT, such as NOT NULL) makes SQLite copy every page it changes into a
/// statement journal first. `OR IGNORE` leaves nothing to abort. That journal was a quarter
/// of a rebuild's writing thread; `OR IGNORE` took the three tables' share from 14.6 s to
/// 9.2 s on a million gateway events (BENCHMARKS.md). The only other constraints are NOT
/// NULL, on columns that the row types fill with values that are never null.
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
                Value::from(row.org_id.clone()),
                Value::from(row.display_name.clone()),
                Value::from(row.plan.clone()),
                Value::from(row.environment.clone()),
                Value::from(format_recorded_at(row.registered_at)),
                Value::from(row.position),
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
                Value::from(row.key_id.clone()),
                Value::from(row.org_id.clone()),
                Value::from(row.name.clone()),
                Value::from(row.display_prefix.clone()),
                Value::from(row.scopes.clone()),
                Value::from(format_recorded_at(row.created_at)),
                Value::from(row.expires_at.map(format_recorded_at)),
                Value::from(row.revoked_at.map(format_recorded_at)),
                Value::from(row.position),
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
        |row| {
            vec![
                Value::from(row.key_id.clone()),
                Value::from(format_recorded_at(row.revoked_at)),
                Value::from(row.position),
            ]
        },
    )?;
    // A row without its own balance repeats the org's previous entry: the planner filled
    // it from the page where it could, so what is left is already in the table.
    write_chunked(
        transaction,
        &batch.ledger_entries,
        |rows| {
            format!(
                "INSERT OR IGNORE INTO read_ledger_entries (org_id, position, entry_type, occurred_at, occurred_day, reference, description, \
                 call_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, input_tokens, output_tokens, \
                 debit_micros, credit_micros, released_micros, balance_after_micros) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, v.column9, \
                 v.column10, v.column11, v.column12, v.column13, v.column14, v.column15, v.column16, v.column17, v.column18, \
                 v.column19, coalesce(v.column20, (SELECT e.balance_after_micros FROM read_ledger_entries e \
                 WHERE e.org_id = v.column1 AND e.position < v.column2 ORDER BY e.position DESC LIMIT 1), 0) \
                 FROM (VALUES {}) AS v",
                tuples(rows, 20)
            )
        },
        |row| {
            vec![
                Value::from(row.org_id.clone()),
                Value::from(row.position),
                Value::from(row.entry_type.to_owned()),
                Value::from(format_recorded_at(row.occurred_at)),
                Value::from(row.occurred_day.clone()),
                Value::from(row.reference.clone()),
                Value::from(row.description.clone()),
                Value::from(row.call_id.clone()),
                Value::from(row.credential_kind.clone()),
                Value::from(row.credential_id.clone()),
                Value::from(row.agent_id.clone()),
                Value::from(row.agent_name.clone()),
                Value::from(row.act_for.clone()),
                Value::from(row.model.clone()),
                Value::from(row.input_tokens),
                Value::from(row.output_tokens),
                Value::from(row.debit_micros),
                Value::from(row.credit_micros),
                Value::from(row.released_micros),
                Value::from(row.balance_after_micros),
            ]
        },
    )?;
    // Insert-if-missing; a call settled or expired in the same page also sets that on a row
    // that already existed, as the UPDATEs after the insert would have. Every settlement
    // column is non-null when there is a settlement, so `coalesce` keeps the row's own
    // values exactly when there is none.
    write_chunked(
        transaction,
        &batch.calls,
        |rows| {
            format!(
                "INSERT INTO read_calls (call_id, org_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, \
                 hold_micros, authorized_at, input_tokens, output_tokens, cost_micros, status, settled_at, \
                 authorized_position, settled_position, expired_position) VALUES {} \
                 ON CONFLICT (call_id) DO UPDATE SET input_tokens = coalesce(excluded.input_tokens, read_calls.input_tokens), \
                 output_tokens = coalesce(excluded.output_tokens, read_calls.output_tokens), \
                 cost_micros = coalesce(excluded.cost_micros, read_calls.cost_micros), \
                 status = coalesce(excluded.status, read_calls.status), \
                 settled_at = coalesce(excluded.settled_at, read_calls.settled_at), \
                 settled_position = coalesce(excluded.settled_position, read_calls.settled_position), \
                 expired_position = coalesce(excluded.expired_position, read_calls.expired_position) \
                 WHERE excluded.settled_position IS NOT NULL OR excluded.expired_position IS NOT NULL",
                tuples(rows, 18)
            )
        },
        |row| {
            let authorized = &row.authorized;
            let settlement = row.settlement.as_ref();
            vec![
                Value::from(authorized.call_id.clone()),
                Value::from(authorized.org_id.clone()),
                Value::from(authorized.credential_kind.clone()),
                Value::from(authorized.credential_id.clone()),
                Value::from(authorized.agent_id.clone()),
                Value::from(authorized.agent_name.clone()),
                Value::from(authorized.act_for.clone()),
                Value::from(authorized.model.clone()),
                Value::from(authorized.hold_micros),
                Value::from(format_recorded_at(authorized.authorized_at)),
                Value::from(settlement.map(|settled| settled.input_tokens)),
                Value::from(settlement.map(|settled| settled.output_tokens)),
                Value::from(settlement.map(|settled| settled.cost_micros)),
                Value::from(settlement.map(|settled| settled.status.clone())),
                Value::from(settlement.map(|settled| format_recorded_at(settled.settled_at))),
                Value::from(authorized.position),
                Value::from(settlement.map(|settled| settled.position)),
                Value::from(row.expired_position),
            ]
        },
    )?;
    write_chunked(
        transaction,
        &batch.settlements,
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
                Value::from(row.call_id.clone()),
                Value::from(row.input_tokens),
                Value::from(row.output_tokens),
                Value::from(row.cost_micros),
                Value::from(row.status.clone()),
                Value::from(format_recorded_at(row.settled_at)),
                Value::from(row.position),
            ]
        },
    )?;
    write_chunked(
        transaction,
        &batch.expiries,
        |rows| {
            format!(
                "UPDATE read_calls SET expired_position = v.column2 FROM (VALUES {}) AS v WHERE read_calls.call_id = v.column1",
                tuples(rows, 2)
            )
        },
        |row| vec![Value::from(row.call_id.clone()), Value::from(row.position)],
    )?;
    write_chunked(
        transaction,
        &batch.org_events,
        |rows| format!("INSERT OR IGNORE INTO read_org_events (org_id, position) VALUES {}", tuples(rows, 2)),
        |row| vec![Value::from(row.org_id.clone()), Value::from(row.position)],
    )
}
