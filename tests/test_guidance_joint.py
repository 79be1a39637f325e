"""Gradient guidance of joint (continuous + categorical) models: an analytic check.

For data ``pos ~ N(0, I)`` with the exact denoiser (VP: x0-hat = alpha x_t) and the linear
objective ``a . x0-hat``, ``grad_{x_t} = alpha a`` is exactly ``grad log E[exp(a . x0) | x_t]``
(the posterior variance does not depend on ``x_t``), so the guided model is the exact model of
the tilted data ``N(a, I)``: ancestral sampling must reach that mean and keep unit variance.
"""

import pytest
import torch

import pydiff
from pydiff.categorical import CategoricalProcess, JointModel, JointSolver
from pydiff.guidance import JointGradientGuidance


class GaussianJoint(JointModel):
    """Exact denoiser of ``pos ~ N(0, I)``; the class logits of ``type`` are ``pos`` summed
    over the last axis times ``coupling`` (so probabilities depend on positions)."""

    def __init__(self, coupling=0.0):
        super().__init__(pydiff.VPSchedule())
        self.processes = {"type": CategoricalProcess(2)}
        self.fixed = ("mask",)
        self.coupling = coupling

    def evaluate_joint(self, x, t, **cond):
        t = pydiff.schedules.as_time(t, x["pos"].device)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        pos = x["pos"]
        x0 = a.to(pos.dtype) * pos  # alpha / (alpha^2 + sigma^2) = alpha on VP
        logit = self.coupling * pos.sum(-1)
        probs = torch.softmax(torch.stack([torch.zeros_like(logit), logit], -1).double(), -1)
        return pydiff.Prediction.from_x0({"pos": pos}, {"pos": x0}, a, s), {"type": probs}


def _sample(model, n=3000, steps=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"pos": torch.randn(n, 1, 2, generator=g, dtype=torch.float64),
         "type": torch.zeros(n, 1, dtype=torch.long), "mask": torch.ones(n, 1, dtype=torch.bool)}
    with torch.no_grad():
        return pydiff.sample(model, x, JointSolver("ddpm"), steps=steps, generator=g)


def test_linear_objective_reaches_the_tilted_gaussian():
    a = torch.tensor([1.0, -0.5], dtype=torch.float64)
    guided = JointGradientGuidance(GaussianJoint(),
                                   lambda x0, t: (x0["pos"] * a).sum((1, 2)), scale=1.0)
    out = _sample(guided)["pos"][:, 0]
    base = _sample(GaussianJoint())["pos"][:, 0]
    # standard error of a mean of 3000 unit-variance draws: 0.018
    assert torch.allclose(base.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.06)
    assert torch.allclose(out.mean(0), a, atol=0.08), out.mean(0)
    assert torch.allclose(out.var(0), torch.ones(2, dtype=torch.float64), atol=0.12), out.var(0)


def test_objective_sees_the_whole_clean_estimate_and_its_gradient_reaches_positions():
    seen = {}

    def objective(x0, t):
        seen.update({k: (tuple(v.shape), v.dtype) for k, v in x0.items()})
        return x0["type"][..., 1].sum(1)  # more of class 1: its logit grows with sum(pos)

    model = GaussianJoint(coupling=1.0)
    g = torch.Generator().manual_seed(1)
    x = {"pos": torch.randn(4, 3, 2, generator=g, dtype=torch.float64),
         "type": torch.zeros(4, 3, dtype=torch.long), "mask": torch.ones(4, 3, dtype=torch.bool)}
    guided = JointGradientGuidance(model, objective, scale=2.0)
    with torch.inference_mode():  # guidance still gets its gradient
        pred, probs = guided.evaluate_joint(x, 0.5)
    plain, plain_probs = model.evaluate_joint(x, 0.5)
    assert seen == {"pos": ((4, 3, 2), torch.float64), "type": ((4, 3, 2), torch.float64),
                    "mask": ((4, 3), torch.bool)}
    assert torch.equal(probs["type"], plain_probs["type"])  # categorical entries unchanged
    assert (pred.x0()["pos"] - plain.x0()["pos"] > 0).all()  # pushed towards larger sums
    with pytest.raises(TypeError, match="JointModel"):
        JointGradientGuidance(pydiff.Denoiser(lambda x, t: x, pydiff.VPSchedule()),
                              lambda x0, t: x0.sum())
