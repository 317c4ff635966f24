CREATE TABLE projection_checkpoints (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);

CREATE TABLE read_orgs (
    org_id        TEXT        PRIMARY KEY,
    display_name  TEXT        NOT NULL,
    plan          TEXT        NOT NULL,
    environment   TEXT        NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL,
    position      BIGINT      NOT NULL
);

CREATE TABLE read_api_keys (
    key_id         TEXT        PRIMARY KEY,
    org_id         TEXT        NOT NULL,
    name           TEXT,
    display_prefix TEXT        NOT NULL,
    scopes         TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ,
    revoked_at     TIMESTAMPTZ,
    position       BIGINT      NOT NULL
);
CREATE INDEX read_api_keys_by_org ON read_api_keys (org_id);
