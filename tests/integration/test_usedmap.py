"""Used-block maps on real filesystems: sound (a copy holding only the mapped ranges passes fsck and
gives back every file byte for byte) and tight (the map is within a few percent of what the filesystem
itself counts as used). Figures are printed for the report.

Each case: mkfs on a small sparse image, write known files (several sizes, a directory of many entries,
a file fragmented by interleaved writes and deletes, a sparse file), unmount, map, copy only the mapped
ranges into a zeroed image, fsck it read-only and read every file back. ext*/XFS are loop-mounted, NTFS
goes through ntfs-3g on a loop device, FAT through mtools (no vfat module is needed).
"""
import contextlib
import hashlib
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import pytest

from diskfmt.extents import ExtentList
from diskfmt.usedmap import UnsupportedFilesystem, detect, map_filesystem, ntfs, used_map, xfs

pytestmark = pytest.mark.integration

MiB = 1 << 20
TIGHTNESS_PERCENT = 3.0


def _run(*argv: str, check: bool = True, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    cp = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                        env=dict(os.environ, **(env or {})))
    if check and cp.returncode != 0:
        raise AssertionError("{} exited {}: {}{}".format(" ".join(argv), cp.returncode, cp.stdout[-2000:],
                                                         cp.stderr[-2000:]))
    return cp


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip("needs {} (scripts/setup.sh installs them)".format(", ".join(missing)))


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount test filesystems")


@pytest.fixture
def report(capsys):
    """report(line): print a figure so it shows in the test output even when pytest captures stdout."""
    def emit(line: str) -> None:
        with capsys.disabled():
            print("\n    [usedmap] " + line, end="")
    return emit


