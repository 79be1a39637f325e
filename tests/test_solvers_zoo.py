"""The solver zoo on the analytic harness: global order, moments, exact inversion, noise paths."""

import math

import pytest
import torch

import pydiff
from pydiff.solvers import get_solver
from pydiff.testing import GaussianMixture
from pydiff.testing.convergence import flow_error, measured_order

F64 = torch.float64
VP = pydiff.VPSchedule()
EDM5 = pydiff.EDMSchedule(sigma_max=5.0)

# (solver, options, schedule, extra flow_error kwargs, steps, expected global order).
# "As implemented": start-up steps of lower order and lower_order_final are included, so a
# third-order multistep started with a first-order step converges at order 2, and fixed
# Adams-Bashforth weights (PLMS, GHVB) reach their order only on grids uniform in sigma/alpha.
ORDER_CASES = [
    ("ddim", {}, VP, {}, (20, 40, 80), 1),
    ("euler", {}, VP, {}, (20, 40, 80), 1),
    ("heun", {}, VP, {}, (20, 40, 80), 2),
    ("dpmpp_2m", {}, VP, {}, (20, 40, 80), 2),
    ("dpmpp_2m", {"solver_type": "heun"}, VP, {}, (20, 40, 80), 2),
    ("dpmpp_3m", {}, VP, {}, (40, 80, 160), 2),
    ("dpm_multistep", {"order": 3, "algorithm": "dpmsolver"}, VP, {}, (40, 80, 160), 2),
    ("dpm_multistep", {"order": 1, "algorithm": "dpmsolver"}, VP, {}, (20, 40, 80), 1),
    ("dpm_solver", {"order": 1}, VP, {}, (20, 40, 80), 1),
    ("dpm_solver", {"order": 2}, VP, {}, (20, 40, 80), 2),
    ("dpm_solver", {"order": 3}, VP, {}, (20, 40, 80), 3),
    ("dpm_solver", {"order": 2, "algorithm": "dpmsolver"}, VP, {}, (20, 40, 80), 2),
    ("dpm_solver", {"order": 3, "algorithm": "dpmsolver"}, VP, {}, (20, 40, 80), 3),
    ("unipc", {}, VP, {}, (20, 40, 80), 2),  # last step first order (lower_order_final)
    ("unipc", {"lower_order_final": False}, VP, {}, (20, 40, 80), 3),
    ("unipc", {"order": 3, "lower_order_final": False}, VP, {}, (20, 40, 80), 4),
    ("unipc", {"variant": "bh1", "lower_order_final": False}, VP, {}, (20, 40, 80), 3),
    ("unipc", {"predict_x0": False, "lower_order_final": False}, VP, {}, (20, 40, 80), 3),
    ("unipc", {"corrector": False, "lower_order_final": False}, VP, {}, (20, 40, 80), 2),
    ("plms", {}, VP, {}, (20, 40, 80), 2),
    ("plms", {}, EDM5, {}, (20, 40, 80), 4),
    ("plms", {"variable_step": True}, VP, {}, (40, 80, 160), 4),
    ("plms", {"warmup": "prk"}, EDM5, {}, (20, 40, 80), 4),
    ("plms", {"warmup": "prk", "variable_step": True}, VP, {}, (80, 160, 320), 4),
    # LMS and DEIS start with an Euler step: order 2 at most, whatever their order
    ("lms", {"order": 2}, VP, {}, (40, 80, 160), 2),
    ("lms", {}, EDM5, {}, (80, 160, 320), 2),
    ("deis", {"order": 1}, VP, {}, (20, 40, 80), 1),
    ("deis", {}, VP, {}, (20, 40, 80), 2),
    ("deis", {"order": 3}, EDM5, {}, (40, 80, 160), 2),
    ("dpm2", {}, VP, {}, (20, 40, 80), 2),
    ("dpm2", {}, EDM5, {}, (20, 40, 80), 2),
    ("heavy_ball", {"order": 2, "beta": 0.8}, VP, {}, (20, 40, 80), 1),
    ("ghvb", {"order": 2, "beta": 0.5}, EDM5, {}, (80, 160, 320), 2),
    ("ghvb", {"order": 1, "beta": 0.5}, EDM5, {}, (20, 40, 80), 1),
    ("flow_euler", {}, VP, {}, (20, 40, 80), 1),
    ("flow_midpoint", {}, VP, {}, (20, 40, 80), 2),
    ("flow_euler", {}, pydiff.FlowSchedule(), {"prediction": "velocity"}, (20, 40, 80), 1),
    ("bdia", {"gamma": 1.0}, VP, {}, (20, 40, 80), 2),
    ("mr_sampler", {"order": 1}, pydiff.MeanRevertingSchedule(), {}, (20, 40, 80), 1),
    ("mr_sampler", {"order": 2}, pydiff.MeanRevertingSchedule(), {}, (20, 40, 80), 2),
    ("mr_sampler", {"order": 2, "prediction": "noise"}, pydiff.MeanRevertingSchedule(), {},
     (20, 40, 80), 2),
    ("mr_sampler", {"order": 2}, pydiff.MeanRevertingSchedule(), {"prediction": "velocity"},
     (20, 40, 80), 2),
]


