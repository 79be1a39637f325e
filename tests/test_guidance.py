"""Guidance wrappers, hooks and resampling: behaviour, composition, gradients and memory."""

import gc
import warnings

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
from pydiff.testing import GaussianMixture

F64 = torch.float64
SCHED = pydiff.VPSchedule()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class CountingNet(torch.nn.Module):
    """A small conditional MLP eps-network that counts its calls and batch sizes."""

    def __init__(self, dim=3, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(dim + 1, dim)
        self.emb = torch.nn.Embedding(classes, dim)
        self.batches = []

    def forward(self, x, t, label=None):
        self.batches.append(x.shape[0])
        h = self.lin(torch.cat([x, t[:, None].to(x.dtype)], 1))
        return torch.tanh(h) + (0 if label is None else self.emb(label))


def _model(dim=3):
    return pydiff.Denoiser(CountingNet(dim), SCHED, prediction="eps", time_input="t")


# -- classifier-free guidance -------------------------------------------------------------------

def test_cfg_runs_one_batched_forward_with_per_sample_scales():
    base = _model()
    labels = torch.tensor([1, 2, 3])
    w = torch.tensor([0.0, 1.0, 4.0])
    cfg = ClassifierFreeGuidance(base, scale=w, uncond={"label": torch.zeros(1, dtype=torch.long)})
    x = torch.randn(3, 3, generator=_gen())
    base.net.batches.clear()
    x0, eps = cfg.predict(x, 0.4, label=labels)
    assert base.net.batches == [6]  # cond and uncond in one forward
    e_c = base.eps(x, 0.4, label=labels)
    e_u = base.eps(x, 0.4, label=torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(eps, e_u + w[:, None] * (e_c - e_u))
    a, s = SCHED.alpha(0.4).float(), SCHED.sigma(0.4).float()
    torch.testing.assert_close(x, a * x0 + s * eps)  # consistent pair


def test_cfg_pairs_nested_and_shared_conditioning():
    seen = {}

    def net(x, t, context, extra):
        seen.update(context=context, extra=extra)
        return context["emb"] * extra["shared"]

    base = pydiff.Denoiser(net, SCHED, prediction="eps", time_input="t")
    cfg = ClassifierFreeGuidance(base, 2.0, uncond={"context": {"emb": torch.zeros(1, 2)}})
    emb, shared = torch.ones(2, 2), torch.full((2, 2), 3.0)
    eps = cfg.eps(torch.zeros(2, 2), 0.5, context={"emb": emb}, extra={"shared": shared})
    assert seen["context"]["emb"].shape == (4, 2) and seen["context"]["emb"][2:].abs().sum() == 0
    assert torch.equal(seen["extra"]["shared"], torch.cat([shared, shared]))
    torch.testing.assert_close(eps, torch.full((2, 2), 6.0))


def test_cfg_rescale_matches_diffusers_guidance_rescale():
    guider_utils = pytest.importorskip("diffusers.guiders.guider_utils")
    base = _model()
    x = torch.randn(4, 3, generator=_gen(1))
    labels = torch.tensor([0, 1, 2, 3])
    null = {"label": torch.full((1,), 3, dtype=torch.long)}
    plain = ClassifierFreeGuidance(base, 5.0, null)
    resc = ClassifierFreeGuidance(base, 5.0, null, rescale=0.7)
    e_c = base.eps(x, 0.3, label=labels)
    expected = guider_utils.rescale_noise_cfg(plain.eps(x, 0.3, label=labels), e_c, 0.7)
    torch.testing.assert_close(resc.eps(x, 0.3, label=labels), expected)
    # rescale=1 on x0 restores the conditional per-sample std exactly
    full = ClassifierFreeGuidance(base, 5.0, null, rescale=1.0, rescale_on="x0")
    torch.testing.assert_close(full.x0(x, 0.3, label=labels).std(1),
                               base.x0(x, 0.3, label=labels).std(1))


def test_cfg_rejects_bad_uncond():
    with pytest.raises(ValueError, match="uncond"):
        ClassifierFreeGuidance(_model(), 2.0, uncond={})
    cfg = ClassifierFreeGuidance(_model(), 2.0, uncond={"label": torch.zeros(1, dtype=torch.long)})
    with pytest.raises(ValueError, match="label"):
        cfg.eps(torch.zeros(2, 3), 0.5)  # no conditional label given


# -- x0 projections --------------------------------------------------------------------------------

def test_dynamic_thresholding_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9,
                                  sample_max_value=1.5)
    x0 = 2.5 * torch.randn(3, 2, 4, 4, generator=_gen(2))
    x0[0] *= 0.1  # one sample inside [-1, 1]: left unchanged
    model = DynamicThresholding(
        pydiff.Denoiser(lambda x, t: x, pydiff.EDMSchedule(), prediction="x0", time_input="t"),
        percentile=0.9, max_value=1.5)
    out = model.x0(x0, 1.0)
    torch.testing.assert_close(out, sch._threshold_sample(x0))
    torch.testing.assert_close(out[0], x0[0])


def test_projections_keep_x_equal_alpha_x0_plus_sigma_eps():
    base = _model()
    x = 3 * torch.randn(5, 3, generator=_gen(3))
    for model in (ClipX0(base, 0.5), DynamicThresholding(base, 0.8),
                  ProjectX0(base, lambda x0, t: x0 * 0 + 1)):
        x0, eps = model.predict(x, 0.6)
        a, s = SCHED.alpha(0.6).float(), SCHED.sigma(0.6).float()
        torch.testing.assert_close(a * x0 + s * eps, x)
    assert ClipX0(base, 0.5).x0(x, 0.6).abs().max() <= 0.5


# -- gradient guidance ----------------------------------------------------------------------------

def _identity_x0_model():
    # x0_hat = x: the correction is visible exactly
    return pydiff.Denoiser(lambda x, t: x, SCHED, prediction="x0", time_input="t")


def test_dps_step_is_zeta_over_residual_norm():
    A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    zeta = torch.tensor([0.3, 1.5])
    x = torch.randn(2, 3, generator=_gen(4))
    model = MeasurementGuidance(_identity_x0_model(), lambda x0: x0 @ A.T, y, step="dps",
                                scale=zeta)
    r = y - x @ A.T
    grad = 2 * r @ A / r.norm(dim=1, keepdim=True)  # grad of -||r||^2, normalised by ||r||
    a, s = SCHED.alpha(0.5).float(), SCHED.sigma(0.5).float()
    torch.testing.assert_close(model.x0(x, 0.5), x + s**2 / a * zeta[:, None] * grad)
    fixed = MeasurementGuidance(_identity_x0_model(), lambda x0: x0 @ A.T, y, step="fixed",
                                scale=0.1)
    torch.testing.assert_close(fixed.eps(x, 0.5), (x - a * x) / s - s * 0.1 * 2 * r @ A)


def test_self_guidance_quantile_and_mse():
    obs = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    x = torch.tensor([[0.0, 2.0, 5.0, 5.0]]).expand(4, 4).contiguous()
    model = SelfGuidance(_identity_x0_model(), obs, mask, loss="quantile", scale=2.0, quantiles=2)
    q = torch.tensor([1 / 3, 2 / 3, 1 / 3, 2 / 3])  # TSDiff's layout: K levels per series
    a, s = SCHED.alpha(0.2).float(), SCHED.sigma(0.2).float()
    # below the observation the pinball gradient pushes up by q, above it down by 1 - q
    grad = torch.stack([q, q - 1, 0 * q, 0 * q], 1)
    torch.testing.assert_close(model.x0(x, 0.2), x + s**2 / a * 2.0 * grad)
    mse = SelfGuidance(_identity_x0_model(), obs, mask, loss="mse", scale=1.0)
    like = MeasurementGuidance(_identity_x0_model(), lambda x0: mask * x0, mask * obs,
                               step="likelihood", noise_std=0.5**0.5)
    torch.testing.assert_close(mse.x0(x, 0.2), like.x0(x, 0.2))


def test_reward_guidance_on_xt_needs_no_network_gradient():
    calls = []

    def net(x, t):
        calls.append(x.requires_grad)
        return torch.zeros_like(x)

    model = RewardGuidance(pydiff.Denoiser(net, SCHED, time_input="t"),
                           lambda x, t: -(x - 1).pow(2).sum(1), scale=0.5, on="xt")
    x = torch.zeros(2, 3)
    s = SCHED.sigma(0.5).float()
    torch.testing.assert_close(model.eps(x, 0.5), -s * 0.5 * 2 * torch.ones(2, 3))
    assert calls == [False]


def test_dps_inverse_problem_lands_on_consistent_modes():
    ring = GaussianMixture.ring(8, 2.0, 0.05)
    y = torch.full((64, 1), 2.0, dtype=F64)  # observe the x coordinate: modes at angle 0 (and +-45)
    base = ring.denoiser(SCHED)
    guided = MeasurementGuidance(base, lambda x0: x0[:, :1], y, step="dps", scale=1.0)
    x_T = pydiff.prior(SCHED, (64, 2), generator=_gen(5)).to(F64)
    with torch.no_grad():
        plain = pydiff.sample(base, x_T, "ddim", steps=50)
        x = pydiff.sample(guided, x_T, "ddim", steps=50)
    assert (x[:, 0] - 2).abs().mean() < 0.5 * (plain[:, 0] - 2).abs().mean()
    assert (x.norm(dim=1) - 2).abs().max() < 0.5  # still on the ring: the prior is respected


def test_gradient_guidance_under_no_grad_and_inference_mode_matches_grad_mode():
    base = _model()
    y = torch.ones(4, 1)
    model = MeasurementGuidance(base, lambda x0: x0[:, :1], y, step="dps", scale=0.5)
    x = torch.randn(4, 3, generator=_gen(6))
    ref = model.x0(x, 0.5, label=None)
    with torch.no_grad():
        out = model.x0(x, 0.5)
    with torch.inference_mode():
        out_inf = model.x0(x, 0.5)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_inf, ref)
    assert not ref.requires_grad and ref.grad_fn is None  # nothing leaks to the caller
    assert (out - model.model.x0(x, 0.5)).abs().max() > 0  # the guidance did act


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():  # isinstance on deprecated torch aliases warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_gradient_guidance_memory_is_flat_over_200_steps():
    base = _model()
    model = MeasurementGuidance(
        ClassifierFreeGuidance(DynamicThresholding(base), 3.0,
                               {"label": torch.zeros(1, dtype=torch.long)}),
        lambda x0: x0[:, :2], torch.ones(8, 2), step="dps", scale=0.5,
    ).bind(label=torch.ones(8, dtype=torch.long))
    counts = {}

    def record(state):
        if state.i in (10, 100, 200):
            counts[state.i] = _live_tensors()

    with torch.no_grad():
        x = pydiff.sample(model, torch.randn(8, 3, generator=_gen(7)), "dpmpp_2m", steps=200,
                          callback=record)
    assert counts[10] == counts[100] == counts[200], counts
    assert x.grad_fn is None and not x.requires_grad


