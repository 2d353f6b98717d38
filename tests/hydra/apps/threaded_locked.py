"""Starts a thread before Hydra runs and uses a global that cannot be pickled: the jobs
can be neither forked nor sent to a fresh interpreter."""

import os
import threading
import time

import hydra
from omegaconf import DictConfig

LOCK = threading.Lock()
STOP = threading.Event()
threading.Thread(target=STOP.wait, name="background-poller", daemon=True).start()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    with LOCK:
        print(f"job x={cfg.x} runs", flush=True)
        time.sleep(float(cfg.get("sleep", 0)))
        if int(cfg.x) == 3:
            raise ValueError("three")
        return {"x": int(cfg.x) * 2, "pid": os.getpid(), "attempt": os.environ.get("HSM_ATTEMPT")}


if __name__ == "__main__":
    main()
