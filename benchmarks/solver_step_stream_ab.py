"""A/B of lincomb's non-temporal stores on whole DPM-Solver++(2M) steps, interleaved in one process.

Each round times ``copy_``, the x0-ready step and the eps step (benchmarks/solver_step.py's
functions) with ``PYDIFF_LINCOMB_STREAM_STORES=1`` and then ``=0`` (the switch is read per
call), so both variants see the same machine state::

    python benchmarks/solver_step_stream_ab.py [--sizes 2097152 4194304 8388608] [--rounds 3]

Prints µs per step (median of ``--reps`` steps) per round and variant.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import torch

_spec = importlib.util.spec_from_file_location(
    "solver_step", os.path.join(os.path.dirname(__file__), "solver_step.py"))
solver_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(solver_step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_097_152, 4_194_304, 8_388_608])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}")
    for n in args.sizes:
        rows: dict[str, list[tuple[float, float, float]]] = {"1": [], "0": []}
        for _ in range(args.rounds):
            for switch in ("1", "0"):
                os.environ["PYDIFF_LINCOMB_STREAM_STORES"] = switch
                rows[switch].append(tuple(f * 1e6 for f in (
                    solver_step.time_copy(n, args.reps),
                    solver_step.time_pydiff(n, args.reps, None),
                    solver_step.time_pydiff(n, args.reps, "eps"))))
        for switch, name in (("1", "streaming"), ("0", "normal stores")):
            cells = "  ".join(f"copy {c:,.0f} x0 {a:,.0f} eps {b:,.0f}" for c, a, b in rows[switch])
            print(f"{n:>9} {name:>13}: {cells}")


if __name__ == "__main__":
    main()
