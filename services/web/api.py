"""The JSON API: the read model (services.web.queries) as pydantic response models, and the OpenAPI document.

Built on the same query layer as the HTML pages, never on the pages themselves.
"""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.contracts.events import RUN_NAME_PATTERN, TOKEN_PATTERN, ActionKind
from services.contracts.statuses import STATUSES, RunStatus
from services.web import db, investigate, monitoring, params, queries
from services.web.api_commands import CommandStatus
from services.web.actions import trigger_job
from services.web.errors import BadRequest, NotFound
from services.web.keys import SETTINGS

RunState = Literal[RunStatus, Literal["stalled"], Literal["skipped"]]
RUNS_MOST = 200
ACTIONS_MOST = 500


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Completeness(_Out):
    """Whether the run's events 1..n all arrived (and it ended)."""

    state: Literal["complete", "open", "gap"] = Field(description="complete: ended, no gap; open: not ended yet, no gap so far; gap: an event is missing.")
    text: str = Field(description='As the run page says it: "42 of 42 events", "17 events, gap after #17".')
    gap: int | None = Field(description="The seq after which an event is missing (0: the first ones); null without a gap.")


class Run(_Out):
    """One run as the index shows it."""

    name: str = Field(description="YYYYMMDDhhmmss[-N] in the configured time zone.")
    job: str
    status: RunStatus
    state: RunState = Field(description="The status to show: 'stalled' when an open run's worker is lost (no heartbeat, and no clean stop); 'skipped' for a run (status success) skipped because its job was already running.")
    summary: str = Field(description="One line: what the run did, or why it failed.")
    trigger: str | None
    requested_by: str | None
    worker_id: str | None
    host: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    stats: dict[str, Any] | None
    error_class: str | None
    error_message: str | None
    failed_step: str | None = Field(description="Key of the step that was running when the run failed.")
    error_fingerprint: str | None = Field(default=None, description="Runs that failed the same way share it (GET /failures); `?fingerprint=` lists them.")
    completeness: Completeness | None = Field(default=None, description="Whether every event of the run arrived; null for runs recorded before this was kept.")
    url: str


class RunWithTraceback(Run):
    error_traceback: str | None


class Detail(_Out):
    """One message of a run; a later step with the same key replaced its text in place."""

    key: str
    message: str
    level: Literal["debug", "info", "warning", "error"]
    data: dict[str, Any] | None
    seq: int = Field(description="Seq of the first event with this key: the message's place in the run, and the `after` cursor.")
    updated_seq: int = Field(description="Seq of the event whose text is shown.")
    created_at: datetime
    updated_at: datetime


class RunList(_Out):
    runs: list[Run]
    next_cursor: str | None = Field(description="Pass as `before` for the next (older) page; null on the last page.")


class RunPage(_Out):
    run: RunWithTraceback
    details: list[Detail]
    next_after: int | None = Field(description="Pass as `after` for the next page of details; null on the last page.")
    total_details: int


class Order(_Out):
    order_number: str
    customer_code: str
    customer_name: str
    status: str
    order_date: date
    requested_ship_date: date | None
    warehouse: str | None
    currency: str
    total_amount: Decimal
    line_count: int
    synced_at: datetime


class LastSync(_Out):
    name: str
    finished_at: datetime | None


class OrderList(_Out):
    orders: list[Order]
    total: int = Field(description="Open orders (that match q), all pages together; pages: of 50 orders.")
    page: int | None = Field(description="This page's number: for ?page=N and the first page; null on a page reached by cursor.")
    pages: int
    next_cursor: str | None = Field(default=None, description="Pass as ?after= (with the same sort and dir) for the next page; null on the last.")
    prev_cursor: str | None = Field(default=None, description="Pass as ?before= (with the same sort and dir) for the previous page; null on the first.")
    last_sync: LastSync | None = Field(description="The last successful sync_open_orders run.")


class Job(_Out):
    name: str
    title: str
    description: str
    schedule: str | None = Field(description="Cron expression or 'every <n><s|m|h|d>', as the workers report it.")
    next_run: datetime | None
    available: bool = Field(description="A worker online offers this job.")
    latest: Run | None
    paused: bool = Field(default=False, description="Its schedule is paused (the Monitor's Pause): no scheduled runs.")
    paused_by: str | None = Field(default=None, description="Who paused it.")
    paused_at: datetime | None = Field(default=None, description="When it was paused.")


