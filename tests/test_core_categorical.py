"""Categorical diffusion against closed forms.

The forward marginals of every transition family match ``keep onehot + (1 - keep) pi`` and
compose over two steps; ancestral sampling with the exact ``p(x_0 | x_t)`` of a known
categorical distribution reproduces it within sampling error; a joint dict state (positions,
types, mask) advances in one ``pydiff.sample`` call; a fixed fragment (known positions and
classes) is kept exactly at every step through the inpainting hooks.
"""

import math

import pytest
import torch

import pydiff
from pydiff.categorical import (
    CategoricalProcess,
    JointModel,
    JointSolver,
    sample_categorical,
)
from pydiff.guidance import SVDD
from pydiff.hooks import InpaintClasses, InpaintReplace, StepContext, ZeroCenterOfMass

F64 = torch.float64
SCHED = pydiff.VPSchedule()
P_DATA = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)


def process(kind):
    prior = [0.1, 0.2, 0.3, 0.4] if kind == "marginal" else None
    return CategoricalProcess(4, kind, prior=prior)


def assert_frequencies(draws, probs, n_sigma=5.0):
    """Empirical class frequencies within ``n_sigma`` binomial standard errors (+1e-12)."""
    n = draws.numel()
    freq = torch.bincount(draws.flatten(), minlength=probs.numel()).to(F64) / n
    se = torch.sqrt(probs * (1 - probs) / n)
    assert ((freq - probs).abs() <= n_sigma * se + 1e-12).all(), (freq.tolist(), probs.tolist())


def test_sample_categorical_frequencies_and_zero_mass():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.7, 0.0, 0.2, 0.1, 0.0], dtype=F64)
    draws = sample_categorical(p.expand(200_000, -1), g)
    assert_frequencies(draws, p)
    assert not (draws == 1).any() and not (draws == 4).any()


def test_sample_categorical_generator_list_is_per_sample():
    p = torch.full((3, 6, 5), 0.2, dtype=F64)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    out = sample_categorical(p, gens)
    alone = sample_categorical(p[1:2], [torch.Generator().manual_seed(2)])
    assert torch.equal(out[1], alone[0])


@pytest.mark.parametrize("kind", ["uniform", "marginal", "absorbing"])
def test_forward_marginals_match_closed_form(kind):
    proc = process(kind)
    keep = 0.35
    x0 = torch.full((100_000,), 2)
    draws = proc.corrupt(x0, keep, torch.Generator().manual_seed(1))
    pi = proc.stationary
    expected = (1 - keep) * pi
    expected[2] += keep
    assert_frequencies(draws, expected)


@pytest.mark.parametrize("kind", ["uniform", "marginal", "absorbing"])
def test_transitions_compose(kind):
    # sum_j q(x_t | x_s = j) q(x_s = j | x_0) = q(x_t | x_0): the posterior's normalizer is the
    # closed-form marginal, and each posterior row is a distribution
    proc = process(kind)
    ks, kt = torch.tensor(0.8, dtype=F64), torch.tensor(0.3, dtype=F64)
    for x0 in range(4):
        q_s = proc.marginal(torch.tensor([x0]), ks)[0]
        q_t = proc.marginal(torch.tensor([x0]), kt)[0]
        step = kt / ks * torch.eye(proc.num_states, dtype=F64) + (1 - kt / ks) * proc.stationary
        assert torch.allclose(q_s @ step, q_t, atol=1e-14)
        for xt in range(proc.num_states):
            if q_t[xt] == 0:
                continue
            onehot0 = torch.zeros(1, 4, dtype=F64)
            onehot0[0, x0] = 1
            post = proc.posterior(torch.tensor([xt]), onehot0, kt, ks)[0]
            exact = step[:, xt] * q_s / q_t[xt]  # Bayes, from the matrices
            assert torch.allclose(post, exact, atol=1e-12)


