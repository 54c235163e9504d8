"""The recorder's limit, in a process of its own like the recorder: fetch batches, ack each message, nothing else.

    .venv/bin/python -m bench.raw_consumer NATS_URL STREAM TOTAL BATCH [TAG]
    .venv/bin/python -m bench.raw_consumer NATS_URL STREAM TOTAL BATCH TAG --share

Prints two rates (events/s): fetch-then-ack, and with the next fetch under way while acking. With TAG,
only fetch-then-ack, on consumers named after it (a second limit on the same stream). With --share,
one of several processes on the same consumer (as several recorders share theirs): it prints how many
it acked and when its first fetch and its last ack were (time.time()), for the caller to add up.
"""
from __future__ import annotations

import asyncio
import sys

import nats

from bench.recorder import raw_pull_and_ack, raw_share


async def main(url: str, stream: str, total: int, batch: int, tag: str = "", share: str = "") -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)
        if share:
            print(*await raw_share(js, stream, batch, tag))
            return
        plain = await raw_pull_and_ack(js, stream, total, batch, tag=tag)
        if tag:
            print(plain)
            return
        ahead = await raw_pull_and_ack(js, stream, total, batch, ahead=True)
        print(plain, ahead)
    finally:
        await nc.close()


if __name__ == "__main__":
    url, stream, total, batch = sys.argv[1:5]
    asyncio.run(main(url, stream, int(total), int(batch), *sys.argv[5:7]))
