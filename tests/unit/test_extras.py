"""Optional dependencies (voicebridge/extras.py): the table agrees with pyproject.toml, the bridge imports without
them, and a command that needs a missing one names the extra (status 3, one line, no traceback).

A missing package is simulated in a child interpreter by `sys.modules[name] = None`, which makes `import name`
raise ModuleNotFoundError and `importlib.util.find_spec(name)` answer None, as on a base install.
(tests/integration/test_wheel.py checks the same on a real base install of the wheel.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from voicebridge.extras import EXTRAS, MissingExtra, missing, require

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _distribution_of(module: str) -> str:
    (dist,) = metadata.packages_distributions()[module]
    return canonicalize_name(dist)


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_extra_checks_modules_its_pyproject_extra_installs(extra: str) -> None:
    declared = _names(PROJECT["optional-dependencies"][extra])
    for module in EXTRAS[extra]:
        assert _distribution_of(module) in declared, f"{module} is checked for [{extra}] but not installed by it"
    assert not declared & _names(PROJECT["dependencies"]), f"[{extra}] packages are in the base dependencies"


def test_all_installs_every_extra() -> None:
    (everything,) = PROJECT["optional-dependencies"]["all"]
    assert Requirement(everything).extras == set(EXTRAS)


def test_require_names_the_extra_and_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    require("emulator")  # this venv has every extra
    monkeypatch.setitem(sys.modules, "webrtcvad", None)
    assert missing("emulator") == ["webrtcvad"]
    with pytest.raises(MissingExtra) as e:
        require("emulator", "the thing")
    assert str(e.value) == (
        "the thing needs the optional dependencies voicebridge[emulator], which are not installed "
        "(no module webrtcvad): pip install 'voicebridge[emulator]'"
    )
    assert isinstance(e.value, ImportError) and e.value.extra == "emulator"


_PROBE = """
import contextlib, importlib, io, json, pathlib, sys
HIDDEN = ("pocketsphinx", "webrtcvad", "num2words", "matplotlib", "pyinstrument")
for name in HIDDEN:
    sys.modules[name] = None
import voicebridge
root = pathlib.Path(voicebridge.__file__).parent
for path in sorted(root.rglob("*.py")):
    name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
    if not name.startswith("voicebridge.emulator"):
        importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.startswith("voicebridge.emulator"))
from voicebridge.cli import main
runs = {}
for argv in (["serve", "--port", "0"], ["call"], ["emulator", "--port", "0"], ["bench", "--quick"]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    runs[argv[0]] = [status, err.getvalue()]
print(json.dumps({"loaded": loaded, "runs": runs}))
"""


def test_without_the_extras_the_bridge_imports_and_commands_name_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VOICEBRIDGE_"))}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=100
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["loaded"] == []  # no module outside the emulator imports it
    for command, extra in (("serve", "emulator"), ("call", "emulator"), ("emulator", "emulator"), ("bench", "bench")):
        status, err = result["runs"][command]
        assert status == 3, err
        assert err.startswith(f"voicebridge {command}: ") and f"pip install 'voicebridge[{extra}]'" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
