"""A training loop that saves a checkpoint after every step in its Hydra output dir and
goes on from it when hsm resumes it (`+steps=N +step_s=S`). steps.log gets one line per
step done: "<attempt> <step> <time>"; the job returns the sum of the steps."""

import json
import logging
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hsm_core import job

log = logging.getLogger(__name__)


@hydra.main(config_path=None, version_base=None)
def main(cfg: DictConfig) -> int:
    out = Path(HydraConfig.get().runtime.output_dir)
    ckpt = out / "ckpt.json"
    steps = out / "steps.log"
    resume = job.resumed() and ckpt.exists()
    state = json.loads(ckpt.read_text()) if resume else {"step": 0, "total": 0}
    log.info(
        "attempt %d starts at step %d (resumed: %s)", job.attempt(), state["step"], job.resumed()
    )
    job.on_stop(lambda: log.info("attempt %d: stop requested", job.attempt()))
    while state["step"] < cfg.steps:
        time.sleep(cfg.step_s)
        state = {"step": state["step"] + 1, "total": state["total"] + state["step"] + 1}
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, ckpt)
        with open(steps, "a") as f:
            f.write(f"{job.attempt()} {state['step']} {time.time():.1f}\n")
    return int(state["total"])


if __name__ == "__main__":
    main()
