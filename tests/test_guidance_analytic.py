"""Guidance against closed forms: Gaussian priors, linear-Gaussian measurements, tilted Gaussians.

For a Gaussian prior ``N(m, C)`` every marginal, posterior and likelihood is Gaussian, so the
guided models can be compared with exact answers: identically (the guided x0 prediction equals
the exact posterior's) and in distribution (samples match mean and covariance within sampling
error).
"""

import math

import pytest
import torch

import pydiff
from pydiff.guidance import (
    ClassifierFreeGuidance,
    GradientGuidance,
    MeasurementGuidance,
    gaussian_posterior_variance,
)
from pydiff.guidance.analytic import Gaussian, LinearGaussianMeasurement
from pydiff.testing import GaussianMixture

F64 = torch.float64
SCHED = pydiff.VPSchedule()


PRIOR = Gaussian([0.5, -1.0, 0.2], [[1.0, 0.6, 0.1], [0.6, 1.5, -0.3], [0.1, -0.3, 0.8]])
A = torch.tensor([[1.0, -0.5, 0.0], [0.3, 0.2, 1.0]], dtype=F64)
NOISE = 0.3
Y = torch.tensor([[1.0, -0.4]], dtype=F64)


def exact_posterior():
    # information form, independent of the Kalman form in LinearGaussianMeasurement.posterior
    prec = torch.linalg.inv(PRIOR.cov) + A.T @ A / NOISE**2
    cov = torch.linalg.inv(prec)
    mean = cov @ (torch.linalg.inv(PRIOR.cov) @ PRIOR.mean + A.T @ Y[0] / NOISE**2)
    return Gaussian(mean, 0.5 * (cov + cov.T))


PROBLEM = LinearGaussianMeasurement(PRIOR, A, NOISE, Y)
exact_log_likelihood = PROBLEM.log_likelihood(SCHED)


def test_kalman_and_information_forms_agree():
    post, kalman = exact_posterior(), PROBLEM.posterior()
    torch.testing.assert_close(kalman.mean, post.mean)
    torch.testing.assert_close(kalman.cov, post.cov)


def test_exact_likelihood_with_per_sample_times():
    guided = GradientGuidance(PRIOR.denoiser(SCHED), exact_log_likelihood)
    post = exact_posterior()
    t = torch.tensor([0.9, 0.4, 0.05], dtype=F64)
    x = PRIOR.marginal_sample(SCHED, t, 3, torch.Generator().manual_seed(9))
    torch.testing.assert_close(guided.x0(x, t), post.posterior_mean(SCHED, x, t),
                               atol=1e-9, rtol=1e-9)


def test_exact_likelihood_guidance_is_the_exact_posterior_denoiser():
    guided = GradientGuidance(PRIOR.denoiser(SCHED), exact_log_likelihood)
    post = exact_posterior()
    g = torch.Generator().manual_seed(0)
    for t in (0.9, 0.5, 0.1, 0.01):
        x = PRIOR.marginal_sample(SCHED, t, 16, g)
        with torch.no_grad():  # guidance enables grad itself
            x0 = guided.x0(x, t)
        torch.testing.assert_close(x0, post.posterior_mean(SCHED, x, t), atol=1e-9, rtol=1e-9)


def test_exact_likelihood_guidance_samples_the_posterior():
    guided = GradientGuidance(PRIOR.denoiser(SCHED), exact_log_likelihood)
    post = exact_posterior()
    n = 4000
    g = torch.Generator().manual_seed(1)
    x_T = post.marginal_sample(SCHED, SCHED.t_max, n, g)
    x = pydiff.sample(guided, x_T, "dpmpp_2m", steps=40)
    se_mean = (post.cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - post.mean).abs() < 4 * se_mean).all(), (x.mean(0), post.mean)
    d = post.cov.diagonal()
    se_cov = ((d[:, None] * d[None, :] + post.cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - post.cov).abs() < 4 * se_cov + 1e-3).all()
    # and far from the prior: guidance did something
    assert (x.mean(0) - PRIOR.mean).abs().max() > 10 * se_mean.max()


def test_likelihood_step_with_posterior_variance_is_exact_for_coordinate_measurements():
    # isotropic Gaussian prior, A selects coordinates: Var[A x0 | x_t] = r_t^2 I exactly
    c, sig_y = 0.7, 0.2
    data = GaussianMixture.gaussian([0.3, -0.2, 0.4], [c, c, c])
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    y = torch.tensor([[1.0, 0.0, -0.5]], dtype=F64)
    post_var = gaussian_posterior_variance(SCHED, c)
    guided = MeasurementGuidance(data.denoiser(SCHED), lambda x0: mask * x0, mask * y,
                                 step="likelihood",
                                 noise_std=lambda t: (sig_y**2 + post_var(t)).sqrt())
    # exact posterior per coordinate: observed ones shrink towards y, the middle one is the prior
    v_post = 1 / (1 / c**2 + mask / sig_y**2)
    m_post = v_post * (data.means[0] / c**2 + mask * y[0] / sig_y**2)
    post = GaussianMixture([m_post.tolist()], [v_post.sqrt().tolist()])
    g = torch.Generator().manual_seed(2)
    for t in (0.8, 0.3, 0.05):
        x = data.marginal_sample(SCHED, t, 8, g)
        torch.testing.assert_close(guided.x0(x, t), post.posterior_mean(SCHED, x, t),
                                   atol=1e-9, rtol=1e-9)


