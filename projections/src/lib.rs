//! Read models folded from bahi's events.
//!
//! The in-memory read model every node serves its hot path from is `bahi_domain::State`
//! folded with `evolve` (see ARCHITECTURE.md). This crate holds the SQL read models: each is
//! a pure function from one event to the row operations it causes. The `bahi` crate runs
//! them against SQLite or PostgreSQL with a checkpoint per projection, written in the same
//! transaction as the rows; this crate knows nothing of SQL engines.

use bahi_domain::Event;
use bahi_domain::credential::Scope;
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
}

/// A SQL projection: its name (the checkpoint's key), the tables it owns (emptied by
/// `bahi rebuild`), and its fold.
pub struct Projection {
    pub name: &'static str,
    pub tables: &'static [&'static str],
    pub apply: fn(&Event, i64) -> Vec<SqlOperation>,
}

pub const PROJECTIONS: &[Projection] =
    &[Projection { name: "directory", tables: &["read_orgs", "read_api_keys"], apply: directory }];

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
