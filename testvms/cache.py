"""A small content-addressed cache for test-guest artifacts (debootstrap tarballs, disk images).

Layout of the cache directory (default: $V2V_TESTVM_CACHE or /var/tmp/v2v-testvms):

    debs/                              debootstrap's --cache-dir (downloaded .debs, speeds up rebuilds)
    rootfs-<key16>.tar.gz              a debootstrapped tree, shared by every variant built from it
    rootfs-<key16>.json                its recipe and build facts
    <variant>-<key16>.img              a finished raw disk image (mode 0444; never modify: use an overlay)
    <variant>-<key16>.json             its recipe and build facts (kernel, sizes, seconds)
    <name>.lock                        fcntl lock files (one per artifact name)
    .tmp-*                             partial artifacts; renamed into place only when complete

Keys are sha256 over a canonical JSON of the recipe parameters plus the recipe modules' code (Python
files as their AST, so comments, formatting and lint fixes that keep the code do not cause a rebuild),
so a changed recipe gives a new name (a rebuild) and an unchanged one is reused. Several checkouts may
share one cache: each uses the names its own recipes give. The .json sidecar's mtime records last use.
"""
import ast
import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional

DEFAULT_DIR = "/var/tmp/v2v-testvms"


def cache_dir(path: Optional[str] = None) -> Path:
    d = Path(path or os.environ.get("V2V_TESTVM_CACHE") or DEFAULT_DIR)
    d.mkdir(parents=True, exist_ok=True)
    return d


def recipe_key(params: Dict, sources: Iterable[Path] = ()) -> str:
    """sha256 of the canonical JSON of params plus the bytes of each source file (by name and content)."""
    h = hashlib.sha256()
    h.update(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    for src in sorted(Path(s) for s in sources):
        h.update(b"\0" + src.name.encode() + b"\0")
        data = src.read_bytes()
        if src.suffix == ".py":
            data = ast.dump(_strip_docstrings(ast.parse(data))).encode()
        h.update(data)
    return h.hexdigest()


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Docstrings are documentation, not recipe: drop them before hashing."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def touch(path: Path) -> None:
    """Record a use of a cached artifact (on its .json sidecar: the artifact itself is never touched)."""
    try:
        os.utime(str(path))
    except OSError:
        pass


@contextlib.contextmanager
def locked(directory: Path, name: str) -> Iterator[None]:
    """Exclusive fcntl lock on <directory>/<name>.lock for the duration of the block (blocks until free)."""
    fd = os.open(str(directory / (name + ".lock")), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def get_or_build(directory: Path, filename: str, meta: Dict, builder: Callable[[Path], Dict],
                 force: bool = False, log: Callable[[str], None] = lambda s: None) -> Path:
    """Return directory/filename, building it first under the artifact's lock if it is missing.

    builder(tmp_path) writes the artifact to tmp_path and returns extra facts for the .json sidecar.
    The result is renamed into place only when builder returns; a failed build leaves nothing behind.
    """
    final = directory / filename
    stem = filename.rsplit(".", 2)[0] if filename.endswith(".tar.gz") else filename.rsplit(".", 1)[0]
    with locked(directory, stem):
        if final.exists() and not force:
            log("cached: {}".format(final))
            return final
        tmp = directory / ".tmp-{}.{}".format(filename, os.getpid())
        try:
            facts = builder(tmp)
            os.chmod(str(tmp), 0o444)
            side = dict(meta, **(facts or {}))
            side_tmp = directory / ".tmp-{}.json.{}".format(stem, os.getpid())
            side_tmp.write_text(json.dumps(side, indent=2, sort_keys=True) + "\n")
            os.replace(str(side_tmp), str(directory / (stem + ".json")))
            os.replace(str(tmp), str(final))
        finally:
            if tmp.exists():
                os.chmod(str(tmp), 0o644)
                tmp.unlink()
    return final
