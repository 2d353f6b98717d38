"""PBS for submitit: PBS Pro / OpenPBS and Torque, shipped as a submitit executor plugin.

`dialect` (scripts, ids, commands) and `status` (qstat parsing, the state table) are pure;
`watcher` runs the batched ``qstat`` and ``qdel``; `executor` holds the submitit classes
that submitit finds through the `submitit` entry points in pyproject.toml, so that plain
submitit users get `submitit.AutoExecutor(folder, cluster="pbs")` too.
"""
