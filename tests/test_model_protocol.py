"""The model protocol: Model.evaluate -> Prediction, and the solvers' fused use of it.

A Denoiser hands solvers the network output and its parameterization's linear map; the
solvers fold the map into their step (ops.lincomb_multi). These tests check that the fused
steps give what materializing x0/eps first gives, for every solver and parameterization, that
gradients flow through them, and that models of one's own (the docs/api.md example) and the
guidance wrappers implement the same protocol.
"""

from __future__ import annotations

import pytest
import torch

import pydiff
from pydiff.guidance import ClassifierFreeGuidance, DynamicThresholding, Guided
from pydiff.solvers import available_solvers, get_solver

SCHED = pydiff.DiscreteSchedule.scaled_linear()
F64 = torch.float64


class Materialized(Guided):
    """The wrapped model with x0 and eps materialized (the pre-fusion path, as reference)."""

    def evaluate(self, x, t, **cond):
        return pydiff.Prediction.of(*self.inner(x, t, **cond).predictions())


def _net(x, t):
    # a smooth, state-dependent network output of either parameterization
    return 0.3 * torch.tanh(x) + 0.05 * x


SOLVERS = [s for s in available_solvers() if s not in ("ddim_inversion", "bdia_inversion")]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_fused_steps_match_materialized_predictions(solver, prediction):
    model = pydiff.Denoiser(_net, SCHED, prediction=prediction)
    x_T = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    fused = pydiff.sample(model, x_T, solver, steps=6, generator=torch.Generator().manual_seed(1))
    ref = pydiff.sample(Materialized(model), x_T, solver, steps=6,
                        generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fused, ref, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("prediction,precond", [("score", None), ("velocity", None),
                                                ("x0", "edm"), ("x0", None)])
@pytest.mark.parametrize("grid_kind", ["scalar", "per_sample", "per_position"])
def test_fused_step_every_parameterization_and_coefficient_shape(prediction, precond, grid_kind):
    sched = pydiff.VPSchedule()
    model = pydiff.Denoiser(_net, sched, prediction=prediction, precond=precond)
    x_T = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    grid = pydiff.timesteps(sched, 5, "logsnr", final_zero=False)
    if grid_kind == "per_sample":
        grid = grid[:, None] * torch.tensor([1.0, 0.9, 0.8], dtype=F64)
    elif grid_kind == "per_position":
        grid = grid[:, None, None] * torch.linspace(0.7, 1.0, 5, dtype=F64)
    for solver in ("dpmpp_2m", "unipc", "heun"):
        fused = pydiff.sample(model, x_T, solver, grid=grid)
        ref = pydiff.sample(Materialized(model), x_T, solver, grid=grid)
        torch.testing.assert_close(fused, ref, atol=1e-9, rtol=1e-9)


def test_mean_reverting_x0_network_folds_the_shift():
    sched = pydiff.MeanRevertingSchedule()
    y = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    model = pydiff.Denoiser(lambda x, t, y: 0.5 * x + 0.2 * y, sched, prediction="x0").bind(y=y)
    x_T = pydiff.prior(sched, (2, 6), generator=torch.Generator().manual_seed(4), mean=y).double()
    fused = pydiff.sample(model, x_T, "dpmpp_2m", steps=5)
    ref = pydiff.sample(Materialized(model), x_T, "dpmpp_2m", steps=5)
    torch.testing.assert_close(fused, ref, atol=1e-9, rtol=1e-9)


def test_half_precision_network_output_keeps_a_float32_state():
    out32 = torch.randn(2, 64, generator=torch.Generator().manual_seed(5)) * 0.1
    out16 = out32.half()
    half = pydiff.Denoiser(lambda x, t: out16, SCHED, prediction="eps")
    full = pydiff.Denoiser(lambda x, t: out16.float(), SCHED, prediction="eps")
    x_T = torch.randn(2, 64, generator=torch.Generator().manual_seed(6))
    a = pydiff.sample(half, x_T, "dpmpp_2m", steps=8)
    b = pydiff.sample(full, x_T, "dpmpp_2m", steps=8)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert half.eps(x_T, 0.5).dtype == torch.float32  # answers come in the state's dtype


def test_gradients_flow_through_fused_sampling():
    # distillation and DPS differentiate through the sampler (eps network: lincomb_multi path)
    w = torch.tensor(0.3, requires_grad=True)
    model = pydiff.Denoiser(lambda x, t: w * x, SCHED, prediction="eps")
    x_T = torch.randn(2, 3, generator=torch.Generator().manual_seed(7))
    x = pydiff.sample(model, x_T, "dpmpp_2m", steps=4)
    (g,) = torch.autograd.grad(x.square().sum(), w)
    eps = 1e-3
    with torch.no_grad():
        def loss(v):
            m = pydiff.Denoiser(lambda x, t: v * x, SCHED, prediction="eps")
            return pydiff.sample(m, x_T.double(), "dpmpp_2m", steps=4).square().sum()
        numeric = (loss(0.3 + eps) - loss(0.3 - eps)) / (2 * eps)
    assert abs(float(g) - float(numeric)) < 1e-3 * max(1.0, abs(float(numeric)))


def test_docs_example_model_of_ones_own():
    # the Average model of docs/api.md: predictions stay linear maps, nothing materialized
    class Average(pydiff.Model):
        def __init__(self, a, b):
            super().__init__(a.schedule)
            self.a, self.b = a, b

        def evaluate(self, x, t, **cond):
            cond = {**self.cond, **cond}
            p, q = self.a.evaluate(x, t, **cond), self.b.evaluate(x, t, **cond)

            def half(cs):
                return tuple(None if c is None else 0.5 * c for c in cs)

            return pydiff.Prediction(p.basis + q.basis, half(p.x0_coefs) + half(q.x0_coefs),
                                     half(p.eps_coefs) + half(q.eps_coefs))

    a = pydiff.Denoiser(lambda x, t: 0.2 * x, SCHED, prediction="eps")
    b = pydiff.Denoiser(lambda x, t: -0.1 * x, SCHED, prediction="v")
    avg = Average(a, b)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    torch.testing.assert_close(avg.x0(x, 0.4), 0.5 * (a.x0(x, 0.4) + b.x0(x, 0.4)))
    assert isinstance(avg.evaluate(x, 0.4).x0_term, pydiff.Linear)
    out = pydiff.sample(avg, x, "dpmpp_2m", steps=5)
    ref = pydiff.sample(Materialized(avg), x, "dpmpp_2m", steps=5)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-9)


