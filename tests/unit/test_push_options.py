"""Push mode without root or a network peer: target and address parsing, source names, and the agent's
one-line errors before it has a converter to talk to."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linux_capture.push import PushError, parse_address
from v2v.agent_certs import check_source_name
from v2v.errors import SourceError
from v2v.sources.host import CaptureOptions, staging_dir
from v2v.sources.push import parse_push_target

ROOT = Path(__file__).resolve().parents[2]


def test_push_target_names_the_source_and_the_listening_address():
    t = parse_push_target("push:db1", "127.0.0.1:8443", "/etc/v2v/tls")
    assert (str(t), t.host, t.listen_host, t.listen_port, t.listen) == \
        ("push:db1", "db1", "127.0.0.1", 8443, "127.0.0.1:8443")
    assert parse_push_target("push:db1", ":8443", "d").listen_host == ""
    assert parse_push_target("push:db1", "[::1]:8443", "d").listen == "[::1]:8443"
    for name, listen in (("push:", ":1"), ("push:a/b", ":1"), ("push:ca", ":1"), ("push:db1", "8443"),
                         ("push:db1", "h:0"), ("push:db1", "h:70000"), ("db1", ":1")):
        with pytest.raises(SourceError):
            parse_push_target(name, listen, "d")


def test_push_staging_does_not_depend_on_the_listening_port():
    a = parse_push_target("push:db1", ":8443", "d")
    b = parse_push_target("push:db1", "10.0.0.1:9000", "d")
    o = CaptureOptions(disks=("/dev/sda",))
    assert staging_dir(a, o, "/w") == staging_dir(b, o, "/w")
    assert os.path.basename(staging_dir(a, o, "/w")).startswith("v2v-capture-db1-")
    assert staging_dir(parse_push_target("push:db2", ":8443", "d"), o, "/w") != staging_dir(a, o, "/w")


def test_source_names_are_file_and_cn_safe():
    assert check_source_name("db1.example_2-a") == "db1.example_2-a"
    for bad in ("", "-x", "a b", "../x", "server", "v2v-converter", "x" * 64):
        with pytest.raises(SourceError):
            check_source_name(bad)


def test_agent_connect_address():
    assert parse_address("conv.example:8443") == ("conv.example", 8443)
    assert parse_address("[::1]:8443") == ("::1", 8443)
    for bad in ("conv", ":8443", "conv:", "conv:x", "conv:0", "conv:65536"):
        with pytest.raises(PushError):
            parse_address(bad)


def _agent(*args):
    return subprocess.run([sys.executable, "-m", "linux_capture", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=str(ROOT), timeout=60)


def _one_line(cp, *needles):
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("v2v-agent: error: "), cp.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_agent_with_a_missing_certificate_file_is_one_line_error(tmp_path):
    cp = _agent("--connect", "127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"), "--cert", "x", "--key", "y")
    _one_line(cp, "--ca {}".format(tmp_path / "ca.pem"), "No such file")


def test_agent_with_a_file_that_is_not_pem_is_one_line_error(tmp_path):
    for n in ("ca.pem", "db1.pem", "db1.key"):
        (tmp_path / n).write_text("")
    cp = _agent("--connect", "127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "db1.pem"),
                "--key", str(tmp_path / "db1.key"))
    _one_line(cp, "--ca {} is not a PEM certificate".format(tmp_path / "ca.pem"))


def test_agent_with_nobody_listening_is_one_line_error(tmp_path):
    import socket

    from v2v.agent_certs import make_certs
    make_certs(str(tmp_path), ["db1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # bound, not listening: connections are refused
        cp = _agent("--connect", "127.0.0.1:{}".format(port), "--ca", str(tmp_path / "ca.pem"), "--cert",
                    str(tmp_path / "db1.pem"), "--key", str(tmp_path / "db1.key"), "--retry-for", "0")
    _one_line(cp, "cannot connect to the converter at 127.0.0.1:{}: Connection refused".format(port))
