"""A task whose module-level lock cannot be pickled (a common real-world mistake)."""

import os
import threading

import hydra
from omegaconf import DictConfig

LOCK = threading.Lock()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    with LOCK:
        return int(cfg.x) * 2 + 0 * os.getpid()


if __name__ == "__main__":
    main()
