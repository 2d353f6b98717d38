"""Old path of hsm_core.hydra.worker, kept because it is a wire contract: sweeps written
before the regrouping run `python -m hsm_core.worker` (in hpc job requests already queued)."""

from hsm_core.hydra.worker import main, run  # noqa: F401  (re-exported)

if __name__ == "__main__":
    raise SystemExit(main())
