"""Versioned SQL migrations: applied in order, once, under an advisory lock."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit
from importlib import resources

import asyncpg

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK = 7_305_118_201

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("joblog.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; returns the names applied. Safe to run twice or concurrently."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(CREATE_LEDGER)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in available():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(f"{version:04d}_{name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


def with_database(dsn: str, database: str) -> str:
    """The same DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database if it does not exist; True if it was created."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        name = urlsplit(dsn).path.lstrip("/")
        admin = await asyncpg.connect(with_database(dsn, "postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        finally:
            await admin.close()
        return True
    await conn.close()
    return False
