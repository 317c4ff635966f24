-- SQL read models. Each projection's checkpoint is written in the same transaction as its
-- rows, so a crash never leaves rows ahead of or behind their checkpoint.
CREATE TABLE projection_checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);

CREATE TABLE read_orgs (
    org_id        TEXT    PRIMARY KEY,
    display_name  TEXT    NOT NULL,
    plan          TEXT    NOT NULL,
    environment   TEXT    NOT NULL,
    registered_at TEXT    NOT NULL,
    position      INTEGER NOT NULL
);

CREATE TABLE read_api_keys (
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
CREATE INDEX read_api_keys_by_org ON read_api_keys (org_id);
