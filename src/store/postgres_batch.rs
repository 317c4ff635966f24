//! PostgreSQL: writes a planned `RowBatch` with one UNNEST statement per table, so a page
//! costs a handful of round trips instead of one per row.

use bahi_projections::batch::RowBatch;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::StoreError;

/// One column of a batch, gathered from its rows.
fn column<'a, T, V>(rows: &'a [T], get: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(get).collect()
}

/// Writes every row of `batch` inside the caller's transaction.
pub async fn write(connection: &mut PgConnection, batch: &RowBatch) -> Result<(), StoreError> {
    if !batch.orgs.is_empty() {
        let rows = &batch.orgs;
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
    if !batch.api_keys.is_empty() {
        let rows = &batch.api_keys;
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
    if !batch.key_revocations.is_empty() {
        let rows = &batch.key_revocations;
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
    // transaction), so a key can never be inserted twice. They are plain INSERTs: `ON
    // CONFLICT DO NOTHING` probes each index before inserting, which made 100,000 ledger
    // rows take 643-744 ms instead of 479-523 ms (psql, BENCHMARKS.md). A duplicate would be
    // a broken invariant, and now fails the page instead of passing unseen.
    if !batch.ledger_entries.is_empty() {
        let rows = &batch.ledger_entries;
        // A row without its own balance repeats the org's previous entry: the planner filled
        // it from the page where it could, so what is left is already in the table (a
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
        let rows = &batch.calls;
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
    if !batch.settlements.is_empty() {
        let rows = &batch.settlements;
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
    if !batch.expiries.is_empty() {
        let rows = &batch.expiries;
        sqlx::query(
            "UPDATE read_calls AS c SET expired_position = u.position \
             FROM UNNEST($1::text[], $2::bigint[]) AS u(call_id, position) WHERE c.call_id = u.call_id",
        )
        .bind(column(rows, |row| row.call_id.as_str()))
        .bind(column(rows, |row| row.position))
        .execute(&mut *connection)
        .await?;
    }
    if !batch.org_events.is_empty() {
        let rows = &batch.org_events;
        sqlx::query("INSERT INTO read_org_events (org_id, position) SELECT * FROM UNNEST($1::text[], $2::bigint[])")
            .bind(column(rows, |row| row.org_id.as_str()))
            .bind(column(rows, |row| row.position))
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}
