#!/usr/bin/env bash
# slurm.sh - a real one-node Slurm cluster on loopback for the integration tests:
# munged, a private MariaDB, slurmdbd (so that sacct works), slurmctld and slurmd.
#
# Usage: slurm.sh start    start whatever is not running (idempotent), then run one
#                          job to completion and wait for its sacct record
#        slurm.sh stop     cancel all jobs, stop the daemons by PID file (reverse order)
#        slurm.sh status   exit 0 when every daemon runs
# Env:   HSM_SERVICES_DIR  state root (default /tmp/hsm-test-services); state, spool,
#                          logs, PID files and the database go to .../slurm
#        HSM_SLURM_CPUS    CPUs the node advertises (default 16: many 1-CPU test jobs
#                          at once on a 2-core machine)
# Its configuration lives in .../slurm/etc (slurm.conf, slurmdbd.conf), never in
# /etc/slurm: a machine may run a Slurm of its own, whose files and ports are left
# alone. Clients find this cluster through SLURM_CONF=.../slurm/etc/slurm.conf
# (scripts/test.sh exports it; `slurm.sh conf` prints it; .../slurm/slurm.conf links to
# it, for the ssh test hosts' sessions). Its ports are the usual
# 6817-6819 when free, else the next free ones (kept in .../slurm/ports).
# Writes .../slurm/env.json for the tests.
# Jobs run as the submitting user (root here); their interpreter must be readable
# by that user.
set -euo pipefail
umask 022
LOG_TAG=slurm
# shellcheck source=scripts/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE=$HSM_SERVICES_DIR/slurm
CPUS=${HSM_SLURM_CPUS:-16}
CLUSTER=hsmtest
PARTITION=debug
ETC=$BASE/etc
LEGACY_CONF=/etc/slurm/slurm.conf   # where this script wrote its config before
DB_PASS=hsmtest     # a throwaway database on loopback only
NODE=$(hostname -s)
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
DB=$BASE/mysql
DBRUN=$BASE/mysql-run   # socket, PID file and log: must be writable by user mysql
MUNGE_PID=/run/munge/munged.pid

T0=$(date +%s%N); TS=$T0
step() {
    local now; now=$(date +%s%N)
    log "$(printf '%-28s %5d ms (total %5d ms)' "$1" $(( (now - TS) / 1000000 )) $(( (now - T0) / 1000000 )))"
    TS=$now
}

munged_alive() { pidfile_alive "$MUNGE_PID" munged; }
mariadb_alive() { pidfile_alive "$DBRUN/mysqld.pid" mariadbd; }
slurmdbd_alive() { pidfile_alive "$BASE/slurmdbd.pid" slurmdbd; }
slurmctld_alive() { pidfile_alive "$BASE/slurmctld.pid" slurmctld; }
slurmd_alive() { pidfile_alive "$BASE/slurmd.pid" slurmd; }
all_alive() { munged_alive && mariadb_alive && slurmdbd_alive && slurmctld_alive && slurmd_alive; }
node_idle() { sinfo -h -n "$NODE" -o %t | grep -Eqx 'idle|mix|alloc'; }
munge_ok() { munge -n | unmunge; }
db_ping() { mariadb-admin --no-defaults --socket="$DBRUN/mysqld.sock" ping; }
queue_empty() { [ -z "$(squeue -h 2>/dev/null)" ]; }
tcp_open() { tcp_listening 127.0.0.1 "$1"; }

# A Slurm port held by a process that is not ours: fail with the reason instead of
# a daemon that dies with only a log line.
require_free_port() { # NAME PORT
    if tcp_open "$2"; then die "port $2 ($1) is taken by another process; stop it first"; fi
}

# The config the running daemons read: this script's own, or (daemons started by an
# older version of it, which wrote /etc/slurm) that one. Chosen once, before any
# client command runs, and exported: every sinfo/sbatch/scontrol below reads it.
choose_conf() {
    if [ -s "$BASE/conf_path" ]; then cat "$BASE/conf_path"
    elif pidfile_alive "$BASE/slurmctld.pid" slurmctld && [ -f "$LEGACY_CONF" ]; then
        echo "$LEGACY_CONF"
    else echo "$ETC/slurm.conf"; fi
}

# slurmctld, slurmd, slurmdbd ports: 6817-6819 unless another Slurm (or anything else)
# holds one of them, then the first free triple above. Chosen once and kept while any
# of our daemons runs (daemons of an older version of this script use 6817-6819).
choose_ports() {
    if [ -s "$BASE/ports" ]; then cat "$BASE/ports"; return; fi
    if slurmctld_alive || slurmdbd_alive || slurmd_alive; then
        echo "6817 6818 6819" | tee "$BASE/ports"
        return
    fi
    local base
    for base in $(seq 6817 3 6997); do
        if ! tcp_open "$base" && ! tcp_open $((base + 1)) && ! tcp_open $((base + 2)); then
            echo "$base $((base + 1)) $((base + 2))" | tee "$BASE/ports"
            return
        fi
    done
    die "no three free ports for slurmctld, slurmd and slurmdbd in 6817-6999"
}

