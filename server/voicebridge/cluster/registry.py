"""The cluster's shared state in Redis: which workers are alive, and every call's record with its owner.

Keys (all under `voicebridge:`; nothing else of voicebridge is in Redis, the OpenAI key never is):

    worker:{id}         JSON WorkerInfo, SET with an expiry (the heartbeat): a worker whose key has expired is dead
    workers             the set of registered worker ids (dead ones too, until reaped)
    worker:{id}:calls   the set of that worker's live call ids (their number is its load)
    worker:{id}:batch   the set of batch call ids it runs for the jobs stream (job_loop.py); they load it too
    call:{id}           JSON call record: the list row of the REST API plus "worker"; ended ones expire after a week
    calls               sorted set of call ids by creation time (what GET /api/calls lists, newest first)
    reaped:{id}         a worker declared lost: if it was only stalled and comes back, it ends its calls too
    secret              the shared secret front doors send to workers (secrets.token_urlsafe, made by whoever
                        comes first): every process that can authenticate to Redis is a member of the cluster

Reaping: any process (front door or worker) may find a registered worker whose heartbeat key has expired; the one
whose SREM removes it from `workers` wins and records each of its live calls as ended with end_reason
`worker_lost`, so no call is lost silently and two reapers never both do it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # the redis client is the `cluster` extra: imported on use, so a base install imports this module
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

PREFIX = "voicebridge:"
HEARTBEAT_S = 1.0  # a worker writes its key this often
TTL_S = 5.0  # and the key lives this long: a worker missing ~5 heartbeats is dead
ENDED_RECORD_TTL_S = 7 * 24 * 3600  # an ended call's record is kept a week (its folder stays on its worker)
MAX_LISTED = 500  # calls kept in the list, newest first; older records are still found by id until they expire
REAPED_TTL_S = 24 * 3600


# SET the record only if absent and, only then, list it and count it in its worker's load: in one step, so a record
# the worker wrote first (possibly ended already) is neither overwritten nor counted live again.
_PUT_NEW_CALL = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[3])
end
return 0
"""


class RegistryUnavailable(RuntimeError):
    """Redis does not answer (down, unreachable, refusing our password): the message says which."""


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str  # the address the front door and the browsers reach it at (`--advertise`)
    port: int
    pid: int
    started_at: float
    heartbeat_at: float = 0.0
    calls: int = 0  # its live calls when it last wrote its key
    draining: bool = False  # shutting down: no new calls
    backend: str = ""  # "openai" or "emulator": where its calls go (the console shows it)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerInfo:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _k(*parts: str) -> str:
    return PREFIX + ":".join(parts)


def batch_calls_key(worker_id: str) -> str:
    """The set of batch calls (jobs, `voicebridge batch/test --redis`) the worker runs: part of its load."""
    return _k("worker", worker_id, "batch")


