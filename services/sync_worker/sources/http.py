"""An HTTP JSON API of open orders, read page by page by following next links.

Each page is ``{"orders": [{...}, ...], "next": "<url of the next page>" | null}``; ``next``
may be relative to the page's URL. One page is in memory at a time. A 5xx answer, a timeout
or a connection error is retried with exponential backoff; any other error status stops the
sync with the status and the start of the body.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import structlog
from yarl import URL

from services.sync_worker.errors import SourceError
from services.sync_worker.sources import RawOrder

log = structlog.get_logger("joblog.worker.source")

RetryNotice = Callable[[str], Awaitable[None]]


class HttpSource:
    """GET url, then every next link, with a per-request timeout and retries."""

    def __init__(
        self, url: str, *, timeout: float = 30.0, retries: int = 4, backoff: float = 0.5,
        token: str | None = None, on_retry: RetryNotice | None = None,
    ) -> None:
        self.url = URL(url)
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.retries = retries
        self.backoff = backoff
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.on_retry = on_retry
        self.description = f"orders API {self.url.with_query(None).with_user(None)}"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncIterator[list[RawOrder]]]:
        async with aiohttp.ClientSession(timeout=self.timeout, headers=self.headers, raise_for_status=False) as session:
            # The first page proves the API answers, so "connection established" means something.
            first = await self._page(session, self.url)
            yield self._pages(session, first)

    async def _pages(self, session: aiohttp.ClientSession, first: tuple[list[RawOrder], URL | None]) -> AsyncIterator[list[RawOrder]]:
        orders, following = first
        while True:
            yield orders
            if following is None:
                return
            orders, following = await self._page(session, following)

    async def _page(self, session: aiohttp.ClientSession, url: URL) -> tuple[list[RawOrder], URL | None]:
        attempt = 0
        while True:
            try:
                async with session.get(url) as response:
                    if response.status >= 500:
                        raise _Retryable(f"{response.status} {response.reason}")
                    if response.status != 200:
                        body = (await response.text())[:200]
                        raise SourceError(f"{self.description} answered {response.status} {response.reason} for {url}: {body}")
                    try:
                        payload = await response.json(content_type=None)
                    except ValueError as error:
                        raise SourceError(f"{self.description} sent a page that is not JSON ({url}): {error}") from error
                return _parse_page(payload, url, self.description)
            except (_Retryable, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as error:
                reason = str(error) if isinstance(error, _Retryable) else (str(error) or type(error).__name__)
                if attempt >= self.retries:
                    raise SourceError(f"{self.description} failed after {attempt + 1} attempts ({url}): {reason}") from error
                delay = self.backoff * 2**attempt
                attempt += 1
                notice = f"Orders API: {reason}; retry {attempt} of {self.retries} in {delay:g} s"
                log.warning("orders API request failed; retrying", url=str(url), reason=reason, attempt=attempt, delay_s=delay)
                if self.on_retry:
                    await self.on_retry(notice)
                await asyncio.sleep(delay)


class _Retryable(Exception):
    """A server-side failure worth trying again."""


def _parse_page(payload: Any, url: URL, description: str) -> tuple[list[RawOrder], URL | None]:
    if not isinstance(payload, dict) or not isinstance(payload.get("orders"), list):
        raise SourceError(f"{description} sent a page without an \"orders\" list ({url})")
    orders = [row if isinstance(row, dict) else {"_raw": row} for row in payload["orders"]]
    following = payload.get("next")
    if following is None or following == "":
        return orders, None
    if not isinstance(following, str):
        raise SourceError(f"{description} sent a \"next\" that is not a URL ({url})")
    target = url.join(URL(following))
    if target == url:
        raise SourceError(f"{description} sent a page whose next link points to itself ({url})")
    return orders, target
