#!/usr/bin/env bash
# The suite on a busy machine: BUSY_PROCESSES (default 2, one per core of a CI machine) shell
# busy-loops compete for the CPU while scripts/test.sh runs with the given arguments, e.g.
#   scripts/test_busy.sh -m "not slow"
# No test may fail because the machine is slow (docs/testing.md, "Time limits"); this is the check.
set -euo pipefail
cd "$(dirname "$0")/.."
busy=()
for _ in $(seq "${BUSY_PROCESSES:-2}"); do
  (while :; do :; done) &
  busy+=("$!")
done
trap 'kill "${busy[@]}" 2>/dev/null || true' EXIT
echo "$(date -u +%FT%TZ) ${#busy[@]} busy processes; load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
scripts/test.sh "$@" || status=$?
echo "$(date -u +%FT%TZ) done (exit $status); load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$status"
