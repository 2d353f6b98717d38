"""The sweep's reports: reports/performance_analysis.yaml and reports/error_analysis.html.

Written from the journal at the end of every run (`write_reports_safely`, called by the
orchestrator) and on demand (`hsm report SWEEP`). Both files are replaced atomically, so a
reader never sees half a report; a report that cannot be built never fails the sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_core.reporting import gantt, report_html, results_svg
from hsm_core.reporting.failures import ErrorAnalysis, analyze
from hsm_core.reporting.patterns import Pattern, find_patterns
from hsm_core.reporting.performance import performance
from hsm_core.reporting.results import load_results
from hsm_core.reporting.sweepdata import SweepData, load_sweep
from hsm_core.store import SweepStore
from hsm_core.yamlio import dump_yaml, write_atomic

log = logging.getLogger("hsm.reports")

PERFORMANCE_FILE = "performance_analysis.yaml"
ERRORS_FILE = "error_analysis.html"


@dataclass(frozen=True)
class ReportPaths:
    performance: Path
    errors_html: Path


@dataclass(frozen=True)
class Analysis:
    """Everything the reports and `hsm monitor errors` show, computed once."""

    data: SweepData
    errors: ErrorAnalysis
    patterns: list[Pattern]
    group_patterns: dict[tuple[str, str], list[Pattern]]


def analyze_sweep(store: SweepStore, *, patterns: bool = True) -> Analysis:
    data = load_sweep(store)
    errors = analyze(data)
    overall: list[Pattern] = []
    per_group: dict[tuple[str, str], list[Pattern]] = {}
    if patterns and errors.groups:
        params = data.params
        failed = {f.key for f in errors.failures}
        overall = find_patterns(params, failed, errors.finished_keys)
        if len(errors.groups) > 1:
            for g in errors.groups:
                per_group[g.cause.group] = find_patterns(
                    params, g.keys, errors.finished_keys, limit=3
                )
    return Analysis(data, errors, overall, per_group)


def performance_yaml(analysis: Analysis, perf: dict[str, Any]) -> str:
    doc = dict(perf)
    doc["errors"] = {
        "failed": analysis.errors.failed,
        "lost": analysis.errors.lost,
        "recovered": analysis.errors.recovered,
        "groups": {g.label: g.count for g in analysis.errors.groups},
    }
    return dump_yaml(doc)


def write_reports(store: SweepStore) -> ReportPaths:
    analysis = analyze_sweep(store)
    reports = store.sweep_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    perf_path = reports / PERFORMANCE_FILE
    html_path = reports / ERRORS_FILE
    perf = performance(analysis.data)
    write_atomic(perf_path, performance_yaml(analysis, perf))
    page = report_html.render(
        perf,
        analysis.errors,
        analysis.patterns,
        analysis.group_patterns,
        gantt.gantt_svg(analysis.data),
        reports,
        store.sweep_dir,
        results_section(store),
    )
    write_atomic(html_path, page)
    log.info("reports written to %s", reports)
    return ReportPaths(perf_path, html_path)


def results_section(store: SweepStore) -> str:
    """The report's Results section; a sweep whose metrics cannot be read still gets
    the rest of its report."""
    try:
        return results_svg.results_html(load_results(store, only_metrics=True))
    except Exception:
        log.exception("could not read the results of %s", store.sweep_dir)
        return '<p class="muted">The metrics could not be read (see the sweep log).</p>'


def write_reports_safely(store: SweepStore) -> ReportPaths | None:
    """write_reports for the end of a run: a failure is logged, never raised."""
    try:
        return write_reports(store)
    except Exception:
        log.exception("could not write the reports of %s", store.sweep_dir)
        return None
