"""pydiff.training: losses, time samplers, weightings, EMA, LR schedules, loaders, pretrained."""

from __future__ import annotations

import json
import math

import pytest
import torch

import pydiff
from pydiff.nn import UNet1D
from pydiff.pretrained import CheckpointError, from_pretrained, load_config, save_pretrained
from pydiff.testing import GaussianMixture
from pydiff.training import (
    EMA,
    BatchLoader,
    BudgetSchedule,
    DiscreteUniform,
    LogitNormal,
    LogNormal,
    PerPosition,
    SampledBatches,
    Trainer,
    Uniform,
    WeightedBatches,
    cosine_with_warmup,
    diffusion_loss,
    get_weighting,
    x0_factor,
)
from pydiff.training.toy import ToyMLP

torch.set_num_threads(1)
F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def toy_model(schedule, prediction="eps", **kw) -> pydiff.Denoiser:
    torch.manual_seed(0)
    return pydiff.Denoiser(ToyMLP(hidden=16, depth=1).double(), schedule,
                           prediction=prediction, **kw)


SCHEDULES = [pydiff.VPSchedule(), pydiff.FlowSchedule(), pydiff.EDMSchedule(),
             pydiff.DiscreteSchedule.linear(), pydiff.CosineSchedule()]
TARGETS = ["eps", "x0", "v", "score", "velocity"]


# -- losses --------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_every_target_is_its_x0_factor_times_the_x0_error(schedule):
    # At fixed x_t the target errors are multiples of the x0 error: checks targets() and
    # x0_factor() against each other for every schedule family.
    model = toy_model(schedule)
    x0 = torch.randn(6, 2, generator=gen(1), dtype=F64)
    t = torch.linspace(0.05, 0.95, 6, dtype=F64) * schedule.t_max
    noise = torch.randn(6, 2, generator=gen(2), dtype=F64)
    base = diffusion_loss(model, x0, t=t, noise=noise, target="x0", weighting="none").per_sample
    for target in TARGETS:
        got = diffusion_loss(model, x0, t=t, noise=noise, target=target,
                             weighting="none").per_sample
        torch.testing.assert_close(got, base * x0_factor(schedule, t, target), rtol=1e-6, atol=0)


@pytest.mark.parametrize("weighting", ["min_snr", "edm"])
def test_x0_defined_weightings_do_not_depend_on_the_target(weighting):
    schedule = pydiff.VPSchedule()
    model = toy_model(schedule)
    x0 = torch.randn(5, 2, generator=gen(1), dtype=F64)
    t = torch.tensor([0.01, 0.1, 0.3, 0.6, 0.99], dtype=F64)
    noise = torch.randn(5, 2, generator=gen(2), dtype=F64)
    losses = [diffusion_loss(model, x0, t=t, noise=noise, target=tg, weighting=weighting).per_sample
              for tg in TARGETS]
    for other in losses[1:]:
        torch.testing.assert_close(other, losses[0], rtol=1e-6, atol=0)


def test_min_snr_matches_hang_et_al():
    schedule = pydiff.VPSchedule()
    t = torch.tensor([0.02, 0.2, 0.8], dtype=F64)
    snr = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    w = get_weighting("min_snr", gamma=5.0)
    torch.testing.assert_close(w(schedule, t, "eps"), snr.clamp(max=5) / snr)
    torch.testing.assert_close(w(schedule, t, "x0"), snr.clamp(max=5))
    torch.testing.assert_close(w(schedule, t, "v"), snr.clamp(max=5) / (snr + 1))


def test_eps_loss_is_the_mse_of_the_network_output():
    schedule = pydiff.DiscreteSchedule.linear()
    seen = {}

    def net(x, t):
        seen["x"], seen["t"] = x, t
        return torch.tanh(x)

    model = pydiff.Denoiser(net, schedule, prediction="eps")
    x0 = torch.randn(4, 3, generator=gen(0))
    out = diffusion_loss(model, x0, generator=gen(5))
    # the generator draws t first (DDPM indices by default), then the noise
    g = gen(5)
    u = torch.rand(4, generator=g, dtype=F64).clamp(1e-12, 1 - 1e-12)
    t = (torch.floor(u * 1000) + 1) / 1000
    noise = torch.randn(4, 3, generator=g)
    a, s = schedule.alpha(t).float()[:, None], schedule.sigma(t).float()[:, None]
    x_t = a * x0 + s * noise
    torch.testing.assert_close(out.t, t)
    torch.testing.assert_close(seen["x"], x_t)
    torch.testing.assert_close(seen["t"], (t * 1000 - 1).float())  # integer indices
    torch.testing.assert_close(out.per_sample, ((torch.tanh(x_t) - noise) ** 2).mean(1))