def describe_url(url: str) -> str:
    """The Redis URL without its password, for messages and logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"{parts.hostname or '?'}:{port or 6379}"
    return f"{parts.scheme}://{where}{parts.path}"


class Registry:
    """The cluster's Redis, with the operations front doors and workers need. Every Redis failure surfaces as
    RegistryUnavailable, never as a raw client exception."""

    def __init__(self, client: aioredis.Redis, where: str) -> None:
        self._r = client
        self.where = where  # the URL without its password

    @classmethod
    async def connect(cls, url: str) -> Registry:
        """Connect and check the password now, so a wrong URL is one clear error at start-up."""
        if not url:
            raise RegistryUnavailable(
                "no Redis URL: give --redis redis://[:PASSWORD@]HOST:PORT/DB or set VOICEBRIDGE_REDIS_URL"
            )
        from voicebridge.extras import require

        require("cluster")
        import redis.asyncio as aioredis

        where = describe_url(url)
        try:
            client = aioredis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=2.0, health_check_interval=0
            )
        except ValueError as e:
            raise RegistryUnavailable(
                f"the Redis URL is not valid ({e}): give redis://[:PASSWORD@]HOST:PORT/DB"
            ) from None
        registry = cls(client, where)
        await registry.ping()
        return registry

    async def close(self) -> None:
        await self._r.aclose()

    async def _do(self, what: str, op: Any) -> Any:
        from redis.exceptions import AuthenticationError, RedisError, ResponseError

        try:
            return await op
        except AuthenticationError as e:
            raise RegistryUnavailable(
                f"Redis at {self.where} refused our credentials ({e}): check the URL's password"
            ) from None
        except ResponseError as e:
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise RegistryUnavailable(
                    f"Redis at {self.where} needs a password: put it in the URL (redis://:PASSWORD@...)"
                ) from None
            raise
        except (RedisError, OSError) as e:
            raise RegistryUnavailable(f"Redis at {self.where} is unavailable ({what}: {e})") from None

    async def ping(self) -> None:
        await self._do("ping", self._r.ping())

    # -- the shared secret ------------------------------------------------------------------------------------
    async def cluster_secret(self, known: str | None = None) -> str:
        """The secret front doors show workers; `known` (this process's copy) puts it back after a Redis restart."""
        candidate = known or secrets.token_urlsafe(32)
        await self._do("secret", self._r.set(_k("secret"), candidate, nx=True))
        value = await self._do("secret", self._r.get(_k("secret")))
        return str(value)

    # -- workers --------------------------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo, ttl_s: float = TTL_S, secret: str | None = None) -> bool:
        """Write the worker's key (expiring after ttl_s) and register it; True when it had been reaped meanwhile
        (its calls are already recorded `worker_lost`: the caller must end them). The tombstone is consumed.
        `secret`: the cluster's, put back should Redis have restarted empty (front doors then still match)."""
        pipe = self._r.pipeline(transaction=True)
        if secret is not None:
            pipe.set(_k("secret"), secret, nx=True)
        pipe.set(_k("worker", info.id), info.to_json(), px=int(ttl_s * 1000))
        pipe.sadd(_k("workers"), info.id)
        pipe.delete(_k("reaped", info.id))
        result = await self._do("heartbeat", pipe.execute())
        return bool(result[-1])

    async def deregister(self, worker_id: str) -> None:
        """A worker leaving on purpose (its calls are ended and recorded already)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.srem(_k("workers"), worker_id)
        pipe.delete(_k("worker", worker_id), _k("worker", worker_id, "calls"), batch_calls_key(worker_id))
        await self._do("deregister", pipe.execute())

    async def worker(self, worker_id: str) -> WorkerInfo | None:
        """A live worker (its heartbeat key has not expired), or None."""
        text = await self._do("worker", self._r.get(_k("worker", worker_id)))
        return WorkerInfo.from_json(text) if text else None

    async def workers(self) -> list[WorkerInfo]:
        """Every live worker, by id."""
        ids = sorted(await self._do("workers", self._r.smembers(_k("workers"))))
        if not ids:
            return []
        texts = await self._do("workers", self._r.mget([_k("worker", i) for i in ids]))
        return [WorkerInfo.from_json(t) for t in texts if t]

    async def loads(self, worker_ids: list[str]) -> dict[str, int]:
        """Each worker's live calls now (fresher than its heartbeat's count: a call placed a moment ago counts),
        the batch calls it runs for the jobs stream included."""
        pipe = self._r.pipeline(transaction=False)
        for i in worker_ids:
            pipe.scard(_k("worker", i, "calls"))
            pipe.scard(batch_calls_key(i))
        counts = await self._do("loads", pipe.execute())
        return {i: int(counts[2 * n]) + int(counts[2 * n + 1]) for n, i in enumerate(worker_ids)}

    # -- calls ----------------------------------------------------------------------------------------------
    async def put_new_call(self, worker_id: str, row: Mapping[str, Any]) -> None:
        """The record of a call just placed, written by the front door before it answers the client, unless its
        worker has written it already (the worker's is as new or newer: it never goes back to an older state)."""
        call_id = str(row["id"])
        record = json.dumps({**row, "worker": worker_id}, default=str)
        created = float(row.get("created_at") or time.time())
        keys = [_k("call", call_id), _k("calls"), _k("worker", worker_id, "calls")]
        await self._do("put call", self._r.eval(_PUT_NEW_CALL, 3, *keys, record, created, call_id))

    async def put_calls(self, worker_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write call records of `worker_id` (each the API's list row); live ones count in its load."""
        if not rows:
            return
        pipe = self._r.pipeline(transaction=True)
        for row in rows:
            call_id = str(row["id"])
            record = {**row, "worker": worker_id}
            live = record.get("state") != "ended"
            pipe.set(_k("call", call_id), json.dumps(record, default=str), ex=None if live else ENDED_RECORD_TTL_S)
            pipe.zadd(_k("calls"), {call_id: float(record.get("created_at") or time.time())})
            if live:
                pipe.sadd(_k("worker", worker_id, "calls"), call_id)
            else:
                pipe.srem(_k("worker", worker_id, "calls"), call_id)
        pipe.zremrangebyrank(_k("calls"), 0, -MAX_LISTED - 1)
        await self._do("put calls", pipe.execute())

    async def call(self, call_id: str) -> dict[str, Any] | None:
        text = await self._do("call", self._r.get(_k("call", call_id)))
        return cast(dict[str, Any], json.loads(text)) if text else None

    async def calls(self, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
        """The newest `limit` call records, newest first."""
        ids = await self._do("calls", self._r.zrevrange(_k("calls"), 0, limit - 1))
        if not ids:
            return []
        texts = await self._do("calls", self._r.mget([_k("call", i) for i in ids]))
        return [json.loads(t) for t in texts if t]

    # -- failure ----------------------------------------------------------------------------------------------
    async def reap(self, now: float | None = None) -> list[str]:
        """Declare lost every registered worker whose heartbeat has expired, ending its live calls' records with
        `worker_lost`; returns the ids this caller reaped (another reaper's are not repeated)."""
        ids = sorted(await self._do("reap", self._r.smembers(_k("workers"))))
        if not ids:
            return []
        alive = await self._do("reap", self._r.mget([_k("worker", i) for i in ids]))
        reaped = []
        for worker_id, key in zip(ids, alive, strict=True):
            if key is not None:
                continue
            if not await self._do("reap", self._r.srem(_k("workers"), worker_id)):
                continue  # another process got there first
            await self._do("reap", self._r.set(_k("reaped", worker_id), "1", ex=REAPED_TTL_S))
            lost = await self._mark_lost(worker_id, time.time() if now is None else now)
            log.warning("worker %s stopped heartbeating: %d call(s) recorded worker_lost", worker_id, lost)
            reaped.append(worker_id)
        return reaped

    async def _mark_lost(self, worker_id: str, now: float) -> int:
        calls_key = _k("worker", worker_id, "calls")
        ids = sorted(await self._do("reap", self._r.smembers(calls_key)))
        rows = []
        for call_id in ids:
            record = await self.call(call_id)
            if record is None or record.get("state") == "ended":
                continue
            created = float(record.get("created_at") or now)
            record.update(
                state="ended",
                end_reason="worker_lost",
                ended_by="server",
                error=f"worker {worker_id} stopped answering (no heartbeat for {TTL_S:g} s); the call was lost with it",
                duration_s=round(max(0.0, now - created), 3),
            )
            rows.append(record)
        await self.put_calls(worker_id, rows)
        # Its batch calls are the jobs stream's to run again (their leases run out); they no longer load it.
        await self._do("reap", self._r.delete(calls_key, batch_calls_key(worker_id)))
        return len(rows)
