"""A small, real Hydra app: trains a tiny classifier on a synthetic dataset, in pure Python.

It exists so that hsm's docs, tests and benchmarks sweep something that behaves like a real
training script (config groups, logging, an output dir, a metrics file, a return value)
without heavy dependencies. One run takes a fraction of a second.

    python example_app/train.py                        # one run, output in ./outputs/...
    python example_app/train.py -m seed=0,1,2 model=linear,mlp   # Hydra multirun
    python example_app/train.py fail=exception         # or exit | segfault | oom
    python example_app/train.py sleep=5                # run about five seconds longer

Writes `metrics.json` to the run's output dir, and also to `$HSM_TASK_DIR/results/` when hsm
runs it. The task function returns the final training loss (a launcher gets it as the
JobReturn value).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

FAILURES = ("exception", "exit", "segfault", "oom")

Dataset = tuple[list[list[float]], list[float]]


def make_dataset(rng: random.Random, n_samples: int, n_features: int, noise: float) -> Dataset:
    """Points from a standard gaussian, labelled by a random hyperplane plus gaussian noise."""
    true_w = [rng.gauss(0.0, 1.0) for _ in range(n_features)]
    xs: list[list[float]] = []
    ys: list[float] = []
    for _ in range(n_samples):
        x = [rng.gauss(0.0, 1.0) for _ in range(n_features)]
        logit = sum(w * v for w, v in zip(true_w, x, strict=True)) + rng.gauss(0.0, noise)
        xs.append(x)
        ys.append(1.0 if logit > 0 else 0.0)
    return xs, ys


def sigmoid(z: float) -> float:
    # split by sign so that exp never overflows
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def bce(p: float, y: float) -> float:
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


class Linear:
    """Logistic regression; parameters [w_1..w_d, b] in one flat list."""

    def __init__(self, n_features: int, rng: random.Random) -> None:
        self.d = n_features
        self.params = [rng.gauss(0.0, 0.1) for _ in range(n_features)] + [0.0]

    def predict(self, x: list[float]) -> float:
        w = self.params
        return sigmoid(sum(w[i] * x[i] for i in range(self.d)) + w[self.d])

    def loss_and_grad(self, xs: list[list[float]], ys: list[float]) -> tuple[float, list[float]]:
        grad = [0.0] * len(self.params)
        loss = 0.0
        for x, y in zip(xs, ys, strict=True):
            p = self.predict(x)
            loss += bce(p, y)
            err = p - y
            for i in range(self.d):
                grad[i] += err * x[i]
            grad[self.d] += err
        n = len(xs)
        return loss / n, [g / n for g in grad]


class MLP:
    """One hidden tanh layer and a sigmoid output; parameters in one flat list laid out as
    [W1 (hidden x d), b1 (hidden), w2 (hidden), b2]."""

    def __init__(self, n_features: int, hidden: int, rng: random.Random) -> None:
        self.d, self.h = n_features, hidden
        scale = 1.0 / math.sqrt(n_features)
        n_w1 = hidden * n_features
        self.params = (
            [rng.gauss(0.0, scale) for _ in range(n_w1)]
            + [0.0] * hidden
            + [rng.gauss(0.0, 1.0 / math.sqrt(hidden)) for _ in range(hidden)]
            + [0.0]
        )
        self.o_b1 = n_w1
        self.o_w2 = n_w1 + hidden
        self.o_b2 = n_w1 + 2 * hidden

    def _forward(self, x: list[float]) -> tuple[list[float], float]:
        p, d = self.params, self.d
        hid = []
        for j in range(self.h):
            row = j * d
            z = p[self.o_b1 + j] + sum(p[row + i] * x[i] for i in range(d))
            hid.append(math.tanh(z))
        out = p[self.o_b2] + sum(p[self.o_w2 + j] * hid[j] for j in range(self.h))
        return hid, sigmoid(out)

    def predict(self, x: list[float]) -> float:
        return self._forward(x)[1]

    def loss_and_grad(self, xs: list[list[float]], ys: list[float]) -> tuple[float, list[float]]:
        p, d = self.params, self.d
        grad = [0.0] * len(p)
        loss = 0.0
        for x, y in zip(xs, ys, strict=True):
            hid, prob = self._forward(x)
            loss += bce(prob, y)
            err = prob - y
            grad[self.o_b2] += err
            for j in range(self.h):
                grad[self.o_w2 + j] += err * hid[j]
                dz = err * p[self.o_w2 + j] * (1.0 - hid[j] * hid[j])
                grad[self.o_b1 + j] += dz
                row = j * d
                for i in range(d):
                    grad[row + i] += dz * x[i]
        n = len(xs)
        return loss / n, [g / n for g in grad]


Model = Linear | MLP


def make_model(cfg: DictConfig, rng: random.Random) -> Model:
    name = cfg.model.name
    if name == "linear":
        return Linear(cfg.data.n_features, rng)
    if name == "mlp":
        return MLP(cfg.data.n_features, int(cfg.model.hidden), rng)
    raise ValueError(f"model.name={name!r} is not one of: linear, mlp")


class Optimizer:
    """Plain SGD, or SGD with heavy-ball momentum when `momentum` > 0."""

    def __init__(self, cfg: DictConfig, n_params: int) -> None:
        if cfg.name not in ("sgd", "momentum"):
            raise ValueError(f"optim.name={cfg.name!r} is not one of: sgd, momentum")
        self.lr = float(cfg.lr)
        self.momentum = float(cfg.get("momentum", 0.0))
        self.velocity = [0.0] * n_params

    def step(self, params: list[float], grad: list[float]) -> None:
        for i, g in enumerate(grad):
            self.velocity[i] = self.momentum * self.velocity[i] + g
            params[i] -= self.lr * self.velocity[i]


def accuracy(model: Model, xs: list[list[float]], ys: list[float]) -> float:
    hits = sum(1 for x, y in zip(xs, ys, strict=True) if (model.predict(x) > 0.5) == (y > 0.5))
    return hits / len(xs)


def fail_now(mode: str) -> None:
    """Fail the way real jobs fail, so that launchers and engines can be tested on it."""
    log.error("failing on purpose: fail=%s", mode)
    if mode == "exception":
        raise RuntimeError("deliberate failure (fail=exception)")
    if mode == "oom":
        raise MemoryError("deliberate failure (fail=oom)")
    if mode == "exit":
        os._exit(3)  # no cleanup, no traceback: like a library calling exit() deep inside
    if mode == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(10)  # the signal is delivered asynchronously; never fall through
    raise ValueError(f"fail={mode!r} is not one of: null, {', '.join(FAILURES)}")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and return the metrics; fails on purpose when `cfg.fail` says so."""
    if cfg.fail is not None and cfg.fail not in FAILURES:
        raise ValueError(f"fail={cfg.fail!r} is not one of: null, {', '.join(FAILURES)}")
    rng = random.Random(int(cfg.seed))
    xs, ys = make_dataset(rng, int(cfg.data.n_samples), int(cfg.data.n_features), cfg.data.noise)
    model = make_model(cfg, rng)
    optim = Optimizer(cfg.optim, len(model.params))
    epochs = int(cfg.epochs)
    pause = float(cfg.sleep) / epochs if epochs > 0 else float(cfg.sleep)
    if epochs <= 0 and cfg.sleep:
        time.sleep(pause)

    start = time.perf_counter()
    history: list[float] = []
    loss = float("nan")
    for epoch in range(epochs + 1):  # the last pass only measures the trained model
        if cfg.fail is not None and epoch == min(int(cfg.fail_at_epoch), epochs):
            fail_now(cfg.fail)
        loss, grad = model.loss_and_grad(xs, ys)
        history.append(loss)
        if epoch == epochs:
            break
        optim.step(model.params, grad)
        log.info("epoch %d/%d loss=%.4f", epoch + 1, epochs, loss)
        if pause:
            time.sleep(pause)

    return {
        "loss": loss,
        "accuracy": accuracy(model, xs, ys),
        "epochs": epochs,
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "optim": cfg.optim.name,
        "lr": float(cfg.optim.lr),
        "loss_history": history,
        "train_seconds": time.perf_counter() - start,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    log.info("config: %s", json.dumps(OmegaConf.to_container(cfg, resolve=True)))
    metrics = train(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_json(out_dir / "metrics.json", metrics)
    task_dir = os.environ.get("HSM_TASK_DIR")
    if task_dir:
        write_json(Path(task_dir) / "results" / "metrics.json", metrics)
    log.info("final loss=%.4f accuracy=%.3f", metrics["loss"], metrics["accuracy"])
    return float(metrics["loss"])


if __name__ == "__main__":
    main()
