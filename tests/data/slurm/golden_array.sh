#!/bin/bash

# Parameters
#SBATCH --account=abc123
#SBATCH --array=0-9%4
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=4
#SBATCH --error='/shared/sweeps/run 1/scripts/gpu/%A_%a_0_log.err'
#SBATCH --exclusive
#SBATCH --gpus-per-task=1
#SBATCH --job-name=sweep
#SBATCH --mem=16G
#SBATCH --no-requeue
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output='/shared/sweeps/run 1/scripts/gpu/%A_%a_0_log.out'
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=URG@60
#SBATCH --time=90
#SBATCH --wckey=submitit

# setup
module load cuda/12.1
source /opt/venv/bin/activate

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output '/shared/sweeps/run 1/scripts/gpu/%A_%a_%t_log.out' --error '/shared/sweeps/run 1/scripts/gpu/%A_%a_%t_log.err' /opt/py/bin/python -u -m submitit.core._submit '/shared/sweeps/run 1/scripts/gpu'