def test_nested_gradient_guidance_differentiates_through_the_inner_one():
    # the outer guidance sees the inner prediction with its graph attached
    base = _identity_x0_model()
    inner = RewardGuidance(base, lambda x0: -(x0**2).sum(1), scale=0.1)
    outer = RewardGuidance(inner, lambda x0: x0[:, 0], scale=0.2)
    x = torch.randn(3, 2, generator=_gen(8))
    a, s = SCHED.alpha(0.5).float(), SCHED.sigma(0.5).float()
    k = s**2 / a
    inner_x0 = x + k * 0.1 * (-2 * x)
    # d/dx of the inner x0 with its correction held constant is the identity
    expected = inner_x0 + k * 0.2 * torch.tensor([1.0, 0.0])
    with torch.no_grad():
        torch.testing.assert_close(outer.x0(x, 0.5), expected)


def test_composed_guidance_samples_with_every_solver():
    base = _model()
    model = MeasurementGuidance(
        ClassifierFreeGuidance(DynamicThresholding(base), 3.0,
                               {"label": torch.zeros(1, dtype=torch.long)}),
        lambda x0: x0[:, :1], torch.ones(4, 1), step="dps",
    ).bind(label=torch.full((4,), 2))
    for name in pydiff.available_solvers():
        x = pydiff.sample(model, torch.randn(4, 3, generator=_gen(9)), name, steps=4,
                          generator=_gen(10))
        assert x.shape == (4, 3) and torch.isfinite(x).all()