class JobList(_Out):
    jobs: list[Job]


class Action(_Out):
    """One entry of the audit trail: someone acted on the system."""

    event_id: uuid.UUID
    occurred_at: datetime
    actor: str = Field(description="The account that acted.")
    action: ActionKind
    label: str = Field(description="The action as the Jobs Monitor names it.")
    job: str | None
    target: str | None = Field(description="What it acted on: a run name (retry, delete_runs), a command id (trigger), a cutoff (delete_before).")
    detail: dict[str, Any]
    source: str | None = Field(description="The client address the action came from.")
    url: str | None = Field(description="The run or job it points to, if it still exists.")


class ActionList(_Out):
    actions: list[Action]


class TriggerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retry_of: str | None = Field(default=None, pattern=RUN_NAME_PATTERN, description="Name of the failed run this retries.")


class TriggerAccepted(_Out):
    command_id: str
    job: str
    trigger: Literal["manual", "retry"]
    run_url: str = Field(description="Redirects (303) to the run's page once a worker has created it.")
    status_url: str = Field(description="JSON: the run's name once it exists, null until then.")


class SearchRun(_Out):
    name: str
    job: str
    status: RunStatus
    created_at: datetime
    started_at: datetime | None
    url: str


class SearchHit(_Out):
    """A message that contains the searched text, in its run."""

    run: SearchRun
    key: str
    level: Literal["debug", "info", "warning", "error"]
    message: str
    seq: int = Field(description="The message's place in its run (the run page's ?at=).")
    created_at: datetime
    field: Literal["message", "key", "data"] = Field(description="Where the text was found.")
    url: str = Field(description="Deep link: the run page at this message.")


class SearchError(_Out):
    """A failed run whose error class or message contains the searched text."""

    name: str
    job: str
    status: RunStatus
    created_at: datetime
    error_class: str | None
    error_message: str
    failed_step: str | None
    url: str


class SearchResults(_Out):
    results: list[SearchHit] = Field(description="Messages, newest first.")
    errors: list[SearchError] = Field(description="On the first page only: failed runs whose error matches, newest first.")
    next_cursor: str | None = Field(description="Pass as `before` for the next page of messages; null on the last page.")


class Error(_Out):
    error: str
    detail: str
    status: int


def _run(shown: dict[str, Any], model: type[Run] = Run) -> Run:
    """A run as present.present_run shows it."""
    fields = {name: shown.get(name) for name in model.model_fields if name != "url"}
    return model.model_validate({**fields, "url": f"/runs/{shown['name']}"})


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


async def list_runs(request: web.Request) -> web.Response:
    """Runs, newest first, with the index's filters and keyset cursor."""
    filters = params.runs_filter(request)
    limit = params.limit(request, request.app[SETTINGS].page_size, RUNS_MOST)
    runs, next_cursor = await queries.list_runs(request.app, filters, limit)
    return _json(RunList(runs=[_run(r) for r in runs], next_cursor=next_cursor))


async def get_run(request: web.Request) -> web.Response:
    """One run and a page of its details after a seq."""
    after = params.after(request)
    limit = params.limit(request, queries.DETAILS_PER_PAGE, 5000)
    name = params.run_name(request)
    run, details, next_after, total = await queries.run(request.app, name, after, limit)
    return _json(RunPage(
        run=_run(run, RunWithTraceback),  # type: ignore[arg-type]
        details=[_detail(d) for d in details],
        next_after=next_after, total_details=total,
    ))


def _detail(row: Any) -> Detail:
    data = json.loads(row["data"]) if isinstance(row["data"], str) else row["data"]
    return Detail(
        key=row["key"], message=row["message"], level=row["level"], data=data, seq=row["first_seq"],
        updated_seq=row["seq"], created_at=row["created_at"], updated_at=row["updated_at"],
    )


