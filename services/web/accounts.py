"""Who may sign in, with which role, and checking their passwords without stalling the event loop.

Accounts come from a users file (JOBLOG_WEB_USERS_FILE, one ``name:role:hash`` a line) and from
JOBLOG_ADMIN_PASSWORD / _HASH (the operator ``admin``). A `viewer` sees every page, the API and
the live feed; an `operator` may also act (every POST).

A PBKDF2 check costs ~0.1 s of CPU on purpose, so `Authenticator` runs it in a small thread pool
behind a semaphore, remembers headers that passed for a while (keyed by an HMAC of the header,
never the password), and after too many failures from one address answers 429 at once, without
hashing. A flood of wrong guesses thus never delays /healthz, signed-in users or the live feed.

The failures live in Postgres (`SignInFailures`, table sign_in_failures), so the limit is the web's
as a whole however many processes serve it (JOBLOG_WEB_PROCESSES): each check is first claimed
there as a failure, under a lock per address, and given back only when the password was right.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
import structlog
from aiohttp import web

from services.web.passwords import ALGORITHM, ITERATIONS, parse_hash, verify_password

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

log = structlog.get_logger("joblog.web")


@dataclass(frozen=True)
class Account:
    """A person (or program) who signs in: name, role, and a password hash or (admin only) the password."""

    name: str
    role: Role
    password_hash: str | None = None
    password: str | None = None

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


# Who the web runs as without any password (loopback only): the single local operator.
ANONYMOUS = Account("anonymous", "operator")
ACCOUNT = web.RequestKey("account", Account)


def account_of(request: web.Request) -> Account | None:
    """The signed-in account of this request (ANONYMOUS when the web runs open), None before sign-in."""
    return request.get(ACCOUNT)


class UsersFileError(ValueError):
    """A users file that cannot be used; the message names the line."""


def parse_users(text: str) -> list[Account]:
    """Accounts from a users file's text: ``name:role:hash`` lines, blank lines and # comments ignored."""
    found: dict[str, Account] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise UsersFileError(f"line {number}: expected name:role:hash")
        name, role, stored = (part.strip() for part in parts)
        if not NAME.match(name):
            raise UsersFileError(f"line {number}: the name must be 1-64 letters, digits or _.@-")
        if role not in ROLES:
            raise UsersFileError(f"line {number}: role {role[:20]!r} is not one of viewer, operator")
        try:
            parse_hash(stored)
        except ValueError as error:
            raise UsersFileError(f"line {number}: the hash is not readable ({error})") from None
        if name in found:
            raise UsersFileError(f"line {number}: {name} is listed twice")
        found[name] = Account(name, role, password_hash=stored)  # type: ignore[arg-type]
    if not found:
        raise UsersFileError("no accounts in it")
    return list(found.values())


def read_users_file(path: Path) -> list[Account]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(f"cannot read it ({type(error).__name__}: {getattr(error, 'strerror', None) or error})") from None
    return parse_users(text)


def accounts_from(users_file: Path | None, admin_password: str | None, admin_password_hash: str | None) -> dict[str, Account]:
    """Every account the settings describe; admin (operator) from the admin password or hash."""
    accounts = {a.name: a for a in read_users_file(users_file)} if users_file is not None else {}
    if admin_password_hash is not None or admin_password is not None:
        if "admin" in accounts:
            raise UsersFileError("admin is in the users file and also set by JOBLOG_ADMIN_PASSWORD(_HASH); keep one")
        accounts["admin"] = Account("admin", "operator", password_hash=admin_password_hash,
                                    password=None if admin_password_hash else admin_password)
    return accounts