def test_gradient_guidance_on_dict_states():
    def net(x, t):
        return {k: torch.zeros_like(v) for k, v in x.items()}

    base = pydiff.Denoiser(net, SCHED, prediction="eps", time_input="t")
    model = GradientGuidance(base, lambda x0, x, t: -(x0["pos"] ** 2).sum((1, 2)), scale=1.0)
    x = {"pos": torch.randn(2, 4, 3, generator=_gen(11)), "h": torch.randn(2, 4, 5)}
    x0, eps = model.predict(x, 0.5)
    assert torch.equal(eps["h"], torch.zeros(2, 4, 5))
    assert eps["pos"].abs().sum() > 0


def test_measurement_batch_mismatch_names_the_fix():
    model = MeasurementGuidance(_model(), lambda x0: x0[:, :1], torch.ones(3, 1))
    with pytest.raises(ValueError, match="measurement"):
        model.x0(torch.zeros(2, 3), 0.5)


# -- hooks and resampling ------------------------------------------------------------------------

def test_data_consistency_cg_matches_pseudo_inverse():
    A = torch.randn(2, 5, generator=_gen(12), dtype=F64)
    y = torch.randn(3, 2, generator=_gen(13), dtype=F64)
    x = torch.randn(3, 5, generator=_gen(14), dtype=F64)
    pinv = torch.linalg.pinv(A)
    exact = DataConsistency(lambda v: v @ A.T, y, pinv=lambda r: r @ pinv.T)
    cg = DataConsistency(lambda v: v @ A.T, y, iterations=5)
    torch.testing.assert_close(cg.project(x), exact.project(x))
    torch.testing.assert_close(exact.project(x) @ A.T, y)


