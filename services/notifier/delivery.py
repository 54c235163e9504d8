"""Sending one alert to one receiver: a webhook, Slack, email, or the alert stream.

The payload is versioned (PAYLOAD_VERSION); receivers de-duplicate by alert_id (at-least-once).
"""
from __future__ import annotations

import hashlib
import hmac
import json
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
}


def alert_of(row: Any) -> AlertRaised:
    """The alert as published, from its row."""
    details = row["details"]
    return AlertRaised(
        alert_id=row["alert_id"], kind=row["kind"], job=row["job"], run=row["run_name"], message=row["message"],
        link=row["link"], occurred_at=row["raised_at"], details=json.loads(details) if isinstance(details, str) else details,
    )


def webhook_body(alert: AlertRaised) -> bytes:
    """The documented webhook payload (README, "Notifier")."""
    return json.dumps({
        "version": PAYLOAD_VERSION, "alert_id": str(alert.alert_id), "kind": alert.kind, "job": alert.job,
        "run": alert.run, "message": alert.message, "link": alert.link,
        "time": alert.occurred_at.isoformat().replace("+00:00", "Z"), "details": alert.details,
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
            body = webhook_body(alert)
            headers = {"Content-Type": "application/json", "X-Joblog-Alert-Id": str(alert.alert_id)}
            if self.settings.notify_webhook_secret is not None:
                headers["X-Joblog-Signature"] = signature(self.settings.notify_webhook_secret.get_secret_value(), body)
            await self._post(target, body, headers)
        elif channel == "slack":
            await self._post(target, slack_body(alert), {"Content-Type": "application/json"})
        elif channel == "email":
            await self._email(target.split(","), alert)
        else:
            raise DeliveryFailed(f"unknown channel {channel!r}")

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            async with self.session.post(url, data=body, headers=headers) as response:
                if response.status >= 300:
                    raise DeliveryFailed(f"HTTP {response.status} from {url}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None

    async def _email(self, to: list[str], alert: AlertRaised) -> None:
        settings = self.settings
        if not settings.smtp_host:
            raise DeliveryFailed("JOBLOG_SMTP_HOST is not set")
        message = EmailMessage()
        message["From"] = settings.notify_email_from
        message["To"] = ", ".join(to)
        message["Subject"] = f"[joblog] {TITLES.get(alert.kind, alert.kind)}: {alert.job or 'joblog'}" + (
            f" {alert.run}" if alert.run else "")
        message["Message-ID"] = f"<{alert.alert_id}@joblog>"  # the idempotency key, for mail clients too
        message["X-Joblog-Alert-Id"] = str(alert.alert_id)
        message.set_content(alert.message + (f"\n\n{alert.link}\n" if alert.link else "\n"))
        try:
            await aiosmtplib.send(
                message, hostname=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_user,
                password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
                use_tls=settings.smtp_tls == "tls", start_tls=settings.smtp_tls == "starttls", timeout=10,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
