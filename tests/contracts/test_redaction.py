"""Secrets never leave the process: URLs lose their credentials wherever they are formatted."""
from __future__ import annotations

import pytest

from services.contracts.redaction import redact


@pytest.mark.parametrize("text, secret", [
    ("orders API failed (http://svc:s3cret@erp.internal/api?api_key=K1&page=2)", "s3cret"),
    ("orders API failed (http://svc:s3cret@erp.internal/api?api_key=K1&page=2)", "K1"),
    ("GET https://erp/api?token=T0k3n&sig=abc failed", "T0k3n"),
    ("GET https://erp/api?token=T0k3n&sig=abc failed", "abc"),
    ("postgresql://joblog:pw-9@db:5432/joblog refused", "pw-9"),
    ("postgres//joblog:pw-9@db:5432/joblog (no scheme)", "pw-9"),
    ('{"url": "nats://u:natspw@nats:4222"}', "natspw"),
])
def test_a_secret_in_a_url_never_survives_redaction(text: str, secret: str):
    assert secret not in redact(text)


def test_what_identifies_the_endpoint_stays():
    shown = redact("failed: http://svc:s3cret@erp.internal:8080/api/orders?page=2&api_key=K")
    assert shown == "failed: http://***@erp.internal:8080/api/orders?page=2&api_key=***"
    assert redact("no secrets here: http://erp/api?page=2") == "no secrets here: http://erp/api?page=2"


def test_punctuation_after_a_url_stays_outside_it():
    shown = redact("orders API failed (GET http://svc:pw@erp/api?page=1&api_key=K): 500 Internal Server Error")
    assert shown == "orders API failed (GET http://***@erp/api?page=1&api_key=***): 500 Internal Server Error"