@pytest.fixture
def work():
    d = Path(tempfile.mkdtemp(prefix="usedmap-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    yield d
    for mnt in (d / "mnt", d / "mnt-copy"):
        if os.path.ismount(str(mnt)):
            subprocess.run(["umount", "-l", str(mnt)], timeout=60)
    shutil.rmtree(str(d), ignore_errors=True)


# -- images, maps and copies


def _image(path: Path, size: int) -> None:
    with open(str(path), "wb") as f:
        f.truncate(size)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Callable[[int, int], bytes]]:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        yield lambda offset, length: os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _map(path: Path, fstype: Optional[str] = None, allow_dirty: bool = False) -> ExtentList:
    size = path.stat().st_size
    with _opened(path) as read:
        if fstype is None:
            fstype = detect(read, size)
            assert fstype is not None, "no filesystem detected in {}".format(path)
        return used_map(read, size, fstype, allow_dirty)


def _copy_mapped(src: Path, dst: Path, extents: ExtentList) -> None:
    """A copy of src holding only the mapped ranges: zeros (holes) everywhere else."""
    size = src.stat().st_size
    with open(str(src), "rb") as fin, open(str(dst), "wb") as fout:
        fout.truncate(size)
        for start, end in extents:
            assert end <= size, "map reaches past the image"
            fin.seek(start)
            fout.seek(start)
            pos = start
            while pos < end:
                buf = fin.read(min(4 * MiB, end - pos))
                fout.write(buf)
                pos += len(buf)


# -- known content


def _payload(seed: int, scale: float = 1.0) -> Dict[str, bytes]:
    """Files to write, by relative path, in writing order (those under frag/ are written interleaved)."""
    rng = random.Random(seed)

    def blob(n: int) -> bytes:
        return rng.randbytes(n)

    files = {}  # type: Dict[str, bytes]
    for n in (0, 1, 511, 4096, 4097, 65539, MiB + 7, int(3 * MiB * scale), int(8 * MiB * scale)):
        files["sizes/f{}.bin".format(n)] = blob(n)
    files["deep/a/b/c/d/leaf.bin"] = blob(10000)
    for i in range(int(300 * scale) or 1):
        files["many/entry-with-a-long-name-{:04d}.txt".format(i)] = blob(100 + i)
    return files


def _tree_hashes(root: Path) -> Dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _expected_hashes(files: Dict[str, bytes]) -> Dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def _populate_mounted(root: Path, seed: int, scale: float = 1.0, sparse: bool = True) -> Dict[str, bytes]:
    """Write the payload through a mounted filesystem, with fragmentation and deletes; returns what stays."""
    files = _payload(seed, scale)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    rng = random.Random(seed + 1)
    (root / "frag").mkdir()
    # Interleave two sets of files, each write synced so it is allocated in that order, then drop one set:
    # the holes it leaves are what the fragmented file below is written into.
    count = int(150 * scale) or 2
    for i in range(count):
        for name in ("keep", "drop"):
            p = root / "frag" / "{}-{:03d}".format(name, i)
            data = rng.randbytes(24 * 1024)
            with open(str(p), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if name == "keep":
                files["frag/" + p.name] = data
    # Fill the free space, then drop one set: the next file can only go into its holes.
    filler = root / "filler"
    _fill(filler, _statvfs_free(root) + 64 * MiB)  # until ENOSPC
    for i in range(count):
        (root / "frag" / "drop-{:03d}".format(i)).unlink()
    os.sync()
    big = bytearray()
    with open(str(root / "frag" / "fragmented.bin"), "wb") as f:
        for _ in range(count):
            chunk = rng.randbytes(20 * 1024)
            big += chunk
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    filler.unlink()
    files["frag/fragmented.bin"] = bytes(big)
    # Deleted files leave stale bytes in free blocks: the map must not need them.
    for i in range(0, int(300 * scale), 2):
        rel = "many/entry-with-a-long-name-{:04d}.txt".format(i)
        (root / rel).unlink()
        del files[rel]
    if sparse:
        with open(str(root / "sparse.bin"), "wb") as f:
            f.write(b"head" * 1024)
            f.seek(6 * MiB)
            f.write(b"tail" * 1024)
        files["sparse.bin"] = b"head" * 1024 + bytes(6 * MiB - 4096) + b"tail" * 1024
    os.sync()
    return files


def _statvfs_free(root: Path) -> int:
    st = os.statvfs(str(root))
    return st.f_bfree * st.f_frsize


def _fill(path: Path, size: int) -> None:
    """Write ``size`` bytes of zeros (fewer if the filesystem fills up first)."""
    block = bytes(MiB)
    with open(str(path), "wb", buffering=0) as f:
        left = size
        try:
            while left > 0:
                left -= f.write(block[:min(MiB, left)])
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            pass


def _find(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in a tool's output (an AssertionError naming it when absent)."""
    m = re.search(pattern, text)
    assert m is not None, "{!r} not in: {}".format(pattern, text[-1000:])
    return m.group(1)


def _fragments(path: Path) -> Optional[int]:
    if shutil.which("filefrag") is None:
        return None
    cp = _run("filefrag", str(path), check=False)
    m = re.search(r"(\d+) extents? found", cp.stdout)
    return int(m.group(1)) if m else None


# -- tightness


class Figures(NamedTuple):
    """Sizes in bytes. fs_used: blocks the filesystem's own counters call allocated (metadata, journal and
    log included); df_used: what df shows (ext and XFS leave their fixed metadata and journal/log out)."""
    name: str
    image: int
    mapped: int
    fs_used: int
    df_used: Optional[int]

    def line(self) -> str:
        def pct(ref: int) -> str:
            return "{:+.2f}%".format(100.0 * (self.mapped - ref) / ref)
        df = "n/a" if self.df_used is None else "{:.2f} MiB (map {})".format(
            self.df_used / MiB, pct(self.df_used))
        return ("{}: image {:.0f} MiB, map {:.2f} MiB, filesystem's own used {:.2f} MiB (map {}), "
                "df used {}".format(self.name, self.image / MiB, self.mapped / MiB, self.fs_used / MiB,
                                    pct(self.fs_used), df))


def _check_tight(fig: Figures, report: Callable[[str], None], reference: int, slack: int = 0) -> None:
    """The map is no larger than what the filesystem allocates, and within TIGHTNESS_PERCENT (plus
    ``slack`` bytes of fixed metadata) of ``reference``."""
    report(fig.line())
    assert fig.mapped < fig.image, "the map is the whole image"
    assert fig.mapped <= fig.fs_used * (1 + TIGHTNESS_PERCENT / 100), fig.line()
    assert abs(fig.mapped - reference) <= reference * TIGHTNESS_PERCENT / 100 + slack, fig.line()


def _statvfs_used(mnt: Path) -> int:
    st = os.statvfs(str(mnt))
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# -- ext2/3/4


class ExtCase(NamedTuple):
    name: str
    mkfs: List[str]
    fstype: str
    size: int = 128 * MiB


EXT_CASES = [
    ExtCase("ext4", ["mkfs.ext4"], "ext4"),
    ExtCase("ext4-1k-blocks-32bit", ["mkfs.ext4", "-b", "1024", "-O", "^64bit"], "ext4"),
    ExtCase("ext4-meta_bg", ["mkfs.ext4", "-O", "meta_bg,^resize_inode"], "ext4"),
    ExtCase("ext4-bigalloc", ["mkfs.ext4", "-O", "bigalloc", "-C", "16384"], "ext4"),
    ExtCase("ext4-no-flex_bg", ["mkfs.ext4", "-O", "^flex_bg"], "ext4"),
    ExtCase("ext3", ["mkfs.ext3"], "ext3"),
    ExtCase("ext2-1k-blocks", ["mkfs.ext2", "-b", "1024"], "ext2"),
]


def _dumpe2fs(img: Path) -> Dict[str, str]:
    out = _run("dumpe2fs", "-h", str(img)).stdout
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)}


@pytest.mark.parametrize("case", EXT_CASES, ids=lambda c: c.name)
def test_ext_copy_of_mapped_blocks_passes_fsck_and_keeps_every_file(case: ExtCase, work: Path,
                                                                   report) -> None:
    _need_root()
    _need("mkfs.ext4", "e2fsck", "dumpe2fs", "mount")
    img, copy, mnt, mnt_copy = work / "fs.img", work / "copy.img", work / "mnt", work / "mnt-copy"
    _image(img, case.size)
    _run(*case.mkfs, "-q", "-F", str(img))
    mnt.mkdir()
    _run("mount", "-o", "loop", str(img), str(mnt))
    try:
        files = _populate_mounted(mnt, seed=len(case.name))
        frags = _fragments(mnt / "frag" / "fragmented.bin")
        df_used = _statvfs_used(mnt)
    finally:
        _run("umount", str(mnt))

    with _opened(img) as read:
        assert detect(read, case.size) == case.fstype
    extents = _map(img, case.fstype)
    _copy_mapped(img, copy, extents)
    _run("e2fsck", "-fn", str(copy))
    mnt_copy.mkdir()
    _run("mount", "-o", "loop,ro", str(copy), str(mnt_copy))
    try:
        assert _tree_hashes(mnt_copy) == _expected_hashes(files)
    finally:
        _run("umount", str(mnt_copy))
    report("{}: fragmented.bin has {} extents".format(case.name, frags))
    # df leaves out all fixed metadata and the journal. The map leaves out a clean journal's body and,
    # with group checksums, free inode-table tails; it keeps bitmaps, descriptors, reserved GDT blocks and
    # superblock backups (allow 2% of the image), and without group checksums whole inode tables.
    info = _dumpe2fs(img)
    fs_used = (int(info["Block count"]) - int(info["Free blocks"])) * int(info["Block size"])
    slack = case.size * 2 // 100
    if not re.search(r"\b(uninit_bg|metadata_csum)\b", info["Filesystem features"]):
        slack += int(info["Inode count"]) * int(info["Inode size"])
    fig = Figures(case.name, case.size, extents.total(), fs_used, df_used)
    _check_tight(fig, report, reference=df_used, slack=slack)


def test_mounted_ext4_is_refused_until_allowed_dirty(work: Path) -> None:
    _need_root()
    _need("mkfs.ext4", "mount")
    img, mnt = work / "fs.img", work / "mnt"
    _image(img, 64 * MiB)
    _run("mkfs.ext4", "-q", "-F", str(img))
    mnt.mkdir()
    _run("mount", "-o", "loop", str(img), str(mnt))
    try:
        (mnt / "file").write_bytes(b"x" * 100000)
        os.sync()
        with pytest.raises(UnsupportedFilesystem, match="needs recovery"):
            _map(img, "ext4")
        assert _map(img, "ext4", allow_dirty=True).total() > 0
        with _opened(img) as read:
            whole = map_filesystem(read, 64 * MiB)
        assert not whole.exact and whole.extents == ExtentList([(0, 64 * MiB)]) and "recovery" in whole.reason
    finally:
        _run("umount", str(mnt))
    assert _map(img, "ext4").total() < 32 * MiB


# -- XFS


class XfsCase(NamedTuple):
    name: str
    mkfs: List[str]
    size: int = 320 * MiB  # mkfs.xfs refuses filesystems under 300 MB


XFS_CASES = [
    XfsCase("xfs-v5", ["mkfs.xfs"]),
    XfsCase("xfs-v5-1k-blocks-deep-btree", ["mkfs.xfs", "-b", "size=1024", "-d", "agcount=2"]),
    XfsCase("xfs-v4", ["mkfs.xfs", "-m", "crc=0"]),
]


def _xfs_db(img: Path, *commands: str) -> Dict[str, int]:
    argv = ["xfs_db", "-r"]
    for c in commands:
        argv += ["-c", c]
    out = _run(*argv, str(img)).stdout
    return {k.strip(): int(v) for k, v in re.findall(r"^(\w+) = (\d+)$", out, re.M)}


def _check_against_xfs_db(img: Path, extents: ExtentList) -> None:
    """xfs_db's free-space listing (bnobt plus AG free list) and the map cover the data device together,
    and overlap only on AG free-list blocks (allocated to the AGFL, so kept by the map)."""
    sb = _xfs_db(img, "sb 0", "print dblocks agblocks agcount blocksize")
    bs = sb["blocksize"]
    free = ExtentList()
    for agno, agbno, length in re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$",
                                          _run("xfs_db", "-r", "-c", "freesp -d", str(img)).stdout, re.M):
        start = (int(agno) * sb["agblocks"] + int(agbno)) * bs
        free.add(start, start + int(length) * bs)
    device = ExtentList([(0, sb["dblocks"] * bs)])
    assert (extents | free).clip(0, sb["dblocks"] * bs) == device, "blocks neither mapped nor free"
    assert (extents & free).total() <= sb["agcount"] * 16 * bs, "the map keeps free-space extents"


