#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian 12 machine (as root): installs what it needs first.
#   scripts/test.sh                  every tier: unit, integration (libguestfs), e2e (qemu boots, libvirtd)
#   scripts/test.sh -m "not e2e"     only the fast tiers; any pytest arguments work
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
export PATH="$PWD/.venv/bin:$PATH"
# Test guests are built once and cached by recipe hash (rebuilt when a recipe changes).
export V2V_TESTVM_CACHE="${V2V_TESTVM_CACHE:-/var/tmp/v2v-testvms}"
set +e
.venv/bin/python -m pytest -p no:cacheprovider --timeout=3000 "$@"
rc=$?
set -e
# pytest exits 5 when a filter selects no test: that is not a pass.
exit $rc
