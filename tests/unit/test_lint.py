"""Static checks CI runs: ruff on everything, vermin 3.6 on what the source-host agent bundles."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name):
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail("{} is not installed: scripts/setup.sh installs it into .venv".format(name))
    return found


def test_ruff_is_clean():
    cp = subprocess.run([_tool("ruff"), "check", "v2v", "guest_fixups", "hv_drivers", "diskfmt", "linux_capture",
                         "tests", "testvms", "bench"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True)
    assert cp.returncode == 0, cp.stdout


def test_agent_side_code_runs_on_python_3_6():
    cp = subprocess.run([_tool("vermin"), "--target=3.6-", "--no-tips", "--violations", "--eval-annotations",
                         "diskfmt", "linux_capture", "v2v/errors.py"], cwd=ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    assert cp.returncode == 0, cp.stdout


def test_agent_pyz_is_python_3_6_standard_library_only(tmp_path, monkeypatch):
    """The built v2v-agent.pyz holds linux_capture and diskfmt, imports nothing else, and passes vermin 3.6."""
    import ast
    import zipfile

    from v2v.agent_bundle import agent_bytes, build_agent
    builds = []
    for cache in ("cache1", "cache2"):         # two empty caches: two real builds, not one and its copy
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / cache))
        builds.append(agent_bytes())
    assert builds[0] == builds[1], "the agent build is not reproducible"
    pyz = build_agent(str(tmp_path / "v2v-agent.pyz"))
    with zipfile.ZipFile(pyz) as z:
        names = z.namelist()
        z.extractall(str(tmp_path / "x"))
    assert "__main__.py" in names and "linux_capture/agent.py" in names and "diskfmt/usedmap/ext4.py" in names
    bundled = {"linux_capture", "diskfmt"}
    foreign = set()
    for path in (tmp_path / "x").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for m in mods:
                top = m.split(".")[0]
                if top not in bundled and top not in sys.stdlib_module_names:
                    foreign.add("{}: {}".format(path.relative_to(tmp_path / "x"), m))
    assert not foreign, "the agent imports outside the standard library: {}".format(sorted(foreign))
    cp = subprocess.run([_tool("vermin"), "--target=3.6-", "--no-tips", "--violations", "--eval-annotations",
                         str(tmp_path / "x")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert cp.returncode == 0, cp.stdout
    ver = subprocess.run([sys.executable, pyz, "--version"], stdout=subprocess.PIPE, text=True, timeout=60)
    assert ver.returncode == 0 and ver.stdout.startswith("v2v-agent ")
