"""Time per DPM-Solver++(2M) step: pydiff vs diffusers' DPMSolverMultistepScheduler.

For each size (float32 elements) the script times, in the same run:

- ``copy_``: copying the sample into a preallocated tensor (the memory-traffic floor);
- ``kernel``: the eps step's fused pass alone (one ``lincomb`` over the four tensors it reads,
  into a fresh result): what an eps step costs without the solver's and the model's Python;
- ``pydiff x0``: ``solver.step`` with a model whose x0 prediction is ready (the solver's own
  cost: one fused ``lincomb`` plus bookkeeping);
- ``pydiff eps`` / ``v`` / ``score``: the same through ``pydiff.Denoiser`` with an eps, v or
  score network (the parameterization folds into the step: one ``lincomb_multi`` pass writes
  the next state and the x0 the history keeps);
- ``pydiff eps16``: the eps network returning float16 (a half-precision model; the state stays
  float32);
- ``diffusers x0`` / ``eps`` / ``v``: ``scheduler.step`` with ``prediction_type="sample"`` /
  ``"epsilon"`` / ``"v_prediction"``.

The network itself costs nothing: it returns one of two precomputed tensors in turn (so the
history of a multistep step is distinct memory, as with a real network; a model returning the
very same tensor every step made the x0 step read one tensor twice). Times are medians over
steps in the middle of a 1000-step schedule. Derived columns: ``eps/x0`` (the parameterization's
cost relative to the x0-ready step), ``copies`` (pydiff eps step / copy_) and ``vs diff.``
(diffusers' eps step / pydiff's eps step). Prints a table and writes
``benchmarks/results/solver_step.json``.

Usage::

    python benchmarks/solver_step.py [--sizes 16384 65536 ...] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import torch

import pydiff
import pydiff.ops

SIZES = [16_384, 65_536, 524_288, 4_194_304, 16_777_216]
STEPS = 1000


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _reps(n: int) -> int:
    return max(20, min(200, int(2e8 / max(n, 1) / 20)))


class _ReadyX0(pydiff.Model):
    """A model whose x0 prediction is already computed (measures the solver alone)."""

    def __init__(self, schedule, outputs: list[torch.Tensor]):
        super().__init__(schedule)
        self.outputs, self.calls = outputs, 0

    def evaluate(self, x, t):
        self.calls += 1
        return pydiff.Prediction((self.outputs[self.calls % 2],), x0=(1.0,), eps=(None,))


def _alternating(outputs: list[torch.Tensor]):
    """A network returning two precomputed outputs in turn: like a real network, each step's
    output is a tensor of its own, so a multistep history reads distinct memory."""
    calls = [0]

    def net(x, t):
        calls[0] += 1
        return outputs[calls[0] % 2]

    return net


def time_pydiff(n: int, reps: int, prediction: str | None, out_dtype=torch.float32) -> float:
    """One step; ``prediction=None`` is the x0-ready model, else a Denoiser network."""
    sched = pydiff.DiscreteSchedule.scaled_linear()
    x = torch.randn(1, n)
    outputs = [(torch.randn(1, n) * 0.1).to(out_dtype) for _ in range(2)]
    model = (_ReadyX0(sched, outputs) if prediction is None
             else pydiff.Denoiser(_alternating(outputs), sched, prediction=prediction))
    solver = pydiff.solvers.get_solver("dpmpp_2m")
    state = solver.init(x, sched, pydiff.timesteps(sched, STEPS, "logsnr"))
    for _ in range(3):
        state = solver.step(state, model)
    holder = {"s": state}

    def step():
        holder["s"] = solver.step(holder["s"], model)

    return _median_time(step, min(reps, STEPS - 10))


def time_diffusers(n: int, reps: int, prediction: str) -> float:
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012, solver_order=2,
                                        prediction_type=prediction)
    sched.set_timesteps(STEPS)
    x = torch.randn(1, n)
    out = torch.randn(1, n) * 0.1
    ts = list(sched.timesteps)
    holder = {"x": x, "k": 0}
    for _ in range(3):
        holder["x"] = sched.step(out, ts[holder["k"]], holder["x"]).prev_sample
        holder["k"] += 1

    def step():
        holder["x"] = sched.step(out, ts[holder["k"]], holder["x"]).prev_sample
        holder["k"] += 1

    return _median_time(step, min(reps, STEPS - 10))


def time_kernel(n: int, reps: int) -> float:
    """The eps step's fused pass alone: one ``lincomb`` over the four tensors it reads (state,
    network output, previous state, previous output) into a fresh result, called directly
    with float coefficients: the memory floor of the step, without the solver and model."""
    terms = [torch.randn(1, n) for _ in range(4)]
    holder = {}

    def run():
        holder["out"] = pydiff.ops.lincomb(terms, [0.9, -0.1, 0.05, 0.02])

    return _median_time(run, reps)


def time_copy(n: int, reps: int) -> float:
    src, dst = torch.randn(n), torch.empty(n)
    return _median_time(lambda: dst.copy_(src), reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "solver_step.json"))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    cols = [("copy_", "copy_us"), ("kernel", "eps_kernel_us"), ("x0", "pydiff_x0_us"),
            ("eps", "pydiff_eps_us"),
            ("v", "pydiff_v_us"), ("score", "pydiff_score_us"), ("eps16", "pydiff_eps16_us"),
            ("diff.x0", "diffusers_x0_us"), ("diff.eps", "diffusers_eps_us"),
            ("diff.v", "diffusers_v_us")]
    print(f"backend={pydiff.ops.backend()} threads={args.threads} torch={torch.__version__}")
    print(f"{'elements':>10} " + " ".join(f"{c:>9}" for c, _ in cols)
          + f" {'eps/x0':>7} {'v/x0':>6} {'eps16/x0':>8} {'copies':>6} {'vs diff.':>8}")
    for n in args.sizes:
        reps = _reps(n)
        r = {"elements": n,
             "copy_us": time_copy(n, reps) * 1e6,
             "eps_kernel_us": time_kernel(n, reps) * 1e6,
             "pydiff_x0_us": time_pydiff(n, reps, None) * 1e6,
             "pydiff_eps_us": time_pydiff(n, reps, "eps") * 1e6,
             "pydiff_v_us": time_pydiff(n, reps, "v") * 1e6,
             "pydiff_score_us": time_pydiff(n, reps, "score") * 1e6,
             "pydiff_eps16_us": time_pydiff(n, reps, "eps", torch.float16) * 1e6,
             "diffusers_x0_us": time_diffusers(n, reps, "sample") * 1e6,
             "diffusers_eps_us": time_diffusers(n, reps, "epsilon") * 1e6,
             "diffusers_v_us": time_diffusers(n, reps, "v_prediction") * 1e6}
        r["eps_over_x0"] = r["pydiff_eps_us"] / r["pydiff_x0_us"]
        r["v_over_x0"] = r["pydiff_v_us"] / r["pydiff_x0_us"]
        r["eps16_over_x0"] = r["pydiff_eps16_us"] / r["pydiff_x0_us"]
        r["pydiff_eps_in_copies"] = r["pydiff_eps_us"] / r["copy_us"]
        r["pydiff_x0_in_copies"] = r["pydiff_x0_us"] / r["copy_us"]
        r["speedup_eps"] = r["diffusers_eps_us"] / r["pydiff_eps_us"]
        rows.append(r)
        print(f"{n:>10} " + " ".join(f"{r[k]:>9.1f}" for _, k in cols)
              + f" {r['eps_over_x0']:>6.2f}x {r['v_over_x0']:>5.2f}x {r['eps16_over_x0']:>7.2f}x"
              f" {r['pydiff_eps_in_copies']:>6.1f} {r['speedup_eps']:>7.1f}x")
    path = args.json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    load = [load_before, os.getloadavg()[0]]
    print(f"load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}")
    with open(path, "w") as f:
        json.dump({"backend": pydiff.ops.backend(), "threads": args.threads,
                   "torch": torch.__version__, "machine": platform.machine(),
                   "load_average_before_after": load,
                   "unit": "microseconds per step (median)", "rows": rows}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
