"""pydiff's solvers against diffusers' schedulers (diffusers is a test-only dependency).

pydiff gets diffusers' own float32 tables (``alphas_cumprod``, or the sigmas for the EDM-style
schedulers) and timesteps, the same deterministic model function and, for stochastic solvers,
the same noise stream (one draw of the sample's shape per step from the same generator).
Trajectories must agree to 1e-5 relative at every step. Deliberate differences (float64
coefficient tables, ``expm1``) are measured in ``benchmarks/solver_accuracy.py --differences``
and documented in docs/solvers.md.
"""

import pytest
import torch

import pydiff

diffusers = pytest.importorskip("diffusers")

N_TRAIN = 1000
SHAPE = (2, 3, 4, 4)
REL_TOL = 1e-5


def eps_fn(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A fixed smooth noise prediction of the (variance preserving) input and the timestep."""
    k = k.to(torch.float32).reshape(-1, *([1] * (x.dim() - 1)))
    return 0.5 * torch.tanh(x) + 0.2 * torch.cos(0.01 * k + x)


def start_sample() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def discrete_schedule(sched) -> pydiff.DiscreteSchedule:
    # diffusers' own float32 table, read in float64
    return pydiff.DiscreteSchedule(sched.alphas_cumprod.double())


def index_grid(schedule, timesteps, final_zero: bool = True) -> torch.Tensor:
    """Grid t = (index + 1) / N for diffusers' timesteps, plus t = 0 for a step to alpha = 1."""
    t = [(float(k) + 1) / N_TRAIN for k in timesteps]
    return pydiff.timesteps(schedule, len(t), "custom", values=t + [0.0] if final_zero else t)


def run_diffusers(sched, x, steps_taken, stochastic=False, seed=1):
    """Standard diffusers loop; returns every step's output."""
    gen = torch.Generator().manual_seed(seed) if stochastic else None
    outs = []
    for t in steps_taken:
        inp = sched.scale_model_input(x, t)
        eps = eps_fn(inp, torch.as_tensor(t))
        kw = {"generator": gen} if stochastic else {}
        x = sched.step(eps, t, x, **kw).prev_sample
        outs.append(x)
    return outs


def run_pydiff(model, x, solver, grid, stochastic=False, seed=1):
    gen = torch.Generator().manual_seed(seed) if stochastic else None
    state = solver.init(x, model.schedule, grid, generator=gen)
    outs = []
    while not state.done:
        state = solver.step(state, model)
        outs.append(state.x)
    return outs


def vp_model(schedule):
    return pydiff.Denoiser(eps_fn, schedule, prediction="eps", time_input="index")


def check(ours, theirs):
    assert len(ours) == len(theirs)
    errs = [rel_err(a, b) for a, b in zip(ours, theirs)]
    assert max(errs) < REL_TOL, f"max relative deviation {max(errs):.2e} (per step: {errs})"


BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize("steps", [10, 25])
def test_ddpm(steps):
    sched = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear",
                                    clip_sample=False, variance_type="fixed_small",
                                    timestep_spacing="leading")
    sched.set_timesteps(steps)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps, stochastic=True)
    s = discrete_schedule(sched)
    ours = run_pydiff(vp_model(s), x, pydiff.solvers.get_solver("ddpm"),
                      index_grid(s, sched.timesteps), stochastic=True)
    check(ours, theirs)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim(eta):
    sched = diffusers.DDIMScheduler(num_train_timesteps=N_TRAIN, clip_sample=False,
                                    set_alpha_to_one=True, steps_offset=0,
                                    timestep_spacing="leading", **BETAS)
    sched.set_timesteps(20)
    x = start_sample()
    gen = torch.Generator().manual_seed(1)
    theirs, xd = [], x
    for t in sched.timesteps:
        xd = sched.step(eps_fn(xd, torch.as_tensor(t)), t, xd, eta=eta, generator=gen).prev_sample
        theirs.append(xd)
    s = discrete_schedule(sched)
    ours = run_pydiff(vp_model(s), x, pydiff.solvers.get_solver("ddim", eta=eta),
                      index_grid(s, sched.timesteps), stochastic=True)
    check(ours, theirs)


