-- Applied to the read-model file only (src/store/migrate.rs, SQLITE_READ_FILE).
--
-- A call's events are the ones at the positions its row keeps: its authorization, its
-- settlement and its hold's expiry. `read_call_events`, one row per event of a call, went:
-- it was a third of the rows the audit projection wrote. `read_calls` is keyed by call id
-- alone (WITHOUT ROWID), one B-tree where there were a table and its index.
-- The audit projection is folded again from the start of the log into the new tables.
DROP TABLE read_call_events;
DROP TABLE read_calls;
CREATE TABLE read_calls (
    call_id             TEXT    PRIMARY KEY,
    org_id              TEXT    NOT NULL,
    credential_kind     TEXT    NOT NULL,
    credential_id       TEXT    NOT NULL,
    agent_id            TEXT,
    agent_name          TEXT,
    act_for             TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    hold_micros         INTEGER NOT NULL,
    authorized_at       TEXT    NOT NULL,
    input_tokens        INTEGER,
    output_tokens       INTEGER,
    cost_micros         INTEGER,
    status              TEXT,
    settled_at          TEXT,
    authorized_position INTEGER NOT NULL,
    settled_position    INTEGER,
    expired_position    INTEGER
) WITHOUT ROWID;
DELETE FROM read_ledger_entries;
DELETE FROM read_org_events;
DELETE FROM projection_checkpoints WHERE name = 'audit';
