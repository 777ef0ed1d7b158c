"""`voicebridge test --redis`: a matrix cell as a job (cluster/batches.py lab_job) carries what a worker needs to
run the call exactly as the same command would locally, and what cannot be sent is refused before any call."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from voicebridge.cluster.batches import lab_job
from voicebridge.cluster.job_loop import job_scenario
from voicebridge.cluster.jobs import Job
from voicebridge.commands.test import matrix
from voicebridge.scenarios.model import BUILTIN_DIR, ScenarioError, load_scenario


def test_a_cell_travels_whole_and_the_worker_runs_the_scenario_the_lab_would(tmp_path: Path) -> None:
    own = tmp_path / "my_bye.toml"  # not built in: a worker elsewhere has no copy, so its text travels
    own.write_text((BUILTIN_DIR / "quick_bye.toml").read_text().replace('"quick_bye"', '"my_bye"'))
    scenarios = [load_scenario("quick_bye"), load_scenario(str(own))]
    cells = matrix(scenarios, ["loss=5%,delay=20ms", "3g"], repeat=2, seed=7)
    for i, cell in enumerate(cells):
        job = lab_job(cell.scenario, "test_x", i, cell.repeat)
        back = Job.model_validate_json(job.model_dump_json())
        assert back == job and back.call_id == f"test_x_{i + 1:04d}" and back.repeat == cell.repeat
        assert (back.impair, back.impair_seed) == (cell.scenario.impair, 7 + cell.repeat - 1)
        assert (back.scenario_toml is None) == (cell.scenario.name == "quick_bye")
        ran = job_scenario(back)
        assert ran.model_dump(exclude={"path"}) == cell.scenario.model_dump(exclude={"path"})


def test_the_scenarios_own_impairment_travels_when_no_impair_is_given() -> None:
    (cell,) = matrix([load_scenario("quick_bye")], [], repeat=1, seed=None)
    job = lab_job(cell.scenario, "test_y", 0, 1)
    assert (job.impair, job.impair_seed) == ("", 0)  # quick_bye's own: none, seed 0
    assert job_scenario(job).impair == ""


def test_bad_payloads_are_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="impair"):
        Job(batch_id="t", index=0, scenario="quick_bye", impair="loss=500%")
    with pytest.raises(ValidationError, match="repeat"):
        Job(batch_id="t", index=0, scenario="quick_bye", repeat=0)
    with pytest.raises(ValidationError, match="impair_sead"):  # a typo is no silent default
        Job.model_validate_json('{"batch_id": "t", "index": 0, "scenario": "quick_bye", "impair_sead": 3}')
    # A scenario file changed into nonsense after it was loaded: refused before it is queued, not on a worker.
    own = tmp_path / "gone_bad.toml"
    own.write_text((BUILTIN_DIR / "quick_bye.toml").read_text())
    scenario = load_scenario(str(own))
    own.write_text("name = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        lab_job(scenario, "test_z", 0, 1)