def test_guidance_wrappers_are_models_by_composition():
    base = pydiff.Denoiser(lambda x, t, label: 0.1 * x + label[:, None], SCHED)
    cfg = ClassifierFreeGuidance(DynamicThresholding(base), 2.0, {"label": torch.zeros(1)})
    assert isinstance(cfg, pydiff.Model) and isinstance(cfg, Guided)
    assert not isinstance(cfg, pydiff.Denoiser)
    assert cfg.schedule is SCHED
    with pytest.raises(AttributeError):
        cfg.net  # noqa: B018  (no forwarding: the wrapper has no network of its own)
    with pytest.raises(TypeError, match="pydiff.Model"):
        DynamicThresholding(lambda x, t: x)
    bound = cfg.bind(label=torch.ones(3))
    p = bound.evaluate(torch.zeros(3, 2), 0.5)
    assert isinstance(p, pydiff.Prediction)
    x0, eps = p.predictions()
    a, s = SCHED.alpha(torch.tensor(0.5, dtype=F64)), SCHED.sigma(torch.tensor(0.5, dtype=F64))
    torch.testing.assert_close(float(a) * x0 + float(s) * eps, torch.zeros(3, 2), atol=1e-5,
                               rtol=0)


def test_solver_refuses_a_model_without_the_protocol():
    state = get_solver("ddim").init(torch.zeros(2, 2), SCHED, pydiff.timesteps(SCHED, 3))
    with pytest.raises(TypeError, match="pydiff.Model"):
        get_solver("ddim").step(state, lambda x, t: x)


def test_prediction_with_x0_keeps_eps_where_sigma_is_zero():
    x, x0 = torch.ones(2, 3), torch.full((2, 3), 0.5)
    old = pydiff.Prediction.of(torch.zeros(2, 3), torch.full((2, 3), 7.0))
    alpha = torch.tensor([1.0, 0.8], dtype=F64)
    sigma = torch.tensor([0.0, 0.6], dtype=F64)
    new = old.with_x0(x, x0, alpha, sigma)
    torch.testing.assert_close(new.x0(), x0)
    torch.testing.assert_close(new.eps()[0], torch.full((3,), 7.0))  # kept: sigma = 0
    torch.testing.assert_close(new.eps()[1], torch.full((3,), (1 - 0.8 * 0.5) / 0.6))


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc", "heun", "plms"])
def test_python_fold_matches_the_compiled_fast_path(solver, monkeypatch):
    # combine's Python path (dict states, gradients) builds the lincomb_multi call the C++
    # fast path builds: same samples
    model = pydiff.Denoiser(_net, SCHED, prediction="v")
    x_T = torch.randn(3, 16, generator=torch.Generator().manual_seed(9))
    fast = pydiff.sample(model, x_T, solver, steps=6)
    monkeypatch.setattr(pydiff.ops, "_fold_fast", None)
    slow = pydiff.sample(model, x_T, solver, steps=6)
    torch.testing.assert_close(fast, slow, atol=0, rtol=0)


