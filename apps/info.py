"""``pydiff info``: version, kernel backend, solvers."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("info", help=help_text, description=help_text)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import pydiff

    print(f"pydiff {pydiff.__version__} (torch {torch.__version__})")
    print(f"kernel backend: {pydiff.ops.backend()}")
    print(f"solvers: {', '.join(pydiff.available_solvers())}")
    return 0
