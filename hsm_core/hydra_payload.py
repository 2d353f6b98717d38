"""Old path of hsm_core.hydra.payload, kept because it is a wire contract: the payloads of
sweeps written before the regrouping pickled SweepPart and JobPart by this module's name."""

from hsm_core.hydra.payload import JobPart, SweepPart  # noqa: F401  (re-exported)