def _two_class_net(cond_data, uncond_data, sched):
    nets = [cond_data.net(sched, "eps"), uncond_data.net(sched, "eps")]

    def net(x, t, label):
        # label 1: conditional model, label 0: the unconditional one
        out = torch.empty_like(x)
        for value, sub in ((1, nets[0]), (0, nets[1])):
            pick = label == value
            if pick.any():
                out[pick] = sub(x[pick], t[pick])
        return out

    return pydiff.Denoiser(net, sched, prediction="eps", time_input="t")


@pytest.mark.parametrize("solver", ["dpmpp_2m", "ddim"])
def test_cfg_with_exact_gaussian_scores_samples_the_tilted_gaussian(solver):
    # p_c^w p_u^(1-w) with a shared covariance is N((1-w) m_u + w m_c, C) and, because the
    # noisy marginals are tilted the same way, CFG's score is its exact score at every t
    std = [0.6, 1.2]
    m_c, m_u = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([-0.5, 0.5], dtype=F64)
    cond, uncond = GaussianMixture([m_c.tolist()], [std]), GaussianMixture([m_u.tolist()], [std])
    base = _two_class_net(cond, uncond, SCHED)
    n = 3000
    scales = torch.cat([torch.full((n,), 3.0, dtype=F64), torch.full((n,), 0.5, dtype=F64)])
    model = ClassifierFreeGuidance(base, scale=scales, uncond={"label": torch.zeros(1)})
    model = model.bind(label=torch.ones(2 * n))
    g = torch.Generator().manual_seed(3)
    x_T = torch.empty(2 * n, 2, dtype=F64)
    for k, w in enumerate((3.0, 0.5)):
        tilted = GaussianMixture([((1 - w) * m_u + w * m_c).tolist()], [std])
        x_T[k * n:(k + 1) * n] = tilted.marginal_sample(SCHED, 1.0, n, g)
    x = pydiff.sample(model, x_T, solver, steps=60 if solver == "ddim" else 30)
    sd = torch.tensor(std, dtype=F64)
    for k, w in enumerate((3.0, 0.5)):
        part = x[k * n:(k + 1) * n]
        target = (1 - w) * m_u + w * m_c
        assert ((part.mean(0) - target).abs() < 4 * sd / math.sqrt(n)).all(), (w, part.mean(0))
        assert ((part.std(0) / sd - 1).abs() < 4 / math.sqrt(2 * n) + 0.01).all(), part.std(0)


def test_inpainting_replacement_reproduces_the_conditional_of_independent_coordinates():
    # with independent coordinates the conditional of the unknown ones is their marginal:
    # replacement must leave it intact and paste the known ones exactly
    data = GaussianMixture.gaussian([0.5, -1.0, 2.0], [0.8, 1.3, 0.5])
    n = 4000
    y = torch.tensor([1.5, 0.0, -0.7], dtype=F64).expand(n, 3)
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    g = torch.Generator().manual_seed(4)
    x_T = pydiff.prior(SCHED, (n, 3), generator=g).to(F64)
    hook = pydiff.hooks.InpaintReplace(y, mask)
    x = pydiff.sample(data.denoiser(SCHED), x_T, "ddpm", steps=200, generator=g, hooks=[hook])
    assert torch.equal(x[:, 0], y[:, 0]) and torch.equal(x[:, 2], y[:, 2])
    assert abs(float(x[:, 1].mean()) + 1.0) < 4 * 1.3 / math.sqrt(n)
    assert abs(float(x[:, 1].std()) / 1.3 - 1) < 0.04  # DDPM(200) + sampling error


# -- RED-diff (pydiff.guidance.red_diff) ------------------------------------------------------
def _red_diff_fit(cov: list[list[float]], **kw):
    from pydiff.guidance import red_diff
    from pydiff.guidance.analytic import Gaussian

    prior = Gaussian(torch.zeros(2), torch.tensor(cov))
    model = prior.denoiser(pydiff.schedules.VPSchedule())
    return red_diff(model, lambda x: x[:, :1], torch.full((32, 1), 1.5), torch.zeros(32, 2),
                    steps=300, lr=0.05, generator=torch.Generator().manual_seed(0), **kw)