@pytest.mark.parametrize("name,opts,sched,kw,steps,order", ORDER_CASES,
                         ids=[f"{c[0]}-{c[1]}-{type(c[2]).__name__}-{c[3]}" for c in ORDER_CASES])
def test_global_order(name, opts, sched, kw, steps, order):
    p = measured_order(get_solver(name, **opts), sched, steps, **kw)
    assert abs(p - order) < 0.3, f"{name}{opts}: measured order {p:.2f}, expected {order}"


def test_variable_step_weights_reduce_to_adams_bashforth_on_equal_steps():
    from pydiff.solvers.linear_multistep import ADAMS_BASHFORTH, variable_step_weights

    st = torch.linspace(5.0, 1.0, 9, dtype=F64)
    w = variable_step_weights(st, 4)
    for i in range(8):
        k = min(i + 1, 4)
        got = [float(w[j][i]) for j in range(k)]
        assert got == pytest.approx(list(ADAMS_BASHFORTH[k]), abs=1e-12)


def test_higher_order_multistep_weights_pay_off_after_the_start():
    # the Euler start caps the global order at 2, but the interior steps of a higher order
    # must still be far more accurate (the weights integrate the interpolant exactly)
    for name, low, high in (("lms", 2, 4), ("deis", 2, 3)):
        e_low, _ = flow_error(name, VP, 40, order=low)
        e_high, _ = flow_error(name, VP, 40, order=high)
        assert e_high < e_low / 5, (name, e_low, e_high)


def test_errors_shrink_with_order_at_equal_nfe():
    # a sanity ranking at 20 NFE: third-order singlestep (60 NFE would be unfair) vs Euler
    e_euler, _ = flow_error("ddim", VP, 24)
    e_3m, _ = flow_error("dpmpp_3m", VP, 24)
    e_dpm3, nfe = flow_error("dpm_solver", VP, 8, order=3)
    assert nfe == 24
    assert e_3m < e_euler / 10 and e_dpm3 < e_euler / 10


# -- stochastic samplers: moments of the Gaussian target ------------------------------------
DATA = GaussianMixture.gaussian(mean=[1.0, -0.5], std=[0.6, 1.2])

MOMENT_CASES = [
    ("ddpm", {}, VP, 200, "eps"),
    ("ddim", {"eta": 0.5}, VP, 100, "eps"),
    ("euler_ancestral", {}, VP, 200, "eps"),
    ("euler_ancestral", {"noise": "brownian"}, VP, 100, "eps"),
    ("dpm2_ancestral", {}, VP, 100, "eps"),
    ("dpm2_ancestral", {"eta": 0.5, "noise": "brownian"}, VP, 60, "v"),
    ("euler_maruyama", {}, VP, 200, "eps"),
    ("dpmpp_2m_sde", {}, VP, 40, "eps"),
    ("dpmpp_2m_sde", {"eta": 0.5, "noise": "brownian"}, VP, 40, "v"),
    ("dpm_multistep", {"algorithm": "dpmsolver", "eta": 1.0}, VP, 60, "eps"),
    ("mr_sampler", {"form": "sde"}, pydiff.MeanRevertingSchedule(), 40, "eps"),
    ("mr_sampler", {"form": "sde", "prediction": "noise"}, pydiff.MeanRevertingSchedule(),
     60, "eps"),
    ("pc", {}, VP, 60, "eps"),
    ("pc", {"predictor": "ancestral", "snr": 0.2}, VP, 60, "eps"),
    ("pc", {}, pydiff.MeanRevertingSchedule(), 40, "eps"),
    ("heun", {"S_churn": 10.0, "S_tmin": 0.01, "S_tmax": 50.0}, pydiff.EDMSchedule(), 40, "x0"),
    ("euler", {"S_churn": 10.0, "S_noise": 1.0}, pydiff.EDMSchedule(), 200, "x0"),
]


