# shellcheck shell=bash
# Helpers shared by the service scripts (sourced, not run).
# Every daemon is tracked by its PID file; a PID is only trusted when the process
# still runs the program we expect (PIDs are reused, and this machine's PID 1 reaps
# exited daemons late, so `kill -0` alone also succeeds on zombies).

HSM_SERVICES_DIR=${HSM_SERVICES_DIR:-/tmp/hsm-test-services}
HSM_CHECKOUT=${HSM_CHECKOUT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

# Under `set -e` a failing command would end the script without a word: name it.
set -E   # the ERR trap also fires inside functions
trap 'log "failed (exit $?) at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR

log() { printf '[%s] %s\n' "${LOG_TAG:-services}" "$*" >&2; }
die() { log "error: $*"; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# pid_alive PID [CMDLINE_SUBSTRING]: the process exists, is not a zombie and, when a
# substring is given, its command line contains it.
pid_alive() {
    local pid=$1 want=${2:-} stat state cmd
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    state=${stat##*) }; state=${state%% *}
    [ "$state" != Z ] || return 1
    [ -z "$want" ] && return 0
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *"$want"* ]]
}

pid_gone() { ! pid_alive "$@"; }

# pidfile_alive FILE [CMDLINE_SUBSTRING]
pidfile_alive() { [ -s "$1" ] && pid_alive "$(cat "$1")" "${2:-}"; }

# wait_until DESC TIMEOUT_S CMD... : poll CMD every 0.1 s until it succeeds.
wait_until() {
    local desc=$1 deadline=$(( $(date +%s%N) + $2 * 1000000000 )); shift 2
    while [ "$(date +%s%N)" -lt "$deadline" ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "timeout waiting for $desc"
    return 1
}

# stop_pidfile NAME FILE [CMDLINE_SUBSTRING] [TIMEOUT_S]: SIGTERM, wait, then SIGKILL.
stop_pidfile() {
    local name=$1 file=$2 want=${3:-} timeout=${4:-20} pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if pid_alive "$pid" "$want"; then
        kill -CONT "$pid" 2>/dev/null || true   # a frozen (SIGSTOPped) daemon cannot exit
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until "$name to exit" "$timeout" pid_gone "$pid" "$want"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$file"
}

# descendants PID: every process below PID, one per line (bash builtins only: no
# procps on a minimal machine, and no fork per process).
descendants() {
    local -A kids=()
    local f stat rest ppid pid queue
    for f in /proc/[0-9]*/stat; do
        read -r stat <"$f" 2>/dev/null || continue
        rest=${stat##*) }
        read -r _ ppid _ <<<"$rest"
        pid=${f#/proc/}; pid=${pid%/stat}
        kids[$ppid]+="$pid "
    done
    queue=${kids[$1]:-}
    while [ -n "${queue// /}" ]; do
        read -r pid queue <<<"$queue"
        echo "$pid"
        queue+=" ${kids[$pid]:-}"
    done
}

# lock_dir DIR: hold an exclusive lock on DIR/.lock until the script exits, so that
# two test runs starting or stopping the same services wait for each other.
# Daemons must be started through `daemon`, which closes the lock's descriptor:
# a daemon that inherited it would hold the lock for as long as it runs.
lock_dir() {
    mkdir -p "$1"
    exec 9>"$1/.lock"
    flock 9
}
daemon() { "$@" 9>&-; }

# tcp_listening ADDR PORT: something accepts connections there.
tcp_listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

