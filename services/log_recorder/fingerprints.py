"""A failed run's error fingerprint: runs that failed the same way share it (the web's failure groups).

The fingerprint hashes the error class, the failing step and the message with what varies from run
to run replaced: uuids, long hex ids, quoted values, numbers (so order SO-104711 and SO-104712, or
"timeout after 30 s" and "after 31 s", group together). Changing these rules regroups only runs
projected afterwards (or every run after `joblog rebuild`).
"""
from __future__ import annotations

import hashlib
import re

_RULES = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"\b(?:0x)?(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"'[^'\n]{0,200}'|\"[^\"\n]{0,200}\"|`[^`\n]{0,200}`|«[^»\n]{0,200}»|“[^”\n]{0,200}”"), "<q>"),
    (re.compile(r"\d+(?:[.,:]\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)
# Only the start of a message is compared: a long one differs in its tail (a response body, a dump).
HEAD = 500


def normalise(text: str | None) -> str:
    """text with its variable parts replaced by placeholders."""
    result = (text or "")[: HEAD * 4]
    for pattern, placeholder in _RULES:
        result = pattern.sub(placeholder, result)
    return result.strip()[:HEAD]


def fingerprint(error_class: str | None, step: str | None, message: str | None) -> str:
    """16 hex digits naming the way a run failed."""
    text = "\x1f".join((error_class or "", normalise(step), normalise(message)))
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
