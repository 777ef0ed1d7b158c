"""Shared fixtures: loopback-only ICE (no STUN, 127.0.0.1 candidates) and SDK validators for every event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter

from voicebridge.media.loopback import loopback_only, set_loopback_only

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeClientEvent, Field(discriminator="type")])


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    """Real peers connect over 127.0.0.1 only, in milliseconds, and never touch another interface."""
    before = loopback_only()
    set_loopback_only(True)
    yield
    set_loopback_only(before)


def validate_server_event(event: dict[str, Any]) -> None:
    SERVER_EVENT.validate_python(event)


def validate_client_event(event: dict[str, Any]) -> None:
    CLIENT_EVENT.validate_python(event)
