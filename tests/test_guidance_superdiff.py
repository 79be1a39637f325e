"""SuperDiff (model superposition) against closed forms: two Gaussian data models.

Model k is the exact denoiser of ``N(mu_k, c^2 I)`` data, whose marginals ``N(alpha mu_k,
(alpha^2 c^2 + sigma^2) I)`` are known, so the Itô density estimator, OR (the mixture) and AND
(equal densities: ``x_1 = 0`` for ``mu = +-m e_1``, while ``x_2`` keeps the models' common
``N(0, c^2)``; the normalized product would be ``N(0, c^2 / 2)``) are checked exactly or within
sampling error.
"""

import math

import pytest
import torch

import pydiff
from pydiff.categorical import CategoricalProcess, JointDenoiser, JointSolver
from pydiff.guidance import SuperDiff, Superposition
from pydiff.guidance.superdiff import combine

F64 = torch.float64
SCHED = pydiff.VPSchedule()
C, M, D = 0.5, 2.0, 2


class GaussianData(pydiff.Model):
    def __init__(self, mean, c=C):
        super().__init__(SCHED)
        self.mean, self.c = torch.as_tensor(mean, dtype=F64), c

    def evaluate(self, x, t, **cond):
        t = pydiff.schedules.as_time(t, x.device)
        a, s = SCHED.alpha(t), SCHED.sigma(t)
        gain = a * self.c**2 / (a**2 * self.c**2 + s**2)
        x0 = self.mean + gain * (x.to(F64) - a * self.mean)
        return pydiff.Prediction.from_x0(x, x0.to(x.dtype), a, s)

    def log_density(self, x, t):
        t = torch.as_tensor(t, dtype=F64)
        a, s = SCHED.alpha(t), SCHED.sigma(t)
        v = a**2 * self.c**2 + s**2
        return (-(x.to(F64) - a * self.mean).pow(2).sum(-1) / (2 * v)
                - D / 2 * torch.log(2 * math.pi * v))


def pair():
    return GaussianData([M, 0.0]), GaussianData([-M, 0.0])


def run(mode, n=4000, steps=200, seed=0, **kw):
    a, b = pair()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=F64)
    seen = []
    state = pydiff.sample(Superposition(a, b), x, SuperDiff("ddpm", mode, **kw), steps=steps,
                          generator=g, return_state=True, callback=lambda s: seen.append(s))
    return state, x, seen


def test_ito_density_estimate_tracks_the_exact_log_densities():
    models = pair()
    errors = {}
    for steps in (100, 400):
        state, x_T, seen = run("or", n=500, steps=steps)
        grid, logq = state.grid, state.aux[1]
        # the common divergence term the tracked values leave out
        divergence = D * torch.log(SCHED.alpha(grid[0]) / SCHED.alpha(grid[-1]))
        exact = models[0].log_density(state.x, grid[-1]) - models[0].log_density(x_T, grid[0])
        err = logq[:, 0] + divergence - exact
        errors[steps] = (err.mean().abs().item(), err.abs().mean().item())
        assert err.abs().mean() < 0.12 * exact.abs().mean()
    # a pathwise estimate: its bias falls as 1 / steps, its spread as 1 / sqrt(steps)
    (bias100, spread100), (bias400, spread400) = errors[100], errors[400]
    assert bias400 < 0.35 * bias100 and spread400 < 0.6 * spread100, errors
    assert bias400 < 0.02 * 15  # |log q| changes by about 15 nats over the run
    # along the way, the tracked gap between the models is the exact gap (both start at 0)
    for st in seen[::50]:
        t = st.grid[st.i]
        gap = models[0].log_density(st.x, t) - models[1].log_density(st.x, t)
        gap0 = models[0].log_density(x_T, grid[0]) - models[1].log_density(x_T, grid[0])
        tracked = st.aux[1][:, 0] - st.aux[1][:, 1]
        assert (tracked - (gap - gap0)).abs().mean() < 0.05 * (gap.abs().mean() + 1)


def test_or_samples_the_mixture():
    state, _, _ = run("or")
    x = state.x
    right = x[:, 0] > 0
    n = x.shape[0]
    assert abs(right.double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / n)
    for side, sign in ((right, 1.0), (~right, -1.0)):
        assert abs(x[side, 0].mean().item() - sign * M) < 0.05
        assert abs(x[side, 0].std().item() - C) < 0.05 * C
    assert abs(x[:, 1].std().item() - C) < 0.05 * C
    # bias sets the mixture weights: log 0.8 / log 0.2 gives 80% from model 1
    biased, _, _ = run("or", seed=1, bias=[math.log(0.8), math.log(0.2)])
    frac = (biased.x[:, 0] > 0).double().mean().item()
    assert abs(frac - 0.8) < 5 * math.sqrt(0.16 / n)


