-- The Jobs Monitor's operations: per-job statistics (pre-aggregated), schedule pauses, finding a run
-- by the command that started it.

-- A run's outcome as the pages show it: a skipped run keeps status success in the data.
CREATE FUNCTION joblog_outcome(status text, stats jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN status = 'success' AND stats @> '{"skipped": true}' THEN 'skipped' ELSE status END
$$;

-- Finished runs per job, hour (UTC) and outcome: the charts read this, never every run. It always
-- equals an aggregate of job_logs' finished runs (bucket: the hour the run was created), kept so by
-- statement triggers on job_logs, so redelivery, out-of-order events, a result that is replaced
-- (a lost worker's verdict overruled), deletions and `joblog rebuild` all give the same numbers.
CREATE TABLE job_stats (
    job           text NOT NULL,
    bucket        timestamptz NOT NULL,                 -- date_trunc('hour', created_at) in UTC
    outcome       text NOT NULL,                        -- success | error | skipped
    runs          bigint NOT NULL DEFAULT 0,
    duration_runs bigint NOT NULL DEFAULT 0,            -- runs with a duration
    duration_ms   bigint NOT NULL DEFAULT 0,            -- their total duration
    PRIMARY KEY (job, bucket, outcome)
);

-- The UTC hour a run counts in.
CREATE FUNCTION joblog_hour(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_trunc('hour', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

-- What the changed rows contributed before (minus) and contribute now (plus), summed per bucket.
CREATE FUNCTION joblog_job_stats_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH delta AS (
            SELECT n.job, joblog_hour(n.created_at) AS bucket, joblog_outcome(n.status, n.stats) AS outcome, 1::bigint AS runs,
                   (n.duration_ms IS NOT NULL)::int::bigint AS duration_runs, COALESCE(n.duration_ms, 0)::bigint AS duration_ms
            FROM new_rows n WHERE n.terminal_seq IS NOT NULL
        )
    INSERT INTO job_stats AS s (job, bucket, outcome, runs, duration_runs, duration_ms)
    SELECT job, bucket, outcome, sum(runs), sum(duration_runs), sum(duration_ms)
    FROM delta GROUP BY job, bucket, outcome
    HAVING sum(runs) <> 0 OR sum(duration_runs) <> 0 OR sum(duration_ms) <> 0
    ORDER BY job, bucket, outcome                       -- one lock order for concurrent recorders
    ON CONFLICT (job, bucket, outcome) DO UPDATE SET
        runs = s.runs + EXCLUDED.runs,
        duration_runs = s.duration_runs + EXCLUDED.duration_runs,
        duration_ms = s.duration_ms + EXCLUDED.duration_ms;
    ELSIF TG_OP = 'UPDATE' THEN
        WITH changed AS (
            SELECT o.job AS o_job, o.created_at AS o_created, o.status AS o_status, o.stats AS o_stats,
                   o.duration_ms AS o_duration, o.terminal_seq AS o_terminal, n.*
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE o.terminal_seq IS DISTINCT FROM n.terminal_seq OR o.status IS DISTINCT FROM n.status
               OR o.created_at IS DISTINCT FROM n.created_at OR o.duration_ms IS DISTINCT FROM n.duration_ms
               OR o.stats IS DISTINCT FROM n.stats OR o.job IS DISTINCT FROM n.job
        ), delta AS (
            SELECT o_job AS job, joblog_hour(o_created) AS bucket, joblog_outcome(o_status, o_stats) AS outcome,
                   -1::bigint AS runs, -(o_duration IS NOT NULL)::int::bigint AS duration_runs,
                   -COALESCE(o_duration, 0)::bigint AS duration_ms
            FROM changed WHERE o_terminal IS NOT NULL
            UNION ALL
            SELECT n.job, joblog_hour(n.created_at) AS bucket, joblog_outcome(n.status, n.stats) AS outcome, 1::bigint AS runs,
                   (n.duration_ms IS NOT NULL)::int::bigint AS duration_runs, COALESCE(n.duration_ms, 0)::bigint AS duration_ms
            FROM changed n WHERE n.terminal_seq IS NOT NULL
        )
    INSERT INTO job_stats AS s (job, bucket, outcome, runs, duration_runs, duration_ms)
    SELECT job, bucket, outcome, sum(runs), sum(duration_runs), sum(duration_ms)
    FROM delta GROUP BY job, bucket, outcome
    HAVING sum(runs) <> 0 OR sum(duration_runs) <> 0 OR sum(duration_ms) <> 0
    ORDER BY job, bucket, outcome                       -- one lock order for concurrent recorders
    ON CONFLICT (job, bucket, outcome) DO UPDATE SET
        runs = s.runs + EXCLUDED.runs,
        duration_runs = s.duration_runs + EXCLUDED.duration_runs,
        duration_ms = s.duration_ms + EXCLUDED.duration_ms;
    ELSE
        WITH delta AS (
            SELECT o.job, joblog_hour(o.created_at) AS bucket, joblog_outcome(o.status, o.stats) AS outcome, -1::bigint AS runs,
                   -(o.duration_ms IS NOT NULL)::int::bigint AS duration_runs, -COALESCE(o.duration_ms, 0)::bigint AS duration_ms
            FROM old_rows o WHERE o.terminal_seq IS NOT NULL
        )
    INSERT INTO job_stats AS s (job, bucket, outcome, runs, duration_runs, duration_ms)
    SELECT job, bucket, outcome, sum(runs), sum(duration_runs), sum(duration_ms)
    FROM delta GROUP BY job, bucket, outcome
    HAVING sum(runs) <> 0 OR sum(duration_runs) <> 0 OR sum(duration_ms) <> 0
    ORDER BY job, bucket, outcome                       -- one lock order for concurrent recorders
    ON CONFLICT (job, bucket, outcome) DO UPDATE SET
        runs = s.runs + EXCLUDED.runs,
        duration_runs = s.duration_runs + EXCLUDED.duration_runs,
        duration_ms = s.duration_ms + EXCLUDED.duration_ms;
    END IF;
    RETURN NULL;
END
$$;

-- Installs the triggers on job_logs and recomputes job_stats from it. Called here and by
-- `joblog rebuild` after its swap (a fresh job_logs has no triggers).
CREATE FUNCTION joblog_install_job_stats() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DROP TRIGGER IF EXISTS job_stats_insert ON job_logs;
    DROP TRIGGER IF EXISTS job_stats_update ON job_logs;
    DROP TRIGGER IF EXISTS job_stats_delete ON job_logs;
    CREATE TRIGGER job_stats_insert AFTER INSERT ON job_logs REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION joblog_job_stats_apply();
    CREATE TRIGGER job_stats_update AFTER UPDATE ON job_logs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION joblog_job_stats_apply();
    CREATE TRIGGER job_stats_delete AFTER DELETE ON job_logs REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION joblog_job_stats_apply();
    DELETE FROM job_stats;
    INSERT INTO job_stats (job, bucket, outcome, runs, duration_runs, duration_ms)
    SELECT job, joblog_hour(created_at), joblog_outcome(status, stats),
           count(*), count(duration_ms), COALESCE(sum(duration_ms), 0)
    FROM job_logs WHERE terminal_seq IS NOT NULL GROUP BY 1, 2, 3;
END
$$;

SELECT joblog_install_job_stats();

-- The newest runs of a job, skipped ones aside (the Monitor's "last result").
CREATE INDEX job_logs_job_outcome_recent ON job_logs (job, created_at DESC, id DESC)
    WHERE NOT (status = 'success' AND stats @> '{"skipped": true}');

-- "Run now" lands on the run it started: found by the trigger's command id.
CREATE INDEX job_logs_command ON job_logs (command_id) WHERE command_id IS NOT NULL;

-- Each job's schedule state: the last schedule.paused / schedule.resumed of its subject in the stream.
CREATE TABLE schedule_states (
    job           text PRIMARY KEY,
    paused        boolean NOT NULL,
    requested_by  text NOT NULL,
    reason        text,
    changed_at    timestamptz NOT NULL,                 -- the event's occurred_at
    event_id      uuid NOT NULL,
    stream_seq    bigint NOT NULL                       -- the newest event wins, whatever order they arrive in
);
