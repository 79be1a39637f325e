"""Solver protocol and first solvers through the analytic harness (float64).

Orders as implemented: DDIM/Euler 1; Heun 2; DPM-Solver++(2M) 2 with a first-order start-up step
(the grids here are uniform in log-SNR with 16+ steps and no final step to 0, so no lower-order
final step; on flow matching's uniform-time default Heun's first steps in EDM coordinates are
pre-asymptotic at these step counts).
"""

import math
import threading

import pytest
import torch

import pydiff
from pydiff.testing import GaussianMixture
from pydiff.testing.convergence import measured_order

F64 = torch.float64
GAUSS = GaussianMixture.gaussian([1.0, -0.5], [0.5, 2.0])  # variance != 1
ODE_SOLVERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp_2m": 2}


@pytest.mark.parametrize("solver,order", sorted(ODE_SOLVERS.items()))
@pytest.mark.parametrize("sched,prediction,t0", [
    (pydiff.VPSchedule(), "eps", 1.0),
    (pydiff.EDMSchedule(), "x0", 80.0),
    (pydiff.FlowSchedule(), "velocity", 0.999),
    (pydiff.DiscreteSchedule.linear(), "v", 1.0),
], ids=["vp-eps", "edm-x0", "flow-velocity", "ddpm-v"])
def test_ode_solver_global_order(solver, order, sched, prediction, t0):
    p = measured_order(solver, sched, (16, 32, 64), data=GAUSS, prediction=prediction,
                       spacing="logsnr", t_start=t0, t_end=sched.t_eps, n=32)
    assert abs(p - order) < 0.3


def test_mean_reverting_ode_lands_on_exact_flow():
    sched = pydiff.MeanRevertingSchedule()
    y = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    model = GAUSS.denoiser(sched, "score").bind(y=y)
    u = GAUSS.marginal_sample(sched, 1.0, 32, torch.Generator().manual_seed(0))
    x = pydiff.sample(model, u + y, "dpmpp_2m", 40, final_zero=False)
    exact = GAUSS.flow(sched, u, 1.0, sched.t_eps) + y
    assert float((x - exact).abs().max()) < 2e-3


@pytest.mark.parametrize("solver,options,steps", [
    ("ddpm", {}, 100), ("ddim", {"eta": 1.0}, 100), ("ddim", {"eta": 0.5}, 100),
    ("euler_maruyama", {}, 200)])
def test_stochastic_solvers_reproduce_target_moments(solver, options, steps):
    sched = pydiff.VPSchedule()
    model = GAUSS.denoiser(sched, "eps")
    n = 4000
    x_T = pydiff.prior(sched, (n, 2), generator=torch.Generator().manual_seed(1)).to(F64)
    x = pydiff.sample(model, x_T, solver, steps, generator=torch.Generator().manual_seed(2),
                      **options)
    mean, var = x.mean(0), x.var(0)
    true_var = GAUSS.stds[0] ** 2
    # sampling error: 4 standard errors of the mean and of the variance (plus the solver's bias)
    assert torch.all((mean - GAUSS.means[0]).abs() < 4 * torch.sqrt(true_var / n) + 0.02)
    assert torch.all((var / true_var - 1).abs() < 4 * math.sqrt(2 / n) + 0.05)


def test_warm_start_from_exact_marginal_lands_on_data_distribution():
    sched = pydiff.VPSchedule()
    model = GAUSS.denoiser(sched, "eps")
    x_t = GAUSS.marginal_sample(sched, 0.4, 4000, torch.Generator().manual_seed(3))
    x = pydiff.sample(model, x_t, "dpmpp_2m", 20, t_start=0.4)
    assert torch.allclose(x.mean(0), GAUSS.means[0], atol=0.08)
    assert torch.allclose(x.std(0), GAUSS.stds[0], rtol=0.05)


