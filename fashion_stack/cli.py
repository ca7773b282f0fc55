"""The `fashion-stack` command.

    fashion-stack run [flags]        the pipeline: exactly run_pipeline.py's flags (fashion-stack run --help)
    fashion-stack configs            the configs shipped with the package, usable by name (--config ccp)
    fashion-stack validate RUN|FILE  check a submission CSV: a run directory finds its own test list and label map

Run directories (runs/<name>) and the demo's generated data (.cache/) go under the working directory.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from fashion_stack import __version__

COMMANDS = {
    "run": "run the pipeline's stages (flags as run_pipeline.py; see `fashion-stack run --help`)",
    "configs": "list the configs shipped with the package (pass one to --config by name)",
    "validate": "validate a submission CSV (see `fashion-stack validate --help`)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion-stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fashion-stack {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        # run and validate parse their own flags: one definition of each flag, in its own module
        commands.add_parser(name, help=summary, add_help=name == "configs")
    return parser


def list_configs() -> int:
    from fashion_stack.core.config import CONFIGS_DIR, shipped_configs

    for name in shipped_configs():
        print(f"{name:<20} {CONFIGS_DIR / (name + '.yaml')}")
    return 0


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _parser().parse_args(argv)  # prints help, the version, or names the unknown command
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from fashion_stack import pipeline as run_pipeline

        return run_pipeline.main(rest, prog="fashion-stack run")
    if command == "validate":
        from fashion_stack.submissions import validate

        return validate.main(rest, prog="fashion-stack validate")
    _parser().parse_args(argv)
    return list_configs()
