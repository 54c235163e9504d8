"""A run as a file: every message, as text or as JSON, streamed a chunk at a time (never the whole run in memory)."""
from __future__ import annotations

from aiohttp import web

from services.web import investigate, params
from services.web.api import RunWithTraceback, _detail, _run
from services.web.keys import SETTINGS
from services.web.present import format_when


def _start(name: str, extension: str, content_type: str) -> web.StreamResponse:
    return web.StreamResponse(headers={
        "Content-Type": f"{content_type}; charset=utf-8",
        "Content-Disposition": f'attachment; filename="run-{name}.{extension}"',
        "Cache-Control": "no-store",
    })


async def as_text(request: web.Request) -> web.StreamResponse:
    """The run's header, then one line per message: time, level, key, message."""
    name = params.run_name(request)
    run, chunks = await investigate.export(request.app, name)
    zone = request.app[SETTINGS].zone
    response = _start(name, "txt", "text/plain")
    await response.prepare(request)
    head = [f"Run {run['name']} of {run['job']}: {run['status']}", f"Started  {format_when(run['started_at'], zone, True)}",
            f"Finished {format_when(run['finished_at'], zone, True)}"]
    if run["error_message"]:
        head.append(f"Error    {run['error_class'] or 'Error'}: {run['error_message']}")
    if run["stats"]:
        head.append("Stats    " + ", ".join(f"{k}={v}" for k, v in run["stats"].items()))
    await response.write(("\n".join(head) + "\n\n").encode())
    async for rows in chunks:
        lines = [f"{format_when(r['created_at'], zone, True)} {r['level'].upper():7} [{r['key']}] "
                 f"{r['message'].replace(chr(10), chr(10) + '    ')}" for r in rows]
        await response.write(("\n".join(lines) + "\n").encode())
    await response.write_eof()
    return response


async def as_json(request: web.Request) -> web.StreamResponse:
    """{"run": ..., "details": [...]} in the shapes of GET /api/runs/{name}, with every detail."""
    name = params.run_name(request)
    run, chunks = await investigate.export(request.app, name)
    response = _start(name, "json", "application/json")
    await response.prepare(request)
    await response.write(b'{"run":' + _run(run, RunWithTraceback).model_dump_json().encode() + b',"details":[')
    first = True
    async for rows in chunks:
        body = ",".join(_detail(r).model_dump_json() for r in rows)
        await response.write((body if first else "," + body).encode())
        first = False
    await response.write(b"]}")
    await response.write_eof()
    return response