def test_pndm_plms():
    sched = diffusers.PNDMScheduler(num_train_timesteps=N_TRAIN, skip_prk_steps=True,
                                    set_alpha_to_one=True, steps_offset=0, **BETAS)
    sched.set_timesteps(20)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps)
    # diffusers repeats the second timestep for PLMS's pseudo-improved-Euler start
    unique = [sched.timesteps[0]] + list(sched.timesteps[2:])
    s = discrete_schedule(sched)
    ours = run_pydiff(vp_model(s), x, pydiff.solvers.get_solver("pndm"), index_grid(s, unique))
    check(ours, theirs[1:])


@pytest.mark.parametrize("order,steps", [(2, 10), (2, 20), (3, 10), (3, 20)])
def test_dpmpp_multistep(order, steps):
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, algorithm_type="dpmsolver++", solver_order=order,
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
        euler_at_final=False, **BETAS)
    sched.set_timesteps(steps)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps)
    s = discrete_schedule(sched)
    solver = pydiff.solvers.get_solver("dpmpp_2m" if order == 2 else "dpmpp_3m")
    ours = run_pydiff(vp_model(s), x, solver, index_grid(s, sched.timesteps))
    check(ours, theirs)


def test_dpmpp_2m_sde():
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, algorithm_type="sde-dpmsolver++", solver_order=2,
        lower_order_final=True, final_sigmas_type="zero", **BETAS)
    sched.set_timesteps(15)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps, stochastic=True)
    s = discrete_schedule(sched)
    ours = run_pydiff(vp_model(s), x, pydiff.solvers.get_solver("dpmpp_2m_sde"),
                      index_grid(s, sched.timesteps), stochastic=True)
    check(ours, theirs)


@pytest.mark.parametrize("order,variant,steps", [(2, "bh2", 10), (2, "bh1", 20), (3, "bh2", 20),
                                                 (1, "bh2", 10)])
def test_unipc(order, variant, steps):
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=N_TRAIN, solver_order=order, solver_type=variant, predict_x0=True,
        lower_order_final=True, final_sigmas_type="zero", disable_corrector=[], **BETAS)
    sched.set_timesteps(steps)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps)
    s = discrete_schedule(sched)
    solver = pydiff.solvers.get_solver("unipc", order=order, variant=variant)
    ours = run_pydiff(vp_model(s), x, solver, index_grid(s, sched.timesteps))
    check(ours, theirs)


# -- EDM-style schedulers: diffusers' sigmas are the grid of an EDMSchedule (t = sigma) -------
def edm_setup(sched):
    sigmas = sched.sigmas.double()
    schedule = pydiff.EDMSchedule(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]) + 1)
    table_sigma, table_t = sched.sigmas[:-1], sched.timesteps

    def net(x_ve, sigma):
        # the same input scaling as diffusers' scale_model_input, and its timestep for sigma
        sigma = sigma.to(torch.float32)
        k = table_t[(table_sigma[None, :] - sigma[:, None]).abs().argmin(dim=1)]
        s = sigma.reshape(-1, *([1] * (x_ve.dim() - 1)))
        return eps_fn(x_ve / ((s**2 + 1) ** 0.5), k)

    model = pydiff.Denoiser(net, schedule, prediction="eps", time_input="t")
    grid = pydiff.timesteps(schedule, 1, "custom", values=_unique(sigmas).tolist())
    return model, grid