def test_data_consistency_damping_is_the_proximal_step():
    # argmin_z ||A z - y||^2 + lam ||z - x||^2 = x + (A^T A + lam)^-1 A^T (y - A x), exactly
    A = torch.randn(3, 6, generator=_gen(40), dtype=F64)
    y = torch.randn(4, 3, generator=_gen(41), dtype=F64)
    x = torch.randn(4, 6, generator=_gen(42), dtype=F64)
    lam = 0.7
    closed = x + torch.linalg.solve(A.T @ A + lam * torch.eye(6, dtype=F64),
                                    A.T @ (y - x @ A.T).T).T
    for adjoint in (None, lambda r: r @ A):  # autograd's VJP and an explicit A^T
        dc = DataConsistency(lambda v: v @ A.T, y, adjoint=adjoint, iterations=6, damping=lam)
        torch.testing.assert_close(dc.project(x), closed)
    # damping pulls toward x: the residual is larger than the exact projection's (zero)
    assert float((closed @ A.T - y).norm()) > 0.1
    with pytest.raises(ValueError, match="damping"):
        DataConsistency(lambda v: v @ A.T, y, damping=-1.0)


def test_data_consistency_level_weighted_damping():
    # the noise-weighted proximal step: damping / level^2, per sample, and from the hook's
    # sigma / alpha
    from pydiff.hooks import StepContext
    A = torch.randn(3, 6, generator=_gen(43), dtype=F64)
    y = torch.randn(4, 3, generator=_gen(44), dtype=F64)
    x = torch.randn(4, 6, generator=_gen(45), dtype=F64)

    def dc(damping, **kw):
        return DataConsistency(lambda v: v @ A.T, y, adjoint=lambda r: r @ A, iterations=6,
                               damping=damping, **kw)

    weighted = dc(0.2, level_weighted=True, noise="none")
    torch.testing.assert_close(weighted.project(x, level=0.5), dc(0.8).project(x))
    levels = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=F64)
    per_sample = weighted.project(x, level=levels)
    for i, level in enumerate(levels.tolist()):
        torch.testing.assert_close(per_sample[i], dc(0.2 / level ** 2).project(x)[i])
    ctx = StepContext(step=0, t=torch.tensor(0.5, dtype=F64), alpha=torch.tensor(0.8, dtype=F64),
                      sigma=torch.tensor(0.6, dtype=F64))
    torch.testing.assert_close(weighted(x, ctx), dc(0.2 / 0.75 ** 2).project(x, 0.8 * y))
    # a constant damping ignores the level; at the final step (sigma = 0) x barely moves
    torch.testing.assert_close(dc(0.2, noise="none")(x, ctx), dc(0.2).project(x, 0.8 * y))
    final = StepContext(step=1, t=torch.tensor(0.0, dtype=F64), alpha=torch.tensor(1.0, dtype=F64),
                        sigma=torch.tensor(0.0, dtype=F64), final=True)
    assert float((weighted(x, final) - x).abs().max()) < 1e-6
    assert "level^2" in repr(weighted)


