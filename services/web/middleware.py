"""Security headers, authentication, CSRF and error pages (never a bare 500 for bad input)."""
from __future__ import annotations

import base64
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp_jinja2
import structlog
from aiohttp import web

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
        "error.html", request, {"status": status, "title": title, "detail": detail}, status=status
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
        if "WWW-Authenticate" in error.headers:
            response.headers["WWW-Authenticate"] = error.headers["WWW-Authenticate"]
        return response
    except Exception:
        log.exception("unhandled error", path=request.path)
        return error_response(request, 500, "Internal error", "Something went wrong; the error was logged.")


def basic_auth(check: Callable[[str], bool]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """HTTP Basic (user admin) on everything but the health checks; check(password) decides."""
    # A hashed password is slow to check on purpose: remember the headers that passed.
    accepted: set[str] = set()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if header not in accepted:
            if not (header.startswith("Basic ") and _admin_password_ok(header[6:].strip(), check)):
                raise web.HTTPUnauthorized(
                    headers={"WWW-Authenticate": 'Basic realm="joblog", charset="UTF-8"'},
                    text="Authentication required: sign in as admin.",
                )
            if len(accepted) < 100:
                accepted.add(header)
        return await handler(request)

    return middleware


def _admin_password_ok(encoded: str, check: Callable[[str], bool]) -> bool:
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user.encode(), b"admin") and check(password)


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


__all__ = ["basic_auth", "error_pages", "same_origin_posts", "security_headers", "BadRequest", "NotFound"]
