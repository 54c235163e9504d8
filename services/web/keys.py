"""Typed keys of what the web app holds."""
from __future__ import annotations

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from services.web.accounts import Authenticator
from services.web.cache import PageCache
from services.web.directory import WorkerDirectory
from services.web.live import RunFeed
from services.web.metrics import Metrics
from services.web.settings import WebSettings

SETTINGS = web.AppKey("settings", WebSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
NATS_CONNECTION = web.AppKey("nats", NATS)
DIRECTORY = web.AppKey("directory", WorkerDirectory)
FEED = web.AppKey("feed", RunFeed)
METRICS = web.AppKey("metrics", Metrics)
PAGE_CACHE = web.AppKey("page_cache", PageCache)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
