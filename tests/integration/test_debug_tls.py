"""`voicebridge serve` over HTTPS: with a certificate made at test time by openssl on 127.0.0.2 (loopback, so
allowed here), /healthz answers over TLS and verifies against that certificate; off loopback without a
certificate the server refuses to start and says what to do. Real processes, real sockets."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from voicebridge.signaling import tls
from voicebridge.signaling.tls import TlsError, is_loopback_host, server_ssl_context

pytestmark = pytest.mark.integration
VOICEBRIDGE = [sys.executable, "-m", "voicebridge.cli"]
START_TIMEOUT = 30.0

if shutil.which("openssl") is None:
    pytest.skip("openssl is not installed (apt-get install openssl)", allow_module_level=True)


def make_cert(folder: Path, ip: str) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=voicebridge-test",
            "-addext",
            f"subjectAltName=IP:{ip}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def serve(*args: str) -> asyncio.subprocess.Process:
    # Off loopback serve also insists on a management token (security.py); give one so TLS is what is checked.
    env = {**os.environ, "OPENAI_API_KEY": "", "VOICEBRIDGE_ADMIN_TOKEN": "test-admin-token-0123456789"}
    return await asyncio.create_subprocess_exec(
        *VOICEBRIDGE, "serve", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )


async def test_serve_https_on_127_0_0_2_with_a_test_ca(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "127.0.0.2")
    proc = await serve(
        "--host",
        "127.0.0.2",
        "--port",
        "0",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--artifacts",
        str(tmp_path / "calls"),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        m = re.search(r"console at (https://127\.0\.0\.2:(\d+)/)", line)
        assert m, f"unexpected first line: {line!r}"
        ca = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{m.group(1)}healthz", ssl=ca) as resp:
                assert resp.status == 200 and (await resp.json())["ok"] is True
            # Plain HTTP to the same port is not served; and a client without our CA refuses the certificate.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.2:{m.group(2)}/healthz") as resp:
                    await resp.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(f"{m.group(1)}healthz", ssl=ssl.create_default_context()) as resp:
                    await resp.read()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), START_TIMEOUT)


async def test_serve_off_loopback_without_certs_refuses_to_start(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is never bound: the check must fire before any socket is opened.
    missing = tmp_path / "nope.pem"
    proc = await serve("--host", "192.0.2.1", "--port", "0", "--cert", str(missing), "--key", str(missing))
    _, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert proc.returncode == 2
    assert f"{missing} and {missing} do not exist: run `make certs`" in err.decode()


def test_tls_choice_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "192.168.1.2", "example.com", "::"))
    assert server_ssl_context("127.0.0.1") is None  # loopback and nothing asked: plain HTTP
    cert, key = make_cert(tmp_path, "127.0.0.1")
    assert server_ssl_context("127.0.0.1", cert, key) is not None  # asked for: HTTPS even on loopback
    assert server_ssl_context("0.0.0.0", cert, key) is not None
    with pytest.raises(TlsError, match="--cert was given without --key"):
        server_ssl_context("0.0.0.0", cert, None)
    with pytest.raises(TlsError, match="key must belong to the certificate"):
        server_ssl_context("0.0.0.0", cert, cert)
    # This checkout's certs/ may exist (make certs): point the defaults at files that do not.
    monkeypatch.setattr(tls, "DEFAULT_CERT", tmp_path / "dev-cert.pem")
    monkeypatch.setattr(tls, "DEFAULT_KEY", tmp_path / "dev-key.pem")
    with pytest.raises(TlsError, match=r"host '0\.0\.0\.0' is not loopback.*run `make certs`"):
        server_ssl_context("0.0.0.0")
