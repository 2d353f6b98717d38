"""Draws from the global generators without seeding them in the job. Something drew from
them before the sweep (as an import-time initialisation would)."""

import random

import hydra
from omegaconf import DictConfig

try:
    import numpy as np
except ImportError:  # the numpy half of the test skips
    np = None

random.random()
if np is not None:
    np.random.rand()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    if cfg.get("seed") is not None:  # an app that seeds per job keeps its numbers
        random.seed(int(cfg.seed))
        if np is not None:
            np.random.seed(int(cfg.seed))
    return {
        "random": random.random(),
        "numpy": float(np.random.rand()) if np is not None else None,
    }


if __name__ == "__main__":
    main()
