"""`make bench`: run every benchmark (or those named) and write the results table to docs/performance.md.

    .venv/bin/python -m bench                        # all, at JOBLOG_BENCH_SCALE (default 1)
    .venv/bin/python -m bench recorder_throughput    # one; prints its row, leaves the docs alone
    .venv/bin/python -m bench --no-write web         # never touch the docs
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from bench.common import Result, Servers, scale

Benchmark = Callable[[Servers], Awaitable[tuple[list[Result], dict[str, float]]]]


def benchmarks() -> dict[str, Benchmark]:
    from bench import curves, flower, growth, open_orders, recorder, recorder_search, retention, sync, web, worker

    return {
        "recorder_throughput": recorder.recorder_throughput,
        "recorder_lag": recorder.recorder_lag,
        "recorder_search_index": recorder_search.recorder_search_index,
        "web": web.web,
        "sync": sync.sync,
        "worker_overhead": worker.worker_overhead,
        "flower": flower.flower,
        "curves": curves.curves,
        "growth": growth.growth,
        "open_orders": open_orders.open_orders,
        "retention": retention.retention,
        "retention_size": retention.retention_size,
    }


# Run only when named: the sizes take the best part of an hour.
ON_REQUEST = frozenset({"retention_size"})


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so scratch databases and streams are dropped


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    known = benchmarks()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", choices=[*known, []], metavar="NAME", help=f"any of: {', '.join(known)}")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/performance.md")
    args = parser.parse_args()
    chosen = args.names or [name for name in known if name not in ON_REQUEST]
    from joblog.logs import configure

    configure("WARNING", "console")  # the in-process jobs' run logs would drown the figures
    results: list[Result] = []
    rss: dict[str, float] = {}
    started = time.monotonic()
    load_at_start = os.getloadavg()
    with Servers() as servers:
        from bench.report import server_versions

        versions = asyncio.run(server_versions(servers.nats_url, servers.admin_dsn))
        print(f"servers: {servers.where}: {versions}; scale {scale()}", flush=True)
        for name in chosen:
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            try:
                rows, peaks = asyncio.run(known[name](servers))
            except Exception as error:  # one broken benchmark must not hide the others' figures
                import traceback

                traceback.print_exc()
                rows, peaks = [Result(name, "failed", "-", "-", "-", False, f".venv/bin/python -m bench {name}",
                                      [f"{type(error).__name__}: {error}"[:300]])], {}
            for row in rows:
                print(f"   {row.benchmark}: {row.figure} | limit {row.limit} | ratio {row.ratio} | target {row.target} | met {row.verdict}")
                for note in row.notes:
                    print(f"     {note}")
            for service, mb in peaks.items():
                print(f"   peak RSS {service}: {mb:.0f} MB")
            print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
            results.extend(rows)
            rss.update(peaks)
    from bench.report import memory_result, write_report

    if rss:
        results.append(memory_result(rss))
        print(f"   {results[-1].benchmark}: {results[-1].figure} | met {results[-1].verdict}")
    if not args.no_write and not args.names:
        path = write_report(results, time.monotonic() - started, versions, (load_at_start, os.getloadavg()))
        print(f"wrote {path}")
    return 0 if all(r.met is not False for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
