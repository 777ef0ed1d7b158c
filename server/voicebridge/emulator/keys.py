"""Who may call the emulator: any API key `sk-...` (it has no accounts, so the shape is what is checked) and the
ephemeral keys `ek_...` it mints at POST /v1/realtime/client_secrets, each good for one call until it expires.

Minted keys are kept in SQLite: in memory for an emulator alone, in the group's file for the workers of
`voicebridge emulator --workers N` (workers.py makes it, group.py passes its path), so any worker can take a call
made with a key another worker minted, a worker that is restarted still knows the keys (as the real API's keys
do not depend on which of its servers minted them), and a key is spent once across the group (one conditional
UPDATE). The store holds a SHA-256 digest of each key, never the key itself, and a digest of the API key that
minted it (its sessions count for that key, limits.py): the file never holds a usable key.

Errors are the real API's: 401 `invalid_api_key` with its messages, and 400 for a lifetime out of its bounds.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import events as ev
from .schema import ApiError

SECRET_TTL_DEFAULT_S = 600
SECRET_TTL_RANGE_S = (10, 7200)  # the real API's bounds for expires_after.seconds
MEMORY = ":memory:"
BUSY_TIMEOUT_S = 5.0  # another worker writing the group's file at the same moment (a few microseconds)
_SCHEMA = """CREATE TABLE IF NOT EXISTS secrets (
    digest TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, owner TEXT NOT NULL, session TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS secrets_expiry ON secrets (expires_at)"""


def check_ttl(seconds: int) -> None:
    """An ephemeral key's lifetime (`expires_after.seconds`) within the API's bounds."""
    lo, hi = SECRET_TTL_RANGE_S
    if not lo <= seconds <= hi:
        raise ApiError(
            400,
            f"Invalid 'expires_after.seconds': {seconds}; expected {lo} to {hi}.",
            code="invalid_value",
            param="expires_after.seconds",
        )


def digest(key: str) -> str:
    """What stands for a key wherever it is kept: its SHA-256 (the key cannot be read back from it)."""
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(api_key: str) -> str:
    """Who a session counts for (limits.py): an API key's digest, the same for its `ek_` keys' sessions."""
    return digest(api_key)


@dataclass
class ClientSecret:
    digest: str
    expires_at: int
    session: dict[str, Any]
    owner: str  # owner_of the API key that minted it: its sessions count for that key
    value: str = ""  # the key itself: only in the answer to the mint, never stored


def connect(path: str) -> sqlite3.Connection:
    """A connection to the key store at `path` (MEMORY: this connection's own), its table made if missing."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)  # autocommit: one statement each
    if path != MEMORY:
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer in another worker
        db.execute("PRAGMA synchronous=OFF")  # a worker that dies has handed its writes to the OS already
    db.executescript(_SCHEMA)
    return db


class Keys:
    def __init__(self, store: str = MEMORY, clock: Callable[[], float] = time.time) -> None:
        """`store`: the SQLite file shared by a group's workers, or MEMORY; `clock`: what expiry is judged by."""
        self._db = connect(store)
        self.clock = clock

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        """Ephemeral keys minted and not expired (spent or not)."""
        row = self._db.execute("SELECT count(*) FROM secrets WHERE expires_at >= ?", (int(self.clock()),)).fetchone()
        return int(row[0])

    def bearer(self, request: web.Request) -> str:
        """The key of `Authorization: Bearer ...`: an API key or an ephemeral key (not yet checked as one)."""
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not (key.startswith("sk-") or key.startswith("ek_")):
            shown = (key[:3] + "*" * 4 + key[-4:]) if len(key) > 8 else "(hidden)"
            raise ApiError(
                401,
                f"Incorrect API key provided: {shown}. The emulator accepts any 'Bearer sk-...' key "
                "or an ephemeral 'ek_...' key it issued.",
                code="invalid_api_key",
            )
        return key

    def api_key(self, request: web.Request) -> str:
        """The request's API key: an ephemeral key can only create a call (hang-up, secrets, sideband need this)."""
        key = self.bearer(request)
        if key.startswith("ek_"):
            raise ApiError(
                401,
                "Ephemeral keys can only create a call; use an API key for this endpoint.",
                code="invalid_api_key",
            )
        return key

    def redeem(self, key: str) -> ClientSecret:
        """The ephemeral key `key`, live and unused; `spend` it once the call is counted."""
        now, key_digest = int(self.clock()), digest(key)
        self._db.execute("DELETE FROM secrets WHERE expires_at < ?", (now,))  # keep the store bounded
        row = self._db.execute(
            "SELECT expires_at, owner, session, used FROM secrets WHERE digest = ?", (key_digest,)
        ).fetchone()
        if row is None:
            raise ApiError(401, "Ephemeral key is expired or unknown.", code="invalid_api_key")
        if row[3]:
            raise _used()
        return ClientSecret(key_digest, int(row[0]), json.loads(row[2]), owner=str(row[1]))

    def spend(self, secret: ClientSecret) -> None:
        """Mark the key used: exactly one call gets it, whichever worker made it (401 for the others)."""
        done = self._db.execute(
            "UPDATE secrets SET used = 1 WHERE digest = ? AND used = 0", (secret.digest,)
        )
        if done.rowcount != 1:
            raise _used()

    def mint(self, seconds: int, session: dict[str, Any], api_key: str) -> ClientSecret:
        """A new ephemeral key for `session`, living `seconds` (check_ttl first), counted for `api_key`."""
        value = ev.new_id("ek", 32)
        secret = ClientSecret(digest(value), int(self.clock()) + seconds, session, owner_of(api_key), value)
        self._db.execute(
            "INSERT INTO secrets (digest, expires_at, owner, session) VALUES (?, ?, ?, ?)",
            (secret.digest, secret.expires_at, secret.owner, json.dumps(session, separators=(",", ":"))),
        )
        return secret


def _used() -> ApiError:
    return ApiError(401, "Ephemeral key has already been used for a call.", code="invalid_api_key")
