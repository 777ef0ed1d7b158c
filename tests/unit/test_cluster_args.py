"""`serve --workers`: 1 is one process with no Redis; any other number needs a Redis URL, said clearly."""

from __future__ import annotations

import os

import pytest

from voicebridge.cli import build_parser
from voicebridge.cluster.local import worker_count
from voicebridge.commands.serve import _cluster_args


def test_worker_count_is_a_whole_number_or_one_per_core() -> None:
    assert worker_count("0") == 0 and worker_count("3") == 3
    assert worker_count("auto") == (os.cpu_count() or 1)
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ValueError, match="--workers"):
            worker_count(bad)


def test_one_worker_needs_no_redis_and_more_need_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEBRIDGE_REDIS_URL", raising=False)
    parse = build_parser().parse_args
    assert _cluster_args(parse(["serve"])) == (1, "")
    assert _cluster_args(parse(["serve", "--workers", "1", "--redis", "redis://x:1/0"])) == (1, "")
    with pytest.raises(ValueError, match="--workers 2 shares calls through Redis: give --redis"):
        _cluster_args(parse(["serve", "--workers", "2"]))
    assert _cluster_args(parse(["serve", "--workers", "0", "--redis", "redis://h:1/0"])) == (0, "redis://h:1/0")
    monkeypatch.setenv("VOICEBRIDGE_REDIS_URL", "redis://env:1/0")
    assert _cluster_args(parse(["serve", "--workers", "auto"]))[1] == "redis://env:1/0"
