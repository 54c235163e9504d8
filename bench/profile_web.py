"""Profile the web process under wrk with py-spy (the evidence behind docs/performance.md's analysis).

    .venv/bin/python -m bench.profile_web /            # or /runs/<name>; writes .joblog/bench-profile-web_*.txt
    .venv/bin/python -m bench.profile_web /runs/random # a run drawn at random from the dataset at each request
    .venv/bin/python -m bench.profile_web FILE         # summarize any py-spy raw profile, e.g. from JOBLOG_BENCH_PYSPY
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench.common import ROOT, Servers, delete_streams, service_env, service_process

from bench.web import detail_script, wait_for_port, wrk
from bench.web_data import ensure_dataset
from joblog.servers import free_port


async def main(path: str, seconds: int = 8) -> Path:
    out = ROOT / ".joblog" / f"bench-profile-web{path.replace('/', '_')}.txt"
    out.parent.mkdir(exist_ok=True)
    with Servers() as servers:
        dsn, runs, _details, _built = await ensure_dataset(servers)
        tag, port = uuid.uuid4().hex[:8], free_port()
        env = service_env(servers.nats_url, dsn, f"BENCH_PROF_{tag}", f"bench{tag}", JOBLOG_WEB_PORT=str(port))
        try:
            with service_process("web", env) as process, tempfile.TemporaryDirectory() as tmp:
                wait_for_port(port)
                script = detail_script(runs, Path(tmp)) if path == "/runs/random" else None
                await asyncio.to_thread(wrk, f"http://127.0.0.1:{port}{path}", 2, script)  # warm up
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(process.pid),
                                        "--duration", str(seconds), "--format", "raw", "--output", str(out), "--nonblocking"])
                await asyncio.to_thread(wrk, f"http://127.0.0.1:{port}{path}", seconds + 1, script)
                spy.wait(30)
        finally:
            await delete_streams(servers.nats_url, f"BENCH_PROF_{tag}")
    return out


def summarize(raw: Path, top: int = 25) -> str:
    """Own and inclusive sample share per function, from py-spy's raw (collapsed stacks) output."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{total} samples", "inclusive:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    lines += ["own:"] + [f"  {c / total:6.1%}  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and Path(sys.argv[1]).is_file():  # summarize a JOBLOG_BENCH_PYSPY profile
        print(summarize(Path(sys.argv[1])))
    else:
        print(summarize(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "/"))))
