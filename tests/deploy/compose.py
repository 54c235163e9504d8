"""Read deploy/ as docker compose would, without Docker: the files, .env, interpolation, merging.

Enough of the compose rules for what deploy/ uses: YAML merge keys, ${VAR}, ${VAR:-default},
${VAR-default}, ${VAR:?error}, $$; an override file merged over the main one; env_file + environment.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from services.contracts.settings import ENV_PREFIX, CommonSettings

DEPLOY = Path(__file__).parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
CLUSTER = DEPLOY / "docker-compose.cluster.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"

VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(ValueError):
    """A ${VAR:?message} whose variable is unset or empty: compose refuses to start."""


def raw(*files: Path) -> dict[str, Any]:
    """The files, merged in order, before interpolation."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, yaml.safe_load(path.read_text(encoding="utf-8")))
    return merged


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's override rules for what deploy/ uses: mappings merge, ports/volumes add, other lists replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for name, value in override.items():
            out[name] = merge(base[name], value, name) if name in base else value
        return out
    if key == "volumes" and isinstance(base, list) and isinstance(override, list):
        # Keyed by the mount point: an override's volume for the same path replaces the base's.
        targets = {item.split(":")[1] for item in override}
        return [item for item in base if item.split(":")[1] not in targets] + override
    if key == "ports" and isinstance(base, list) and isinstance(override, list):
        return base + [item for item in override if item not in base]
    return override


def referenced_variables(*files: Path) -> set[str]:
    """Every ${VAR} the files interpolate."""
    found: set[str] = set()
    for path in files:
        for match in VARIABLE.finditer(path.read_text(encoding="utf-8")):
            name = match[1] or match[4]
            if name:
                found.add(name)
    return found


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Substitute variables the way compose does (from the shell and .env)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = (match[1], match[2], match[3]) if match[1] else (match[4], None, None)
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return VARIABLE.sub(substitute, value)


def read_dotenv(path: Path) -> dict[str, str]:
    """The active KEY=VALUE lines of an env file."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def documented_variables(path: Path) -> set[str]:
    """Every KEY= of an env file, commented out or not."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(encoding="utf-8"), flags=re.M))


def config(env: dict[str, str], *files: Path) -> dict[str, Any]:
    """`docker compose config`: the merged files with variables substituted."""
    return interpolate(raw(*(files or (COMPOSE,))), env)


def service_environment(cfg: dict[str, Any], service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """What a container of this service gets: its env_file(s), then `environment:` over them.

    A name without a value (`JOBLOG_LOG_LEVEL:`) passes the value compose knows (.env, here
    dotenv), or nothing when it has none."""
    spec = cfg["services"][service]
    out: dict[str, str] = {}
    env_files = spec.get("env_file", [])
    for _ in [env_files] if isinstance(env_files, str) else env_files:
        out.update(dotenv)
    environment = spec.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for key, value in environment.items():
        if value is not None:
            out[key] = str(value)
        elif key in dotenv:
            out[key] = dotenv[key]
    return out


def settings_classes() -> list[type[CommonSettings]]:
    """CommonSettings and every subclass the services define (imported here, found by walking)."""
    import services.log_recorder.settings  # noqa: F401
    import services.sync_worker.settings  # noqa: F401
    import services.web.settings  # noqa: F401

    found: list[type[CommonSettings]] = []
    todo: list[type[CommonSettings]] = [CommonSettings]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return found


def env_names(cls: type[CommonSettings]) -> set[str]:
    """The environment variables a settings class reads."""
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
        names.add((alias or f"{ENV_PREFIX}{name}").upper())
    return names


def known_settings() -> set[str]:
    return set().union(*(env_names(cls) for cls in settings_classes()))
