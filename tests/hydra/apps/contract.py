"""The source contract suite's job as a real Hydra app (tests/integration/
test_source_contract.py): sleeps `sleep` seconds, then ends with sys.exit(code); with
`env=true` it records what hsm tells every task (its HSM_* variables) in its task
folder's results/env.json, as the suite's command task does."""

import json
import os
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

KEYS = ("HSM_SWEEP_ID", "HSM_TASK_ID", "HSM_TASK_KEY", "HSM_ATTEMPT")


def job(cfg: DictConfig) -> None:
    if cfg.env:
        folder = os.path.join(os.environ["HSM_TASK_DIR"], "results")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "env.json"), "w") as f:
            json.dump({k: os.environ.get(k) for k in KEYS}, f)
    # Where the suite looks for the job's process after it cancelled the job.
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(float(cfg.sleep))
    sys.exit(int(cfg.code))


main = hydra.main(version_base=None, config_path="conf", config_name="contract")(job)

if __name__ == "__main__":
    main()
