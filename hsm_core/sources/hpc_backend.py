"""Old path of hsm_core.sources.hpc.backend, kept because it is a wire contract: an older
hsm on the submitting side runs `python -m hsm_core.sources.hpc_backend` on the login node."""

from hsm_core.sources.hpc.backend import handle, main  # noqa: F401  (re-exported)

if __name__ == "__main__":
    main()
