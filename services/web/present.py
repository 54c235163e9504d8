"""Presentation: how a run, a time and a duration are shown (badges, summaries, Jinja2 filters).

Shared by the HTML pages, the JSON API (state, summary) and the live feed (the same badges and
formats the server-rendered rows use).
"""
from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import asyncpg
import jinja2
from markupsafe import Markup, escape

from services.contracts.statuses import STATUS_ORDER, TERMINAL
from services.web.settings import WebSettings

# label, icon, css class: distinguishable by colour and by text/icon
BADGES = {
    "new": ("New", "○", "new"),
    "processing": ("Processing", "◐", "processing"),
    "success": ("Success", "✓", "success"),
    "error": ("Error", "✕", "error"),
    "stalled": ("Stalled", "⚠", "stalled"),
    # A run skipped because its job was already running: status success in the data, shown apart.
    "skipped": ("Skipped", "↷", "skipped"),
}


class Liveness(Protocol):
    def is_alive(self, worker_id: str | None) -> bool | None: ...


class Row(dict):  # type: ignore[type-arg]
    """A dict whose keys templates read as attributes: Jinja2 tries getattr before [], and a
    plain dict made every `run.name` fail once first (the single largest cost of a page)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def is_skipped(status: str | None, stats: Any) -> bool:
    """A run that did not run its job (already running): success with stats {"skipped": true}."""
    if status != "success" or not stats:
        return False
    if isinstance(stats, str):
        stats = json.loads(stats)
    return isinstance(stats, dict) and stats.get("skipped") is True


def run_state(run: asyncpg.Record | dict[str, Any], directory: Liveness) -> str:
    """The status to show: open runs whose worker is lost (no heartbeat, no clean stop) are stalled;
    a skipped run (status success) is skipped."""
    if run["status"] not in TERMINAL and directory.is_alive(run["worker_id"]) is False:
        return "stalled"
    if run["status"] == "success" and is_skipped(run["status"], run.get("stats")):
        return "skipped"
    return str(run["status"])


def summary(run: asyncpg.Record | dict[str, Any]) -> str:
    """One line: what the run did, or why it failed."""
    stats = run["stats"] or {}
    if isinstance(stats, str):
        stats = json.loads(stats)
    if run["status"] == "error":
        first = (run["error_message"] or "failed").strip().splitlines()
        return first[0][:160] if first else "failed"
    if run["status"] == "success":
        if stats.get("skipped"):
            return "Skipped: already running"
        if "imported" in stats:
            parts = [f"{stats['imported']:,} imported"]
            for key in ("created", "updated", "closed", "invalid"):
                if stats.get(key):
                    parts.append(f"{stats[key]:,} {key}")
            return ", ".join(parts)
        return ", ".join(f"{v:,} {k}" if isinstance(v, int) else f"{k}: {v}" for k, v in list(stats.items())[:4]) or "Done"
    return "Running…" if run["status"] == "processing" else "Waiting to start"


def format_when(value: datetime | None, zone: ZoneInfo, millis: bool = False) -> str:
    """A timestamp in the configured zone, to the second or the millisecond."""
    if value is None:
        return "—"
    local = value.astimezone(zone)
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{local.microsecond // 1000:03d}"
    return text


def format_clock(value: datetime, zone: ZoneInfo) -> str:
    """HH:MM:SS.mmm in the configured zone (a time on the same page as its date)."""
    return format_when(value, zone, millis=True).split(" ", 1)[1]


def format_duration(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, whole = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {whole:02d} s"


def badge(status: str) -> dict[str, str]:
    label, icon, css = BADGES[status]
    return {"label": label, "icon": icon, "css": css}


def install_filters(env: jinja2.Environment, settings: WebSettings) -> None:
    """The templates' filters (when, clock, duration, number) and globals (badges, zone, status order)."""
    zone = settings.zone

    def when(value: datetime | None, millis: bool = False) -> str:
        return format_when(value, zone, millis)

    def number(value: Any) -> str:
        return f"{value:,}" if isinstance(value, (int, float)) else str(value)

    def day(value: datetime | None) -> str:  # "3 Dec 2026"
        return "—" if value is None else f"{value.astimezone(zone):%-d %b %Y}"

    env.filters.update(when=when, clock=lambda value: format_clock(value, zone), duration=format_duration, number=number, day=day)
    env.globals.update(badges=BADGES, zone_name=settings.timezone, status_order=STATUS_ORDER)


