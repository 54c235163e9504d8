"""Notifier settings (JOBLOG_* variables)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from services.contracts.events import TOKEN_PATTERN
from services.contracts.settings import CommonSettings

CHANNELS = ("webhook", "slack", "email")
Channel = Literal["webhook", "slack", "email"]


def _urls(value: str) -> list[str]:
    return [url.strip() for url in value.split(",") if url.strip()]


class NotifierSettings(CommonSettings):
    """What the notifier needs."""

    public_url: str = Field("http://127.0.0.1:8080", description="Where people open the web UI (links in alerts).")
    notifier_consumer: str = Field("notifier", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Its durable consumer on the run stream.")
    recorder_consumer: str = Field("log_recorder", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The recorder's consumer, watched for lag.")
    worker_timeout: float = Field(30.0, gt=0, description="Seconds a run may go unlisted by its worker's heartbeats before it is stalled.")
    notify_webhooks: str = Field("", description="Comma-separated URLs that get a JSON POST per alert.")
    notify_webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key: X-Joblog-Signature: sha256=<hex>.")
    notify_slack_webhooks: str = Field("", description="Comma-separated Slack (or compatible) incoming-webhook URLs.")
    notify_email_to: str = Field("", description="Comma-separated addresses that get an email per alert.")
    notify_email_from: str = Field("joblog@localhost", max_length=200, description="The From: of alert emails.")
    smtp_host: str | None = Field(None, max_length=255, description="SMTP server for alert emails.")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_user: str | None = Field(None, max_length=200)
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    notify_slow_factor: float = Field(3.0, gt=1, description="Too slow: more than this times the median duration.")
    notify_slow_runs: int = Field(20, ge=1, le=1000, description="The median is over this many last successes.")
    notify_slow_min_runs: int = Field(3, ge=1, le=1000, description="No 'too slow' before a job has this many successes.")
    notify_schedule_grace: float = Field(120.0, gt=0, description="Seconds after a slot before it counts as missed.")
    notify_backlog_threshold: int = Field(10_000, ge=1, description="Recorder messages pending before 'projection behind'.")
    notify_lag_threshold: float = Field(300.0, gt=0, description="Age in seconds of the recorder's oldest pending message.")
    notify_check_interval: float = Field(1.0, gt=0, le=60, description="Seconds between checks (schedules, slowness, lag).")
    notify_retry_max: float = Field(300.0, gt=0, description="Longest wait between two tries of a delivery.")
    notify_storm_threshold: int = Field(
        5, ge=1, le=10_000, description="A receiver gets at most this many alerts per storm window; the rest come as one summary.",
    )
    notify_storm_window: float = Field(60.0, gt=0, le=86_400, description="Seconds of the storm window.")
    notify_give_up_after: float = Field(86_400.0, gt=0, description="A delivery still failing after this many seconds is given up.")
    notify_rules: str | None = Field(
        None, description='JSON (inline, or a file path): job id or "*" -> channels, e.g. {"*": ["webhook"], "nightly": []}.',
    )

    @field_validator("public_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected http(s)://host[:port]")
        return value.rstrip("/")

    @field_validator("notify_webhooks", "notify_slack_webhooks")
    @classmethod
    def _http_urls(cls, value: str) -> str:
        for url in _urls(value):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"expected comma-separated http(s) URLs, got {url!r}")
        return value

    @field_validator("notify_email_to")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for address in _urls(value):
            if not re.fullmatch(r"[^@\s,]+@[^@\s,]+", address):
                raise ValueError(f"not an email address: {address!r}")
        return value

    @field_validator("notify_rules")
    @classmethod
    def _rules(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        parse_rules(value, configured(info.data))
        return value

    @property
    def webhooks(self) -> list[str]:
        return _urls(self.notify_webhooks)

    @property
    def slack_webhooks(self) -> list[str]:
        return _urls(self.notify_slack_webhooks)

    @property
    def email_to(self) -> list[str]:
        return _urls(self.notify_email_to)

    @property
    def rules(self) -> dict[str, list[str]]:
        """Job id (or "*") -> the channels its alerts go to; a job not named goes to every configured channel."""
        return parse_rules(self.notify_rules, configured(self.model_dump())) if self.notify_rules else {}

    def channels_for(self, job: str | None) -> list[str]:
        everything = configured(self.model_dump())
        rules = self.rules
        return rules.get(job or "", rules.get("*", everything))


def configured(values: dict[str, object]) -> list[str]:
    """The channels these settings give a receiver to."""
    found = []
    if _urls(str(values.get("notify_webhooks") or "")):
        found.append("webhook")
    if _urls(str(values.get("notify_slack_webhooks") or "")):
        found.append("slack")
    if _urls(str(values.get("notify_email_to") or "")):
        found.append("email")
    return found


def parse_rules(text: str, channels: list[str]) -> dict[str, list[str]]:
    """Rules from inline JSON or a JSON file; raises ValueError naming the problem."""
    source = text.strip()
    if not source.startswith("{"):
        try:
            source = Path(source).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"cannot read rules file {text!r}: {error.strerror}") from None
    try:
        rules = json.loads(source)
    except json.JSONDecodeError as error:
        raise ValueError(f"rules are not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(rules, dict):
        raise ValueError('rules must be an object: job id or "*" -> list of channels')
    for job, wanted in rules.items():
        if job != "*" and not re.fullmatch(TOKEN_PATTERN, job):
            raise ValueError(f"rule for {job!r}: not a job id")
        if not isinstance(wanted, list) or not all(isinstance(c, str) for c in wanted):
            raise ValueError(f"rule for {job!r}: expected a list of channels")
        for channel in wanted:
            if channel not in CHANNELS:
                raise ValueError(f"rule for {job!r}: unknown channel {channel!r} (one of {', '.join(CHANNELS)})")
            if channel not in channels:
                raise ValueError(f"rule for {job!r}: channel {channel!r} has no receiver configured")
    return rules
