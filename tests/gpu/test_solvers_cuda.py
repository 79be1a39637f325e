"""Every solver on a CUDA device: finite, equal to the float64 CPU run (deterministic ones), and
bit-identical when threads share one solver and one Denoiser (see tests/test_threads.py)."""

from __future__ import annotations

import pytest
import torch

import pydiff
from pydiff.testing.threads import assert_threads_match_sequential

VP = pydiff.VPSchedule()
OPTIONS = {"pc": {"corrector": "langevin"}, "time_shift": {"window": 0.1}}
JOBS = [(5, 1.0, 1), (7, 0.9, 2), (4, 0.7, 3), (6, 0.8, 4)]


def net(x, t):
    return 0.5 * torch.tanh(x) + 0.1 * torch.cos(3 * t.to(x.dtype).reshape(-1, 1) + x)


MODEL = pydiff.Denoiser(net, VP)


def run(solver, device, steps, t_start, seed, dtype=torch.float32):
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    extra = {"t_end": 0.05, "final_zero": False} if solver.inverse else {}
    return pydiff.sample(MODEL, x, solver, steps, t_start=t_start, generator=g, **extra)


@pytest.mark.parametrize("name", pydiff.solvers.available_solvers())
def test_solver_on_cuda_matches_cpu_and_is_thread_safe(name):
    solver = pydiff.get_solver(name, **OPTIONS.get(name, {}))
    if solver.brownian:
        pytest.skip("Brownian noise is drawn by torchsde on the host")
    out = run(solver, "cuda", 6, 1.0, 0)
    assert torch.isfinite(out).all()
    if not solver.stochastic:
        ref = run(solver, "cpu", 6, 1.0, 0, torch.float64)
        assert float((out.cpu().double() - ref).abs().max() / ref.abs().max()) < 1e-4
    assert_threads_match_sequential(lambda *job: run(solver, "cuda", *job), JOBS, repeats=3)