def test_absorbing_keeps_unmasked_entries():
    proc = CategoricalProcess(3, "absorbing")
    x_t = torch.tensor([0, 2, 3])  # 3 is the mask
    probs0 = torch.tensor([[0.1, 0.1, 0.8]] * 3, dtype=F64)
    post = proc.posterior(x_t, probs0, 0.2, 0.6)
    assert post[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert post[1].tolist() == [0.0, 0.0, 1.0, 0.0]
    # a masked entry unmasks with probability (keep_s - keep_t) / (1 - keep_t) = 0.5
    assert math.isclose(post[2, 3].item(), 0.5, abs_tol=1e-12)
    assert torch.allclose(post[2, :3], 0.5 * probs0[2], atol=1e-12)


def gaussian_prediction(x, t, c):
    """The exact prediction for Gaussian data of std ``c``: ``x0 = gain x``."""
    tt = pydiff.schedules.as_time(t)
    a, s = SCHED.alpha(tt), SCHED.sigma(tt)
    gain = a * c**2 / (a**2 * c**2 + s**2)
    return pydiff.Prediction.from_x0(x, pydiff.Prediction.linear((x,), (gain,)), a, s)


class ExactModel(JointModel):
    """Positions: Gaussian data of std ``c`` (exact x0 = gain x); types: i.i.d. ``P_DATA`` per
    atom with the exact ``p(x_0 | x_t)`` by Bayes from the closed-form marginals."""

    def __init__(self, proc, c=0.7):
        super().__init__(SCHED)
        self.processes, self.fixed, self.c = {"types": proc}, ("mask",), c

    def evaluate_joint(self, x, t, **cond):
        tt = pydiff.schedules.as_time(t)
        pred = gaussian_prediction({"pos": x["pos"]}, tt, self.c)
        proc = self.processes["types"]
        keep = proc.keep(SCHED, tt)
        likelihood = torch.stack([proc.marginal(torch.full_like(x["types"], k), keep)
                                  for k in range(4)], -2)  # [B, N, K, S]: q(x_t | x_0 = k)
        lik = likelihood.gather(-1, x["types"][..., None, None].expand(-1, -1, 4, 1))[..., 0]
        post = P_DATA * lik
        return pred, {"types": post / post.sum(-1, keepdim=True)}


class GaussianPart(pydiff.Model):
    """The continuous part of :class:`ExactModel` on a plain tensor state."""

    def __init__(self, joint):
        super().__init__(SCHED)
        self.joint = joint

    def evaluate(self, x, t, **cond):
        return gaussian_prediction(x, t, self.joint.c)


@pytest.mark.parametrize("kind,solver,steps", [("uniform", "ddim", 20),
                                               ("marginal", "dpmpp_2m", 10),
                                               ("absorbing", "unipc", 8)])
def test_ancestral_sampling_reproduces_a_known_distribution(kind, solver, steps):
    proc = process(kind)
    model = ExactModel(proc)
    g = torch.Generator().manual_seed(3)
    b, n = 2000, 10
    mask = torch.ones(b, n, dtype=torch.bool)
    x = {"pos": pydiff.prior(SCHED, (b, n, 3), generator=g), "types": proc.prior((b, n), g),
         "mask": mask}
    out = pydiff.sample(model, x, JointSolver(solver), steps=steps, generator=g)
    assert out["types"].dtype == torch.int64 and torch.equal(out["mask"], mask)
    assert_frequencies(out["types"], P_DATA)
    # the continuous part ran through the same call, exactly as the solver runs it alone
    alone = pydiff.sample(GaussianPart(model), x["pos"], solver, steps=steps,
                          generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out["pos"], alone, atol=1e-5)


def test_joint_state_with_centre_of_mass_hook_and_argmax_final():
    proc = process("uniform")
    model = ExactModel(proc)
    g = torch.Generator().manual_seed(4)
    x = {"pos": pydiff.prior(SCHED, (64, 6, 3), generator=g), "types": proc.prior((64, 6), g),
         "mask": torch.ones(64, 6, dtype=torch.bool)}
    hook = pydiff.hooks.ZeroCenterOfMass(key="pos")
    state = pydiff.sample(model, x, JointSolver("heun", final="argmax"), steps=6,
                          generator=g, hooks=[hook], return_state=True)
    assert state.nfe == 11  # Heun: two evaluations per step, one on the last
    assert state.x["pos"].mean(1).abs().max() < 1e-5
    assert state.x["types"].min() >= 0 and state.x["types"].max() < 4


def test_bad_arguments_name_the_culprit():
    with pytest.raises(pydiff.InputError, match="kind"):
        CategoricalProcess(3, "gaussian")
    with pytest.raises(pydiff.InputError, match="prior"):
        CategoricalProcess(3, "marginal")
    with pytest.raises(pydiff.InputError, match="probs0"):
        CategoricalProcess(3).posterior(torch.zeros(2, dtype=torch.long),
                                        torch.ones(2, 4, dtype=F64), 0.2, 0.5)
    with pytest.raises(pydiff.InputError, match="final"):
        JointSolver("ddim", final="mode")


class TinyJointNet(torch.nn.Module):
    """Per-atom MLP: eps for positions, logits for 4 types (not equivariant; enough to train)."""

    def __init__(self, zero=False):
        super().__init__()
        self.zero = zero
        self.lin = torch.nn.Linear(3 + 4 + 1, 3 + 4)

    def forward(self, x, t):
        b, n = x["types"].shape[:2]
        feats = torch.cat([x["pos"], x["types"], t.reshape(-1, 1, 1).expand(b, n, 1)], -1)
        out = self.lin(feats) * (0.0 if self.zero else 1.0)
        return {"pos": out[..., :3], "types": out[..., 3:]}


def test_joint_loss_is_noise_mse_plus_cross_entropy():
    from pydiff.categorical import JointDenoiser, joint_diffusion_loss

    proc = process("uniform")
    model = JointDenoiser(TinyJointNet(zero=True), SCHED, {"types": proc}, fixed=("mask",),
                          prediction="eps")
    x0 = {"pos": torch.randn(5, 6, 3), "types": torch.randint(0, 4, (5, 6)),
          "mask": torch.ones(5, 6, dtype=torch.bool)}
    x0["mask"][1, 4:] = False
    seen = {}

    def project(noise, mask):
        seen.update(noise)
        return noise

    out = joint_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(0),
                               mask=x0["mask"], noise_projection=project)
    m = x0["mask"].float()[..., None]
    mse = (seen["pos"] ** 2 * m).sum((1, 2)) / (3 * m.sum((1, 2)))  # eps_hat = 0
    assert torch.allclose(out.per_sample, mse + math.log(4), atol=1e-5)


