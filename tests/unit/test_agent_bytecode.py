"""v2v-agent.pyz carries bytecode for the converter's Python: used when the source runs the same version,
ignored (the source is compiled as before) when it does not."""
import io
import subprocess
import sys
import zipfile

from v2v.agent_bundle import agent_bytes

# counts the compile() calls zipimport makes while the agent is imported from the archive
PROBE = """
import builtins, sys
n = [0]
real = builtins.compile
def counting(*a, **k):
    n[0] += 1
    return real(*a, **k)
builtins.compile = counting
sys.path.insert(0, sys.argv[1])
from linux_capture import agent
builtins.compile = real
print(n[0], agent.AGENT_VERSION)
"""


def _import(pyz: bytes, tmp_path) -> tuple:
    path = tmp_path / "agent.pyz"
    path.write_bytes(pyz)
    cp = subprocess.run([sys.executable, "-c", PROBE, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    compiles, version = cp.stdout.split()
    return int(compiles), version


def test_each_module_has_bytecode_and_the_same_python_compiles_nothing(tmp_path):
    pyz = agent_bytes()
    with zipfile.ZipFile(io.BytesIO(pyz)) as z:
        names = set(z.namelist())
    sources = {n for n in names if n.endswith(".py") and n != "__main__.py"}
    assert sources and all(n[:-3] + ".pyc" in names for n in sources)
    compiles, version = _import(pyz, tmp_path)
    assert compiles == 0 and version


def test_bytecode_of_another_python_is_ignored_and_the_source_compiled(tmp_path):
    """The magic number of another version: zipimport skips the .pyc and compiles the .py."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(agent_bytes())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".pyc"):
                data = b"\x00\x00" + data[2:]          # no Python has magic 0
            dst.writestr(info, data)
    compiles, version = _import(out.getvalue(), tmp_path)
    assert compiles > 0 and version


def test_the_built_archive_is_cached_and_a_damaged_copy_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = agent_bytes()
    cached = list((tmp_path / "cache" / "v2v" / "agent").glob("v2v-agent-*.pyz"))
    assert len(cached) == 1 and cached[0].read_bytes() == first
    assert agent_bytes() == first
    cached[0].write_bytes(first[:-100])               # cut short: its digest no longer matches its name
    assert agent_bytes() == first
    assert [p.read_bytes() for p in (tmp_path / "cache" / "v2v" / "agent").glob("v2v-agent-*.pyz")] == [first]
