#!/bin/bash

# Parameters
#PBS -S /bin/bash
#PBS -N train_lr_0.1
#PBS -l nodes=2:ppn=8
#PBS -l mem=3gb
#PBS -l walltime=00:05:00
#PBS -j oe
#PBS -o /shared/sweeps

# Logs: <submitit job id>_0_log.out/.err, the names submitit reads
_submitit_seq=${PBS_JOBID%%.*}
_submitit_seq=${_submitit_seq%%\[*}
_submitit_seq=${_submitit_seq%%-*}
_submitit_job="$_submitit_seq"
mkdir -p /shared/sweeps/"$_submitit_job"
exec >>/shared/sweeps/"$_submitit_job"/"$_submitit_job"_0_log.out 2>&1
cd "$PBS_O_WORKDIR"

# command
export SUBMITIT_EXECUTOR=pbs
/opt/py/bin/python -u -m submitit.core._submit '/shared/sweeps/run 1/logs'
