"""Old path of hsm_core.sources.hpc.job, kept because it is a wire contract: jobs queued
before the regrouping hold `run_task` pickled by reference to this module's name."""

from hsm_core.sources.hpc.job import main, run_task  # noqa: F401  (re-exported)

if __name__ == "__main__":
    main()
