-- Liveness per run, not per worker id: each run belongs to a worker incarnation (one process,
-- a fresh id per start), and the run is held for as long as that incarnation's heartbeats list it.

-- Which process holds the run (from run.created / run.started) and which command asked for it.
ALTER TABLE job_logs
    ADD COLUMN incarnation uuid,
    ADD COLUMN command_id  text;

-- Every worker process seen, on JetStream's clock. stopped_at: it said it stopped cleanly.
CREATE TABLE worker_incarnations (
    incarnation    uuid PRIMARY KEY,
    worker_id      text NOT NULL,
    host           text NOT NULL,
    pid            integer NOT NULL,
    started_at     timestamptz NOT NULL,              -- the process's own start time
    first_seen_at  timestamptz NOT NULL,              -- JetStream's time of its first heartbeat
    last_seen_at   timestamptz NOT NULL,              -- JetStream's time of its latest heartbeat
    stopped_at     timestamptz                        -- JetStream's time of its worker.stopped
);
CREATE INDEX worker_incarnations_by_worker ON worker_incarnations (worker_id, first_seen_at DESC);

-- A run's lease: the last time (JetStream's clock) a heartbeat of its incarnation listed it.
-- noticed_at: when the recorder first judged the run, so a run never listed still has a start.
CREATE TABLE run_leases (
    run_id       uuid PRIMARY KEY,
    incarnation  uuid,
    listed_at    timestamptz,
    noticed_at   timestamptz
);

-- Written on every heartbeat and never read: the leases replace it.
ALTER TABLE workers DROP COLUMN running;
ALTER TABLE workers ADD COLUMN stopped_at timestamptz;

-- Written every second by every recorder and never read: the web asks JetStream itself.
ALTER TABLE projection_state
    DROP COLUMN num_pending,
    DROP COLUMN num_ack_pending,
    DROP COLUMN num_redelivered,
    DROP COLUMN stream_last_seq,
    DROP COLUMN lag_checked_at;

-- A deletion whose cutoff lay in the future was kept as a filter that hid every later run;
-- cutoffs are now refused when later than their message, and no longer filter: clamp old ones.
UPDATE run_deletions SET created_before = LEAST(created_before, occurred_at) WHERE created_before IS NOT NULL;

-- The audit trail: every action.taken event, as it came from the stream.
CREATE TABLE actions (
    event_id     uuid PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    actor        text NOT NULL,
    action       text NOT NULL,
    job          text,
    target       text,
    detail       jsonb NOT NULL DEFAULT '{}',
    source       text,
    stream_seq   bigint
);
CREATE INDEX actions_recent ON actions (occurred_at DESC);