def test_per_sample_and_per_position_grids_match_separate_runs():
    sched = pydiff.VPSchedule()
    model = GAUSS.denoiser(sched, "eps")  # element-wise exact: positions are independent
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    starts = torch.tensor([[0.3, 0.9], [0.5, 0.6], [1.0, 0.2]], dtype=F64)
    for t_start, grid_shape in ((starts[:, 0], (9, 3)), (starts, (9, 3, 2))):
        grid = pydiff.timesteps(sched, 8, "logsnr", t_start=t_start)
        assert grid.shape == grid_shape
        joint = pydiff.sample(model, x, "dpmpp_2m", grid=grid)
        for b in range(3):
            cols = range(2) if t_start.dim() == 2 else [slice(None)]
            for d in cols:
                ts = float(t_start[b, d]) if t_start.dim() == 2 else float(t_start[b])
                alone = pydiff.sample(model, x[b:b + 1], "dpmpp_2m", 8, t_start=ts)
                assert torch.allclose(joint[b, d], alone[0, d], atol=1e-10)


def test_threads_share_one_solver_bit_identically():
    sched = pydiff.VPSchedule()
    model = GAUSS.denoiser(sched, "eps")
    solver = pydiff.get_solver("ddim", eta=0.7)
    jobs = [(5, 0.9, 11), (9, 1.0, 12), (13, 0.5, 13), (7, 0.7, 14)]

    def run(steps, t_start, seed):
        g = torch.Generator().manual_seed(seed)
        x = pydiff.prior(sched, (64, 2), generator=g, t=t_start).to(F64)
        return pydiff.sample(model, x, solver, steps, t_start=t_start, generator=g)

    sequential = [run(*job) for job in jobs]
    results = [None] * len(jobs)

    def worker(k):
        for _ in range(3):
            results[k] = run(*jobs[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for a, b in zip(sequential, results):
        assert torch.equal(a, b)


def test_generator_list_makes_samples_independent_of_the_batch():
    sched = pydiff.VPSchedule()
    model = GAUSS.denoiser(sched, "eps")

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x = pydiff.prior(sched, (len(seeds), 2), generator=gens).to(F64)
        return pydiff.sample(model, x, "ddpm", 10, generator=gens)

    assert torch.equal(run([7, 8, 9])[1], run([8])[0])
    with pytest.raises(ValueError, match="one generator per sample"):
        pydiff.sample(model, torch.zeros(3, 2), "ddpm", 4,
                      generator=[torch.Generator(), torch.Generator()])


def test_solver_table_is_device_tensors_and_step_does_no_host_math():
    sched = pydiff.VPSchedule()
    solver = pydiff.get_solver("dpmpp_2m")
    state = solver.init(torch.randn(4, 2), sched, pydiff.timesteps(sched, 6))
    assert state.table, "the coefficient table is computed at init"
    assert all(v.shape[0] == 6 and v.dtype == F64 and v.device == state.x.device
               for v in state.table.values())
    assert state.x.dtype == torch.float32
    with pytest.raises(AttributeError, match="immutable"):
        solver.lower_order_final = False


def test_hooks_run_after_every_step():
    sched = pydiff.VPSchedule()
    model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched, prediction="x0")
    seen = []

    def hook(x, ctx):
        seen.append((ctx.step, ctx.final))
        return x

    x = pydiff.sample(model, torch.randn(2, 5, 3), "heun", 4,
                      hooks=[pydiff.hooks.ZeroCenterOfMass(), hook])
    assert seen == [(0, False), (1, False), (2, False), (3, True)]
    assert float(x.mean(1).abs().max()) < 1e-6


def test_inpaint_replace_pastes_known_values():
    sched = pydiff.VPSchedule()
    model = GAUSS.denoiser(sched, "eps")
    known = torch.tensor([[3.0, 0.0]], dtype=F64).expand(8, 2)
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    x = pydiff.sample(model, pydiff.prior(sched, (8, 2)).to(F64), "ddim", 10,
                      hooks=[pydiff.hooks.InpaintReplace(known, mask)],
                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0], known[:, 0])


