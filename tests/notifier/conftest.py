"""What the notifier's tests share: a real webhook receiver (aiohttp) and a real mail server (aiosmtpd)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller

from joblog.servers import free_port
from services.contracts import Subjects
from services.notifier.settings import NotifierSettings

SECRET = "webhook-s3cret"


class Receiver:
    """A webhook (and Slack) receiver on a fixed port that can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.hang: asyncio.Event | None = None  # set: requests wait for it before answering
        self.arrived = asyncio.Event()
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def slack_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body, "json": json.loads(body)})
        self.arrived.set()
        if self.hang is not None:
            await self.hang.wait()
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        app.router.add_post("/slack", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=self.port)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    def alerts(self, path: str = "/hook") -> list[dict[str, Any]]:
        return [r["json"] for r in self.requests if r["path"] == path]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real aiohttp server standing in for the webhook and Slack receivers."""
    found = Receiver()
    await found.start()
    yield found
    if found.hang is not None:
        found.hang.set()
    await found.stop()


class Mailbox:
    """aiosmtpd's handler: keeps every message it is sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def mailbox() -> Any:
    """A real SMTP server on loopback: (mailbox, port)."""
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture
def make_notifier_settings(nats_url: str, database_url: str, subjects: Subjects) -> Callable[..., NotifierSettings]:
    def make(**overrides: Any) -> NotifierSettings:
        return NotifierSettings(**{
            "nats_url": nats_url, "database_url": database_url, "stream": subjects.stream,
            "subject_prefix": subjects.prefix, "public_url": "https://joblog.example.com",
            "notify_check_interval": 0.2, **overrides,
        })

    return make
