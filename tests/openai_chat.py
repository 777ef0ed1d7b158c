"""A Chat Completions endpoint on loopback that speaks the real wire format (POST /v1/chat/completions, JSON in,
a `chat.completion` object out, errors as the API's `{"error": {...}}`), for the `judge` criterion's tests. It
records every request and answers with what `answer(question, transcript)` says."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Answer = Callable[[str, str], tuple[str, str]]  # (question, transcript) -> ("yes" | "no", reason)


@dataclass
class FakeChat:
    answer: Answer
    seen: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)  # (headers, body)
    fail: tuple[int, str] | None = None  # answer every request with this HTTP status and error message
    url: str = ""

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if self.fail is not None:
            status, message = self.fail
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=status)
        prompt = body["messages"][-1]["content"]
        question, _, transcript = prompt.partition("\n\nTranscript:\n")
        said, reason = self.answer(question.removeprefix("Question: "), transcript)
        content = json.dumps({"answer": said, "reason": reason})
        return web.json_response({
            "id": f"chatcmpl-{len(self.seen)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"] + "-2025-04-14",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            "service_tier": "default",
            "system_fingerprint": "fp_test",
        })


def keyword_answer(question: str, transcript: str) -> tuple[str, str]:
    """Yes when the transcript holds the word the question ends with, quoted (a judge that reads)."""
    word = question.rstrip("?").split()[-1].lower()
    hit = next((line for line in transcript.splitlines() if word in line.lower()), None)
    if hit is None:
        return "no", f"no line of the transcript says {word!r}"
    return "yes", f"the transcript says: {hit.split(': ', 1)[-1]}"


@asynccontextmanager
async def fake_chat(answer: Answer = keyword_answer, app: web.Application | None = None) -> AsyncIterator[FakeChat]:
    """Served on 127.0.0.1 (its own app, or added to `app` when given: then the caller serves it)."""
    chat = FakeChat(answer)
    own = app is None
    application = web.Application() if app is None else app
    application.router.add_post("/v1/chat/completions", chat.completions)
    if not own:
        yield chat
        return
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    chat.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield chat
    finally:
        await runner.cleanup()
