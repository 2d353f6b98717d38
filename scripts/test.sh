#!/usr/bin/env bash
# test.sh - THE test command: set up .venv, start the test services (loopback sshd
# hosts, one-node Slurm; needs root, otherwise their tests skip), run pytest with the
# given arguments (and -rs: skip reasons), stop the services this run started, exit
# with pytest's code. A service that does not start is named; the tests that need it
# skip (fail under HSM_REQUIRE_SERVICES=1), the others run.
#
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh tests/unit -x -q     # any pytest arguments
#
# Env: HSM_TEST_SERVICES        services to start (default "sshd slurm"; "" for none)
#      HSM_KEEP_SERVICES=1      leave the services running at exit
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
export HSM_PACKAGES_CHECKED=1   # start-all.sh need not check them again
VENV=$(bash "$ROOT/scripts/venv.sh")
export VIRTUAL_ENV=$VENV
export PATH="$VENV/bin:$PATH"   # the tests run the `hsm` console script

# Stop at exit only what this run started: services that were already up belong to
# someone else's session (or to a developer who keeps them running).
read -r -a wanted <<<"${HSM_TEST_SERVICES-sshd slurm}"
started=()
for svc in "${wanted[@]+"${wanted[@]}"}"; do
    "$SERVICES/$svc.sh" status >/dev/null 2>&1 || started+=("$svc")
done
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    if [ "${HSM_KEEP_SERVICES:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then return 0; fi
    local svc
    for svc in "${started[@]+"${started[@]}"}"; do
        "$SERVICES/$svc.sh" stop || true
    done
}
trap cleanup EXIT

# Each service on its own: one that fails is named, and the others still run.
down=()
if [ "$(id -u)" = 0 ]; then
    for svc in "${wanted[@]+"${wanted[@]}"}"; do
        bash "$SERVICES/start-all.sh" "$svc" || down+=("$svc")
    done
fi
if [ ${#down[@]} -gt 0 ]; then
    if [ "${HSM_REQUIRE_SERVICES:-0}" = 1 ]; then
        echo "[test] test service(s) did not start: ${down[*]} (HSM_REQUIRE_SERVICES=1)" >&2
        exit 1
    fi
    echo "[test] warning: test service(s) did not start: ${down[*]}; their tests will skip" >&2
fi

if [ -n "${HSM_REMOTE_VENV:-}" ] && [ "$(id -u)" = 0 ] && [[ " ${wanted[*]} " == *" sshd "* ]] &&
    [[ " ${down[*]} " != *" sshd "* ]]; then
    bash "$SERVICES/sshd.sh" venv   # this checkout's code on the ssh hosts
fi
# The test Slurm's own config (never /etc/slurm's): sbatch, sacct and submitit read it.
if conf=$(bash "$SERVICES/slurm.sh" conf 2>/dev/null) && [ -f "$conf" ]; then
    export SLURM_CONF=$conf
fi

rc=0
# -rs: the reason of every skipped test at the end (later -r options win).
python -m pytest -rs "$@" || rc=$?
if [ "$rc" = 5 ]; then
    echo "[test] error: pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
