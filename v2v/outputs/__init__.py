"""Output selector: one file per output kind, one line each here."""
from typing import Dict, Type

from .base import Output, OutputOptions
from .libvirt import LibvirtOutput
from .local import LocalOutput

OUTPUTS: Dict[str, Type[Output]] = {
    "local": LocalOutput,
    "libvirt": LibvirtOutput,
}


def select(opts: OutputOptions) -> Output:
    return OUTPUTS[opts.kind](opts)


__all__ = ["Output", "OutputOptions", "OUTPUTS", "select"]
