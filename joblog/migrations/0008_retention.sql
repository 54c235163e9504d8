-- Retention that deletes (docs/retention.md): deletions applied in chunks outside the batch
-- transaction, deleted runs' messages purged from the stream, bounded bookkeeping, snapshots.

-- A deletion is recorded by the batch that reads it, then carried out in chunks by the reaper.
ALTER TABLE run_deletions
    ADD COLUMN job          text,                     -- with created_before: only this job's runs
    ADD COLUMN except_jobs  text[],                   -- with created_before: not these jobs' runs
    ADD COLUMN statuses     text[],                   -- with created_before: only runs in these statuses
    ADD COLUMN deleted_runs bigint NOT NULL DEFAULT 0,  -- rows removed so far
    ADD COLUMN finished_at  timestamptz;              -- every chunk done
-- Older releases applied deletions in the batch's transaction: those are done.
UPDATE run_deletions SET finished_at = applied_at;
CREATE INDEX run_deletions_pending ON run_deletions (stream_seq) WHERE finished_at IS NULL;
CREATE INDEX run_deletions_finished ON run_deletions (finished_at) WHERE finished_at IS NOT NULL;

-- A tombstone's messages are purged from the stream once (purged_at); an event of the run that
-- still arrives (a late relay) clears purged_at, so it is purged again. Existing tombstones start
-- unpurged: the reaper removes what older releases left in the stream.
ALTER TABLE deleted_runs ADD COLUMN purged_at timestamptz;
CREATE INDEX deleted_runs_unpurged ON deleted_runs (deleted_at) WHERE purged_at IS NULL;
CREATE INDEX deleted_runs_purged ON deleted_runs (purged_at) WHERE purged_at IS NOT NULL;

-- How many messages joblog purged from each stream: a rebuild tells them from messages lost otherwise.
CREATE TABLE stream_purges (
    stream           text PRIMARY KEY,
    purged_messages  bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The automatic retention policy's slots: one deletion per slot, whichever recorder claims it.
CREATE TABLE retention_slots (
    slot          text PRIMARY KEY,
    event_ids     uuid[] NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now()
);

-- Dead letters keep a bounded prefix of their payload (payload_bytes: the original size) and go after a while.
ALTER TABLE dead_letters ADD COLUMN payload_bytes integer;
CREATE INDEX dead_letters_received ON dead_letters (received_at);

-- Snapshots of the projection at a stream position (`joblog snapshot`): a rebuild starts from the
-- newest one and replays only the stream after it. The rows are in projection_snapshot_runs /
-- projection_snapshot_details, shaped like the live tables when the snapshot was taken.
CREATE TABLE projection_snapshots (
    id          bigserial PRIMARY KEY,
    stream      text NOT NULL,
    stream_seq  bigint NOT NULL,                      -- every message up to here is in the snapshot
    runs        bigint NOT NULL,
    details     bigint NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now()
);

-- The run's job, when known: its subjects are purged one by one (exact subjects are cheap on any server).
ALTER TABLE deleted_runs ADD COLUMN job text;

-- Runs a pending created_before deletion must leave alone: first seen (or first matching it) after the
-- deletion was read, as when deletions were applied in the batch's transaction. A rebuild agrees.
CREATE TABLE run_deletion_spared (
    event_id  uuid NOT NULL REFERENCES run_deletions (event_id) ON DELETE CASCADE,
    name      text NOT NULL,
    PRIMARY KEY (event_id, name)
);