def test_tv_pdhg_solves_the_anchored_problem():
    # min 1/2 ||A x - y||^2 / ||A||^2 + w TV(x) + a/2 ||x - anchor||^2: the solution's objective
    # is below the anchor's and plain TV's; a huge anchor weight returns the anchor
    from pydiff.guidance.tv import divergence2d, gradient2d, operator_norm, tv_pdhg
    g = _gen(50)
    x = torch.zeros(2, 1, 12, 12, dtype=F64)
    x[..., 3:9, 3:9] = 1.0
    A = torch.randn(60, 144, generator=g, dtype=F64)

    def fwd(v):
        return (v.reshape(v.shape[0], -1) @ A.T)[:, None]

    def adj(r):
        return (r[:, 0] @ A).reshape(-1, 1, 12, 12)

    y = fwd(x) + 0.05 * torch.randn(2, 1, 60, generator=g, dtype=F64)
    anchor = x + 0.2 * torch.randn(x.shape, generator=g, dtype=F64)
    norm = operator_norm(fwd, adj, x)
    w, a = 0.02, 0.3

    def objective(v):
        tv = gradient2d(v).pow(2).sum(-3).sqrt().sum()
        return float(0.5 * (fwd(v) - y).pow(2).sum() / norm ** 2 + w * tv
                     + a / 2 * (v - anchor).pow(2).sum())

    plain = tv_pdhg(fwd, adj, y, w, iterations=500)
    anchored = tv_pdhg(fwd, adj, y, w, anchor=anchor, anchor_weight=a, iterations=500)
    assert objective(anchored) < min(objective(plain), objective(anchor)) - 1e-3
    stiff = tv_pdhg(fwd, adj, y, w, anchor=anchor, anchor_weight=1e6, iterations=20)
    torch.testing.assert_close(stiff, anchor, atol=1e-4, rtol=0)
    assert torch.allclose((gradient2d(x) * gradient2d(anchor)).sum(),
                          -(x * divergence2d(gradient2d(anchor))).sum())
    with pytest.raises(pydiff.InputError, match="anchor"):
        tv_pdhg(fwd, adj, y, w, anchor_weight=0.1)


def test_data_consistency_hook_ends_on_the_measurement():
    A = torch.randn(2, 4, generator=_gen(15), dtype=F64)
    y = torch.randn(6, 2, generator=_gen(16), dtype=F64)
    data = GaussianMixture.gaussian([0.0] * 4, [1.0] * 4)
    hook = DataConsistency(lambda v: v @ A.T, y, iterations=8)
    x_T = pydiff.prior(SCHED, (6, 4), generator=_gen(17)).to(F64)
    x = pydiff.sample(data.denoiser(SCHED), x_T, "ddpm", steps=20, generator=_gen(18),
                      hooks=[hook])
    torch.testing.assert_close(x @ A.T, y)


def test_resampling_with_one_jump_is_the_base_solver_and_counts_evaluations():
    data = GaussianMixture.gaussian([0.5, -0.5], [1.0, 0.5])
    model = data.denoiser(SCHED)
    x_T = pydiff.prior(SCHED, (4, 2), generator=_gen(19)).to(F64)
    ref = pydiff.sample(model, x_T, "ddpm", steps=10, generator=_gen(20))
    one = pydiff.sample(model, x_T, Resampling("ddpm", jumps=1), steps=10, generator=_gen(20))
    torch.testing.assert_close(one, ref)
    state = pydiff.sample(model, x_T, Resampling("dpmpp_2m", jumps=4), steps=10,
                          generator=_gen(21), return_state=True)
    assert state.nfe == 9 * 4 + 1
    # RePaint's schedule: spans of 3 steps at i = 0, 3, 6 (steps 0-8; the final step 9 is never
    # resampled), each passed 4 times
    state = pydiff.sample(model, x_T, Resampling("ddpm", jumps=4, jump_length=3), steps=10,
                          generator=_gen(21), return_state=True)
    assert state.nfe == 10 + 3 * (3 + 3 + 3)
    assert state.flags["resample_span"] == (3, 0, 0, 3, 0, 0, 3, 0, 0, 0)


