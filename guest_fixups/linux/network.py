"""Network: the KVM NIC gets the interface name the guest's configuration expects; MAC pins go.

On the old hypervisor the NIC was ens192/eth0/...; on KVM a virtio NIC gets another name and the
configuration (ifupdown, networkd, NetworkManager) would not apply. A systemd .link file matching the
new NIC's MAC (which we choose and put in the domain) gives it the old name, so static addresses and
everything else keyed on the name keep working.
"""
import re
from typing import List, Tuple

from v2v.types import FixLine, Plan

from ..appliance import Appliance
from .distro import LinuxDistro

PERSISTENT_RULES = ("/etc/udev/rules.d/70-persistent-net.rules", "/etc/udev/rules.d/75-persistent-net-generator.rules")
LINK_DIR = "/etc/systemd/network"


def _interfaces_files(app: Appliance) -> List[str]:
    files = []
    if app.is_file("/etc/network/interfaces"):
        files.append("/etc/network/interfaces")
    if app.g.is_dir("/etc/network/interfaces.d"):
        files += ["/etc/network/interfaces.d/" + f for f in sorted(app.g.ls("/etc/network/interfaces.d"))]
    return [f for f in files if app.is_file(f)]


def parse_ifupdown(text: str) -> List[str]:
    """Interface names configured by ifupdown (iface/auto/allow-* stanzas), in order, without lo."""
    names: List[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "iface" and len(words) > 1:
            cands = [words[1]]
        elif words[0] == "auto" or words[0].startswith("allow-"):
            cands = words[1:]
        else:
            continue
        for n in cands:
            n = n.split(":", 1)[0]   # alias eth0:1 is eth0
            if n != "lo" and n not in names:
                names.append(n)
    return names


def configured_interfaces(app: Appliance) -> Tuple[List[str], List[str]]:
    """(names, where) the guest's network configuration refers to."""
    names: List[str] = []
    where: List[str] = []
    for f in _interfaces_files(app):
        for n in parse_ifupdown(app.read_text(f)):
            if n not in names:
                names.append(n)
                where.append(f)
    if app.g.is_dir("/etc/systemd/network"):
        for f in sorted(app.g.ls("/etc/systemd/network")):
            if f.endswith(".network") and not f.startswith("10-v2v"):
                text = app.read_text(LINK_DIR + "/" + f)
                for m in re.finditer(r"^\s*Name\s*=\s*(\S+)", text, re.M):
                    if "*" not in m.group(1) and m.group(1) not in names:
                        names.append(m.group(1))
                        where.append(LINK_DIR + "/" + f)
    return names, where


def _mac_pins(app: Appliance) -> List[str]:
    pins = []
    for path in PERSISTENT_RULES:
        if app.is_file(path) and re.search(r"ATTR\{address\}", app.read_text(path)):
            pins.append(path)
    return pins


def fix_network(d: LinuxDistro, plan: Plan) -> List[FixLine]:
    app = d.app
    lines: List[FixLine] = []
    for path in _mac_pins(app):
        if not d.dry_run:
            app.g.mv(path, path + ".v2v-disabled")
        lines.append(FixLine("network-mac-pins", d.changed, "{} pinned old MAC addresses; {} aside to "
                             "{}.v2v-disabled".format(path, "would move" if d.dry_run else "moved", path)))
    names, where = configured_interfaces(app)
    if not names:
        lines.append(FixLine("network", "unchanged", "no interface named in the network configuration "
                             "(DHCP on any NIC, or NetworkManager without names)"))
        return lines
    name = names[0]
    mac = plan.network.mac
    link = "{}/10-v2v-{}.link".format(LINK_DIR, name)
    if d.dry_run:
        lines.append(FixLine("network", d.changed, "the virtio NIC would be named {} as {} expects".format(
            name, where[0])))
        return lines
    if not app.g.is_dir(LINK_DIR):
        app.g.mkdir_p(LINK_DIR)
    app.write_text(link, "# Added by v2v: the KVM NIC keeps the name the network configuration uses.\n"
                         "[Match]\nMACAddress={}\n\n[Link]\nName={}\n".format(mac, name))
    lines.append(FixLine("network", d.changed, "the virtio NIC ({}) will be named {} as {} expects ({})".format(
        mac, name, where[0], link)))
    if len(names) > 1:
        lines.append(FixLine("network", "warning", "the guest configures {} interfaces ({}); the converted "
                             "guest has one NIC, so {} will not come up".format(
                                 len(names), ", ".join(names), ", ".join(names[1:]))))
    return lines