# Run statistics are stored as jsonb, which keeps keys in its own order (shortest first), not the
# job's. They are shown by this rule instead: the usual steps of a sync in the order they happen,
# then any other key alphabetically.
STATS_ORDER = ("fetched", "imported", "created", "updated", "unchanged", "closed", "deleted", "invalid", "skipped", "failed")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


def ordered_stats(stats: dict[str, Any] | None) -> dict[str, Any]:
    """A run's statistics in the order the pages show them (STATS_ORDER, then alphabetical)."""
    rank = {key: i for i, key in enumerate(STATS_ORDER)}
    stats = stats or {}
    return {key: stats[key] for key in sorted(stats, key=lambda k: (rank.get(k, len(rank)), k))}


def epoch_ms(value: datetime) -> int:
    """Whole milliseconds since the epoch, as a browser's Date.parse() reads the same timestamp."""
    return (value - _EPOCH) // _MILLISECOND


# The only messages a page's notice box shows: a redirect after an action names one by its key,
# with the values it needs (checked by params.notice); an unknown key shows nothing.
NOTICES = {
    "triggered": ("Triggered {job}. The new run appears in the job logs in a moment.", ("job",)),
    "retried": ("Triggered {job} again (retry of run {run}). The new run appears in the job logs in a moment.", ("job", "run")),
    "run_deleted": ("Run {run} is being deleted.", ("run",)),
    "runs_deleted": ("Runs created before {before} are being deleted.", ("before",)),
    "paused": ("Paused the schedule of {job}: no new scheduled runs until it is resumed.", ("job",)),
    "resumed": ("Resumed the schedule of {job}: its next slot runs again.", ("job",)),
    "cancelling": ("Cancelling run {run}: it ends as error at its next step.", ("run",)),
    "cancel_ended": ("Run {run} has already ended; there is nothing to cancel.", ("run",)),
    "cancel_refused": ("Run {run} could not be cancelled: its worker does not hold it (it may have just ended).", ("run",)),
    "cancel_unreachable": ("Run {run} could not be cancelled: its worker did not answer. Is it still running?", ("run",)),
    "bulk_retried": ("Retried {runs} failed runs: {count} new runs, one per job.", ("runs", "count")),
    "nothing_to_retry": ("No failed runs match this filter; nothing was retried.", ()),
    "waiting": ("Waiting for a worker to take the run of {job}. This page follows it.", ("job",)),
}

ACTION_LABELS = {
    "trigger": "Run now", "retry": "Retry", "delete_runs": "Delete run", "delete_before": "Delete runs before",
    "pause": "Pause", "resume": "Resume", "cancel": "Cancel", "bulk_retry": "Retry several",
}


def present_action(row: asyncpg.Record) -> Row:
    """An audit trail entry with its label and where it points (the run retried, the job run; deleted runs nowhere)."""
    data = Row(row)
    if isinstance(data.get("detail"), str):
        data["detail"] = json.loads(data["detail"])
    data["label"] = ACTION_LABELS.get(data["action"], data["action"])
    target, job = data["target"], data["job"]
    if data["action"] == "retry" and target:
        data["url"] = f"/runs/{target}"
    elif job:
        data["url"] = f"/?job={job}"
    else:
        data["url"] = None
    return data


def _live_duration(run: asyncpg.Record) -> int | None:
    """The duration the job reported; else from start to finish (a worker-lost run), or so far (processing)."""
    if run["duration_ms"] is not None:
        return int(run["duration_ms"])
    if run["started_at"] is not None and run["finished_at"] is not None:
        return max(0, epoch_ms(run["finished_at"]) - epoch_ms(run["started_at"]))
    if run["started_at"] is not None and run["status"] == "processing":
        return max(0, epoch_ms(datetime.now(timezone.utc)) - epoch_ms(run["started_at"]))
    return None


