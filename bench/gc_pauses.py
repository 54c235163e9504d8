"""The garbage collector's full passes in a process with the services' modules loaded, with and without
services.contracts.process.settle_heap (gc.freeze once started), under the recorder's churn.

    .venv/bin/python -m bench.gc_pauses

Each mode runs in a fresh interpreter: 300,000 step events built, serialized and parsed back as the
recorder parses them, a few thousand kept at a time (a batch), every full pass (generation 2) timed
by gc.callbacks.
"""
from __future__ import annotations

import subprocess
import sys
import time

EVENTS = 300_000


def churn(settle: bool) -> tuple[int, float, float]:
    """(full passes, the longest in ms, seconds for the loop) in this process."""
    import gc
    import uuid

    import services.log_recorder.main  # noqa: F401  (what a service has loaded once started)
    import services.web.app  # noqa: F401
    from services.contracts import StepLogged, parse_event
    from services.contracts.process import settle_heap

    if settle:
        settle_heap()
    passes: list[float] = []
    began_pass = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began_pass[0] = time.perf_counter()
        elif info["generation"] == 2:
            passes.append((time.perf_counter() - began_pass[0]) * 1000)

    gc.callbacks.append(timed)
    run, kept = uuid.uuid4(), []
    began = time.perf_counter()
    for i in range(EVENTS):
        event = StepLogged(run_id=run, name="20260101000000", job="sync_open_orders", seq=i + 1, key=f"k{i % 50}",
                           message=f"Upserted {i} orders")
        kept.append(parse_event(event.model_dump_json().encode()))
        if len(kept) > 5000:
            kept.clear()
    return len(passes), max(passes or [0.0]), time.perf_counter() - began


def main() -> None:
    if sys.argv[1:2] in (["plain"], ["settled"]):
        passes, longest, seconds = churn(sys.argv[1] == "settled")
        print(f"{sys.argv[1]:8} {passes} full passes, the longest {longest:.1f} ms; {EVENTS:,} events in {seconds:.1f} s")
        return
    for mode in ("plain", "settled"):
        subprocess.run([sys.executable, "-m", "bench.gc_pauses", mode], check=True)


if __name__ == "__main__":
    main()
