#!/usr/bin/env bash
# Start libvirtd (and virtlogd) when nothing else does: containers and CI machines without systemd.
set -euo pipefail
# The test host is also the capture tests' source host: its write tracer needs tracefs, which systemd
# mounts on a real host; containers often do not.
if [ -d /sys/kernel/tracing ] && ! [ -e /sys/kernel/tracing/instances ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || echo "services: tracefs could not be mounted (the tracer tests skip)" >&2
fi
if command -v virsh >/dev/null && virsh -c qemu:///system version >/dev/null 2>&1; then
  exit 0
fi
if [ -d /run/systemd/system ]; then
  systemctl start libvirtd virtlogd
else
  pgrep -x virtlogd >/dev/null || /usr/sbin/virtlogd -d
  pgrep -x libvirtd >/dev/null || /usr/sbin/libvirtd -d
fi
for _ in $(seq 1 30); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "services: libvirtd did not answer on qemu:///system within 30s" >&2
exit 1