class TooManyAttempts(Exception):
    """This address failed to sign in too often; retry_after seconds until it may try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; retry in {retry_after} s")
        self.retry_after = retry_after


class TooBusy(Exception):
    """A sign-in is refused at once (503): so many are waiting for a check already, or the failures
    cannot be counted (Postgres unreachable); the message says which."""

    def __init__(self, message: str = "Too many sign-ins are being checked right now; try again in a moment.") -> None:
        super().__init__(message)


def password_threads() -> int:
    """Threads for password checks: leave a core to the event loop."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _yield_to_the_loop() -> None:
    """Run this password thread at a lower CPU priority (Linux: per thread), so the event loop wins the core."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


# The advisory-lock class of sign_in_failures (two-key form): one lock per client address.
FAILURES_LOCK = 7305115

# Claims one attempt for an address that has fewer than $3 failures in the last $2 seconds (under the
# lock taken first, so processes checking the same address at once cannot both see room for one more).
CLAIM = """
WITH recent AS (
    SELECT count(*) AS failures, min(failed_at) AS oldest FROM sign_in_failures
    WHERE address = $1 AND failed_at > clock_timestamp() - make_interval(secs => $2)
), claimed AS (
    INSERT INTO sign_in_failures (address) SELECT $1 FROM recent WHERE failures < $3 RETURNING failed_at
)
SELECT (SELECT failed_at FROM claimed) AS claimed,
       extract(epoch FROM oldest + make_interval(secs => $2) - clock_timestamp())::float8 AS retry_after
FROM recent
"""


class SignInFailures:
    """Failed sign-ins by client address in Postgres, shared by every web process.

    An attempt is claimed as a failure before its password is checked, and given back (with the
    address's other failures) when the password was right: checks running at the same moment in
    several processes count too, so no burst gets more checks than the limit."""

    def __init__(self, pool: asyncpg.Pool, window: float) -> None:
        self.pool, self.window = pool, window
        self._swept = time.monotonic()

    async def claim(self, address: str, allowed: int) -> tuple[object | None, float]:
        """(when it was claimed, 0) when the address may try once more; (None, seconds until it may) when not."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", FAILURES_LOCK, address)
            row = await conn.fetchrow(CLAIM, address, self.window, allowed)
        if row["claimed"] is not None:
            try:
                await self._sweep()
            except STORE_ERRORS as error:  # the claim stands: the next sweep deletes what this one could not
                log.warning("cannot sweep old sign-in failures", error=repr(error))
            return row["claimed"], 0.0
        return None, row["retry_after"] if row["retry_after"] is not None else self.window

    async def forget(self, address: str) -> None:
        """The address signed in: its failures are forgiven."""
        await self.pool.execute("DELETE FROM sign_in_failures WHERE address = $1", address)

    async def _sweep(self) -> None:
        """About once a window, delete every row past it, so quiet addresses do not stay."""
        if time.monotonic() - self._swept < self.window:
            return
        self._swept = time.monotonic()
        await self.pool.execute(
            "DELETE FROM sign_in_failures WHERE failed_at <= clock_timestamp() - make_interval(secs => $1)", self.window,
        )


# Seconds a process believes Postgres's "this address is at its limit" without asking again.
LIMITED_BELIEVED = 2.0

