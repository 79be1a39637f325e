"""The Trainer: toy quality, exact resume, bf16 autocast, callbacks, custom losses."""

from __future__ import annotations

import shutil

import pytest
import torch

import pydiff
from pydiff.testing import GaussianMixture, energy_distance
from pydiff.training import (
    EMA,
    BatchLoader,
    DiffusionLoss,
    DiscreteUniform,
    Every,
    PerPosition,
    SampledBatches,
    Trainer,
)
from pydiff.training.toy import ToyMLP, train_toy

torch.set_num_threads(1)
RING = GaussianMixture.ring()


def ring_batches(batch_size=64, seed=0):
    return SampledBatches(lambda n, g: RING.sample(n, g).float(), batch_size, seed=seed)


def make_trainer(tmp_path, data, max_steps=30, **kw):
    torch.manual_seed(kw.pop("init_seed", 0))
    model = pydiff.Denoiser(ToyMLP(hidden=32, depth=2), pydiff.VPSchedule(), prediction="v")
    return Trainer(model, data, max_steps=max_steps, lr=3e-3, lr_scheduler="cosine",
                   warmup_steps=5, ema=EMA(model.net, power=0.75), grad_clip=1.0,
                   loss_fn=DiffusionLoss(weighting="min_snr"), checkpoint_dir=tmp_path,
                   progress=False, **kw)


