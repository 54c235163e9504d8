"""docs/performance.md: the results table, the machine, and the commands (the analysis section is kept)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench.common import ROOT, Result, scale
from bench.web_data import web_scale

DOC = ROOT / "docs" / "performance.md"
TABLE_START, TABLE_END = "<!-- bench:results -->", "<!-- /bench:results -->"


def memory_result(rss: dict[str, float]) -> Result:
    worst = max(v for k, v in rss.items() if "reference" not in k)
    return Result(
        "6. Memory (peak RSS, VmHWM)", ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()), "-", "-",
        "< 150 MB each", worst < 150, "measured in the runs above (/proc/<pid>/status VmHWM of each service process)",
    )


def _version(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:
        return "?"


async def server_versions(nats_url: str, dsn: str) -> str:
    """What the servers say they are."""
    import asyncpg
    import nats

    conn = await asyncpg.connect(dsn)
    try:
        postgres = await conn.fetchval("SHOW server_version")
        settings = {r["name"]: r["setting"] for r in await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync')")}
    finally:
        await conn.close()
    nc = await nats.connect(nats_url)
    try:
        nats_version = nc._server_info.get("version", "?")  # the INFO the server sent on connect
    finally:
        await nc.close()
    return (f"PostgreSQL {postgres} (shared_buffers {int(settings['shared_buffers']) * 8 // 1024} MB, "
            f"fsync {settings['fsync']}, synchronous_commit {settings['synchronous_commit']}); nats-server {nats_version}")


def machine(servers: str, load: tuple[tuple[float, ...], tuple[float, ...]]) -> list[str]:
    from importlib.metadata import version

    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    from bench.common import MACHINE_POSTGRES

    return [
        f"- CPU: {os.cpu_count()} cores ({cpu}); memory {mem_kb / 1024 / 1024:.1f} GiB; {platform.platform()}",
        f"- Python {sys.version.split()[0]}; aiohttp {version('aiohttp')}, asyncpg {version('asyncpg')}, "
        f"nats-py {version('nats-py')}, pydantic {version('pydantic')}, jinja2 {version('jinja2')}; {' '.join(_version(['wrk', '-v']).split()[:2])}",
        f"- Servers: {servers}, at {os.environ.get('JOBLOG_BENCH_DATABASE_URL') or MACHINE_POSTGRES} and "
        f"{os.environ.get('JOBLOG_BENCH_NATS_URL') or 'nats://127.0.0.1:4222'}, on the same machine",
        f"- Load average (1/5/15 min) at the start {'/'.join(f'{x:.1f}' for x in load[0])}, at the end "
        f"{'/'.join(f'{x:.1f}' for x in load[1])}: the machine is shared, other work ran at the same time",
    ]


def table(results: list[Result]) -> str:
    lines = ["| Benchmark | Figure | Limit (same run) | Ratio | Target | Met? | Server |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.benchmark} | {r.figure} | {r.limit} | {r.ratio} | {r.target} | {r.verdict} | {r.server or '-'} |")
    lines.append("")
    lines.append("Notes and the command that reproduces each figure:")
    lines.append("")
    for r in results:
        lines.append(f"- **{r.benchmark}**: `{r.command}`" + "".join(f"\n  - {n}" for n in r.notes))
    return "\n".join(lines)


def write_report(results: list[Result], seconds: float, servers: str, load: tuple[tuple[float, ...], tuple[float, ...]]) -> Path:
    """Replace the generated block of docs/performance.md; everything outside the markers is hand-written."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    # The services run from the working tree: say so when it differs from the commit.
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "services", "joblog"],
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        commit += f" plus uncommitted changes to {len(dirty.splitlines())} file(s) of services/ and joblog/"
    block = "\n".join([
        TABLE_START,
        f"Measured {stamp} at commit {commit} by `JOBLOG_BENCH_SCALE={scale():g} make bench` ({seconds / 60:.0f} min): "
        f"scale {scale():g} for the events and orders, {web_scale():g} for the web dataset "
        f"({'1,000,000 runs, 20,000,000 details: the full size' if web_scale() == 1 else 'smaller than the issue asks'}).",
        "",
        table(results),
        "",
        "Machine:",
        "",
        *machine(servers, load),
        TABLE_END,
    ])
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{TABLE_START}\n{TABLE_END}\n"
    if TABLE_START in text and TABLE_END in text:
        text = re.sub(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    return DOC
