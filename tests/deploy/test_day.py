"""An operator's day with deploy/ on a real Docker engine: `make deploy-test` (tests/deploy/run.sh).

Everything goes through `docker compose` with the real deploy/ files, as the README tells an
operator, under a compose project name of this run's own (never `joblog`). The tests of this
module run in order and share one deployment; the cluster variant is a second project.
Skipped unless run by tests/deploy/run.sh (which provides the engine and the base images).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from joblog.servers import free_port
from services.web.passwords import hash_password
from tests.deploy import compose as compose_files

if os.environ.get("JOBLOG_DEPLOY_TEST") != "1":
    pytest.skip("the real compose deployment runs with `make deploy-test` (needs root or a Docker engine)",
                allow_module_level=True)

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(3600)]

T = TypeVar("T")
ROOT = Path(__file__).parents[2]
JOB = "sync_open_orders"
PROJECT = os.environ["JOBLOG_DEPLOY_TEST_PROJECT"]
PASSWORD = "day-" + os.urandom(6).hex()
# Generous bounds: the machine is shared and slow; each says what it waited for when it fails.
SLOW = 600.0


def until(what: str, probe: Callable[[], T | None], timeout: float = SLOW, pause: float = 1.0,
          describe: Callable[[], str] | None = None) -> T:
    """probe() until it returns something truthy; fails naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as error:  # the engine or the web may still be starting
            last = error
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}; last: {last!r}"
                        + (f" ({describe()})" if describe else ""))
        time.sleep(pause)


