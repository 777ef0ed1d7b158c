"""The `judge` criterion against an OpenAI-compatible Chat Completions endpoint on loopback (tests/openai_chat.py,
the real wire format): yes passes, no fails with the model's reason as evidence, the request is a strict
structured-output request over the call's transcript and tools; offline (no key, or the emulator) it is skipped,
never passed; an endpoint that fails makes it fail, and the key is in no verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from tests.openai_chat import fake_chat
from tests.summaries import line, make_summary
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.lab.criteria import evaluate
from voicebridge.lab.judge import DEFAULT_MODEL, MODEL_ENV, JudgeEndpoint, judge_endpoint
from voicebridge.results import CriterionVerdict
from voicebridge.scenarios.expect import Expectation

pytestmark = pytest.mark.integration
KEY = "sk-" + "judge-test-key-0123456789"  # two parts: no key-shaped literal in the source
SUMMARY = make_summary(
    turns=[
        line("cs", "Thank you for calling the help desk.", 0.5, 2.0),
        line("caller", "My order four two one seven has not arrived.", 2.4, 5.0),
        line("cs", "I am sorry, your order is delayed.", 6.0, 8.0),
    ],
    tool_calls=[{
        "leg": "cs", "call_id": "c1", "name": "lookup_order", "arguments": {"order_id": "4217"},
        "output": '{"status": "delayed"}', "ok": True, "error": None, "duration_ms": 1.5, "sent": True, "t": 5.6,
    }],
)
QUESTIONS = [
    Expectation.model_validate({"name": "apologised", "judge": "Did the agent say sorry?"}),
    Expectation.model_validate({"name": "refunded", "judge": "Did the agent mention a refund?"}),
    Expectation.model_validate({"name": "hung up", "end_reason": "caller_hangup"}),
]


async def judged(endpoint: JudgeEndpoint | str | None) -> list[CriterionVerdict]:
    # evaluate() is synchronous (a call runs it in a thread): here too, so the endpoint's loop can answer.
    return await asyncio.to_thread(evaluate, QUESTIONS, SUMMARY, Path("."), judge=endpoint)


async def test_yes_passes_and_no_fails_with_the_models_reason_as_evidence() -> None:
    async with fake_chat() as chat:
        yes, no, other = await judged(JudgeEndpoint(chat.url, KEY, "gpt-4.1-mini"))
    assert (yes.kind, yes.passed, yes.skipped) == ("judge", True, False)
    assert yes.evidence == {
        "answer": "yes", "reason": "the transcript says: I am sorry, your order is delayed.",
        "model": "gpt-4.1-mini-2025-04-14",
    }
    assert yes.detail == "gpt-4.1-mini-2025-04-14 answered yes: the transcript says: I am sorry, your order is delayed."
    assert (no.passed, no.skipped) == (False, False)
    assert no.evidence == {"answer": "no", "reason": "no line of the transcript says 'refund'",
                           "model": "gpt-4.1-mini-2025-04-14"}
    assert other.passed  # the other criteria are judged as always
    # What was asked: the question, the transcript with the tool call, in a strict structured-output request.
    assert len(chat.seen) == 2
    headers, body = chat.seen[0]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert body["model"] == "gpt-4.1-mini" and body["temperature"] == 0
    schema = body["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["strict"] is True
    assert schema["json_schema"]["schema"]["properties"]["answer"]["enum"] == ["yes", "no"]
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert user["content"].startswith("Question: Did the agent say sorry?\n\nTranscript:\n")
    assert "cs: I am sorry, your order is delayed." in user["content"]
    assert 'tool call by cs: lookup_order({"order_id": "4217"}) -> ok' in user["content"]
    assert KEY not in json.dumps([v.model_dump(mode="json") for v in (yes, no)])


async def test_a_failing_endpoint_fails_the_criterion_without_repeating_the_key() -> None:
    async with fake_chat() as chat:
        # As the real API quotes a refused key: its start and end, masked in between.
        chat.fail = (401, f"Incorrect API key provided: {KEY[:8]}*************{KEY[-4:]}. You can find your API key")
        yes, _, _ = await judged(JudgeEndpoint(chat.url, KEY, "gpt-4.1-mini"))
    assert (yes.passed, yes.skipped, yes.evidence) == (False, False, None)
    assert yes.detail.startswith(f"the judge could not answer: gpt-4.1-mini at {chat.url}: HTTP 401: Incorrect API")
    assert yes.detail.endswith("Incorrect API key provided: sk-***. You can find your API key")
    assert KEY[-4:] not in yes.detail


async def test_offline_or_against_the_emulator_the_judge_is_skipped_never_passed() -> None:
    for endpoint in (None, judge_endpoint(Settings(base_url="http://127.0.0.1:1/v1", api_key=EMULATOR_KEY,
                                                   base_url_source="embedded emulator"))):
        yes, no, _ = await judged(endpoint)
        for v in (yes, no):
            assert (v.passed, v.skipped, v.evidence) == (False, True, None)
            assert v.detail == "skipped (offline: no OPENAI_API_KEY)"
    emulator = Settings(base_url="http://127.0.0.1:8765/v1", api_key=KEY, base_url_source="VOICEBRIDGE_BASE_URL")
    reason = judge_endpoint(emulator)
    assert reason == "the Realtime endpoint (VOICEBRIDGE_BASE_URL) is not OpenAI's: no model to judge with"
    yes, _, _ = await judged(reason)
    assert (yes.passed, yes.skipped) == (False, True) and reason in yes.detail


def test_the_judge_asks_where_the_calls_go_with_the_model_named_in_the_environment() -> None:
    gateway = Settings(base_url="http://127.0.0.1:9/v1", api_key=KEY, base_url_source="OPENAI_BASE_URL")
    assert judge_endpoint(gateway, {}) == JudgeEndpoint("http://127.0.0.1:9/v1", KEY, DEFAULT_MODEL)
    openai = dataclasses.replace(gateway, base_url="https://api.openai.com/v1", base_url_source="OPENAI_API_KEY")
    assert judge_endpoint(openai, {MODEL_ENV: "gpt-4o"}) == JudgeEndpoint("https://api.openai.com/v1", KEY, "gpt-4o")
    assert KEY not in repr(judge_endpoint(openai, {}))
    assert judge_endpoint(dataclasses.replace(gateway, api_key="")) == "offline: no OPENAI_API_KEY"
