"""An app that starts a thread before Hydra runs: jobs cannot be forked from it."""

import os
import threading

import hydra
from omegaconf import DictConfig

STOP = threading.Event()
threading.Thread(target=STOP.wait, name="background-poller", daemon=True).start()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return {"x": int(cfg.x) * 2, "pid": os.getpid()}


if __name__ == "__main__":
    main()