class Deployment:
    """`docker compose` in deploy/ with this run's project name and env file."""

    def __init__(self, project: str, env_file: Path, files: tuple[str, ...] = ("docker-compose.yml",)) -> None:
        self.project = project
        self.env_file = env_file
        self.files = files
        self.env = compose_files.read_dotenv(env_file)
        self.web = f"http://127.0.0.1:{self.env['WEB_PUBLISHED_PORT']}"

    def compose(self, *args: str, check: bool = True, timeout: float = SLOW, input: str | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "--project-name", self.project, "--env-file", str(self.env_file)]
        for name in self.files:
            command += ["-f", str(compose_files.DEPLOY / name)]
        done = subprocess.run([*command, *args], cwd=cwd or compose_files.DEPLOY, capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and done.returncode != 0:
            pytest.fail(f"`docker compose {' '.join(args)}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def up(self, *args: str) -> None:
        """`up -d --wait`, retried once: an engine on a busy machine sometimes misses a health deadline."""
        for attempt in (1, 2):
            done = self.compose("up", "-d", "--wait", "--wait-timeout", "300", *args, check=attempt == 2)
            if done.returncode == 0:
                return
            print(f"up {' '.join(args)} failed once, retrying:\n{done.stderr[-2000:]}")

    def joblog(self, *args: str, service: str = "web", check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, "joblog", *args, check=check)

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json", *([service] if service else [])).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()] if not out.lstrip().startswith("[") else json.loads(out)
        return rows

    def running(self, service: str) -> list[dict[str, Any]]:
        return [c for c in self.containers(service) if c["State"] == "running"]

    def healthy(self, service: str, count: int) -> bool:
        rows = self.running(service)
        return len(rows) == count and all(c.get("Health") in ("healthy", "") for c in rows)

    def wait_healthy(self, counts: dict[str, int]) -> None:
        for service, count in counts.items():
            until(f"{count} healthy {service}", lambda: self.healthy(service, count))

    def get(self, path: str, password: str | None = PASSWORD) -> tuple[int, str]:
        headers = {}
        if password is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
        try:
            with urllib.request.urlopen(urllib.request.Request(self.web + path, headers=headers), timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def runs(self) -> list[dict[str, Any]]:
        status, body = self.get("/api/runs?limit=200")
        assert status == 200, body[:500]
        return list(json.loads(body)["runs"])

    def succeeded(self, count: int) -> list[dict[str, Any]]:
        """Waits until `count` runs have succeeded (and none failed); returns all runs."""

        def probe() -> list[dict[str, Any]] | None:
            runs = self.runs()
            failed = [run for run in runs if run["status"] == "error"]
            assert not failed, f"runs failed: {failed}"
            return runs if sum(run["status"] == "success" for run in runs) >= count else None

        return until(f"{count} successful runs", probe)


def env_file_for(path: Path, **extra: str) -> Path:
    """deploy/.env.example filled in as the README says, plus this run's ports and base images."""
    text = compose_files.ENV_EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("\nPOSTGRES_PASSWORD=\n", f"\nPOSTGRES_PASSWORD=pg{os.urandom(6).hex()}\n")
    for role in ("ADMIN", "WORKER", "RECORDER", "WEB", "CONSUMER"):
        text = text.replace(f"\nNATS_{role}_PASSWORD=\n", f"\nNATS_{role}_PASSWORD=n{os.urandom(8).hex()}\n")
    # The hash instead of the password (defect 5: compose demanded the plaintext).
    text = text.replace("\nJOBLOG_ADMIN_PASSWORD=\n", "\n")
    text += f"\nJOBLOG_ADMIN_PASSWORD_HASH='{hash_password(PASSWORD, iterations=1000)}'\n"
    text += f"WEB_BIND=127.0.0.1\nWEB_PUBLISHED_PORT={free_port()}\nNATS_PUBLISHED_PORT={free_port()}\nNATS_MONITOR_PORT={free_port()}\n"
    text += f"APP_IMAGE={PROJECT}-joblog:local\n"
    text += Path(os.environ["JOBLOG_DEPLOY_TEST_IMAGES"]).read_text(encoding="utf-8")
    for key, value in extra.items():
        text += f"{key}={value}\n"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(PROJECT, env_file_for(tmp_path_factory.mktemp("day") / "deploy.env"))
    try:
        yield deployment
    finally:
        logs = deployment.compose("logs", "--no-color", "--tail", "200", check=False).stdout
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        (ROOT / "test-artifacts" / "deploy-day.log").write_text(logs, encoding="utf-8")
        deployment.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


def test_up_builds_once_and_everything_turns_healthy(day: Deployment) -> None:
    day.compose("build", timeout=1800)
    day.up()
    states = {c["Service"]: c for c in day.containers()}
    assert states["migrate"]["State"] == "exited" and states["migrate"]["ExitCode"] == 0
    for service in ("nats", "postgres", "sync_worker", "log_recorder", "web"):
        assert day.healthy(service, 1), states[service]
    # One image for every joblog service (built once by migrate, used by the rest).
    images = {c["Image"] for c in day.containers() if c["Service"] in ("migrate", "sync_worker", "log_recorder", "web")}
    assert images == {day.env["APP_IMAGE"]}
    ids = set()
    for service in ("sync_worker", "log_recorder", "web"):
        cid = day.running(service)[0]["ID"]
        ids.add(subprocess.run(["docker", "inspect", "-f", "{{.Image}}", cid], capture_output=True, text=True).stdout.strip())
    built = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", day.env["APP_IMAGE"]], capture_output=True,
                           text=True).stdout.strip()
    assert ids == {built}


def test_the_pages_need_the_password(day: Deployment) -> None:
    assert day.get("/healthz", password=None)[0] == 200
    assert day.get("/", password=None)[0] == 401
    assert day.get("/", password="wrong")[0] == 401
    status, page = day.get("/")
    assert status == 200 and "joblog" in page.lower()
    assert day.get("/monitor")[0] == 200


def test_a_triggered_sync_succeeds_and_every_log_line_is_json(day: Deployment) -> None:
    done = day.joblog("trigger", "--wait", JOB)
    assert "succeeded" in done.stdout, done.stdout + done.stderr
    runs = day.succeeded(1)
    status, page = day.get(f"/runs/{runs[0]['name']}")
    assert status == 200 and "Imported 318 orders" in page
    for service in ("migrate", "sync_worker", "log_recorder", "web"):
        lines = [line for line in day.compose("logs", "--no-color", "--no-log-prefix", service).stdout.splitlines() if line.strip()]
        assert lines, f"{service} logged nothing"
        for line in lines:
            record = json.loads(line)  # fails on a line that is not JSON
            assert {"event", "level", "timestamp"} <= set(record), (service, line)


def test_scaling_out_runs_every_trigger_once_and_recreates_nothing(day: Deployment) -> None:
    web_before = day.running("web")[0]["ID"]
    before = len(day.runs())
    day.up("--scale", "sync_worker=3", "--scale", "log_recorder=2")
    assert len(day.running("sync_worker")) == 3 and len(day.running("log_recorder")) == 2
    assert day.running("web")[0]["ID"] == web_before, "scaling recreated the web"
    for _ in range(6):
        assert "triggered" in day.joblog("trigger", JOB).stdout
    runs = day.succeeded(before + 6)
    assert len(runs) == before + 6
    workers = {run["worker_id"] for run in runs}
    assert len(workers) >= 1


def _main_pid(container: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True,
                              check=True).stdout)


def _restarts(container: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.RestartCount}}", container], capture_output=True, text=True,
                              check=True).stdout)


