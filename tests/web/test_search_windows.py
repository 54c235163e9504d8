"""Search's newest-first windows of detail ids: every page across windows, with every filter, is what one
plain unwindowed query returns (the oracle), in the same order, nothing skipped, nothing repeated."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.web import investigate_db
from tests.factories import T0

RUNS = 60
STEPS = 20

RUN = """
INSERT INTO job_logs (id, name, job, status, trigger, worker_id, host, created_at, updated_at, started_at, finished_at,
                      last_seq, terminal_seq)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, (20261129000000 + i)::text,
       CASE WHEN i % 3 = 0 THEN 'other_job' ELSE 'sync_open_orders' END,
       CASE WHEN i % 7 = 0 THEN 'error' ELSE 'success' END, 'schedule', 'w1', 'h1',
       $1::timestamptz + make_interval(mins => i), $1::timestamptz + make_interval(mins => i),
       $1::timestamptz + make_interval(mins => i), $1::timestamptz + make_interval(mins => i, secs => 30), $2 + 2, $2 + 2
FROM generate_series(1, $3::int) AS i
"""

# A needle in one message in five (spread unevenly), a rarer one only in two old runs, and one in the
# newest run only. The first runs' details are written step-major (as a bulk load would: dense and empty
# stretches of ids), the others run by run (as workers do).
DETAILS = """
INSERT INTO job_log_details (job_log_id, key, message, level, data, first_seq, seq, created_at, updated_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'step-' || k,
       'Upserted batch ' || k || CASE WHEN (i * k) % 5 = 0 THEN ' of the NeedLe' ELSE '' END
           || CASE WHEN i IN (3, 4) AND k = 9 THEN ' haystack' ELSE '' END
           || CASE WHEN i = $3 AND k = 1 THEN ' newest-only' ELSE '' END,
       'info', CASE WHEN k % 4 = 0 THEN jsonb_build_object('tag', 'needle-' || i) END, k + 2, k + 2,
       $1::timestamptz + make_interval(mins => i, secs => k), $1::timestamptz + make_interval(mins => i, secs => k)
FROM generate_series(1, $2::int) AS k, generate_series($4::int, $5::int) AS i
"""

ORACLE = """
SELECT j.name, d.first_seq FROM job_log_details d JOIN job_logs j ON j.id = d.job_log_id
WHERE joblog_detail_text(d.key, d.message, d.data) ILIKE $1
  AND ($2::text IS NULL OR j.job = $2) AND ($3::text IS NULL OR j.status = $3)
  AND ($4::timestamptz IS NULL OR j.created_at >= $4) AND ($5::timestamptz IS NULL OR j.created_at < $5)
ORDER BY d.id DESC
"""


async def load(db: Any) -> None:
    await db.execute(RUN, T0, STEPS, RUNS)
    async with db.transaction():  # step-major for the first half: for each step, every run
        for k in range(1, STEPS + 1):
            await db.execute(DETAILS.replace("generate_series(1, $2::int) AS k", "(SELECT $2::int AS k) s"), T0, k, RUNS,
                             1, RUNS // 2)
    for i in range(RUNS // 2 + 1, RUNS + 1):  # then run by run
        await db.execute(DETAILS, T0, STEPS, RUNS, i, i)
    await db.execute("ANALYZE job_log_details")


async def every_page(client: Any, params: dict[str, str], limit: int) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        response = await client.get("/api/search", params={**params, "limit": str(limit), **({"before": cursor} if cursor else {})})
        assert response.status == 200, await response.text()
        page = await response.json()
        assert len(page["results"]) <= limit
        seen += [(hit["run"]["name"], hit["seq"]) for hit in page["results"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        assert len(page["results"]) == limit


# (RECENT_WINDOW, FIRST_WINDOW, GROWTH, RARE_ROWS): small windows (RARE_ROWS 0: never the one-scan path, so
# every search here takes the windows), the service's own sizes, and every text taken as rare.
@pytest.mark.parametrize("sizes", [(10, 20, 2, 0), (1, 3, 3, 0), (4_000, 64_000, 4, 3_000), (10, 20, 2, 10**9)])
async def test_search_pages_across_windows_are_exactly_the_plain_query(client, db, monkeypatch, sizes):
    recent, first, growth, rare = sizes
    monkeypatch.setattr(investigate_db, "RARE_ROWS", rare)
    monkeypatch.setattr(investigate_db, "RECENT_WINDOW", recent)
    monkeypatch.setattr(investigate_db, "FIRST_WINDOW", first)
    monkeypatch.setattr(investigate_db, "GROWTH", growth)
    await load(db)
    low, high = await db.fetchrow("SELECT min(id), max(id) FROM job_log_details")
    newest = max(low, high + 1 - recent)  # the newest window, then the windows below it
    windows = [(newest, high + 1), *investigate_db.id_windows(low, newest, first)]
    if recent < 100:
        assert len(windows) >= 5  # the windowed path, over many windows
    assert windows[-1][0] == low
    assert all(a[0] == b[1] and a[0] < a[1] for a, b in zip(windows, windows[1:]))  # adjacent, newest first

    since, until = T0 + timedelta(minutes=10), T0 + timedelta(minutes=45)
    cases: list[tuple[dict[str, str], tuple[Any, ...]]] = [
        ({"q": "needle"}, ("%needle%", None, None, None, None)),
        ({"q": "NEEDLE", "job": "other_job"}, ("%needle%", "other_job", None, None, None)),
        ({"q": "needle", "status": "error"}, ("%needle%", None, "error", None, None)),
        ({"q": "needle", "since": since.isoformat(), "until": until.isoformat()}, ("%needle%", None, None, since, until)),
        ({"q": "needle", "job": "sync_open_orders", "status": "success", "until": until.isoformat()},
         ("%needle%", "sync_open_orders", "success", None, until)),
        ({"q": "haystack"}, ("%haystack%", None, None, None, None)),
        ({"q": "newest-only"}, ("%newest-only%", None, None, None, None)),
        ({"q": "not in any message"}, ("%not in any message%", None, None, None, None)),
    ]
    for params, oracle_args in cases:
        expected = [(r["name"], r["first_seq"]) for r in await db.fetch(ORACLE, *oracle_args)]
        for limit in (7, 50):
            found = await every_page(client, params, limit)
            assert found == expected, (params, limit)
    assert len(await db.fetch(ORACLE, "%needle%", None, None, None, None)) > 200  # many pages of 7
    assert len(await db.fetch(ORACLE, "%haystack%", None, None, None, None)) == 2


async def test_a_search_of_one_run_and_of_an_empty_projection(client, db, monkeypatch):
    monkeypatch.setattr(investigate_db, "RECENT_WINDOW", 5)
    empty = await (await client.get("/api/search", params={"q": "needle"})).json()
    assert empty["results"] == [] and empty["next_cursor"] is None
    await load(db)
    name = str(20261129000000 + 35)
    expected = [(r["name"], r["first_seq"]) for r in await db.fetch(ORACLE, "%needle%", None, None, None, None) if r["name"] == name]
    assert expected and await every_page(client, {"q": "needle", "run": name}, 2) == expected
