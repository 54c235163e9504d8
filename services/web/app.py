"""The web application factory: resources as cleanup contexts, typed app keys."""
from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp_jinja2
import asyncpg
import jinja2
import structlog
from aiohttp import web

from services.contracts.nats import connect
from services.contracts.subjects import close_nats
from services.web.cache import PageCache, ProjectionVersion
from services.web.directory import WorkerDirectory
from services.web.accounts import Authenticator, accounts_from
from services.web.keys import AUTHENTICATOR, DIRECTORY, FEED, METRICS, NATS_CONNECTION, PAGE_CACHE, POOL, SETTINGS
from services.web.live import RunFeed
from services.web.metrics import Metrics
from services.web.middleware import authentication, error_pages, same_origin_posts, security_headers
from services.web.present import install_filters
from services.contracts.process import settle_heap
from services.web.processes import MULTIPROC_DIR, Setup, Supervisor, become_web_process, describe
from services.web.routes import setup_routes
from services.web.settings import WebSettings

log = structlog.get_logger("joblog.web")


HERE = Path(__file__).parent


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The web only reads: no session state to reset, so no reset round trip per request."""


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=10, reset=_keep_session) as pool:
        app[POOL] = pool
        async with ProjectionVersion(settings.database_url) as version:  # cache hits without a round trip
            app[PAGE_CACHE].projection = version
            if AUTHENTICATOR in app:
                app[AUTHENTICATOR].share_failures(pool)  # the sign-in limit counts in Postgres, for every web process
            yield
            app[PAGE_CACHE].projection = None


async def _nats(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]

    nc = await connect(settings, "joblog-web")
    app[NATS_CONNECTION] = nc
    await app[FEED].subscribe(nc, settings.subjects)
    stopping = asyncio.Event()
    follower = asyncio.create_task(app[DIRECTORY].follow(nc.jetstream(), settings.subjects, stopping))
    yield
    stopping.set()
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    await close_nats(nc)


def authenticator(settings: WebSettings) -> Authenticator | None:
    """The sign-in check for these settings' accounts, or None when the web runs open."""
    if not settings.auth_enabled:
        return None
    secret = settings.admin_password.get_secret_value() if settings.admin_password else None
    stored = settings.admin_password_hash.get_secret_value() if settings.admin_password_hash else None
    return Authenticator(accounts_from(settings.web_users_file, secret, stored), failures_allowed=settings.web_login_failures)


async def _stop_password_threads(app: web.Application) -> None:
    app[AUTHENTICATOR].close()


async def _close_streams(app: web.Application) -> None:
    app[FEED].close_all()


def create_app(settings: WebSettings) -> web.Application:
    """The web app for these settings; Postgres and NATS are opened on startup."""
    # Several web processes share prometheus_client's multiprocess directory, which their supervisor made.
    metrics = Metrics(os.environ.get(MULTIPROC_DIR) if settings.web_processes > 1 else None)
    auth = authenticator(settings)
    middlewares = [metrics.middleware(), security_headers, error_pages, authentication(auth), same_origin_posts]
    # Long query strings (up to 32 kB) reach the handlers, so they get a helpful 400, not the parser's.
    app = web.Application(
        middlewares=middlewares, client_max_size=64 * 1024, handler_args={"max_line_size": 32 * 1024},
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[FEED] = RunFeed()
    app[DIRECTORY] = WorkerDirectory(settings.worker_timeout)
    app[PAGE_CACHE] = PageCache(settings.page_cache_size)
    app.on_shutdown.append(_close_streams)
    if auth is not None:
        app[AUTHENTICATOR] = auth
        app.on_cleanup.append(_stop_password_threads)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        auto_reload=False,  # templates ship with the code: no file checks per render (a restart picks up edits)
    )
    install_filters(env, settings)
    app.cleanup_ctx.append(_postgres)
    app.cleanup_ctx.append(_nats)
    setup_routes(app, HERE / "static")
    return app


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def tls_context(settings: WebSettings, *, quiet: bool = False) -> ssl.SSLContext | None:
    """The HTTPS context of JOBLOG_WEB_TLS_CERT/_KEY (None: plain HTTP); a file it cannot use stops the web.
    quiet: no warning about plain HTTP (each of several web processes; the supervisor said it once)."""
    if settings.web_tls_cert is None or settings.web_tls_key is None:
        if settings.auth_enabled and settings.web_host not in LOOPBACK and not quiet:
            log.warning("passwords travel in clear: HTTP Basic over plain HTTP on a non-loopback address",
                        host=settings.web_host, fix="set JOBLOG_WEB_TLS_CERT and JOBLOG_WEB_TLS_KEY, or serve behind a TLS reverse proxy")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.web_tls_cert, settings.web_tls_key)
    except (OSError, ssl.SSLError) as error:
        log.error("cannot serve HTTPS with JOBLOG_WEB_TLS_CERT / JOBLOG_WEB_TLS_KEY",
                  cert=str(settings.web_tls_cert), key=str(settings.web_tls_key), error=str(error))
        raise SystemExit(2) from None
    return context


def serve(settings: WebSettings, *, setup_process: Setup | None = None) -> int:
    """Serve until SIGTERM/SIGINT; without a password only on the loopback address. The exit code: 0 once
    stopped; with several processes (JOBLOG_WEB_PROCESSES), 1 when they could not be kept serving.
    setup_process: run first in each of several processes (they are fresh interpreters), e.g. logging."""
    context = tls_context(settings)  # a certificate it cannot use stops the web before anything else is said
    if not settings.auth_enabled:
        if settings.web_host not in LOOPBACK:
            log.error("refusing to serve without a password on a public address", host=settings.web_host,
                      fix="set JOBLOG_ADMIN_PASSWORD(_HASH) or JOBLOG_WEB_USERS_FILE, or JOBLOG_WEB_HOST=127.0.0.1")
            raise SystemExit(2)
        log.warning("web is open: no password or users file set, listening on the loopback address only")
    scheme = "https" if context else "http"
    url = f"{scheme}://{settings.web_host}:{settings.web_port}"
    if settings.web_processes > 1:
        return Supervisor(settings, url, serve_one, setup_process).run()
    log.info("web listening", url=url)
    web.run_app(create_app(settings), host=settings.web_host, port=settings.web_port, ssl_context=context,
                print=None, access_log=None)
    log.info("web stopped")
    return 0


def serve_one(settings: WebSettings, slot: int, report: Connection, parent: int, setup: Setup | None) -> None:
    """One of several web processes: the app on the shared port (SO_REUSEPORT); it tells the supervisor
    when it serves, or why it cannot (the supervisor says it, once)."""
    if setup is not None:
        setup(settings)
    become_web_process(slot, parent)
    settle_heap()
    serving = False

    def listening(_: str) -> None:  # run_app says it once every site listens
        nonlocal serving
        serving = True
        report.send(("serving", os.getpid()))

    try:
        # The certificate is loaded again here: an SSL context does not cross to another process.
        web.run_app(create_app(settings), host=settings.web_host, port=settings.web_port,
                    ssl_context=tls_context(settings, quiet=True), reuse_port=True, print=listening, access_log=None)
    except Exception as error:
        if not serving:
            report.send(("failed", describe(error)))
            raise SystemExit(3) from None
        log.exception("web process failed", pid=os.getpid())
        raise SystemExit(1) from None