def present_run(run: asyncpg.Record, directory: Liveness) -> Row:
    """A run's row with what the pages and the API show of it: state, summary, live duration."""
    data = Row(run)
    if isinstance(data.get("stats"), str):
        data["stats"] = json.loads(data["stats"])
    if data.get("stats"):
        data["stats"] = ordered_stats(data["stats"])
    data["state"] = run_state(run, directory)
    data["summary"] = summary(data)
    data["live_duration_ms"] = _live_duration(run)
    data["completeness"] = completeness(run)
    return data


# Finding what went wrong (issue 17) -----------------------------------------------------------------

# Seqs from here up are the recorder's own verdicts on a lost worker (log_recorder.watchdog.VERDICT_SEQ).
VERDICT_SEQ = 2_000_000_000


def completeness(run: asyncpg.Record | dict[str, Any]) -> dict[str, Any] | None:
    """Whether every event of the run arrived: "42 of 42 events", "gap after #17"; None when unknown
    (a run recorded before the projection kept its seqs)."""
    if not run.get("seqs_known"):
        return None
    seen, gap, terminal = run["seq_seen"] or 0, run["seq_gap"], run["terminal_seq"]
    if gap is not None:
        where = "the first events are missing" if gap == 0 else f"gap after #{gap}"
        return {"state": "gap", "text": f"{seen:,} events, {where}", "gap": gap}
    if terminal is None:
        return {"state": "open", "text": f"{seen:,} events so far", "gap": None}
    if terminal >= VERDICT_SEQ:
        return {"state": "complete", "text": f"{seen:,} of {seen:,} events (then the worker was lost)", "gap": None}
    return {"state": "complete", "text": f"{seen:,} of {max(seen, terminal):,} events", "gap": None}


def highlight(text: str, needle: str, width: int = 240) -> list[tuple[str, bool]]:
    """text cut to `width` characters around the first match of needle (any case), as (part, is_match) pairs."""
    lower, wanted = text.lower(), needle.lower()
    first = lower.find(wanted)
    start = 0 if first < width // 3 else first - width // 3
    end = min(len(text), start + width)
    parts: list[tuple[str, bool]] = [("…", False)] if start else []
    position = start
    while position < end:
        found = lower.find(wanted, position, end) if wanted else -1
        if found < 0:
            parts.append((text[position:end], False))
            break
        if found > position:
            parts.append((text[position:found], False))
        parts.append((text[found:found + len(wanted)], True))
        position = found + len(wanted)
    if end < len(text):
        parts.append(("…", False))
    return parts


def message_anchor(seq: int) -> str:
    """The id of a message on its run page (#m17)."""
    return f"m{seq}"


def message_link(name: str, seq: int) -> str:
    """A deep link to a message: the run page loads the page of messages it is on and scrolls to it."""
    return f"/runs/{name}?at={seq}#{message_anchor(seq)}"


# The run page's long parts, as HTML built here once per row (issue 15) ------------------------------
#
# A run page's messages and timeline are most of its HTML; through Jinja2 each cell of each row cost
# an attribute lookup, an escape and a filter call (~1.2 ms of CPU for a 20-message page). Here each
# row is one f-string: every value from the data goes through escape(); the rest is constant markup or
# numbers. The markup is the one run.html had, byte for byte (app.js and the tests read it).

_UTC = ZoneInfo("UTC")


def _when_texts(value: datetime, zone: ZoneInfo) -> tuple[str, str]:
    """A timestamp's ISO 8601 form (a <time datetime>) and format_when(value, zone, millis=True)."""
    iso = value.isoformat()
    if (zone is _UTC or zone == _UTC) and value.utcoffset() == _ZERO:  # the ISO form already says it
        return iso, (iso[:10] + " " + iso[11:23]) if value.microsecond else (iso[:10] + " " + iso[11:19] + ".000")
    return iso, value.astimezone(zone).isoformat(" ", "milliseconds")[:23]


_ZERO = timedelta(0)
_FAILED_HERE = '<strong class="failed-label">✕ Failed here: </strong>'


@functools.lru_cache(maxsize=4096)
def _took_html(took_ms: int) -> str:
    return f'<span class="took" title="Time until the next message">{format_duration(took_ms)}</span>'