def test_resampling_pulls_inpainting_towards_the_conditional():
    # correlated Gaussian (corr 0.9): plain replacement conditions on the *noisy* known value and
    # is biased; RePaint's jumps reduce the error of the conditional mean
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)

    def net(x, t):
        a, s = SCHED.alpha(t[0]), SCHED.sigma(t[0])
        gain = a * cov @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(2, dtype=F64))
        return (x - a * (x @ gain.T)) / s

    model = pydiff.Denoiser(net, SCHED, prediction="eps", time_input="t")
    n, y = 2000, 1.5
    known = torch.tensor([[y, 0.0]], dtype=F64).expand(n, 2)
    hook = pydiff.hooks.InpaintReplace(known, torch.tensor([1.0, 0.0], dtype=F64))
    x_T = pydiff.prior(SCHED, (n, 2), generator=_gen(22)).to(F64)
    target = 0.9 * y
    errors = []
    for solver in ("ddpm", Resampling("ddpm", jumps=10), Resampling("ddpm", 10, jump_length=5)):
        x = pydiff.sample(model, x_T, solver, steps=50, generator=_gen(23), hooks=[hook])
        errors.append(abs(float(x[:, 1].mean()) - target))
    assert errors[1] < 0.5 * errors[0] and errors[2] < 0.5 * errors[0], errors


def test_wrappers_carry_mean_reverting_conditioning():
    # SGMSE+-style schedule: the state is x - y; the wrappers must pass y through and
    # pydiff.sample must find the shift through them
    sched = pydiff.MeanRevertingSchedule()
    data = GaussianMixture.gaussian([0.0, 0.0], [0.3, 0.3])  # law of x0 - y
    y = torch.tensor([[1.0, -2.0], [0.5, 0.5]], dtype=F64)
    base = data.denoiser(sched)
    model = RewardGuidance(ClipX0(base, 10.0), lambda x0: -(x0**2).sum(1), scale=0.0).bind(y=y)
    assert torch.equal(model.shift, y)
    x_T = pydiff.prior(sched, (2, 2), generator=_gen(30), mean=y).to(F64)
    ref = pydiff.sample(base.bind(y=y), x_T, "ddim", steps=8)
    torch.testing.assert_close(pydiff.sample(model, x_T, "ddim", steps=8), ref)


def test_cfg_with_per_position_times():
    seen = []

    def net(x, t, label):
        seen.append(t.shape)
        return 0.1 * x * t.to(x.dtype) + label[:, None, None].to(x.dtype)

    base = pydiff.Denoiser(net, SCHED, prediction="eps", time_input="t")
    cfg = ClassifierFreeGuidance(base, 2.0, {"label": torch.zeros(1)})
    x = torch.randn(3, 4, 2, generator=_gen(31))
    t = torch.linspace(0.2, 0.9, 4, dtype=F64)[None, :, None].expand(3, 4, 1)  # per position
    eps = cfg.eps(x, t, label=torch.ones(3))
    assert seen[-1] == (6, 4, 1)
    e_c, e_u = base.eps(x, t, label=torch.ones(3)), base.eps(x, t, label=torch.zeros(3))
    torch.testing.assert_close(eps, e_u + 2.0 * (e_c - e_u))


def test_cfg_scale_schedule_and_x0_data_consistency():
    base = _model()
    null = {"label": torch.zeros(1, dtype=torch.long)}
    # guidance interval: guide only at high noise (a callable of the float64 time)
    interval = ClassifierFreeGuidance(base, lambda t: torch.where(t > 0.5, 3.0, 1.0), null)
    x, labels = torch.randn(2, 3, generator=_gen(40)), torch.tensor([1, 2])
    torch.testing.assert_close(interval.eps(x, 0.2, label=labels), base.eps(x, 0.2, label=labels))
    torch.testing.assert_close(interval.eps(x, 0.8, label=labels),
                               ClassifierFreeGuidance(base, 3.0, null).eps(x, 0.8, label=labels))
    # DDNM-style: project x0-hat onto A x0 = y inside the model
    A = torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([[2.0], [-1.0]])
    dc = DataConsistency(lambda v: v @ A.T, y, adjoint=lambda r: r @ A, iterations=3)
    model = ProjectX0(base, lambda x0, t: dc.project(x0))
    x0, eps = model.predict(x, 0.5, label=labels)
    torch.testing.assert_close(x0 @ A.T, y)
    a, s = SCHED.alpha(0.5).float(), SCHED.sigma(0.5).float()
    torch.testing.assert_close(a * x0 + s * eps, x)
