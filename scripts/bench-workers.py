#!/usr/bin/env python3
"""Measure bridge workers against one process, in the same run (the load generator shares the machine's cores).

    PYTHONPATH=server .venv/bin/python scripts/bench-workers.py [--calls 8] [--requests 300] [--concurrent 4]

Starts a real redis-server (tests/redis_server.py), one `voicebridge emulator` process shared by everything (so a
server's CPU is the bridge's alone), `voicebridge serve` (one process) and `voicebridge serve --workers 2` (a front
door and two workers), then measures, alternating the two servers so both see the same machine:

- set-up: POST /api/calls until its 201, and until the call's events WebSocket says `live`, sequential calls (each
  hung up after);
- routed request: the front door's CPU per GET /api/calls/{id} it proxies (an ended call), beside one process
  serving the same request itself, and the front door's own GET /api/calls (Redis);
- CPU per call: N concurrent calls on each server at once, measured over windows: each process's CPU divided by
  the mean of its live calls (sampled each second; the first window is the calls' conversation, later ones may
  catch their ends, which cost more: the artifacts are written then).
Prints one JSON object (and the load average before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TICK = os.sysconf("SC_CLK_TCK")


_DRAINS: set[asyncio.Future[None]] = set()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def start(argv: list[str], env: dict[str, str], pattern: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicebridge.cli", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        if not line:
            raise RuntimeError(f"{argv[0]} exited")
        if m := re.search(pattern, line):
            _DRAINS.add(asyncio.ensure_future(_drain(proc.stdout)))  # never let a child's pipe fill
            return proc, m.group(1)


async def until_state(http: aiohttp.ClientSession, base: str, call_id: str, states: set[str]) -> None:
    async with http.ws_connect(f"{base}/api/calls/{call_id}/events") as ws:
        async for msg in ws:
            data = json.loads(msg.data)
            if (data["kind"] == "state" and data["data"] in states) or data["kind"] == "ended":
                return
            if data["kind"] == "hello" and data["data"]["state"] in states:
                return


REFUSED: list[str] = []


async def create(http: aiohttp.ClientSession, base: str) -> str:
    """A new call's id; a refusal (capacity 503, rate 429) is counted and retried after its Retry-After."""
    while True:
        async with http.post(f"{base}/api/calls", json={"scenario": "late_order"}) as r:
            if r.status == 201:
                return str((await r.json())["id"])
            body = await r.json()
            if r.status not in (429, 503):
                raise RuntimeError(f"POST /api/calls: {r.status} {body}")
            REFUSED.append(body["error"]["type"])
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))