def _punch_xfs_free_space(root: Path) -> None:
    """Many small files with every other one deleted: hundreds of free extents per AG."""
    d = root / "holes"
    d.mkdir()
    for i in range(1600):
        (d / "h{:04d}".format(i)).write_bytes(b"h" * 1024)
    os.sync()
    for i in range(0, 1600, 2):
        (d / "h{:04d}".format(i)).unlink()


@pytest.mark.parametrize("case", XFS_CASES, ids=lambda c: c.name)
def test_xfs_copy_of_mapped_blocks_passes_repair_and_keeps_every_file(case: XfsCase, work: Path,
                                                                      report) -> None:
    _need_root()
    _need("mkfs.xfs", "xfs_repair", "xfs_db", "mount")
    img, copy, mnt, mnt_copy = work / "fs.img", work / "copy.img", work / "mnt", work / "mnt-copy"
    _image(img, case.size)
    _run(*case.mkfs, "-q", "-f", str(img))
    mnt.mkdir()
    if _run("mount", "-o", "loop", str(img), str(mnt), check=False).returncode != 0:
        pytest.skip("this kernel does not mount {} (XFS v4 support may be compiled out)".format(case.name))
    try:
        files = _populate_mounted(mnt, seed=len(case.name))
        if "deep" in case.name:
            _punch_xfs_free_space(mnt)
            files.update({"holes/" + p.name: p.read_bytes() for p in (mnt / "holes").iterdir()})
        frags = _fragments(mnt / "frag" / "fragmented.bin")
        df_used = _statvfs_used(mnt)
    finally:
        _run("umount", str(mnt))

    bno_levels = _xfs_db(img, "agf 0", "print bnolevel")["bnolevel"]
    with _opened(img) as read:
        assert detect(read, case.size) == "xfs"
    extents = _map(img, "xfs")
    _check_against_xfs_db(img, extents)
    _copy_mapped(img, copy, extents)
    _run("xfs_repair", "-n", "-f", str(copy))
    mnt_copy.mkdir()
    _run("mount", "-o", "loop,ro", str(copy), str(mnt_copy))
    try:
        assert _tree_hashes(mnt_copy) == _expected_hashes(files)
    finally:
        _run("umount", str(mnt_copy))
    sb = _xfs_db(img, "sb 0", "print dblocks fdblocks blocksize")
    fs_used = (sb["dblocks"] - sb["fdblocks"]) * sb["blocksize"]
    report("{}: fragmented.bin has {} extents, AG 0 free-space btree has {} level(s)".format(
        case.name, frags, bno_levels))
    if "deep" in case.name:
        assert bno_levels >= 2, "the case meant to exercise btree nodes has a single-leaf free-space btree"
    # The internal log is allocated and kept whole (df leaves it out): compare with XFS's own count.
    _check_tight(Figures(case.name, case.size, extents.total(), fs_used, df_used), report, reference=fs_used)


