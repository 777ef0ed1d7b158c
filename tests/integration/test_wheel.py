"""voicebridge as a user installs it: the wheel, in a fresh virtualenv outside the source tree.

The wheel is built offline from a copy of the checkout (pyproject.toml, README.md, server/) with this venv's
setuptools (no build isolation, no index). Each new virtualenv gets the wheel through pip (--no-deps) and its
dependencies as links to the distributions this venv already has, resolved from the wheel's own Requires-Dist:
the base install, or the base plus one extra, and nothing else. (`--system-site-packages` would bring every
package, the extras included, and this checkout's editable voicebridge with them.) The commands run with a clean
environment (no PYTHONPATH) from a folder outside the checkout, and `voicebridge.__file__` is checked to be
inside the new venv: what answers is the installed wheel, not the source tree.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300.0  # a cold interpreter imports aiortc, av, openai (and pocketsphinx): a bound for a hang only
_CLEAN_ENV_PREFIXES = ("PYTHON", "OPENAI_", "VOICEBRIDGE_", "VIRTUAL_ENV", "PIP_")


def _ignore(_: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".egg-info") or n == "build"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "server", src / "server", ignore=_ignore)
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(dist)],
        capture_output=True, text=True, cwd=src,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = dist.glob("voicebridge-*.whl")
    with zipfile.ZipFile(built) as z:
        names = set(z.namelist())
    for data in ("index.html", "app.js", "auth.js", "debug.js", "join.js", "ui.js", "style.css"):
        assert f"voicebridge/web/{data}" in names, f"the console's {data} is not in the wheel"
    return built


def _requires(built: Path) -> list[Requirement]:
    with zipfile.ZipFile(built) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(z.read(meta).decode())
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def _wanted(req: Requirement, extras: Iterable[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras))


def _closure(requirements: list[Requirement], extras: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions that `requirements` (with `extras` active) need, transitively."""
    found: dict[str, metadata.Distribution] = {}
    todo = [r for r in requirements if _wanted(r, extras)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"the wheel requires {req}, which this venv does not have", pytrace=False)
        assert req.specifier.contains(dist.version, prereleases=True), f"{req} but this venv has {dist.version}"
        found[name] = dist
        todo += [r for r in map(Requirement, dist.requires or []) if _wanted(r, req.extras)]
    return list(found.values())


def _link(dists: list[metadata.Distribution], site: Path) -> None:
    """Each distribution's top-level files and folders (from its RECORD) linked into `site`."""
    for dist in dists:
        assert dist.files is not None, f"{dist.metadata['Name']} has no RECORD: cannot tell its files"
        root = Path(str(dist.locate_file("")))
        tops = {f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".." and f.parts[0] != "__pycache__"}
        for top in tops:
            if top.endswith(".pth") or (site / top).exists() or not (root / top).exists():
                continue
            (site / top).symlink_to(root / top)


def _venv(built: Path, where: Path, extras: tuple[str, ...]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(built)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    (site,) = (where / "lib").glob("python3*/site-packages")
    _link(_closure(_requires(built), extras), site)
    return where


@pytest.fixture(scope="module")
def base_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(wheel, tmp_path_factory.mktemp("venv-base"), ())


@pytest.fixture(scope="module")
def emulator_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(wheel, tmp_path_factory.mktemp("venv-emulator"), ("emulator",))


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEAN_ENV_PREFIXES)}
    env.update(HOME=str(home), PYTHONNOUSERSITE="1")
    return env


def _run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`args[0]` of the venv's bin/ (python, voicebridge) run from `cwd` with a clean environment."""
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, env=_env(cwd),
        timeout=START_TIMEOUT_S,
    )


