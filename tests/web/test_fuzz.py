"""schemathesis over /api/openapi.json against the live app: no 5xx, nothing outside the documented schema,
for valid and for invalid requests."""
from __future__ import annotations

import asyncio
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import run_events

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 20


def fuzz(base_url: str, document: dict[str, Any]) -> list[str]:
    """Every operation with a bounded number of valid, then invalid, requests; returns what was exercised."""
    schema = schemathesis.openapi.from_dict(document)
    exercised = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in ((GenerationMode.POSITIVE, EXAMPLES), (GenerationMode.NEGATIVE, EXAMPLES // 2)):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                response = case.call(base_url=base_url, timeout=10)
                case.validate_response(response, checks=CHECKS)

            try:
                check()
            except Unsatisfiable:  # nothing to get wrong: e.g. GET /api/jobs takes no input
                assert mode is GenerationMode.NEGATIVE
            exercised.append(f"{operation.label} ({mode.value})")
    return exercised


async def test_the_api_survives_schemathesis_without_5xx_or_schema_violations(client, project):
    await project(run_events(name="20261129083000", fail=True))
    await project(run_events(name="20261129083100"))
    document = await (await client.get("/api/openapi.json")).json()

    exercised = await asyncio.to_thread(fuzz, str(client.make_url("")).rstrip("/"), document)

    assert len(exercised) == 16  # every operation of the document, positive and negative