def sample_energy(model, n=1000, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = pydiff.sample(model, pydiff.prior(model.schedule, (n, 2), generator=g), steps=20)
    return energy_distance(x, RING.sample(n, g))


def test_toy_model_learns_the_ring():
    # Measured (hidden=64, 400 steps, seeds 0-3): 0.0196-0.0206 trained vs 83-293 untrained;
    # the sample-vs-sample floor at n=1000 is ~0.002 (1000 steps reach ~0.0025).
    g = torch.Generator().manual_seed(0)
    trained = train_toy(steps=400, hidden=64, generator=g)
    untrained = train_toy(steps=0, hidden=64, generator=torch.Generator().manual_seed(0))
    e_trained, e_untrained = sample_energy(trained), sample_energy(untrained)
    assert e_trained < 0.06, e_trained
    assert e_trained < e_untrained / 100, (e_trained, e_untrained)


@pytest.mark.parametrize("source", ["sampled", "loader", "plain_list"])
def test_resume_is_bit_identical(tmp_path, source):
    def data():
        if source == "sampled":
            return ring_batches()
        tensors = RING.sample(512, torch.Generator().manual_seed(3)).float()
        if source == "loader":
            return BatchLoader(tensors, 32, seed=4)
        return list(tensors.split(32))  # a stateless iterable: replayed on resume

    full = make_trainer(tmp_path / "a", data(), checkpoint_every=12)
    full.fit()
    assert full.step == 30
    # resume from step 12 in a fresh process state: different init, generators moved on
    shutil.copytree(tmp_path / "a" / "step_00000012", tmp_path / "b" / "step_00000012")
    (tmp_path / "b" / "latest").write_text("step_00000012")
    torch.manual_seed(123)
    resumed = make_trainer(tmp_path / "b", data(), init_seed=99, resume="latest")
    assert resumed.step == 12
    resumed.fit()
    for a, b in zip(full.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.module.state_dict().values(),
                    resumed.ema.module.state_dict().values()):
        assert torch.equal(a, b)
    opt_a, opt_b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for k, st in opt_a["state"].items():
        for name, v in st.items():
            assert torch.equal(v, opt_b["state"][k][name]), name
    assert full.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()
    assert torch.equal(full.generator.get_state(), resumed.generator.get_state())
    # the interrupted run really did differ before loading (the test can fail)
    fresh = make_trainer(tmp_path / "c", data(), init_seed=99)
    fresh.fit(12)
    assert not torch.equal(fresh.module.inp.weight, full.module.inp.weight)


def test_checkpoints_are_pruned_and_checked(tmp_path):
    trainer = make_trainer(tmp_path, ring_batches(), max_steps=8, checkpoint_every=2,
                           keep_checkpoints=2)
    trainer.fit()
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000006", "step_00000008"]
    assert (tmp_path / "latest").read_text() == "step_00000008"
    no_ema = Trainer(pydiff.Denoiser(ToyMLP(hidden=32, depth=2), pydiff.VPSchedule()),
                     ring_batches(), lr_scheduler="cosine", progress=False)
    with pytest.raises(ValueError, match="EMA"):
        no_ema.load_checkpoint(tmp_path / "step_00000008")
    with pytest.raises(FileNotFoundError):
        make_trainer(tmp_path, ring_batches(), resume=tmp_path / "nope")


def test_bf16_autocast_training_runs_in_bfloat16():
    torch.manual_seed(0)
    net = ToyMLP(hidden=32, depth=2)
    model = pydiff.Denoiser(net, pydiff.FlowSchedule(), prediction="velocity")
    dtypes = []
    handle = net.inp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer = Trainer(model, ring_batches(128), max_steps=60, lr=3e-3, precision="bf16",
                      progress=False, log_every=10)
    trainer.fit()
    handle.remove()
    assert set(dtypes) == {torch.bfloat16}
    assert net.inp.weight.dtype == torch.float32  # master weights stay float32
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_custom_loss_callbacks_and_per_position_time():
    # a non-Denoiser model with a (loss, info) loss function and an evaluation callback
    torch.manual_seed(0)
    net = ToyMLP(hidden=16, depth=1)
    schedule = pydiff.FlowSchedule()
    evals = []

    def loss_fn(model, batch, generator):
        denoiser = pydiff.Denoiser(model, schedule, prediction="velocity")
        # one time per coordinate of each point: per-position noise levels
        out = pydiff.training.diffusion_loss(denoiser, batch, generator=generator,
                                            t_sampler=PerPosition(mode="ramp"))
        assert out.t.shape == batch.shape
        return out.loss, {"t_mean": out.t.mean()}

    trainer = Trainer(net, ring_batches(32), loss_fn=loss_fn, max_steps=7, progress=False,
                      log_every=2, callbacks=[Every(3, lambda tr: evals.append(tr.step) or
                                                    {"eval": float(tr.step)})])
    trainer.fit()
    assert evals == [3, 6, 7]
    logged = [h for h in trainer.history if "t_mean" in h]
    assert [h["step"] for h in logged] == [2, 4, 6, 7] and 0 < logged[0]["t_mean"] < 1
    assert [h["eval"] for h in trainer.history if "eval" in h] == [3.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="loss_fn is required"):
        Trainer(net, ring_batches(), progress=False)


def test_trainer_save_pretrained_uses_ema(tmp_path):
    from pydiff.pretrained import from_pretrained
    trainer = make_trainer(tmp_path, ring_batches(), max_steps=5)
    trainer.fit()
    trainer.save_pretrained(tmp_path / "pre")
    loaded = from_pretrained(tmp_path / "pre")
    for a, b in zip(loaded.net.state_dict().values(), trainer.ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.prediction == "v"


def test_gradient_accumulation_equals_the_combined_batch():
    g = torch.Generator().manual_seed(0)
    data = {"x0": RING.sample(128, g).float(), "t": torch.rand(128, generator=g).double() * 0.9
            + 0.05, "noise": torch.randn(128, 2, generator=g)}

    def loss_fn(model, batch, generator):
        return pydiff.training.diffusion_loss(model, batch["x0"], t=batch["t"],
                                              noise=batch["noise"]).loss

    def run(batch_size, accumulate):
        torch.manual_seed(0)
        model = pydiff.Denoiser(ToyMLP(hidden=16, depth=1), pydiff.VPSchedule())
        trainer = Trainer(model, BatchLoader(data, batch_size, seed=2), loss_fn=loss_fn,
                          max_steps=6, accumulate=accumulate, progress=False, lr=1e-2)
        return trainer.fit()

    one, acc = run(32, 1), run(16, 2)
    for a, b in zip(one.module.parameters(), acc.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # Adam amplifies rounding
    assert acc.data.epoch * 8 + acc.data.position == 12  # two micro-batches per step


def test_policy_style_training_with_conditioning_and_streaming_times(tmp_path):
    # what a domain does: a pydiff.nn network, dict batches with conditioning, per-position
    # (ramp) noise levels, a DDPM table, then save/load for inference
    from pydiff.nn import UNet1D
    from pydiff.pretrained import from_pretrained

    torch.manual_seed(0)
    net = UNet1D(in_channels=2, global_cond_dim=3, down_dims=(8, 16), time_embed_dim=16,
                 n_groups=4)
    model = pydiff.Denoiser(net, pydiff.DiscreteSchedule.scaled_linear(num_train_timesteps=100))
    g = torch.Generator().manual_seed(0)
    data = {"x0": torch.randn(64, 2, 8, generator=g),
            "global_cond": torch.randn(64, 3, generator=g)}
    loss_fn = DiffusionLoss(t_sampler=PerPosition(DiscreteUniform(), mode="ramp"))
    trainer = Trainer(model, BatchLoader(data, 8), loss_fn=loss_fn, max_steps=4, ema=True,
                      progress=False, log_every=1)
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.history)
    trainer.save_pretrained(tmp_path / "policy")
    loaded = from_pretrained(tmp_path / "policy")
    x, cond = torch.randn(2, 2, 8), torch.randn(2, 3)
    t = torch.tensor([[[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]]]).expand(2, 1, 8)
    torch.testing.assert_close(loaded.x0(x, t, global_cond=cond),
                               trainer.ema_model().x0(x, t, global_cond=cond))


def test_fit_stops_after_the_step_that_crosses_the_time_budget(tmp_path):
    import time

    from pydiff.training import Callback

    class Stamps(Callback):
        def __init__(self):
            self.times = []

        def on_step_end(self, trainer, logs):
            self.times.append(time.perf_counter())

    class Slow:
        """A loss that takes at least 50 ms, so a 0.12 s budget takes several steps."""

        def __call__(self, model, batch, generator):
            time.sleep(0.05)
            return DiffusionLoss()(model, batch, generator)

    stamps = Stamps()
    trainer = make_trainer(tmp_path, ring_batches(), max_steps=100, callbacks=[stamps])
    trainer.loss_fn = Slow()
    start = time.perf_counter()
    trainer.fit(time_budget=0.12)
    elapsed = [t - start for t in stamps.times]
    assert 1 <= trainer.step < 100 and len(elapsed) == trainer.step
    assert elapsed[-1] > 0.12 and all(e <= 0.125 for e in elapsed[:-1])
    trainer.fit(steps=2)  # no budget: the steps asked for
    assert len(stamps.times) == trainer.step == len(elapsed) + 2
    with pytest.raises(ValueError, match="time_budget"):
        trainer.fit(time_budget=0)
