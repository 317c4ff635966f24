//! Filling the ledger read model directly, many rows per statement: the finance benchmarks
//! measure reading a large read model, not projecting into it.

use bahi::store::Store;
use bahi_domain::chain::format_recorded_at;
use bahi_projections::LedgerEntryRow;
use sqlx::{PgPool, QueryBuilder, Sqlite, SqlitePool};

const COLUMNS: &str = "org_id, position, entry_type, occurred_at, occurred_day, reference, description, call_id, \
     credential_kind, credential_id, agent_id, agent_name, act_for, model, input_tokens, output_tokens, debit_micros, \
     credit_micros, released_micros, balance_after_micros";

/// Rows per INSERT on SQLite (20 columns each; SQLite allows 32766 variables).
const BULK_ROWS: usize = 1000;

pub async fn insert_ledger_entries(store: &Store, rows: &[LedgerEntryRow]) -> Result<(), sqlx::Error> {
    match store {
        Store::Sqlite(store) => insert_sqlite(store.pool(), rows).await,
        Store::Postgres(store) => insert_postgres(store.pool(), rows).await,
    }
}

/// What the projection would have written beside the rows: their daily sums
/// (`read_usage_daily`, summed as migration 6 sums the entries already there), then fresh
/// planner statistics (PostgreSQL's plans depend on them; SQLite's here do not).
pub async fn finish_ledger_entries(store: &Store) -> Result<(), sqlx::Error> {
    const DAILY_USAGE: &str = "INSERT INTO read_usage_daily \
        SELECT org_id, occurred_day, coalesce(agent_id, ''), coalesce(agent_name, ''), coalesce(act_for, ''), \
        coalesce(model, ''), coalesce(credential_kind, ''), CASE WHEN credential_kind = 'api_key' THEN coalesce(credential_id, '') ELSE '' END, count(*), \
        CAST(coalesce(sum(input_tokens), 0) AS BIGINT), CAST(coalesce(sum(output_tokens), 0) AS BIGINT), \
        CAST(sum(debit_micros) AS BIGINT), max(position) FROM read_ledger_entries WHERE entry_type = 'usage' \
        GROUP BY org_id, occurred_day, coalesce(agent_id, ''), coalesce(agent_name, ''), coalesce(act_for, ''), \
        coalesce(model, ''), coalesce(credential_kind, ''), CASE WHEN credential_kind = 'api_key' THEN coalesce(credential_id, '') ELSE '' END";
    match store {
        Store::Sqlite(store) => {
            sqlx::query(DAILY_USAGE).execute(store.pool()).await?;
        }
        Store::Postgres(store) => {
            sqlx::query(DAILY_USAGE).execute(store.pool()).await?;
            sqlx::query("ANALYZE read_ledger_entries").execute(store.pool()).await?;
            sqlx::query("ANALYZE read_usage_daily").execute(store.pool()).await?;
        }
    }
    Ok(())
}

async fn insert_sqlite(pool: &SqlitePool, rows: &[LedgerEntryRow]) -> Result<(), sqlx::Error> {
    let mut transaction = pool.begin().await?;
    for chunk in rows.chunks(BULK_ROWS) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO read_ledger_entries ({COLUMNS}) "));
        builder.push_values(chunk, |mut values, row| {
            values
                .push_bind(row.org_id.clone())
                .push_bind(row.position)
                .push_bind(row.entry_type)
                .push_bind(format_recorded_at(row.occurred_at))
                .push_bind(row.occurred_day.clone())
                .push_bind(row.reference.clone())
                .push_bind(row.description.clone())
                .push_bind(row.call_id.clone())
                .push_bind(row.credential_kind.clone())
                .push_bind(row.credential_id.clone())
                .push_bind(row.agent_id.clone())
                .push_bind(row.agent_name.clone())
                .push_bind(row.act_for.clone())
                .push_bind(row.model.clone())
                .push_bind(row.input_tokens)
                .push_bind(row.output_tokens)
                .push_bind(row.debit_micros)
                .push_bind(row.credit_micros)
                .push_bind(row.released_micros)
                .push_bind(row.balance_after_micros.unwrap_or(0));
        });
        builder.build().execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    Ok(())
}

async fn insert_postgres(pool: &PgPool, rows: &[LedgerEntryRow]) -> Result<(), sqlx::Error> {
    let mut transaction = pool.begin().await?;
    for chunk in rows.chunks(10_000) {
        let column = |get: fn(&LedgerEntryRow) -> Option<String>| chunk.iter().map(get).collect::<Vec<_>>();
        let number = |get: fn(&LedgerEntryRow) -> Option<i64>| chunk.iter().map(get).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO read_ledger_entries (org_id, position, entry_type, occurred_at, occurred_day, reference, description, \
             call_id, credential_kind, credential_id, agent_id, agent_name, act_for, model, input_tokens, output_tokens, \
             debit_micros, credit_micros, released_micros, balance_after_micros) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::bigint[], \
             $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[])",
        )
        .bind(column(|row| Some(row.org_id.clone())))
        .bind(number(|row| Some(row.position)))
        .bind(column(|row| Some(row.entry_type.to_owned())))
        .bind(chunk.iter().map(|row| row.occurred_at).collect::<Vec<_>>())
        .bind(column(|row| Some(row.occurred_day.clone())))
        .bind(column(|row| Some(row.reference.clone())))
        .bind(column(|row| row.description.clone()))
        .bind(column(|row| row.call_id.clone()))
        .bind(column(|row| row.credential_kind.clone()))
        .bind(column(|row| row.credential_id.clone()))
        .bind(column(|row| row.agent_id.clone()))
        .bind(column(|row| row.agent_name.clone()))
        .bind(column(|row| row.act_for.clone()))
        .bind(column(|row| row.model.clone()))
        .bind(number(|row| row.input_tokens))
        .bind(number(|row| row.output_tokens))
        .bind(number(|row| Some(row.debit_micros)))
        .bind(number(|row| Some(row.credit_micros)))
        .bind(number(|row| Some(row.released_micros)))
        .bind(number(|row| Some(row.balance_after_micros.unwrap_or(0))))
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(())
}
