"""The one qemu-img wrapper: info, check, overlays, convert with progress, map.

Not bundled into the agent (it runs qemu-img on the conversion host).
"""
import hashlib
import json
import os
import re
import subprocess
from typing import Callable, Dict, List, Optional, Tuple

from v2v.command import output, run
from v2v.errors import CommandError, OutputError, SourceError

QEMU_IMG = "qemu-img"


def info(path: str, fmt: Optional[str] = None, backing_chain: bool = False) -> Dict:
    """qemu-img info as a dict (for a chain: the top image's dict with "chain" holding all)."""
    argv = [QEMU_IMG, "info", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    if backing_chain:
        argv.append("--backing-chain")
    argv.append(path)
    try:
        data = json.loads(output(argv, what="qemu-img info " + os.path.basename(path)))
    except CommandError as e:
        raise SourceError("{}: cannot read as a disk image: {}".format(path, _tail(e.stderr))) from None
    if backing_chain:
        return dict(data[0], chain=data)
    return data


def check(path: str, fmt: str) -> None:
    """Consistency check for formats qemu-img can check; raises SourceError on corruption."""
    cp = run([QEMU_IMG, "check", "-f", fmt, "--output=json", path], check=False)
    if cp.returncode in (0, 3):     # 3: leaked clusters only, harmless for reading
        return
    if cp.returncode == 63 or b"not support" in cp.stderr:  # format has no check
        return
    raise SourceError("{}: the {} image is corrupt or truncated: {}".format(
        path, fmt, _tail(cp.stderr.decode("utf-8", "replace") or cp.stdout.decode("utf-8", "replace"))))


def create_overlay(backing: str, backing_fmt: str, path: str) -> None:
    """A qcow2 overlay over backing; all writes land in the overlay, never in backing."""
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", os.path.abspath(backing), "-F", backing_fmt, path],
        what="creating an overlay")


def create(path: str, fmt: str, size: int, preallocation: str = "off") -> None:
    run([QEMU_IMG, "create", "-q", "-f", fmt, "-o", "preallocation=" + preallocation, path, str(size)],
        what="creating " + path)


def convert(src: str, src_fmt: str, dst: str, dst_fmt: str,
            progress: Optional[Callable[[float], None]] = None, compress: bool = False,
            target_is_zero: bool = False) -> None:
    """Copy src to dst sparsely (only allocated, non-zero data is written); progress gets 0..100."""
    argv = [QEMU_IMG, "convert", "-p", "-f", src_fmt, "-O", dst_fmt, "-W", "-m", "4"]
    if dst_fmt == "qcow2":
        argv += ["-o", "compat=1.1"]
        if compress:
            argv.append("-c")
    if target_is_zero:
        argv += ["-n", "--target-is-zero"]
    argv += [src, dst]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    buf = b""
    pat = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
    try:
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(64)
            if not chunk:
                break
            buf = (buf + chunk)[-256:]
            m = None
            for m in pat.finditer(buf):
                pass
            if m is not None and progress is not None:
                progress(float(m.group(1)))
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        rc = proc.wait()
    except BaseException:
        proc.kill()          # interrupted: the target is about to be removed, stop writing it
        proc.wait()
        raise
    if rc != 0:
        if "No space left" in err:
            raise OutputError("no space left on the device holding {} ({})".format(
                os.path.dirname(os.path.abspath(dst)), _tail(err)))
        raise CommandError(argv, rc, err, "copying the disk")


def allocated_extents(path: str, fmt: str) -> List[Dict]:
    """qemu-img map: the extents that hold data (and where), for the whole chain."""
    data = json.loads(output([QEMU_IMG, "map", "--output=json", "-f", fmt, path]))
    return [e for e in data if e.get("data")]


def sha256_file(path: str, progress: Optional[Callable[[int, int], None]] = None) -> str:
    """sha256 of the file's bytes; holes in sparse files are read as zeros (that is what the file holds)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(4 << 20)
            if not b:
                break
            h.update(b)
            done += len(b)
            if progress is not None:
                progress(done, size)
    return h.hexdigest()


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no detail"


def measure(path: str, fmt: str, out_fmt: str) -> Dict:
    """qemu-img measure: bytes a converted copy needs ("required") and fully allocated ("fully-allocated")."""
    return json.loads(output([QEMU_IMG, "measure", "--output=json", "-f", fmt, "-O", out_fmt, path]))


def write_ranges(src_raw: str, dst_qcow2: str, ranges: List[Tuple[int, int]], piece: int = 4 << 20) -> None:
    """Copy the byte ranges of a raw image into the same ranges of a qcow2 image, through one qemu-nbd
    (libnbd starts it by socket activation): one process for a refresh's scattered chunks. All-zero
    pieces become zero writes: zero clusters hide the backing file's old data."""
    if not ranges:
        return
    import nbd
    h = nbd.NBD()
    try:
        h.connect_systemd_socket_activation(["qemu-nbd", "-f", "qcow2", "--cache=writeback",
                                             os.path.abspath(dst_qcow2)])
        fd = os.open(src_raw, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for offset, length in ranges:
                pos, end = offset, offset + length
                while pos < end:
                    n = min(piece, end - pos)
                    data = os.pread(fd, n, pos)
                    if len(data) != n:
                        raise OutputError("{}: short read at offset {} ({} of {} bytes)".format(
                            src_raw, pos, len(data), n))
                    if data.count(0) == n:
                        h.zero(n, pos)
                    else:
                        h.pwrite(data, pos)
                    pos += n
        finally:
            os.close(fd)
        h.flush()
        h.shutdown()
    except nbd.Error as e:
        raise OutputError("writing changed blocks into {}: {}".format(os.path.basename(dst_qcow2), e)) from None
    finally:
        del h                               # closes the connection and reaps qemu-nbd


def rebase_unsafe(path: str, backing: str, backing_fmt: str = "qcow2") -> None:
    """Point path at another backing file without copying (the caller guarantees same content)."""
    run([QEMU_IMG, "rebase", "-u", "-f", "qcow2", "-b", os.path.abspath(backing), "-F", backing_fmt, path],
        what="rebasing " + os.path.basename(path))


def commit(path: str) -> None:
    """Merge path's clusters into its backing file (qemu-img commit); path is left empty."""
    run([QEMU_IMG, "commit", "-q", "-f", "qcow2", path], what="merging " + os.path.basename(path))
