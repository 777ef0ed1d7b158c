"""Join tokens: short-lived, HMAC-SHA256-signed, bound to one call and one role (`listen` or `takeover`).

A token is ``<payload>.<signature>``, both base64url without padding; the payload is compact JSON
``{"c": call_id, "r": role, "e": expires_at (unix s), "n": nonce}``. Nothing in it is secret (the browser may
read it); what matters is that only this server can make one. The key is per process (random) unless
VOICEBRIDGE_TOKEN_SECRET is set, so several server processes can share tokens; VOICEBRIDGE_TOKEN_TTL_S sets the
default lifetime (10 minutes), a request may ask for less or more (up to 24 h).

``verify`` raises TokenError with the HTTP status it deserves: 401 when the token itself is no good
(missing, malformed, bad signature, expired), 403 when it is a good token for something else (another call,
another role).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["listen", "takeover"]
ROLES: tuple[Role, ...] = ("listen", "takeover")
DEFAULT_TTL_S = 600.0
MAX_TTL_S = 24 * 3600.0
MIN_TTL_S = 1.0
MAX_TOKEN_CHARS = 1024  # a real token is ~150 characters; anything far bigger is not ours
SECRET_ENV = "VOICEBRIDGE_TOKEN_SECRET"
TTL_ENV = "VOICEBRIDGE_TOKEN_TTL_S"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.-]+")


class TokenError(Exception):
    """A join token was refused; ``status`` is 401 (not a valid token) or 403 (valid, but not for this)."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class Grant:
    """What a valid token allows."""

    call_id: str
    role: Role
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(
        self,
        secret: bytes | None = None,
        *,
        default_ttl_s: float = DEFAULT_TTL_S,
        max_ttl_s: float = MAX_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is not None and len(secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        if not MIN_TTL_S <= default_ttl_s <= max_ttl_s:
            raise ValueError(f"default_ttl_s must be between {MIN_TTL_S:g} and max_ttl_s ({max_ttl_s:g})")
        self._key = secret if secret is not None else secrets.token_bytes(32)
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        self._clock = clock

    @classmethod
    def from_env(cls, **kw: Any) -> TokenSigner:
        """VOICEBRIDGE_TOKEN_SECRET if set (shared by several processes), else a fresh random key;
        VOICEBRIDGE_TOKEN_TTL_S (seconds) for the default lifetime, else 10 minutes."""
        env = os.environ.get(SECRET_ENV, "")
        if env and len(env.encode()) < 16:
            raise ValueError(f"{SECRET_ENV} must be at least 16 characters long")
        ttl = os.environ.get(TTL_ENV, "").strip()
        if ttl:
            try:
                kw.setdefault("default_ttl_s", float(ttl))
            except ValueError:
                raise ValueError(f"{TTL_ENV} must be a number of seconds, got {ttl[:40]!r}") from None
        return cls(env.encode() if env else None, **kw)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, call_id: str, role: str, ttl_s: float | None = None) -> tuple[str, Grant]:
        """A new token for `role` on `call_id`, valid for ttl_s seconds (default default_ttl_s)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
        ttl = self.default_ttl_s if ttl_s is None else float(ttl_s)
        if not MIN_TTL_S <= ttl <= self.max_ttl_s:
            raise ValueError(f"ttl_s must be between {MIN_TTL_S:g} and {self.max_ttl_s:g} seconds, got {ttl:g}")
        grant = Grant(call_id, role, round(self._clock() + ttl, 3))
        body = {"c": call_id, "r": role, "e": grant.expires_at, "n": secrets.token_hex(6)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", grant

    def verify(self, token: str | None, call_id: str, role: str | None = None) -> Grant:
        """The grant of a token for `call_id` (and `role`, when given); raises TokenError saying why not."""
        if not token:
            raise TokenError(401, "a join token is required (Authorization: Bearer <token>)", "missing_token")
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1 or not _TOKEN_CHARS.fullmatch(token):
            raise TokenError(401, "the join token is malformed (expected <payload>.<signature>)", "invalid_token")
        payload, signature = token.split(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            raise TokenError(
                401, "the join token's signature does not match (not issued by this server)", "invalid_token"
            )
        try:
            body = json.loads(_unb64(payload))
            grant = Grant(str(body["c"]), body["r"], float(body["e"]))
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise TokenError(401, "the join token's payload is unreadable", "invalid_token") from None
        if grant.role not in ROLES:
            raise TokenError(401, f"the join token has an unknown role {grant.role!r}", "invalid_token")
        now = self._clock()
        if now >= grant.expires_at:
            raise TokenError(
                401, f"the join token expired {now - grant.expires_at:.0f} s ago; ask for a new one", "token_expired"
            )
        if grant.call_id != call_id:
            raise TokenError(403, "the join token is for another call", "wrong_call")
        if role is not None and grant.role != role:
            raise TokenError(
                403, f"this needs a {role!r} token; the token given is a {grant.role!r} token", "wrong_role"
            )
        return grant


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (None when absent or another scheme)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
