#!/bin/bash

# Parameters
#SBATCH --cpus-per-task=1
#SBATCH --error='/shared/sweeps/run 1/scripts/gpu/%j_0_log.err'
#SBATCH --job-name='one job'
#SBATCH --mem=1536M
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output='/shared/sweeps/run 1/scripts/gpu/%j_0_log.out'
#SBATCH --signal=URG@60
#SBATCH --time=5
#SBATCH --wckey=submitit

# setup

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output '/shared/sweeps/run 1/scripts/gpu/%j_%t_log.out' --error '/shared/sweeps/run 1/scripts/gpu/%j_%t_log.err' python3 -u -m submitit.core._submit '/shared/sweeps/run 1/scripts/gpu'
