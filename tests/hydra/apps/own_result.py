"""Jobs that write a `result.json` of their own in their task folder: x=0 forges
`{"exit_code": 0}` and leaves with 7, x=1 forges it and dies of SIGSEGV, x=2 writes an
ordinary one and returns, x=3 writes none."""

import json
import os
import signal

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    x = int(cfg.x)
    path = os.path.join(os.environ["HSM_TASK_DIR"], "result.json")
    if x < 3:
        with open(path, "w") as f:
            json.dump({"acc": 0.9} if x == 2 else {"exit_code": 0}, f)
    if x == 0:
        os._exit(7)
    if x == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return x


if __name__ == "__main__":
    main()
