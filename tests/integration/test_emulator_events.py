"""Every GA client event over the data channel, valid and invalid; many calls at once; no leaks."""

from __future__ import annotations

import asyncio
import gc
import os
import time

import pytest

from tests.integration.conftest import Client, cs_session
from voicebridge.emulator import recognition
from voicebridge.emulator.server import Emulator

pytestmark = pytest.mark.integration


async def _error(client: Client, event: dict[str, object] | str, event_id: str) -> dict[str, object]:
    start = len(client.events)
    client.channel.send(event if isinstance(event, str) else __import__("json").dumps(event))
    err = await client.wait_for("error", start=start)
    assert err["error"]["event_id"] == event_id  # type: ignore[index]
    return err["error"]  # type: ignore[return-value]


async def test_client_events_and_their_errors(emulator: Emulator, client: Client) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")

    client.send(
        {
            "type": "session.update",
            "event_id": "u1",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}},
            },
        }
    )
    updated = await client.wait_for("session.updated")
    assert updated["session"]["instructions"] == "Be brief."
    td = updated["session"]["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 700 and td["threshold"] == 0.5  # merged, not replaced
    assert updated["session"]["audio"]["input"]["transcription"] is not None

    client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "id": "item_sys",
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "Today is Tuesday."}],
            },
        }
    )
    added = await client.wait_for("conversation.item.added")
    assert added["item"]["id"] == "item_sys" and added["previous_item_id"] is None
    await client.wait_for("conversation.item.done")
    client.send({"type": "conversation.item.retrieve", "item_id": "item_sys"})
    got = await client.wait_for("conversation.item.retrieved")
    assert got["item"]["content"][0]["text"] == "Today is Tuesday."
    client.send({"type": "conversation.item.delete", "item_id": "item_sys"})
    assert (await client.wait_for("conversation.item.deleted"))["item_id"] == "item_sys"

    client.send({"type": "input_audio_buffer.clear"})
    await client.wait_for("input_audio_buffer.cleared")

    err = await _error(client, "{not json", None)  # type: ignore[arg-type]
    assert err["code"] == "invalid_json"
    err = await _error(client, {"type": "session.create", "event_id": "e1"}, "e1")
    assert err["param"] == "type"
    err = await _error(
        client,
        {
            "type": "session.update",
            "event_id": "e2",
            "session": {"type": "realtime", "modalities": ["audio"]},
        },
        "e2",
    )
    assert err["code"] == "unknown_parameter" and err["param"] == "session.modalities"
    err = await _error(
        client,
        {
            "type": "conversation.item.create",
            "event_id": "e3",
            "item": {"type": "message", "role": "user", "content": [], "colour": 1},
        },
        "e3",
    )
    assert err["param"] == "item.colour"
    err = await _error(
        client,
        {
            "type": "conversation.item.create",
            "event_id": "e4",
            "item": {"type": "function_call_output", "call_id": "call_x", "output": "{}"},
        },
        "e4",
    )
    assert err["param"] == "item.call_id"
    err = await _error(
        client, {"type": "conversation.item.retrieve", "event_id": "e5", "item_id": "nope"}, "e5"
    )
    assert err["code"] == "item_retrieve_invalid_item_id"
    assert err["message"] == "Error retrieving item: the item with id 'nope' does not exist."
    err = await _error(
        client,
        {
            "type": "conversation.item.truncate",
            "event_id": "e6",
            "item_id": "nope",
            "content_index": 0,
            "audio_end_ms": 10,
        },
        "e6",
    )
    assert err["code"] == "item_truncate_invalid_item_id"
    err = await _error(client, {"type": "response.cancel", "event_id": "e7"}, "e7")
    assert err["code"] == "response_cancel_not_active"
    err = await _error(client, {"type": "input_audio_buffer.commit", "event_id": "e8"}, "e8")
    assert err["code"] == "input_audio_buffer_commit_empty"
    err = await _error(client, {"type": "input_audio_buffer.append", "event_id": "e9", "audio": "%%%"}, "e9")
    assert err["param"] == "audio"
    err = await _error(client, {"type": "conversation.item.delete", "event_id": "e10"}, "e10")
    assert err["code"] == "missing_required_parameter" and err["param"] == "item_id"
    err = await _error(client, {"type": "conversation.item.delete", "event_id": "e11", "item_id": "nope"}, "e11")
    assert err["code"] == "item_delete_invalid_item_id"
    err = await _error(
        client,
        {
            "type": "conversation.item.create",
            "event_id": "e12",
            "previous_item_id": "nope",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        },
        "e12",
    )
    assert err["code"] == "item_create_invalid_previous_item_id"


