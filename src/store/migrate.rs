//! A small embedded migrator: migrations are compiled into the binary, applied in order in
//! one transaction each, and recorded with a checksum so an edited migration is refused.

use sha2::{Digest, Sha256};

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "event_log", sql: include_str!("../../migrations/sqlite/0001_event_log.sql") },
    Migration { version: 2, name: "read_models", sql: include_str!("../../migrations/sqlite/0002_read_models.sql") },
    Migration {
        version: 3,
        name: "audit_read_models",
        sql: include_str!("../../migrations/sqlite/0003_audit_read_models.sql"),
    },
    Migration {
        version: 4,
        name: "read_models_in_their_own_file",
        sql: include_str!("../../migrations/sqlite/0004_read_models_in_their_own_file.sql"),
    },
];

/// The SQLite migrations that create read-model tables. Since migration 4 the read models
/// live in a file of their own: these are applied there, in this order, followed by
/// `SQLITE_READ_FILE`, and the file's `user_version` counts how many it has. A new or
/// deleted file gets them all again.
pub const SQLITE_READ_MODELS: &[i64] = &[2, 3];

/// Read-model migrations written after the read models moved to their own file: applied
/// to that file only (after `SQLITE_READ_MODELS`), never to the log's file.
pub const SQLITE_READ_FILE: &[Migration] = &[
    Migration {
        version: 5,
        name: "call_positions",
        sql: include_str!("../../migrations/sqlite/0005_call_positions.sql"),
    },
    Migration { version: 6, name: "usage_daily", sql: include_str!("../../migrations/sqlite/0006_usage_daily.sql") },
];

pub const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "event_log", sql: include_str!("../../migrations/postgres/0001_event_log.sql") },
    Migration { version: 2, name: "read_models", sql: include_str!("../../migrations/postgres/0002_read_models.sql") },
    Migration {
        version: 3,
        name: "audit_read_models",
        sql: include_str!("../../migrations/postgres/0003_audit_read_models.sql"),
    },
    Migration {
        version: 4,
        name: "call_positions",
        sql: include_str!("../../migrations/postgres/0004_call_positions.sql"),
    },
    Migration {
        version: 5,
        name: "read_model_ids_collate_c",
        sql: include_str!("../../migrations/postgres/0005_read_model_ids_collate_c.sql"),
    },
    Migration { version: 6, name: "usage_daily", sql: include_str!("../../migrations/postgres/0006_usage_daily.sql") },
];

pub fn checksum(migration: &Migration) -> String {
    Sha256::digest(migration.sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
