-- The log recorder's retention tombstones, worker registry and lag columns.

-- Every RunsDeleted event applied (the spec's manual retention), as it came from the stream.
CREATE TABLE run_deletions (
    event_id        uuid PRIMARY KEY,
    names           text[] NOT NULL DEFAULT '{}',
    created_before  timestamptz,                      -- every run created before this is deleted
    requested_by    text,
    occurred_at     timestamptz NOT NULL,
    stream_seq      bigint,
    applied_at      timestamptz NOT NULL DEFAULT now()
);

-- Tombstones: a later or redelivered event of one of these runs never brings its row back.
CREATE TABLE deleted_runs (
    name        text PRIMARY KEY,
    deleted_at  timestamptz NOT NULL,
    event_id    uuid NOT NULL
);

-- Workers as their heartbeats describe them; lost_at is set when the recorder closed their runs.
CREATE TABLE workers (
    worker_id     text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,               -- JetStream's time of the latest heartbeat
    running       uuid[] NOT NULL DEFAULT '{}',
    jobs          jsonb,
    lost_at       timestamptz
);
CREATE INDEX job_logs_open_by_worker ON job_logs (worker_id) WHERE status IN ('new', 'processing');

-- The durable consumer's own view of the lag, copied from JetStream's consumer info.
ALTER TABLE projection_state
    ADD COLUMN num_pending      bigint,               -- in the stream, not yet delivered to any recorder
    ADD COLUMN num_ack_pending  bigint,               -- delivered, not yet acknowledged
    ADD COLUMN num_redelivered  bigint,               -- delivered more than once
    ADD COLUMN stream_last_seq  bigint,               -- the stream's last sequence at that moment
    ADD COLUMN lag_checked_at   timestamptz;