def test_dict_states_fold_per_key():
    def net(x, t):
        return {k: 0.2 * v for k, v in x.items()}

    model = pydiff.Denoiser(net, SCHED, prediction="eps")
    g = torch.Generator().manual_seed(10)
    x_T = {"pos": torch.randn(2, 5, 3, generator=g, dtype=F64),
           "feat": torch.randn(2, 5, 4, generator=g, dtype=F64)}
    fused = pydiff.sample(model, x_T, "dpmpp_2m", steps=5)
    ref = pydiff.sample(Materialized(model), x_T, "dpmpp_2m", steps=5)
    for k in x_T:
        torch.testing.assert_close(fused[k], ref[k], atol=1e-9, rtol=1e-9)


def test_prepared_grid_rows_serve_every_batch_size_and_copy():
    # the Denoiser prepares each grid row's network time once per (grid, batch, dtype); a row
    # met again with another batch size, dtype or bound copy must still get its own time shape
    seen = []

    def net(x, t, scale=1.0):
        seen.append(tuple(t.shape))
        return scale * 0.1 * x

    model = pydiff.Denoiser(net, SCHED, prediction="eps")
    grid = pydiff.timesteps(SCHED, 4, "logsnr")
    solver = get_solver("dpmpp_2m")
    outs = []
    for batch, dtype, m in [(2, torch.float32, model), (3, torch.float32, model),
                            (2, F64, model), (2, torch.float32, model.bind(scale=2.0))]:
        x = torch.ones(batch, 5, dtype=dtype)
        seen.clear()
        state = solver.init(x, SCHED, grid)
        while not state.done:
            state = solver.step(state, m)
        assert seen == [(batch,)] * 4
        fresh = pydiff.Denoiser(net, SCHED, prediction="eps").bind(**m.cond)
        state_ref = solver.init(x, SCHED, grid)
        while not state_ref.done:
            state_ref = solver.step(state_ref, fresh)
        torch.testing.assert_close(state.x, state_ref.x, atol=0, rtol=0)
        outs.append(state.x)
    assert not torch.equal(outs[0], outs[3])  # the bound scale reached the network


def test_multistep_history_keeps_the_map_and_folds_it_into_one_lincomb(monkeypatch):
    # an eps network's x0 stays a Linear over (state, output) in the history (nothing written
    # for it); with host coefficients the next step composes both maps into one plain lincomb
    model = pydiff.Denoiser(_net, SCHED, prediction="eps")
    solver = get_solver("dpmpp_2m")
    x_T = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    state = solver.init(x_T, SCHED, pydiff.timesteps(SCHED, 6, "logsnr"))
    state = solver.step(state, model)
    kept = state.history[0]
    assert isinstance(kept, pydiff.Linear) and kept.basis[0] is x_T
    calls = []
    for name in ("lincomb", "lincomb_multi"):
        real = getattr(pydiff.ops, name)
        monkeypatch.setattr(pydiff.ops, name,
                            lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    monkeypatch.setattr(pydiff.ops, "_fold_fast", None)  # the Python path, observable
    solver.step(state, model)
    assert calls == ["lincomb"]


def test_history_of_a_wider_map_is_written():
    # classifier-free guidance's x0 reads two network outputs and the state: kept as a tensor
    def net(x, t, label):
        return _net(x, t) + 0.1 * label[:, None]

    model = pydiff.Denoiser(net, SCHED, prediction="eps").bind(label=torch.ones(2))
    guided = ClassifierFreeGuidance(model, scale=2.0, uncond={"label": torch.zeros(2)})
    solver = get_solver("dpmpp_2m")
    state = solver.init(torch.randn(2, 8), SCHED, pydiff.timesteps(SCHED, 6, "logsnr"))
    state = solver.step(state, guided)
    assert torch.is_tensor(state.history[0])
