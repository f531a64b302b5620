"""Convert hosts, disk images and VMs into KVM guests that boot."""

import os

__version__ = "0.1.0"


def cache_dir() -> str:
    """Where the converter keeps what it can rebuild: the KVM probe's result, the built agent."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "v2v")