def test_input_perturbation_noises_the_input_more_but_keeps_the_target():
    schedule = pydiff.DiscreteSchedule.linear()
    seen = {}

    def net(x, t):
        seen["x"] = x
        return torch.tanh(x)

    model = pydiff.Denoiser(net, schedule, prediction="eps")
    x0 = torch.randn(4, 3, generator=gen(0))
    out = diffusion_loss(model, x0, generator=gen(5), input_perturbation=0.3)
    g = gen(5)  # t, then the noise, then the perturbation
    u = torch.rand(4, generator=g, dtype=F64).clamp(1e-12, 1 - 1e-12)
    t = (torch.floor(u * 1000) + 1) / 1000
    noise = torch.randn(4, 3, generator=g)
    xi = torch.randn(4, 3, generator=g)
    a, s = schedule.alpha(t).float()[:, None], schedule.sigma(t).float()[:, None]
    x_t = a * x0 + s * (noise + 0.3 * xi)
    torch.testing.assert_close(seen["x"], x_t)
    torch.testing.assert_close(out.per_sample, ((torch.tanh(x_t) - noise) ** 2).mean(1))
    with pytest.raises(ValueError, match="input_perturbation"):
        diffusion_loss(model, x0, generator=gen(5), input_perturbation=-0.1)
    # a range: one gamma per sample, drawn after the noise and the perturbation
    diffusion_loss(model, x0, generator=gen(5), input_perturbation=(0.2, 0.6))
    gamma = 0.2 + 0.4 * torch.rand(4, generator=g, dtype=F64)
    torch.testing.assert_close(seen["x"], a * x0 + s * (noise + gamma.float()[:, None] * xi))


def test_edm_default_loss_is_unit_mse_on_the_raw_output():
    schedule = pydiff.EDMSchedule()
    raw = torch.nn.Linear(2, 2).double()
    model = pydiff.Denoiser(lambda x, t: raw(x), schedule, precond="edm")
    x0 = torch.randn(7, 2, generator=gen(0), dtype=F64)
    noise = torch.randn(7, 2, generator=gen(1), dtype=F64)
    sig = torch.exp(torch.randn(7, generator=gen(2), dtype=F64) * 1.2 - 1.2)
    got = diffusion_loss(model, x0, t=sig, noise=noise).per_sample  # default weighting: edm
    sd = 0.5
    x = x0 + sig[:, None] * noise
    c_skip = sd**2 / (sig**2 + sd**2)
    c_out = sig * sd / (sig**2 + sd**2).sqrt()
    c_in = 1 / (sig**2 + sd**2).sqrt()
    f_target = (x0 - c_skip[:, None] * x) / c_out[:, None]
    want = ((raw(c_in[:, None] * x) - f_target) ** 2).mean(1)
    torch.testing.assert_close(got, want)


def test_mean_reverting_loss_noises_the_shifted_state():
    schedule = pydiff.MeanRevertingSchedule()
    seen = {}

    def net(x, t, y):
        seen["x"] = x
        return torch.zeros_like(x)

    model = pydiff.Denoiser(net, schedule, prediction="eps")
    x0, y = torch.randn(3, 4, generator=gen(0)), torch.randn(3, 4, generator=gen(1))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    noise = torch.randn(3, 4, generator=gen(2))
    out = diffusion_loss(model, x0, t=t, noise=noise, cond={"y": y})
    a, s = schedule.alpha(t).float()[:, None], schedule.sigma(t).float()[:, None]
    # the network sees the unshifted state: y + alpha (x0 - y) + sigma z
    torch.testing.assert_close(seen["x"], y + a * (x0 - y) + s * noise)
    torch.testing.assert_close(out.per_sample, (noise**2).mean(1))
    with pytest.raises(ValueError, match="pass cond"):
        diffusion_loss(model, x0, t=t, noise=noise)


