"""Debian and Ubuntu: dpkg/apt, initramfs-tools, grub-pc/grub-efi."""
from typing import List, Sequence, Tuple

from v2v.errors import FixupError

from .distro import LinuxDistro, register

INITRAMFS_LEVEL = 3
OMIT_HOOK = "/etc/initramfs-tools/hooks/v2v-omit-hypervisor-modules"
MODULES_FILE = "/etc/initramfs-tools/modules"
POLICY_RC_D = "/usr/sbin/policy-rc.d"


@register
class Debian(LinuxDistro):
    family = "debian"
    distros = ("debian", "ubuntu", "linuxmint", "kalilinux")

    def remove_packages(self, names: Sequence[str]) -> str:
        """dpkg --purge: it refuses (and we report) when another installed package depends on one of them.

        Not apt-get: building apt's dependency tree costs minutes under software emulation, and dpkg
        alone never removes anything but the packages named.
        """
        with _no_service_starts(self):
            return self.app.command(["env", "DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true",
                                     "dpkg", "--purge"] + list(names), "dpkg --purge " + " ".join(names))

    def initramfs_path(self, kernel: str) -> str:
        return "/boot/initrd.img-" + kernel

    def initramfs_command(self, kernel: str, add: Sequence[str], omit: Sequence[str]) -> List[str]:
        if not self.app.exists("/usr/sbin/update-initramfs"):
            raise FixupError("initramfs-tools is not installed in the guest (no update-initramfs); "
                             "install it before converting")
        self._edit_modules_file(add, omit)
        self.app.write_text(OMIT_HOOK, _omit_hook(omit))
        self.app.g.chmod(0o755, OMIT_HOOK)
        flag = "-u" if self.app.exists(self.initramfs_path(kernel)) else "-c"
        # mkinitramfs's default zstd -9 is single-threaded: under software emulation -3 saves a quarter of
        # the fixups for a 9 % larger file. Only the default changes: a COMPRESSLEVEL in initramfs.conf
        # still wins (it is read after the environment), and the guest's next rebuild uses its own.
        return ["env", "COMPRESSLEVEL={}".format(INITRAMFS_LEVEL), "update-initramfs", flag, "-k", kernel]

    def initramfs_inputs(self, kernel: str) -> Tuple[List[str], List[str]]:
        modules = "/lib/modules/" + kernel
        files = [self.initramfs_path(kernel), "/boot/vmlinuz-" + kernel, "/boot/config-" + kernel,
                 modules + "/modules.dep", modules + "/modules.builtin", modules + "/modules.order",
                 "/etc/fstab", "/etc/crypttab", "/etc/mdadm/mdadm.conf", "/etc/lvm/lvm.conf"]
        trees = ["/etc/initramfs-tools", "/usr/share/initramfs-tools", "/etc/modprobe.d", "/lib/modprobe.d",
                 "/etc/udev/rules.d"]
        return files, trees

    def _edit_modules_file(self, add: Sequence[str], omit: Sequence[str]) -> None:
        text = self.app.read_text(MODULES_FILE) if self.app.exists(MODULES_FILE) else ""
        present = set()
        out = []
        omit_set = {m.replace("-", "_") for m in omit}
        for line in text.splitlines():
            word = line.split("#", 1)[0].split()
            name = word[0].replace("-", "_") if word else ""
            if name in omit_set:
                out.append("# " + line + "    # disabled by v2v: old hypervisor driver")
                continue
            present.add(name)
            out.append(line)
        missing = [m for m in add if m.replace("-", "_") not in present]
        if missing:
            out.append("# added by v2v: drivers for the KVM disk and network")
            out += missing
        self.app.write_text(MODULES_FILE, "\n".join(out) + "\n")

    def bootloader_config_files(self) -> List[str]:
        return ["/etc/default/grub"] + [
            "/etc/default/grub.d/" + f for f in (self.app.g.ls("/etc/default/grub.d")
                                                if self.app.g.is_dir("/etc/default/grub.d") else [])
            if f.endswith(".cfg")]

    def bootloader_command(self) -> Tuple[List[str], str]:
        if self.app.exists("/usr/sbin/update-grub"):
            return ["update-grub"], "grub.cfg regenerated (update-grub)"
        if self.app.exists("/usr/sbin/grub-mkconfig"):
            return ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"], "grub.cfg regenerated (grub-mkconfig)"
        raise FixupError("no GRUB found in the guest (update-grub/grub-mkconfig); only GRUB is supported")


class _no_service_starts:
    """policy-rc.d 101 while packages change offline, so no maintainer script starts a daemon."""

    def __init__(self, distro: Debian) -> None:
        self.app = distro.app
        self.had = False

    def __enter__(self) -> None:
        self.had = self.app.exists(POLICY_RC_D)
        if not self.had:
            self.app.write_text(POLICY_RC_D, "#!/bin/sh\n# v2v: offline conversion, start nothing\nexit 101\n")
            self.app.g.chmod(0o755, POLICY_RC_D)

    def __exit__(self, *exc: object) -> None:
        if not self.had:
            self.app.g.rm_f(POLICY_RC_D)


def _omit_hook(omit: Sequence[str]) -> str:
    names = " ".join(sorted({m.replace("-", "_") for m in omit} | {m.replace("_", "-") for m in omit}))
    return """#!/bin/sh
# Added by v2v: this guest was converted to KVM; keep drivers of its old hypervisor out of the initramfs.
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0 ;; esac
for m in {names}; do
    find "${{DESTDIR}}" -name "${{m}}.ko*" -type f -delete 2>/dev/null
done
exit 0
""".format(names=names)
