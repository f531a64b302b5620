"""The one way we run external tools: argv lists only, logged, errors raised as CommandError."""
import logging
import subprocess
from typing import Mapping, Optional, Sequence

from .errors import CommandError

log = logging.getLogger("v2v.command")

_STDERR_TAIL = 4000


def run(argv: Sequence[str], *, input: Optional[bytes] = None, env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None, check: bool = True, what: Optional[str] = None,
        cwd: Optional[str] = None) -> "subprocess.CompletedProcess[bytes]":
    """Run argv (never a shell string); return the completed process with stdout/stderr as bytes.

    Raises CommandError (exit code and stderr tail) when check is set and the command fails,
    or when it is missing or times out.
    """
    argv = [str(a) for a in argv]
    log.debug("run: %s", " ".join(argv))
    try:
        cp = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=None if env is None else dict(env), timeout=timeout, cwd=cwd)
    except FileNotFoundError:
        raise CommandError(argv, 127, "{}: command not found".format(argv[0]), what) from None
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode("utf-8", "replace")[-_STDERR_TAIL:]
        raise CommandError(argv, 124, err + "\ntimed out after {:.0f}s".format(timeout or 0), what) from None
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stderr.decode("utf-8", "replace")[-_STDERR_TAIL:], what)
    return cp


def output(argv: Sequence[str], **kw) -> str:
    """Run argv and return its stdout as text."""
    return run(argv, **kw).stdout.decode("utf-8", "replace")
