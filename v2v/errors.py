"""The one error hierarchy. The CLI catches V2VError once: one line on stderr, exit 1.

Standard library only and Python 3.6 compatible: diskfmt and linux_capture raise these too.
"""
from typing import Optional, Sequence


class V2VError(Exception):
    """An error the user can act on; str() is the one line the CLI prints."""


class SourceError(V2VError):
    """The source cannot be opened or read: missing, truncated, not a disk image."""


class InspectionError(V2VError):
    """The guest could not be inspected: no operating system, unreadable filesystems."""


class UnsupportedGuest(V2VError):
    """The guest was inspected but cannot be converted (yet)."""


class FixupError(V2VError):
    """A conversion step inside the guest failed."""


class OutputError(V2VError):
    """The target cannot be written: exists, no space, libvirt refused."""


class TransportError(V2VError):
    """A connection to a source host failed or dropped."""


class IntegrityError(V2VError):
    """Data read back does not match what was written or promised."""


class Interrupted(V2VError):
    """The user or the system stopped us (SIGINT, SIGTERM); everything written so far was removed."""


class CommandError(V2VError):
    """An external tool failed: carries argv, exit code and the tail of its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "",
                 what: Optional[str] = None) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = " ".join(stderr.strip().splitlines()[-3:]) if stderr else ""
        head = what or "{} failed".format(self.argv[0] if self.argv else "command")
        msg = "{} (exit {})".format(head, returncode)
        if tail:
            msg += ": " + tail
        super().__init__(msg)
