"""Error against the exact solution vs network evaluations, every solver, pydiff vs diffusers.

Problem: the analytic 8-mode ring mixture (``GaussianMixture.ring()``, std 0.1) under diffusers'
default DDPM table (linear betas 1e-4..0.02, 1000 steps), exact denoiser. All solvers start from
the same ``x_T`` (standard normal, 256 samples, at the table's last entry).

- Deterministic solvers: RMS distance to the exact probability-flow solution at ``t = 0``
  (reference: DPM-Solver-3 with 600 steps to ``t = 1e-6``, checked against 1200 steps).
- Stochastic solvers: energy distance between 2048 samples and 2048 data samples (the
  reference row is two independent data samples: the metric's noise floor).

pydiff runs each solver on its default grid; diffusers runs each scheduler with its default
config (``timestep_spacing``, ``steps_offset``, PNDM with PRK steps, ...), taking as many steps
as fit the budget of network evaluations (5, 10, 20, 50). Prints tables, writes
``benchmarks/results/solver_accuracy.json`` and ``solver_accuracy.png``.

``--differences`` measures pydiff's deliberate numerical differences from diffusers (float64
coefficient tables, ``expm1``) and their effect on DPM-Solver++(2M) trajectories.

Usage::

    python benchmarks/solver_accuracy.py [--nfe 5 10 20 50] [--differences]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import warnings

import torch

import pydiff
from pydiff.testing import GaussianMixture, energy_distance

F64 = torch.float64
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

PYDIFF_ODE = [
    ("ddim", {}), ("euler", {}), ("heun", {}), ("plms", {}), ("plms", {"variable_step": True}),
    ("plms", {"warmup": "prk"}), ("lms", {}), ("deis", {}), ("deis", {"order": 3}), ("dpm2", {}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}), ("dpm_solver", {"order": 2}), ("dpm_solver", {"order": 3}),
    ("unipc", {"order": 2}), ("unipc", {"order": 3}), ("heavy_ball", {"order": 2}),
    ("ghvb", {"order": 2}), ("flow_euler", {}), ("flow_midpoint", {}), ("bdia", {}),
]  # time_shift is left out: it corrects exposure bias of imperfect models (and needs many
#   elements per sample to estimate a variance); on an exact 2D model it can only add error

PYDIFF_SDE = [
    ("ddpm", {}), ("euler_ancestral", {}), ("euler_maruyama", {}), ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"noise": "brownian"}), ("pc", {}), ("heun", {"S_churn": 10.0}),
    ("consistency", {}), ("dpm2_ancestral", {}),
]
DIFFUSERS_ODE = [
    ("DDIMScheduler", {}), ("DDIMScheduler", {"clip_sample": False}), ("PNDMScheduler", {}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}), ("DPMSolverSinglestepScheduler", {}),
    ("UniPCMultistepScheduler", {}), ("UniPCMultistepScheduler", {"solver_order": 3}),
    ("DEISMultistepScheduler", {}), ("EulerDiscreteScheduler", {}),
    ("HeunDiscreteScheduler", {}), ("LMSDiscreteScheduler", {}), ("KDPM2DiscreteScheduler", {}),
]
DIFFUSERS_SDE = [
    ("DDPMScheduler", {}), ("DDPMScheduler", {"clip_sample": False}),
    ("EulerAncestralDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("KDPM2AncestralDiscreteScheduler", {}),
]


def label(name: str, opts: dict) -> str:
    return name + ("" if not opts else "(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")")


class Problem:
    """The ring mixture under diffusers' default table, shared by both libraries."""

    def __init__(self, n_ode: int = 256, n_sde: int = 2048):
        import diffusers

        self.table = diffusers.DDPMScheduler().alphas_cumprod  # float32, diffusers' own
        self.schedule = pydiff.DiscreteSchedule(self.table.double())
        self.data = GaussianMixture.ring()
        self.model = self.data.denoiser(self.schedule)
        g = torch.Generator().manual_seed(0)
        self.x_ode = torch.randn(n_ode, 2, generator=g, dtype=F64)
        self.x_sde = torch.randn(n_sde, 2, generator=g, dtype=F64)
        self.data_sample = self.data.sample(n_sde, torch.Generator().manual_seed(1))
        self.reference = self._reference(600)
        self.reference_check = float(_rms(self.reference, self._reference(1200)))

    def _reference(self, steps: int) -> torch.Tensor:
        grid = pydiff.timesteps(self.schedule, steps, "logsnr", t_end=1e-6)
        return pydiff.sample(self.model, self.x_ode, "dpm_solver", grid=grid, order=3)

    def eps_ve(self, x_ve: torch.Tensor, sigma_ve: float) -> torch.Tensor:
        """Exact eps at the variance-exploding level ``sigma_ve`` (diffusers' own sigma)."""
        edm = pydiff.EDMSchedule(sigma_max=1e4)
        d = self.data.posterior_mean(edm, x_ve.to(F64), float(sigma_ve))
        return ((x_ve.to(F64) - d) / sigma_ve).to(x_ve.dtype)


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.double() - b.double()) ** 2).sum(-1).mean().sqrt()


