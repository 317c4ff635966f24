-- The event log. payload and metadata are the exact bytes hashed (bytea, never jsonb,
-- which reorders keys).
CREATE TABLE events (
    position       BIGINT      PRIMARY KEY,
    stream_id      TEXT        NOT NULL,
    stream_version BIGINT      NOT NULL,
    event_id       TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    payload        BYTEA       NOT NULL,
    metadata       BYTEA       NOT NULL,
    hash           BYTEA       NOT NULL,
    UNIQUE (stream_id, stream_version)
);

-- One row: the position and hash of the last event. Every append is a compare-and-swap on
-- it, which serializes writers on different nodes and keeps positions gapless.
CREATE TABLE log_head (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    position BIGINT  NOT NULL,
    hash     BYTEA   NOT NULL
);
INSERT INTO log_head (id, position, hash) VALUES (TRUE, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION bahi_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: append a correcting event instead';
END
$$;

CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION bahi_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION bahi_refuse_change();
