"""Structured logs: one JSON object per line, the call_id from the context (and into tasks), secrets redacted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from voicebridge.observability.logs import (
    CALL_ID,
    REDACTED,
    JsonFormatter,
    Redactor,
    call_context,
    configure_logging,
    json_handler,
    setup_logging_from_env,
)

pytestmark = pytest.mark.unit
KEY = "sk-" + "leaktest-0123456789abcdefXYZ"  # split: no key-shaped literal in the source


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    logger = logging.getLogger("voicebridge.test_logs")
    handler = json_handler(stream, [KEY])
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line_with_level_logger_message(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.info("call %s: %d tools", "x", 3)
    logger.warning("a message\nwith a newline")
    first, second = lines(stream)
    assert first["message"] == "call x: 3 tools"
    assert first["level"] == "info" and first["logger"] == "voicebridge.test_logs"
    assert first["call_id"] is None
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["message"] == "a message\nwith a newline"  # the newline is escaped: still one line


def test_call_id_from_context_and_into_tasks(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged

    async def main() -> None:
        with call_context("call_one"):
            logger.info("inside")
            # A task created inside the block keeps the id even after the block has ended.
            task = asyncio.ensure_future(asyncio.sleep(0))
            other = asyncio.get_running_loop().create_future()

            async def later() -> None:
                await other
                logger.info("from a task")

            t2 = asyncio.ensure_future(later())
        logger.info("outside")
        other.set_result(None)
        await asyncio.gather(task, t2)

    asyncio.run(main())
    got = [(r["message"], r["call_id"]) for r in lines(stream)]
    assert got == [("inside", "call_one"), ("outside", None), ("from a task", "call_one")]
    assert CALL_ID.get() is None


def test_explicit_extra_call_id_wins_and_extras_are_fields(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    with call_context("ctx"):
        logger.info("x", extra={"call_id": "explicit", "leg": "cs", "n": 2, "obj": object()})
    (rec,) = lines(stream)
    assert rec["call_id"] == "explicit" and rec["leg"] == "cs" and rec["n"] == 2
    assert rec["obj"].startswith("<object object")


def test_the_key_is_redacted_everywhere_it_could_hide(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.info("key in the message " + KEY)
    logger.info("key in the args %s and %r", KEY, {"auth": f"Bearer {KEY}"})
    logger.info("key in an extra", extra={"header": f"Authorization: Bearer {KEY}"})
    try:
        raise RuntimeError(f"failed with {KEY}")
    except RuntimeError:
        logger.exception("key in a traceback")
    logger.info("bad format %s %s", KEY)  # too few args: still logged, still redacted
    text = stream.getvalue()
    assert KEY not in text
    assert "leaktest" not in text
    records = lines(stream)
    assert len(records) == 5
    assert all(REDACTED in json.dumps(r) for r in records)
    assert "RuntimeError" in records[3]["exc"]


def test_key_shaped_strings_are_redacted_without_being_configured() -> None:
    redact = Redactor()
    text = redact("sk-proj-abcdefgh1234 and ek_68ab12cd34ef and Bearer abc.def-ghi, sk- alone, desk-top")
    assert "abcdefgh1234" not in text and "68ab12cd34ef" not in text and "abc.def-ghi" not in text
    assert text.count(REDACTED) == 3
    assert "sk- alone, desk-top" in text  # prose is left alone


def test_short_configured_secrets_are_ignored_to_avoid_redacting_prose() -> None:
    assert Redactor(["", "abc"]).secrets == []


def test_configure_logging_replaces_root_handlers() -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        handler = configure_logging(logging.INFO, stream=stream, secrets=[KEY])
        assert root.handlers == [handler]
        assert isinstance(handler.formatter, JsonFormatter)
        logging.getLogger("voicebridge.anything").info("hello %s", KEY)
        (rec,) = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert rec["message"] == f"hello {REDACTED}"
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before_handlers:
            root.addHandler(h)
        root.setLevel(before_level)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_setup_from_env_redacts_in_both_formats(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("VOICEBRIDGE_LOG_FORMAT", fmt)
    stream = io.StringIO()
    try:
        handler = setup_logging_from_env()
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        with call_context("call_env"):
            logging.getLogger("voicebridge.x").warning("the key is %s", KEY)
        out = stream.getvalue()
        assert KEY not in out and REDACTED in out
        if fmt == "json":
            assert json.loads(out)["call_id"] == "call_env"
        else:
            assert out.startswith("20") and "WARNING voicebridge.x: the key is [redacted]" in out
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before_handlers:
            root.addHandler(h)
        root.setLevel(before_level)
