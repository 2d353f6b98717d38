#!/usr/bin/env bash
# sshd.sh - private OpenSSH servers on loopback addresses that act as the "remote
# hosts" of the integration tests: h1 on 127.0.0.1, h2 on 127.0.0.2, ... (every
# 127/8 address is already on lo), all on one free port, logging in as a non-root
# user. Nothing of the system's ssh setup is touched: each sshd runs with -f <its own
# config> and the clients use the generated ssh_config/known_hosts.
#
# Usage: sshd.sh start          start every host that is not running (idempotent)
#        sshd.sh stop           stop them (PID files), with their open sessions
#        sshd.sh status         exit 0 when every host runs
#        sshd.sh freeze HOST    SIGSTOP the host's sshd and all its sessions: new
#                               connections hang (TCP accepted, no banner), open
#                               ones stop answering ("host hangs")
#        sshd.sh thaw HOST      SIGCONT them ("host comes back")
#        sshd.sh kill HOST      kill the host's sshd and sessions ("host died":
#                               connection refused at once)
#        sshd.sh revive HOST    start a killed host again (same address, port, key)
#        sshd.sh venv           only make (or refresh) the remote venv at
#                               $HSM_REMOTE_VENV from this checkout: a second
#                               checkout's tests can then run its own code remotely
# Env:   HSM_SERVICES_DIR  state root (default /tmp/hsm-test-services); this
#                          service uses $HSM_SERVICES_DIR/sshd and .../remote-venv
#        HSM_SSH_HOSTS     number of hosts (default 3)
#        HSM_SSH_PORT      preferred port (default 2222; the next free one is taken)
#        HSM_SSH_USER      login user, created if missing (default sweeper)
#        HSM_REMOTE_VENV   for `venv`: where to put the remote venv (tests read the
#                          same variable and use its python instead of env.json's)
# Output: $HSM_SERVICES_DIR/sshd/env.json (hosts, ssh_config, known_hosts, key,
#         remote python, remote project dirs) for the test fixtures.
set -euo pipefail
umask 022   # the login user must read the key list and the remote venv
LOG_TAG=sshd
# shellcheck source=scripts/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE=$HSM_SERVICES_DIR/sshd
VENV=$HSM_SERVICES_DIR/remote-venv
NHOSTS=${HSM_SSH_HOSTS:-3}
PREFERRED_PORT=${HSM_SSH_PORT:-2222}
LOGIN_USER=${HSM_SSH_USER:-sweeper}
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

hosts() { seq 1 "$NHOSTS" | sed 's/^/h/'; }
host_addr() { echo "127.0.0.${1#h}"; }
host_pid() { cat "$BASE/$1/sshd.pid" 2>/dev/null || true; }
host_alive() { pidfile_alive "$BASE/$1/sshd.pid" "$BASE/$1/sshd_config"; }
check_host_name() {
    if ! [[ ${1:-} =~ ^h[0-9]+$ ]] || ! [ -f "$BASE/$1/sshd_config" ]; then
        die "unknown host '${1:-}' (known: $(hosts | tr '\n' ' '))"
    fi
}

# The port is chosen once and kept: known_hosts and ssh_config name it, and a host
# revived after `kill` must come back where the clients expect it.
choose_port() {
    if [ -s "$BASE/port" ]; then cat "$BASE/port"; return; fi
    local port h taken
    for port in $(seq "$PREFERRED_PORT" $((PREFERRED_PORT + 200))); do
        taken=0
        for h in $(hosts); do
            tcp_listening "$(host_addr "$h")" "$port" && { taken=1; break; }
        done
        [ "$taken" = 0 ] && { echo "$port" >"$BASE/port"; echo "$port"; return; }
    done
    die "no free port in $PREFERRED_PORT-$((PREFERRED_PORT + 200))"
}