@pytest.mark.parametrize("name,opts,sched,steps,pred", MOMENT_CASES,
                         ids=[f"{c[0]}-{c[1]}-{type(c[2]).__name__}" for c in MOMENT_CASES])
def test_stochastic_moments(name, opts, sched, steps, pred):
    n = 4000
    g = torch.Generator().manual_seed(3)
    model = DATA.denoiser(sched, pred)
    x = pydiff.prior(sched, (n, 2), generator=g).double()
    if sched.mean_reverting:
        # alpha(T) is not small for SGMSE+'s process: start from the exact marginal
        x = DATA.marginal_sample(sched, sched.t_max, n, g)
        y = torch.full_like(x, 0.25)
        model, x = model.bind(y=y), x + y
    out = pydiff.sample(model, x, name, steps=steps, generator=g, **opts)
    if sched.mean_reverting:
        out = out - 0.25
    std = DATA.covariance().diag().sqrt()
    mean_err = (out.mean(0) - DATA.mean()).abs() / std
    std_err = (out.std(0) / std - 1).abs()
    # sampling error (5 standard errors) plus a small allowance for discretization bias
    assert bool((mean_err < 5 / math.sqrt(n) + 0.03).all()), (name, mean_err.tolist())
    assert bool((std_err < 5 / math.sqrt(2 * n) + 0.04).all()), (name, std_err.tolist())


def test_langevin_corrector_step_size_is_per_sample_on_device():
    data = GaussianMixture.gaussian([0.5] * 32 + [-0.5] * 32, [0.7] * 64)
    g = torch.Generator().manual_seed(0)
    x = pydiff.prior(VP, (400, 64), generator=g).double()
    out = pydiff.sample(data.denoiser(VP), x, "pc", steps=40, generator=g,
                        corrector="langevin", snr=0.16)
    assert (out.mean(0) - data.mean()).abs().max() < 0.2
    assert abs(float(out.std(0).mean()) / 0.7 - 1) < 0.05
    # a batch of one gives the same sample as that sample in the big batch (per-sample norms)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    both = pydiff.sample(data.denoiser(VP), x[:2], "pc", steps=5, generator=gens,
                         corrector="langevin")
    one = pydiff.sample(data.denoiser(VP), x[1:2], "pc", steps=5,
                        generator=[torch.Generator().manual_seed(6)], corrector="langevin")
    assert torch.allclose(both[1:], one)


def test_consistency_sampling_is_exact_with_the_exact_consistency_function():
    data = GaussianMixture.gaussian([1.0, -0.5], [0.6, 1.2])
    sched = pydiff.EDMSchedule()
    model = pydiff.Denoiser(lambda x, t: data.flow(sched, x, t, 0.0).to(x.dtype), sched,
                            prediction="x0", time_input="t")
    g = torch.Generator().manual_seed(0)
    x = pydiff.prior(sched, (6000, 2), generator=g).double()
    for steps in (1, 3):
        out = pydiff.sample(model, x, "consistency", steps=steps, generator=g)
        std = data.covariance().diag().sqrt()
        assert ((out.mean(0) - data.mean()).abs() / std).max() < 0.07
        assert (out.std(0) / std - 1).abs().max() < 0.06


