"""Charts as server-side SVG: no script and no inline style (the strict CSP), coloured by app.css classes.

Every mark carries its numbers as data attributes (data-outcome, data-count, data-ms ...) and a
<title> (the tooltip and what a screen reader says), so what a chart shows can be read back.
The SVGs scale to their container (viewBox, width 100%): readable on a phone.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from services.web.present import format_duration

OUTCOME_LABELS = {"success": "succeeded", "error": "failed", "skipped": "skipped"}


def _svg(width: int, height: int, label: str, body: list[str], css: str) -> Markup:
    return Markup(
        f'<svg class="chart {css}" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(label)}" preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(label)}</title>{"".join(body)}</svg>'
    )


def _bucket_label(start: datetime, size: str, zone: ZoneInfo) -> str:
    local = start.astimezone(zone)
    return local.strftime("%H:00") if size == "hour" else local.strftime("%a %d %b")


def runs_bars(bars: Sequence[dict[str, Any]], size: str, zone: ZoneInfo, label: str) -> Markup:
    """Runs per hour or day, stacked by outcome (success at the bottom, then error, then skipped)."""
    width, height, top, bottom, left = 960, 260, 12, 30, 40
    plot = height - top - bottom
    most = max([sum(b["counts"].values()) for b in bars] + [1])
    scale = _nice(most)
    step = (width - left - 4) / max(1, len(bars))
    body = [f'<line class="axis" x1="{left}" y1="{top + plot}" x2="{width}" y2="{top + plot}"/>']
    for value in (scale // 2, scale):
        y = top + plot - plot * value / scale
        body.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width}" y2="{y:.1f}"/>'
                    f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    every = max(1, len(bars) // 6)
    for i, bar in enumerate(bars):
        x = left + i * step + step * 0.12
        w = max(1.0, step * 0.76)
        y = top + plot
        when = _bucket_label(bar["start"], size, zone)
        total = sum(bar["counts"].values())
        body.append(f'<g class="bar" data-bucket="{bar["start"].isoformat()}" data-total="{total}">')
        for outcome in ("success", "error", "skipped"):
            count = bar["counts"][outcome]
            if not count:
                continue
            h = plot * count / scale
            y -= h
            body.append(
                f'<rect class="mark-{outcome}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                f'data-outcome="{outcome}" data-count="{count}"><title>{escape(when)}: {count} '
                f'{OUTCOME_LABELS[outcome]}</title></rect>'
            )
        body.append("</g>")
        if i % every == 0:
            body.append(f'<text class="tick" x="{x + w / 2:.1f}" y="{height - 10}" text-anchor="middle">{escape(when)}</text>')
    return _svg(width, height, label, body, "chart-runs")


def durations(runs: Sequence[dict[str, Any]], p50: int | None, p95: int | None, label: str) -> Markup:
    """The duration of each recent run (oldest left), coloured by outcome, with the p50 and p95 lines."""
    width, height, top, bottom, left = 960, 220, 12, 12, 60
    plot = height - top - bottom
    most = max([int(r["duration_ms"]) for r in runs] + [p95 or 0, 1])
    step = (width - left - 4) / max(1, len(runs))
    body = [f'<line class="axis" x1="{left}" y1="{top + plot}" x2="{width}" y2="{top + plot}"/>']
    for i, run in enumerate(runs):
        ms = int(run["duration_ms"])
        h = max(1.0, plot * ms / most)
        x = left + i * step + step * 0.15
        body.append(
            f'<a href="/runs/{escape(run["name"])}"><rect class="mark-{escape(run["state"])}" x="{x:.1f}" '
            f'y="{top + plot - h:.1f}" width="{max(1.0, step * 0.7):.1f}" height="{h:.1f}" data-run="{escape(run["name"])}" '
            f'data-ms="{ms}"><title>{escape(run["name"])}: {escape(format_duration(ms))}</title></rect></a>'
        )
    for name, value in (("p50", p50), ("p95", p95)):
        if value is None:
            continue
        y = top + plot - plot * value / most
        body.append(
            f'<line class="quantile quantile-{name}" x1="{left}" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" data-ms="{value}"/>'
            f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{name}</text>'
        )
    return _svg(width, height, label, body, "chart-durations")


def sparkline(runs: Sequence[dict[str, Any]], label: str) -> Markup:
    """The last runs as coloured dots, oldest left; each links to its run."""
    gap, r = 14, 5
    width = max(gap, gap * len(runs))
    body = []
    for i, run in enumerate(runs):
        state = escape(run["state"])
        body.append(
            f'<a href="/runs/{escape(run["name"])}"><circle class="mark-{state}" cx="{i * gap + gap / 2:.0f}" cy="8" r="{r}" '
            f'data-run="{escape(run["name"])}" data-state="{state}"><title>{escape(run["name"])}: {state}</title></circle></a>'
        )
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} 16" width="{width}" height="16" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>{"".join(body)}</svg>'
    )


def _nice(most: int) -> int:
    """An axis top at or above most: 1, 2, 5 x 10^n (even, so its half is whole)."""
    if most <= 2:
        return 2
    magnitude = 1
    while True:
        for factor in (2, 4, 6, 10):
            if factor * magnitude >= most:
                return factor * magnitude
        magnitude *= 10
