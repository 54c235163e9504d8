"""Security headers, authentication, CSRF and error pages (never a bare 500 for bad input)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp_jinja2
import structlog
from aiohttp import web

from services.web.accounts import ACCOUNT, ANONYMOUS, Account, Authenticator, TooBusy, TooManyAttempts
from services.web.errors import BadRequest, NotFound

log = structlog.get_logger("joblog.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", "")


def error_response(request: web.Request, status: int, title: str, detail: str) -> web.StreamResponse:
    if wants_json(request):
        return web.json_response({"error": title, "detail": detail, "status": status}, status=status)
    response = aiohttp_jinja2.render_template(
        "error.html", request, {"status": status, "title": title, "detail": detail, "account": request.get(ACCOUNT)}, status=status
    )
    return response


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFound as error:
        return error_response(request, 404, "Not found", str(error))
    except BadRequest as error:
        return error_response(request, 400, "Bad request", str(error))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = error_response(request, error.status, error.reason, error.text or error.reason)
        for kept in ("WWW-Authenticate", "Retry-After"):
            if kept in error.headers:
                response.headers[kept] = error.headers[kept]
        return response
    except Exception:
        log.exception("unhandled error", path=request.path)
        return error_response(request, 500, "Internal error", "Something went wrong; the error was logged.")


OPEN_PATHS = ("/healthz", "/readyz")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def authentication(auth: Authenticator | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """HTTP Basic on everything but the health checks (none when auth is None: the open loopback web);
    every state-changing request (an action) needs the operator role."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if auth is None:
            account: Account | None = ANONYMOUS
        else:
            try:
                account = await auth.authenticate(request.headers.get("Authorization", ""), request.remote or "unknown")
            except TooManyAttempts as refused:
                raise web.HTTPTooManyRequests(
                    headers={"Retry-After": str(refused.retry_after)},
                    text=f"Too many failed sign-ins from your address; try again in {refused.retry_after} s.",
                ) from None
            except TooBusy as busy:
                raise web.HTTPServiceUnavailable(headers={"Retry-After": "1"}, text=str(busy)) from None
        if account is None:
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Basic realm="joblog", charset="UTF-8"'},
                text="Authentication required: sign in with your joblog account.",
            )
        request[ACCOUNT] = account
        if request.method not in SAFE_METHODS and not account.can_act:
            log.info("action refused to a viewer", account=account.name, path=request.path, remote=request.remote)
            raise web.HTTPForbidden(text=f"Your account {account.name} is a viewer: it can look, not act. Ask an operator.")
        return await handler(request)

    return middleware


@web.middleware
async def same_origin_posts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse state-changing requests from other sites (CSRF)."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        if site is not None and site not in ("same-origin", "none"):
            raise web.HTTPForbidden(text="cross-site request refused")
        if origin is not None and origin != "null":
            if urlsplit(origin).netloc != request.host:
                raise web.HTTPForbidden(text="cross-site request refused")
    return await handler(request)


__all__ = ["authentication", "error_pages", "same_origin_posts", "security_headers", "BadRequest", "NotFound"]
