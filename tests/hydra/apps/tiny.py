"""The smallest useful app: returns 2x and the pid that ran it."""

import os

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return {"x": int(cfg.x) * 2, "pid": os.getpid()}


if __name__ == "__main__":
    main()