def test_xfs_v4_map_matches_xfs_db_and_copy_passes_repair(work: Path, report) -> None:
    """XFS v4 (16-byte btree headers) without mounting it, as kernels may no longer mount v4: files are
    put in by mkfs.xfs -p, and the copy is checked by xfs_repair only."""
    _need("mkfs.xfs", "xfs_repair", "xfs_db")
    size = 320 * MiB
    img, copy, stage = work / "fs.img", work / "copy.img", work / "stage"
    stage.mkdir()
    rng = random.Random(4)
    lines = ["/dev/null", "0 0", "d--755 0 0"]
    for i in range(400):
        (stage / "f{:03d}".format(i)).write_bytes(rng.randbytes(rng.choice([700, 5000, 70000])))
        lines.append("f{:03d} ---644 0 0 {}".format(i, stage / "f{:03d}".format(i)))
    lines.append("$")
    (work / "proto").write_text("\n".join(lines) + "\n")
    _image(img, size)
    _run("mkfs.xfs", "-q", "-f", "-m", "crc=0", "-b", "size=1024", "-p", str(work / "proto"), str(img))
    with _opened(img) as read:
        assert xfs.read_superblock(read).version == 4
    extents = _map(img, "xfs")
    _check_against_xfs_db(img, extents)
    _copy_mapped(img, copy, extents)
    _run("xfs_repair", "-n", "-f", str(copy))
    sb = _xfs_db(img, "sb 0", "print dblocks fdblocks blocksize")
    fs_used = (sb["dblocks"] - sb["fdblocks"]) * sb["blocksize"]
    _check_tight(Figures("xfs-v4", size, extents.total(), fs_used, None), report, reference=fs_used)