def test_red_diff_fits_the_measurement_and_fills_the_rest_from_the_prior():
    """Measure x1 = 1.5 under a Gaussian prior: RED-diff fits x1, and its regulariser (the
    exact denoiser's noise residual) moves the unmeasured x2 along the prior's correlation
    (posterior mean 0.8 * 1.5 = 1.2); without correlation x2 stays near the prior mean 0."""
    correlated = _red_diff_fit([[1.0, 0.8], [0.8, 1.0]])
    assert (correlated[:, 0] - 1.5).abs().max() < 0.05
    assert 0.6 < float(correlated[:, 1].mean()) < 1.4
    independent = _red_diff_fit([[1.0, 0.0], [0.0, 1.0]])
    assert abs(float(independent[:, 1].mean())) < 0.15
    # no regulariser: x2 never moves from its start
    assert torch.equal(_red_diff_fit([[1.0, 0.8], [0.8, 1.0]], weight=0.0)[:, 1],
                       torch.zeros(32))


def test_red_diff_never_backpropagates_through_the_model():
    from pydiff.guidance import red_diff

    grad_enabled = []

    def net(x, t):
        grad_enabled.append(torch.is_grad_enabled())
        return torch.zeros_like(x)

    model = pydiff.Denoiser(net, pydiff.schedules.VPSchedule(), prediction="eps")
    with torch.no_grad():  # it works under no_grad too (the data term needs its own graph)
        mu = red_diff(model, lambda x: 2 * x, torch.ones(3, 4), torch.zeros(3, 4), steps=50,
                      lr=0.1, weight=0.0)
    assert grad_enabled == [False] * 50 and (mu - 0.5).abs().max() < 0.1


# -- energy-based refinement (pydiff.guidance.refine) ---------------------------------------
def test_refine_descends_the_exact_denoising_energy_to_its_closed_form_minimum():
    """Prior N(0, I) on a VP schedule: the exact eps is sigma x_t, so the denoising energy's
    expected gradient is 2 sigma^2 alpha^2 x. With the observation energy s (x_0 - 2)^2 on the
    first coordinate, gradient descent settles where 2 s / (sigma^2 alpha^2 + s) balances them;
    the second coordinate, masked, never moves."""
    from pydiff.guidance import refine
    from pydiff.guidance.analytic import Gaussian

    model = Gaussian(torch.zeros(2), torch.eye(2)).denoiser(SCHED)
    t, s = 0.3, 0.5
    a2s2 = float(SCHED.alpha(torch.tensor(t, dtype=F64)) ** 2 * SCHED.sigma(
        torch.tensor(t, dtype=F64)) ** 2)
    x = torch.full((512, 2), 4.0)
    y = refine(model, x, lambda v: (v[:, 0] - 2.0) ** 2, steps=300, step_size=0.05,
               noise_scale=0.0, t=t, scale=s, mask=torch.tensor([1.0, 0.0]),
               generator=torch.Generator().manual_seed(0))
    want = 2 * s / (a2s2 + s)
    assert abs(float(y[:, 0].mean()) - want) < 0.03, (float(y[:, 0].mean()), want)
    assert torch.equal(y[:, 1], x[:, 1])
    # without the observation energy the descent goes to the prior's mode 0 (up to the
    # fluctuation of the energy's own noise)
    free = refine(model, x, steps=300, step_size=0.2, noise_scale=0.0, t=t,
                  generator=torch.Generator().manual_seed(0))
    assert abs(float(free.mean())) < 0.03 and float(free.abs().mean()) < 0.3
    assert torch.equal(refine(model, x, steps=0), x)
    with pytest.raises(pydiff.InputError, match="step_size"):
        refine(model, x, step_size=0.0)
    with pytest.raises(pydiff.InputError, match="steps"):
        refine(model, x, steps=-1)


def test_refine_langevin_noise_keeps_samples_spread_and_runs_under_inference_mode():
    from pydiff.guidance import refine
    from pydiff.guidance.analytic import Gaussian

    model = Gaussian(torch.zeros(2), torch.eye(2)).denoiser(SCHED)
    x = torch.zeros(2000, 2)
    with torch.inference_mode():
        y = refine(model, x, steps=40, step_size=0.05, noise_scale=1.0, t=0.3,
                   generator=torch.Generator().manual_seed(0))
    assert abs(float(y.mean())) < 0.1 and 0.5 < float(y.std()) < 3.0


def test_pinball_energy_weighs_under_and_over_by_the_level():
    from pydiff.guidance import pinball_energy

    target = torch.zeros(2, 3)
    energy = pinball_energy(target, torch.tensor([0.9, 0.1]), mask=torch.tensor([1.0, 1.0, 0.0]))
    x = torch.tensor([[-1.0, 2.0, 5.0], [-1.0, 2.0, 5.0]])
    # level q: q * (target - x) below the target, (1 - q) * (x - target) above; masked 5 ignored
    torch.testing.assert_close(energy(x), torch.tensor([0.9 + 0.1 * 2, 0.1 + 0.9 * 2]))
    with pytest.raises(ValueError, match="levels"):
        pinball_energy(target, torch.tensor([0.5, 1.0]))
