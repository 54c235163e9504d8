"""Prototype, not service code: the web app with a 1-second render cache in front of GET pages (stale-while-revalidate).

The real create_app(settings), plus one middleware inserted first that keeps each page's rendered
response for a second (the pages update themselves over SSE, so a first render up to a second old
is fine). Measured like the web benchmark: own process, wrk -t1 -c16, on the cached dataset.

    .venv/bin/python -m bench.prototype_web            # prints req/s and p99 for / with and without the cache
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

from aiohttp import web

from bench.common import PYTHON, ROOT, Servers, delete_streams, service_env
from bench.web import wait_for_port, wrk
from bench.web_data import ensure_dataset
from joblog.servers import free_port

TTL = 1.0


def cached_app() -> web.Application:
    from services.contracts.settings import load_settings
    from services.web.app import create_app
    from services.web.settings import WebSettings

    cache: dict[str, tuple[float, int, bytes, dict[str, str]]] = {}
    rendering: set[str] = set()

    @web.middleware
    async def render_cache(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.method != "GET" or not (request.path == "/" or request.path.startswith("/runs/")) \
                or request.path.endswith("/events"):
            return await handler(request)
        hit = cache.get(request.path_qs)
        # Fresh, or stale while one request re-renders it (no stampede of 16 renders at expiry).
        if hit and (time.monotonic() - hit[0] < TTL or request.path_qs in rendering):
            return web.Response(status=hit[1], body=hit[2], headers=hit[3])
        rendering.add(request.path_qs)
        try:
            response = await handler(request)
        finally:
            rendering.discard(request.path_qs)
        if isinstance(response, web.Response) and response.status == 200 and response.body is not None:
            headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "date", "server")}
            cache[request.path_qs] = (time.monotonic(), response.status, bytes(response.body), headers)
        return response

    app = create_app(load_settings(WebSettings))
    app.middlewares.insert(0, render_cache)
    return app


async def main() -> None:
    with Servers() as servers:
        dsn, *_ = await ensure_dataset(servers)
        for label, args in (("as it is", ["-m", "joblog", "web"]), ("1 s render cache", ["-m", "bench.prototype_web", "--serve"])):
            tag, port = uuid.uuid4().hex[:8], free_port()
            env = service_env(servers.nats_url, dsn, f"BENCH_PW_{tag}", f"bench{tag}", JOBLOG_WEB_PORT=str(port))
            process = subprocess.Popen([PYTHON, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for_port(port)
                await asyncio.to_thread(wrk, f"http://127.0.0.1:{port}/", 3)
                f = await asyncio.to_thread(wrk, f"http://127.0.0.1:{port}/", 10)
                print(f"index {label:17}: {f['rps']:7,.0f} req/s, p50 {f['p50']:6.1f} ms, p99 {f['p99']:6.1f} ms", flush=True)
            finally:
                process.terminate()
                process.wait(15)
                await delete_streams(servers.nats_url, f"BENCH_PW_{tag}")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        web.run_app(cached_app(), host="127.0.0.1", port=int(os.environ["JOBLOG_WEB_PORT"]), print=None, access_log=None)
    else:
        asyncio.run(main())
