"""Several web processes on one port (JOBLOG_WEB_PROCESSES > 1), under a small supervisor.

Each web process is a fresh interpreter (multiprocessing's spawn: never a fork of a running event
loop) that serves the same app on the same host:port with SO_REUSEPORT, so the kernel spreads the
connections among them. The supervisor only starts, watches and stops them:

- SIGTERM or SIGINT: every process gets SIGTERM (aiohttp's own graceful shutdown); the supervisor
  exits 0 once all of them stopped that way.
- A process that dies while serving is logged (one line, its exit code) and replaced.
- A process that dies before it serves (the port taken, Postgres unreachable) at the first start
  stops the web at once, with one line saying why; later, START_FAILURES such deaths in a row do.

Each process has its own page caches, version listener and live feed (each correct on its own); the
sign-in failure limit is shared in Postgres (services.web.accounts) and /metrics in prometheus_client's
multiprocess directory, which the supervisor makes fresh and removes at exit (services.web.metrics).
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog

from services.web.settings import WebSettings

log = structlog.get_logger("joblog.web")

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
START_FAILURES = 3  # processes in a row that die before serving, once the web was up: it stops
STOP_SECONDS = 75.0  # aiohttp's shutdown waits up to 60 s for requests in progress


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _stop_when_orphaned(parent: int) -> None:
    """A web process whose supervisor was killed (SIGKILL) stops too, instead of serving on alone."""
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)


def become_web_process(slot: int, parent: int) -> None:
    """What a web process does first: a process group of its own (a terminal's Ctrl-C reaches the supervisor
    only, which then stops each process once), its number on every log line, and a watch on the supervisor."""
    os.setpgrp()
    structlog.contextvars.bind_contextvars(web_process=slot)
    threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True, name="joblog-orphan-watch").start()


Setup = Callable[[WebSettings], None]  # e.g. the CLI's logging configuration, run first in each process
# A web process (services.web.app.serve_one): (settings, slot, the end of the pipe it reports on, the
# supervisor's pid, setup). It sends ("serving", pid) once it listens, or ("failed", why) when it cannot start.
Target = Callable[[WebSettings, int, Connection, int, Setup | None], None]


@dataclass
class Child:
    slot: int
    process: BaseProcess
    reports: Connection
    serving: bool = False
    reason: str | None = None

    def read_reports(self) -> None:
        try:
            while self.reports.poll():
                kind, detail = self.reports.recv()
                if kind == "serving":
                    self.serving = True
                else:
                    self.reason = str(detail)
        except (EOFError, OSError):
            pass


class StopSignals:
    """SIGTERM and SIGINT set a flag and wake the supervisor's wait (a pipe it watches)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.wake, self._poke = os.pipe()
        os.set_blocking(self._poke, False)
        self._before = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = self.requested or signal.Signals(signum).name
        try:
            os.write(self._poke, b"!")
        except OSError:
            pass

    def restore(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        os.close(self.wake)
        os.close(self._poke)


class Supervisor:
    """Starts settings.web_processes web processes and keeps them serving until told to stop."""

    def __init__(self, settings: WebSettings, url: str, target: Target, setup: Setup | None = None) -> None:
        self.settings, self.url, self.target, self.setup = settings, url, target, setup
        self.spawn = multiprocessing.get_context("spawn")
        self.children: dict[int, Child] = {}
        self.shared = ""

    def run(self) -> int:
        """Exit code: 0 when every process stopped gracefully on SIGTERM/SIGINT, 1 when the web gave up."""
        self.shared = tempfile.mkdtemp(prefix="joblog-web-metrics-")
        os.environ[MULTIPROC_DIR] = self.shared  # inherited by each process before it imports prometheus_client
        signals = StopSignals()
        try:
            return self._watch(signals)
        except BaseException:
            self._stop_all()  # the supervisor itself failed: no process serves on without it
            raise
        finally:
            signals.restore()
            os.environ.pop(MULTIPROC_DIR, None)
            shutil.rmtree(self.shared, ignore_errors=True)

    def _start(self, slot: int) -> None:
        reports, report = self.spawn.Pipe(duplex=False)
        process = self.spawn.Process(target=self.target, args=(self.settings, slot, report, os.getpid(), self.setup),
                                     name=f"joblog-web-{slot}", daemon=True)  # daemon: stopped if the supervisor exits
        process.start()
        report.close()  # the process holds the other end: when it dies, reading ends
        self.children[slot] = Child(slot, process, reports)

    def _watch(self, signals: StopSignals) -> int:
        for slot in range(self.settings.web_processes):
            self._start(slot)
        up = False  # every process served once: the web is up
        failed_in_a_row = 0
        while signals.requested is None:
            waitables: list[object] = [signals.wake]
            for child in self.children.values():
                waitables.append(child.process.sentinel)
                if not child.serving:
                    waitables.append(child.reports)
            wait(waitables)  # type: ignore[arg-type]
            if signals.requested is not None:
                break
            for child in list(self.children.values()):
                was_serving = child.serving
                child.read_reports()
                if child.serving and not was_serving:
                    failed_in_a_row = 0
                if child.process.is_alive():
                    continue
                pid, code = self._reap(child)
                if child.serving:
                    log.warning("web process died; starting another", web_process=child.slot, pid=pid, exit_code=code)
                    self._start(child.slot)
                    continue
                failed_in_a_row += 1
                reason = child.reason or f"it exited with code {code} before serving"
                if not up or failed_in_a_row >= START_FAILURES:
                    log.error("the web cannot start" if not up else "web processes keep failing at start: stopping the web",
                              reason=reason, host=self.settings.web_host, port=self.settings.web_port,
                              **({} if not up else {"failures_in_a_row": failed_in_a_row}))
                    self._stop_all()
                    return 1
                log.warning("web process failed at start; starting another", web_process=child.slot, reason=reason)
                time.sleep(failed_in_a_row)  # a short pause, longer each time, so a failing start is no busy loop
                if signals.requested is None:
                    self._start(child.slot)
            if not up and all(child.serving for child in self.children.values()):
                up = True
                log.info("web listening", url=self.url, processes=len(self.children))
        log.info("web stopping", signal=signals.requested, processes=len(self.children))
        if not self._stop_all():
            log.error("web stopped, not every process gracefully")
            return 1
        log.info("web stopped")
        return 0

    def _reap(self, child: Child) -> tuple[int, int]:
        """Forget a process that ended: (its pid, its exit code, negative for a signal)."""
        from prometheus_client import multiprocess

        child.process.join()
        pid, code = child.process.pid or 0, child.process.exitcode if child.process.exitcode is not None else -1
        child.read_reports()
        child.reports.close()
        multiprocess.mark_process_dead(pid, self.shared)
        child.process.close()
        del self.children[child.slot]
        return pid, code

    def _stop_all(self) -> bool:
        """SIGTERM to every process, then wait; True when each stopped by itself (killed after STOP_SECONDS)."""
        clean = True
        for child in self.children.values():
            if child.process.is_alive():
                child.process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for child in list(self.children.values()):
            child.process.join(max(0.0, deadline - time.monotonic()))
            child.read_reports()  # a replacement's "serving" may still be unread: it decides what "clean" means
            if child.process.is_alive():
                log.error("web process did not stop in time: killed", web_process=child.slot, pid=child.process.pid)
                child.process.kill()
                child.process.join()
                clean = False
            elif child.serving and child.process.exitcode != 0:
                clean = False
            self._reap(child)
        return clean
