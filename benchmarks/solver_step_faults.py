"""Minor page faults per DPM-Solver++(2M) step (x0-ready model and eps Denoiser).

Run it with and without the CPU output cache to see what the cache removes::

    python benchmarks/solver_step_faults.py --elements 4194304
    PYDIFF_CPU_CACHE_MB=0 python benchmarks/solver_step_faults.py --elements 4194304

Prints, per model, the median µs per step and the minor page faults per step (getrusage) over
``--steps`` steps in the middle of a 1000-step schedule.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

import pydiff


def run(n: int, prediction: str, steps: int) -> tuple[float, float]:
    sched = pydiff.DiscreteSchedule.scaled_linear()
    x = torch.randn(1, n)
    outs = [torch.randn(1, n) * 0.1 for _ in range(2)]
    calls = [0]

    def net(x, t):
        calls[0] += 1
        return outs[calls[0] % 2]

    class ReadyX0(pydiff.Model):
        def evaluate(self, x, t):
            calls[0] += 1
            return pydiff.Prediction((outs[calls[0] % 2],), x0=(1.0,), eps=(None,))

    model = ReadyX0(sched) if prediction == "x0" else pydiff.Denoiser(net, sched,
                                                                      prediction=prediction)
    solver = pydiff.solvers.get_solver("dpmpp_2m")
    state = solver.init(x, sched, pydiff.timesteps(sched, 1000, "logsnr"))
    for _ in range(3):
        state = solver.step(state, model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state = solver.step(state, model)
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    times.sort()
    return times[len(times) // 2] * 1e6, faults / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=4_194_304)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"PYDIFF_CPU_CACHE_MB={os.environ.get('PYDIFF_CPU_CACHE_MB', '(default)')} "
          f"elements={args.elements} load={os.getloadavg()[0]:.1f}")
    for prediction in ("x0", "eps"):
        us, faults = run(args.elements, prediction, args.steps)
        print(f"{prediction:>4}: {us:10.1f} µs per step (median), "
              f"{faults:6.2f} minor faults per step")


if __name__ == "__main__":
    main()
