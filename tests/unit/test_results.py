"""The call's typed results (voicebridge/results.py): the JSON they write keeps the shapes summary.json and
report.json have always had, key for key; they come back from that JSON equal; one rule says what succeeded."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

import voicebridge.results
from voicebridge.results import (
    SUCCESS_END_REASONS,
    BatchReport,
    CallSummary,
    EndReason,
    Percentiles,
    TurnGap,
    succeeded,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "results"


@pytest.mark.parametrize(("model", "name"), [(CallSummary, "summary.json"), (BatchReport, "report.json")])
def test_a_real_file_reads_into_its_model_and_is_written_back_byte_for_byte(
    model: type[CallSummary] | type[BatchReport], name: str
) -> None:
    text = (FIXTURES / name).read_text()
    record = model.model_validate_json(text)
    # As the writers write it (bridge/artifacts.py, batch/report.py): same keys, same order, same values.
    assert json.dumps(record.model_dump(mode="json"), indent=2) + "\n" == text
    assert model.model_validate_json(record.model_dump_json()) == record


def test_the_summary_fixture_has_every_field_and_the_typed_view_reads_it() -> None:
    summary = CallSummary.model_validate_json((FIXTURES / "summary.json").read_text())
    assert summary.succeeded and summary.end_reason == "caller_hangup"
    assert [c.name for c in summary.tool_calls] == ["lookup_order", "issue_refund", "hangup"]
    assert summary.turn_latency.count == len(summary.turn_latency.turns) > 0
    assert summary.turn_latency.turns[0].from_ == "cs"
    assert summary.relay is not None and summary.relay.get("kind") == "passthrough"
    assert {leg.role for leg in summary.legs} == {"caller", "cs"}


def test_unknown_keys_and_reassignment_are_refused() -> None:
    data = json.loads((FIXTURES / "summary.json").read_text())
    with pytest.raises(ValidationError, match="extra"):
        CallSummary.model_validate({**data, "surprise": 1})
    summary = CallSummary.model_validate(data)
    with pytest.raises(ValidationError, match="frozen"):
        summary.end_reason = "error"  # type: ignore[misc]


def test_empty_percentiles_are_just_a_count_and_gap_rows_carry_only_their_own_keys() -> None:
    assert Percentiles(count=0).model_dump(mode="json") == {"count": 0}
    assert Percentiles.model_validate({"count": 0}) == Percentiles(count=0)
    heard = TurnGap(responder="cs", after="caller", latency_s=0.5, source="transcript")
    measured = TurnGap(responder="cs", latency_s=0.5, source="bridge", bridge_ms=0.1)
    assert list(heard.model_dump(mode="json")) == ["responder", "after", "latency_s", "source"]
    assert list(measured.model_dump(mode="json")) == ["responder", "latency_s", "source", "bridge_ms"]
    for row in (heard, measured):
        assert TurnGap.model_validate_json(row.model_dump_json()) == row


@pytest.mark.parametrize("reason", [*get_args(EndReason), None])
def test_a_call_succeeded_only_when_someone_hung_up_on_purpose(reason: str | None) -> None:
    assert succeeded(reason) is (reason in ("caller_hangup", "operator_hangup"))
    assert SUCCESS_END_REASONS <= set(get_args(EndReason))


def test_the_module_sits_at_the_bottom_of_the_import_graph() -> None:
    tree = ast.parse(Path(voicebridge.results.__file__).read_text())
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import)
            else ["." * node.level + (node.module or "")] if isinstance(node, ast.ImportFrom) else []
        )
    }
    assert not any(name.startswith(("voicebridge", ".")) for name in imported), imported


def test_peak_live_counts_the_calls_live_at_once() -> None:
    """From each call's start, set-up time and duration: overlapping calls count together, back to back do not,
    and one that never went live not at all."""
    from tests.summaries import make_summary
    from voicebridge.batch.report import peak_live
    from voicebridge.results import BatchCall

    def call(start: float, setup: float | None, duration: float) -> BatchCall:
        return BatchCall(summary=make_summary(started_at=start, duration_s=duration), setup_s=setup)

    overlapping = [call(0, 1, 10), call(2, 1, 10), call(5, 1, 3)]
    assert peak_live(overlapping) == 3
    back_to_back = [call(0, 1, 10), call(9, 1, 5)]  # the second goes live (10) as the first ends (10)
    assert peak_live(back_to_back) == 1
    assert peak_live([call(0, None, 10), call(1, 1, 3)]) == 1
    assert peak_live([]) == 0