def test_dict_states_sum_leaf_losses_with_weights():
    schedule = pydiff.FlowSchedule()

    def net(x, t):
        return {k: 0.5 * v for k, v in x.items()}

    model = pydiff.Denoiser(net, schedule, prediction="velocity")
    x0 = {"pos": torch.randn(4, 3, 2, generator=gen(0)), "h": torch.randn(4, 5, generator=gen(1))}
    t = torch.full((4,), 0.4, dtype=F64)
    noise = {"pos": torch.randn(4, 3, 2, generator=gen(2)),
             "h": torch.randn(4, 5, generator=gen(3))}
    out = diffusion_loss(model, x0, t=t, noise=noise, leaf_weights={"h": 2.0})
    want = 0
    for k, w in (("pos", 1.0), ("h", 2.0)):
        x_t = 0.6 * x0[k] + 0.4 * noise[k]
        want = want + w * ((0.5 * x_t - (noise[k] - x0[k])) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(out.per_sample, want)
    with pytest.raises(ValueError, match="leaf_weights"):
        diffusion_loss(model, x0, t=t, noise=noise, leaf_weights={"typo": 1.0})


def test_per_position_training_with_unet1d():
    torch.manual_seed(0)
    net = UNet1D(in_channels=2, down_dims=(8, 16), time_embed_dim=16, n_groups=4)
    model = pydiff.Denoiser(net, pydiff.DiscreteSchedule.scaled_linear(), prediction="eps")
    x0 = torch.randn(3, 2, 12, generator=gen(0))
    for mode in ("independent", "ramp"):
        out = diffusion_loss(model, x0, generator=gen(1),
                             t_sampler=PerPosition(DiscreteUniform(), mode=mode))
        assert out.t.shape == (3, 1, 12)
        net.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in net.parameters()]
        assert torch.isfinite(out.loss) and all(g is not None and torch.isfinite(g).all()
                                                for g in grads)
    # a per-position t constant along L is the same loss as the per-sample t
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    noise = torch.randn(3, 2, 12, generator=gen(2))
    flat = diffusion_loss(model, x0, t=t, noise=noise).per_sample
    pos = diffusion_loss(model, x0, t=t[:, None, None].expand(3, 1, 12), noise=noise).per_sample
    torch.testing.assert_close(pos, flat, rtol=1e-5, atol=1e-6)


def test_loss_mask_ignores_masked_positions():
    model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), pydiff.VPSchedule())
    x0 = torch.randn(2, 6)
    noise = torch.randn(2, 6, generator=gen(0))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]] * 2)
    out = diffusion_loss(model, x0, t=0.5, noise=noise, mask=mask)
    torch.testing.assert_close(out.per_sample, (noise[:, :3] ** 2).mean(1))


def test_loss_rejects_bad_arguments():
    model = pydiff.Denoiser(lambda x, t: x, pydiff.VPSchedule())
    with pytest.raises(ValueError, match="target"):
        diffusion_loss(model, torch.zeros(2, 2), target="noise")
    with pytest.raises(ValueError, match="weighting"):
        diffusion_loss(model, torch.zeros(2, 2), weighting="snr2")
    with pytest.raises(ValueError, match="does not broadcast"):
        diffusion_loss(model, torch.zeros(2, 2), t=torch.full((3,), 0.5))


