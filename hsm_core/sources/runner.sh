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
# only a plain command needs this one.
if [ ! -e "$d/result.json" ]; then
    printf '{"exit_code": %d}\n' "$rc" > "$d/.result.json.tmp" && mv -f "$d/.result.json.tmp" "$d/result.json"
fi
exit "$rc"