# -- FAT (through mtools: no vfat kernel module needed)


class FatCase(NamedTuple):
    name: str
    mkfs: List[str]
    size: int
    scale: float


FAT_CASES = [
    FatCase("fat32", ["mkfs.vfat", "-F", "32"], 128 * MiB, 1.0),
    FatCase("fat16", ["mkfs.vfat", "-F", "16"], 64 * MiB, 1.0),
    FatCase("fat12", ["mkfs.vfat", "-F", "12"], 16 * MiB, 0.25),
]
_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def _mtools(*argv: str) -> subprocess.CompletedProcess:
    return _run(*argv, env=_MTOOLS_ENV)


def _populate_fat(img: Path, stage: Path, seed: int, scale: float) -> Dict[str, bytes]:
    files = _payload(seed, scale)
    for rel, data in files.items():
        p = stage / "tree" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    tree = sorted(str(p) for p in (stage / "tree").iterdir())
    _mtools("mcopy", "-i", str(img), "-s", "-Q", *tree, "::/")
    # Interleaved files copied in one go are allocated in that order; deleting one set leaves holes.
    rng = random.Random(seed + 1)
    fragdir = stage / "frag"
    fragdir.mkdir()
    count = max(2, int(60 * scale))
    order = []
    for i in range(count):
        for name in ("keep", "drop"):
            p = fragdir / "{}-{:03d}".format(name, i)
            p.write_bytes(rng.randbytes(24 * 1024))
            order.append(str(p))
            if name == "keep":
                files["frag/" + p.name] = p.read_bytes()
    _mtools("mmd", "-i", str(img), "::/frag")
    _mtools("mcopy", "-i", str(img), "-Q", *order, "::/frag/")
    free = int(_find(r"([\d ]+) bytes free", _mtools("mdir", "-i", str(img), "::/").stdout).replace(" ", ""))
    filler = stage / "filler"
    _image(filler, max(0, free - 64 * 1024))
    _mtools("mcopy", "-i", str(img), "-Q", str(filler), "::/")
    _mtools("mdel", "-i", str(img), *["::/frag/drop-{:03d}".format(i) for i in range(count)])
    big = fragdir / "fragmented.bin"
    big.write_bytes(rng.randbytes(int(count * 20 * 1024)))
    _mtools("mcopy", "-i", str(img), "-Q", str(big), "::/frag/")
    _mtools("mdel", "-i", str(img), "::/filler")
    files["frag/fragmented.bin"] = big.read_bytes()
    for i in range(0, int(300 * scale), 2):
        rel = "many/entry-with-a-long-name-{:04d}.txt".format(i)
        _mtools("mdel", "-i", str(img), "::/" + rel)
        del files[rel]
    return files