def test_and_samples_where_the_densities_are_equal():
    state, _, _ = run("and")
    x = state.x
    a, b = pair()
    # equal densities: x_1 = 0 (the exact clean log densities agree)
    assert x[:, 0].abs().max() < 0.05 * C
    assert (a.log_density(x, 0.0) - b.log_density(x, 0.0)).abs().max() < 0.5
    # x_2 keeps the common marginal N(0, c^2): this is not the normalized product N(0, c^2/2)
    assert abs(x[:, 1].std().item() - C) < 0.05 * C
    assert abs(x[:, 1].mean().item()) < 5 * C / math.sqrt(x.shape[0])
    # the tracked log densities of the two models stay equal at every step
    assert (state.aux[1][:, 0] - state.aux[1][:, 1]).abs().max() < 1e-6


def test_and_with_clipped_weights_is_a_softer_and():
    state, _, _ = run("and", n=2000, kappa_range=(0.0, 1.0))
    assert state.aux[2].min() >= 0 and state.aux[2].max() <= 1
    # the gaps a clipped step leaves are closed by the next steps: still near x_1 = 0
    assert state.x[:, 0].abs().mean() < 0.1 * C
    assert abs(state.x[:, 1].std().item() - C) < 0.05 * C
    with pytest.raises(pydiff.InputError, match="kappa_range"):
        SuperDiff("ddpm", "and", kappa_range=(1.0, 0.0))


def test_and_with_a_multistep_solver_and_a_generator_list():
    a, b = pair()
    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(9), dtype=F64)
    state = pydiff.sample(Superposition(a, b), x, SuperDiff("dpmpp_2m", "and"), steps=50,
                          generator=gens, return_state=True)
    assert state.x[:, 0].abs().max() < 0.05 * C and state.nfe == 2 * 50


def test_combine_pools_class_probabilities():
    p1 = torch.tensor([[[0.7, 0.2, 0.1]]], dtype=F64)
    p2 = torch.tensor([[[0.1, 0.2, 0.7]]], dtype=F64)
    pred = pydiff.Prediction.of(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))
    w = torch.tensor([[0.25, 0.75]], dtype=F64)
    _, mix = combine([(pred, {"t": p1}), (pred, {"t": p2})], w, "mixture")
    assert torch.allclose(mix["t"], 0.25 * p1 + 0.75 * p2)
    _, geo = combine([(pred, {"t": p1}), (pred, {"t": p2})], w, "geometric")
    want = p1**0.25 * p2**0.75
    assert torch.allclose(geo["t"], want / want.sum(-1, keepdim=True))
    # AND weights outside [0, 1] (the continuous part may extrapolate) are clipped for classes
    _, clipped = combine([(pred, {"t": p1}), (pred, {"t": p2})],
                         torch.tensor([[1.5, -0.5]], dtype=F64), "geometric")
    assert torch.allclose(clipped["t"], p1)


def test_joint_models_superpose_through_the_joint_solver():
    proc = CategoricalProcess(3)

    def net(shift):
        def f(x, t):
            logits = torch.zeros(*x["type"].shape[:-1], 3)
            logits[..., 0] = shift
            return {"pos": 0.1 * x["pos"] + shift, "type": logits}
        return f

    models = [JointDenoiser(net(s), SCHED, {"type": proc}, fixed=("mask",)) for s in (1.0, -1.0)]
    g = torch.Generator().manual_seed(0)
    x = {"pos": torch.randn(5, 4, 3, generator=g), "type": proc.prior((5, 4), g),
         "mask": torch.ones(5, 4, dtype=torch.bool)}
    for mode in ("or", "and"):
        out = pydiff.sample(Superposition(*models), x, SuperDiff(JointSolver("ddpm"), mode),
                            steps=5, generator=g, return_state=True)
        assert out.x["pos"].shape == (5, 4, 3) and out.x["type"].dtype == torch.int64
        assert torch.isfinite(out.aux[1]).all() and out.nfe == 10


def test_bad_arguments_name_the_culprit():
    a, b = pair()
    with pytest.raises(pydiff.InputError, match="mode"):
        SuperDiff("ddpm", "xor")
    with pytest.raises(pydiff.InputError, match="two or more"):
        Superposition(a)
    with pytest.raises(pydiff.InputError, match="schedules differ"):
        other = GaussianData([0.0, 0.0])
        other.schedule = pydiff.schedules.DiscreteSchedule.linear()
        Superposition(a, other)
    with pytest.raises(pydiff.InputError, match="two models"):
        pydiff.sample(Superposition(a, b, GaussianData([0.0, M])), torch.randn(3, D),
                      SuperDiff("ddpm", "and"), steps=2)
    with pytest.raises(TypeError, match="Superposition"):
        pydiff.sample(a, torch.randn(3, D), SuperDiff("ddpm"), steps=2)
