"""Remove the old hypervisor's guest tools (they fail or misbehave on KVM)."""
from typing import List

from v2v.errors import FixupError
from v2v.types import FixLine

from .distro import LinuxDistro

HYPERVISOR_TOOLS = (
    "open-vm-tools", "open-vm-tools-desktop", "open-vm-tools-sdmp", "open-vm-tools-containerinfo",
    "vmware-tools", "hyperv-daemons", "hypervkvpd", "hypervvssd", "hypervfcopyd",
    "xe-guest-utilities", "xen-guest-agent", "xenstore-utils",
    "virtualbox-guest-utils", "virtualbox-guest-x11", "virtualbox-guest-dkms",
)


def remove_hypervisor_tools(d: LinuxDistro) -> List[FixLine]:
    found = [p for p in HYPERVISOR_TOOLS if p in set(d.installed_packages())]
    if not found:
        return [FixLine("hypervisor-tools", "unchanged", "no VMware, Hyper-V, Xen or VirtualBox tools installed")]
    if d.dry_run:
        return [FixLine("hypervisor-tools", d.changed, "would remove " + ", ".join(found))]
    try:
        d.remove_packages(found)
    except FixupError as e:
        return [FixLine("hypervisor-tools", "warning", "not removed: {}".format(e))]
    return [FixLine("hypervisor-tools", d.changed, "removed " + ", ".join(found))]
