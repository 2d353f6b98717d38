"""The shape of hsm_core that the code review of issue 14 asked for, kept by tests: no
import cycles (lazy imports included: a cycle through a function is still a cycle), the
transport below the sources, and one error tree."""

from __future__ import annotations

import ast
import io
import json
import sys
from pathlib import Path

import pytest

from hsm_core import errors

PACKAGE = Path(__file__).resolve().parents[2] / "hsm_core"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every hsm_core module `path` imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, known) - {name} for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_hsm_core_has_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_transport_imports_nothing_from_the_sources() -> None:
    graph = _graph()
    for name in (m for m in graph if m.startswith("hsm_core.transport")):
        assert not {d for d in graph[name] if d.startswith("hsm_core.sources")}, name


@pytest.mark.parametrize("name", ["hsm_core.errors", "hsm_core.remote_agent"])
def test_stdlib_only_modules_import_no_other_hsm_module(name: str) -> None:
    # errors: imported by the fork server and the hpc job wrapper; remote_agent: sent
    # as source to hosts that may not have hsm at all.
    graph = _graph()
    assert graph[name] == set()


def test_one_error_tree() -> None:
    infra = (errors.SourceError, errors.SchedulerError, errors.ForkServerError)
    for cls in infra:
        assert issubclass(cls, errors.InfrastructureError)
    assert issubclass(errors.InfrastructureError, errors.HsmError)
    from hsm_core.hydra.forkserver import ForkServerError
    from hsm_core.sources.base import SourceError
    from hsm_core.sources.hpc.backend import SchedulerError

    assert (SourceError, SchedulerError, ForkServerError) == infra


def test_an_infrastructure_error_at_start_is_an_outage_not_a_mistake() -> None:
    from hsm_core.engine import _outage

    assert _outage(errors.SourceError("connection lost"))
    assert _outage(errors.SourceUnavailable("login refused"))
    assert not _outage(errors.ConfigError("bad key"))
    assert not _outage(errors.HsmError("host key to confirm"))


def test_the_hpc_backend_reports_a_scheduler_error_as_not_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsm_core.sources.hpc import backend

    monkeypatch.setenv("PATH", str(tmp_path))  # no scancel
    request = {"op": "cancel", "options": {}, "job_ids": ["1"]}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(request)))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    backend.main()
    answer = json.loads(out.getvalue())
    assert "not found on PATH" in answer["error"]
    assert "user_error" not in answer  # the client retries it: it is the cluster's
