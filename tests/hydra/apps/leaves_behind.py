"""A job that starts two processes and returns without waiting: one in its own process
group, one that left it with setsid. Both must end with the job."""

import os
import subprocess

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    results = os.path.join(os.environ["HSM_TASK_DIR"], "results")
    same = subprocess.Popen(["sleep", "60"])
    own = subprocess.Popen(["sleep", "61"], start_new_session=True)
    for name, proc in (("same", same), ("own", own)):
        with open(os.path.join(results, name), "w") as f:
            f.write(str(proc.pid))
    return int(cfg.x)


if __name__ == "__main__":
    main()