def test_a_killed_service_process_is_restarted(day: Deployment) -> None:
    for service in ("log_recorder", "web"):
        container = day.running(service)[0]["ID"]
        restarts, pid = _restarts(container), _main_pid(container)
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
        until(f"{service} restarted by the engine", lambda: _restarts(container) > restarts and _main_pid(container) not in (0, pid))
    day.wait_healthy({"sync_worker": 3, "log_recorder": 2, "web": 1})
    before = len(day.runs())
    day.joblog("trigger", JOB)
    day.succeeded(before + 1)


def test_restart_and_down_then_up_keep_every_run(day: Deployment) -> None:
    names = {run["name"] for run in day.runs()}
    day.compose("restart")
    day.wait_healthy({"nats": 1, "postgres": 1, "sync_worker": 3, "log_recorder": 2, "web": 1})
    until("the web after restart", lambda: day.get("/readyz", password=None)[0] == 200)
    assert {run["name"] for run in day.runs()} == names
    day.compose("down")
    day.up()
    assert {run["name"] for run in day.runs()} == names
    day.joblog("trigger", "--wait", JOB)
    day.succeeded(len(names) + 1)


def _readme_block(heading: str) -> str:
    """The shell block under a README heading (what an operator would paste)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks, f"README section {heading!r} has no sh block"
    return "\n".join(blocks)


def _run_readme(day: Deployment, heading: str, workdir: Path) -> None:
    """Runs a README block in workdir, `docker compose` meaning this run's project and files."""
    wrapper = workdir / "bin"
    wrapper.mkdir(exist_ok=True)
    docker = shutil.which("docker")
    files = " ".join(f"-f {compose_files.DEPLOY / name}" for name in day.files)
    (wrapper / "docker").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = compose ]; then shift; exec {docker} compose --project-name {day.project} '
        f'--env-file {day.env_file} --project-directory {compose_files.DEPLOY} {files} "$@"; fi\n'
        f'exec {docker} "$@"\n'
    )
    (wrapper / "docker").chmod(0o755)
    dotenv = workdir / ".env"  # the blocks are run in deploy/, where .env is
    if not dotenv.exists():
        dotenv.symlink_to(day.env_file)
    script = _readme_block(heading)
    done = subprocess.run(["bash", "-euxo", "pipefail", "-c", script], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{wrapper}:{os.environ['PATH']}"}, timeout=SLOW * 2)
    assert done.returncode == 0, f"README {heading!r} failed:\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}"


def test_the_readme_scale_is_kept_by_every_later_up(day: Deployment, tmp_path: Path) -> None:
    _run_readme(day, "Scale", tmp_path)
    day.wait_healthy({"sync_worker": 3, "log_recorder": 2})
    web = day.running("web")[0]["ID"]
    day.up()
    day.wait_healthy({"sync_worker": 3, "log_recorder": 2, "web": 1})
    assert day.running("web")[0]["ID"] == web, "a second `up` recreated the web"


def test_the_readme_backup_and_restore_give_back_every_run(day: Deployment, tmp_path: Path) -> None:
    _run_readme(day, "Backup", tmp_path)
    assert (tmp_path / "joblog.pgdump").stat().st_size > 0 and (tmp_path / "nats-data.tar.gz").stat().st_size > 0
    before = len(day.runs())
    day.joblog("trigger", "--wait", JOB)  # a run newer than the dump
    # --wait ends with the run's last event; the page shows the run once a recorder has it too.
    names = {run["name"] for run in day.succeeded(before + 1)}
    # Postgres is lost (its volume with it); NATS kept every event.
    day.compose("stop", "postgres")
    day.compose("rm", "-f", "-v", "postgres")
    subprocess.run(["docker", "volume", "rm", f"{day.project}_postgres-data"], check=True, capture_output=True)
    _run_readme(day, "Restore", tmp_path)
    day.wait_healthy({"sync_worker": 3, "log_recorder": 2, "web": 1})
    seen: list[set[str]] = [set()]

    def every_run_back() -> bool:
        seen[0] = {run["name"] for run in day.runs()}
        return seen[0] == names

    until("every run back after the restore", every_run_back, describe=lambda: f"missing {sorted(names - seen[0])}, "
          f"extra {sorted(seen[0] - names)}")
    day.joblog("trigger", "--wait", JOB)
    day.succeeded(len(names) + 1)


def test_the_readme_upgrade_keeps_the_scale_and_the_runs(day: Deployment, tmp_path: Path) -> None:
    names = {run["name"] for run in day.runs()}
    _run_readme(day, "Upgrade", tmp_path)
    day.wait_healthy({"sync_worker": 3, "log_recorder": 2, "web": 1})
    assert {run["name"] for run in day.runs()} == names
    day.joblog("trigger", "--wait", JOB)
    day.succeeded(len(names) + 1)


LEADER = """
import asyncio, os, nats
async def main():
    nc = await nats.connect(os.environ["JOBLOG_NATS_URL"].split(","), user=os.environ["JOBLOG_NATS_USER"],
                            password=os.environ["JOBLOG_NATS_PASSWORD"])
    info = await nc.jetstream(timeout=10).stream_info("JOBS_COMMANDS")
    print(info.cluster.leader)
    await nc.close()
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(f"{PROJECT}-cluster", env_file_for(tmp_path_factory.mktemp("cluster") / "deploy.env"),
                            files=("docker-compose.yml", "docker-compose.cluster.yml"))
    try:
        yield deployment
    finally:
        logs = deployment.compose("logs", "--no-color", "--tail", "300", check=False).stdout
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        (ROOT / "test-artifacts" / "deploy-cluster.log").write_text(logs, encoding="utf-8")
        deployment.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


def test_the_cluster_runs_a_sync_and_survives_losing_a_node(cluster: Deployment) -> None:
    cluster.compose("build", timeout=1800)
    cluster.up()
    cluster.wait_healthy({"nats": 1, "nats-2": 1, "nats-3": 1, "sync_worker": 1, "log_recorder": 1, "web": 1})
    assert "succeeded" in cluster.joblog("trigger", "--wait", JOB).stdout
    cluster.succeeded(1)

    # Lose the node that leads the commands stream: the one every trigger is published through.
    leader = until("a leader of JOBS_COMMANDS", lambda: cluster.compose(
        "exec", "-T", "web", "python", "-c", LEADER).stdout.strip())
    service = "nats" if leader == "nats-1" else leader
    cluster.compose("kill", "-s", "SIGKILL", service)
    cluster.compose("stop", service)  # lost: the engine must not bring it back
    # Right away, while the streams elect new leaders: the CLI retries and succeeds.
    triggered = cluster.joblog("trigger", JOB, check=False)
    assert triggered.returncode == 0 and "triggered" in triggered.stdout, triggered.stdout + triggered.stderr
    assert "Traceback" not in triggered.stderr
    waited = cluster.joblog("trigger", "--wait", JOB, check=False)
    assert waited.returncode == 0 and "succeeded" in waited.stdout, waited.stdout + waited.stderr
    runs = cluster.succeeded(3)
    assert len(runs) == 3 and all(run["status"] == "success" for run in runs)
    # Two nodes left: the services stay healthy, and everything recorded is still served.
    cluster.wait_healthy({"sync_worker": 1, "log_recorder": 1, "web": 1})
    for run in runs:
        status, page = cluster.get(f"/runs/{run['name']}")
        assert status == 200 and "Imported 318 orders" in page
