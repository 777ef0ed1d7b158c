"""Who may call the emulator: any API key `sk-...` (it has no accounts, so the shape is what is checked) and the
ephemeral keys `ek_...` it mints at POST /v1/realtime/client_secrets, each good for one call until it expires.

Errors are the real API's: 401 `invalid_api_key` with its messages, and 400 for a lifetime out of its bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import events as ev
from .schema import ApiError

SECRET_TTL_DEFAULT_S = 600
SECRET_TTL_RANGE_S = (10, 7200)  # the real API's bounds for expires_after.seconds


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


@dataclass
class ClientSecret:
    value: str
    expires_at: int
    session: dict[str, Any]
    owner: str = field(default="", repr=False)  # the API key that minted it: its sessions count for that key
    used: bool = False


class Keys:
    def __init__(self, tag: Callable[[str], str] | None = None) -> None:
        """`tag`: what marks a minted key as this process's (a worker of a group: group.py), if anything."""
        self.secrets: dict[str, ClientSecret] = {}  # the ephemeral keys minted, by value
        self._tag = tag

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
        """The ephemeral key `key`, live and unused; the caller marks it `used` once the call is made."""
        secret = self.secrets.get(key)
        now = time.time()
        for value in [v for v, s in self.secrets.items() if s.expires_at < now]:
            del self.secrets[value]  # keep the store bounded
        if secret is None or secret.expires_at < now:
            raise ApiError(401, "Ephemeral key is expired or unknown.", code="invalid_api_key")
        if secret.used:
            raise ApiError(401, "Ephemeral key has already been used for a call.", code="invalid_api_key")
        return secret

    def mint(self, seconds: int, session: dict[str, Any], owner: str) -> ClientSecret:
        """A new ephemeral key for `session`, living `seconds` (check_ttl first), counted for `owner`."""
        value = ev.new_id("ek", 32)
        if self._tag is not None:
            value = self._tag(value)
        secret = ClientSecret(value, int(time.time()) + seconds, session, owner=owner)
        self.secrets[secret.value] = secret
        return secret
