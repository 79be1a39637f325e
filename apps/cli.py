"""``pydiff`` console command: ``pydiff --help`` lists the subcommands.

Each subcommand lives in its own module under ``pydiff.apps`` that defines
``register(subparsers, help_text)``; it adds its parser and sets ``func`` (called with the parsed
args, returns an exit code). Add a module's name to ``COMMANDS`` to expose it. Modules import
lazily, so a domain's heavy dependencies load only when its command runs.

Errors (DEVELOPERS.md, "Command-line errors"):

- a user error (a bad option, a missing or unreadable file, an unwritable output folder) prints
  one line ``pydiff <command>: <what was wrong, naming the option or file, and what is
  expected>`` on stderr and exits with status 2. Commands raise :class:`pydiff.InputError` for
  these (argparse's own errors take the same form); the option types below reject bad numbers
  while parsing, before any work starts;
- Ctrl-C prints ``pydiff <command>: interrupted`` and exits with status 130; outputs are written
  through :mod:`pydiff.files`, so nothing half-written is left behind;
- anything else is a bug: its traceback is printed and the status is 1;
- ``--debug`` (anywhere on the command line) or ``PYDIFF_DEBUG=1`` prints the traceback of user
  errors and interruptions too.

Example:
    $ pydiff demo --steps 300
    $ pydiff policy run --env pendulum --hz -5
    pydiff policy run: argument --hz: expected a finite number > 0, got '-5'
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import traceback
from collections.abc import Callable

# (module under pydiff.apps, one-line help) in the order --help shows them
COMMANDS: list[tuple[str, str]] = [
    ("demo", "train a tiny model on a 2D toy distribution and compare solvers"),
    ("info", "show the version, the kernel backend and the available solvers"),
    ("medical", "medical image reconstruction (recon batch jobs, train the prior)"),
    ("molecules", "3D molecule generation and property steering (sample, evaluate, train)"),
    ("parallel", "one image sampled with patch parallelism over N processes"),
    ("policy", "diffusion policies for robot control loops (train, run, eval)"),
    ("speech", "diffusion speech enhancement (enhance, train, evaluate)"),
    ("timeseries", "probabilistic time-series forecasting with TSDiff (forecast, evaluate, train)"),
]

USER_ERROR, INTERNAL_ERROR, INTERRUPTED = 2, 1, 130


class Parser(argparse.ArgumentParser):
    """argparse with pydiff's error line, ``--debug`` on every (sub)command, and the full
    command name (``pydiff policy run``) recorded in the parsed namespace as ``_prog``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # SUPPRESS: a subcommand without --debug must not reset the top level's --debug
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show tracebacks for user errors too (or PYDIFF_DEBUG=1)")

    def parse_known_args(self, args=None, namespace=None):
        namespace = argparse.Namespace() if namespace is None else namespace
        # subcommands parse into their own namespace, copied over this one afterwards, so the
        # innermost command's name wins
        namespace._prog = self.prog
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # blame the subcommand that was given them, not the top level
            _usage_error(namespace._prog, f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def error(self, message: str):
        _usage_error(self.prog, message)


def _usage_error(prog: str, message: str):
    print(f"{prog}: {message} (see {prog} --help)", file=sys.stderr)
    sys.exit(USER_ERROR)


# -- option types: reject bad numbers while parsing, naming what is expected ---------------------
def _number(convert: Callable[[str], float], expected: str,
            ok: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An option type: an integer ``>= low``."""
    return _number(int, f"an integer >= {low}", lambda v: v >= low)


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
finite_float = _number(float, "a finite number", math.isfinite)
positive_float = _number(float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
nonnegative_float = _number(float, "a finite number >= 0",
                            lambda v: math.isfinite(v) and v >= 0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pydiff", description="pydiff: diffusion models for domain science.")
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
        return USER_ERROR

    return run


def _debug(args: argparse.Namespace | None) -> bool:
    env = os.environ.get("PYDIFF_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def _close_progress_bars() -> None:
    """Close the progress bars an error left open, so that they are not redrawn after (under)
    the error line when the interpreter exits."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 -- a broken bar must not hide the error itself
            pass


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see the module docstring)."""
    prog, args = "pydiff", None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        prog = getattr(args, "_prog", prog)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return USER_ERROR
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _close_progress_bars()
        if _debug(args):
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        from pydiff.errors import InputError

        _close_progress_bars()
        if not isinstance(err, InputError):
            traceback.print_exc()
            print(f"{prog}: internal error ({type(err).__name__}): this is a bug in pydiff; "
                  "please report it with the traceback above", file=sys.stderr)
            return INTERNAL_ERROR
        if _debug(args):
            traceback.print_exc()
        print(f"{prog}: {' '.join(str(err).split())}", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