def pydiff_run(p: Problem, name: str, opts: dict, nfe: int, stochastic: bool):
    solver = pydiff.solvers.get_solver(name, **opts)
    x = p.x_sde if stochastic else p.x_ode
    steps = nfe
    while steps >= 1:  # the most steps whose evaluations fit the budget
        state = pydiff.sample(p.model, x, solver, steps=steps, return_state=True,
                              generator=torch.Generator().manual_seed(2))
        if state.nfe <= nfe:
            return state.x, state.nfe
        steps -= 1
    return None, 0


def diffusers_run(p: Problem, cls_name: str, opts: dict, nfe: int, stochastic: bool):
    import diffusers

    x0 = p.x_sde if stochastic else p.x_ode
    sched = None
    for steps in range(nfe, 0, -1):  # the most steps whose evaluations fit the budget
        candidate = getattr(diffusers, cls_name)(**opts)
        try:
            candidate.set_timesteps(steps)
        except ValueError:  # e.g. PNDM's PRK warm-up needs a minimum number of steps
            break
        if len(candidate.timesteps) <= nfe:
            sched = candidate
            break
    if sched is None:
        return None, 0
    x = x0.float() * sched.init_noise_sigma
    gen = torch.Generator().manual_seed(2)
    ve_coords = float(sched.init_noise_sigma) > 1.5  # Euler/Heun/LMS: samples live in x / alpha
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        if ve_coords:  # diffusers' own sigma for this stage
            eps = p.eps_ve(x, _stage_sigma(sched))
        else:
            a = float(sched.alphas_cumprod[int(t)])
            eps = p.eps_ve(inp / math.sqrt(a), math.sqrt((1 - a) / a))
        kw = {"generator": gen} if stochastic and "generator" in _step_args(sched) else {}
        x = sched.step(eps, t, x, **kw).prev_sample
    return x.double(), len(sched.timesteps)


def _stage_sigma(sched) -> float:
    """diffusers' own sigma of this stage: KDPM2's second stage sits at its interpolated sigma
    (indexed one behind in the ancestral scheduler, as its ``scale_model_input`` does)."""
    i = sched.step_index
    if getattr(sched, "state_in_first_order", True) or not hasattr(sched, "sigmas_interpol"):
        return float(sched.sigmas[i])
    return float(sched.sigmas_interpol[i - 1 if hasattr(sched, "sigmas_up") else i])


def _step_args(sched) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(sched.step).parameters)


def accuracy(p: Problem, budgets: list[int]) -> dict:
    rows = []
    for stochastic, pyd, dif in ((False, PYDIFF_ODE, DIFFUSERS_ODE),
                                 (True, PYDIFF_SDE, DIFFUSERS_SDE)):
        for lib, entries, run in (("pydiff", pyd, pydiff_run), ("diffusers", dif, diffusers_run)):
            for name, opts in entries:
                row = {"library": lib, "solver": label(name, opts), "stochastic": stochastic,
                       "error": {}, "nfe_used": {}}
                for nfe in budgets:
                    out, used = run(p, name, opts, nfe, stochastic)
                    if out is None or not torch.isfinite(out).all():
                        err = float("nan")
                    elif stochastic:
                        err = energy_distance(out, p.data_sample)
                    else:
                        err = float(_rms(out, p.reference))
                    row["error"][nfe], row["nfe_used"][nfe] = err, used
                rows.append(row)
    floor = energy_distance(p.data.sample(2048, torch.Generator().manual_seed(5)), p.data_sample)
    return {"rows": rows, "reference_check": p.reference_check, "energy_floor": floor}