def test_the_base_install_is_the_wheel_and_imports_without_the_extras(base_venv: Path, tmp_path: Path) -> None:
    probe = """
import importlib, pathlib, sys
import voicebridge
root = pathlib.Path(voicebridge.__file__).parent
print(voicebridge.__file__)
skipped = []
for path in sorted(root.rglob("*.py")):
    name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
    if name.startswith("voicebridge.emulator"):
        continue
    importlib.import_module(name)
extras = ("pocketsphinx", "webrtcvad", "num2words", "matplotlib", "pyinstrument")
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in extras or m.startswith("voicebridge.emulator")))
try:
    import voicebridge.emulator
except ImportError as e:
    print("emulator:", type(e).__name__, e)
"""
    out = _run(base_venv, ["python", "-c", probe], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert Path(lines[0]).is_relative_to(base_venv), f"voicebridge came from {lines[0]}, not the new venv"
    assert lines[1] == "loaded: []"  # no bridge module pulls in the emulator or an extra's package on import
    assert lines[2].startswith("emulator: MissingExtra ") and "pip install 'voicebridge[emulator]'" in lines[2]


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["serve", "--port", "0"], "emulator"),
        (["call"], "emulator"),
        (["emulator", "--port", "0"], "emulator"),
        (["soak", "--sequential", "1", "--concurrent", "1"], "emulator"),
        (["batch", "--calls", "1"], "reports"),
        (["bench", "--quick"], "bench"),
        (["worker", "--advertise", "127.0.0.1"], "cluster"),
        (["serve", "--workers", "2", "--redis", "redis://127.0.0.1:1/0"], "cluster"),
    ],
)
def test_a_command_that_needs_a_missing_extra_names_it(
    base_venv: Path, tmp_path: Path, command: list[str], extra: str
) -> None:
    out = _run(base_venv, ["voicebridge", *command], tmp_path)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stderr.startswith(f"voicebridge {command[0]}: "), out.stderr
    assert f"voicebridge[{extra}]" in out.stderr and f"pip install 'voicebridge[{extra}]'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    assert list(tmp_path.iterdir()) == [], "the command wrote something before giving up"


async def _serve(venv: Path, cwd: Path, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "voicebridge"), "serve", "--host", "127.0.0.1", "--port", "0", *args,
        cwd=cwd, env=_env(cwd), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None

    async def console_url() -> str:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            if " console at " in line:
                return line.split(" console at ", 1)[1].split()[0]
        return ""

    url = await asyncio.wait_for(console_url(), START_TIMEOUT_S)
    if not url:
        err = (await proc.stderr.read()).decode()
        pytest.fail(f"voicebridge serve exited ({await proc.wait()}) without serving:\n{err}", pytrace=False)
    return proc, url


async def _stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    return err.decode()


async def _get_console(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert page.status == 200 and "<title>voicebridge console</title>" in await page.text()
        async with http.get(url + "app.js") as js:
            assert js.status == 200 and "javascript" in js.content_type
            assert 'from "./auth.js"' in await js.text()
        async with http.get(url + "api/scenarios") as api:
            assert api.status == 200
            names = [s["name"] for s in (await api.json())["scenarios"]]
            assert "late_order" in names
        async with http.get(url + "healthz") as health:
            body: dict[str, Any] = await health.json()
            return body


async def test_the_base_install_serves_the_console_with_another_backend(base_venv: Path, tmp_path: Path) -> None:
    """No emulator extra: `serve` against an endpoint of its own choosing (as with OPENAI_API_KEY) still works."""
    proc, url = await _serve(base_venv, tmp_path, "--emulator-url", "http://127.0.0.1:9/v1")
    try:
        await _get_console(url)
    finally:
        await _stop(proc)


async def test_the_installed_wheel_serves_the_console_with_its_emulator(emulator_venv: Path, tmp_path: Path) -> None:
    probe = _run(emulator_venv, ["python", "-c", "import voicebridge.signaling.app as a; print(a.CONSOLE)"], tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(emulator_venv), probe.stdout
    proc, url = await _serve(emulator_venv, tmp_path)
    try:
        health = await _get_console(url)
        assert health["backend"] == "emulator"
    finally:
        await _stop(proc)
