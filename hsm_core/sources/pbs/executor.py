"""Old path of hsm_core.sources.hpc.pbs.executor, kept because it is a wire contract: an
install whose metadata predates the regrouping names it as submitit's PBS entry point."""

from hsm_core.sources.hpc.pbs.executor import (  # noqa: F401  (re-exported)
    PBSExecutor,
    PBSJobEnvironment,
)
