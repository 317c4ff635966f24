-- The read models moved to a file of their own, `<database>.read`, where migrations 2 and 3
-- are applied again (src/store/sqlite.rs); their old tables in the main file are dropped.
-- The projections are rebuilt from the log into the new file.
DROP TABLE IF EXISTS main.projection_checkpoints;
DROP TABLE IF EXISTS main.read_orgs;
DROP TABLE IF EXISTS main.read_api_keys;
DROP TABLE IF EXISTS main.read_ledger_entries;
DROP TABLE IF EXISTS main.read_calls;
DROP TABLE IF EXISTS main.read_call_events;
DROP TABLE IF EXISTS main.read_org_events;