def _fsck_fat_used(img: Path) -> int:
    """Bytes the volume counts as used: areas before cluster 2 plus used clusters (from fsck.fat)."""
    out = _run("fsck.vfat", "-n", "-v", str(img)).stdout
    used = int(_find(r"(\d+)/\d+ clusters", out))
    csize = int(_find(r"(\d+) bytes per cluster", out))
    data_start = int(_find(r"Data area starts at byte (\d+)", out))
    return data_start + used * csize


@pytest.mark.parametrize("case", FAT_CASES, ids=lambda c: c.name)
def test_fat_copy_of_mapped_clusters_passes_fsck_and_keeps_every_file(case: FatCase, work: Path,
                                                                      report) -> None:
    _need("mkfs.vfat", "fsck.vfat", "mcopy", "mdel", "mmd", "mdir", "mshowfat")
    img, copy = work / "fs.img", work / "copy.img"
    _image(img, case.size)
    _run(*case.mkfs, str(img))
    files = _populate_fat(img, work, seed=len(case.name), scale=case.scale)

    with _opened(img) as read:
        assert detect(read, case.size) == "vfat"
    extents = _map(img, "vfat")
    _copy_mapped(img, copy, extents)
    _run("fsck.vfat", "-n", str(copy))
    out = work / "out"
    out.mkdir()
    _mtools("mcopy", "-i", str(copy), "-s", "-n", "-Q", "::/*", str(out) + "/")
    assert _tree_hashes(out) == _expected_hashes(files)
    chain = _mtools("mshowfat", "-i", str(img), "::/frag/fragmented.bin").stdout
    report("{}: fragmented.bin has {} cluster runs".format(case.name, chain.count("<")))
    fs_used = _fsck_fat_used(img)
    _check_tight(Figures(case.name, case.size, extents.total(), fs_used, None), report, reference=fs_used)


# -- NTFS (ntfs-3g on a loop device, so that umount waits for the driver)


@contextlib.contextmanager
def _ntfs_mounted(img: Path, mnt: Path, readonly: bool = False) -> Iterator[Path]:
    loop = _run("losetup", "-f", "--show", str(img)).stdout.strip()
    try:
        _run("ntfs-3g", *(["-o", "ro"] if readonly else []), loop, str(mnt))
        try:
            yield mnt
        finally:
            _run("umount", str(mnt))
    finally:
        _run("losetup", "-d", loop)


@pytest.mark.parametrize("cluster", [4096, 1024])
def test_ntfs_copy_of_mapped_clusters_mounts_and_keeps_every_file(cluster: int, work: Path, report) -> None:
    _need_root()
    _need("mkfs.ntfs", "ntfs-3g", "ntfsfix", "losetup")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("ntfs-3g needs /dev/fuse")
    size = 128 * MiB
    img, copy, mnt, mnt_copy = work / "fs.img", work / "copy.img", work / "mnt", work / "mnt-copy"
    _image(img, size)
    _run("mkfs.ntfs", "-Q", "-F", "-c", str(cluster), str(img))
    mnt.mkdir()
    with _ntfs_mounted(img, mnt):
        files = _populate_mounted(mnt, seed=cluster, sparse=False)
        df_used = _statvfs_used(mnt)

    with _opened(img) as read:
        assert detect(read, size) == "ntfs"
    extents = _map(img, "ntfs")
    _copy_mapped(img, copy, extents)
    _run("ntfsfix", "-n", str(copy))
    mnt_copy.mkdir()
    with _ntfs_mounted(copy, mnt_copy, readonly=True):
        assert _tree_hashes(mnt_copy) == _expected_hashes(files)
    # df on ntfs-3g counts clusters set in $Bitmap: the filesystem's own figure.
    fig = Figures("ntfs-{}".format(cluster), size, extents.total(), df_used, df_used)
    _check_tight(fig, report, reference=df_used)


