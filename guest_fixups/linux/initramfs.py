"""Rebuild every kernel's initramfs with virtio drivers and without the old hypervisor's drivers."""
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple

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


# Bumped when what goes into a rebuilt initramfs changes in a way its inputs' digest does not show.
CACHE_FORMAT = 1
_SAFE_KERNEL = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,127}")


class InitramfsCache:
    """Initramfs files the fixups rebuilt, kept on the host by the digest of their inputs (a standby's
    directory), so that a later run on a guest whose inputs did not change uploads the file instead of
    rebuilding it: the guest's own mkinitramfs is most of a refresh's fixups under emulation."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _name(self, kernel: str, key: str) -> Optional[str]:
        if not _SAFE_KERNEL.fullmatch(kernel) or not re.fullmatch(r"[0-9a-f]{16,64}", key):
            return None           # a name the guest chose that is no file name of ours: not cached
        return os.path.join(self.directory, "initrd.img-{}.{}".format(kernel, key))

    def get(self, kernel: str, key: str) -> Optional[str]:
        path = self._name(kernel, key)
        return path if path and os.path.isfile(path) else None

    def put(self, kernel: str, key: str, fill: Callable[[str], None]) -> None:
        """fill(tmp) writes the file; it is renamed into place, and older files of kernel are removed."""
        path = self._name(kernel, key)
        if path is None:
            return
        os.makedirs(self.directory, exist_ok=True)
        prefix = "initrd.img-{}.".format(kernel)
        tmp = os.path.join(self.directory, "." + os.path.basename(path) + ".part")   # hidden, as our other temporaries
        try:
            fill(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for n in os.listdir(self.directory):
            stale = n.startswith(prefix) and n != os.path.basename(path)
            if stale or n.endswith(".part"):       # .part: left by a run that was killed while writing
                os.unlink(os.path.join(self.directory, n))

    def discard(self, kernel: str, key: str) -> None:
        path = self.get(kernel, key)
        if path:
            os.unlink(path)


def inputs_digest(d: LinuxDistro, kernel: str, argv: List[str]) -> str:
    """The digest of what the guest's rebuild of kernel's initramfs reads (LinuxDistro.initramfs_inputs), as
    the guest is now: after the other fixups and the configuration initramfs_command wrote."""
    g = d.app.g
    files, trees = d.initramfs_inputs(kernel)
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, kernel, argv, list(VIRTIO_MODULES),
                                   sorted(OLD_HYPERVISOR_MODULES)]).encode())
    for path in files:
        present = g.is_file(path, followsymlinks=True)
        h.update("{}\0{}\n".format(path, g.checksum("sha256", path) if present else "-").encode(
            "utf-8", "surrogateescape"))
    with tempfile.TemporaryDirectory(prefix="v2v-sums-") as tmp:
        sums = os.path.join(tmp, "sums")
        for tree in trees:
            h.update(tree.encode("utf-8", "surrogateescape") + b"\0")
            if not g.is_dir(tree, followsymlinks=True):
                h.update(b"-\n")
                continue
            g.checksums_out("sha256", tree, sums)
            with open(sums, "rb") as f:
                h.update(b"\n".join(sorted(f.read().splitlines())) + b"\n")
    return h.hexdigest()[:32]


def rebuild_and_update_bootloader(d: LinuxDistro) -> List[FixLine]:
    """Rebuild every kernel's initramfs and regenerate the bootloader configuration, side by side.

    update-grub only needs the initramfs file names, which exist already when each is updated in place
    (-u writes a .new file and renames it); when one is created (-c), the bootloader waits for it. With a
    cache (d.initramfs_cache), a kernel whose inputs are those of a file rebuilt earlier gets that file.
    """
    if not d.guest.kernels:
        raise FixupError("no kernel found in /boot of the guest; nothing could boot it")
    cache = InitramfsCache(d.initramfs_cache) if d.initramfs_cache and not d.dry_run else None
    lines: List[FixLine] = []
    jobs: List[Tuple[str, List[str], List[str]]] = []   # kernel, modules wanted, command
    keys: Dict[str, str] = {}                           # kernel -> digest of its inputs (with a cache)
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
        exists = d.app.exists(d.initramfs_path(kernel))
        argv = d.initramfs_command(kernel, want, OLD_HYPERVISOR_MODULES)
        if cache is not None:
            t0 = time.monotonic()
            keys[kernel] = inputs_digest(d, kernel, argv)
            reused = _reuse(d, cache, kernel, keys[kernel], want, builtin)
            if reused is not None:
                lines.append(replace(reused, seconds=round(time.monotonic() - t0, 1)))
                continue
        creates = creates or not exists
        jobs.append((kernel, want, argv))
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
        inside = set(d.initramfs_modules(kernel))
        lines.append(replace(_verify(kernel, want, _builtin(d, kernel), inside), seconds=round(secs, 1)))
        if cache is not None:
            cache.put(kernel, keys[kernel], lambda tmp, k=kernel: d.app.g.download(d.initramfs_path(k), tmp))
    lines.append(FixLine("bootloader", d.changed, boot_msg, seconds=round(results[-1][1], 1)))
    return lines


def _reuse(d: LinuxDistro, cache: InitramfsCache, kernel: str, key: str, want: List[str], builtin: set
           ) -> Optional[FixLine]:
    """Upload the cached initramfs of kernel for these inputs, checked first as a rebuilt one is; None: rebuild."""
    from .initrd import list_files, module_names
    cached = cache.get(kernel, key)
    if cached is None:
        return None
    try:
        with open(cached, "rb") as f:
            inside = set(module_names(list_files(f.read())))
        line = _verify(kernel, want, builtin, inside, "reused", " (the guest's initramfs, kernel, modules and "
                       "initramfs configuration are as when it was rebuilt)")
    except FixupError:
        cache.discard(kernel, key)         # a damaged copy: nothing was uploaded, the caller rebuilds
        return None
    try:
        d.app.g.upload(cached, d.initramfs_path(kernel))
    except RuntimeError as e:
        raise FixupError("uploading the initramfs of {} into the guest failed: {}".format(kernel, e)) from None
    return line


def _verify(kernel: str, want: List[str], builtin: set, inside: set, how: str = "rebuilt", why: str = ""
            ) -> FixLine:
    absent = [m for m in want if m not in inside]
    if absent:
        raise FixupError("the {} initramfs of {} still lacks {}".format(how, kernel, ", ".join(absent)))
    left = sorted(inside & {m.replace("-", "_") for m in OLD_HYPERVISOR_MODULES})
    msg = "kernel {}: initramfs {}{} with {}".format(kernel, how, why, ", ".join(VIRTIO_MODULES))
    if builtin & set(VIRTIO_MODULES):
        msg += " ({} built in)".format(", ".join(sorted(builtin & set(VIRTIO_MODULES))))
    msg += "; old-hypervisor drivers excluded" if not left else "; still holds " + ", ".join(left)
    return FixLine("initramfs", "changed" if not left else "warning", msg)
