"""The search row of the web benchmark: `/search?q=` p99 over the same dataset, against the index page's p99.

A mix of what administrators ask: a text no message has (an order number: the trigram index says so
at once), a text a few runs' errors hold, a text one message in twenty holds, and one every message
holds (newest first, the first page is found at once), some with a job filter.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from bench.common import Result

QUERIES = [
    {"q": "SO-104711"},
    {"q": "did not answer"},
    {"q": "batch 17", "job": "sync_open_orders"},
    {"q": "of 40000 orders"},
    {"q": "purge", "job": "purge_closed_orders"},
    {"q": "SourceUnavailable", "status": "error"},
]


def search_script(directory: Path) -> str:
    """A wrk script asking for the search page with these queries, at random."""
    paths = [f"/search?{urlencode(q)}" for q in QUERIES]
    path = directory / "search.lua"
    path.write_text(
        "paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
        "request = function()\n  return wrk.format(nil, paths[math.random(#paths)])\nend\n"
    )
    return str(path)


def search_result(search: dict[str, float], index: dict[str, float], runs: int, details: int, note: str, command: str) -> Result:
    """Search p99 within 4 times the index page's p99 (the index is cached; a search never is)."""
    ratio = search["p99"] / index["p99"] if index["p99"] else float("inf")
    ok = ratio <= 4 and search["errors"] == 0
    return Result(
        "3e. Web search `/search?q=` over every run's messages",
        f"{search['rps']:,.0f} req/s, p50 {search['p50']:.1f} ms, p99 {search['p99']:.1f} ms",
        f"index page p99 {index['p99']:.1f} ms", f"{ratio:.2f}", "p99 ratio <= 4", ok, command,
        [f"{runs:,} runs, {details:,} details; {len(QUERIES)} queries at random (no match, a few errors, 1 in 20 "
         f"messages, every message; some with a job or status filter), never cached; {note}; "
         f"{search['requests']:,.0f} requests, {search['errors']:.0f} errors or non-2xx"],
        {"ratio": ratio <= 4, "errors": search["errors"] == 0},
    )
