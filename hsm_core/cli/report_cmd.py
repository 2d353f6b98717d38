"""`hsm report SWEEP`: (re)write reports/performance_analysis.yaml and error_analysis.html.

The journal is only read; the reports are written next to it, each file atomically, so this
is safe while the sweep runs (the report then shows the sweep as it is now).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep id or folder")


def run(args: argparse.Namespace) -> int:
    from hsm_core.reporting.reports import write_reports
    from hsm_core.sweeps import open_sweep

    with open_sweep(args.sweep) as store:
        paths = write_reports(store)
    print(f"performance: {paths.performance}")
    print(f"errors and timeline: {paths.errors_html}")
    return 0
