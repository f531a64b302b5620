#!/usr/bin/env bash
# The built-in example on a fresh Debian 12 machine (as root): build a "foreign" Debian 12 guest as a
# VMware export would look (sda names, no virtio in its initramfs, open-vm-tools), convert it to a
# libvirt KVM guest, and boot a throwaway copy of the result to prove it comes up on virtio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
export V2V_TESTVM_CACHE="${V2V_TESTVM_CACHE:-/var/tmp/v2v-testvms}"
out="${1:-$PWD/example-out}"
mkdir -p "$out"
echo "example: building (or reusing) the foreign test guest ..."
img=$(.venv/bin/python -m testvms build debian12-foreign)
echo "example: source image $img"
.venv/bin/v2v inspect "$img"
.venv/bin/v2v convert disk "$img" --to libvirt --name v2v-example --storage "$out" --overwrite --verify-boot
echo
echo "example: the domain is defined in libvirt: virsh -c qemu:///system dumpxml v2v-example"
