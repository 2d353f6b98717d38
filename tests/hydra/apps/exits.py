"""Ends with sys.exit(x): 0 is success, anything else a failure."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    print(f"leaving with {cfg.x}", flush=True)
    sys.exit(int(cfg.x))


if __name__ == "__main__":
    main()
