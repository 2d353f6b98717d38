"""Pickling failures name the culprit; job identities and fingerprints are stable."""

from __future__ import annotations

import threading
from typing import Any

from hsm_core.errors import HsmError
from hsm_core.hydra.job import job_key, job_params
from hsm_core.hydra.payload import SweepPart, app_fingerprint, dump_sweep_part

# Like an app's __main__ module: not importable, so cloudpickle takes it by value.
APP = {"__name__": "not_importable_app", "threading": threading}
exec(
    "LOCK = threading.Lock()\ndef uses_lock(cfg):\n    with LOCK:\n        return 1\n",
    APP,
)
uses_lock = APP["uses_lock"]


def part(fn: Any, resolvers: dict[str, Any] | None = None) -> SweepPart:
    state = {"instances": {}, "omegaconf_resolvers": resolvers or {}}
    return SweepPart(fn, None, None, state, "/s", "/p", ".")


def test_global_lock_is_named() -> None:
    try:
        dump_sweep_part(part(uses_lock))
    except HsmError as exc:
        text = str(exc)
    else:
        raise AssertionError("a lock must not pickle")
    assert "the global 'LOCK' used by uses_lock, in the task function uses_lock" in text
    assert "(a _thread.lock)" in text
    assert "inside the task function" in text


def test_captured_variable_is_named() -> None:
    lock = threading.RLock()

    def task(cfg: Any) -> None:
        with lock:
            pass

    try:
        dump_sweep_part(part(task))
    except HsmError as exc:
        assert "the variable 'lock' captured by" in str(exc)
    else:
        raise AssertionError("an RLock must not pickle")


def test_resolver_is_named() -> None:
    lock = threading.Lock()

    def resolver() -> Any:
        return lock

    try:
        dump_sweep_part(part(lambda cfg: 0, {"my_res": resolver}))
    except HsmError as exc:
        assert "'lock' captured by" in str(exc)
        assert "in the OmegaConf resolver 'my_res'" in str(exc)
    else:
        raise AssertionError


def test_closures_and_lambdas_pickle() -> None:
    factor = 3
    assert dump_sweep_part(part(lambda cfg: cfg * factor))


def test_job_identity() -> None:
    assert job_params(["a=1", "+b=x", "~c"]) == {"a": "1", "+b": "x", "~c": None}
    assert job_key(["a=1", "b=2"]) == job_key(["b=2", "a=1"])
    assert job_key(["a=1"]) != job_key(["a=2"])


def test_fingerprint_changes_with_the_code() -> None:
    assert app_fingerprint(uses_lock) == app_fingerprint(uses_lock)
    assert app_fingerprint(uses_lock) != app_fingerprint(test_job_identity)
