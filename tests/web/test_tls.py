"""HTTPS served by the web itself, and what it says when it cannot or when passwords would travel in clear."""
from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog
from pydantic import SecretStr

from joblog.servers import free_port, port_open
from services.web.app import tls_context
from tests.conftest import eventually


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def web_process(env: dict[str, str], **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "joblog", "web"], env={**os.environ, **env, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_with_a_certificate_and_key_the_web_serves_https_itself(env, tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    process = web_process(env, JOBLOG_WEB_PORT=str(port), JOBLOG_WEB_TLS_CERT=str(cert), JOBLOG_WEB_TLS_KEY=str(key))
    try:
        async def listening() -> bool:
            assert process.poll() is None, process.communicate()[1]
            return port_open("127.0.0.1", port)

        await eventually(listening)
        trusted = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=trusted) as response:
                assert response.status == 200 and (await response.json())["status"] == "ok"
            async with session.get(f"https://127.0.0.1:{port}/", ssl=trusted) as response:
                assert response.status == 200 and "Job logs" in await response.text()
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not answered on the HTTPS port
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status >= 400
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)


@pytest.mark.parametrize("broken", ["missing key", "key without cert", "not a certificate"])
def test_a_certificate_the_web_cannot_use_stops_it_with_one_line(env, tmp_path, broken):
    cert, key = self_signed(tmp_path)
    if broken == "missing key":
        extra = {"JOBLOG_WEB_TLS_CERT": str(cert), "JOBLOG_WEB_TLS_KEY": str(tmp_path / "nowhere.pem")}
        expected = "JOBLOG_WEB_TLS_KEY"
    elif broken == "key without cert":
        extra, expected = {"JOBLOG_WEB_TLS_KEY": str(key)}, "JOBLOG_WEB_TLS_CERT"
    else:
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        extra, expected = {"JOBLOG_WEB_TLS_CERT": str(garbage), "JOBLOG_WEB_TLS_KEY": str(key)}, "JOBLOG_WEB_TLS_CERT"
    process = web_process(env, JOBLOG_WEB_PORT=str(free_port()), **extra)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    [line] = err.strip().splitlines()
    assert expected in line


def test_basic_auth_over_plain_http_on_a_public_address_warns_at_start(web_settings):
    public = web_settings.model_copy(update={"web_host": "0.0.0.0", "admin_password": SecretStr("x")})
    with structlog.testing.capture_logs() as logs:
        assert tls_context(public) is None
        tls_context(public.model_copy(update={"web_host": "127.0.0.1"}))
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert "in clear" in warning["event"] and warning["host"] == "0.0.0.0"