# What a failure store that cannot be reached raises; the sign-in is refused (503), never let through.
STORE_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Authenticator:
    """Checks HTTP Basic credentials off the event loop, with a cache of good ones and a per-address limit
    (failures counted in Postgres once `share_failures` gave it the pool)."""

    def __init__(
        self, accounts: dict[str, Account], *, failures_allowed: int = 10, window: float = 60.0,
        remember: float = 120.0, threads: int | None = None, most_waiting: int = 64,
    ) -> None:
        threads = threads or password_threads()
        self.accounts = accounts
        self.failures_allowed, self.window, self.remember = failures_allowed, window, remember
        self.most_waiting = most_waiting  # bounds memory and a new sign-in's wait under a flood from many addresses
        self._threads = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="joblog-password", initializer=_yield_to_the_loop,
        )
        self._slots = asyncio.Semaphore(threads)
        self._key = secrets.token_bytes(32)  # headers are remembered by HMAC under a key only this process knows
        self._accepted: OrderedDict[bytes, tuple[Account, float]] = OrderedDict()
        self.failures: SignInFailures | None = None  # set on startup, with the app's pool
        # Addresses Postgres said are at the limit: (believed until, may retry at), monotonic. Believed for at
        # most LIMITED_BELIEVED s, so a flood costs a query per address every few seconds, and a sign-in that
        # succeeded meanwhile in another process (forgiving the address) is not refused here for long.
        self._limited: dict[str, tuple[float, float]] = {}
        self._in_flight: dict[str, int] = {}
        iterations = max((parse_hash(a.password_hash)[0] for a in accounts.values() if a.password_hash), default=ITERATIONS)
        # Unknown names cost a check too, so a reply's timing does not tell which names exist.
        self._decoy = f"{ALGORITHM}${iterations}$decoy${base64.b64encode(bytes(32)).decode()}"
        self.waiting = 0  # sign-ins being checked now: claimed in Postgres, queued for or in the password threads
        self.checked = 0  # slow checks done

    def share_failures(self, pool: asyncpg.Pool) -> None:
        self.failures = SignInFailures(pool, self.window)

    async def authenticate(self, header: str, address: str) -> Account | None:
        """The account these credentials sign in, or None; raises TooManyAttempts or TooBusy without checking anything."""
        key = hmac.new(self._key, header.encode(errors="replace"), hashlib.sha256).digest()
        now = time.monotonic()
        remembered = self._accepted.get(key)
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        if not header:
            return None  # no credentials: the browser is about to ask for them; nothing to check or count
        self._refuse_if_limited(address, now)
        if self.waiting >= self.most_waiting:
            raise TooBusy()
        # Checks still running here count at once: fifty guesses at once must not all wait for Postgres.
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        self.waiting += 1
        try:
            account = await self._claimed_check(header, address)
        finally:
            self.waiting -= 1
            self._in_flight[address] -= 1
            if not self._in_flight[address]:
                del self._in_flight[address]
        if account is None:
            return None
        self._accepted[key] = (account, time.monotonic() + self.remember)
        self._accepted.move_to_end(key)
        while len(self._accepted) > 1000:
            self._accepted.popitem(last=False)
        return account

    def _refuse_if_limited(self, address: str, now: float) -> None:
        limited = self._limited.get(address)
        if limited is not None and limited[0] > now:
            raise TooManyAttempts(max(1, round(limited[1] - now)))
        if limited is not None:
            del self._limited[address]
        if self._in_flight.get(address, 0) >= self.failures_allowed:
            raise TooManyAttempts(max(1, round(self.window)))

    async def _claimed_check(self, header: str, address: str) -> Account | None:
        store = self.failures
        if store is None:
            raise RuntimeError("the Authenticator has no failure store yet (share_failures runs on startup)")
        try:
            claimed, wait = await store.claim(address, self.failures_allowed)
        except STORE_ERRORS as error:
            log.warning("cannot count sign-in failures: refusing sign-ins", error=repr(error))
            raise TooBusy("Sign-ins cannot be checked right now (the database is unreachable); try again in a moment.") from None
        if claimed is None:
            self._remember_limited(address, time.monotonic(), wait)
            raise TooManyAttempts(max(1, round(wait)))
        account = await self._check(header)  # should the request end before, the claimed failure stays one
        if account is not None:  # the claimed failure, and any before it, are forgiven
            try:
                await store.forget(address)
            except STORE_ERRORS as error:
                log.warning("cannot forget sign-in failures", error=repr(error))
        return account

    def _remember_limited(self, address: str, now: float, wait: float) -> None:
        if len(self._limited) >= 10_000:  # forget the ones that ran out, or all
            for stale in [a for a, (believed, _) in self._limited.items() if believed <= now]:
                del self._limited[stale]
            if len(self._limited) >= 10_000:
                self._limited.clear()
        self._limited[address] = (now + min(wait, LIMITED_BELIEVED), now + wait)

    async def _check(self, header: str) -> Account | None:
        if not header.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        account = self.accounts.get(name)
        if account is not None and account.password is not None:
            return account if hmac.compare_digest(password.encode(), account.password.encode()) else None
        stored = account.password_hash if account is not None and account.password_hash else self._decoy
        async with self._slots:
            ok = await asyncio.get_running_loop().run_in_executor(self._threads, verify_password, password, stored)
        self.checked += 1
        return account if ok and account is not None else None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
