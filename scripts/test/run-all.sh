#!/bin/bash
# npm test: the whole suite (unit, e2e, e2e-delta, then vm), ending in one plain "N passed, N failed" line.
# The e2e project boots systemd-nspawn machines and a loopback registry, and the vm project boots
# qemu TCG VMs under SELinux enforcing (one at a time, after the others: vitest.config.ts). Both
# need root and the Debian packages that scripts/testbed/install-deps.sh installs (it is called
# here, idempotently).
set -uo pipefail
cd "$(dirname "$0")/../.."
if [[ $(id -u) == 0 ]]; then bash scripts/testbed/install-deps.sh || exit 1; fi
# The binary under test must match the source under test.
npm run --silent build >/dev/null || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
projects=(--project unit --project e2e --project e2e-delta --project vm)
[[ $# -gt 0 ]] && projects=()
vitest run "${projects[@]}" --reporter=default --reporter=json --outputFile.json="$out/results.json" "$@" || status=$?
node scripts/test/summary.ts "$out/results.json" || status=1
exit $status
