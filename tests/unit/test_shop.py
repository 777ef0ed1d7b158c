"""The demo shop's tools on a real SQLite database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from voicebridge.scenarios.model import load_scenario
from voicebridge.scenarios.shop import DB_NAME, Shop, build_tools

pytestmark = pytest.mark.unit


async def test_lookup_and_refund_order_4217(tmp_path: Path) -> None:
    reg = build_tools(tmp_path)
    assert sorted(reg.names()) == ["issue_refund", "lookup_order"]
    r = await reg.run("lookup_order", '{"order_id": "4217"}')
    order = json.loads(r.output)
    assert r.ok and order["status"] == "delayed" and order["item"] == "electric kettle"
    assert order["order_id"] == "4217" and order["amount"] == 42 and isinstance(order["amount"], int)
    r = await reg.run("issue_refund", '{"order_id": "4217", "reason": "late delivery"}')
    refund = json.loads(r.output)
    assert r.ok and refund["amount"] == 42 and refund["order_id"] == "4217"
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        rows = db.execute("SELECT order_id, amount_cents, reason FROM refunds").fetchall()
        status = db.execute("SELECT status FROM orders WHERE order_id = '4217'").fetchone()[0]
    assert rows == [("4217", 4200, "late delivery")] and status == "refunded"


async def test_refund_rules_are_errors_the_agent_can_explain(tmp_path: Path) -> None:
    reg = build_tools(tmp_path)
    assert (await reg.run("issue_refund", '{"order_id": "4217", "reason": "late"}')).ok
    again = await reg.run("issue_refund", '{"order_id": "4217", "reason": "late"}')
    assert not again.ok and "already" in json.loads(again.output)["error"]["message"]
    delivered = await reg.run("issue_refund", '{"order_id": "4218", "reason": "changed my mind"}')
    assert not delivered.ok and "delivered" in json.loads(delivered.output)["error"]["message"]
    missing = await reg.run("lookup_order", '{"order_id": "9999"}')
    assert not missing.ok and "no order 9999" in json.loads(missing.output)["error"]["message"]
    assert len(Shop(tmp_path / DB_NAME).refunds()) == 1


def test_seeding_is_idempotent_and_the_demo_scenario_names_the_factory(tmp_path: Path) -> None:
    build_tools(tmp_path)
    build_tools(tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT count(*) FROM orders WHERE order_id = '4217'").fetchone()[0] == 1
    assert load_scenario("late_order").tools == "voicebridge.scenarios.shop:build_tools"
