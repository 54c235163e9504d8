-- Search across runs, failure groups and event completeness (issue 17).

-- Substring search (ILIKE '%text%') over messages stays fast at millions of rows with trigram indexes.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- What a message's search matches: its text, its key and its data (as JSON text).
CREATE FUNCTION joblog_detail_text(key text, message text, data jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT message || ' ' || key || COALESCE(' ' || data::text, '')
$$;
CREATE INDEX job_log_details_search ON job_log_details USING gin (joblog_detail_text(key, message, data) gin_trgm_ops);
CREATE INDEX job_logs_error_search ON job_logs USING gin ((COALESCE(error_class, '') || ' ' || error_message) gin_trgm_ops)
    WHERE error_message IS NOT NULL;

-- Failure groups: a hash of the error class, the failing step and the normalised message
-- (services/log_recorder/fingerprints.py), set with the run's terminal failure.
ALTER TABLE job_logs ADD COLUMN error_fingerprint text;
CREATE INDEX job_logs_fingerprint ON job_logs (error_fingerprint, created_at DESC, id DESC) WHERE error_fingerprint IS NOT NULL;

-- Event completeness: every seq of the run the projection has seen, unioned per batch (idempotent
-- under redelivery). NULL for runs recorded before this migration: unknown until `joblog rebuild`.
ALTER TABLE job_logs ADD COLUMN seen_seqs int4multirange;

-- The seqs of the recorder's own verdicts (a lost worker, watchdog.VERDICT_SEQ) are not the worker's.
-- Returns the seq after which the worker's events have a gap (0: the first ones are missing),
-- NULL when they run 1..n without a gap (or are unknown).
CREATE FUNCTION joblog_seq_gap(seen int4multirange) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN b IS NULL OR isempty(b) THEN NULL
        WHEN lower(b) > 1 THEN 0
        WHEN upper(b) <> (SELECT upper(r) FROM unnest(b) r LIMIT 1) THEN (SELECT upper(r) - 1 FROM unnest(b) r LIMIT 1)
    END
    FROM (SELECT seen * '{[1,2000000000)}'::int4multirange AS b) s
$$;

-- How many of the worker's seqs were seen, and the highest.
CREATE FUNCTION joblog_seq_count(seen int4multirange) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(sum(upper(r) - lower(r)), 0)::integer FROM unnest(seen * '{[1,2000000000)}'::int4multirange) r
$$;

CREATE INDEX job_logs_with_gap ON job_logs (created_at DESC, id DESC) WHERE joblog_seq_gap(seen_seqs) IS NOT NULL;
