"""Print every failed joblog run, once, as it happens; copy this file to start your own consumer.

Needs only nats-py (`pip install nats-py`) and docs/events.md. A *durable* consumer: the server
remembers what we acknowledged, so failures that happen while this program is down are printed
when it comes back. Run it as often as you like; all copies with the same CONSUMER share the work.

    NATS_URL=nats://127.0.0.1:4222 python failures_to_stdout.py
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import OrderedDict

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
STREAM = os.environ.get("JOBLOG_STREAM", "JOBS")
PREFIX = os.environ.get("JOBLOG_SUBJECT_PREFIX", "joblog")
CONSUMER = os.environ.get("CONSUMER", "failures_to_stdout")


class Seen:
    """The last event_ids handled: JetStream delivers at least once, so we de-duplicate."""

    def __init__(self, size: int = 10_000) -> None:
        self.ids: OrderedDict[str, None] = OrderedDict()
        self.size = size

    def add(self, event_id: str) -> bool:
        """True the first time an id is seen."""
        if event_id in self.ids:
            return False
        self.ids[event_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        return True


def handle(event: dict) -> None:
    """Our work for one failure; here, a line on stdout."""
    step = f" at step {event['step']}" if event.get("step") else ""
    print(f"{event['occurred_at']} {event['job']} run {event['name']} failed{step}: "
          f"{event['error_class']}: {event['error_message']}", flush=True)


async def main() -> None:
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    nc = await nats.connect(NATS_URL, max_reconnect_attempts=-1)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{PREFIX}.run.*.*.failed", durable=CONSUMER, stream=STREAM,
        # ALL: the first time, report the failures already in the stream; later, resume where we acked.
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=30),
    )
    seen = Seen()
    while not stopping.is_set():
        try:
            messages = await sub.fetch(100, timeout=1)
        except NatsTimeout:
            continue
        for message in messages:
            try:
                event = json.loads(message.data)
            except ValueError:
                await message.term()  # not JSON: never deliver it again
                continue
            # Versioning rules: skip types and versions we do not know, never fail on them.
            if event.get("type") == "run.failed" and event.get("schema_version") == 1 and seen.add(event["event_id"]):
                handle(event)
            await message.ack()  # after the work is done: a crash before this re-delivers
    await nc.close()  # everything handled is acknowledged; nothing to drain


if __name__ == "__main__":
    asyncio.run(main())
