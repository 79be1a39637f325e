"""``pydiff`` console command: ``pydiff --help`` lists the subcommands.

Each subcommand lives in its own module under ``pydiff.apps`` that defines
``register(subparsers)``; it adds its parser and sets ``func`` (called with the parsed args, returns
an exit code). Add a module's name to ``COMMANDS`` to expose it. Modules import lazily, so a
domain's heavy dependencies load only when its command runs.

Example:
    $ pydiff demo --steps 300
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module under pydiff.apps, one-line help) in the order --help shows them
COMMANDS: list[tuple[str, str]] = [
    ("demo", "train a tiny model on a 2D toy distribution and compare solvers"),
    ("info", "show the version, the kernel backend and the available solvers"),
    ("policy", "diffusion policies for robot control loops (train, run, eval)"),
    ("speech", "diffusion speech enhancement (enhance, train, evaluate)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pydiff", description="pydiff: diffusion models for domain science.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS:
        try:
            module = importlib.import_module(f"pydiff.apps.{name}")
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("pydiff.apps."):
                continue  # the command is not part of this build yet
            # its dependencies are missing: keep the command visible, fail when run
            p = sub.add_parser(name, help=f"{help_text} (unavailable: {err})")
            p.set_defaults(func=_missing(name, err))
            continue
        module.register(sub, help_text)
    return parser


def _missing(name: str, err: Exception):
    def run(args: argparse.Namespace) -> int:
        print(f"pydiff {name}: unavailable because a dependency is missing: {err}",
              file=sys.stderr)
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