def _unique(sigmas):
    keep = torch.ones_like(sigmas, dtype=torch.bool)
    keep[1:] = sigmas[1:] != sigmas[:-1]
    return sigmas[keep]


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_euler(spacing):
    sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=N_TRAIN,
                                             timestep_spacing=spacing, final_sigmas_type="zero",
                                             interpolation_type="linear", **BETAS)
    sched.set_timesteps(20)
    x = start_sample() * sched.init_noise_sigma
    theirs = run_diffusers(sched, x, sched.timesteps)
    model, grid = edm_setup(sched)
    ours = run_pydiff(model, x, pydiff.solvers.get_solver("euler"), grid)
    check(ours, theirs)


def test_euler_ancestral():
    sched = diffusers.EulerAncestralDiscreteScheduler(num_train_timesteps=N_TRAIN, **BETAS)
    sched.set_timesteps(20)
    x = start_sample() * sched.init_noise_sigma
    theirs = run_diffusers(sched, x, sched.timesteps, stochastic=True)
    model, grid = edm_setup(sched)
    ours = run_pydiff(model, x, pydiff.solvers.get_solver("euler_ancestral"), grid,
                      stochastic=True)
    check(ours, theirs)


def test_heun():
    sched = diffusers.HeunDiscreteScheduler(num_train_timesteps=N_TRAIN, **BETAS)
    sched.set_timesteps(12)
    x = start_sample() * sched.init_noise_sigma
    theirs = run_diffusers(sched, x, sched.timesteps)
    model, grid = edm_setup(sched)
    ours = run_pydiff(model, x, pydiff.solvers.get_solver("heun"), grid)
    # diffusers returns after each stage; its step outputs sit after every second stage
    check(ours, theirs[1::2] + theirs[-1:])


@pytest.mark.parametrize("algorithm,solver_type,order", [
    ("dpmsolver", "midpoint", 2), ("dpmsolver", "heun", 3), ("dpmsolver++", "heun", 2),
    ("sde-dpmsolver", "midpoint", 2), ("sde-dpmsolver", "heun", 2),
    ("sde-dpmsolver++", "heun", 2)])
def test_dpm_multistep_variants(algorithm, solver_type, order):
    # diffusers refuses a final step to sigma = 0 in noise prediction: it ends at the table's
    # first entry instead (final_sigmas_type="sigma_min"), and so does pydiff's grid here
    noise_pred = algorithm in ("dpmsolver", "sde-dpmsolver")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, algorithm_type=algorithm, solver_order=order,
        solver_type=solver_type, lower_order_final=True,
        final_sigmas_type="sigma_min" if noise_pred else "zero", **BETAS)
    sched.set_timesteps(12)
    x = start_sample()
    sde = algorithm.startswith("sde")
    theirs = run_diffusers(sched, x, sched.timesteps, stochastic=sde)
    s = discrete_schedule(sched)
    grid = (index_grid(s, list(sched.timesteps) + [0], final_zero=False) if noise_pred
            else index_grid(s, sched.timesteps))
    solver = pydiff.solvers.get_solver(
        "dpm_multistep", order=order, solver_type=solver_type, eta=1.0 if sde else 0.0,
        algorithm=algorithm.removeprefix("sde-"))
    ours = run_pydiff(vp_model(s), x, solver, grid, stochastic=sde)
    check(ours, theirs)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_noise_prediction(order):
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=N_TRAIN, solver_order=order, solver_type="bh1", predict_x0=False,
        lower_order_final=True, final_sigmas_type="zero", **BETAS)
    sched.set_timesteps(12)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps)
    s = discrete_schedule(sched)
    solver = pydiff.solvers.get_solver("unipc", order=order, variant="bh1", predict_x0=False)
    ours = run_pydiff(vp_model(s), x, solver, index_grid(s, sched.timesteps))
    check(ours, theirs)


