#!/usr/bin/env bash
# start-all.sh - install the packages (when missing) and start every test service:
# the loopback sshd hosts and the one-node Slurm. Idempotent and quick when they run.
# Without root nothing can be installed or started: it says so and exits 0, and the
# tests that need the services skip with the reason (or fail under
# HSM_REQUIRE_SERVICES=1).
set -euo pipefail
LOG_TAG=services
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/services/lib.sh
source "$HERE/lib.sh"

if ! is_root; then
    log "not root: the test services (sshd hosts, Slurm) are not started;" \
        "the tests that need them will skip"
    exit 0
fi
t0=$(date +%s%N)
"$HERE/install.sh"
"$HERE/sshd.sh" start
"$HERE/slurm.sh" start
log "all services up in $(( ($(date +%s%N) - t0) / 1000000 )) ms (state: $HSM_SERVICES_DIR)"