def _set_ntfs_volume_dirty(img: Path) -> None:
    """Set VOLUME_IS_DIRTY in $Volume's $VOLUME_INFORMATION, as Windows does when chkdsk is due."""
    with _opened(img) as read:
        boot = ntfs.read_boot_sector(read)
        base = ntfs.Mft(read, boot).record_offset(3)
        rec = ntfs.apply_fixups(read(base, boot.record_size), b"FILE", "$Volume")
    pos = struct.unpack_from("<H", rec, 20)[0]
    while struct.unpack_from("<I", rec, pos)[0] != ntfs.AT_VOLUME_INFORMATION:
        pos += struct.unpack_from("<I", rec, pos + 4)[0]
    flags_at = pos + struct.unpack_from("<H", rec, pos + 20)[0] + 10
    assert flags_at % ntfs.FIXUP_STRIDE < ntfs.FIXUP_STRIDE - 2, "flags sit under an update sequence number"
    flags = struct.unpack_from("<H", rec, flags_at)[0] | ntfs.VOLUME_IS_DIRTY
    with open(str(img), "r+b") as f:
        f.seek(base + flags_at)
        f.write(struct.pack("<H", flags))


def _write_ntfs_restart_page(img: Path, flags: int) -> None:
    """A $LogFile restart page with one client in use, as a running or crashed Windows leaves it."""
    page = bytearray(4096)
    page[0:4] = b"RSTR"
    struct.pack_into("<HHQIIHhh", page, 4, 0x1E, 9, 0, 4096, 4096, 0x30, 1, 1)
    struct.pack_into("<QHHHH", page, 0x30, 1234, 1, 0xFFFF, 0, flags)
    usn = b"\x07\x00"
    page[0x1E:0x20] = usn
    for i in range(1, 9):
        end = i * ntfs.FIXUP_STRIDE
        page[0x1E + 2 * i:0x20 + 2 * i] = page[end - 2:end]
        page[end - 2:end] = usn
    with _opened(img) as read:
        boot = ntfs.read_boot_sector(read)
        runs = ntfs.Mft(read, boot).stream_runs(2)
    first_lcn = runs[0][2]
    assert first_lcn is not None
    with open(str(img), "r+b") as f:
        f.seek(first_lcn * boot.cluster_size)
        f.write(bytes(page))


@pytest.mark.parametrize("state", ["volume-dirty", "log-not-clean", "log-clean"])
def test_ntfs_that_may_need_log_replay_is_refused_until_allowed_dirty(state: str, work: Path) -> None:
    _need("mkfs.ntfs")
    img = work / "fs.img"
    _image(img, 64 * MiB)
    _run("mkfs.ntfs", "-Q", "-F", str(img))
    if state == "volume-dirty":
        _set_ntfs_volume_dirty(img)
    else:
        _write_ntfs_restart_page(img, ntfs.RESTART_VOLUME_IS_CLEAN if state == "log-clean" else 0)
    if state == "log-clean":
        assert _map(img, "ntfs").total() < 16 * MiB
        return
    with pytest.raises(UnsupportedFilesystem, match="dirty|not closed cleanly"):
        _map(img, "ntfs")
    assert 0 < _map(img, "ntfs", allow_dirty=True).total() < 16 * MiB


# -- swap and unknown content


def test_swap_map_is_its_header_page_and_keeps_label_and_uuid(work: Path, report) -> None:
    _need("mkswap", "blkid")
    img, copy = work / "swap.img", work / "copy.img"
    size = 64 * MiB
    _image(img, size)
    os.chmod(str(img), 0o600)
    _run("mkswap", "-L", "swaptest", str(img))
    with open(str(img), "r+b") as f:  # stale pages from earlier use must not be needed
        f.seek(8 * MiB)
        f.write(os.urandom(MiB))
    with _opened(img) as read:
        assert detect(read, size) == "swap"
    extents = _map(img, "swap")
    assert extents == ExtentList([(0, 4096)])
    _copy_mapped(img, copy, extents)

    def ids(p: Path) -> Dict[str, str]:
        out = _run("blkid", "-p", "-o", "export", str(p)).stdout
        pairs = (ln.split("=", 1) for ln in out.splitlines())
        return {k: v for k, v in pairs if k in ("TYPE", "UUID", "LABEL")}
    assert ids(copy) == ids(img) and ids(img)["TYPE"] == "swap"
    report("swap: image 64 MiB, map {} bytes".format(extents.total()))


