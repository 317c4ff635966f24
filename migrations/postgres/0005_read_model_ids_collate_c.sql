-- Read-model ids compare as bytes (COLLATE "C"), as SQLite's BINARY does, whatever the
-- server's locale. Ids are ASCII, so no order changes; what changes is the cost: under a
-- libc locale (C.UTF-8 included, on PostgreSQL 15) every B-tree comparison of these keys
-- went through strcoll. A rebuild of a million gateway events took 45.7 s instead of
-- 49.1 s (BENCHMARKS.md). The rows are not rewritten, only the indexes on these columns.
ALTER TABLE read_orgs ALTER COLUMN org_id TYPE text COLLATE "C";
ALTER TABLE read_api_keys ALTER COLUMN key_id TYPE text COLLATE "C", ALTER COLUMN org_id TYPE text COLLATE "C";
ALTER TABLE read_ledger_entries
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN call_id TYPE text COLLATE "C",
    ALTER COLUMN credential_id TYPE text COLLATE "C",
    ALTER COLUMN agent_id TYPE text COLLATE "C";
ALTER TABLE read_calls ALTER COLUMN call_id TYPE text COLLATE "C", ALTER COLUMN org_id TYPE text COLLATE "C";
ALTER TABLE read_org_events ALTER COLUMN org_id TYPE text COLLATE "C";
