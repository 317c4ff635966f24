-- The SQL read models, in a database file of their own (`<database>.read`), attached to
-- every connection that reads them as `read_models`. Projection transactions then take the
-- read file's write lock, never the log's, so they run beside the writer's appends instead
-- of between them. The file holds nothing that the log cannot rebuild: it is created here
-- at every start (IF NOT EXISTS), and a missing or deleted file is projected again from
-- the log. Its tables were created in the main file by migrations 2 and 3; migration 4
-- drops those.

-- SQL read models. Each projection's checkpoint is written in the same transaction as its
-- rows, so a crash never leaves rows ahead of or behind their checkpoint.
CREATE TABLE IF NOT EXISTS read_models.projection_checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS read_models.read_orgs (
    org_id        TEXT    PRIMARY KEY,
    display_name  TEXT    NOT NULL,
    plan          TEXT    NOT NULL,
    environment   TEXT    NOT NULL,
    registered_at TEXT    NOT NULL,
    position      INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS read_models.read_api_keys (
    key_id         TEXT    PRIMARY KEY,
    org_id         TEXT    NOT NULL,
    name           TEXT,
    display_prefix TEXT    NOT NULL,
    scopes         TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    expires_at     TEXT,
    revoked_at     TEXT,
    position       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS read_models.read_api_keys_by_org ON read_api_keys (org_id);

-- Audit and finance read models, all owned by the `audit` projection.

-- One row per ledger entry of an org, in log order. Clustered on (org_id, position) so a
-- statement or an attribution report reads one contiguous range of the B-tree.
CREATE TABLE IF NOT EXISTS read_models.read_ledger_entries (
    org_id               TEXT    NOT NULL,
    position             INTEGER NOT NULL,
    entry_type           TEXT    NOT NULL,
    occurred_at          TEXT    NOT NULL,
    occurred_day         TEXT    NOT NULL,
    reference            TEXT    NOT NULL,
    description          TEXT,
    call_id              TEXT,
    credential_kind      TEXT,
    credential_id        TEXT,
    agent_id             TEXT,
    agent_name           TEXT,
    act_for              TEXT,
    model                TEXT,
    input_tokens         INTEGER,
    output_tokens        INTEGER,
    debit_micros         INTEGER NOT NULL,
    credit_micros        INTEGER NOT NULL,
    released_micros      INTEGER NOT NULL,
    balance_after_micros INTEGER NOT NULL,
    PRIMARY KEY (org_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS read_models.read_ledger_entries_by_time ON read_ledger_entries (org_id, occurred_at);

CREATE TABLE IF NOT EXISTS read_models.read_calls (
    call_id         TEXT    PRIMARY KEY,
    org_id          TEXT    NOT NULL,
    credential_kind TEXT    NOT NULL,
    credential_id   TEXT    NOT NULL,
    agent_id        TEXT,
    agent_name      TEXT,
    act_for         TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    hold_micros     INTEGER NOT NULL,
    authorized_at   TEXT    NOT NULL,
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    cost_micros     INTEGER,
    status          TEXT,
    settled_at      TEXT,
    position        INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS read_models.read_call_events (
    call_id    TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    PRIMARY KEY (call_id, position)
) WITHOUT ROWID;

-- Which org each event belongs to (events without an org, such as prices and signing keys,
-- have no row): the audit log of an org is this table joined with `events`.
CREATE TABLE IF NOT EXISTS read_models.read_org_events (
    org_id   TEXT    NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (org_id, position)
) WITHOUT ROWID;
