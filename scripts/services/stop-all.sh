#!/usr/bin/env bash
# stop-all.sh - stop every test service started by start-all.sh (by PID file).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/services/lib.sh
source "$HERE/lib.sh"
is_root || exit 0
"$HERE/slurm.sh" stop
"$HERE/sshd.sh" stop
