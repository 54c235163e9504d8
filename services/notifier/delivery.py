"""Sending one alert to one receiver: a webhook, Slack, email, or the alert stream.

The payload is versioned (PAYLOAD_VERSION); receivers de-duplicate by alert_id (at-least-once).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib

from services.contracts import AlertRaised
from services.notifier.errors import DeliveryFailed
from services.notifier.settings import NotifierSettings

PAYLOAD_VERSION = 1
TITLES = {
    "run_failed": "Run failed", "recovered": "Recovered", "stalled": "Run stalled", "missed_schedule": "Missed schedule",
    "too_slow": "Run too slow", "projection_behind": "Projection behind", "dead_letters": "Dead letters",
    "summary": "Alert summary",
}
SUMMARY_NAMESPACE = uuid.UUID("0b6f3c52-8d1e-4f7a-a2c9-3e5d7f1b9a64")
SUMMARY_LINES = 20


def alert_of(row: Any) -> AlertRaised:
    """The alert as published, from its row."""
    details = row["details"]
    return AlertRaised(
        alert_id=row["alert_id"], kind=row["kind"], job=row["job"], run=row["run_name"], message=row["message"],
        link=row["link"], occurred_at=row["raised_at"], details=json.loads(details) if isinstance(details, str) else details,
    )


@dataclass(frozen=True)
class Summary:
    """Alerts held during a storm, sent to one receiver as one message."""

    alerts: list[AlertRaised]
    window: float
    link: str

    @property
    def summary_id(self) -> uuid.UUID:
        """Derived from the alerts it carries; receivers de-duplicate by those alerts' ids."""
        return uuid.uuid5(SUMMARY_NAMESPACE, ",".join(sorted(str(a.alert_id) for a in self.alerts)))

    @property
    def time(self) -> datetime:
        return max(a.occurred_at for a in self.alerts)

    @property
    def message(self) -> str:
        kinds = Counter(a.kind for a in self.alerts)
        parts = []
        for kind, count in kinds.most_common():
            jobs = sorted({a.job for a in self.alerts if a.kind == kind and a.job})
            named = f" ({', '.join(jobs[:5])}{', ...' if len(jobs) > 5 else ''})" if jobs else ""
            parts.append(f"{count} {TITLES.get(kind, kind).lower()}{named}")
        return f"{len(self.alerts)} alerts within {self.window:g} s: " + "; ".join(parts)

    def lines(self) -> list[str]:
        shown = [f"- {a.message}" + (f" {a.link}" if a.link else "") for a in self.alerts[:SUMMARY_LINES]]
        if len(self.alerts) > SUMMARY_LINES:
            shown.append(f"- and {len(self.alerts) - SUMMARY_LINES} more: {self.link}")
        return shown


def _payload(alert: AlertRaised) -> dict[str, Any]:
    return {
        "version": PAYLOAD_VERSION, "alert_id": str(alert.alert_id), "kind": alert.kind, "job": alert.job,
        "run": alert.run, "message": alert.message, "link": alert.link,
        "time": alert.occurred_at.isoformat().replace("+00:00", "Z"), "details": alert.details,
    }


def webhook_body(alert: AlertRaised) -> bytes:
    """The documented webhook payload (README, "Notifier")."""
    return json.dumps(_payload(alert), separators=(",", ":")).encode()


def summary_body(summary: Summary) -> bytes:
    """A storm's summary: kind "summary", the held alerts' own payloads under "alerts"."""
    return json.dumps({
        "version": PAYLOAD_VERSION, "alert_id": str(summary.summary_id), "kind": "summary", "job": None, "run": None,
        "message": summary.message, "link": summary.link, "time": summary.time.isoformat().replace("+00:00", "Z"),
        "details": {"count": len(summary.alerts), "kinds": dict(Counter(a.kind for a in summary.alerts))},
        "alerts": [_payload(a) for a in summary.alerts],
    }, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    """X-Joblog-Signature: sha256=<hex HMAC-SHA256 of the raw body>, as GitHub signs its webhooks."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def slack_body(alert: AlertRaised) -> bytes:
    text = f"*{TITLES.get(alert.kind, alert.kind)}*: {alert.message}"
    if alert.link:
        text += f"\n<{alert.link}|Open in joblog>"
    return json.dumps({"text": text}).encode()


class Sender:
    """Delivers alerts over HTTP, SMTP and NATS; raises DeliveryFailed saying why."""

    def __init__(self, settings: NotifierSettings, session: aiohttp.ClientSession, js: Any) -> None:
        self.settings = settings
        self.session = session
        self.js = js

    async def send(self, channel: str, target: str, alert: AlertRaised) -> None:
        if channel == "stream":
            await self.js.publish(target, alert.model_dump_json().encode(), headers={"Nats-Msg-Id": str(alert.alert_id)})
        elif channel == "webhook":
            await self._webhook(target, webhook_body(alert), alert.alert_id)
        elif channel == "slack":
            await self._post(target, slack_body(alert), {"Content-Type": "application/json"})
        elif channel == "email":
            subject = f"{TITLES.get(alert.kind, alert.kind)}: {alert.job or 'joblog'}" + (f" {alert.run}" if alert.run else "")
            await self._email(target.split(","), alert.alert_id, subject, alert.message + (f"\n\n{alert.link}\n" if alert.link else "\n"))
        else:
            raise DeliveryFailed(f"unknown channel {channel!r}")

    async def send_summary(self, channel: str, target: str, summary: Summary) -> None:
        """A storm's held alerts as one message (never on the stream: there every alert is its own event)."""
        if channel == "webhook":
            await self._webhook(target, summary_body(summary), summary.summary_id)
        elif channel == "slack":
            text = "\n".join([f"*{TITLES['summary']}*: {summary.message}", *summary.lines(), f"<{summary.link}|Open in joblog>"])
            await self._post(target, json.dumps({"text": text}).encode(), {"Content-Type": "application/json"})
        elif channel == "email":
            body = "\n".join([summary.message, "", *summary.lines(), "", summary.link, ""])
            await self._email(target.split(","), summary.summary_id, f"{len(summary.alerts)} alerts", body)
        else:
            raise DeliveryFailed(f"channel {channel!r} takes no summaries")

    async def _webhook(self, url: str, body: bytes, alert_id: uuid.UUID) -> None:
        headers = {"Content-Type": "application/json", "X-Joblog-Alert-Id": str(alert_id)}
        if self.settings.notify_webhook_secret is not None:
            headers["X-Joblog-Signature"] = signature(self.settings.notify_webhook_secret.get_secret_value(), body)
        await self._post(url, body, headers)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            async with self.session.post(url, data=body, headers=headers) as response:
                if response.status >= 300:
                    raise DeliveryFailed(f"HTTP {response.status} from {url}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None

    async def _email(self, to: list[str], alert_id: uuid.UUID, subject: str, body: str) -> None:
        settings = self.settings
        if not settings.smtp_host:
            raise DeliveryFailed("JOBLOG_SMTP_HOST is not set")
        message = EmailMessage()
        message["From"] = settings.notify_email_from
        message["To"] = ", ".join(to)
        message["Subject"] = f"[joblog] {subject}"
        message["Message-ID"] = f"<{alert_id}@joblog>"  # the idempotency key, for mail clients too
        message["X-Joblog-Alert-Id"] = str(alert_id)
        message.set_content(body)
        try:
            await aiosmtplib.send(
                message, hostname=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_user,
                password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
                use_tls=settings.smtp_tls == "tls", start_tls=settings.smtp_tls == "starttls", timeout=10,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
