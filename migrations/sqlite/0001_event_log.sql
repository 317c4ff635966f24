-- The event log. `position` is the rowid: appends go to the end of the B-tree.
-- Stream versions are checked against the small `streams` table by trigger instead of a
-- UNIQUE(stream_id, stream_version) index over every event, which slows appends 5-8x as
-- the table grows (measured; see ARCHITECTURE.md).
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    event_id       TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    metadata       BLOB    NOT NULL,
    hash           BLOB    NOT NULL
);

CREATE TABLE streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER events_gapless BEFORE INSERT ON events
WHEN NEW.position IS NOT (SELECT coalesce(max(position), 0) + 1 FROM events)
BEGIN
    SELECT RAISE(ABORT, 'events: position must be the next one; the log has no gaps');
END;

CREATE TRIGGER events_stream_version BEFORE INSERT ON events
WHEN NEW.stream_version IS NOT coalesce((SELECT version FROM streams WHERE stream_id = NEW.stream_id), 0) + 1
BEGIN
    SELECT RAISE(ABORT, 'events: stream_version must be the next one of its stream');
END;

CREATE TRIGGER events_stream_advance AFTER INSERT ON events
BEGIN
    INSERT INTO streams (stream_id, version) VALUES (NEW.stream_id, NEW.stream_version)
    ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version;
END;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable: append a correcting event instead');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable: append a correcting event instead');
END;
