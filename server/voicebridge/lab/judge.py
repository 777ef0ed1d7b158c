"""The `judge` criterion: a yes/no rubric question about a call, answered by an OpenAI model over its transcript.

It runs only when the call's Realtime endpoint is OpenAI's, or an OpenAI-compatible endpoint named the openai SDK's
way (config.py rules 3 and 4: OPENAI_API_KEY, with OPENAI_BASE_URL for a gateway): the judge then asks the same
endpoint with the same key, through the Chat Completions API with a strict JSON schema (structured output), so
the answer is `{"answer": "yes" | "no", "reason": "..."}` and nothing else. Against the emulator (embedded, or
named by --emulator-url or VOICEBRIDGE_BASE_URL) there is no language model: the criterion is skipped, never passed.

The model is VOICEBRIDGE_JUDGE_MODEL (default DEFAULT_MODEL). The key goes to the SDK client only: it is in no
verdict, no evidence and no log line (errors are reported by their type and the server's message).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, ValidationError

from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.results import CallSummary

DEFAULT_MODEL = "gpt-4.1-mini"
MODEL_ENV = "VOICEBRIDGE_JUDGE_MODEL"
TIMEOUT_S = 60.0
# The settings' sources (config.py) under which the Realtime endpoint is OpenAI or a gateway that speaks its API.
OPENAI_SOURCES = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
_KEYISH = re.compile(r"sk-[\w*-]{4,}")
MAX_TRANSCRIPT_CHARS = 60_000  # a long call is cut at the start of a line: the judge's context stays bounded

INSTRUCTIONS = (
    "You judge a recorded phone call between a caller and a customer-service agent (\"cs\"), from its "
    "transcript and the agent's tool calls. Answer the question about the call with \"yes\" or \"no\", and give "
    "the reason in one sentence, quoting the transcript where you can. Use only what the transcript shows: when "
    "it does not show that the answer is yes, the answer is no."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "reason": {"type": "string"},
    },
    "required": ["answer", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where the judge asks, and with which model."""

    base_url: str
    api_key: str = field(repr=False)
    model: str


def judge_endpoint(settings: Settings, env: Mapping[str, str] | None = None) -> JudgeEndpoint | str:
    """The judge's endpoint for calls made with these settings, or why there is none (a skipped verdict's
    reason)."""
    env = os.environ if env is None else env
    if not settings.api_key or settings.api_key == EMULATOR_KEY:
        return "offline: no OPENAI_API_KEY"
    if settings.base_url_source not in OPENAI_SOURCES:
        where = settings.base_url_source or settings.base_url
        return f"the Realtime endpoint ({where}) is not OpenAI's: no model to judge with"
    model = env.get(MODEL_ENV, "").strip() or DEFAULT_MODEL
    return JudgeEndpoint(settings.base_url, settings.api_key, model)


class JudgeAnswer(BaseModel):
    """The model's structured answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer: bool
    reason: str
    model: str


class JudgeError(Exception):
    """The judge could not answer (the endpoint failed, refused, or answered outside the schema)."""


def transcript_text(summary: CallSummary) -> str:
    """What the judge reads: each line said, and each tool call, in the order they happened."""
    rows: list[tuple[float, str]] = [(t.start, f"[{t.start:7.2f} s] {t.speaker}: {t.text}") for t in summary.turns]
    for c in summary.tool_calls:
        args = json.dumps(c.arguments, ensure_ascii=False)
        result = "ok" if c.ok else f"failed ({c.error})"
        rows.append((c.t, f"[{c.t:7.2f} s] tool call by {c.leg}: {c.name}({args}) -> {result}: {c.output[:300]}"))
    lines = [text for _, text in sorted(rows, key=lambda r: r[0])]
    text = "\n".join(lines) or "(nothing was said)"
    if len(text) > MAX_TRANSCRIPT_CHARS:
        text = text[-MAX_TRANSCRIPT_CHARS:].split("\n", 1)[-1]
    return f"Call ended: {summary.end_reason or 'unknown'} (by {summary.ended_by or 'unknown'}).\n{text}"


class Judge:
    """Asks one endpoint; one instance judges every `judge` criterion of a call (then `close()`)."""

    def __init__(self, endpoint: JudgeEndpoint, timeout_s: float = TIMEOUT_S) -> None:
        from openai import OpenAI  # the SDK is loaded only by a call that has a judge to ask

        self.endpoint = endpoint
        self._client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=timeout_s, max_retries=2)

    def ask(self, question: str, summary: CallSummary) -> JudgeAnswer:
        import openai

        model = self.endpoint.model
        try:
            completion = self._client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": INSTRUCTIONS},
                    {"role": "user", "content": f"Question: {question}\n\nTranscript:\n{transcript_text(summary)}"},
                ],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "verdict", "strict": True, "schema": SCHEMA},
                },
                temperature=0,
            )
        except openai.APIStatusError as e:
            why = self._redact(_message(e))
            raise JudgeError(f"{model} at {self.endpoint.base_url}: HTTP {e.status_code}: {why}") from None
        except openai.OpenAIError as e:
            why = self._redact(str(e))
            raise JudgeError(f"{model} at {self.endpoint.base_url}: {type(e).__name__}: {why}") from None
        if not completion.choices:
            raise JudgeError(f"{model} answered no choice")
        message = completion.choices[0].message
        if message.refusal:
            raise JudgeError(f"{model} refused: {message.refusal}")
        try:
            data = json.loads(message.content or "")
            if data["answer"] not in ("yes", "no"):
                raise ValueError(f"answer {data['answer']!r}")
            answer = JudgeAnswer(answer=data["answer"] == "yes", reason=str(data["reason"]), model=completion.model)
        except (ValueError, KeyError, TypeError, ValidationError) as e:
            raise JudgeError(f"{model} answered outside the schema ({e}): {str(message.content)[:200]!r}") from None
        return answer

    def _redact(self, text: str) -> str:
        # A server may quote the key it refused ("Incorrect API key provided: sk-..."): none of it is repeated.
        return _KEYISH.sub("sk-***", text.replace(self.endpoint.api_key, "***"))

    def close(self) -> None:
        self._client.close()


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:300]
    return str(e)[:300]
