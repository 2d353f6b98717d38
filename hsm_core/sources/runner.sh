#!/bin/sh
# Runs one attempt of a command task: runner.sh TASK_DIR ARGV...
#
# Why a shell wrapper at all: the exit record must be written by something that outlives
# the orchestrator. If hsm is killed, this process (in its own session) still writes
# result.json when the task ends, so `hsm complete` can tell "finished" from "lost".
# ARGV is passed as "$@": no value is ever parsed or evaluated by this shell.
d=$1
shift
echo $$ > "$d/pid"
"$@" > "$d/stdout.log" 2> "$d/stderr.log" < /dev/null
rc=$?
# A Hydra worker writes its own, richer result.json (exit code, error, return value);
# only a plain command needs this one. One small write, no temp file + mv: a reader
# trusts this file only once this runner has exited (it checks), and sparing an `mv`
# process per task is a third of the runner's cost.
[ -e "$d/result.json" ] || printf '{"exit_code": %d}\n' "$rc" > "$d/result.json"
exit "$rc"
