"""hsm: Hydra launcher and sweeper plugins (heavy code in _-prefixed modules)."""