def test_time_shift_picks_per_sample_times_and_still_samples_the_target():
    data = GaussianMixture.gaussian([0.0] * 64, [0.5] * 64)
    solver = get_solver("time_shift", window=0.1, candidates=11, data_var=0.25)
    g = torch.Generator().manual_seed(0)
    x = pydiff.prior(VP, (300, 64), generator=g).double()
    out = pydiff.sample(data.denoiser(VP), x, solver, steps=50)
    assert abs(float(out.std(0).mean()) / 0.5 - 1) < 0.05
    # a state noisier than its nominal level is evaluated at a later (noisier) time
    grid = pydiff.timesteps(VP, 10, "time")
    state = solver.init(torch.zeros(8, 4096, dtype=F64), VP, grid)
    seen = []

    class Spy(pydiff.Model):
        def evaluate(self, x, t):
            seen.append(t)
            return pydiff.Prediction((torch.zeros_like(x),), x0=(1.0,), eps=(None,))

    state = state.replace(i=5)
    t_nom = float(grid[5])
    a, s = VP.alpha(grid[5]), VP.sigma(grid[5])
    z = torch.randn(4, 4096, generator=g, dtype=F64)
    noisy = torch.cat([z * float(torch.sqrt(a**2 * 0.25 + s**2)), z * 3.0])
    solver.step(state.replace(x=noisy), Spy(VP))
    t_shift = seen[0]
    assert t_shift.shape == (8,)
    assert abs(float(t_shift[:4].mean()) - t_nom) < 0.03
    assert bool((t_shift[4:] > t_nom + 0.02).all())


# -- inversion -------------------------------------------------------------------------------
def _inversion_setup(steps: int = 30):
    data = GaussianMixture.gaussian([1.0, -0.5, 0.3], [0.6, 1.2, 0.9])
    x0 = data.sample(5, torch.Generator().manual_seed(0))
    grid = pydiff.timesteps(VP, steps, "time", t_start=0.9, t_end=0.2, final_zero=False)
    return data.denoiser(VP), x0, grid


def test_ddim_inversion_fixed_point_is_exact_and_classic_is_not():
    model, x0, grid = _inversion_setup(20)
    x_t = pydiff.sample(model, x0, "ddim_inversion", grid=grid, fixed_point_iters=12)
    back = pydiff.sample(model, x_t, "ddim", grid=grid)
    assert float((back - x0).abs().max()) < 1e-6
    assert float((x_t - x0).abs().max()) > 0.1  # it did go somewhere
    x_t = pydiff.sample(model, x0, "ddim_inversion", grid=grid)
    back = pydiff.sample(model, x_t, "ddim", grid=grid)
    assert float((back - x0).abs().max()) > 1e-4  # the classic inversion is approximate


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_bdia_inversion_round_trip_is_exact(gamma):
    model, x0, grid = _inversion_setup(12 if gamma < 1 else 30)
    inv = pydiff.sample(model, x0, "bdia_inversion", grid=grid, gamma=gamma, return_state=True)
    solver = get_solver("bdia", gamma=gamma)
    state = solver.init_pair(inv.x, inv.aux[0], VP, grid)
    while not state.done:
        state = solver.step(state, model)
    assert float((state.x - x0).abs().max()) < 1e-6
    assert float((inv.x - x0).abs().max()) > 0.1


def test_inversion_from_clean_data_does_not_call_the_network_at_t0():
    model, x0, _ = _inversion_setup()
    grid = pydiff.timesteps(VP, 10, "time")  # ends at t = 0
    for name in ("ddim_inversion", "bdia_inversion"):
        out = pydiff.sample(model, x0, name, grid=grid)
        assert torch.isfinite(out).all()


def test_inversion_solvers_walk_the_grid_backwards():
    grid = pydiff.timesteps(VP, 4, "time", final_zero=False)
    state = get_solver("ddim_inversion").init(torch.zeros(2, 3), VP, grid)
    assert torch.equal(state.grid, grid.flip(0))


# -- noise -----------------------------------------------------------------------------------
def test_brownian_noise_refines_the_same_path():
    grid = pydiff.timesteps(VP, 4, "time")
    fine = pydiff.timesteps(VP, 8, "custom", values=torch.stack(
        [grid[:-1], (grid[:-1] + grid[1:]) / 2], 1).flatten().tolist() + [0.0])
    solver = get_solver("dpmpp_2m_sde", noise="brownian")
    x = torch.zeros(3, 5, dtype=F64)
    coarse_state = solver.init(x, VP, grid, generator=torch.Generator().manual_seed(7))
    fine_state = solver.init(x, VP, fine, generator=torch.Generator().manual_seed(7))
    for i in range(4):
        w_coarse = solver.noise(coarse_state.replace(i=i)) * (grid[i] - grid[i + 1]).sqrt()
        w_fine = sum(solver.noise(fine_state.replace(i=2 * i + k)) *
                     (fine[2 * i + k] - fine[2 * i + k + 1]).sqrt() for k in range(2))
        assert torch.allclose(w_coarse, w_fine, atol=1e-10)


