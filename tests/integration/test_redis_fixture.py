"""The suite's redis-server is real, password-protected and reachable only with the password from its URL."""

from __future__ import annotations

from typing import Any

import pytest
import redis


def test_redis_server_answers_with_its_password_only(redis_server: Any) -> None:
    client = redis_server.client()
    client.set("voicebridge:test", "ok")
    assert client.get("voicebridge:test") == "ok"
    anonymous = redis.Redis(host=redis_server.host, port=redis_server.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get("voicebridge:test")