def test_trainer_trains_a_joint_denoiser_and_keeps_its_ema():
    from pydiff.categorical import JointDenoiser, joint_diffusion_loss
    from pydiff.training import Trainer

    proc = process("marginal")
    model = JointDenoiser(TinyJointNet(), SCHED, {"types": proc}, prediction="eps")
    g = torch.Generator().manual_seed(1)
    data = [{"pos": torch.randn(16, 5, 3, generator=g),
             "types": sample_categorical(P_DATA.expand(16, 5, -1), g)} for _ in range(4)]

    def loss_fn(m, batch, generator):
        return joint_diffusion_loss(m, batch, generator=generator).loss

    trainer = Trainer(model, data, loss_fn=loss_fn, max_steps=40, lr=1e-2, ema=0.9,
                      progress=False)
    trainer.fit()
    ema = trainer.ema_model()
    assert ema.net is not model.net
    x = {"pos": torch.randn(3, 5, 3), "types": proc.prior((3, 5), g)}
    _, probs = ema.evaluate_joint(x, 0.05)
    # the class frequencies were learnt: at low noise the types' marginal follows P_DATA's order
    mean = probs["types"].mean((0, 1))
    assert mean[0] > mean[3]


# -- a fixed fragment of a joint dict state ------------------------------------------------
# pydiff.hooks.InpaintReplace (key=) pastes known positions, InpaintClasses known classes, and
# JointSolver runs both on the whole state after every step, before ZeroCenterOfMass re-centres
# the molecule: the fragment's geometry relative to itself is exact at every step (scaled by
# alpha when pasted without noise) and its classes never change; one translation at the end
# puts it back at its given coordinates.

B, N, K = 16, 7, 3  # molecules, atoms per molecule, fragment atoms


def fragment_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    proc = process("uniform")
    model = ExactModel(proc)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[:4, -1] = False  # molecules of two sizes in one batch
    given = torch.randn(K, 3, generator=g, dtype=F64) + 5.0  # the fragment's own frame
    known = torch.zeros(B, N, 3)
    known[:, :K] = (given - given.mean(0)).float()
    fmask = torch.zeros(B, N, dtype=torch.bool)
    fmask[:, :K] = True
    known_types = torch.zeros(B, N, dtype=torch.long)
    known_types[:, :K] = torch.tensor([3, 1, 2])
    x = {"pos": pydiff.prior(SCHED, (B, N, 3), generator=g) * mask[..., None],
         "types": proc.prior((B, N), g), "mask": mask}
    return model, proc, g, x, given, known, fmask, known_types


def relative(pos):
    return pos - pos.mean(-2, keepdim=True)