def test_brownian_sde_samples_converge_pathwise():
    model = DATA.denoiser(VP)
    x = pydiff.prior(VP, (64, 2), generator=torch.Generator().manual_seed(0)).double()

    def run(steps, noise):
        return pydiff.sample(model, x, "dpmpp_2m_sde", steps=steps, noise=noise,
                             generator=torch.Generator().manual_seed(11))

    gap_brownian = (run(50, "brownian") - run(100, "brownian")).abs().mean()
    gap_fresh = (run(50, "gaussian") - run(100, "gaussian")).abs().mean()
    assert gap_brownian < 0.2 * gap_fresh


def test_per_sample_generators_make_samples_batch_independent():
    model = DATA.denoiser(VP)
    x = pydiff.prior(VP, (3, 2), generator=torch.Generator().manual_seed(0)).double()
    for name in ("dpmpp_2m_sde", "euler_ancestral", "pc"):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        full = pydiff.sample(model, x, name, steps=6, generator=gens)
        one = pydiff.sample(model, x[2:], name, steps=6,
                            generator=[torch.Generator().manual_seed(3)])
        assert torch.allclose(full[2:], one), name


# -- protocol --------------------------------------------------------------------------------
STEPPABLE = [n for n in pydiff.solvers.available_solvers()]


@pytest.mark.parametrize("name", STEPPABLE)
def test_every_solver_runs_float32_per_sample_grids_and_dict_states(name):
    model = DATA.denoiser(VP)
    g = torch.Generator().manual_seed(0)
    x = pydiff.prior(VP, (4, 2), generator=g)
    out = pydiff.sample(model, x, name, steps=6, generator=g)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if name in ("time_shift",) or name.endswith("inversion"):
        return
    t0 = torch.tensor([1.0, 0.8, 0.6, 0.5], dtype=F64)
    out = pydiff.sample(model, x, name, steps=5, t_start=t0, generator=g)
    assert torch.isfinite(out).all()
    dict_model = pydiff.Denoiser(lambda s, t: {"a": torch.zeros_like(s["a"])}, VP)
    out = pydiff.sample(dict_model, {"a": x}, name, steps=4, generator=g)
    assert torch.isfinite(out["a"]).all()


def test_bad_options_name_the_argument():
    for name, opts, word in [("dpm_multistep", {"order": 4}, "order"),
                             ("unipc", {"variant": "bh3"}, "variant"),
                             ("pc", {"corrector": "hmc"}, "corrector"),
                             ("mr_sampler", {"form": "pde"}, "form"),
                             ("ghvb", {"beta": 0.0}, "beta"),
                             ("dpmpp_2m_sde", {"noise": "pink"}, "noise"),
                             ("heun", {"S_churn": -1.0}, "S_churn"),
                             ("deis", {"order": 4}, "order"), ("lms", {"order": 5}, "order"),
                             ("plms", {"warmup": "rk45"}, "warmup"),
                             ("dpm2_ancestral", {"eta": -1.0}, "eta")]:
        with pytest.raises(ValueError, match=word):
            get_solver(name, **opts)


DETERMINISTIC = [n for n in STEPPABLE if not get_solver(n).stochastic
                 and n != "time_shift" and not n.endswith("inversion")]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_per_position_grids_match_scalar_runs(name):
    # diagonal Gaussian data: coordinates are independent, so a per-position start time must
    # give each coordinate the result of a scalar run started at that coordinate's time
    model = DATA.denoiser(VP)
    x = pydiff.prior(VP, (3, 2), generator=torch.Generator().manual_seed(0)).double()
    t0 = torch.tensor([[1.0, 0.7], [0.7, 0.7], [0.5, 1.0]], dtype=F64)
    out = pydiff.sample(model, x, name, steps=5, t_start=t0)
    for b in range(3):
        for d in range(2):
            ref = pydiff.sample(model, x[b:b + 1], name, steps=5, t_start=float(t0[b, d]))
            assert torch.allclose(out[b, d], ref[0, d], atol=1e-10), (name, b, d)