# -- time samplers -------------------------------------------------------------------------------
def test_time_sampler_distributions():
    n = 20000
    vp, edm, flow = pydiff.VPSchedule(), pydiff.EDMSchedule(), pydiff.FlowSchedule()
    t = Uniform()(vp, (n, 2), gen(0))
    assert t.shape == (n,) and t.dtype == F64
    assert t.min() >= vp.t_eps and t.max() <= 1 and abs(t.mean() - (1 + vp.t_eps) / 2) < 0.01
    logsig = LogNormal()(edm, (n,), gen(1)).log()
    assert abs(logsig.mean() + 1.2) < 0.03 and abs(logsig.std() - 1.2) < 0.03
    # through another schedule the *noise level* sigma/alpha is log-normal
    t_vp = LogNormal()(vp, (n,), gen(1))
    torch.testing.assert_close(vp.sigma_tilde(t_vp).log(), logsig, rtol=1e-6, atol=1e-6)
    t = LogitNormal(0.5, 0.8)(flow, (n,), gen(2))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.03 and abs(logit.std() - 0.8) < 0.03
    ddpm = pydiff.DiscreteSchedule.linear(num_train_timesteps=10)
    t = DiscreteUniform()(ddpm, (n,), gen(3))
    idx = t * 10
    torch.testing.assert_close(idx, idx.round())
    counts = torch.bincount(idx.round().long(), minlength=11)
    assert counts[0] == 0 and (counts[1:] - n / 10).abs().max() < 300
    torch.testing.assert_close(Uniform()(vp, (5,), gen(7)), Uniform()(vp, (5,), gen(7)))


def test_per_position_ramp_rises_along_the_axis():
    vp = pydiff.VPSchedule()
    t = PerPosition(mode="ramp")(vp, (64, 3, 10), gen(0))
    assert t.shape == (64, 1, 10)
    assert (t.diff(dim=-1) > 0).all()
    # each position covers its own slice [l/L, (l+1)/L) of the uniform range
    u = (t - vp.t_eps) / (1 - vp.t_eps)
    lo = torch.arange(10, dtype=F64) / 10
    assert ((u[:, 0] >= lo - 1e-12) & (u[:, 0] < lo + 0.1 + 1e-12)).all()
    ind = PerPosition(mode="independent", axis=1)(vp, (64, 3, 10), gen(0))
    assert ind.shape == (64, 3, 1) and ind.std(dim=1).min() > 0
    with pytest.raises(ValueError, match="axis"):
        PerPosition(axis=0)(vp, (4, 3), gen(0))
    with pytest.raises(ValueError, match="DiscreteSchedule"):
        DiscreteUniform()(vp, (4,), gen(0))


# -- EMA / LR ------------------------------------------------------------------------------------
def test_ema_warmup_schedule_matches_diffusion_policy():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, power=0.75, max_decay=0.9999)
    decays = []
    for _ in range(5):
        decays.append(ema.current_decay())
        ema.update(net)
    # diffusion_policy EMAModel.get_decay: step = max(0, k - 1); 0 for step <= 0
    want = [0.0, 0.0] + [1 - (1 + k) ** -0.75 for k in (1, 2, 3)]
    assert decays == pytest.approx(want)


def test_ema_constant_decay_averages_and_copies_buffers():
    net = torch.nn.BatchNorm1d(3)
    ema = EMA(net, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
        net.running_mean.add_(2.0)
    ema.update(net)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * net.weight)
    torch.testing.assert_close(ema.module.running_mean, net.running_mean)
    state = ema.state_dict()
    other = EMA(torch.nn.BatchNorm1d(3), decay=0.9)
    other.load_state_dict(state)
    assert other.step == 1 and torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)


def test_cosine_with_warmup():
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=2.0)
    sched = cosine_with_warmup(opt, warmup_steps=4, total_steps=14, min_ratio=0.1)
    lrs = []
    for _ in range(15):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert lrs[9] == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[14] == pytest.approx(0.2)


@pytest.mark.parametrize("callbacks", [True, False])
def test_budget_schedule_ends_the_cosine_when_the_budget_ends(callbacks):
    # steps slow down threefold halfway (the load rose): the first plan (max_steps) is far too
    # long, so without the callback the budget stops the run with the learning rate still
    # at its peak; with it the cosine reaches its floor where the budget ends
    import time

    net = torch.nn.Linear(2, 1)

    def slowing_loss(model, x, generator):
        time.sleep(0.002 if trainer.step < 60 else 0.006)
        return model(x).pow(2).mean()

    budget = 0.8
    trainer = Trainer(net, [torch.randn(8, 2)] * 4, loss_fn=slowing_loss, max_steps=100_000,
                      lr=1.0, lr_scheduler="cosine", warmup_steps=5, progress=False,
                      callbacks=[BudgetSchedule(budget, every=10)] if callbacks else [])
    trainer.fit(time_budget=budget)
    last_lr = trainer.optimizer.param_groups[0]["lr"]
    assert trainer.step < 100_000
    if callbacks:
        assert last_lr < 0.25
        assert any("planned_steps" in h for h in trainer.history)
    else:
        assert last_lr > 0.99