def test_fragment_is_kept_exactly_at_every_step():
    model, proc, g, x, given, known, fmask, known_types = fragment_setup()
    hooks = [InpaintReplace(known, fmask[..., None].float(), noise="none", key="pos"),
             InpaintClasses(known_types, fmask, key="types"),
             ZeroCenterOfMass(key="pos", mask=x["mask"])]
    seen = []

    def check(state):
        i = state.i
        pos, alpha = state.x["pos"].double(), state.alpha[i].item()
        assert torch.equal(state.x["types"][:, :K], known_types[:, :K])
        # pasted as alpha * known, then the whole molecule translated by the re-centring
        want = alpha * relative(known[:, :K].double())
        assert torch.allclose(relative(pos[:, :K]), want, atol=1e-5)
        m = state.x["mask"].double()[..., None]
        assert ((pos * m).sum(1) / m.sum(1)).abs().max() < 1e-5  # zero centre of mass kept
        assert (pos[~state.x["mask"]] == 0).all()  # padding stays at 0
        seen.append(i)

    out = pydiff.sample(model, x, JointSolver("ddpm"), steps=12, generator=g, hooks=hooks,
                        callback=check)
    assert seen == list(range(1, 13))
    # one translation puts the fragment back at its given coordinates, exactly
    shift = (given - out["pos"][:, :K].double()).mean(1, keepdim=True)
    assert torch.allclose(out["pos"][:, :K].double() + shift, given.expand(B, K, 3), atol=1e-5)
    # the rest was generated (differs between molecules), the fragment is the same in all
    assert out["pos"][:, K:].std(0).mean() > 0.1


def test_fresh_noise_and_corrupted_classes_end_exact():
    model, proc, g, x, given, known, fmask, known_types = fragment_setup(1)
    hooks = [InpaintReplace(known, fmask[..., None].float(), key="pos"),
             InpaintClasses(known_types, fmask, key="types", process=proc),
             ZeroCenterOfMass(key="pos", mask=x["mask"])]
    out = pydiff.sample(model, x, JointSolver("dpmpp_2m"), steps=8, generator=g, hooks=hooks)
    assert torch.equal(out["types"][:, :K], known_types[:, :K])
    assert torch.allclose(relative(out["pos"][:, :K]), relative(known[:, :K]), atol=1e-5)


def test_corrupted_classes_follow_the_forward_marginal():
    proc = process("marginal")
    known = torch.full((20000, 1), 2, dtype=torch.long)
    hook = InpaintClasses(known, torch.ones(20000, 1, dtype=torch.bool), "types", process=proc)
    t = torch.tensor(0.6, dtype=F64)
    a, s = SCHED.alpha(t), SCHED.sigma(t)
    state = {"types": torch.zeros(20000, 1, dtype=torch.long)}
    out = hook(state, StepContext(0, t, a, s, torch.Generator().manual_seed(0)))
    assert_frequencies(out["types"], proc.marginal(torch.tensor([2]), proc.keep(SCHED, t))[0])
    final = hook(state, StepContext(0, t * 0, a / a, s * 0, final=True))
    assert (final["types"] == 2).all()


def test_svdd_candidates_keep_the_fragment():
    model, proc, g, x, given, known, fmask, known_types = fragment_setup(2)
    hooks = [InpaintReplace(known, fmask[..., None].float(), key="pos"),
             InpaintClasses(known_types, fmask, key="types", process=proc),
             ZeroCenterOfMass(key="pos", mask=x["mask"])]
    solver = SVDD(JointSolver("ddpm"), lambda x0: -x0["pos"].pow(2).sum((1, 2)), candidates=3)
    out = pydiff.sample(model, x, solver, steps=6, generator=g, hooks=hooks)
    assert torch.equal(out["types"][:, :K], known_types[:, :K])
    assert torch.allclose(relative(out["pos"][:, :K]), relative(known[:, :K]), atol=1e-5)
    # the types of the generated atoms still come from the model (P_DATA), not the fragment
    assert out["types"][:, K:].unique().numel() > 1 and P_DATA.numel() == 4


def test_inpaint_hooks_name_a_missing_or_needed_key():
    ctx = StepContext(0, torch.tensor(0.5), torch.tensor(0.7), torch.tensor(0.7))
    state = {"pos": torch.zeros(2, 3, 3), "types": torch.zeros(2, 3, dtype=torch.long)}
    with pytest.raises(pydiff.InputError, match="key="):
        InpaintReplace(torch.zeros(2, 3, 3), torch.ones(2, 3, 1))(state, ctx)
    with pytest.raises(pydiff.InputError, match="'coords'"):
        InpaintReplace(torch.zeros(2, 3, 3), torch.ones(2, 3, 1), key="coords")(state, ctx)
    with pytest.raises(pydiff.InputError, match="class indices"):
        InpaintClasses(torch.zeros(2, 3), torch.ones(2, 3), key="types")
    # take() gives one row per candidate (SVDD), also from a single shared row
    hook = InpaintReplace(torch.zeros(1, 3, 3), torch.ones(1, 3, 1), key="pos")
    assert hook.take(torch.tensor([0, 0, 0])).known.shape == (3, 3, 3)
