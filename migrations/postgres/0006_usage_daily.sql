-- Usage per org, UTC day and attribution, summed: attribution and the console's Usage page
-- over whole days read these rows instead of every ledger entry (a month of a million calls
-- is a few thousand rows here). Owned by the `audit` projection, written in the same
-- transaction as the entries. A key column an entry leaves empty is '' (a key holds no NULL);
-- the credential id is kept for API keys only, the one kind attribution groups by.
CREATE TABLE read_usage_daily (
    org_id          TEXT COLLATE "C" NOT NULL,
    day             TEXT COLLATE "C" NOT NULL,
    agent_id        TEXT COLLATE "C" NOT NULL,
    agent_name      TEXT COLLATE "C" NOT NULL,
    act_for         TEXT COLLATE "C" NOT NULL,
    model           TEXT COLLATE "C" NOT NULL,
    credential_kind TEXT COLLATE "C" NOT NULL,
    credential_id   TEXT COLLATE "C" NOT NULL,
    calls           BIGINT NOT NULL,
    input_tokens    BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    debit_micros    BIGINT NOT NULL,
    position        BIGINT NOT NULL,
    PRIMARY KEY (org_id, day, agent_id, agent_name, act_for, model, credential_kind, credential_id)
);
-- The entries already projected, summed as the projection sums them (batch.rs, daily_usage).
INSERT INTO read_usage_daily
SELECT org_id, occurred_day, coalesce(agent_id, ''), coalesce(agent_name, ''), coalesce(act_for, ''),
       coalesce(model, ''), coalesce(credential_kind, ''), CASE WHEN credential_kind = 'api_key' THEN coalesce(credential_id, '') ELSE '' END,
       count(*), CAST(coalesce(sum(input_tokens), 0) AS BIGINT), CAST(coalesce(sum(output_tokens), 0) AS BIGINT),
       CAST(sum(debit_micros) AS BIGINT), max(position)
FROM read_ledger_entries WHERE entry_type = 'usage'
GROUP BY org_id, occurred_day, coalesce(agent_id, ''), coalesce(agent_name, ''), coalesce(act_for, ''),
         coalesce(model, ''), coalesce(credential_kind, ''), CASE WHEN credential_kind = 'api_key' THEN coalesce(credential_id, '') ELSE '' END;
