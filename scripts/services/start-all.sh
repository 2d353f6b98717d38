#!/usr/bin/env bash
# start-all.sh [SERVICE...] - install the packages (when missing) and start the test
# services: the loopback sshd hosts (`sshd`) and the one-node Slurm (`slurm`); all of
# them without arguments. Idempotent and quick when they run. A service that fails does
# not keep the others from starting; the last line names what failed, and the exit code
# is 1 then. Without root nothing can be installed or started: it says so and exits 0,
# and the tests that need the services skip with the reason (or fail under
# HSM_REQUIRE_SERVICES=1).
set -euo pipefail
LOG_TAG=services
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/services/lib.sh
source "$HERE/lib.sh"

SERVICES=("$@")
[ ${#SERVICES[@]} -gt 0 ] || SERVICES=(sshd slurm)
for svc in "${SERVICES[@]}"; do
    [ -x "$HERE/$svc.sh" ] || die "unknown service '$svc' (known: sshd slurm)"
done
if ! is_root; then
    log "not root: the test services (${SERVICES[*]}) are not started;" \
        "the tests that need them will skip"
    exit 0
fi
t0=$(date +%s%N)
[ "${HSM_PACKAGES_CHECKED:-0}" = 1 ] || "$HERE/install.sh"
up=() failed=()
for svc in "${SERVICES[@]}"; do
    if "$HERE/$svc.sh" start; then up+=("$svc"); else failed+=("$svc"); fi
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
if [ ${#failed[@]} -gt 0 ]; then
    log "FAILED to start: ${failed[*]}${up[*]:+ (running: ${up[*]})} after $ms ms; the lines above say why"
    exit 1
fi
log "up in $ms ms: ${up[*]} (state: $HSM_SERVICES_DIR)"
