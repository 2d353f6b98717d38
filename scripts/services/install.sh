#!/usr/bin/env bash
# install.sh - install the Debian packages the integration tests and benchmarks need
# (private sshd hosts, a one-node Slurm with accounting, GNU parallel, venv for the
# remote-side Python). Idempotent: installs only what is missing, in ONE apt-get call
# (repeated calls would re-run the package triggers each time). Needs root; without
# root it only reports what is missing.
set -euo pipefail
LOG_TAG=install
# shellcheck source=scripts/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# chromium: the HTML report is rendered headless in a test (no console errors, a screenshot).
PACKAGES=(openssh-server openssh-client parallel python3-venv
          slurmctld slurmd slurm-client munge slurmdbd mariadb-server chromium)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    log "all packages present"
    exit 0
fi
if ! is_root; then
    log "not root: cannot install ${missing[*]} (run this script as root)"
    exit 0
fi

t0=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
# The man-db trigger rebuilds the manual index after every install (~4 s here) and
# nothing here reads manual pages: suspend it for this call only.
mandb_flag=/var/lib/man-db/auto-update
restore_mandb=0
if [ -e "$mandb_flag" ]; then
    mv "$mandb_flag" "$mandb_flag.hsm-suspended"; restore_mandb=1
fi
restore() { [ "$restore_mandb" = 1 ] && mv "$mandb_flag.hsm-suspended" "$mandb_flag"; return 0; }
trap restore EXIT

log "installing: ${missing[*]}"
apt-get update -q >/dev/null
# Container images ship /usr/sbin/policy-rc.d (exit 101), so the packages do not start
# their own daemons; the service scripts start private instances instead.
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
log "installed ${#missing[@]} packages in $(( $(date +%s) - t0 )) s"