async def list_open_orders(request: web.Request) -> web.Response:
    data = await queries.open_orders(request.app, params.orders_filter(request, db.ORDER_SORTS))
    last, fields = data["last_sync"], {k: data[k] for k in ("total", "page", "pages", "next_cursor", "prev_cursor")}
    return _json(OrderList(orders=[Order(**dict(o)) for o in data["orders"]], last_sync=LastSync(**dict(last)) if last else None, **fields))


async def list_jobs(request: web.Request) -> web.Response:
    jobs = await queries.jobs(request.app)
    paused = await monitoring.pauses(request.app)
    return _json(JobList(jobs=[
        Job(**{**job, "latest": _run(job["latest"]) if job["latest"] else None, **paused.get(job["name"], {})}) for job in jobs]))


async def list_actions(request: web.Request) -> web.Response:
    """The audit trail, newest first."""
    actions = await queries.recent_actions(request.app, params.limit(request, 50, ACTIONS_MOST))
    return _json(ActionList(actions=[Action.model_validate(dict(a)) for a in actions]))


async def trigger(request: web.Request) -> web.Response:
    """Queue a run of a job (or a retry of a failed run)."""
    job = request.match_info["job"]
    known = {j["name"] for j in await queries.jobs(request.app)}
    if job not in known:
        raise NotFound(f"No job named {job[:64]!r}; GET /api/jobs lists them.")
    raw = await request.read()
    try:
        body = TriggerBody.model_validate_json(raw) if raw.strip() else TriggerBody()
    except ValidationError as error:
        first = error.errors()[0]
        raise BadRequest(f"body: {'.'.join(map(str, first['loc'])) or 'JSON'}: {first['msg']}") from None
    command_id = await trigger_job(request, job, body.retry_of, via="api")
    accepted = TriggerAccepted(
        command_id=command_id, job=job, trigger="retry" if body.retry_of else "manual",
        run_url=f"/commands/{command_id}", status_url=f"/api/commands/{command_id}",
    )
    return web.json_response(text=accepted.model_dump_json(), status=202, headers={"Location": accepted.run_url})


async def search(request: web.Request) -> web.Response:
    """Messages and errors of every run that contain the text, with the search page's filters."""
    filters = params.search_filter(request, request.app[SETTINGS].zone)
    found = await investigate.search(request.app, filters, params.limit(request, investigate.SEARCH_PER_PAGE, RUNS_MOST))
    return _json(SearchResults(
        results=[SearchHit.model_validate({k: v for k, v in hit.items() if k in SearchHit.model_fields}) for hit in found["results"]],
        errors=[SearchError.model_validate({k: v for k, v in e.items() if k in SearchError.model_fields}) for e in found["errors"]],
        next_cursor=found["next_cursor"],
    ))


# OpenAPI -------------------------------------------------------------------------------------------

MODELS: list[type[BaseModel]] = [RunList, RunPage, OrderList, JobList, ActionList, TriggerAccepted, CommandStatus, SearchResults, Error]


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema, "description": description}


