-- The projection of run events (written only by the log recorder), the worker's tables,
-- and the recorder's bookkeeping. Times are timestamptz; event times come from the events.

CREATE FUNCTION joblog_status_rank(status text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status WHEN 'new' THEN 0 WHEN 'processing' THEN 1 ELSE 2 END
$$;

CREATE TABLE job_logs (
    id              uuid PRIMARY KEY,                 -- the run_id of the events
    name            text NOT NULL UNIQUE,             -- YYYYMMDDhhmmss[-N]
    job             text NOT NULL,
    status          text NOT NULL DEFAULT 'new'
                    CHECK (status IN ('new', 'processing', 'error', 'success')),
    trigger         text,
    requested_by    text,
    worker_id       text,
    host            text,
    created_at      timestamptz NOT NULL,             -- earliest event of the run
    updated_at      timestamptz NOT NULL,             -- latest event of the run
    started_at      timestamptz,
    finished_at     timestamptz,
    duration_ms     bigint,
    stats           jsonb,
    error_class     text,
    error_message   text,
    error_traceback text,
    failed_step     text,
    last_seq        integer NOT NULL DEFAULT 0,       -- highest seq applied to this run
    terminal_seq    integer                           -- seq of the succeeded/failed event shown
);
CREATE INDEX job_logs_recent ON job_logs (created_at DESC, id DESC);
CREATE INDEX job_logs_job_recent ON job_logs (job, created_at DESC, id DESC);
CREATE INDEX job_logs_status_recent ON job_logs (status, created_at DESC, id DESC);

CREATE TABLE job_log_details (
    id          bigserial PRIMARY KEY,
    job_log_id  uuid NOT NULL REFERENCES job_logs (id) ON DELETE CASCADE,
    key         text NOT NULL,                        -- a step with the same key updates in place
    message     text NOT NULL,
    level       text NOT NULL DEFAULT 'info' CHECK (level IN ('debug', 'info', 'warning', 'error')),
    data        jsonb,
    first_seq   integer NOT NULL,                     -- orders the details as the run emitted them
    seq         integer NOT NULL,                     -- seq of the event whose text is shown
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    UNIQUE (job_log_id, key)
);
CREATE INDEX job_log_details_in_order ON job_log_details (job_log_id, first_seq);

-- Messages the recorder could not apply: kept with their reason, then acknowledged.
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    stream_seq   bigint,
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_seq)
);

-- The recorder's position in the stream, written in the same transaction as the projection.
CREATE TABLE projection_state (
    consumer         text PRIMARY KEY,
    last_stream_seq  bigint NOT NULL DEFAULT 0,
    last_event_at    timestamptz,
    applied_events   bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Names handed out by workers: the unique key makes two runs in one second distinct.
CREATE TABLE run_names (
    name        text PRIMARY KEY,
    run_id      uuid NOT NULL UNIQUE,
    job         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Events the worker has committed but not yet seen acknowledged by JetStream.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    subject     text NOT NULL,
    event_id    uuid NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The orders SyncOpenOrdersJob keeps in step with the source.
CREATE TABLE open_orders (
    order_number        text PRIMARY KEY,
    customer_code       text NOT NULL,
    customer_name       text NOT NULL,
    status              text NOT NULL,
    order_date          date NOT NULL,
    requested_ship_date date,
    warehouse           text,
    currency            char(3) NOT NULL,
    total_amount        numeric(14, 2) NOT NULL,
    line_count          integer NOT NULL,
    source_updated_at   timestamptz,
    row_hash            text NOT NULL,                -- detects unchanged rows
    first_seen_run      uuid,
    last_seen_run       uuid,
    synced_at           timestamptz NOT NULL,
    closed_at           timestamptz                   -- set when the order left the source
);
CREATE INDEX open_orders_open ON open_orders (order_date DESC, order_number) WHERE closed_at IS NULL;
