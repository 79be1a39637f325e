"""pydiff.training.procedural: anatomy-like images, fixed seeds, any size, Trainer-ready."""

from __future__ import annotations

import pytest
import torch

import pydiff
from pydiff.nn import UNet2D
from pydiff.training import BatchLoader, Trainer
from pydiff.training.procedural import ProceduralImages, procedural_image, procedural_images


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_fixed_seed_reproduces_and_seeds_differ():
    a = procedural_images(3, 40, gen(5))
    assert torch.equal(a, procedural_images(3, 40, gen(5)))
    b = procedural_images(3, 40, gen(6))
    assert (a - b).abs().mean() > 0.02
    # the three images of one draw differ from each other
    assert (a[0] - a[1]).abs().mean() > 0.02 and (a[1] - a[2]).abs().mean() > 0.02


@pytest.mark.parametrize("size", [8, 33, (24, 56), (64, 20), 96])
def test_any_size_range_and_background(size):
    x = procedural_image(size, gen(1))
    hw = (size, size) if isinstance(size, int) else size
    assert x.shape == (1, *hw) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()
    assert x[0, 0, 0] == 0 and x[0, -1, -1] == 0  # corners are outside the body


def test_images_look_like_cross_sections():
    x = procedural_images(24, 64, gen(0))
    body = (x > 0.02).float().mean(dim=(1, 2, 3))
    assert body.min() > 0.2 and body.max() < 0.85  # the body fills a large, bounded part
    inside = [img[img > 0.02] for img in x[:, 0]]
    # organs and rims give contrast inside the body, not a flat disc
    assert min(float(v.std()) for v in inside) > 0.02
    # some images have a bright rim or bone, some dark air pockets, not all the same
    assert sum(float(img.max()) > 0.75 for img in x) >= 3
    # edges are anti-aliased: intermediate values exist right at the body boundary
    levels = torch.unique((x[0] * 255).round())
    assert levels.numel() > 30


def test_dataset_indexing_is_per_image_and_stable():
    data = ProceduralImages(6, size=(20, 28), seed=3)
    assert len(data) == 6
    stack = data.tensor()
    assert stack.shape == (6, 1, 20, 28)
    assert torch.equal(stack[4], data[4]) and torch.equal(data[-1], data[5])
    assert not torch.equal(data[0], ProceduralImages(6, size=(20, 28), seed=4)[0])
    with pytest.raises(IndexError):
        data[6]
    with pytest.raises(ValueError, match="size"):
        ProceduralImages(2, size=(4, 20))
    with pytest.raises(ValueError, match="length"):
        ProceduralImages(0)


def test_batches_resume_exactly():
    data = ProceduralImages(10, size=16, seed=2)
    stream = data.batches(4)
    it = iter(stream)
    next(it)
    state = stream.state_dict()
    second = next(it)
    again = data.batches(4)
    again.load_state_dict(state)
    assert torch.equal(next(iter(again)), second)
    # the two ranks of a data-parallel run draw different images
    assert not torch.equal(next(iter(data.batches(4, rank=0))), next(iter(data.batches(4, rank=1))))


def test_a_unet_prior_trains_on_it():
    torch.manual_seed(0)
    net = UNet2D(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attn_levels=(), mid_attention=False)
    model = pydiff.Denoiser(net, pydiff.VPSchedule(), prediction="eps")
    data = ProceduralImages(32, size=16, seed=0)
    trainer = Trainer(model, BatchLoader(data.tensor() * 2 - 1, batch_size=8), max_steps=30,
                      lr=3e-3, progress=False, log_every=1)
    trainer.fit()
    losses = [h["loss"] for h in trainer.history]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
