"""The demo shop: orders and refunds in a real SQLite database, exposed to the CS agent as two tools.

`build_tools(data_dir)` is the scenario's tool factory (late_order.toml names it): it seeds
`data_dir/shop.sqlite` when it does not exist yet and returns a registry with `lookup_order` and
`issue_refund`. Every tool call opens its own connection: tools run in worker threads, and sqlite3
connections must not cross threads.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from voicebridge.tools import ToolRegistry

DB_NAME = "shop.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    item TEXT NOT NULL,
    status TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    ordered_on TEXT NOT NULL,
    expected_on TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    refund_id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE REFERENCES orders(order_id),
    amount_cents INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

_SEED = [
    ("4217", "Sam Lee", "electric kettle", "delayed", 4200, "2026-11-10", "2026-11-17"),
    ("4218", "Sam Lee", "tea towels (set of 3)", "delivered", 1250, "2026-11-10", "2026-11-14"),
    ("5120", "Ana Ruiz", "coffee grinder", "shipped", 6499, "2026-11-20", "2026-11-27"),
]


def seed_database(db_path: Path) -> None:
    """Create the tables and the demo orders (idempotent: existing rows are kept)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db_path) as db:
        db.executescript(_SCHEMA)
        db.executemany("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", _SEED)


def _money(cents: int) -> int | float:
    # A whole amount stays an int (42, not 42.0): the agent says "forty-two dollars", not "... point zero".
    return cents // 100 if cents % 100 == 0 else cents / 100


class Shop:
    """The shop's operations on one database file."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=5.0)
        db.row_factory = sqlite3.Row
        return db

    def lookup_order(self, order_id: str) -> dict[str, Any]:
        """Look up an order by its number: item, status, amount and dates.

        Args:
            order_id: The order number the customer gives, digits only, for example "4217".
        """
        order_id = order_id.strip()
        with self._connect() as db:
            row = db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            refund = db.execute("SELECT amount_cents FROM refunds WHERE order_id = ?", (order_id,)).fetchone()
        if row is None:
            raise LookupError(f"there is no order {order_id}")
        return {
            "order_id": row["order_id"],
            "customer": row["customer"],
            "item": row["item"],
            "status": row["status"],
            "amount": _money(row["amount_cents"]),
            "ordered_on": row["ordered_on"],
            "expected_on": row["expected_on"],
            "refunded": refund is not None,
        }

    def issue_refund(self, order_id: str, reason: str) -> dict[str, Any]:
        """Refund an order in full. Only orders that are delayed or lost can be refunded, and only once.

        Args:
            order_id: The order number, digits only, for example "4217".
            reason: Why the order is refunded, in a few words, for example "late delivery".
        """
        order_id = order_id.strip()
        if not reason.strip():
            raise ValueError("a refund needs a reason")
        with self._connect() as db:
            row = db.execute(
                "SELECT status, amount_cents FROM orders WHERE order_id = ?", (order_id,)
            ).fetchone()
            if row is None:
                raise LookupError(f"there is no order {order_id}")
            if row["status"] == "refunded":
                raise ValueError(f"order {order_id} has already been refunded")
            if row["status"] not in ("delayed", "lost"):
                raise ValueError(
                    f"order {order_id} is {row['status']}; only delayed or lost orders are refunded"
                )
            try:
                cur = db.execute(
                    "INSERT INTO refunds (order_id, amount_cents, reason, created_at) VALUES (?, ?, ?, ?)",
                    (order_id, row["amount_cents"], reason.strip(), time.time()),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"order {order_id} has already been refunded") from None
            db.execute("UPDATE orders SET status = 'refunded' WHERE order_id = ?", (order_id,))
        return {
            "order_id": order_id,
            "refund_id": cur.lastrowid,
            "amount": _money(row["amount_cents"]),
            "currency": "USD",
            "status": "refunded",
        }

    def refunds(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM refunds ORDER BY refund_id")]


def build_tools(data_dir: Path, timeout_s: float = 10.0) -> ToolRegistry:
    """The scenario's tool factory: a registry over `data_dir/shop.sqlite` (seeded on first use)."""
    db_path = Path(data_dir) / DB_NAME
    seed_database(db_path)
    shop = Shop(db_path)
    registry = ToolRegistry(timeout_s=timeout_s)
    registry.register(shop.lookup_order)
    registry.register(shop.issue_refund)
    return registry
