"""The state of each worker of `voicebridge emulator --workers N`, as its parent sees it (workers.py writes it, the
workers read it for /readyz, /healthz and where to pass a new session on: group.py).

A table in the group's SQLite file (the one that holds the ephemeral keys, keys.py), so nothing else has to carry
it: the parent writes a row when a worker starts, serves, exits or is given up on; a worker reads them all.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from .keys import BUSY_TIMEOUT_S

STARTING = "starting"
SERVING = "serving"
RESTARTING = "restarting"  # it exited; the parent starts it again after a back-off
GAVE_UP = "gave_up"  # it failed to start too many times in a row: its sockets are closed, the others serve
STOPPING = "stopping"
_SCHEMA = """CREATE TABLE IF NOT EXISTS workers (
    idx INTEGER PRIMARY KEY, state TEXT NOT NULL, pid INTEGER NOT NULL, detail TEXT NOT NULL, since REAL NOT NULL)"""


@dataclass(frozen=True)
class WorkerState:
    index: int
    state: str
    pid: int
    detail: str  # why it is in that state, for a person ("exited with signal SIGKILL; next start in 0.5 s")
    since: float  # unix time

    def as_json(self) -> dict[str, object]:
        return {"index": self.index, "state": self.state, "pid": self.pid, "detail": self.detail,
                "since": round(self.since, 3)}  # fmt: skip


class Roster:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def set(self, index: int, state: str, pid: int = 0, detail: str = "") -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO workers (idx, state, pid, detail, since) VALUES (?, ?, ?, ?, ?)",
            (index, state, pid, detail, time.time()),
        )

    def all(self) -> list[WorkerState]:
        rows = self._db.execute("SELECT idx, state, pid, detail, since FROM workers ORDER BY idx").fetchall()
        return [WorkerState(int(r[0]), str(r[1]), int(r[2]), str(r[3]), float(r[4])) for r in rows]