def print_tables(res: dict, budgets: list[int]) -> None:
    for stochastic, title in ((False, "RMS error vs exact flow"),
                              (True, "energy distance to the data")):
        print(f"\n{title} (NFE budget: {budgets})")
        print(f"{'library':<10} {'solver':<44}" + "".join(f"{n:>11}" for n in budgets))
        for r in res["rows"]:
            if r["stochastic"] != stochastic:
                continue
            cells = "".join(f"{r['error'][n]:>11.2e}" for n in budgets)
            print(f"{r['library']:<10} {r['solver']:<44}{cells}")
    print(f"\nreference self-check (600 vs 1200 steps): {res['reference_check']:.1e}; "
          f"energy-distance floor (two data samples): {res['energy_floor']:.1e}")


def plot(res: dict, budgets: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, stochastic in zip(axes, (False, True)):
        for r in res["rows"]:
            if r["stochastic"] != stochastic:
                continue
            ys = [r["error"][n] for n in budgets]
            ax.loglog(budgets, ys, "-o" if r["library"] == "pydiff" else "--s", ms=3, lw=1,
                      label=f"{r['library']}: {r['solver']}")
        ax.set_xlabel("network evaluations")
        ax.set_ylabel("energy distance" if stochastic else "RMS error vs exact flow")
        ax.set_title("stochastic samplers" if stochastic else "ODE solvers")
        ax.legend(fontsize=5.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def differences() -> dict:
    """pydiff's deliberate differences from diffusers, measured (see docs/solvers.md)."""
    import diffusers

    out = {}
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear",
                                                  beta_start=0.00085, beta_end=0.012)
    for steps in (10, 20, 50, 200):
        sched.set_timesteps(steps)
        s32 = sched.sigmas[:-1]
        a32 = 1 / (s32**2 + 1).sqrt()
        lam32 = torch.log(a32) - torch.log(s32 * a32)  # diffusers' arithmetic: float32
        s64 = s32.double()
        a64 = 1 / (s64**2 + 1).sqrt()
        lam64 = torch.log(a64) - torch.log(s64 * a64)  # pydiff's: float64 on the same table
        h32, h64 = lam32[1:] - lam32[:-1], lam64[1:] - lam64[:-1]
        exact = torch.expm1(-h64)
        out[f"steps={steps}"] = {
            "min_h": float(h64.min()),
            "h_float32_rel_error_max": float(((h32.double() - h64) / h64).abs().max()),
            "exp-1_float32_rel_error_max": float(((torch.exp(-h32) - 1.0).double() - exact)
                                                 .div(exact).abs().max()),
            "expm1_float64_of_float32_h_rel_error_max": float(
                ((torch.expm1(-h32.double()) - exact) / exact).abs().max()),
            "dpmpp_2m_trajectory_rel_deviation": _trajectory_deviation(sched, steps),
        }
    return out


def _trajectory_deviation(sched, steps: int) -> float:
    """Max relative deviation between diffusers' and pydiff's DPM-Solver++(2M) trajectories
    (same float32 table, timesteps, start and smooth model)."""
    def eps_fn(x, k):
        return 0.5 * torch.tanh(x) + 0.2 * torch.cos(0.01 * float(k) + x)

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sched.set_timesteps(steps)
    theirs, xd = [], x
    for t in sched.timesteps:
        xd = sched.step(eps_fn(xd, t), t, xd).prev_sample
        theirs.append(xd)
    schedule = pydiff.DiscreteSchedule(sched.alphas_cumprod.double())
    model = pydiff.Denoiser(lambda v, k: eps_fn(v, k[0]), schedule, time_input="index")
    grid = pydiff.timesteps(schedule, steps, "custom",
                            values=[(float(k) + 1) / 1000 for k in sched.timesteps] + [0.0])
    solver = pydiff.solvers.get_solver("dpmpp_2m")
    state, dev = solver.init(x, schedule, grid), 0.0
    for ref in theirs:
        state = solver.step(state, model)
        dev = max(dev, float((state.x - ref).abs().max() / ref.abs().max()))
    return dev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--differences", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.makedirs(RESULTS, exist_ok=True)
    if args.differences:
        res = differences()
        for k, v in res.items():
            print(k, {kk: f"{vv:.2e}" for kk, vv in v.items()})
        with open(os.path.join(RESULTS, "solver_differences.json"), "w") as f:
            json.dump(res, f, indent=1)
        return
    p = Problem()
    res = accuracy(p, args.nfe)
    print_tables(res, args.nfe)
    with open(os.path.join(RESULTS, "solver_accuracy.json"), "w") as f:
        json.dump({"nfe": args.nfe, **res}, f, indent=1)
    plot(res, args.nfe, os.path.join(RESULTS, "solver_accuracy.png"))
    print(f"wrote {RESULTS}/solver_accuracy.json and solver_accuracy.png")


if __name__ == "__main__":
    main()
