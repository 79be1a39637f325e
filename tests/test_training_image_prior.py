"""pydiff.training.image_prior: the one procedural-image prior recipe that the medical prior and
the patch-parallel model both train with; the shipped checkpoints are what it builds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pydiff.domains.medical.prior import PriorConfig, prior_model, train_prior
from pydiff.domains.medical.reconstructor import PRETRAINED, SHIPPED

import pydiff
from pydiff.parallel.model import SHIPPED as PATCH_SHIPPED
from pydiff.parallel.model import PatchModelConfig, patch_model
from pydiff.training.image_prior import (
    ImagePriorRecipe,
    ProceduralCrops,
    checkpoint_megabytes,
    image_prior,
    train_image_prior,
)

TINY = dict(max_steps=3, pool=4, pool_size=24, crop=16, batch_size=2, base_channels=8)


@pytest.mark.parametrize("recipe, shipped", [
    (PriorConfig(), PRETRAINED / SHIPPED["ct"]),
    (PatchModelConfig(), PATCH_SHIPPED),
])
def test_the_recipes_build_the_shipped_networks(recipe, shipped):
    # a fresh model of the recipe, given the shipped weights, is the shipped model: same
    # architecture (every tensor's name and shape) and the same outputs
    loaded = pydiff.from_pretrained(shipped)
    fresh = image_prior(recipe)
    state = loaded.net.state_dict()
    assert {k: v.shape for k, v in fresh.net.state_dict().items()} == \
        {k: v.shape for k, v in state.items()}
    fresh.net.load_state_dict(state)
    fresh.net.eval(), loaded.net.eval()
    x = torch.randn(2, 1, 24, 40, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.equal(fresh.x0(x, t), loaded.x0(x, t))
    assert fresh.prediction == loaded.prediction and fresh.precond == loaded.precond
    assert fresh.schedule.sigma_max == loaded.schedule.sigma_max
    on_disk = (Path(shipped) / "model.safetensors").stat().st_size / 1e6  # + a JSON header
    assert 0.97 * on_disk < checkpoint_megabytes(fresh) < on_disk


def test_domain_defaults_differ_only_where_they_say():
    medical, patch = PriorConfig(), PatchModelConfig()
    assert medical.whole == 0.5 and medical.turns and medical.attn_levels == ()
    assert patch.whole == 0.0 and not patch.turns and patch.attn_levels == (2, 3)
    assert patch.mid_attention and not medical.mid_attention
    assert prior_model().net.config == image_prior(ImagePriorRecipe()).net.config
    assert patch_model().net.config["attn_levels"] == [2, 3]


def test_crops_augment_resume_and_stay_in_range():
    pool = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    crops = ProceduralCrops(pool, crop=16, batch_size=4, seed=1)
    it = iter(crops)
    next(it)
    state = crops.state_dict()
    second = next(it)
    again = ProceduralCrops(pool, crop=16, batch_size=4, seed=1)
    again.load_state_dict(state)
    assert torch.equal(next(iter(again)), second)
    assert second.shape == (4, 1, 16, 16) and second.min() >= -1 and second.max() <= 1
    # whole=1: every patch is a whole image downscaled (its mean is the image's mean)
    whole = next(iter(ProceduralCrops(pool, crop=16, batch_size=6, seed=2, whole=1.0,
                                      turns=True)))
    image_means = pool.mean(dim=(1, 2, 3)) * 2 - 1
    for patch in whole:
        assert (image_means - patch.mean()).abs().min() < 1e-5
    # whole=0, no turns: every patch is a crop of a pool image or its mirror image
    plain = next(iter(ProceduralCrops(pool, crop=16, batch_size=6, seed=3, whole=0.0,
                                      turns=False)))
    windows = (pool * 2 - 1).unfold(2, 16, 1).unfold(3, 16, 1).reshape(3, 1, -1, 16, 16)
    windows = torch.cat([windows, windows.flip(-1)], 2)[:, 0].reshape(-1, 16, 16)
    for patch in plain:
        assert (windows - patch[0]).abs().amax(dim=(1, 2)).min() == 0


def test_training_saves_a_loadable_checkpoint_with_its_recipe(tmp_path):
    model = train_prior(PriorConfig(modality="mri", **TINY), tmp_path / "p", progress=False)
    loaded = pydiff.from_pretrained(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())["metadata"]
    assert meta["modality"] == "mri" and meta["steps"] == 3
    assert meta["recipe"]["crop"] == 16 and meta["recipe"]["whole"] == 0.5
    assert meta["range"] == [-1.0, 1.0] and meta["final_loss"] > 0
    state = model.net.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.net.state_dict().items())
    # the same recipe and seed train the same weights (the pool, the crops and the noise)
    again = train_image_prior(PriorConfig(modality="mri", **TINY), tmp_path / "q",
                              progress=False)
    assert all(torch.equal(v, state[k]) for k, v in again.net.state_dict().items())


def test_time_budget_stops_training(tmp_path):
    recipe = replace(PatchModelConfig(**TINY), max_steps=10**9, minutes=0.02)
    train_image_prior(recipe, tmp_path / "m", progress=False)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())["metadata"]
    assert 1 <= meta["steps"] < 10**9 and meta["train_seconds"] < 30


@pytest.mark.parametrize("change, culprit", [
    (dict(crop=64), "--crop 64"),
    (dict(minutes=0.0), "--minutes"),
    (dict(whole=1.5), "whole"),
    (dict(ema=1.0), "--ema"),
    (dict(base_channels=16, max_megabytes=1.0), "1.5 MB, over the limit of 1 MB"),
])
def test_bad_recipes_are_refused_before_training(tmp_path, change, culprit):
    with pytest.raises(pydiff.InputError, match=culprit):
        train_image_prior(replace(ImagePriorRecipe(**TINY), **change), tmp_path / "x",
                          progress=False)
    assert not (tmp_path / "x").exists()


def test_warm_start_continues_from_a_checkpoint(tmp_path):
    first = train_image_prior(ImagePriorRecipe(**TINY), tmp_path / "a", progress=False)
    # a rate of ~0 and no EMA drift: the continued network is the checkpoint's
    recipe = replace(ImagePriorRecipe(**TINY), max_steps=1, lr=1e-20, warmup_steps=0, seed=5)
    again = train_image_prior(recipe, tmp_path / "b", progress=False, init=tmp_path / "a")
    fresh = train_image_prior(recipe, tmp_path / "c", progress=False)
    start = first.net.state_dict()
    assert all(torch.allclose(v, start[k]) for k, v in again.net.state_dict().items())
    assert not all(torch.allclose(v, start[k]) for k, v in fresh.net.state_dict().items())
    meta = json.loads((tmp_path / "b" / "config.json").read_text())["metadata"]
    assert meta["init"] == str(tmp_path / "a")
    with pytest.raises(pydiff.InputError, match="another network"):
        train_image_prior(replace(recipe, base_channels=16), tmp_path / "d", progress=False,
                          init=tmp_path / "a")
