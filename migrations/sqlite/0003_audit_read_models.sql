-- Audit and finance read models, all owned by the `audit` projection.

-- One row per ledger entry of an org, in log order. Clustered on (org_id, position) so a
-- statement or an attribution report reads one contiguous range of the B-tree.
CREATE TABLE read_ledger_entries (
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
CREATE INDEX read_ledger_entries_by_time ON read_ledger_entries (org_id, occurred_at);

CREATE TABLE read_calls (
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

CREATE TABLE read_call_events (
    call_id    TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    PRIMARY KEY (call_id, position)
) WITHOUT ROWID;

-- Which org each event belongs to (events without an org, such as prices and signing keys,
-- have no row): the audit log of an org is this table joined with `events`.
CREATE TABLE read_org_events (
    org_id   TEXT    NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (org_id, position)
) WITHOUT ROWID;
