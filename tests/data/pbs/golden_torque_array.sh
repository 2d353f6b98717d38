#!/bin/bash

# Parameters
#PBS -S /bin/bash
#PBS -N sweep
#PBS -q gpu
#PBS -A abc123
#PBS -l nodes=1:ppn=4:gpus=1
#PBS -l mem=16gb
#PBS -l walltime=01:30:00
#PBS -t 0-9%4
#PBS -V
#PBS -j oe
#PBS -o '/shared/sweeps/run 1/logs'
#PBS -l place=scatter
#PBS -W group_list=proj

# Logs: <submitit job id>_0_log.out/.err, the names submitit reads
_submitit_seq=${PBS_JOBID%%.*}
_submitit_seq=${_submitit_seq%%\[*}
_submitit_seq=${_submitit_seq%%-*}
_submitit_index="$PBS_ARRAYID"
_submitit_job="${_submitit_seq}_${_submitit_index}"
mkdir -p '/shared/sweeps/run 1/logs'
exec >>'/shared/sweeps/run 1/logs/'"$_submitit_job"_0_log.out 2>>'/shared/sweeps/run 1/logs/'"$_submitit_job"_0_log.err
cd "$PBS_O_WORKDIR"

# setup
module load cuda/12.1
conda activate ml

# command
export SUBMITIT_EXECUTOR=pbs
/opt/py/bin/python -u -m submitit.core._submit '/shared/sweeps/run 1/logs'
