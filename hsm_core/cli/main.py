"""`hsm` entry point: argument parsing and error rendering only.

Each command lives in its own module, imported only when that command runs, so that
`hsm status` does not pay for asyncssh or Hydra.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from hsm_core import __version__

# command -> module exposing add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hsm_core.cli.run_cmd", "run a sweep file on one or more sources"),
    "complete": ("hsm_core.cli.complete_cmd", "finish a sweep: run what is not COMPLETED"),
    "status": ("hsm_core.cli.status_cmd", "counts per state and source; no argument: recent"),
    "cancel": ("hsm_core.cli.cancel_cmd", "cancel a running sweep"),
    "monitor": ("hsm_core.cli.monitor_cmd", "live view, health and error analysis"),
    "results": ("hsm_core.cli.results_cmd", "each task's parameters and metrics, sortable"),
    "report": ("hsm_core.cli.report_cmd", "write the performance and error reports"),
    "sources": ("hsm_core.cli.sources_cmd", "list and test configured compute sources"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (`only`) one whose other commands are listed but not loaded:
    importing every command module would cost each `hsm` call ~50 ms."""
    parser = argparse.ArgumentParser(
        prog="hsm",
        description="Run parameter sweeps over local processes, SSH hosts and Slurm/PBS.",
    )
    parser.add_argument("--version", action="version", version=f"hsm {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if not _available(module):
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    level = logging.DEBUG if debug else logging.WARNING
    logging.basicConfig(level=level, format="hsm: %(levelname)s %(name)s: %(message)s")
    # The sweep's log files take INFO from the "hsm" logger; the terminal shows only
    # what needs attention (the summary lists failed tasks anyway).
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    from hsm_core.errors import HsmError

    try:
        return int(importlib.import_module(args._module).run(args))
    except HsmError as exc:
        if debug:
            raise
        print(f"hsm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hsm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `hsm run --dry-run | head`: the reader left; not an error worth a traceback.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
