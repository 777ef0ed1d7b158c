"""Join tokens: signed, bound to one call and one role, expiring; every refusal says why (401 vs 403)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebridge.signaling.tokens import TokenError, TokenSigner, bearer

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def refusal(signer: TokenSigner, token: str | None, call_id: str = "call_a", role: str | None = None) -> TokenError:
    with pytest.raises(TokenError) as info:
        signer.verify(token, call_id, role)
    return info.value


def test_a_token_grants_its_call_and_role_until_it_expires() -> None:
    clock = Clock()
    signer = TokenSigner(clock=clock)
    token, grant = signer.issue("call_a", "listen", ttl_s=60)
    assert grant.expires_at == clock.now + 60
    assert signer.verify(token, "call_a") == grant
    assert signer.verify(token, "call_a", "listen").role == "listen"
    assert all(c.isalnum() or c in "-_." for c in token)  # URL-safe as it is
    clock.now += 59.9
    assert signer.verify(token, "call_a").call_id == "call_a"
    clock.now += 0.1
    err = refusal(signer, token)
    assert (err.status, err.kind) == (401, "token_expired")
    assert "expired" in err.message


def test_default_ttl_is_ten_minutes_and_configurable() -> None:
    clock = Clock()
    assert TokenSigner(clock=clock).issue("c", "listen")[1].expires_at == clock.now + 600
    assert TokenSigner(clock=clock, default_ttl_s=30).issue("c", "takeover")[1].expires_at == clock.now + 30


def test_other_call_and_other_role_are_403() -> None:
    signer = TokenSigner()
    token, _ = signer.issue("call_a", "listen")
    err = refusal(signer, token, "call_b")
    assert (err.status, err.kind) == (403, "wrong_call")
    err = refusal(signer, token, "call_a", "takeover")
    assert (err.status, err.kind) == (403, "wrong_role")
    assert "'listen' token" in err.message


def test_forged_garbled_and_missing_tokens_are_401() -> None:
    signer = TokenSigner()
    token, _ = signer.issue("call_a", "listen")
    payload, sig = token.split(".")
    # Same signature, payload rewritten to claim take-over: the signature no longer matches.
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["r"] = "takeover"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode() + "." + sig
    assert refusal(signer, forged).kind == "invalid_token"
    assert refusal(signer, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")).kind == "invalid_token"
    assert refusal(TokenSigner(), token).kind == "invalid_token"  # another process's key
    for bad in ("", None):
        err = refusal(signer, bad)
        assert (err.status, err.kind) == (401, "missing_token")
    for bad in ("nodot", "a.b.c", "x" * 5000):
        err = refusal(signer, bad)
        assert (err.status, err.kind) == (401, "invalid_token")


def test_shared_secret_lets_two_signers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEBRIDGE_TOKEN_SECRET", "a shared secret of enough length")
    token, _ = TokenSigner.from_env().issue("call_a", "takeover")
    assert TokenSigner.from_env().verify(token, "call_a", "takeover").role == "takeover"
    monkeypatch.setenv("VOICEBRIDGE_TOKEN_SECRET", "short")
    with pytest.raises(ValueError, match="at least 16"):
        TokenSigner.from_env()


def test_default_ttl_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEBRIDGE_TOKEN_TTL_S", "90")
    clock = Clock()
    assert TokenSigner.from_env(clock=clock).issue("c", "listen")[1].expires_at == clock.now + 90
    for bad in ("soon", "0"):
        monkeypatch.setenv("VOICEBRIDGE_TOKEN_TTL_S", bad)
        with pytest.raises(ValueError):
            TokenSigner.from_env()


def test_bad_issue_requests_are_refused() -> None:
    signer = TokenSigner()
    with pytest.raises(ValueError, match="role"):
        signer.issue("c", "admin")
    for ttl in (0, -5, 10**9):
        with pytest.raises(ValueError, match="ttl_s"):
            signer.issue("c", "listen", ttl)


def test_bearer_header() -> None:
    assert bearer("Bearer abc.def") == "abc.def"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer(None) is None
    assert bearer("Bearer") is None


@given(st.text(max_size=300))
def test_any_text_is_refused_with_a_token_error(text: str) -> None:
    signer = TokenSigner(secret=b"k" * 32)
    with pytest.raises(TokenError) as info:
        signer.verify(text, "call_a")
    assert info.value.status == 401
