"""A real `redis-server` (the Debian package) for the tests of workers sharing state, on a free loopback port.

Each server gets its own directory, a password (workers authenticate from the URL, as in production) and no
persistence; it is stopped (and waited for) at the end. Readiness is waited on by connecting and sending PING until it
answers PONG, never by sleeping a fixed time.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(
    workdir: Path, host: str = "127.0.0.1", ready_within_s: float = 30.0, command_prefix: Sequence[str] = ()
) -> RedisServer:
    """Start redis-server on `host` (a loopback address, or an address inside a test's network namespace);
    `command_prefix` runs it elsewhere (tests/hosts.py: `Host.command([])`, on another "machine")."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing: it is a Debian package, installed by `make install`")
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    password = secrets.token_hex(16)
    process = subprocess.Popen(
        [
            *command_prefix,
            binary,
            "--bind",
            host,
            "--port",
            str(port),
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(process, host, port, password)
    # The deadline only catches a server that never comes up; a slow machine just waits longer within it.
    deadline = time.monotonic() + ready_within_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {process.returncode} before answering")
        try:
            if server.client().ping():
                return server
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server on {host}:{port} did not answer within {ready_within_s} s") from None
            time.sleep(0.02)  # polling the socket for readiness; the wait is bounded by the server's answer
