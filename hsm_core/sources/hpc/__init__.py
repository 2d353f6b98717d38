"""The hpc source: Slurm and PBS clusters, reached on this machine or over SSH.

`source` (the ComputeSource and its ledger), `client` (calls into `backend` here or on a
login node), `backend` (scheduler adapters and the RPC entry point run there), `job` (the
wrapper submitit runs on a compute node), `options`, `states` (scheduler state + exit
record -> task state), `cancel`, and `pbs/` (submitit executor for PBS Pro and Torque).
Nothing is imported here: submitit loads only when a sweep uses an hpc source.
"""