def test_hooks_see_each_reached_level_including_inversion():
    grid = pydiff.timesteps(VP, 4, "time", final_zero=False)
    model = DATA.denoiser(VP)
    x = torch.zeros(2, 2, dtype=F64)
    for name, expected in (("unipc", grid[1:]), ("ddim_inversion", grid.flip(0)[1:])):
        seen: list[float] = []

        def record(v, ctx, seen=seen):
            seen.append(float(ctx.t))
            return v

        pydiff.sample(model, x, name, grid=grid, hooks=[record])
        assert seen == pytest.approx(expected.tolist()), name


class _NoSyncModel(pydiff.Model):
    """A model made of tensor ops only (no host reads), to isolate the solvers' own syncs."""

    def __init__(self):
        super().__init__(VP)

    def evaluate(self, x, t):
        return pydiff.Prediction.from_x0(x, 0.5 * torch.tanh(x), VP.alpha(t), VP.sigma(t))


NO_SYNC_OPTIONS = {"pc": {"corrector": "langevin"}, "time_shift": {"window": 0.1},
                   "dpmpp_2m_sde": {"noise": "brownian"}, "heun": {"S_churn": 5.0}}


@pytest.mark.parametrize("name", STEPPABLE)
def test_steps_do_not_read_device_values_on_the_host(name, monkeypatch):
    solver = get_solver(name, **NO_SYNC_OPTIONS.get(name, {}))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g)
    grid = pydiff.timesteps(VP, 5, solver.default_spacing, final_zero=False)
    state = solver.init(x, VP, grid, generator=g)

    def forbidden(*args, **kwargs):
        raise AssertionError(f"{name}: a step read a tensor value on the host")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    while not state.done:
        state = solver.step(state, _NoSyncModel())
    monkeypatch.undo()
    assert torch.isfinite(state.x).all()


def test_prk_warmup_in_short_runs_ends_with_a_multistep_step():
    # on a DDPM table the midpoint of a step to t = 0 lies inside the first interval (sigma
    # near 0); runs of 1-3 steps must still end finite and use PRK only before that step
    sched = pydiff.DiscreteSchedule.linear()
    model = DATA.denoiser(sched, "x0")
    x = pydiff.prior(sched, (16, 2), generator=torch.Generator().manual_seed(0)).double()
    for steps, nfe in ((1, 1), (2, 5), (3, 9), (4, 13)):
        state = pydiff.sample(model, x, "plms", steps=steps, warmup="prk", return_state=True)
        assert torch.isfinite(state.x).all() and state.nfe == nfe, (steps, state.nfe)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "ddpm"])
def test_restart_runs_as_a_fresh_init_over_the_same_tables(solver):
    # SolverState.restart reuses a run's grid and coefficient tables for a new x: the steps
    # must equal a run started by init (history, step count, generator all fresh)
    s = get_solver(solver)
    grid = pydiff.timesteps(VP, 6, "time")
    model = pydiff.Denoiser(lambda x, t: 0.3 * x + t.reshape(-1, 1), VP, prediction="eps")
    first = s.init(torch.randn(2, 3), VP, grid, generator=torch.Generator().manual_seed(0))
    used = first
    for _ in range(3):  # advance the template's own run: restart must not carry its history
        used = s.step(used, model)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    runs = [s.init(x, VP, grid, generator=torch.Generator().manual_seed(5)),
            used.restart(x, generator=torch.Generator().manual_seed(5))]
    for k in range(2):
        while not runs[k].done:
            runs[k] = s.step(runs[k], model)
    assert torch.equal(runs[0].x, runs[1].x) and runs[0].nfe == runs[1].nfe == 6
    assert used.restart(x).i == 0 and used.restart(x).history == ()
    with pytest.raises(ValueError, match="shape, dtype and device"):
        first.restart(torch.randn(3, 3))
    brownian = get_solver("ddpm", noise="brownian").init(x, VP, grid,
                                                          generator=torch.Generator())
    with pytest.raises(ValueError, match="Brownian"):
        brownian.restart(x)