def test_bad_inputs_name_the_problem():
    sched = pydiff.VPSchedule()
    model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched)
    with pytest.raises(ValueError, match="unknown solver='dpm9'.*ddim"):
        pydiff.sample(model, torch.zeros(2, 2), "dpm9")
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        pydiff.sample(model, torch.zeros(2, 2), "ddim", 0)
    with pytest.raises(ValueError, match="outside"):
        pydiff.sample(model, torch.zeros(2, 2), "ddim", grid=torch.tensor([3.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="does not broadcast"):
        pydiff.sample(model, torch.zeros(2, 2), "ddim", 3, t_start=torch.ones(5) * 0.5)

    def explode(x, t):
        return torch.where(t.reshape(-1, 1) < 0.5, torch.full_like(x, float("nan")), x * 0)

    with pytest.raises(FloatingPointError, match="step 4 of 8"):
        pydiff.sample(pydiff.Denoiser(explode, sched), torch.ones(2, 2), "ddim", 8,
                      spacing="time")


def test_heun_starts_at_alpha_zero_on_flow_matching():
    sched = pydiff.FlowSchedule()
    model = GAUSS.denoiser(sched, "velocity")
    x1 = pydiff.prior(sched, (2000, 2), generator=torch.Generator().manual_seed(6)).to(F64)
    state = pydiff.sample(model, x1, "heun", 20, spacing="time", return_state=True)
    assert state.nfe == 2 * 20 - 2  # first (alpha = 0) and last (sigma = 0) steps are Euler
    assert torch.allclose(state.x.mean(0), GAUSS.means[0], atol=0.1)
    assert torch.allclose(state.x.std(0), GAUSS.stds[0], rtol=0.06)


def test_schedule_default_spacing_overrides_the_solvers():
    sched = pydiff.EDMSchedule()
    model = GAUSS.denoiser(sched, "x0")
    x = pydiff.prior(sched, (8, 2), generator=torch.Generator().manual_seed(0)).to(F64)
    state = pydiff.sample(model, x, "ddim", 10, return_state=True)
    assert torch.allclose(state.grid, pydiff.timesteps(sched, 10, "karras"))
    explicit = pydiff.sample(model, x, "ddim", 10, spacing="time", return_state=True)
    assert torch.allclose(explicit.grid, pydiff.timesteps(sched, 10, "time"))
    flow = pydiff.FlowSchedule()
    state = pydiff.sample(GAUSS.denoiser(flow, "velocity"), x, "dpmpp_2m", 10, return_state=True)
    assert torch.allclose(state.grid, pydiff.timesteps(flow, 10, "time"))
    assert bool(torch.isfinite(state.x).all())  # DPM-Solver++ from alpha = 0


def test_sample_reuses_its_default_grid_and_rebuilds_one_changed_in_place():
    sched = pydiff.DiscreteSchedule.cosine(num_train_timesteps=100)
    model = pydiff.Denoiser(lambda x, t: 0.1 * x, sched, prediction="eps")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    first = pydiff.sample(model, x, "ddim", 4, return_state=True)
    again = pydiff.sample(model, x, "ddim", 4, return_state=True)
    assert again.grid is first.grid and torch.equal(again.x, first.x)
    other = pydiff.sample(model, x, "ddim", 4, t_start=0.5, return_state=True)
    assert other.grid is not first.grid and float(other.grid[0]) == 0.5
    expected = first.grid.clone()
    first.grid[1] = 0.9  # a caller changed the handed-out grid: the next run gets a new one
    fresh = pydiff.sample(model, x, "ddim", 4, return_state=True)
    assert fresh.grid is not first.grid and torch.equal(fresh.grid, expected)
    assert torch.equal(fresh.x, again.x)
    # a grid made under inference mode is not kept: a later run can still backpropagate
    sched2 = pydiff.DiscreteSchedule.cosine(num_train_timesteps=100)
    model2 = pydiff.Denoiser(lambda x, t: 0.1 * x, sched2, prediction="eps")
    with torch.inference_mode():
        pydiff.sample(model2, x, "ddim", 4)
    x_grad = x.clone().requires_grad_(True)
    pydiff.sample(model2, x_grad, "ddim", 4).sum().backward()
    assert x_grad.grad is not None
