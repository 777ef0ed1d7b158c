"""JUnit XML of a `voicebridge test` run, for CI dashboards (`--junit FILE`).

One <testsuite> per scenario x impairment, one <testcase> per call named `scenario[impairment]#repeat` (with
`--redis`, properties `worker` and `attempt` say where it ran). A run
that failed has one <failure> per failed criterion (message: the criterion's name and detail; text: its evidence
as JSON), or one naming the end reason when no criterion failed; a call that could not be judged is an <error>.
Skipped criteria are never failures: they are <property> entries (`criterion:<name>` = skipped) and lines of
<system-out>, like every verdict. Counts follow the common JUnit schema: `tests` test cases, `failures` test
cases with at least one <failure>, `errors` test cases with an <error>, `skipped` 0 (a call always runs).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from .report import LabReport, LabRun

MAX_EVIDENCE_CHARS = 4000


def _state(passed: bool, skipped: bool) -> str:
    return "skipped" if skipped else ("passed" if passed else "failed")


def _testcase(run: LabRun) -> ET.Element:
    case = ET.Element(
        "testcase", name=run.name, classname=f"voicebridge.{run.scenario}", time=f"{run.duration_s:.3f}"
    )
    props = ET.SubElement(case, "properties")
    for key, value in (("call_id", run.call_id), ("end_reason", str(run.end_reason)), ("folder", run.folder)):
        ET.SubElement(props, "property", name=key, value=value)
    if run.worker is not None:  # `--redis`: the worker that ran it, and on which attempt
        ET.SubElement(props, "property", name="worker", value=run.worker)
        ET.SubElement(props, "property", name="attempt", value=str(run.attempt))
    for c in run.criteria:
        ET.SubElement(props, "property", name=f"criterion:{c.name}", value=_state(c.passed, c.skipped))
    if run.outcome == "error":
        ET.SubElement(case, "error", message=run.why, type=str(run.end_reason)).text = run.error or ""
    elif run.outcome == "failed":
        failed = run.failed_criteria
        for c in failed:
            evidence = json.dumps(c.evidence, indent=1)[:MAX_EVIDENCE_CHARS]
            ET.SubElement(case, "failure", message=f"{c.name}: {c.detail}", type=c.kind).text = (
                evidence if c.evidence is not None else c.detail
            )
        if not failed:
            ET.SubElement(case, "failure", message=run.why, type="end_reason").text = run.error or ""
    out = [f"call {run.call_id}: {run.outcome}, end_reason {run.end_reason}, {run.duration_s:.1f} s"]
    if run.worker is not None:
        out.append(f"ran on worker {run.worker} (attempt {run.attempt})")
    out += [f"{_state(c.passed, c.skipped).upper()} {c.name} [{c.kind}]: {c.detail}" for c in run.criteria]
    ET.SubElement(case, "system-out").text = "\n".join(out)
    return case


def _suite(name: str, runs: list[LabRun]) -> ET.Element:
    suite = ET.Element(
        "testsuite", name=name, tests=str(len(runs)),
        failures=str(sum(r.outcome == "failed" for r in runs)),
        errors=str(sum(r.outcome == "error" for r in runs)), skipped="0",
        time=f"{sum(r.duration_s for r in runs):.3f}",
    )
    suite.extend(_testcase(r) for r in runs)
    return suite


def _groups(runs: Iterable[LabRun]) -> dict[str, list[LabRun]]:
    groups: dict[str, list[LabRun]] = {}
    for r in runs:
        groups.setdefault(f"{r.scenario}[{r.impairment}]", []).append(r)
    return groups


def junit_xml(report: LabReport) -> str:
    root = ET.Element(
        "testsuites", name=f"voicebridge test {report.test_id}", tests=str(report.total),
        failures=str(report.failed), errors=str(report.errors), skipped="0", time=f"{report.wall_s:.3f}",
    )
    root.extend(_suite(name, runs) for name, runs in _groups(report.runs).items())
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