def _ok(model: type[BaseModel], code: str = "200", description: str = "OK") -> dict[str, Any]:
    errors = {
        str(status): {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for status, text in ((400, "A parameter or body that cannot be understood."), (404, "No such run, job or page."))
    }
    return {code: {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}, **errors}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for /api, with the schemas generated from the response models."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "serialization") for m in MODELS]
    _, definitions = models_json_schema(wanted + [(TriggerBody, "validation")], ref_template="#/components/schemas/{model}")
    name = _param("name", "path", {"type": "string", "pattern": RUN_NAME_PATTERN}, "The run's name.")
    job = _param("job", "path", {"type": "string", "pattern": TOKEN_PATTERN}, "A job id such as sync_open_orders.")
    runs_query = [
        _param("status", "query", {"type": "string", "enum": list(STATUSES)}, "Only runs with this status."),
        _param("job", "query", {"type": "string", "pattern": TOKEN_PATTERN}, "Only runs of this job."),
        _param("q", "query", {"type": "string", "maxLength": 100}, "Run names starting with this text."),
        _param("fingerprint", "query", {"type": "string", "pattern": "^[0-9a-f]{16}$"}, "Only runs that failed with this error fingerprint."),
        _param("gap", "query", {"type": "string", "enum": ["yes", "no"]}, "yes: only runs with a gap in their events."),
        _param("before", "query", {"type": "string", "maxLength": 200}, "The next_cursor of the previous page."),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": RUNS_MOST}, "Runs per page (default 50)."),
    ]
    details_query = [
        _param("after", "query", {"type": "integer", "minimum": 0, "maximum": 999_999_999}, "Details after this seq (next_after of the previous page)."),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 5000}, "Details per page (default 500)."),
    ]
    search_query = [
        _param("q", "query", {"type": "string", "minLength": params.SEARCH_SHORTEST, "maxLength": params.SEARCH_LONGEST},
               "Text contained in a message, its key or data, or a failed run's error (any case).", required=True),
        _param("job", "query", {"type": "string", "pattern": TOKEN_PATTERN}, "Only runs of this job."),
        _param("status", "query", {"type": "string", "enum": list(STATUSES)}, "Only runs with this status."),
        _param("since", "query", {"type": "string"}, "Runs created from this date or local time (2026-12-03, 2026-12-03T08:30)."),
        _param("until", "query", {"type": "string"}, "Runs created before this local time, or until the end of this date."),
        _param("run", "query", {"type": "string", "pattern": RUN_NAME_PATTERN}, "Only this run."),
        _param("before", "query", {"type": "string", "maxLength": 18}, "The next_cursor of the previous page."),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": RUNS_MOST}, "Messages per page (default 50)."),
    ]
    orders_query = [
        _param("q", "query", {"type": "string", "maxLength": 100}, "Order number, customer name or code contains this."),
        _param("sort", "query", {"type": "string", "enum": list(db.ORDER_SORTS)}, "Column to sort by."),
        _param("dir", "query", {"type": "string", "enum": ["asc", "desc"]}, "Sort direction."),
        _param("after", "query", {"type": "string", "pattern": "^[A-Za-z0-9_-]*$", "maxLength": params.ORDER_CURSOR_MOST}, "The next_cursor of the page before (same sort and dir)."),
        _param("before", "query", {"type": "string", "pattern": "^[A-Za-z0-9_-]*$", "maxLength": params.ORDER_CURSOR_MOST}, "The prev_cursor of the page after (same sort and dir)."),
        _param("page", "query", {"type": "integer", "minimum": 1, "maximum": 100_000}, "Page number (older clients; by offset, slower the deeper)."),
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "joblog API", "version": "1", "description": "The job logs, open orders and jobs, as the pages show them."},
        "paths": {
            "/api/runs": {"get": {"operationId": "listRuns", "summary": "Runs, newest first", "parameters": runs_query, "responses": _ok(RunList)}},
            "/api/runs/{name}": {"get": {"operationId": "getRun", "summary": "One run with a page of its details", "parameters": [name, *details_query], "responses": _ok(RunPage)}},
            "/api/open_orders": {"get": {"operationId": "listOpenOrders", "summary": "Open orders", "parameters": orders_query, "responses": _ok(OrderList)}},
            "/api/search": {"get": {"operationId": "search", "summary": "Messages and errors of every run containing a text", "parameters": search_query, "responses": _ok(SearchResults)}},
            "/api/jobs": {"get": {"operationId": "listJobs", "summary": "Jobs with schedule and latest run", "responses": _ok(JobList)}},
            "/api/actions": {"get": {
                "operationId": "listActions", "summary": "The audit trail: who did what, newest first",
                "parameters": [_param("limit", "query", {"type": "integer", "minimum": 1, "maximum": ACTIONS_MOST}, "Actions (default 50).")],
                "responses": _ok(ActionList),
            }},
            "/api/commands/{command_id}": {"get": {
                "operationId": "getCommand", "summary": "The run a trigger started (null until a worker has created it)",
                "parameters": [_param("command_id", "path", {"type": "string", "pattern": params.COMMAND_PATTERN.pattern},
                                      "The trigger's command_id (TriggerAccepted).")],
                "responses": _ok(CommandStatus),
            }},
            "/api/jobs/{job}/trigger": {"post": {
                "operationId": "triggerJob", "summary": "Run a job now (or retry a failed run)", "parameters": [job],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TriggerBody"}}}},
                "responses": _ok(TriggerAccepted, "202", "Queued for a worker"),
            }},
        },
        "components": {"schemas": definitions["$defs"]},
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
