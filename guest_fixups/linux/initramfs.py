"""Rebuild every kernel's initramfs with virtio drivers and without the old hypervisor's drivers."""
from dataclasses import replace
from typing import List, Tuple

from hv_drivers.linux_modules import OLD_HYPERVISOR_MODULES, VIRTIO_MODULES
from v2v.errors import FixupError
from v2v.types import FixLine

from .distro import LinuxDistro


def _builtin(d: LinuxDistro, kernel: str) -> set:
    path = "/lib/modules/{}/modules.builtin".format(kernel)
    if not d.app.is_file(path):
        return set()
    return {ln.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")
            for ln in d.app.read_text(path).splitlines() if ln.strip()}


def _available(d: LinuxDistro, kernel: str) -> set:
    path = "/lib/modules/{}/modules.dep".format(kernel)
    if not d.app.is_file(path):
        return set()
    return {ln.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")
            for ln in d.app.read_text(path).splitlines() if ln.strip()}


def rebuild_and_update_bootloader(d: LinuxDistro) -> List[FixLine]:
    """Rebuild every kernel's initramfs and regenerate the bootloader configuration, side by side.

    update-grub only needs the initramfs file names, which exist already when each is updated in place
    (-u writes a .new file and renames it); when one is created (-c), the bootloader waits for it.
    """
    if not d.guest.kernels:
        raise FixupError("no kernel found in /boot of the guest; nothing could boot it")
    lines: List[FixLine] = []
    jobs: List[Tuple[str, List[str], List[str]]] = []   # kernel, modules wanted, command
    creates = False
    for kernel in d.guest.kernels:
        builtin = _builtin(d, kernel)
        available = _available(d, kernel)
        if not available and not builtin:
            lines.append(FixLine("initramfs", "warning",
                                 "kernel {}: no /lib/modules/{} (modules missing); skipped".format(kernel, kernel)))
            continue
        want = [m for m in VIRTIO_MODULES if m not in builtin]
        missing = [m for m in want if m not in available]
        if missing:
            raise FixupError("kernel {} has no {} module; it cannot boot on KVM virtio (install a newer "
                             "kernel in the guest first)".format(kernel, ", ".join(missing)))
        if d.dry_run:
            now = set(d.initramfs_modules(kernel)) if d.app.exists(d.initramfs_path(kernel)) else set()
            lacks = [m for m in want if m not in now]
            lines.append(FixLine("initramfs", d.changed, "kernel {}: would rebuild the initramfs{}".format(
                kernel, "; it lacks " + ", ".join(lacks) if lacks else "")))
            continue
        creates = creates or not d.app.exists(d.initramfs_path(kernel))
        jobs.append((kernel, want, d.initramfs_command(kernel, want, OLD_HYPERVISOR_MODULES)))
    if d.dry_run:
        return lines + [FixLine("bootloader", d.changed, "would regenerate the bootloader configuration")]
    boot_argv, boot_msg = d.bootloader_command()
    commands = [(argv, "update-initramfs for " + kernel) for kernel, _w, argv in jobs]
    if not creates:
        results = d.app.commands_concurrently(commands + [(boot_argv, " ".join(boot_argv))])
    else:
        results = d.app.commands_concurrently(commands[:1])
        for c in commands[1:]:
            results += d.app.commands_concurrently([c])
        results += d.app.commands_concurrently([(boot_argv, " ".join(boot_argv))])
    for (kernel, want, _argv), (_out, secs) in zip(jobs, results):
        lines.append(replace(_verify(d, kernel, want, _builtin(d, kernel)), seconds=round(secs, 1)))
    lines.append(FixLine("bootloader", d.changed, boot_msg, seconds=round(results[-1][1], 1)))
    return lines


def _verify(d: LinuxDistro, kernel: str, want: List[str], builtin: set) -> FixLine:
    inside = set(d.initramfs_modules(kernel))
    absent = [m for m in want if m not in inside]
    if absent:
        raise FixupError("the rebuilt initramfs of {} still lacks {}".format(kernel, ", ".join(absent)))
    left = sorted(inside & {m.replace("-", "_") for m in OLD_HYPERVISOR_MODULES})
    msg = "kernel {}: initramfs rebuilt with {}".format(kernel, ", ".join(VIRTIO_MODULES))
    if builtin & set(VIRTIO_MODULES):
        msg += " ({} built in)".format(", ".join(sorted(builtin & set(VIRTIO_MODULES))))
    msg += "; old-hypervisor drivers excluded" if not left else "; still holds " + ", ".join(left)
    return FixLine("initramfs", d.changed if not left else "warning", msg)
