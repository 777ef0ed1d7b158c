"""Session context sync: a persona's system/user messages are added before the first turn, and acknowledged.

Each message is sent with `conversation.item.create` and an item id we choose; the call goes live only when
every one is acknowledged (`conversation.item.added`/`created` with that id, or an item with the same role and
text, for a server that assigns its own ids). An `error` naming one of our events fails the sync.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from voicebridge.realtime.leg import Leg
from voicebridge.scenarios.model import ContextMessage


class ContextError(RuntimeError):
    pass


def _item_text(item: dict[str, Any]) -> str:
    return "".join(str(c.get("text", "")) for c in item.get("content") or [] if isinstance(c, dict))


async def sync_context(leg: Leg, messages: tuple[ContextMessage, ...], timeout_s: float) -> int:
    """Send the messages and wait until all are acknowledged; returns how many were sent."""
    if not messages:
        return 0
    loop = asyncio.get_running_loop()
    pending: dict[str, ContextMessage] = {}
    event_ids: dict[str, str] = {}
    done: asyncio.Future[None] = loop.create_future()

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("conversation.item.added", "conversation.item.created"):
            item = event.get("item") or {}
            key = item.get("id")
            if key not in pending:  # a server that ignored our id: match on role and text instead
                key = next(
                    (
                        k
                        for k, m in pending.items()
                        if m.role == item.get("role") and m.text == _item_text(item)
                    ),
                    None,
                )
            if key is not None:
                pending.pop(key, None)
        elif kind == "error":
            err = event.get("error") or {}
            if err.get("event_id") in event_ids and not done.done():
                done.set_exception(
                    ContextError(
                        f"{leg.role} leg refused context message {event_ids[err['event_id']]}: "
                        f"{err.get('message')}"
                    )
                )
        if not pending and not done.done():
            done.set_result(None)

    leg.on("server_event", on_event)
    try:
        for i, m in enumerate(messages):
            item_id = f"ctx_{secrets.token_hex(6)}_{i}"
            pending[item_id] = m
            eid = leg.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "id": item_id,
                        "type": "message",
                        "role": m.role,
                        "content": [{"type": "input_text", "text": m.text}],
                    },
                }
            )
            event_ids[eid] = f"#{i} ({m.role})"
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            raise ContextError(
                f"{leg.role} leg: {len(pending)} of {len(messages)} context message(s) not "
                f"acknowledged within {timeout_s:g} s"
            ) from None
    finally:
        leg.remove_listener("server_event", on_event)
    return len(messages)