async def test_cancel_and_clear_and_truncate_a_response(emulator: Emulator, client: Client) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    client.send({"type": "response.create", "response": {"metadata": {"turn": "1"}}})
    client.send({"type": "response.cancel"})
    done = await client.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert done["response"]["metadata"] == {"turn": "1"}

    start = len(client.events)
    client.send({"type": "response.create"})
    await client.wait_for("output_audio_buffer.started", start=start)
    item = (await client.wait_for("response.done", start=start))["response"]["output"][0]
    client.send({"type": "output_audio_buffer.clear"})
    await client.wait_for("output_audio_buffer.cleared", start=start)
    client.send(
        {"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0, "audio_end_ms": 100}
    )
    truncated = await client.wait_for("conversation.item.truncated", start=start)
    assert truncated["audio_end_ms"] == 100
    err = await _error(
        client,
        {
            "type": "conversation.item.truncate",
            "event_id": "t2",
            "item_id": item["id"],
            "content_index": 0,
            "audio_end_ms": 10**7,
        },
        "t2",
    )
    assert err["param"] == "audio_end_ms"
    assert err["message"].startswith("Audio content of ")
    assert err["message"].endswith("ms is already shorter than 10000000ms")


async def test_ten_concurrent_calls_each_get_their_own_greeting(emulator: Emulator) -> None:
    clients = [Client() for _ in range(10)]
    try:
        await asyncio.gather(*(c.connect(emulator.base_url, cs_session()) for c in clients))
        assert len(emulator.sessions) == 10
        await asyncio.gather(*(c.wait_for("session.created") for c in clients))
        for c in clients:
            c.send({"type": "response.create"})
        await asyncio.gather(*(c.wait_for("output_audio_buffer.started") for c in clients))
        await asyncio.gather(*(c.wait_loud(25) for c in clients))
        ids = {(await c.wait_for("response.done"))["response"]["id"] for c in clients}
        assert len(ids) == 10
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_hundreds_of_calls_leave_no_tasks_or_fds_behind(emulator: Emulator) -> None:
    async def one_call() -> tuple[str, ...]:
        c = Client()
        try:
            await c.connect(emulator.base_url, cs_session())
            await c.wait_for("session.created")
            session = emulator.sessions[c.call_id]
        finally:
            await c.close()
        await asyncio.wait_for(session.closed.wait(), 10)
        return tuple(session.script.phrases)

    phrases = await one_call()  # warm-up: first-use caches and the thread pool
    # and the recognition workers (their pipes): a session closed before its grammar load is done may leave them
    # to start during a later call, which would count as a leak below.
    await recognition.shared().warm(phrases)
    gc.collect()
    tasks0 = len(asyncio.all_tasks())
    fds0 = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        await one_call()
    assert not emulator.sessions
    # Closing transports let go of their tasks and sockets a few loop turns later, and nothing signals when:
    # poll, bounded by a deadline (as the soak's settle() does), not by a count that a loaded machine outruns.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        gc.collect()
        if len(asyncio.all_tasks()) <= tasks0 + 2 and len(os.listdir("/proc/self/fd")) <= fds0 + 4:
            break
        await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= tasks0 + 2
    assert len(os.listdir("/proc/self/fd")) <= fds0 + 4
