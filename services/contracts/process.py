"""What every service process does the same way."""
from __future__ import annotations

import asyncio
import contextlib
import signal


def stop_on_signals(stopping: asyncio.Event | None = None) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (a deploy, Ctrl-C): the service's run loop ends on it."""
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    return stopping
