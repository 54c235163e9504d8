"""The reaper: deletions carried out in bounded chunks, deleted runs purged from the stream, bounded bookkeeping.

Every recorder runs one next to its consume loop; they share the work through Postgres row locks
(FOR UPDATE SKIP LOCKED), and everything they do is idempotent:

- *delete*: a RunsDeleted the projection recorded (run_deletions, finished_at NULL) removes its rows
  `delete_chunk` runs per transaction (each tombstoned in deleted_runs), never inside a batch's
  transaction, so a deletion of millions of runs never holds a batch past its ack wait;
- *purge*: every tombstone not yet purged has its run's messages purged from the stream (by subject:
  each run has its own, `{prefix}.run.{job}.{name}.{kind}`; message by message before nats-server 2.10), and the count is added to stream_purges
  (a rebuild tells purged messages from lost ones by it); a late event of a purged run re-arms it;
- *policy* (JOBLOG_RETENTION_*; off by default): once per interval, whichever recorder claims the slot
  in retention_slots publishes RunsDeleted events, so the policy is applied like a manual deletion
  and a rebuild honours it;
- *prune*: tombstones purged more than JOBLOG_TOMBSTONE_DAYS ago (and the workers' run_names of those
  runs), finished deletions as old, and dead letters older than JOBLOG_DEAD_LETTER_DAYS.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import nats.js.errors
import structlog

from services.contracts import RunsDeleted
from services.contracts.subjects import server_version
from services.log_recorder import db
from services.log_recorder.settings import RecorderSettings

log = structlog.get_logger("joblog.recorder.reaper")

PURGE_BATCH = 500
PURGE_IN_FLIGHT = 64
# Namespace of the policy's deletion ids: the same slot and rule give the same event id everywhere.
POLICY_NAMESPACE = uuid.UUID("5d7f3c4e-2b1a-4c7e-9a51-9f0a3e2c7b10")

# NO KEY UPDATE: batches that spare runs (run_deletion_spared's foreign key takes KEY SHARE) never wait for a chunk.
CLAIM_DELETION = """
SELECT event_id, names, created_before, job, except_jobs, statuses, occurred_at, stream_seq FROM run_deletions
WHERE finished_at IS NULL ORDER BY stream_seq NULLS LAST, occurred_at LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED
"""

DELETE_CHUNK_BY_NAME = """
WITH gone AS (DELETE FROM job_logs WHERE id IN (SELECT id FROM job_logs WHERE name = ANY($1::text[]) LIMIT $2) RETURNING 1)
SELECT count(*) FROM gone
"""

DELETE_CHUNK_BEFORE = db.sql(f"""
WITH gone AS (
    DELETE FROM {{runs}} WHERE id IN (
        SELECT id FROM {{runs}} r WHERE {db.CUTOFF}
          AND NOT EXISTS (SELECT 1 FROM run_deletion_spared s WHERE s.event_id = $6 AND s.name = r.name)
        ORDER BY created_at LIMIT $7)
    RETURNING name, job
), tombstoned AS (
    INSERT INTO deleted_runs (name, deleted_at, event_id, job) SELECT name, $5, $6, job FROM gone
    ON CONFLICT (name) DO NOTHING
)
SELECT count(*) FROM gone
""", db.LIVE)

DELETION_PROGRESS = """
UPDATE run_deletions SET deleted_runs = deleted_runs + $2, finished_at = CASE WHEN $2 = 0 THEN now() END
WHERE event_id = $1
"""
FORGET_SPARED = "DELETE FROM run_deletion_spared WHERE event_id = $1"

CLAIM_UNPURGED = """
SELECT name, job FROM deleted_runs WHERE purged_at IS NULL ORDER BY deleted_at LIMIT $1 FOR UPDATE SKIP LOCKED
"""

MARK_PURGED = "UPDATE deleted_runs SET purged_at = now() WHERE name = ANY($1::text[])"

COUNT_PURGED = """
INSERT INTO stream_purges AS p (stream, purged_messages) VALUES ($1, $2)
ON CONFLICT (stream) DO UPDATE SET purged_messages = p.purged_messages + EXCLUDED.purged_messages, updated_at = now()
"""

CLAIM_SLOT = """
INSERT INTO retention_slots (slot, event_ids) VALUES ($1, $2) ON CONFLICT (slot) DO NOTHING RETURNING slot
"""

PRUNE_TOMBSTONES = """
WITH gone AS (
    DELETE FROM deleted_runs WHERE name IN (
        SELECT name FROM deleted_runs WHERE purged_at < $1 ORDER BY purged_at LIMIT $2)
    RETURNING name
), names AS (DELETE FROM run_names WHERE name IN (SELECT name FROM gone))
SELECT count(*) FROM gone
"""

PRUNE_DELETIONS = "DELETE FROM run_deletions WHERE finished_at < $1"
PRUNE_SLOTS = "DELETE FROM retention_slots WHERE published_at < $1"
PRUNE_DEAD_LETTERS = "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE received_at < $1 LIMIT $2)"


class PurgeFailed(Exception):
    """JetStream refused a purge (e.g. this NATS user lacks $JS.API.STREAM.PURGE)."""


def policy_deletions(settings: RecorderSettings, now: datetime, slot: int) -> list[RunsDeleted]:
    """The deletions the retention policy asks for at this slot (empty when it is off).

    Only finished runs (success, error) are ever deleted by the policy; a job with days of its own
    (JOBLOG_RETENTION_JOBS) is left out of the general rules."""
    per_job = settings.retention_per_job
    rules: list[tuple[str | None, list[str] | None, float, list[str] | None]] = []
    for own_job, own_days in sorted(per_job.items()):
        rules.append((own_job, None, own_days, ["success", "error"]))
    others = sorted(per_job) or None
    ok, failed = settings.retention_days, settings.retention_failed_days
    if ok is not None and failed is not None and ok != failed:
        rules.append((None, others, ok, ["success"]))
        rules.append((None, others, failed, ["error"]))
    elif ok is not None or failed is not None:
        rules.append((None, others, ok or failed or 0, ["success", "error"] if ok is not None else ["error"]))
    deletions = []
    for job, except_jobs, days, statuses in rules:
        key = f"{settings.stream}:{slot}:{job}:{','.join(except_jobs or [])}:{','.join(statuses or [])}:{days}"
        deletions.append(RunsDeleted(
            event_id=uuid.uuid5(POLICY_NAMESPACE, key), occurred_at=now, created_before=now - timedelta(days=days),
            job=job, except_jobs=except_jobs, statuses=statuses,  # type: ignore[arg-type]
            requested_by=f"retention:{days:g}d",
        ))
    return deletions


async def delete_chunk(conn: asyncpg.Connection, chunk: int,
                       applied_up_to: Callable[[], Awaitable[int]] | None = None) -> tuple[uuid.UUID | None, int]:
    """One chunk of the oldest unfinished deletion that no other recorder is working on, in its own
    transaction: (its event id, runs removed); (None, 0) when there is none.

    A chunk that removes nothing finishes the deletion, but only once every message before it in the
    stream has been applied (applied_up_to(): the recorder consumer's ack floor): a batch of earlier
    events that another recorder still holds would otherwise add runs the deletion covers after it
    finished. Until then it returns (None, 0) as if there were nothing to do."""
    async with conn.transaction():
        row = await conn.fetchrow(CLAIM_DELETION)
        if row is None:
            return None, 0
        removed = 0
        if row["names"]:
            removed = await conn.fetchval(DELETE_CHUNK_BY_NAME, row["names"], chunk)
        if not removed and row["created_before"] is not None:
            removed = await conn.fetchval(
                DELETE_CHUNK_BEFORE, row["created_before"], row["job"], row["except_jobs"], row["statuses"],
                row["occurred_at"], row["event_id"], chunk,
            )
        if not removed and applied_up_to is not None and row["stream_seq"] is not None:
            if await applied_up_to() < row["stream_seq"]:
                return None, 0
        await conn.execute(DELETION_PROGRESS, row["event_id"], removed)
        if not removed:
            await conn.execute(FORGET_SPARED, row["event_id"])
    if removed:
        # After the commit, in a transaction of its own: a recorder's batch statement locks the
        # version row before its job_stats triggers fire, the chunk's DELETE the other way round;
        # both in one transaction could deadlock. A page rendered between the two commits is filed
        # under the older version with the newer rows, and the bump replaces it.
        await db.bump_version(conn)
    return row["event_id"], removed


async def carry_out_deletions(conn: asyncpg.Connection, chunk: int = 1000) -> int:
    """Every pending deletion, chunk by chunk (what the reapers do between batches); returns runs removed."""
    total = 0
    while True:
        event_id, removed = await delete_chunk(conn, chunk)
        if event_id is None:
            return total
        total += removed


class Reaper:
    """One recorder's share of deleting, purging, the retention policy and pruning."""

    def __init__(self, settings: RecorderSettings, pool: asyncpg.Pool, js: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.wake = asyncio.Event()
        self.deleted = 0
        self.purged_runs = 0
        self.purged_messages = 0
        self._pruned_at = float("-inf")

    async def run(self, stopping: asyncio.Event) -> None:
        """Work while there is work; else wait for a wake-up (a batch recorded a deletion) or a second."""
        while not stopping.is_set():
            worked = False
            try:
                worked = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Postgres or NATS away, a refused purge: try again soon
                log.warning("retention work failed; retrying", error=repr(error))
                await asyncio.sleep(1)
            if worked:
                await asyncio.sleep(0)  # let the consume loop have the pool between chunks
                continue
            self.wake.clear()
            waiting = asyncio.create_task(self.wake.wait())
            stopped = asyncio.create_task(stopping.wait())
            await asyncio.wait({waiting, stopped}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            stopped.cancel()

    async def step(self) -> bool:
        """One unit of each kind of work that is due; True if any was done."""
        worked = await self.delete_chunk()
        worked = await self.purge_some() or worked
        loop = asyncio.get_running_loop()
        if loop.time() - self._pruned_at >= min(self.settings.retention_interval, 600.0):
            self._pruned_at = loop.time()
            await self.apply_policy()
            await self.prune()
        return worked

    async def delete_chunk(self) -> bool:
        """Remove up to delete_chunk runs of the oldest unfinished deletion, in one short transaction."""
        async with self.pool.acquire() as conn:
            event_id, removed = await delete_chunk(conn, self.settings.delete_chunk, self.ack_floor)
        if event_id is None:
            return False
        self.deleted += removed
        if not removed:
            log.info("deletion finished", event_id=str(event_id))
        return True

    async def ack_floor(self) -> int:
        """Every message of the run stream up to here has been applied (acknowledged after commit)."""
        info = await self.js.consumer_info(self.settings.stream, self.settings.recorder_consumer)
        return info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0

    async def purge_some(self) -> bool:
        """Purge the messages of up to PURGE_BATCH tombstoned runs from the stream."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch(CLAIM_UNPURGED, PURGE_BATCH)
                if not rows:
                    return False
                counts: list[int] = []
                for start in range(0, len(rows), PURGE_IN_FLIGHT):
                    counts += await asyncio.gather(*(self.purge(r["name"], r["job"]) for r in rows[start:start + PURGE_IN_FLIGHT]))
                await conn.execute(MARK_PURGED, [r["name"] for r in rows])
                await conn.execute(COUNT_PURGED, self.settings.stream, sum(counts))
        self.purged_runs += len(rows)
        self.purged_messages += sum(counts)
        return True

    async def purge(self, name: str, job: str | None) -> int:
        """Remove one run's messages from the stream; returns how many went.

        nats-server 2.10+: one purge by subject. Older servers move every consumer past the stream's
        last message on a purge by subject (the recorder would skip whatever it had not read yet), so
        there each message of the run is looked up by subject and deleted on its own instead."""
        prefix = self.settings.subjects.prefix
        subject = f"{prefix}.run.{job or '*'}.{name}.*"
        api = f"{self.js._prefix}.STREAM"
        stream = self.settings.stream
        if server_version(self.js) >= (2, 10):
            answer = await self.js._api_request(f"{api}.PURGE.{stream}", json.dumps({"filter": subject}).encode(), timeout=10)
            if not answer.get("success"):
                raise PurgeFailed(f"purge of {subject} refused: {answer}")
            return int(answer.get("purged", 0))
        purged, seq = 0, 1
        while True:
            try:
                found = await self.js._api_request(
                    f"{api}.MSG.GET.{stream}", json.dumps({"seq": seq, "next_by_subj": subject}).encode(), timeout=10)
            except nats.js.errors.NotFoundError:
                return purged
            seq = int(found["message"]["seq"])
            try:
                await self.js._api_request(f"{api}.MSG.DELETE.{stream}", json.dumps({"seq": seq}).encode(), timeout=10)
                purged += 1
            except nats.js.errors.NotFoundError:
                pass  # deleted meanwhile (another recorder): counted there
            seq += 1

    async def apply_policy(self, now: datetime | None = None) -> list[RunsDeleted]:
        """Publish this slot's policy deletions, if this recorder is the first to claim the slot."""
        if not self.settings.retention_on:
            return []
        now = now or datetime.now(timezone.utc)
        slot = int(now.timestamp() // self.settings.retention_interval)
        deletions = policy_deletions(self.settings, now, slot)
        async with self.pool.acquire() as conn:
            claimed = await conn.fetchval(CLAIM_SLOT, f"{self.settings.stream}:{slot}", [d.event_id for d in deletions])
        if claimed is None:
            return []  # another recorder has it
        for deletion in deletions:
            await self.js.publish(
                self.settings.subjects.retention, deletion.model_dump_json().encode(),
                headers={"Nats-Msg-Id": str(deletion.event_id)},
            )
        log.info("retention policy applied", deletions=len(deletions), slot=slot)
        return deletions

    async def prune(self, now: datetime | None = None) -> dict[str, int]:
        """Forget tombstones, deletions and dead letters no longer of use (bounded statements)."""
        now = now or datetime.now(timezone.utc)
        margin = now - timedelta(days=self.settings.tombstone_days)
        pruned = {"tombstones": 0, "deletions": 0, "dead_letters": 0}
        async with self.pool.acquire() as conn:
            while True:
                gone = await conn.fetchval(PRUNE_TOMBSTONES, margin, 10_000)
                pruned["tombstones"] += gone
                if gone < 10_000:
                    break
            pruned["deletions"] = int((await conn.execute(PRUNE_DELETIONS, margin)).split()[-1])
            await conn.execute(PRUNE_SLOTS, now - timedelta(days=max(self.settings.tombstone_days, 1)))
            dead_before = now - timedelta(days=self.settings.dead_letter_days)
            while True:
                gone = int((await conn.execute(PRUNE_DEAD_LETTERS, dead_before, 10_000)).split()[-1])
                pruned["dead_letters"] += gone
                if gone < 10_000:
                    break
        if any(pruned.values()):
            log.info("bookkeeping pruned", **pruned)
        return pruned