write_host_config() { # NAME ADDR PORT
    local name=$1 addr=$2 port=$3 dir=$BASE/$1
    mkdir -p "$dir"
    [ -f "$dir/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -C "hsm-test-$name" -f "$dir/hostkey"
    cat >"$dir/sshd_config" <<CONF
ListenAddress $addr:$port
HostKey $dir/hostkey
PidFile $dir/sshd.pid
AuthorizedKeysFile $BASE/authorized_keys
# The key list lives under /tmp (mode 1777), which StrictModes rejects.
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# Without PAM a locked account is refused: the login user gets password '*' instead.
UsePAM no
# No dependency on the separate sftp-server binary.
Subsystem sftp internal-sftp
# asyncssh multiplexes many channels over one connection (default cap 10), and tests
# open many connections at once (default MaxStartups 10:30:100).
MaxSessions 100
MaxStartups 100:30:200
# The hosts share one kernel and hostname: HSM_TEST_HOST tells them apart. A login node
# of the test Slurm (hpc sources reached over ssh) finds it through SLURM_CONF.
SetEnv HSM_TEST_HOST=$name SLURM_CONF=$HSM_SERVICES_DIR/slurm/slurm.conf
# OpenSSH 9.x defaults to the post-quantum sntrup761 exchange: ~0.2 s per connection
# on a small machine. Tests do not need it.
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel VERBOSE
CONF
}

start_host() { # NAME
    local name=$1 dir=$BASE/$1
    if host_alive "$name"; then return 0; fi
    rm -f "$dir/sshd.pid"
    /usr/sbin/sshd -t -f "$dir/sshd_config"
    daemon /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
    # sshd writes its PID file after binding its socket: that is the readiness signal.
    # A taken port shows up only in its log (the daemon has already forked and exited).
    if ! wait_until "sshd $name" 5 test -s "$dir/sshd.pid"; then
        tail -n 5 "$dir/sshd.log" >&2
        die "sshd $name did not start (log: $dir/sshd.log)"
    fi
    log "$name: sshd pid $(host_pid "$name") on $(grep '^ListenAddress' "$dir/sshd_config" | cut -d' ' -f2)"
}

# What goes into the remote venv (those of these that exist in the checkout).
project_parts() {
    local p
    for p in pyproject.toml README.md hsm_core hydra_plugins; do
        [ -e "$HSM_CHECKOUT/$p" ] && echo "$p"
    done
    return 0
}

# Hash of the project sources: the remote venv is reinstalled when it changes.
source_hash() {
    local parts; mapfile -t parts < <(project_parts)
    (cd "$HSM_CHECKOUT" && find "${parts[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

# The remote side's Python: a venv of the system python3 with the project installed.
# The interpreter the tests run under may live in a directory the login user cannot
# read (e.g. a pyenv build under /root), so it cannot serve the remote side.
ensure_remote_venv() {
    local want have tmp VENV=${1:-$VENV}
    if ! [ -x "$VENV/bin/python" ]; then
        log "creating remote venv $VENV"
        /usr/bin/python3 -m venv "$VENV"
    fi
    want="$(source_hash)+hydra-plugins"  # bump the suffix when the extra packages change
    have=$(cat "$VENV/.hsm-source-hash" 2>/dev/null || true)
    [ "$want" = "$have" ] && return 0
    log "installing the project into the remote venv"
    # Build from a copy: an in-tree build would write build/ and *.egg-info into the
    # checkout that others are editing.
    tmp=$(mktemp -d)
    (cd "$HSM_CHECKOUT" && project_parts | xargs cp -r --target-directory="$tmp")
    # pip always reinstalls a local directory (with its dependencies when missing);
    # -qq keeps errors but hides the warnings about this machine's extra indexes.
    # The Hydra launcher plugins the tests' side has too: a pickled Hydra job refers to
    # every plugin config registered where it was pickled.
    if ! "$VENV/bin/pip" install -qq "$tmp" hydra-joblib-launcher hydra-submitit-launcher; then
        rm -rf "$tmp"; die "pip install of the project into $VENV failed"
    fi
    rm -rf "$tmp"
    echo "$want" >"$VENV/.hsm-source-hash"
}

write_env_json() { # PORT
    local names; mapfile -t names < <(hosts)
    python3 - "$BASE" "$VENV" "$LOGIN_USER" "$1" "$SELF" "$(getent passwd "$LOGIN_USER" | cut -d: -f6)" \
        "${names[@]}" <<'PY'
import json, os, sys
base, venv, user, port, script, home, *names = sys.argv[1:]
python = f"{venv}/bin/python"
hosts = [
    {
        "alias": n,
        "address": f"127.0.0.{n[1:]}",
        "port": int(port),
        "user": user,
        "python": python,
        "home": home,
        "project_dir": f"{home}/{n}/project",
        "pid_file": f"{base}/{n}/sshd.pid",
        "log_file": f"{base}/{n}/sshd.log",
    }
    for n in names
]
env = {
    "hosts": hosts,
    "user": user,
    "ssh_config": f"{base}/ssh_config",
    "known_hosts": f"{base}/known_hosts",
    "identity_file": f"{base}/id_ed25519",
    "remote_python": python,
    "remote_venv": venv,
    "control_script": script,
}
tmp = f"{base}/env.json.tmp"
with open(tmp, "w") as f:
    json.dump(env, f, indent=2)
    f.write("\n")
os.replace(tmp, f"{base}/env.json")
PY
}

cmd_start() {
    is_root || die "needs root (it runs sshd as root for a separate login user)"
    [ -x /usr/sbin/sshd ] || die "openssh-server is not installed: run scripts/services/install.sh"
    local t0 port name addr home
    t0=$(date +%s%N)
    # A login user other than root: a clean login shell, and the tests see the
    # permission problems a real remote account has.
    id "$LOGIN_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$LOGIN_USER"
    usermod -p '*' "$LOGIN_USER"   # useradd leaves it locked ('!'); sshd refuses locked users
    home=$(getent passwd "$LOGIN_USER" | cut -d: -f6)

    lock_dir "$BASE"
    chmod 755 "$HSM_SERVICES_DIR" "$BASE"
    [ -f "$BASE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C hsm-test-client -f "$BASE/id_ed25519"
    # Every file the running hosts and other users' tests read is replaced by a rename,
    # never rewritten in place: a start beside a running test must not show it an empty
    # authorized_keys (a refused login) or known_hosts (an unknown host key) for a moment.
    install -m 644 "$BASE/id_ed25519.pub" "$BASE/authorized_keys.new"
    mv -f "$BASE/authorized_keys.new" "$BASE/authorized_keys"
    install -d -m 755 /run/sshd   # sshd as root checks it on start and on every connection

    port=$(choose_port)
    local known="" config=""
    for name in $(hosts); do
        addr=$(host_addr "$name")
        host_alive "$name" || write_host_config "$name" "$addr" "$port"
        start_host "$name"
        known+="[$addr]:$port $(cut -d' ' -f1,2 "$BASE/$name/hostkey.pub")"$'\n'
        config+="Host $name
    HostName $addr
    Port $port
    User $LOGIN_USER
    IdentityFile $BASE/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $BASE/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
"
        install -d -o "$LOGIN_USER" -g "$LOGIN_USER" "$home/$name" "$home/$name/project"
    done
    # Replaced, not rewritten in place: tests of other checkouts read them meanwhile.
    printf '%s' "$known" >"$BASE/known_hosts.new" && mv -f "$BASE/known_hosts.new" "$BASE/known_hosts"
    printf '%s' "$config" >"$BASE/ssh_config.new" && mv -f "$BASE/ssh_config.new" "$BASE/ssh_config"

    ensure_remote_venv
    write_env_json "$port"

    # Smoke test: every host answers as itself, and the remote python sees the project.
    for name in $(hosts); do
        [ "$(ssh -n -F "$BASE/ssh_config" "$name" 'echo $HSM_TEST_HOST')" = "$name" ] ||
            die "$name: ssh smoke test failed (log: $BASE/$name/sshd.log)"
    done
    ssh -n -F "$BASE/ssh_config" h1 "$VENV/bin/python -c 'import hsm_core'" ||
        die "the remote python $VENV/bin/python cannot import hsm_core as $LOGIN_USER"
    log "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms: ssh -F $BASE/ssh_config h1 (env: $BASE/env.json)"
}

cmd_stop() {
    local name pid dir
    [ -d "$BASE" ] || return 0
    lock_dir "$BASE"
    for dir in "$BASE"/h*/; do
        [ -d "$dir" ] || continue
        name=$(basename "$dir")
        pid=$(host_pid "$name")
        if host_alive "$name"; then
            # Open sessions are served by child processes: end them too, after waking
            # them up in case the host was frozen.
            local kids; kids=$(descendants "$pid")
            # shellcheck disable=SC2086
            kill -CONT "$pid" $kids 2>/dev/null || true
            # shellcheck disable=SC2086
            [ -z "$kids" ] || kill -TERM $kids 2>/dev/null || true
            stop_pidfile "sshd $name" "$BASE/$name/sshd.pid" "$BASE/$name/sshd_config" 5
        fi
        rm -f "$BASE/$name/sshd.pid"
    done
    return 0
}

cmd_status() {
    trap - ERR   # "not running" is an answer here, not a failure
    local name ok=0
    [ -f "$BASE/env.json" ] || { log "not started (no $BASE/env.json)"; return 1; }
    for name in $(hosts); do
        if host_alive "$name"; then log "$name: running (pid $(host_pid "$name"))"
        else log "$name: not running"; ok=1; fi
    done
    return $ok
}

signal_host() { # SIGNAL NAME
    local sig=$1 name=$2 pid
    check_host_name "$name"
    host_alive "$name" || die "$name is not running"
    pid=$(host_pid "$name")
    # shellcheck disable=SC2046
    kill -"$sig" "$pid" $(descendants "$pid")
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    freeze) signal_host STOP "${2:-}"; log "${2}: frozen" ;;
    thaw) signal_host CONT "${2:-}"; log "${2}: thawed" ;;
    kill)
        check_host_name "${2:-}"
        pid=$(host_pid "$2")
        if host_alive "$2"; then
            kids=$(descendants "$pid")
            # shellcheck disable=SC2086
            kill -CONT "$pid" $kids 2>/dev/null || true
            # shellcheck disable=SC2086
            kill -KILL "$pid" $kids 2>/dev/null || true
        fi
        rm -f "$BASE/$2/sshd.pid"
        log "$2: killed"
        ;;
    revive) check_host_name "${2:-}"; start_host "$2" ;;
    venv)
        [ -n "${HSM_REMOTE_VENV:-}" ] || die "set HSM_REMOTE_VENV to the venv's folder"
        ensure_remote_venv "$HSM_REMOTE_VENV"
        ;;
    *) echo "usage: $0 start|stop|status|freeze HOST|thaw HOST|kill HOST|revive HOST|venv" >&2; exit 2 ;;
esac
