-- A step must not rewrite every index of its run (issue 15, projection lag).
--
-- Each step event changes only its run's last_seq, seen_seqs and updated_at. None of them is in an
-- index except seen_seqs, through the predicate of job_logs_with_gap (0009), and a column in any
-- index's predicate makes every change of it a non-HOT update: a new entry in each of job_logs' twelve
-- indexes, for every step of every run (and as much index bloat until vacuum). So the gap becomes a
-- column of its own, computed by Postgres from seen_seqs (no writer can forget it; a rebuild's fresh
-- table carries it: LIKE ... INCLUDING GENERATED), which changes only when a run gains or loses a gap,
-- and the partial index is over that. The expression is joblog_seq_gap(seen_seqs) IS NOT NULL written
-- out (a SQL function with a FROM is not inlined and would be set up again on every row written):
-- the worker's seqs (below the verdicts' range) have a gap when they do not start at 1 or are more
-- than one range. tests/log_recorder/test_completeness_and_fingerprints.py checks both agree.
--
-- Adding a stored column rewrites job_logs once, with its indexes, under an exclusive lock: 11 s for
-- 1,000,000 runs (728 MB) on the benchmark machine, while the web and the recorders wait (no event
-- is lost: the stream keeps them).
ALTER TABLE job_logs ADD COLUMN has_gap boolean NOT NULL GENERATED ALWAYS AS (
    COALESCE(
        NOT isempty(seen_seqs * '{[1,2000000000)}'::int4multirange)
        AND (lower(seen_seqs * '{[1,2000000000)}'::int4multirange) > 1
             OR seen_seqs * '{[1,2000000000)}'::int4multirange
                <> int4multirange(range_merge(seen_seqs * '{[1,2000000000)}'::int4multirange))),
        false)
) STORED;

DROP INDEX job_logs_with_gap;
CREATE INDEX job_logs_with_gap ON job_logs (created_at DESC, id DESC) WHERE has_gap;

-- Room on each page for a run's next versions, so a step's update stays on its page (HOT) and the
-- page prunes the old ones itself. New pages only: a run is updated while it is recent.
ALTER TABLE job_logs SET (fillfactor = 85);
