"""The Hydra runtime: what runs a Hydra job outside the plugin's own process.

`jobs` (HydraJobs: one launch's jobs, what the fork server and the sources are given),
`payload` (the cloudpickled job), `compose` (a job's config), `job` (run one job, write
its JobReturn), `worker` (`python -m hsm_core.hydra.worker`: a job run cold), `fork` and
`forkserver` (jobs forked warm from the launching process). The plugin shell lives in
hydra_plugins/hsm_launcher.
"""
