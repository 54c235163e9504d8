"""deploy/ is checked against the code even where no Docker engine runs.

The known settings come from the pydantic settings classes and the commands from the CLI
parser, at test time: a new setting or subcommand needs no change here, only in deploy/.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from joblog.cli import build_parser
from services.contracts.settings import CommonSettings
from services.log_recorder.settings import RecorderSettings
from services.sync_worker.settings import WorkerSettings
from services.web.app import create_app
from services.web.settings import WebSettings
from tests.deploy import compose

# Which settings each long-running command reads; the compose services are these commands.
SETTINGS_OF_COMMAND: dict[str, type[CommonSettings]] = {
    "migrate": CommonSettings, "worker": WorkerSettings, "recorder": RecorderSettings, "web": WebSettings,
}
APP_SERVICES = ("migrate", "sync_worker", "log_recorder", "web")
LONG_RUNNING = ("sync_worker", "log_recorder", "web")
# What a user writes into deploy/.env (the two required values), over .env.example.
NATS_ROLES = {"ADMIN": "migrate", "WORKER": "sync_worker", "RECORDER": "log_recorder", "WEB": "web", "CONSUMER": None}
NATS_SECRETS = {f"NATS_{role}_PASSWORD": f"n{role.lower()}pw{len(role)}" for role in NATS_ROLES}
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "JOBLOG_ADMIN_PASSWORD": "admin-secret", **NATS_SECRETS}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def dotenv() -> dict[str, str]:
    return {**compose.read_dotenv(compose.ENV_EXAMPLE), **SECRETS}


def config(*files: Any) -> dict[str, Any]:
    return compose.config(dotenv(), *files)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


@pytest.mark.parametrize("files", [(compose.COMPOSE,), (compose.COMPOSE, compose.CLUSTER)], ids=["single", "cluster"])
def test_every_service_command_and_healthcheck_is_a_real_joblog_subcommand(files):
    services = config(*files)["services"]
    known = subcommands()
    for name in APP_SERVICES:
        command = command_of(services[name])
        assert command[0] in known, f"{name}: `joblog {command[0]}` does not exist"
        build_parser().parse_args(command)  # the arguments are valid too
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["joblog"]:
            build_parser().parse_args(test[2:])
            assert test[2] in known, f"{name}'s healthcheck runs an unknown subcommand {test[2]}"


def test_the_image_is_one_slim_non_root_image_built_once_from_the_lock():
    dockerfile = (compose.DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)-slim$", dockerfile, flags=re.M)
    assert base and (int(base[1]), int(base[2])) >= (3, 11), "the official slim image is the default base"
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", dockerfile, flags=re.M)
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.M)
    assert "--require-hashes" in dockerfile and "requirements/service.txt" in dockerfile, "installs from the lock"
    assert re.search(r"^RUN pip install --no-deps --no-build-isolation \.( |$)", dockerfile, flags=re.M), \
        "installs joblog itself without the [local] extras and without resolving anything"
    assert "useradd --system" not in dockerfile, "a system uid of 10001 makes useradd warn"
    assert 'ENTRYPOINT ["joblog"]' in dockerfile
    services = config()["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, "one image for all services"
    builders = [name for name in APP_SERVICES if "build" in services[name]]
    assert builders == ["migrate"], "built once: four builds of one tag race and recreate every service"
    assert services["migrate"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert all(services[name]["pull_policy"] == "never" for name in APP_SERVICES if name not in builders)


def test_base_images_are_variables_defaulting_to_the_official_ones():
    services = config(compose.COMPOSE, compose.CLUSTER)["services"]
    assert services["postgres"]["image"] == "postgres:17-alpine"
    assert {services[name]["image"] for name in ("nats", "nats-2", "nats-3")} == {"nats:2.10-alpine"}
    assert services["migrate"]["build"]["args"]["PYTHON_IMAGE"] == "python:3.12-slim"
    local = {"PYTHON_IMAGE": "local/python:3", "NATS_IMAGE": "local/nats:2.10", "POSTGRES_IMAGE": "local/postgres:17"}
    services = compose.config({**dotenv(), **local}, compose.COMPOSE, compose.CLUSTER)["services"]
    assert services["postgres"]["image"] == "local/postgres:17"
    assert {services[name]["image"] for name in ("nats", "nats-2", "nats-3")} == {"local/nats:2.10"}
    assert services["migrate"]["build"]["args"]["PYTHON_IMAGE"] == "local/python:3"


@pytest.mark.parametrize("files", [(compose.COMPOSE,), (compose.COMPOSE, compose.CLUSTER)], ids=["single", "cluster"])
def test_each_secret_reaches_only_the_containers_that_need_it(files):
    cfg = config(*files)
    for name, service in cfg["services"].items():
        assert "env_file" not in service, f"{name}: env_file would hand every variable of .env to it"
        given = compose.service_environment(cfg, name, dotenv())
        values = " ".join(str(value) for value in given.values())
        assert (SECRETS["JOBLOG_ADMIN_PASSWORD"] in values) == (name == "web"), name
        uses_database = name in APP_SERVICES or name == "postgres"
        assert (SECRETS["POSTGRES_PASSWORD"] in values) == uses_database, name
        # Each NATS password: the NATS nodes (they check it) and the one service of that role.
        for role, service_of_role in NATS_ROLES.items():
            expected = name.startswith("nats") or name == service_of_role
            assert (NATS_SECRETS[f"NATS_{role}_PASSWORD"] in values) == expected, (name, role)


def test_the_web_takes_the_hash_instead_of_the_password():
    example = compose.read_dotenv(compose.ENV_EXAMPLE)
    hashed = "pbkdf2_sha256$1000$salt$aGFzaA=="
    only_hash = {**example, **NATS_SECRETS, "POSTGRES_PASSWORD": "pg", "JOBLOG_ADMIN_PASSWORD_HASH": hashed}
    only_hash.pop("JOBLOG_ADMIN_PASSWORD", None)
    cfg = compose.config(only_hash)
    env = compose.service_environment(cfg, "web", only_hash)
    assert env["JOBLOG_ADMIN_PASSWORD_HASH"] == hashed and "JOBLOG_ADMIN_PASSWORD" not in env


@pytest.mark.parametrize("files", [(compose.COMPOSE,), (compose.COMPOSE, compose.CLUSTER)], ids=["single", "cluster"])
def test_every_variable_a_service_gets_is_a_setting_of_that_service_and_valid(files, monkeypatch):
    cfg = config(*files)
    known = compose.known_settings()
    for name in APP_SERVICES:
        command = command_of(cfg["services"][name])[0]
        settings_class = SETTINGS_OF_COMMAND[command]
        environment = cfg["services"][name].get("environment", {})
        unknown = {key for key in environment if key.startswith("JOBLOG_")} - compose.env_names(settings_class)
        assert not unknown, f"{name} ({settings_class.__name__}) does not read {unknown}"
        given = compose.service_environment(cfg, name, dotenv())
        assert {key for key in given if key.startswith("JOBLOG_")} <= known
        # The service would start with exactly this environment.
        for key in [k for k in os.environ if k.startswith("JOBLOG_")]:
            monkeypatch.delenv(key)
        for key, value in given.items():
            monkeypatch.setenv(key, value)
        settings_class()


def test_env_example_lists_every_setting_and_every_variable_compose_needs():
    documented = compose.documented_variables(compose.ENV_EXAMPLE)
    known = compose.known_settings()
    missing = known - documented
    assert not missing, f"deploy/.env.example lacks {sorted(missing)}"
    stray = {name for name in documented if name.startswith("JOBLOG_")} - known
    assert not stray, f"deploy/.env.example names variables no service reads: {sorted(stray)}"
    needed = compose.referenced_variables(compose.COMPOSE, compose.CLUSTER)
    assert needed <= documented, f"compose interpolates undocumented {sorted(needed - documented)}"


def test_the_deployment_refuses_to_start_without_the_postgres_password():
    example = compose.read_dotenv(compose.ENV_EXAMPLE)
    with pytest.raises(compose.MissingVariable, match="POSTGRES_PASSWORD"):
        compose.config({**example, **SECRETS, "POSTGRES_PASSWORD": ""})
    web = compose.service_environment(config(), "web", dotenv())
    assert web["JOBLOG_ADMIN_PASSWORD"] == SECRETS["JOBLOG_ADMIN_PASSWORD"]


def test_web_port_and_healthcheck_are_what_the_web_serves():
    web = config()["services"]["web"]
    env = web["environment"]
    settings = WebSettings(web_host=env["JOBLOG_WEB_HOST"], web_port=int(env["JOBLOG_WEB_PORT"]), admin_password="x")
    assert settings.web_host == "0.0.0.0", "reachable from outside the container"
    published = [port.rsplit(":", 1)[1] for port in web["ports"]]
    assert published == [str(settings.web_port)]
    probe = " ".join(web["healthcheck"]["test"])
    url = urlsplit(re.search(r"http://[^'\" ]+", probe)[0])  # type: ignore[index]
    assert url.hostname == "127.0.0.1" and url.port == settings.web_port
    routes = {(route.method, route.resource.canonical) for route in create_app(settings).router.routes() if route.resource}
    assert ("GET", url.path) in routes
    assert ("GET", "/readyz") in routes


def nats_config_of(service: dict[str, Any]) -> str:
    """The nats-server configuration a NATS service runs with: the file compose mounts at its -c path."""
    command = command_of(service)
    path = command[command.index("-c") + 1]
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service["volumes"]]
    source = next(m.split(":")[0] for m in mounts if m.split(":")[1] == path)
    return (compose.DEPLOY / source).read_text() if not Path(source).is_absolute() else Path(source).read_text()


def test_nats_and_postgres_healthchecks_probe_what_they_serve():
    cfg = config()
    nats, postgres = cfg["services"]["nats"], cfg["services"]["postgres"]
    command = command_of(nats)
    served = nats_config_of(nats)
    assert "jetstream: enabled" in served and command[command.index("-sd") + 1] == "/data"
    assert "authorization {" in served, "NATS runs with its users and permissions"
    assert any(volume.endswith(":/data") for volume in (v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in nats["volumes"]))
    monitor = re.search(r"^http_port: (\d+)$", served, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert f"127.0.0.1:{monitor}/healthz?js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])
    dsn = urlsplit(cfg["services"]["sync_worker"]["environment"]["JOBLOG_DATABASE_URL"])
    assert dsn.hostname == "postgres" and dsn.path == f"/{postgres['environment']['POSTGRES_DB']}"
    assert dsn.username == postgres["environment"]["POSTGRES_USER"] and dsn.password == SECRETS["POSTGRES_PASSWORD"]
    probe = postgres["healthcheck"]["test"]
    assert probe[1] == "pg_isready" and dsn.username in probe and postgres["environment"]["POSTGRES_DB"] in probe
    # Over TCP: the socket answers during the image's first-start init, before the real server runs.
    assert probe[probe.index("-h") + 1] == "127.0.0.1"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert urlsplit(cfg["services"]["web"]["environment"]["JOBLOG_NATS_URL"]).hostname == "nats"


@pytest.mark.parametrize("files", [(compose.COMPOSE,), (compose.COMPOSE, compose.CLUSTER)], ids=["single", "cluster"])
def test_services_start_in_a_sane_order_and_restart_sensibly(files):
    services = config(*files)["services"]
    migrate = services["migrate"]
    # migrate creates the streams too (as the NATS admin): it waits for both servers.
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}, "nats": {"condition": "service_healthy"}}
    assert migrate["restart"].startswith("on-failure")
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["postgres"]["condition"] == depends["nats"]["condition"] == "service_healthy"
        assert services[name]["restart"] in ("unless-stopped", "always")
        assert "healthcheck" in services[name]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck to wait for"
        assert service["deploy"]["resources"]["limits"]["memory"], f"{name} has no memory limit"
    assert _starts_in_order(services)


def _starts_in_order(services: dict[str, Any]) -> list[str]:
    """A start order respecting depends_on; fails on a cycle."""
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [name for name, s in pending.items() if set(s.get("depends_on", {})) <= set(order)]
        assert ready, f"depends_on has a cycle among {sorted(pending)}"
        order += sorted(ready)
        for name in ready:
            del pending[name]
    return order


def test_the_cluster_variant_runs_three_jetstream_nodes_and_replicates_the_streams():
    services = config(compose.COMPOSE, compose.CLUSTER)["services"]
    nodes = {name: command_of(s) for name, s in services.items() if s.get("image", "").startswith("nats:")}
    assert len(nodes) == 3

    def option(command: list[str], flag: str) -> str:
        return command[command.index(flag) + 1]

    assert len({option(c, "--name") for c in nodes.values()}) == 3
    assert {option(c, "--cluster_name") for c in nodes.values()} == {"joblog"}
    cluster_port = urlsplit(option(next(iter(nodes.values())), "--cluster")).port
    for name, command in nodes.items():
        assert "jetstream: enabled" in nats_config_of(services[name]) and option(command, "-sd") == "/data"
        routes = {urlsplit(route).hostname for route in option(command, "--routes").split(",")}
        assert routes == set(nodes), f"{name} does not route to every node"
        assert {urlsplit(route).port for route in option(command, "--routes").split(",")} == {cluster_port}
    stores = [volume for name in nodes for volume in services[name]["volumes"] if volume.split(":")[1] == "/data"]
    assert len({volume.split(":")[0] for volume in stores}) == 3, "each node keeps its own store"
    for name in LONG_RUNNING:
        env = services[name]["environment"]
        assert {urlsplit(url).hostname for url in env["JOBLOG_NATS_URL"].split(",")} == set(nodes)
        assert WorkerSettings(stream_replicas=env["JOBLOG_STREAM_REPLICAS"]).stream_replicas == 3
        assert set(nodes) <= set(services[name]["depends_on"])