def test_pndm_prk():
    # PNDM proper: three pseudo Runge-Kutta steps (stages at the half index), then PLMS
    sched = diffusers.PNDMScheduler(num_train_timesteps=N_TRAIN, skip_prk_steps=False,
                                    set_alpha_to_one=True, steps_offset=0, **BETAS)
    sched.set_timesteps(20)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps)
    s = discrete_schedule(sched)
    # the PRK timesteps are the grid and its midpoints; every fourth output ends a step
    grid = [sched.prk_timesteps[0]] + list(sched.prk_timesteps[3::4]) + list(
        sched.plms_timesteps[1:])
    ours = run_pydiff(vp_model(s), x, pydiff.solvers.get_solver("plms", warmup="prk"),
                      index_grid(s, grid))
    check(ours, theirs[3:12:4] + theirs[12:])


@pytest.mark.parametrize("order,steps", [(1, 10), (2, 10), (2, 20), (3, 12), (3, 20)])
def test_deis(order, steps):
    sched = diffusers.DEISMultistepScheduler(num_train_timesteps=N_TRAIN, solver_order=order,
                                             lower_order_final=True, **BETAS)
    sched.set_timesteps(steps)
    x = start_sample()
    theirs = run_diffusers(sched, x, sched.timesteps)
    s = discrete_schedule(sched)
    # diffusers' DEIS ends at the table's first entry (index 0), not at alpha = 1
    grid = index_grid(s, list(sched.timesteps) + [0], final_zero=False)
    ours = run_pydiff(vp_model(s), x, pydiff.solvers.get_solver("deis", order=order), grid)
    check(ours, theirs)


def test_lms():
    sched = diffusers.LMSDiscreteScheduler(num_train_timesteps=N_TRAIN, **BETAS)
    sched.set_timesteps(20)
    x = start_sample() * sched.init_noise_sigma
    theirs = run_diffusers(sched, x, sched.timesteps)
    model, grid = edm_setup(sched)
    ours = run_pydiff(model, x, pydiff.solvers.get_solver("lms"), grid)
    check(ours, theirs)


def sigma_model(sched):
    """A Denoiser on an EDMSchedule whose network sees diffusers' continuous timestep: KDPM2
    evaluates between table entries, at the timestep its ``_sigma_to_t`` interpolates."""
    log_sigmas = sched.log_sigmas.double()
    sigmas = sched.sigmas.double()
    schedule = pydiff.EDMSchedule(sigma_min=float(sigmas[sigmas > 0].min()),
                                  sigma_max=float(sigmas.max()) + 1)

    def net(x_ve, sigma):
        # diffusers' _sigma_to_t: linear interpolation of the table index in log sigma
        ls = torch.log(sigma.double())
        idx = torch.searchsorted(log_sigmas, ls).clamp(1, len(log_sigmas) - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        k = (idx - 1) + (ls - lo) / (hi - lo)
        s = sigma.to(torch.float32).reshape(-1, *([1] * (x_ve.dim() - 1)))
        return eps_fn(x_ve / ((s**2 + 1) ** 0.5), k)

    model = pydiff.Denoiser(net, schedule, prediction="eps", time_input="t")
    grid = pydiff.timesteps(schedule, 1, "custom", values=_unique(sigmas).tolist())
    return model, grid


@pytest.mark.parametrize("name,cls", [("dpm2", "KDPM2DiscreteScheduler"),
                                      ("dpm2_ancestral", "KDPM2AncestralDiscreteScheduler")])
def test_kdpm2(name, cls):
    sched = getattr(diffusers, cls)(num_train_timesteps=N_TRAIN, **BETAS)
    sched.set_timesteps(12)
    x = start_sample() * sched.init_noise_sigma
    stochastic = name == "dpm2_ancestral"
    theirs = run_diffusers(sched, x, sched.timesteps, stochastic=stochastic)
    model, grid = sigma_model(sched)
    ours = run_pydiff(model, x, pydiff.solvers.get_solver(name), grid, stochastic=stochastic)
    # diffusers returns after each stage: a step ends after every second one, the last (to
    # sigma = 0, an Euler step) after one
    check(ours, theirs[1::2] + theirs[-1:])
