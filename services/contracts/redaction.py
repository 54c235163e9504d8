"""Secrets never leave the process: URLs in any text lose their credentials before it is logged or sent.

A URL's user info (``user:password@``) becomes ``***@``, and the values of query parameters whose
names look like secrets (token, api_key, password, signature ...) become ``***``. Used wherever a
message may carry a URL: run messages and errors, service logs, settings errors.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"
# scheme://anything-up-to-whitespace-or-a-quote
_URL = re.compile(r"""\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>`]+)""")
_SECRET_NAME = re.compile(
    r"(pass(word|wd)?|secret|token|api[-_]?key|apikey|access[-_]?key|auth|credential|signature|sig|session|private|key)$",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """url without its password and secret-looking query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_NAME.search(name) for name, _ in pairs):
            query = "&".join(
                f"{quote(name, safe='')}={MASK if _SECRET_NAME.search(name) else quote(value, safe='')}"
                for name, value in pairs
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# Punctuation that ends a sentence around a URL rather than belonging to it: "(see http://x/a?b=1): 500".
_TRAILING = ").,:;]}!?"


def _redact_match(match: re.Match[str]) -> str:
    url = match.group(1)
    kept = url.rstrip(_TRAILING)
    return redact_url(kept) + url[len(kept):]


# user:password@ where no scheme says it is a URL (a DSN typed without "//", say).
_USERINFO = re.compile(r"[^\s/@'\"]+:[^\s/@'\"]+@")


def redact(text: str) -> str:
    """text with every URL in it redacted, and any other user:password@ too."""
    if "://" in text:
        text = _URL.sub(_redact_match, text)
    if "@" in text:
        text = _USERINFO.sub(f"{MASK}@", text)
    return text
