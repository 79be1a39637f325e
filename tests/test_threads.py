"""Thread safety: threads sharing one solver object and one model give bit-identical results.

Every registered solver and every guidance wrapper is run by N threads at once, all sharing one
solver instance and one :class:`pydiff.Denoiser` (whose per-grid level cache is shared mutable
state), each thread with its own grid, step count and generator; the results must equal the
sequential runs bit for bit. The interpreter's switch interval is shortened so that threads
interleave inside steps (the default 5 ms is longer than a whole run on these small tensors).
"""

import pytest
import torch

import pydiff
from pydiff.guidance import (
    ClassifierFreeGuidance,
    ClipX0,
    DataConsistency,
    DynamicThresholding,
    GradientGuidance,
    MeasurementGuidance,
    ProjectX0,
    Resampling,
    RewardGuidance,
    SelfGuidance,
)
from pydiff.hooks import InpaintReplace
from pydiff.testing.threads import assert_threads_match_sequential

VP = pydiff.VPSchedule()
SHAPE = (6, 3)
# (steps, t_start, seed) per thread: different grids keep several cache entries alive at once
JOBS = [(4, 1.0, 11), (6, 0.9, 12), (5, 0.7, 13), (7, 0.8, 14), (3, 0.95, 15), (4, 0.6, 16)]
REPEATS = 2


def net(x, t, label):
    # smooth, nonlinear and differentiable (gradient guidance differentiates through it)
    k = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return 0.5 * torch.tanh(x) + 0.1 * torch.cos(3 * k + x) + 0.2 * label.reshape(-1, 1)


def labels(batch: int) -> torch.Tensor:
    return torch.linspace(-1, 1, batch)


def base_model() -> pydiff.Denoiser:
    return pydiff.Denoiser(net, VP, prediction="eps")


def start(seed: int, t_start: float) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return pydiff.prior(VP, SHAPE, generator=g, t=t_start), g


SOLVER_OPTIONS = {"pc": {"corrector": "langevin"}, "dpmpp_2m_sde": {"noise": "brownian"},
                  "heun": {"S_churn": 5.0}, "euler": {"S_churn": 5.0},
                  "time_shift": {"window": 0.1}}


@pytest.mark.parametrize("name", pydiff.solvers.available_solvers())
def test_every_solver_is_thread_safe(name):
    solver = pydiff.get_solver(name, **SOLVER_OPTIONS.get(name, {}))
    model = base_model().bind(label=labels(SHAPE[0]))
    backwards = solver.inverse

    def run(steps, t_start, seed):
        x, g = start(seed, t_start)
        if backwards:  # inversion: from data at t_end up to t_start
            return pydiff.sample(model, 0.5 * x, solver, steps, t_start=t_start, t_end=0.05,
                                 final_zero=False, generator=g)
        return pydiff.sample(model, x, solver, steps, t_start=t_start, generator=g)

    assert_threads_match_sequential(run, JOBS, REPEATS)


def _reward(x0):
    return -(x0 - 0.3).pow(2).sum(1)


def _operator(x):
    return x[:, :2]


MEASURED = torch.full((SHAPE[0], 2), 0.4)
MASK = torch.tensor([1.0, 0.0, 1.0])
KNOWN = torch.full(SHAPE, -0.2)

WRAPPERS = {
    "cfg": lambda m: ClassifierFreeGuidance(m, scale=3.0, uncond={"label": torch.zeros(1)},
                                            rescale=0.5),
    "dynamic_thresholding": lambda m: DynamicThresholding(m, percentile=0.9, bound=0.5),
    "clip_x0": lambda m: ClipX0(m, bound=0.5),
    "project_x0": lambda m: ProjectX0(m, lambda x0, t: 0.9 * x0),
    "gradient": lambda m: GradientGuidance(m, lambda x0, x, t: _reward(x0), scale=0.3),
    "measurement_dps": lambda m: MeasurementGuidance(m, _operator, MEASURED, scale=0.5),
    "reward_xt": lambda m: RewardGuidance(m, lambda x, t: _reward(x), scale=0.2, on="xt"),
    "self_guidance": lambda m: SelfGuidance(m, KNOWN, MASK, loss="quantile", scale=0.5),
    "nested": lambda m: RewardGuidance(
        ClassifierFreeGuidance(DynamicThresholding(m), scale=2.0,
                               uncond={"label": torch.zeros(1)}), _reward, scale=0.1),
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m_sde"])
def test_every_guidance_wrapper_is_thread_safe(wrapper, solver):
    model = WRAPPERS[wrapper](base_model()).bind(label=labels(SHAPE[0]))
    shared = pydiff.get_solver(solver, **({"eta": 0.8} if solver == "ddim" else {}))

    def run(steps, t_start, seed):
        x, g = start(seed, t_start)
        return pydiff.sample(model, x, shared, steps, t_start=t_start, generator=g)

    assert_threads_match_sequential(run, JOBS, REPEATS)


@pytest.mark.parametrize("kind", ["resampling", "data_consistency", "inpaint"])
def test_guidance_solvers_and_hooks_are_thread_safe(kind):
    model = base_model().bind(label=labels(SHAPE[0]))
    solver = Resampling("ddpm", jumps=3, jump_length=2) if kind == "resampling" else (
        pydiff.get_solver("ddim", eta=1.0))
    hooks = {"resampling": [InpaintReplace(KNOWN, MASK)],
             "data_consistency": [DataConsistency(_operator, MEASURED)],
             "inpaint": [InpaintReplace(KNOWN, MASK)]}[kind]

    def run(steps, t_start, seed):
        x, g = start(seed, t_start)
        return pydiff.sample(model, x, solver, steps, t_start=t_start, generator=g, hooks=hooks)

    assert_threads_match_sequential(run, JOBS, REPEATS)
