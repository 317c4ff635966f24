-- Audit and finance read models, all owned by the `audit` projection.

CREATE TABLE read_ledger_entries (
    org_id               TEXT        NOT NULL,
    position             BIGINT      NOT NULL,
    entry_type           TEXT        NOT NULL,
    occurred_at          TIMESTAMPTZ NOT NULL,
    occurred_day         TEXT        NOT NULL,
    reference            TEXT        NOT NULL,
    description          TEXT,
    call_id              TEXT,
    credential_kind      TEXT,
    credential_id        TEXT,
    agent_id             TEXT,
    agent_name           TEXT,
    act_for              TEXT,
    model                TEXT,
    input_tokens         BIGINT,
    output_tokens        BIGINT,
    debit_micros         BIGINT      NOT NULL,
    credit_micros        BIGINT      NOT NULL,
    released_micros      BIGINT      NOT NULL,
    balance_after_micros BIGINT      NOT NULL,
    PRIMARY KEY (org_id, position)
);
CREATE INDEX read_ledger_entries_by_time ON read_ledger_entries (org_id, occurred_at);

CREATE TABLE read_calls (
    call_id         TEXT        PRIMARY KEY,
    org_id          TEXT        NOT NULL,
    credential_kind TEXT        NOT NULL,
    credential_id   TEXT        NOT NULL,
    agent_id        TEXT,
    agent_name      TEXT,
    act_for         TEXT        NOT NULL,
    model           TEXT        NOT NULL,
    hold_micros     BIGINT      NOT NULL,
    authorized_at   TIMESTAMPTZ NOT NULL,
    input_tokens    BIGINT,
    output_tokens   BIGINT,
    cost_micros     BIGINT,
    status          TEXT,
    settled_at      TIMESTAMPTZ,
    position        BIGINT      NOT NULL
);

CREATE TABLE read_call_events (
    call_id    TEXT   NOT NULL,
    position   BIGINT NOT NULL,
    event_type TEXT   NOT NULL,
    PRIMARY KEY (call_id, position)
);

-- Which org each event belongs to (events without an org have no row).
CREATE TABLE read_org_events (
    org_id   TEXT   NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (org_id, position)
);
