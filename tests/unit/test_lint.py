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