choose_db_port() {
    if [ -s "$BASE/db_port" ]; then cat "$BASE/db_port"; return; fi
    local port
    for port in $(seq 3307 3407); do
        tcp_open "$port" || { echo "$port" >"$BASE/db_port"; echo "$port"; return; }
    done
    die "no free port for MariaDB in 3307-3407"
}

start_munged() {
    # The package's postinst makes the key; /run/munge is normally made by systemd.
    if ! [ -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    if ! munged_alive; then
        daemon runuser -u munge -- /usr/sbin/munged
        touch "$BASE/munged.ours"   # stop only a munged that this script started
    fi
    wait_until munged 10 munge_ok || die "munged does not answer"
}

start_mariadb() { # PORT
    install -d -o mysql -g mysql "$DB" "$DBRUN"
    if ! [ -d "$DB/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$DB" --skip-test-db \
            --auth-root-authentication-method=socket >"$BASE/log/mariadb-install-db.log" 2>&1 ||
            die "mariadb-install-db failed (log: $BASE/log/mariadb-install-db.log)"
    fi
    if ! mariadb_alive; then
        # --no-defaults ignores /etc/mysql; mariadbd has no daemon mode. (Not through
        # `daemon`: a function run with & stays as a subshell that holds the lock.)
        setsid mariadbd --no-defaults --user=mysql --datadir="$DB" \
            --socket="$DBRUN/mysqld.sock" --pid-file="$DBRUN/mysqld.pid" \
            --bind-address=127.0.0.1 --port="$1" --skip-name-resolve --skip-log-bin \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            --innodb-flush-log-at-trx-commit=2 --log-error="$DBRUN/mysqld.log" \
            </dev/null >/dev/null 2>&1 9>&- &
    fi
    wait_until mariadbd 60 db_ping || die "mariadbd did not start (log: $DBRUN/mysqld.log)"
    # --skip-name-resolve: the grant must name the address, not localhost.
    mariadb --no-defaults --socket="$DBRUN/mysqld.sock" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

write_slurmdbd_conf() { # DB_PORT
    install -d "$ETC"
    cat >"$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$BASE/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$1
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd refuses any other mode
}

write_slurm_conf() {
    local mem
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    install -d "$ETC"
    cat >"$ETC/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups: the test machine has no delegated cgroup tree and no systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# The default batch_sched_delay=3 costs 2-3 s between sbatch and job start.
SchedulerParameters=batch_sched_delay=0
# Tests kill and freeze slurmd: notice it in 10 s (default 300), and take the node
# back when its slurmd registers again.
ReturnToService=2
SlurmdTimeout=10
# SIGTERM -> SIGKILL grace on scancel or time limit (default 30 s).
KillWait=2
MailProg=/bin/true
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# More CPUs than the machine has, so that many 1-CPU test jobs run at once.
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

write_env_json() { # DB_PORT
    python3 - "$BASE" "$SLURM_CONF" "$SELF" "$CLUSTER" "$PARTITION" "$NODE" "$CPUS" "$1" \
        "$MUNGE_PID" "$DBRUN/mysqld.pid" <<'PY'
import json, os, sys
base, conf, script, cluster, partition, node, cpus, db_port, munge_pid, db_pid = sys.argv[1:]
env = {
    "cluster": cluster,
    "partition": partition,
    "node": node,
    "cpus": int(cpus),
    "accounting": True,
    "slurm_conf": conf,
    "state_dir": base,
    "log_dir": f"{base}/log",
    "db_port": int(db_port),
    "pid_files": {
        "munged": munge_pid,
        "mariadbd": db_pid,
        "slurmdbd": f"{base}/slurmdbd.pid",
        "slurmctld": f"{base}/slurmctld.pid",
        "slurmd": f"{base}/slurmd.pid",
    },
    "control_script": script,
}
tmp = f"{base}/env.json.tmp"
with open(tmp, "w") as f:
    json.dump(env, f, indent=2)
    f.write("\n")
os.replace(tmp, f"{base}/env.json")
PY
}

smoke_test() {
    local out jid
    out=$(mktemp "$BASE/smoke.XXXXXX")
    # Not `sbatch --wait`: it polls every 2 s or more.
    jid=$(sbatch --parsable -o "$out" --wrap 'echo ok')
    wait_until "job $jid" 60 sh -c "scontrol show job $jid | grep -q JobState=COMPLETED" ||
        die "smoke job $jid did not complete (logs: $BASE/log)"
    grep -qx ok "$out" || die "smoke job $jid wrote no output"
    rm -f "$out"
    # sacct lags the job by up to ~1 s.
    wait_until "sacct record of job $jid" 30 sh -c "sacct -n -X -j $jid -o State | grep -q COMPLETED" ||
        die "sacct has no record of job $jid (log: $BASE/log/slurmdbd.log)"
}

cmd_start() {
    is_root || die "needs root (it starts munged, MariaDB and the Slurm daemons)"
    local prog
    for prog in slurmctld slurmd slurmdbd mariadbd munged; do
        command -v "$prog" >/dev/null ||
            die "$prog is not installed: run scripts/services/install.sh"
    done
    getent hosts "$NODE" | grep -q '^127\.' ||
        log "warning: $NODE does not resolve to a loopback address (see /etc/hosts)"
    mkdir -p "$BASE"/{state,spool,log}
    lock_dir "$BASE"
    local db_port; db_port=$(choose_db_port)
    if all_alive && node_idle; then
        ln -sfn "$SLURM_CONF" "$BASE/slurm.conf"
        write_env_json "$db_port"
        log "already running (SLURM_CONF=$SLURM_CONF)"
        return 0
    fi
    if ! slurmctld_alive && ! slurmdbd_alive && ! slurmd_alive; then
        # Nothing of ours runs: this script's own config, and ports chosen afresh.
        SLURM_CONF=$ETC/slurm.conf
        rm -f "$BASE/ports" "$BASE/conf_path"
    fi
    local ports; ports=$(choose_ports)
    read -r CTLD_PORT SLURMD_PORT DBD_PORT <<<"$ports"
    start_munged; step munged
    start_mariadb "$db_port"; step mariadbd
    if ! slurmdbd_alive; then
        write_slurmdbd_conf "$db_port"
        require_free_port slurmdbd "$DBD_PORT"
        SLURM_CONF=$ETC/slurm.conf daemon slurmdbd   # reads slurmdbd.conf beside it
    fi
    wait_until slurmdbd 60 tcp_open "$DBD_PORT" ||
        die "slurmdbd did not start (log: $BASE/log/slurmdbd.log)"
    step slurmdbd
    # A running controller keeps the config it read: only (re)write it before a start.
    if ! slurmctld_alive; then
        write_slurm_conf
        echo "$SLURM_CONF" >"$BASE/conf_path"
        require_free_port slurmctld "$CTLD_PORT"
        daemon slurmctld
    fi
    if ! slurmd_alive; then require_free_port slurmd "$SLURMD_PORT"; daemon slurmd; fi
    wait_until "node idle" 60 node_idle || die "node $NODE not idle (logs: $BASE/log)"
    step "slurmctld + slurmd"
    smoke_test; step "first job + sacct record"
    # A fixed path for sessions that cannot be told the real one (the ssh test hosts).
    ln -sfn "$SLURM_CONF" "$BASE/slurm.conf"
    write_env_json "$db_port"
    log "ready: SLURM_CONF=$SLURM_CONF sbatch/squeue/scancel/sacct (partition $PARTITION, env: $BASE/env.json)"
}

cmd_stop() {
    [ -d "$BASE" ] || return 0
    lock_dir "$BASE"
    # Running jobs live in slurmstepd processes that outlive slurmd: cancel them first.
    if slurmctld_alive; then
        scancel --full --quiet --user=root 2>/dev/null || true
        local jobs; jobs=$(squeue -h -o %A 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$jobs" ] || scancel $jobs 2>/dev/null || true
        wait_until "job queue to empty" 10 queue_empty || true
    fi
    stop_pidfile slurmd "$BASE/slurmd.pid" slurmd
    stop_pidfile slurmctld "$BASE/slurmctld.pid" slurmctld
    stop_pidfile slurmdbd "$BASE/slurmdbd.pid" slurmdbd
    stop_pidfile mariadbd "$DBRUN/mysqld.pid" mariadbd 60
    if [ -f "$BASE/munged.ours" ]; then
        stop_pidfile munged "$MUNGE_PID" munged
        rm -f "$BASE/munged.ours"
    fi
    return 0
}

cmd_status() {
    trap - ERR   # "not running" is an answer here, not a failure
    local rc=0 d
    for d in munged mariadb slurmdbd slurmctld slurmd; do
        if "${d}_alive"; then log "$d: running"; else log "$d: not running"; rc=1; fi
    done
    return $rc
}

SLURM_CONF=$(choose_conf)
export SLURM_CONF

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    conf) echo "$SLURM_CONF" ;;
    *) echo "usage: $0 start|stop|status|conf" >&2; exit 2 ;;
esac
