"""Bridge workers on several machines, proven on one: hosts are network namespaces on a bridge (tests/hosts.py).

Host A runs Redis and the front door (`voicebridge serve --workers 0`, HTTPS with a test certificate and the
management token, as any server off loopback); hosts B and C each run a `voicebridge worker --advertise <its
address>` with its own embedded emulator; the test process is the client machine (the API client, Chromium and
`voicebridge batch --redis`). One cluster proves, in order: calls placed on both workers; a browser's join of a call,
through the front door, with its media flowing straight to the owning worker (the browser's selected ICE pair);
a batch spread over both workers; kill -9 of one worker mid-batch: its live call recorded `worker_lost`, its batch
jobs run again on the other worker (the report says on which worker each was lost), while the other worker's call
goes on.

Everything runs inside the suite's loopback-only namespace. Waits are on state (the API, Redis, the page); their
bounds only catch a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.browser.conftest import BASE_ARGS, CHROMIUM, WEBRTC_ARGS
from tests.hosts import Host, HostNetwork, HostsUnavailable
from tests.integration.test_debug_tls import make_cert
from tests.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.browser
PYTHON = sys.executable
HANG_S = 120.0  # only catches a hang: a loaded machine waits longer within it
TOKEN = "multihost-admin-token-0123456789"
LEASE_S = "3"  # a lost batch job is run again this soon after its worker stopped renewing it
PORT = 8443


@dataclass
class Cluster:
    net: HostNetwork
    hosts: dict[str, Host]
    redis: RedisServer
    base: str  # the front door, https://A:PORT
    workers: dict[str, Host]  # worker id -> the host it runs on
    processes: dict[str, Any]  # worker id -> its process
    env: dict[str, str]
    folder: Path


def _get(url: str) -> tuple[int | None, Any]:
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, context=insecure, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None, None


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
def cluster(net: HostNetwork, hosts: dict[str, Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("multihost")
    a = hosts["a"]
    server = start_redis(folder / "redis", host=a.address, command_prefix=a.command([]))
    cert, key = make_cert(folder, a.address)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(VOICEBRIDGE_REDIS_URL=server.url, VOICEBRIDGE_ADMIN_TOKEN=TOKEN, VOICEBRIDGE_JOB_LEASE_S=LEASE_S)
    logs = folder / "logs"
    logs.mkdir()

    def start(host: Host, *argv: str) -> Any:
        out = open(logs / f"{host.name}.log", "w")  # the process holds it; closed when the test ends
        return host.popen([PYTHON, "-m", "voicebridge.cli", *argv], env=env, stdout=out, stderr=out)

    start(a, "serve", "--workers", "0", "--host", a.address, "--port", str(PORT), "--cert", str(cert), "--key",
          str(key), "--artifacts", str(folder / "a"))  # fmt: skip
    started = {
        name: start(hosts[name], "worker", "--advertise", hosts[name].address, "--artifacts", str(folder / name))
        for name in ("b", "c")
    }
    base = f"https://{a.address}:{PORT}"
    deadline = time.monotonic() + HANG_S
    while True:  # the workers load their emulators' speech models first, then register
        status, body = _get(f"{base}/api/workers")
        if status == 200 and len(body["workers"]) == 2:
            break
        dead = [n for n, p in started.items() if p.poll() is not None]
        assert not dead and time.monotonic() < deadline, (
            f"the cluster did not come up (dead: {dead}): " + (logs / "b.log").read_text()[-2000:]
        )
        time.sleep(0.2)  # polling the front door for the workers' registration; bounded above
    by_address = {h.address: h for h in hosts.values()}
    workers = {w["id"]: by_address[w["host"]] for w in body["workers"]}
    processes = {wid: started[h.name] for wid, h in workers.items()}
    try:
        yield Cluster(net, hosts, server, base, workers, processes, env, folder)
    finally:
        server.stop()  # the hosts' processes are killed with the network


def on(host: Host, code: str) -> Any:
    """Run Python on a host; it prints one JSON value, returned here."""
    done = host.run([PYTHON, "-c", code])
    assert done.returncode == 0, f"on host {host.name}: {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hosts_reach_each_other_over_the_bridge_only(cluster: Cluster) -> None:
    b, c = cluster.hosts["b"], cluster.hosts["c"]
    # Redis on A answers from B (another "machine"), with the password from its URL.
    url = cluster.redis.url
    assert on(b, f"import json, redis; print(json.dumps(redis.Redis.from_url({url!r}).ping()))") is True
    # Each host has loopback and its one bridge address, nothing else (no IPv6 either): what a worker there can
    # offer browsers as ICE candidates is exactly that address.
    gathered = "import json, aioice.ice; print(json.dumps(aioice.ice.get_host_addresses(True, True)))"
    assert on(b, gathered) == [b.address]
    assert on(c, gathered) == [c.address]
    # The test process, the "client machine" at .1, reaches A too (start_redis waited on its PING from here).
    assert cluster.redis.client().ping()


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    async def poll() -> Any:
        while True:
            if found := await check():
                return found
            await asyncio.sleep(0.2)  # polling the API or Redis for a state change; bounded by HANG_S

    try:
        return await asyncio.wait_for(poll(), HANG_S)
    except TimeoutError:
        raise AssertionError(f"waited {HANG_S:g} s for {what}") from None


@pytest.mark.timeout(300)  # one cluster, several calls and a batch: a hang's bound, not a speed requirement
async def test_placement_direct_media_a_batch_over_both_and_a_lost_worker(cluster: Cluster) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    insecure = aiohttp.TCPConnector(ssl=False)  # the test certificate; the browser is told to accept it too
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(cluster.base, connector=insecure, headers=headers) as http:

        async def call(call_id: str) -> Any:
            async with http.get(f"/api/calls/{call_id}") as r:
                assert r.status == 200, await r.text()
                return await r.json()

        async def place() -> Any:
            async with http.post("/api/calls", json={"scenario": "late_order"}) as r:
                assert r.status == 201, await r.text()
                return await r.json()

        # 1. A call (a long one) for the browser, placed on one worker.
        kept = await place()
        survivor = cluster.workers[kept["worker"]]

        # 2. A browser on the client machine joins the first call through the front door's console; the answer
        # it gets is the owning worker's, so its media goes to that worker's address, not to host A's.
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=BASE_ARGS + WEBRTC_ARGS)
            page = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await page.goto(f"{cluster.base}/#admin_token={TOKEN}")
            await page.click(f".call-row[data-call='{kept['id']}']")
            await page.wait_for_selector("#join-listen:not([disabled])")
            await page.click("#join-listen")
            ms = HANG_S * 1000
            await page.wait_for_function("() => window.vbJoin.stats().connectionState === 'connected'", timeout=ms)
            await page.wait_for_function(
                "() => { const s = window.vbJoin.stats(); return s.remote && s.parties.cs?.bytes > 2000 }", timeout=ms
            )
            stats = await page.evaluate("() => window.vbJoin.stats()")
            assert stats["callId"] == kept["id"]
            assert stats["remote"].rsplit(":", 1)[0] == survivor.address != cluster.hosts["a"].address

            # A second call goes to the other worker, the least loaded: calls are placed on both.
            lost = await place()
            assert {kept["worker"], lost["worker"]} == set(cluster.workers)
            victim = cluster.workers[lost["worker"]]

            # 3. A batch from the client machine, spread over both workers (two batch calls at most at once each),
            # and kill -9 of the second call's worker while it runs batch calls.
            out = cluster.folder / "batch"
            batch = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "voicebridge.cli", "batch", "--redis", cluster.redis.url, "--scenario", "quick_bye",
                "--calls", "8", "--concurrency", "4", "--out", str(out), "--json",
                env=cluster.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            redis = aioredis.Redis.from_url(cluster.redis.url, decode_responses=True)
            victim_id = lost["worker"]

            async def victim_running_jobs() -> bool:
                return bool(await redis.xpending_range("voicebridge:jobs", "workers", "-", "+", 10, victim_id))

            await until(victim_running_jobs, f"worker {victim_id} taking batch jobs")
            cluster.processes[victim_id].kill()

            # 4. The victim's live call is recorded worker_lost; the survivor's call goes on (or has ended well).
            async def recorded_lost() -> bool:
                async with http.get(f"/api/calls/{lost['id']}") as r:
                    # 502 (`worker_unreachable`) until the registry has noticed the worker is gone.
                    assert r.status in (200, 502), await r.text()
                    return r.status == 200 and (await r.json())["end_reason"] == "worker_lost"

            await until(recorded_lost, f"call {lost['id']} recorded worker_lost")
            assert (await call(kept["id"]))["end_reason"] in (None, "caller_hangup")
            await browser.close()

        stdout, _ = await asyncio.wait_for(batch.communicate(), HANG_S)
        await redis.aclose()
    # The batch: every call ran to its hang-up, the ones lost with the victim run again on the survivor.
    report = json.loads((out / "report.json").read_text())
    assert batch.returncode == 0, report["errors"]
    assert (report["total"], report["succeeded"]) == (8, 8)
    retried = [r for r in report["calls"] if r["attempt"] == 2]
    assert retried and {(r["worker"], r["lost_worker"]) for r in retried} == {(kept["worker"], victim_id)}
    assert kept["worker"] in report["workers"]
    assert json.loads(stdout.decode().splitlines()[-1])["workers"] == report["workers"]
    assert victim.address != survivor.address

