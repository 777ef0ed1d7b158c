"""Bridge workers on several machines, proven on one: hosts are network namespaces on a bridge (tests/hosts.py).

Host A runs Redis; hosts B and C run workers. Everything happens inside the suite's loopback-only namespace.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.hosts import Host, HostNetwork, HostsUnavailable
from tests.redis_server import RedisServer, start_redis

PYTHON = sys.executable


@pytest.fixture(scope="module")
def net() -> Iterator[HostNetwork]:
    try:
        network = HostNetwork()
    except HostsUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    with network:
        yield network


@pytest.fixture(scope="module")
def hosts(net: HostNetwork) -> dict[str, Host]:
    return {name: net.add_host(name) for name in ("a", "b", "c")}


@pytest.fixture(scope="module")
def redis_on_a(hosts: dict[str, Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    a = hosts["a"]
    server = start_redis(tmp_path_factory.mktemp("redis"), host=a.address, command_prefix=a.command([]))
    yield server
    server.stop()


def on(host: Host, code: str) -> Any:
    """Run Python on a host; it prints one JSON value, returned here."""
    done = host.run([PYTHON, "-c", code])
    assert done.returncode == 0, f"on host {host.name}: {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hosts_reach_each_other_over_the_bridge_only(
    hosts: dict[str, Host], redis_on_a: RedisServer
) -> None:
    b, c = hosts["b"], hosts["c"]
    # Redis on A answers from B (another "machine"), with the password from its URL.
    assert on(b, f"import json, redis; print(json.dumps(redis.Redis.from_url({redis_on_a.url!r}).ping()))") is True
    # Each host has loopback and its one bridge address, nothing else: ICE (aioice, the addresses a worker offers
    # browsers when it serves beyond loopback) gathers exactly that address, IPv6 included.
    gathered = "import json, aioice.ice; print(json.dumps(aioice.ice.get_host_addresses(True, True)))"
    assert on(b, gathered) == [b.address]
    assert on(c, gathered) == [c.address]
    # And the test process, the "client machine" at .1, reaches it too (start_redis waited on its PING from here).
    assert redis_on_a.client().ping()