async def setup_ms(http: aiohttp.ClientSession, base: str) -> tuple[float, float, str]:
    """(ms to the 201 of POST /api/calls, ms until the call is live, its id)."""
    t0 = time.perf_counter()
    call_id = await create(http, base)
    created = (time.perf_counter() - t0) * 1000
    await until_state(http, base, call_id, {"live"})
    took = (time.perf_counter() - t0) * 1000
    async with http.post(f"{base}/api/calls/{call_id}/hangup") as r:
        assert r.status in (202, 409), await r.text()
    await until_state(http, base, call_id, {"ended"})
    return created, took, call_id


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--windows", type=int, default=2)
    args = p.parse_args()
    from tests.redis_server import start_redis

    out: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    work = Path(f"/tmp/bench-workers-{os.getpid()}")
    redis = start_redis(work / "redis")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "VOICEBRIDGE_ADMIN_TOKEN")}
    env["VOICEBRIDGE_REDIS_URL"] = redis.url
    procs: list[asyncio.subprocess.Process] = []
    try:
        emu, emu_url = await start(["emulator", "--port", "0"], env, r"(http://127\.0\.0\.1:\d+/v1)")
        procs.append(emu)
        common = ["--port", "0", "--emulator-url", emu_url]
        single, single_url = await start(
            ["serve", *common, "--artifacts", str(work / "single")], env, r"console at (http://[\d.:]+)/"
        )
        cluster, cluster_url = await start(
            ["serve", *common, "--workers", "2", "--artifacts", str(work / "cluster")], env,
            r"console at (http://[\d.:]+)/",
        )  # fmt: skip
        procs += [single, cluster]
        servers = {"single": (single, single_url), "cluster": (cluster, cluster_url)}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{cluster_url}/api/workers") as r:
                workers = [w["pid"] for w in (await r.json())["workers"]]
            # -- set-up time, alternating ------------------------------------------------------------------
            setups: dict[str, list[float]] = {"single": [], "cluster": []}
            posts: dict[str, list[float]] = {"single": [], "cluster": []}
            ended: dict[str, str] = {}
            for _ in range(args.calls):
                for name, (_, base) in servers.items():
                    post_ms, ms, call_id = await setup_ms(http, base)
                    setups[name].append(ms)
                    posts[name].append(post_ms)
                    ended[name] = call_id

            def spread(v: list[float]) -> dict[str, float]:
                return {"median": round(statistics.median(v), 1), "p90": round(sorted(v)[int(0.9 * (len(v) - 1))], 1)}

            out["setup_ms"] = {name: {**spread(v), "n": len(v)} for name, v in setups.items()}
            out["post_201_ms"] = {name: spread(v) for name, v in posts.items()}
            # -- CPU per request --------------------------------------------------------------------------
            per_request: dict[str, float] = {}
            for label, (proc, base), path in (
                ("single: GET /api/calls/{id}, served itself", servers["single"], f"/api/calls/{ended['single']}"),
                ("front door: GET /api/calls/{id}, routed", servers["cluster"], f"/api/calls/{ended['cluster']}"),
                ("front door: GET /api/calls, from Redis", servers["cluster"], "/api/calls"),
                ("single: GET /api/calls, in memory", servers["single"], "/api/calls"),
            ):
                before = cpu_s(proc.pid)
                behind = sum(cpu_s(w) for w in workers) if proc is cluster else 0.0
                t0 = time.perf_counter()
                for _ in range(args.requests):
                    async with http.get(base + path) as r:
                        assert r.status == 200
                        await r.read()
                row = {
                    "cpu_ms": round((cpu_s(proc.pid) - before) * 1000 / args.requests, 3),
                    "wall_ms": round((time.perf_counter() - t0) * 1000 / args.requests, 3),
                }
                if proc is cluster:  # what the workers spent on it (the owner's share, and heartbeats meanwhile)
                    row["workers_cpu_ms"] = round((sum(cpu_s(w) for w in workers) - behind) * 1000 / args.requests, 3)
                per_request[label] = row  # type: ignore[assignment]
            out["per_request"] = per_request
            # -- CPU per call -----------------------------------------------------------------------------
            per_call: dict[str, Any] = {}
            idle_before = {pid: cpu_s(pid) for pid in [single.pid, cluster.pid, *workers]}
            await asyncio.sleep(args.window)  # a measured window with no calls: what each process costs idle
            out["idle_cpu_pct"] = {
                {single.pid: "single", cluster.pid: "front door"}.get(pid, f"worker {pid}"): round(
                    100 * (cpu_s(pid) - t) / args.window, 2
                )
                for pid, t in idle_before.items()
            }
            # Both servers carry their calls in the same windows, so both see the same machine.
            ids: dict[str, list[str]] = {name: [] for name in servers}
            for _ in range(args.concurrent):
                for name, (_, base) in servers.items():
                    ids[name].append(await create(http, base))
            await asyncio.gather(
                *(until_state(http, servers[n][1], i, {"live"}) for n, group in ids.items() for i in group)
            )
            pids = {"single": [single.pid], "cluster": workers, "front door": [cluster.pid]}
            for window in range(args.windows):
                before = {pid: cpu_s(pid) for group in pids.values() for pid in group}
                samples: dict[str, list[int]] = {name: [] for name in servers}
                t0 = time.monotonic()
                while time.monotonic() - t0 < args.window:  # live calls sampled each second of the window
                    for name, (_, base) in servers.items():
                        async with http.get(f"{base}/api/calls") as r:
                            rows = (await r.json())["calls"]
                        samples[name].append(sum(1 for c in rows if c["id"] in ids[name] and c["state"] == "live"))
                    await asyncio.sleep(1.0)
                took = time.monotonic() - t0
                used = {pid: cpu_s(pid) - t for pid, t in before.items()}
                row: dict[str, Any] = {}
                for name, group in pids.items():
                    row[name] = {str(pid): round(100 * used[pid] / took, 2) for pid in group}
                for name in servers:
                    live = statistics.mean(samples[name])
                    total = sum(used[pid] for pid in pids[name])
                    row[f"{name}_cpu_pct_per_call"] = round(100 * total / took / max(live, 0.1), 2)
                    row[f"{name}_mean_live_calls"] = round(live, 2)
                per_call[f"window {window + 1}"] = row
            reasons: dict[str, list[str]] = {}
            for name, (_, base) in servers.items():
                for i in ids[name]:
                    async with http.post(f"{base}/api/calls/{i}/hangup") as r:
                        await r.read()
                for i in ids[name]:
                    await until_state(http, base, i, {"ended"})
                    async with http.get(f"{base}/api/calls/{i}") as r:
                        reasons.setdefault(name, []).append(str((await r.json())["end_reason"]))
            per_call["end_reasons"] = reasons
            out["per_call"] = per_call
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        redis.stop()
    out["refused_then_retried"] = REFUSED
    out["loadavg_after"] = os.getloadavg()
    out["cores"] = os.cpu_count()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
