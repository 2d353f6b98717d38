"""PBS for submitit: PBS Pro / OpenPBS and Torque, shipped as a submitit executor plugin.

`dialect` and `status` are pure (text in, text out); `executor` holds the submitit classes
that submitit finds through the `submitit` entry points in pyproject.toml, so that plain
submitit users get `submitit.AutoExecutor(folder, cluster="pbs")` too.
"""
