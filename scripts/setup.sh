#!/usr/bin/env bash
# Install everything v2v needs on Debian 12 (as root) and make the venv .venv.
# Idempotent: a second run only checks. Used by scripts/example.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # conversion: libguestfs and its appliance kernel, qemu, libvirt, hivex, parted, udev bindings
  libguestfs-tools python3-guestfs linux-image-amd64 supermin
  qemu-system-x86 qemu-utils ovmf nbdkit libnbd-bin python3-libnbd
  libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu python3-libvirt
  python3-hivex libhivex-bin python3-parted python3-pyudev libarchive-tools
  osinfo-db libosinfo-bin python3-click python3-lxml python3-tqdm python3-venv python3-pip
  # test guests and filesystems
  debootstrap e2fsprogs xfsprogs dosfstools mtools ntfs-3g lvm2 parted gdisk fdisk wimtools zstd lz4 cpio
  # tests and benchmarks
  python3-pytest openssh-server openssh-client virt-v2v xorriso rsync
  # Windows 11 domains: libvirt emulates TPM 2.0 with swtpm
  swtpm swtpm-tools
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root to install: ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The bindings (guestfs, libvirt, hivex, parted) come from Debian: the venv sees the system packages.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import guestfs, libvirt, hivex' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c 'import v2v, pytest_timeout' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi
echo "setup: ok ($(.venv/bin/v2v --version))"
