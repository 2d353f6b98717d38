"""Old home of hsm_core.sources.hpc.pbs: only the submitit entry point stays here."""
