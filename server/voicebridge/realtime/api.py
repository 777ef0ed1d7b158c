"""REST calls of the Realtime API through the openai SDK: create a WebRTC call, hang it up.

Only `base_url` differs between OpenAI and the emulator. SDK errors become `LegError`s that say what failed,
the HTTP status and the API's own error message; the key never appears in them.
"""

from __future__ import annotations

from typing import Any, cast

import openai
from openai import AsyncOpenAI

from .http import http_client

REFUSED_STATUSES = (429, 503)  # "not now": a rate limit or a server at capacity; the same request may pass later


class LegError(RuntimeError):
    """A Realtime leg could not be set up or failed; the message says which step and why. `timed_out`: the
    server did not answer in time (it may still have acted on the request). `status`: the HTTP status of a
    refused request, with its `Retry-After` in seconds when it had one."""

    def __init__(
        self,
        message: str,
        *,
        timed_out: bool = False,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def refused(self) -> bool:
        """The server said "not now" (429 or 503) to creating the session: nothing was set up, try again later."""
        return self.status in REFUSED_STATUSES


def retry_after(headers: Any) -> float | None:
    """`Retry-After` in seconds (the delta-seconds form; an HTTP date is not used by the API), else None."""
    try:
        value = float(str(headers.get("retry-after", "")).strip())
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value >= 0 else None


def _api_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            code = err.get("code") or err.get("type")
            return f"{err['message']}" + (f" ({code})" if code else "")
    return str(e.message)


def describe_error(step: str, base_url: str, e: Exception) -> LegError:
    if isinstance(e, openai.AuthenticationError):
        return LegError(f"{step}: 401 unauthorized at {base_url}: {_api_message(e)}; check OPENAI_API_KEY")
    if isinstance(e, openai.APIStatusError):
        return LegError(
            f"{step}: HTTP {e.status_code} from {base_url}: {_api_message(e)}",
            status=e.status_code,
            retry_after_s=retry_after(e.response.headers),
        )
    if isinstance(e, openai.APITimeoutError):
        return LegError(f"{step}: {base_url} did not answer in time", timed_out=True)
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        return LegError(f"{step}: cannot reach {base_url}: {type(cause).__name__}: {cause}")
    return LegError(f"{step}: {type(e).__name__}: {e}")


class RealtimeApi:
    """One SDK client per leg (cheap: its HTTP client shares the process's TLS context), closed with the leg."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 10.0) -> None:
        if not base_url:
            raise LegError("no Realtime base URL: set OPENAI_API_KEY, or use the emulator")
        self.base_url = base_url.rstrip("/")
        # The SDK insists on a key; the emulator accepts any, so an empty one becomes a harmless placeholder.
        self._client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "sk-emulator",
            timeout=timeout_s,
            max_retries=0,
            http_client=http_client(),  # closed with the SDK client; its TLS context is the process's one
        )

    async def create_call(self, sdp: str, session: dict[str, Any]) -> tuple[str, str]:
        """POST /realtime/calls with the offer and the session; returns (answer SDP, call id)."""
        try:
            raw = await self._client.realtime.calls.with_raw_response.create(
                sdp=sdp, session=cast(Any, session)
            )
        except Exception as e:
            raise describe_error("creating the Realtime call", self.base_url, e) from None
        location = raw.headers.get("location", "")
        call_id = location.rstrip("/").rsplit("/", 1)[-1]
        if not call_id:
            raise LegError(
                f"creating the Realtime call: {self.base_url} answered {raw.status_code} "
                "without a Location header (no call id)"
            )
        answer = raw.http_response.text
        if not answer.startswith("v=0"):
            raise LegError(
                f"creating the Realtime call: the answer from {self.base_url} is not SDP: {answer[:80]!r}"
            )
        return answer, call_id

    async def hangup(self, call_id: str) -> None:
        try:
            await self._client.realtime.calls.hangup(call_id)
        except Exception as e:
            raise describe_error(f"hanging up {call_id}", self.base_url, e) from None

    async def close(self) -> None:
        await self._client.close()
