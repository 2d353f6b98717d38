#!/usr/bin/env bash
# test.sh - THE test command: set up .venv, start the test services (loopback sshd
# hosts, one-node Slurm; needs root, otherwise their tests skip), run pytest with the
# given arguments, stop the services this run started, exit with pytest's code.
#
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh tests/unit -x -q     # any pytest arguments
#
# Env: HSM_KEEP_SERVICES=1      leave the services running at exit
#      HSM_REQUIRE_SERVICES=1   a missing service fails its tests instead of skipping
#      HSM_SERVICES_DIR         service state (default /tmp/hsm-test-services)
#      HSM_REMOTE_VENV          a remote venv of this checkout's own (see sshd.sh venv)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVICES=$ROOT/scripts/services
cd "$ROOT"

# System packages first (as root): they include python3-venv, which `python3 -m venv`
# needs when python3 is Debian's own.
bash "$SERVICES/install.sh" || echo "[test] warning: installing the system packages failed" >&2
VENV=$(bash "$ROOT/scripts/venv.sh")
export VIRTUAL_ENV=$VENV
export PATH="$VENV/bin:$PATH"   # the tests run the `hsm` console script

# Stop at exit only what this run started: services that were already up belong to
# someone else's session (or to a developer who keeps them running).
started=()
for svc in sshd slurm; do
    "$SERVICES/$svc.sh" status >/dev/null 2>&1 || started+=("$svc")
done
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    if [ "${HSM_KEEP_SERVICES:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then return 0; fi
    local svc
    for svc in "${started[@]}"; do
        "$SERVICES/$svc.sh" stop || true
    done
}
trap cleanup EXIT

if ! bash "$SERVICES/start-all.sh"; then
    if [ "${HSM_REQUIRE_SERVICES:-0}" = 1 ]; then
        echo "[test] the test services did not start (HSM_REQUIRE_SERVICES=1)" >&2
        exit 1
    fi
    echo "[test] warning: the test services did not start; their tests will skip" >&2
fi

if [ -n "${HSM_REMOTE_VENV:-}" ] && [ "$(id -u)" = 0 ]; then
    bash "$SERVICES/sshd.sh" venv   # this checkout's code on the ssh hosts
fi

rc=0
python -m pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then
    echo "[test] error: pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
