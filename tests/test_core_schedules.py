"""Schedules and timestep grids (pydiff.schedules, pydiff.timesteps)."""

import math

import pytest
import torch

import pydiff
from pydiff.schedules import schedule_from_config

F64 = torch.float64

ALL = [
    pydiff.DiscreteSchedule.linear(),
    pydiff.DiscreteSchedule.scaled_linear(),
    pydiff.DiscreteSchedule.cosine(),
    pydiff.VPSchedule(),
    pydiff.CosineSchedule(),
    pydiff.VESchedule(),
    pydiff.EDMSchedule(),
    pydiff.FlowSchedule(),
    pydiff.MeanRevertingSchedule(),
]
IDS = [repr(s)[:40] for s in ALL]


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_log_snr_inverse_and_clean_endpoint(sched):
    t = torch.linspace(sched.t_eps, sched.t_max * 0.999, 57, dtype=F64)
    back = sched.t_from_log_snr(sched.log_snr(t))
    assert torch.allclose(back, t, atol=1e-9 * sched.t_max, rtol=1e-7)
    assert float(sched.alpha(0.0)) == 1.0 and float(sched.sigma(0.0)) == 0.0
    lam = sched.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease in t"
    assert sched.alpha(t).dtype == F64


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_config_round_trip(sched):
    again = schedule_from_config(sched.config())
    t = torch.linspace(sched.t_eps, sched.t_max, 11, dtype=F64)
    assert torch.equal(again.alpha(t), sched.alpha(t))
    assert torch.equal(again.sigma(t), sched.sigma(t))


def test_discrete_reproduces_diffusers_table():
    n = 1000
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=F64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    s = pydiff.DiscreteSchedule.scaled_linear()
    t = (torch.arange(n, dtype=F64) + 1) / n
    assert torch.allclose(s.alpha(t) ** 2, ac, rtol=1e-12)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(n, dtype=F64))


def test_vp_sde_is_song_et_al():
    # VP SDE: f = -beta(t)/2, g^2 = beta(t) with beta(t) = beta_min + t (beta_max - beta_min)
    s = pydiff.VPSchedule(0.1, 20.0)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    f, g2 = s.sde(t)
    assert torch.allclose(f, -0.5 * (0.1 + t * 19.9), rtol=1e-10)
    assert torch.allclose(g2, 0.1 + t * 19.9, rtol=1e-10)


def test_mean_reverting_sde_is_sgmse_ouve():
    # SGMSE+ OUVE: f = -theta, g = sigma_min r^t sqrt(2 log r), r = sigma_max / sigma_min
    s = pydiff.MeanRevertingSchedule(theta=1.5, sigma_min=0.05, sigma_max=0.5)
    t = torch.tensor([0.03, 0.4, 1.0], dtype=F64)
    f, g2 = s.sde(t)
    r = 0.5 / 0.05
    assert torch.allclose(f, torch.full_like(t, -1.5), rtol=1e-10)
    assert torch.allclose(g2, (0.05 * r**t) ** 2 * 2 * math.log(r), rtol=1e-9)


@pytest.mark.parametrize("spacing", ["time", "logsnr", "karras", "quadratic"])
@pytest.mark.parametrize("sched", [pydiff.VPSchedule(), pydiff.EDMSchedule(),
                                   pydiff.DiscreteSchedule.linear(), pydiff.FlowSchedule()])
def test_grids_are_uniform_in_their_variable(spacing, sched):
    g = pydiff.timesteps(sched, 8, spacing)
    assert g.shape == (9,) and g.dtype == F64
    assert float(g[0]) == sched.t_max and float(g[-1]) == 0.0
    assert bool((g[1:] < g[:-1]).all())
    inner = g[:-1]  # the final step goes to 0
    if isinstance(sched, pydiff.FlowSchedule):
        inner = inner[1:]  # alpha(t_max) = 0: the first interval is pinned, not spaced
    var = {"time": inner, "quadratic": inner.sqrt(), "logsnr": sched.log_snr(inner),
           "karras": sched.sigma_tilde(inner) ** (1 / 7)}[spacing]
    d = var[1:] - var[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-6, atol=1e-9)


def test_warm_start_and_per_sample_grids():
    s = pydiff.VPSchedule()
    g = pydiff.timesteps(s, 5, "logsnr", t_start=0.4)
    assert float(g[0]) == 0.4 and g.shape == (6,)
    t_start = torch.tensor([0.3, 0.6, 1.0], dtype=F64)
    gb = pydiff.timesteps(s, 5, "logsnr", t_start=t_start)
    assert gb.shape == (6, 3)
    for b in range(3):
        one = pydiff.timesteps(s, 5, "logsnr", t_start=float(t_start[b]))
        assert torch.allclose(gb[:, b], one, rtol=1e-12)


def test_custom_grid_and_bad_grids():
    s = pydiff.VPSchedule()
    g = pydiff.timesteps(s, 0, "custom", values=[1.0, 0.5, 0.0])
    assert g.tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="strictly decreasing"):
        pydiff.timesteps(s, 0, "custom", values=[1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="outside"):
        pydiff.timesteps(s, 0, "custom", values=[1.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="t_start"):
        pydiff.timesteps(s, 4, t_start=2.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        pydiff.timesteps(s, 0)
    with pytest.raises(ValueError, match="unknown spacing"):
        pydiff.timesteps(s, 4, "cubic")


def test_discrete_tables_default_to_uniform_time_steps():
    # as diffusers spaces schedulers on a DDPM table; uniform log-SNR crowds a few-step grid at
    # the cosine table's noisy end (benchmarks/policy_spacing.py)
    table = pydiff.DiscreteSchedule.cosine(num_train_timesteps=100)
    assert table.default_spacing == "time"
    model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), table, prediction="eps",
                            time_input="index")
    for solver in ("dpmpp_2m", "unipc", "ddim"):
        state = pydiff.sample(model, torch.zeros(1, 2), solver, steps=5, return_state=True)
        assert torch.allclose(state.grid.flatten().cpu(), pydiff.timesteps(table, 5, "time"))


def test_alpha_sigma_of_grid_rows_is_cached_with_the_grid():
    sched = pydiff.DiscreteSchedule.cosine(num_train_timesteps=100)
    grid = pydiff.timesteps(sched, 5, "time")
    for i in range(grid.shape[0]):
        a, s = sched.alpha_sigma(grid[i])
        assert torch.equal(a, sched.alpha(grid[i])) and torch.equal(s, sched.sigma(grid[i]))
    assert sched.alpha_sigma(grid[2])[0] is sched.alpha_sigma(grid[2])[0]  # kept
    grid[2] = 0.5  # an in-place change is seen (version counter): recomputed
    assert torch.equal(sched.alpha_sigma(grid[2])[0], sched.alpha(torch.tensor(0.5, dtype=F64)))
    # times that are not grid rows are computed directly
    t = torch.tensor([0.3, 0.7], dtype=F64)
    assert torch.equal(sched.alpha_sigma(t)[1], sched.sigma(t))