def test_budget_schedule_refuses_a_schedule_it_cannot_end():
    trainer = Trainer(torch.nn.Linear(2, 1), [torch.randn(8, 2)],
                      loss_fn=lambda m, x, g: m(x).pow(2).mean(), max_steps=10,
                      lr_scheduler="constant", progress=False, callbacks=[BudgetSchedule(1.0)])
    with pytest.raises(ValueError, match="cosine"):
        trainer.fit()
    with pytest.raises(ValueError, match="seconds"):
        BudgetSchedule(0.0)


# -- data ----------------------------------------------------------------------------------------
def test_batch_loader_shards_union_to_the_single_process_batch():
    data = {"x": torch.arange(40.0)[:, None], "y": torch.arange(40)}
    single = iter(BatchLoader(data, 8, seed=3, rank=0, world_size=1))
    ranks = [iter(BatchLoader(data, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(12):  # crosses epoch boundaries (5 batches per epoch)
        whole = next(single)
        parts = [next(r) for r in ranks]
        torch.testing.assert_close(torch.cat([p["y"] for p in parts]), whole["y"])
    loader = BatchLoader(data, 8, seed=3)
    seen = torch.cat([b["y"] for b, _ in zip(loader, range(5))])
    assert sorted(seen.tolist()) == list(range(40))  # one epoch is a permutation


def test_loaders_resume_from_state_dict():
    ring = GaussianMixture.ring()
    a = SampledBatches(lambda n, g: ring.sample(n, g), 8, seed=1)
    it = iter(a)
    next(it)
    state = a.state_dict()
    want = next(it)
    b = SampledBatches(lambda n, g: ring.sample(n, g), 8, seed=1)
    b.load_state_dict(state)
    torch.testing.assert_close(next(iter(b)), want)
    with pytest.raises(ValueError, match="seed"):
        BatchLoader(torch.zeros(10, 1), 2, seed=1).load_state_dict({"seed": 2, "epoch": 0,
                                                                    "position": 0})
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(torch.zeros(10, 1), 11)


def test_weighted_batches_draw_each_group_alike_and_resume():
    # group 0 has 9 rows, group 1 one row: with group weights each group is half the draws
    data = {"x": torch.arange(10.0)[:, None], "g": torch.tensor([0] * 9 + [1])}
    weights = WeightedBatches.group_weights(data["g"])
    torch.testing.assert_close(weights.sum(), torch.tensor(2.0, dtype=torch.float64))
    batches = WeightedBatches(data, weights, 4000, seed=0)
    it = iter(batches)
    first = next(it)
    assert first["x"].shape == (4000, 1)
    assert torch.equal(first["x"][:, 0].long(), torch.arange(10)[first["x"][:, 0].long()])
    share = float((first["g"] == 1).float().mean())
    assert 0.46 < share < 0.54, share  # plain shuffling would give 0.1
    assert set(first["x"][first["g"] == 0, 0].long().tolist()) == set(range(9))
    state = batches.state_dict()
    want = next(it)
    again = WeightedBatches(data, weights, 4000, seed=0)
    again.load_state_dict(state)
    torch.testing.assert_close(next(iter(again))["x"], want["x"])
    zero = WeightedBatches(data["x"], torch.tensor([0.0] * 9 + [1.0]), 50, seed=0)
    assert bool((next(iter(zero)) == 9).all())  # weight 0 is never drawn
    with pytest.raises(ValueError, match="one per row"):
        WeightedBatches(data, torch.ones(3), 2)
    with pytest.raises(ValueError, match="not all 0"):
        WeightedBatches(data, torch.zeros(10), 2)
    with pytest.raises(ValueError, match="not all 0"):
        WeightedBatches(data, torch.tensor([-1.0] + [1.0] * 9), 2)
    with pytest.raises(ValueError, match="integer labels"):
        WeightedBatches.group_weights(torch.zeros(3))


# -- pretrained ----------------------------------------------------------------------------------
def test_save_and_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    net = ToyMLP(hidden=16, depth=2)
    model = pydiff.Denoiser(net, pydiff.EDMSchedule(sigma_data=0.7), precond="edm")
    save_pretrained(model, tmp_path / "m", metadata={"trained_on": "ring"})
    loaded = from_pretrained(tmp_path / "m")
    assert (loaded.precond, loaded.prediction, loaded.time_input) == ("edm", "x0", "log_sigma")
    assert loaded.sigma_data == 0.7 and loaded.schedule.config() == model.schedule.config()
    x, t = torch.randn(5, 2), torch.rand(5, dtype=F64) * 3
    torch.testing.assert_close(loaded.x0(x, t), model.x0(x, t), rtol=0, atol=0)
    cfg = load_config(tmp_path / "m")
    assert cfg["format_version"] == 1 and cfg["metadata"] == {"trained_on": "ring"}
    # a bare module round-trips too
    save_pretrained(UNet1D(in_channels=2, down_dims=(8,), n_groups=4), tmp_path / "u")
    assert isinstance(from_pretrained(tmp_path / "u"), UNet1D)


def test_pretrained_errors(tmp_path):
    model = pydiff.Denoiser(ToyMLP(hidden=8, depth=1), pydiff.VPSchedule())
    save_pretrained(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format_version=99.*upgrade pydiff"):
        from_pretrained(tmp_path / "m")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="not a pydiff checkpoint.*diffusers UNet2DModel"):
        from_pretrained(tmp_path / "d")
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)
    cfg["format_version"] = 1
    cfg["net"]["class"] = "os:system"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="trusted"):
        from_pretrained(tmp_path / "m")
    # a factory replaces the import
    loaded = from_pretrained(tmp_path / "m", factory=lambda cls, c: ToyMLP(**c))
    assert isinstance(loaded.net, ToyMLP)
    with pytest.raises(ValueError, match="net_config"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "lin")


# -- immiscible noise assignment ---------------------------------------------------------------
def test_immiscible_noise_is_the_minimum_distance_permutation():
    import itertools

    from pydiff.training.immiscible import immiscible_noise

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 2, generator=g) * 2
    noise = torch.randn(6, 3, 2, generator=g)
    out = immiscible_noise(x0, noise)

    def cost(z):
        return float((x0 - z).flatten(1).norm(dim=1).sum())

    best = min(cost(noise[list(p)]) for p in itertools.permutations(range(6)))
    assert cost(out) == pytest.approx(best, rel=1e-12)
    assert cost(out) < cost(noise)  # this draw is not already optimal
    # a permutation of the rows: the batch of noise is unchanged as a set
    rows = {tuple(r.flatten().tolist()) for r in noise}
    assert {tuple(r.flatten().tolist()) for r in out} == rows
    # dict states: one permutation over all leaves together
    both = immiscible_noise({"a": x0, "b": x0[:, :1]}, {"a": noise, "b": noise[:, :1]})
    assert torch.equal(both["b"], both["a"][:, :1])


def test_diffusion_loss_with_immiscible_assignment_uses_the_assigned_noise():
    from pydiff.training.immiscible import immiscible_noise

    model = pydiff.Denoiser(lambda x, t: 0.3 * x, pydiff.VPSchedule())
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)) * 3
    out = diffusion_loss(model, x0, generator=torch.Generator().manual_seed(2),
                         t_sampler="uniform", immiscible=True)
    # the same draws by hand: t first, then the noise, then the assignment
    g = torch.Generator().manual_seed(2)
    t = pydiff.training.Uniform()(model.schedule, x0.shape, g)
    noise = torch.randn(16, 2, generator=g)
    ref = diffusion_loss(model, x0, t=t, noise=immiscible_noise(x0, noise))
    plain = diffusion_loss(model, x0, t=t, noise=noise)
    assert torch.equal(out.per_sample, ref.per_sample)
    assert not torch.equal(out.per_sample, plain.per_sample)
