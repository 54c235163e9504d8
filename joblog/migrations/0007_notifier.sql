-- The notifier: alerts, their deliveries (an outbox, written in the same transaction as the alert),
-- and what it keeps of runs and schedules to judge them.

-- Every alert raised. One open alert per condition (kind:job) until it clears.
CREATE TABLE alerts (
    id             uuid PRIMARY KEY,                  -- the alert_id: the receivers' idempotency key
    kind           text NOT NULL,
    job            text,
    run_name       text,
    condition_key  text NOT NULL,                     -- kind:job; at most one open alert each
    message        text NOT NULL,
    link           text,
    details        jsonb NOT NULL DEFAULT '{}',
    repeats        integer NOT NULL DEFAULT 0,        -- later occurrences folded into this open alert
    raised_at      timestamptz NOT NULL,
    cleared_at     timestamptz
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (condition_key) WHERE cleared_at IS NULL;
CREATE INDEX alerts_recent ON alerts (raised_at DESC);

-- One row per alert and channel: pending until the receiver said 2xx (or JetStream acked).
CREATE TABLE alert_deliveries (
    alert_id         uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel          text NOT NULL,                   -- webhook | slack | email | stream
    target           text NOT NULL,                   -- the URL, the address list, the subject
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    PRIMARY KEY (alert_id, channel, target)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE state = 'pending';

-- The runs as the notifier's own consumer saw them (times on JetStream's clock).
CREATE TABLE notifier_runs (
    run_id        uuid PRIMARY KEY,
    job           text NOT NULL,
    name          text NOT NULL,
    incarnation   uuid,
    worker_id     text,
    created_at    timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    status        text NOT NULL DEFAULT 'new',
    terminal_seq  integer,                            -- the lowest terminal seq is the result
    duration_ms   bigint
);
CREATE INDEX notifier_runs_open ON notifier_runs (job) WHERE terminal_seq IS NULL;
CREATE INDEX notifier_runs_job_recent ON notifier_runs (job, finished_at DESC) WHERE status = 'success';
CREATE INDEX notifier_runs_job_created ON notifier_runs (job, created_at DESC);

-- Schedules as the workers announced them, kept when no worker runs (the dead man's switch).
CREATE TABLE notifier_schedules (
    job            text PRIMARY KEY,
    expression     text NOT NULL,
    announced_at   timestamptz NOT NULL,
    checked_until  timestamptz NOT NULL               -- slots up to here are judged
);

-- Small facts: where history ends on the stream, the dead letters already seen.
CREATE TABLE notifier_state (
    key    text PRIMARY KEY,
    value  bigint NOT NULL
);