def test_hibernation_image_in_swap_is_kept_whole(work: Path) -> None:
    _need("mkswap")
    img = work / "swap.img"
    _image(img, 16 * MiB)
    os.chmod(str(img), 0o600)
    _run("mkswap", str(img))
    with open(str(img), "r+b") as f:
        f.seek(4096 - 10)
        f.write(b"S1SUSPEND\x00")
    assert _map(img).total() == 16 * MiB


def test_unknown_content_is_sent_whole(work: Path) -> None:
    img = work / "noise.img"
    with open(str(img), "wb") as f:
        f.write(random.Random(7).randbytes(4 * MiB))
    with _opened(img) as read:
        assert detect(read, 4 * MiB) is None
        result = map_filesystem(read, 4 * MiB)
        with pytest.raises(UnsupportedFilesystem):
            used_map(read, 4 * MiB, "btrfs")
    assert not result.exact and result.fstype is None
    assert result.extents == ExtentList([(0, 4 * MiB)])


def test_filesystem_larger_than_its_partition_is_sent_whole(work: Path) -> None:
    _need("mkfs.ext4")
    img = work / "fs.img"
    _image(img, 64 * MiB)
    _run("mkfs.ext4", "-q", "-F", str(img))
    with _opened(img) as read:
        result = map_filesystem(read, 32 * MiB, "ext4")
    assert not result.exact and "larger than" in result.reason
    assert result.extents.total() == 32 * MiB


def test_space_past_the_filesystem_end_is_kept(work: Path) -> None:
    _need("mkfs.ext4")
    img = work / "fs.img"
    _image(img, 80 * MiB)
    _run("mkfs.ext4", "-q", "-F", str(img), "64M")
    extents = _map(img, "ext4")
    assert extents.covers(64 * MiB, 80 * MiB)


# -- corrupted metadata: a FormatError (whole range sent) or a map, never another exception


FUZZ_CASES = {
    "ext4": (["mkfs.ext4", "-q", "-F"], 32 * MiB),
    "ext4-meta_bg": (["mkfs.ext4", "-q", "-F", "-O", "meta_bg,^resize_inode", "-b", "1024"], 32 * MiB),
    "xfs": (["mkfs.xfs", "-q", "-f"], 320 * MiB),
    "fat32": (["mkfs.vfat", "-F", "32"], 64 * MiB),
    "fat12": (["mkfs.vfat", "-F", "12"], 4 * MiB),
    "ntfs": (["mkfs.ntfs", "-Q", "-F"], 32 * MiB),
    "swap": (["mkswap"], 4 * MiB),
}


@pytest.mark.parametrize("name", sorted(FUZZ_CASES))
def test_corrupted_metadata_never_crashes_the_parser(name: str, work: Path) -> None:
    mkfs, size = FUZZ_CASES[name]
    _need(mkfs[0])
    img = work / "fs.img"
    _image(img, size)
    _run(*mkfs, str(img))
    clean = _map(img)
    targets = [(s, min(e, s + 4096)) for s, e in clean] + [(0, 64 * 1024)]
    rng = random.Random(name)
    fd = os.open(str(img), os.O_RDONLY)
    try:
        for _ in range(300):
            patch = {}
            for _ in range(rng.randint(1, 4)):
                lo, hi = rng.choice(targets)
                patch[rng.randrange(lo, hi)] = rng.randrange(256)

            def read(offset: int, length: int, patch: Dict[int, int] = patch) -> bytes:
                data = bytearray(os.pread(fd, length, offset))
                for at, value in patch.items():
                    if offset <= at < offset + len(data):
                        data[at - offset] = value
                return bytes(data)

            fstype = detect(read, size)
            result = map_filesystem(read, size, fstype or name.split("-")[0].replace("fat32", "vfat")
                                    .replace("fat12", "vfat"))
            assert result.extents.total() > 0
            for start, end in result.extents:
                assert 0 <= start < end <= size
    finally:
        os.close(fd)