@functools.lru_cache(maxsize=256)
def _escaped(text: str) -> str:
    """escape() of a short text that repeats (a level), remembered."""
    return str(escape(text))


def detail_items(name: str, rows: list[Any], failed_step: str | None, took: list[int | None], zone: ZoneInfo) -> Markup:
    """The <li> of each message of a run page (rows as RUN_PAGE's details give them: key, message, level,
    first_seq, seq, created_at, updated_at), `took` the time until the next message of each (None: not shown)."""
    link = f"/runs/{escape(name)}?at="
    out: list[str] = []
    append = out.append
    for (key, message, level, first_seq, seq, created_at, updated_at), took_ms in zip(rows, took):
        key_html, level_html = escape(key), _escaped(level)
        failed = failed_step is not None and key == failed_step
        iso, shown = _when_texts(created_at, zone)
        if seq > first_seq:
            later_iso, later = _when_texts(updated_at, zone)
            updated = f'<small class="updated">updated <time datetime="{later_iso}">{later[11:]}</time></small>'
        else:
            updated = ""
        append(
            f'\n    <li class="detail level-{level_html}{" failed-step" if failed else ""}" id="m{first_seq}" '
            f'data-key="{key_html}" data-seq="{first_seq}">\n'
            f'      <span class="when"><time datetime="{iso}">{shown}</time>{updated}</span>\n'
            f'      <span class="level">{level_html}</span>\n'
            f'      <span class="message">{_FAILED_HERE if failed else ""}{escape(message)}</span>\n'
            f'      <span class="detail-tools">{"" if took_ms is None else _took_html(took_ms)}'
            f'<a class="permalink" href="{link}{first_seq}#m{first_seq}" title="Link to this message" data-copy-link>#{first_seq}</a></span>\n'
            f'    </li>'
        )
    return Markup("".join(out))


def timeline_parts(name: str, segments: list[tuple[str, str, int, int, float, float]], slowest: list[Any]) -> tuple[Markup, Markup]:
    """The timeline's <rect>s (segments: key, level, seq, took_ms, x, width) and its list of the slowest steps."""
    rects = "".join(
        f'<rect class="seg seg-{_escaped(level)} seg-{i & 1}" x="{x}" y="0" width="{width}" height="24">'
        f'<title>{escape(key)}: {format_duration(took)}</title></rect>'
        for i, (key, level, _seq, took, x, width) in enumerate(segments, 1))
    link = f"/runs/{escape(name)}?at="
    items = "".join(
        f'<li><a href="{link}{seq}#m{seq}" class="mono">{escape(key)}</a> <span class="muted">took</span> {format_duration(took)}</li>'
        for key, _level, seq, took, _x, _width in slowest)
    return Markup(rects), Markup(items)


def badge_html(state: str) -> Markup:
    """_macros.html's badge(state), built once per state (the run page's header)."""
    return _BADGE_HTML[state]


_BADGE_HTML = {
    state: Markup(f'<span class="badge badge-{css}" title="Status: {label}"><span class="badge-icon" aria-hidden="true">{icon}</span>{label}</span>')
    for state, (label, icon, css) in BADGES.items()
}


def level_options(levels: tuple[str, ...], chosen: str | None) -> Markup:
    """The <option>s of a run page's level filter (the first: every level), `chosen` selected."""
    chosen = chosen or levels[0]
    return Markup("".join(
        f'<option value="{"" if i == 0 else escape(level)}" {"selected" if level == chosen else ""}>'
        f'{"All levels" if i == 0 else escape(level) + (" and above" if i < len(levels) - 1 else " only")}</option>'
        for i, level in enumerate(levels)))


def stats_items(stats: dict[str, Any]) -> Markup:
    """A run's statistics as the <div><dt>key</dt><dd>value</dd></div> of a <dl> (numbers with thousands separators)."""
    return Markup("".join(
        f"<div><dt>{escape(key)}</dt><dd>{escape(f'{value:,}' if isinstance(value, (int, float)) else str(value))}</dd></div>"
        for key, value in stats.items()))
