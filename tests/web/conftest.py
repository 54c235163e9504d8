"""A real web app on a real port, over this test's Postgres and NATS."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from services.log_recorder import db as recorder_db
from services.log_recorder.projection import Batch
from services.web.app import create_app


@pytest_asyncio.fixture
async def make_client(js: Any, web_settings: Any) -> AsyncIterator[Callable[..., Any]]:
    """Start the web app (optionally with other settings) and return an HTTP client to it."""
    clients: list[TestClient] = []

    async def make(**overrides: Any) -> TestClient:
        settings = web_settings.model_copy(update=overrides) if overrides else web_settings
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    return await make_client()


@pytest_asyncio.fixture
async def project(db: Any) -> Callable[..., Any]:
    """Write events into the projection the way the recorder does."""

    async def apply(events: list[Any]) -> None:
        batch = Batch()
        for event in events:
            batch.add(event)
        async with db.transaction():
            await recorder_db.apply_batch(db, batch)

    return apply
