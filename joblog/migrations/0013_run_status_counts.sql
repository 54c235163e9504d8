-- /metrics without a scan of every run: runs per status kept by the projection, and Open Orders
-- paged by keyset (one index per sortable column).

-- Runs per status, as counters: the scrape sums at most (statuses x 16) rows. It always equals
-- SELECT status, count(*) FROM job_logs GROUP BY status, kept so by statement triggers on job_logs
-- (each statement subtracts what its changed rows counted before and adds what they count now), so
-- redelivery, a lost worker's verdict and its overrule, deletions (events, retention, `joblog delete`)
-- and `joblog rebuild` (joblog_install_job_stats below) all give the same numbers.
--
-- Several recorders commit batches at once: one row per status would make them wait on each other's
-- row lock until commit. So each writing transaction claims a shard of its own (an advisory lock held
-- to its end: no two transactions share a shard, so none waits on another's counter rows, and none
-- can deadlock on them) and adds its deltas to that shard's rows only, in status order.
CREATE TABLE run_status_counts (
    status  text NOT NULL,
    shard   smallint NOT NULL,
    runs    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (status, shard)
) WITH (fillfactor = 50);                               -- room for HOT updates: every batch updates a row

-- The shard of the current transaction's counter rows: claimed once per transaction (an advisory
-- lock, remembered in a transaction-local setting), starting from the backend's pid. With more than
-- 16 writers at once, the extra ones share the pid's shard: they wait on its rows in turn, and may
-- deadlock there, which the recorder retries (a TransactionRollbackError is transient).
CREATE FUNCTION joblog_run_counts_shard() RETURNS smallint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    claimed text := NULLIF(current_setting('joblog.run_counts_shard', true), '');
    first int := pg_backend_pid() % 16;
    candidate int;
BEGIN
    IF claimed IS NOT NULL THEN
        RETURN claimed::smallint;
    END IF;
    FOR i IN 0..15 LOOP
        candidate := (first + i) % 16;
        -- Key class 7305119 is this function's alone (the other advisory locks use one bigint key or hashtext).
        IF pg_try_advisory_xact_lock(7305119, candidate) THEN
            PERFORM set_config('joblog.run_counts_shard', candidate::text, true);
            RETURN candidate;
        END IF;
    END LOOP;
    RETURN first;
END
$$;

-- Adds the statement's change per status to this transaction's shard (a no-op when no status changed).
CREATE FUNCTION joblog_run_status_counts_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_status_counts AS c (status, shard, runs)
        SELECT d.status, joblog_run_counts_shard(), d.runs
        FROM (SELECT status, count(*) AS runs FROM new_rows GROUP BY status) d
        ORDER BY d.status                                   -- one lock order
        ON CONFLICT (status, shard) DO UPDATE SET runs = c.runs + EXCLUDED.runs;
    ELSIF TG_OP = 'UPDATE' THEN
        -- No join on id: every old row is taken away and every new row added, so any UPDATE counts right.
        INSERT INTO run_status_counts AS c (status, shard, runs)
        SELECT d.status, joblog_run_counts_shard(), d.runs
        FROM (SELECT status, sum(runs) AS runs
              FROM (SELECT status, -1 AS runs FROM old_rows UNION ALL SELECT status, 1 FROM new_rows) m
              GROUP BY status HAVING sum(runs) <> 0) d
        ORDER BY d.status
        ON CONFLICT (status, shard) DO UPDATE SET runs = c.runs + EXCLUDED.runs;
    ELSE
        INSERT INTO run_status_counts AS c (status, shard, runs)
        SELECT d.status, joblog_run_counts_shard(), -d.runs
        FROM (SELECT status, count(*) AS runs FROM old_rows GROUP BY status) d
        ORDER BY d.status
        ON CONFLICT (status, shard) DO UPDATE SET runs = c.runs + EXCLUDED.runs;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE fires no DELETE trigger: it empties the counters too.
CREATE FUNCTION joblog_run_status_counts_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM run_status_counts;
    RETURN NULL;
END
$$;

-- As in 0010 (the per-job statistics' triggers, job_stats recomputed), and now also the run counters'
-- triggers and the counters recomputed. `joblog rebuild` calls it after its swap (a fresh job_logs has
-- no triggers), so the rebuilt tables keep both up to date.
CREATE OR REPLACE FUNCTION joblog_install_job_stats() RETURNS void
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

    DROP TRIGGER IF EXISTS run_status_counts_insert ON job_logs;
    DROP TRIGGER IF EXISTS run_status_counts_update ON job_logs;
    DROP TRIGGER IF EXISTS run_status_counts_delete ON job_logs;
    DROP TRIGGER IF EXISTS run_status_counts_truncate ON job_logs;
    CREATE TRIGGER run_status_counts_insert AFTER INSERT ON job_logs REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION joblog_run_status_counts_apply();
    -- (A column list, UPDATE OF status, cannot have transition tables: an update that moves no status adds nothing.)
    CREATE TRIGGER run_status_counts_update AFTER UPDATE ON job_logs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION joblog_run_status_counts_apply();
    CREATE TRIGGER run_status_counts_delete AFTER DELETE ON job_logs REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION joblog_run_status_counts_apply();
    CREATE TRIGGER run_status_counts_truncate AFTER TRUNCATE ON job_logs
        FOR EACH STATEMENT EXECUTE FUNCTION joblog_run_status_counts_truncate();
    DELETE FROM run_status_counts;
    INSERT INTO run_status_counts (status, shard, runs) SELECT status, 0, count(*) FROM job_logs GROUP BY status;
END
$$;

SELECT joblog_install_job_stats();

-- Open Orders by keyset (services/web/db.py list_open_orders): each sortable column with the order
-- number for ties, over the open orders only, scanned forwards for ascending and backwards for
-- descending; NULLs (ship date, warehouse) are read as a segment of their own, after the others.
-- The order number alone is the primary key's.
CREATE INDEX open_orders_by_customer ON open_orders (customer_name, order_number) WHERE closed_at IS NULL;
CREATE INDEX open_orders_by_status ON open_orders (status, order_number) WHERE closed_at IS NULL;
CREATE INDEX open_orders_by_date ON open_orders (order_date, order_number) WHERE closed_at IS NULL;
CREATE INDEX open_orders_by_ship_date ON open_orders (requested_ship_date, order_number) WHERE closed_at IS NULL;
CREATE INDEX open_orders_by_total ON open_orders (total_amount, order_number) WHERE closed_at IS NULL;
CREATE INDEX open_orders_by_warehouse ON open_orders (warehouse, order_number) WHERE closed_at IS NULL;
-- Replaced by open_orders_by_date, whose ties go the same way as the dates in both directions.
DROP INDEX open_orders_open;
