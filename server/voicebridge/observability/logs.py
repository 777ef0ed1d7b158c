"""Structured logs: one JSON object per line, carrying the call it belongs to, never carrying a secret.

`call_id` comes from a contextvar (`call_context(id)` or `CALL_ID.set(id)`): asyncio copies the context into
every task created under it, so the call's own tasks (and the aiortc callbacks they set up) log with its id
without passing it around. A record's explicit `extra={"call_id": ...}` wins.

Secrets: `RedactingFilter` rewrites a record's message, arguments and traceback text before any handler
formats it: the configured secrets (the API key) and anything shaped like an OpenAI key (`sk-...`, `ek_...`,
`Bearer ...`) become `[redacted]`. Defence in depth: nothing should log a key, and if something does, it
stops here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO

CALL_ID: ContextVar[str | None] = ContextVar("voicebridge_call_id", default=None)
REDACTED = "[redacted]"
# Key-shaped strings: OpenAI API keys (sk-, sk-proj-...), client secrets (ek_...), bearer tokens.
_KEY_SHAPES = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{6,}|ek_[A-Za-z0-9_\-]{6,})|(?<=Bearer )[^\s\"']+")
# LogRecord's own attributes: everything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def call_context(call_id: str) -> Iterator[None]:
    """Log records (and tasks created) inside this block carry `call_id`."""
    token = CALL_ID.set(call_id)
    try:
        yield
    finally:
        CALL_ID.reset(token)


class Redactor:
    """Replaces the given secrets and any key-shaped text with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole. Very short strings are not
        # secrets worth the false positives ("sk-" alone would redact prose).
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return _KEY_SHAPES.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """Attach to a handler: the record is rewritten (message rendered and redacted, args dropped)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as e:  # a bad format string must not lose the record (or leak its args raw)
            message = f"{record.msg!r} (unformattable: {type(e).__name__}; args {record.args!r})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # the text above is now the only rendering of the traceback
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "call_id", ...extra fields, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "call_id": getattr(record, "call_id", None) or CALL_ID.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def json_handler(stream: TextIO | None = None, secrets: Iterable[str] = ()) -> logging.Handler:
    """A stream handler writing redacted JSON lines (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secrets))
    return handler


def configure_logging(
    level: int = logging.INFO, *, stream: TextIO | None = None, secrets: Iterable[str] = ()
) -> logging.Handler:
    """Replace the root logger's handlers with one JSON handler; returns it (remove it to undo)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = json_handler(stream, secrets)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHATTY_LIBRARIES = ("aioice", "aiortc", "httpx", "httpx2", "httpcore", "openai")


def setup_logging_from_env(level: int = logging.INFO) -> logging.Handler:
    """The CLI's logging: JSON lines when VOICEBRIDGE_LOG_FORMAT=json, else readable text; redacted either way
    (OPENAI_API_KEY and key-shaped strings), on stderr."""
    secrets = [os.environ.get("OPENAI_API_KEY", "")]
    # Libraries that log every ICE check and HTTP request at INFO would bury the calls' own lines.
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    if os.environ.get("VOICEBRIDGE_LOG_FORMAT", "").strip().lower() == "json":
        return configure_logging(level, secrets=secrets)
    handler = configure_logging(level, secrets=secrets)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler
