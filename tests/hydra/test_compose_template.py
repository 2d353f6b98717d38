"""A job composed from the template equals a full compose (Hydra's own configs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from hsm_core.hydra.compose import JobComposer

EXAMPLE_CONF = Path(__file__).resolve().parents[2] / "example_app" / "conf"


@pytest.fixture
def loader(hydra_restore_singletons: None) -> Any:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.utils import setup_globals

    setup_globals()
    return ConfigLoaderImpl(config_search_path=create_config_search_path(str(EXAMPLE_CONF)))


def master(loader: Any, overrides: list[str]) -> Any:
    from hydra.types import RunMode

    return loader.load_configuration(
        config_name="config", overrides=overrides, run_mode=RunMode.MULTIRUN
    )


def dump(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


CASES = [
    # first job, later job, expected to use the template
    (["seed=1", "epochs=2"], ["seed=2", "epochs=3"], True),
    (["optim.lr=0.1"], ["optim.lr=0.001"], True),
    (["data.noise=0.1"], ["data.noise=null"], True),
    (["fail=null"], ["fail='a b, c=$HOME;'"], True),
    (["seed=1", "sleep=0"], ["seed=1", "sleep=0.5"], True),
    (["model=linear"], ["model=mlp"], False),  # a config group choice
    (["+extra=1"], ["+extra=2"], False),  # additions
    (["data.n_features=4"], ["data={n_features: 8}"], False),  # a dict value
    (["seed=1"], ["seed=1", "epochs=2"], False),  # other keys
]


@pytest.mark.parametrize("first, later, templated", CASES)
def test_template_equals_full_compose(
    loader: Any, first: list[str], later: list[str], templated: bool
) -> None:
    base = master(loader, [])
    composer = JobComposer(loader, base)
    composer.set_template(first, composer.full(first))
    composer.prepare([first, later])
    got = composer.compose(later)
    assert composer.template_hits == int(templated)
    assert dump(got) == dump(composer.full(later))


def test_override_dirname_follows_the_job(loader: Any) -> None:
    composer = JobComposer(loader, master(loader, []))
    composer.set_template(["seed=1"], composer.full(["seed=1"]))
    assert composer.compose(["seed=7"]).hydra.job.override_dirname == "seed=7"


def test_in_place_consumes_the_template(loader: Any) -> None:
    composer = JobComposer(loader, master(loader, []))
    composer.set_template(["seed=1"], composer.full(["seed=1"]))
    assert composer.compose(["seed=2"], inplace=True).seed == 2
    assert composer.templates == {}
    assert composer.compose(["seed=3"]).seed == 3  # full compose from then on
    assert composer.template_hits == 1


def test_a_template_per_shape(loader: Any) -> None:
    """Group choices crossed with values: one template per choice, then all values."""
    composer = JobComposer(loader, master(loader, []))
    jobs = [[f"model={m}", f"seed={s}"] for m in ("linear", "mlp") for s in range(3)]
    composer.set_template(jobs[0], composer.full(jobs[0]))
    composer.prepare(jobs)
    for job in jobs:
        composer.ensure_template(job)  # what the fork server does before each fork
    assert len(composer.templates) == 2
    for job in jobs:
        assert dump(composer.compose(job)) == dump(composer.full(job))
    assert composer.template_hits == len(jobs)
