"""Tests for pydiff.nn: shapes, odd sizes, batch size 1, per-position time, equivariance, ..."""

from __future__ import annotations

import doctest
import importlib
import json

import pytest
import torch
import torch.nn.functional as F

import pydiff.ops
from pydiff.nn import (
    EGNN,
    DiT,
    DiTBlock,
    EGNNLayer,
    FiLM,
    GaussianFourierEmbedding,
    ImageDiT,
    MultiHeadAttention,
    SinusoidalEmbedding,
    TimeEmbedding,
    TimestepMLP,
    UNet1D,
    UNet2D,
    attention,
    get_activation,
    normalize_time,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_zero_inits(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Give zero-initialized parameters (adaLN-Zero, zero output convs) random values.

    Otherwise outputs are identically zero at init and every equality test passes trivially.
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if (p == 0).all():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def assert_all_grads(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"zero gradient for {zero}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"


def assert_config_roundtrip(model: torch.nn.Module) -> None:
    cfg = json.loads(json.dumps(model.config))
    clone = type(model)(**cfg)
    clone.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize(
    "module", ["", ".attention", ".dit", ".egnn", ".embeddings", ".film", ".unet1d", ".unet2d"]
)
def test_docstring_examples(module):
    mod = importlib.import_module("pydiff.nn" + module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------
# Embeddings


@pytest.mark.parametrize("cls", [SinusoidalEmbedding, GaussianFourierEmbedding])
def test_embedding_shapes(cls):
    emb = cls(16)
    assert emb(torch.tensor(3.0)).shape == (16,)
    assert emb(2.5).shape == (16,)
    assert emb(torch.rand(4)).shape == (4, 16)
    assert emb(torch.rand(4, 7)).shape == (4, 7, 16)
    assert emb(torch.rand(4, 1, 7)).shape == (4, 7, 16)


@pytest.mark.parametrize("cls", [SinusoidalEmbedding, GaussianFourierEmbedding])
def test_embedding_is_elementwise(cls):
    emb = cls(16)
    t = torch.rand(3, 5) * 100
    per_pos = emb(t)
    for i in range(3):
        for j in range(5):
            torch.testing.assert_close(per_pos[i, j], emb(t[i, j]))
    torch.testing.assert_close(emb(t.unsqueeze(1)), per_pos)


def test_sinusoidal_values():
    emb = SinusoidalEmbedding(8, max_period=10000.0)
    out = emb(torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(out[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = 10000.0 ** (-torch.arange(4) / 3)
    want = torch.cat([torch.sin(2 * freqs), torch.cos(2 * freqs)])
    torch.testing.assert_close(out[1], want)
    # Integer inputs (DDPM step indices) are accepted and mean the same as floats.
    torch.testing.assert_close(emb(torch.tensor([5])), emb(torch.tensor([5.0])))


def test_fourier_is_seeded_and_in_state_dict():
    state = torch.get_rng_state()
    a, b = GaussianFourierEmbedding(32, scale=16.0), GaussianFourierEmbedding(32, scale=16.0)
    assert torch.equal(torch.get_rng_state(), state), "must not consume the global RNG"
    torch.testing.assert_close(a.W, b.W)
    assert not torch.equal(a.W, GaussianFourierEmbedding(32, seed=1).W)
    assert "W" in a.state_dict()
    assert 8.0 < a.W.std().item() < 24.0


def test_embedding_bad_dims():
    with pytest.raises(ValueError, match="dim=7"):
        SinusoidalEmbedding(7)
    with pytest.raises(ValueError, match="dim=3"):
        GaussianFourierEmbedding(3)
    with pytest.raises(ValueError, match="time_embedding='foo'"):
        TimeEmbedding(8, kind="foo")
    with pytest.raises(ValueError, match="act='swish2'"):
        get_activation("swish2")


def test_time_embedding_and_mlp():
    te = TimeEmbedding(16, 64, kind="sinusoidal", act="mish")
    assert te(torch.rand(2)).shape == (2, 64)
    assert te(torch.rand(2, 1, 9)).shape == (2, 9, 64)
    mlp = TimestepMLP(16, 32)
    assert [type(m) for m in mlp] == [torch.nn.Linear, torch.nn.SiLU, torch.nn.Linear]
    assert mlp[0].out_features == 64
    te64 = TimeEmbedding(16, kind="fourier").double()
    assert te64(torch.rand(3, dtype=torch.float64)).dtype == torch.float64


def test_normalize_time():
    assert normalize_time(0.3, 4).shape == (4,)
    assert normalize_time(torch.tensor(7), 4).shape == (4,)
    assert normalize_time(torch.rand(1), 4).shape == (4,)
    assert normalize_time(torch.rand(4, 1, 1), 4).shape == (4,)
    assert normalize_time(torch.rand(4, 1, 1, 1), 4).shape == (4,)
    assert normalize_time(torch.rand(4, 9), 4, 9).shape == (4, 9)
    assert normalize_time(torch.rand(1, 1, 9), 4, 9).shape == (4, 9)
    t = torch.rand(4, 1, 9)
    torch.testing.assert_close(normalize_time(t, 4, 9), t[:, 0])
    with pytest.raises(ValueError, match=r"t has shape \(3,\).*batch size 4"):
        normalize_time(torch.rand(3), 4)
    with pytest.raises(ValueError, match="per-position time is not supported"):
        normalize_time(torch.rand(4, 9), 4)
    with pytest.raises(ValueError, match="sequence length 8"):
        normalize_time(torch.rand(4, 9), 4, 8)


# --------------------------------------------------------------------------------------------
# FiLM


def test_film_formula_and_per_position():
    film = FiLM(cond_dim=3, channels=2)
    x, c = torch.randn(2, 2, 5), torch.randn(2, 3)
    p = film.proj(c)
    scale, bias = p[:, :2, None], p[:, 2:, None]
    torch.testing.assert_close(film(x, c), x * (1 + scale) + bias)
    # A per-position condition constant along L equals the global one.
    torch.testing.assert_close(film(x, c[:, :, None].expand(2, 3, 5)), film(x, c))
    # ...and position j of a varying condition only modulates position j.
    cp = torch.randn(2, 3, 5)
    out = film(x, cp)
    for j in range(5):
        torch.testing.assert_close(out[..., j : j + 1], film(x[..., j : j + 1], cp[:, :, j]))
    # 2D features with a global condition; bias-only variant.
    assert film(torch.randn(2, 2, 4, 4), c).shape == (2, 2, 4, 4)
    add = FiLM(3, 2, act="silu", scale=False)
    torch.testing.assert_close(add(x, c), x + add.proj(F.silu(c))[:, :, None])
    with pytest.raises(ValueError, match="cond has shape"):
        film(x, torch.randn(2, 3, 5, 1))


# --------------------------------------------------------------------------------------------
# Attention


def _sdpa(q, k, v, mask=None, scale=None):
    m = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)


@pytest.mark.parametrize("lq,lk", [(7, 7), (5, 9), (1, 3)])
def test_attention_matches_sdpa(lq, lk):
    q, k, v = torch.randn(2, 3, lq, 8), torch.randn(2, 3, lk, 8), torch.randn(2, 3, lk, 8)
    torch.testing.assert_close(attention(q, k, v), _sdpa(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        attention(q, k, v, scale=0.3), _sdpa(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5
    )
    mask = torch.ones(2, lk, dtype=torch.bool)
    mask[1, lk // 2 + 1 :] = False
    torch.testing.assert_close(
        attention(q, k, v, mask=mask), _sdpa(q, k, v, mask), atol=1e-5, rtol=1e-5
    )


def test_ops_attention_matches_sdpa():
    op = pydiff.ops.attention
    q, k, v = torch.randn(2, 4, 11, 16), torch.randn(2, 4, 13, 16), torch.randn(2, 4, 13, 16)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[0, 9:] = False
    torch.testing.assert_close(op(q, k, v), _sdpa(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(op(q, k, v, mask=mask), _sdpa(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_attention_dispatch_masked_to_kernel_unmasked_to_sdpa():
    choose = pydiff.ops.attention_backend
    q = torch.randn(2, 2, 5, 8)
    keep = torch.ones(2, 5, dtype=torch.bool)
    assert choose(q, q, q, keep) == "kernel"  # key padding: fully masked rows give 0
    assert choose(q, q, q) == "sdpa"  # inference
    assert choose(q, q, q, return_lse=True) == "kernel"  # SDPA's CPU path has no lse
    assert choose(q[0], q[0], q[0]) == "kernel"  # whose argument check names the problem
    with pytest.raises(ValueError, match="impl="):
        pydiff.ops.attention(q, q, q, impl="flash")


@pytest.mark.parametrize("num_threads", [1, 4], indirect=True)
def test_attention_dispatch_training(num_threads):
    # float32 CPU training takes the compiled kernel (measured faster, forward+backward);
    # inference, float64 and bfloat16 keep SDPA
    choose = pydiff.ops.attention_backend
    q, k, v = (torch.randn(3, 2, 6, 8, requires_grad=True) for _ in range(3))
    trains = "kernel" if pydiff.ops.backend() == "extension" else "sdpa"
    assert choose(q, k, v) == trains
    with torch.no_grad():
        assert choose(q, k, v) == "sdpa"  # inference
    assert choose(*(t.detach() for t in (q, k, v))) == "sdpa"  # no grad needed
    for dtype in (torch.float64, torch.bfloat16):  # not measured
        assert choose(*(t.detach().to(dtype).requires_grad_() for t in (q, k, v))) == "sdpa"
    # what only SDPA does: broadcast heads, autocast, functorch transforms -> SDPA
    assert choose(q, k[:, :1], v[:, :1]) == "sdpa"
    assert attention(q, k[:, :1], v[:, :1]).shape == q.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choose(q, k, v) == "sdpa"
        assert attention(q, k, v).dtype == torch.bfloat16
    torch.func.vmap(lambda a: attention(a, a, a))(q.detach()[None].requires_grad_())
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = attention(q, k, v)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(t.grad is not None for t in (q, k, v))


@pytest.mark.parametrize("masked", [False, True])
def test_attention_impls_agree(masked):
    # "sdpa" keeps pydiff's semantics (fully masked queries give 0, in value and gradient)
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = None
    if masked:
        mask = torch.rand(2, 7) > 0.3
        mask[1] = False
    grads = {}
    for impl in ("kernel", "sdpa"):
        out = pydiff.ops.attention(q, k, v, mask=mask, impl=impl)
        assert torch.isfinite(out).all()
        grads[impl] = (out, *torch.autograd.grad((out * out).sum(), (q, k, v)))
    for a, b in zip(grads["kernel"], grads["sdpa"]):
        torch.testing.assert_close(a, b)


def test_attention_bad_args_and_fully_masked_rows():
    q = torch.randn(2, 1, 4, 8)
    with pytest.raises(ValueError, match="mask must be a bool key-padding mask"):
        attention(q, q, q, mask=torch.ones(2, 4))  # float, not bool
    with pytest.raises(ValueError, match="q, k, v must be"):
        attention(q[0], q[0], q[0])
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1] = False  # an all-padding sample: zeros, not NaN that would poison the batch
    out = attention(q, q, q, mask=mask)
    assert torch.isfinite(out).all() and out[1].abs().max() == 0
    torch.testing.assert_close(out[0], _sdpa(q, q, q)[0], atol=1e-5, rtol=1e-5)


def test_mha_cross_attention_and_padding():
    mha = MultiHeadAttention(16, num_heads=4, context_dim=6)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, 6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 6:] = False
    out = mha(x, ctx, mask=mask)
    assert out.shape == (2, 5, 16)
    ctx2 = ctx.clone()
    ctx2[:, 6:] = 1e3 * torch.randn(2, 3, 6)  # padded keys: anything
    torch.testing.assert_close(mha(x, ctx2, mask=mask), out)
    torch.testing.assert_close(mha(x, ctx[:, :6]), out, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# UNet1D


def small_unet1d(**kw) -> UNet1D:
    kw = {"in_channels": 3, "down_dims": (16, 32, 64), "time_embed_dim": 32, **kw}
    return UNet1D(**kw).eval()


@pytest.mark.parametrize("length", [1, 2, 7, 16, 21])
@pytest.mark.parametrize("batch", [1, 3])
def test_unet1d_shapes(length, batch):
    net = small_unet1d(global_cond_dim=5, out_channels=2)
    x = torch.randn(batch, 3, length)
    g = torch.randn(batch, 5)
    assert net(x, torch.rand(batch) * 100, global_cond=g).shape == (batch, 2, length)
    assert net(x, 10, global_cond=g).shape == (batch, 2, length)
    out = net(x, torch.rand(batch, length) * 100, global_cond=g)
    assert out.shape == (batch, 2, length)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("length", [8, 13])
@pytest.mark.parametrize("kind", ["sinusoidal", "fourier"])
def test_unet1d_constant_per_position_equals_global(length, kind):
    net = small_unet1d(global_cond_dim=4, time_embedding=kind)
    x, g = torch.randn(2, 3, length), torch.randn(2, 4)
    t = torch.tensor([3.0, 40.0]) if kind == "sinusoidal" else torch.tensor([-1.0, 0.7])
    ref = net(x, t, global_cond=g)
    per_pos = t[:, None].expand(2, length).contiguous()
    torch.testing.assert_close(net(x, per_pos, global_cond=g), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net(x, per_pos[:, None], global_cond=g), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net(x, t[:, None, None], global_cond=g), ref)


def test_unet1d_per_position_only_changes_its_sample():
    net = small_unet1d()
    x = torch.randn(2, 3, 16)
    t_global = torch.tensor([10.0, 10.0])
    ref = net(x, t_global)
    t = torch.full((2, 16), 10.0)
    t[1] = torch.linspace(0.0, 90.0, 16)  # sample 1: noise level rising along the horizon
    out = net(x, t)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-4)
    assert (out[1] - ref[1]).abs().amax(dim=0).min() > 1e-4  # every position of sample 1 changed
    # Sample 1 matches running it alone (no leakage across the batch).
    torch.testing.assert_close(net(x[1:], t[1:]), out[1:], atol=1e-5, rtol=1e-4)
    # Only the tail differs from the global t: the output changes, and most near the tail.
    t_tail = torch.full((1, 16), 10.0)
    t_tail[0, 12:] = 80.0
    d = (net(x[:1], t_tail) - ref[:1]).abs().amax(dim=1)[0]
    assert d[12:].mean() > d[:4].mean()


def test_unet1d_errors():
    net = small_unet1d(global_cond_dim=4)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="global_cond has shape None"):
        net(x, 1.0)
    with pytest.raises(ValueError, match=r"global_cond has shape \(2, 5\)"):
        net(x, 1.0, global_cond=torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"x has shape \(2, 8, 3\)"):
        net(x.transpose(1, 2), 1.0, global_cond=torch.randn(2, 4))
    with pytest.raises(ValueError, match="sequence length 8"):
        net(x, torch.rand(2, 7), global_cond=torch.randn(2, 4))
    with pytest.raises(ValueError, match="global_cond_dim=0"):
        small_unet1d()(x, 1.0, global_cond=torch.randn(2, 4))
    with pytest.raises(ValueError, match="n_groups=8"):
        UNet1D(3, down_dims=(12, 24))
    with pytest.raises(ValueError, match="kernel_size=4"):
        UNet1D(3, kernel_size=4)


def test_unet1d_grads_config_determinism():
    net = small_unet1d(global_cond_dim=4).train()
    x, g = torch.randn(2, 3, 11), torch.randn(2, 4)
    net(x, torch.rand(2, 11) * 50, global_cond=g).square().mean().backward()
    assert_all_grads(net)
    assert_config_roundtrip(net)
    torch.manual_seed(5)
    a = small_unet1d(global_cond_dim=4)
    torch.manual_seed(5)
    b = small_unet1d(global_cond_dim=4)
    assert torch.equal(a(x, 3.0, global_cond=g), b(x, 3.0, global_cond=g))
    assert torch.equal(a(x, 3.0, global_cond=g), a(x, 3.0, global_cond=g))
    assert net.config["down_dims"] == [16, 32, 64]


def test_unet1d_float64_and_single_level():
    net = UNet1D(2, down_dims=(8,), time_embed_dim=16).double()
    out = net(torch.randn(1, 2, 5, dtype=torch.float64), torch.rand(1, 5, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (1, 2, 5)


# --------------------------------------------------------------------------------------------
# UNet2D


def small_unet2d(**kw) -> UNet2D:
    kw = {
        "in_channels": 2,
        "base_channels": 8,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attn_levels": (1, 2),
        "num_heads": 2,
        **kw,
    }
    return randomize_zero_inits(UNet2D(**kw)).eval()


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8), (13, 4)])
@pytest.mark.parametrize("batch", [1, 2])
def test_unet2d_shapes(size, batch):
    net = small_unet2d(cond_channels=3, out_channels=1)
    x, y = torch.randn(batch, 2, *size), torch.randn(batch, 3, *size)
    out = net(x, torch.rand(batch), cond=y)
    assert out.shape == (batch, 1, *size)
    assert torch.isfinite(out).all()
    # A per-sample t broadcastable to x is the same as [B].
    t = torch.rand(batch)
    torch.testing.assert_close(net(x, t[:, None, None, None], cond=y), net(x, t, cond=y))


def test_unet2d_cond_matters_and_batch_independent():
    net = small_unet2d(cond_channels=2, time_embedding="sinusoidal")
    x, y = torch.randn(2, 2, 6, 6), torch.randn(2, 2, 6, 6)
    t = torch.tensor([10.0, 500.0])
    out = net(x, t, cond=y)
    assert not torch.allclose(out, net(x, t, cond=torch.zeros_like(y)))
    assert not torch.allclose(out, net(x, t.flip(0), cond=y))
    torch.testing.assert_close(net(x[1:], t[1:], cond=y[1:]), out[1:], atol=1e-5, rtol=1e-4)


def test_unet2d_zero_output_at_init_and_grads():
    net = UNet2D(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, dropout=0.1)
    x = torch.randn(2, 1, 6, 5)
    assert net(x, torch.rand(2)).abs().max() == 0  # zero-initialized output conv
    randomize_zero_inits(net).train()
    net(x, torch.rand(2)).square().mean().backward()
    assert_all_grads(net)
    assert_config_roundtrip(net)


def test_unet2d_errors():
    net = small_unet2d(cond_channels=1)
    x = torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match="cond has shape None"):
        net(x, 0.1)
    with pytest.raises(ValueError, match=r"cond has shape \(2, 1, 4, 3\)"):
        net(x, 0.1, cond=torch.randn(2, 1, 4, 3))
    with pytest.raises(ValueError, match="UNet2D takes one time per sample"):
        net(x, torch.rand(2, 1, 4, 4), cond=torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="attn_levels"):
        UNet2D(1, channel_mult=(1, 2), attn_levels=(2,))


# --------------------------------------------------------------------------------------------
# DiT


def test_dit_block_adaln_zero_and_per_token():
    blk = DiTBlock(16, num_heads=2, cond_dim=8)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 8)
    torch.testing.assert_close(blk(x, c), x)  # adaLN-Zero: identity at init
    randomize_zero_inits(blk, std=0.3)
    out = blk(x, c)
    assert not torch.allclose(out, x)
    torch.testing.assert_close(blk(x, c[:, None].expand(2, 5, 8)), out)


def small_dit(**kw) -> DiT:
    kw = {"in_channels": 3, "hidden_dim": 32, "depth": 2, "num_heads": 4, **kw}
    return randomize_zero_inits(DiT(**kw), std=0.2).eval()


@pytest.mark.parametrize("length", [1, 6, 9])
@pytest.mark.parametrize("batch", [1, 2])
def test_dit_shapes_and_per_position(length, batch):
    net = small_dit(out_channels=2, global_cond_dim=4)
    x, g = torch.randn(batch, 3, length), torch.randn(batch, 4)
    t = torch.rand(batch) * 100
    ref = net(x, t, global_cond=g)
    assert ref.shape == (batch, 2, length)
    per_pos = t[:, None].expand(batch, length)
    torch.testing.assert_close(net(x, per_pos, global_cond=g), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net(x, per_pos[:, None], global_cond=g), ref, atol=1e-5, rtol=1e-4)


def test_dit_per_position_and_mask():
    net = small_dit()
    x = torch.randn(2, 3, 8)
    ref = net(x, torch.tensor([20.0, 20.0]))
    t = torch.full((2, 8), 20.0)
    t[1, 5:] = 90.0
    out = net(x, t)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out[1], ref[1])
    # Padded positions (mask False) cannot influence real ones.
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 6:] = False
    a = net(x, 5.0, mask=mask)
    x2 = x.clone()
    x2[:, :, 6:] = 100 * torch.randn(2, 3, 2)
    b = net(x2, 5.0, mask=mask)
    torch.testing.assert_close(a[..., :6], b[..., :6])
    torch.testing.assert_close(a[..., :6], net(x[..., :6], 5.0), atol=1e-5, rtol=1e-4)


def test_dit_zero_init_grads_config():
    net = DiT(2, hidden_dim=16, depth=2, num_heads=2, time_embedding="fourier")
    x = torch.randn(2, 2, 5)
    assert net(x, torch.rand(2)).abs().max() == 0
    randomize_zero_inits(net, std=0.2).train()
    net(x, torch.rand(2, 5)).square().mean().backward()
    assert_all_grads(net)
    assert_config_roundtrip(net)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 2\)"):
        net(x.transpose(1, 2), 0.5)


def test_image_dit_patches_row_major_and_roundtrip():
    net = randomize_zero_inits(ImageDiT(2, patch=2, hidden_dim=16, depth=1, num_heads=2),
                               std=0.2).eval()
    x = torch.randn(3, 2, 6, 4)
    tokens = net.to_tokens(x)
    assert tokens.shape == (3, 2 * 2 * 2, 3 * 2)
    # token 3 is patch row 1, column 1: rows 2-3, columns 2-3 of both channels
    assert torch.equal(tokens[:, :, 3], x[:, :, 2:4, 2:4].reshape(3, -1))
    assert torch.equal(net.to_image(tokens, 6, 4), x)
    t = torch.rand(3)
    with torch.no_grad():  # the network is the DiT on the patch sequence
        assert torch.equal(net(x, t), net.to_image(net.dit(tokens, t), 6, 4))
    assert_config_roundtrip(net)
    with pytest.raises(ValueError, match="multiples of patch=2"):
        net(torch.randn(1, 2, 5, 4), 0.5)


# --------------------------------------------------------------------------------------------
# EGNN


def random_orthogonal(dim: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q


def small_egnn(**kw) -> EGNN:
    kw = {"in_node_dim": 4, "hidden_dim": 16, "num_layers": 3, **kw}
    net = EGNN(**kw).double()
    # Make coordinate updates large enough that equivariance is a non-trivial check.
    with torch.no_grad():
        for layer in net.layers:
            layer.phi_x[-1].weight.normal_(0, 0.3)
    return net


@pytest.mark.parametrize(
    "kw", [{}, {"attention": True, "aggregation": "mean", "coords_range": 3.0, "edge_dim": 2}]
)
def test_egnn_e3_equivariance(kw):
    gen = torch.Generator().manual_seed(0)
    net = small_egnn(**kw)
    b, n = 2, 7
    h = torch.randn(b, n, 4, dtype=torch.float64, generator=gen)
    x = torch.randn(b, n, 3, dtype=torch.float64, generator=gen)
    t = torch.rand(b, dtype=torch.float64, generator=gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 5:] = False
    e = torch.randn(b, n, n, 2, dtype=torch.float64, generator=gen) if kw else None
    if e is not None:
        e = e + e.transpose(1, 2)
    h1, x1 = net(h, x, t=t, mask=mask, edge_attr=e)
    assert (x1 - x)[mask].abs().max() > 1e-2  # coordinates actually moved
    rot = random_orthogonal(3, gen)  # includes reflections half of the time: E(3)
    shift = torch.randn(3, dtype=torch.float64, generator=gen)
    h2, x2 = net(h, x @ rot.T + shift, t=t, mask=mask, edge_attr=e)
    torch.testing.assert_close(h2[mask], h1[mask])
    torch.testing.assert_close(x2[mask], (x1 @ rot.T + shift)[mask])


def test_egnn_permutation_equivariance():
    gen = torch.Generator().manual_seed(1)
    net = small_egnn(edge_dim=1)
    h = torch.randn(1, 6, 4, dtype=torch.float64, generator=gen)
    x = torch.randn(1, 6, 3, dtype=torch.float64, generator=gen)
    e = torch.randn(1, 6, 6, 1, dtype=torch.float64, generator=gen)
    t = torch.rand(1, 6, dtype=torch.float64, generator=gen)  # per-node time
    perm = torch.randperm(6, generator=gen)
    h1, x1 = net(h, x, t=t, edge_attr=e)
    h2, x2 = net(h[:, perm], x[:, perm], t=t[:, perm], edge_attr=e[:, perm][:, :, perm])
    torch.testing.assert_close(h2, h1[:, perm])
    torch.testing.assert_close(x2, x1[:, perm])


def test_egnn_masked_nodes_do_not_affect_others():
    gen = torch.Generator().manual_seed(2)
    net = small_egnn()
    h = torch.randn(2, 8, 4, dtype=torch.float64, generator=gen)
    x = torch.randn(2, 8, 3, dtype=torch.float64, generator=gen)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, 2] = False
    h1, x1 = net(h, x, t=0.3, mask=mask)
    # Garbage in padded slots changes nothing for real nodes; padded outputs are zero.
    h_g, x_g = h.clone(), x.clone()
    h_g[~mask] = 1e4 * torch.randn(int((~mask).sum()), 4, dtype=torch.float64, generator=gen)
    x_g[~mask] = 1e4 * torch.randn(int((~mask).sum()), 3, dtype=torch.float64, generator=gen)
    h2, x2 = net(h_g, x_g, t=0.3, mask=mask)
    torch.testing.assert_close(h2, h1)
    torch.testing.assert_close(x2, x1)
    assert h1[~mask].abs().max() == 0 and x1[~mask].abs().max() == 0
    # A padded molecule equals the same molecule without padding.
    h3, x3 = net(h[:1, :5], x[:1, :5], t=0.3)
    torch.testing.assert_close(h3, h1[:1, :5])
    torch.testing.assert_close(x3, x1[:1, :5])
    # Per-node constant t equals the global t.
    h4, x4 = net(h, x, t=torch.full((2, 8), 0.3, dtype=torch.float64), mask=mask)
    torch.testing.assert_close(h4, h1)
    torch.testing.assert_close(x4, x1)


def test_egnn_layer_masking_passthrough():
    layer = EGNNLayer(5, 8).double()
    h = torch.randn(1, 4, 5, dtype=torch.float64)
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True]])
    h1, x1 = layer(h, x, mask)
    torch.testing.assert_close(h1[0, 2], h[0, 2])  # masked nodes pass through a layer
    torch.testing.assert_close(x1[0, 2], x[0, 2])
    h_all, _ = layer(h, x)
    assert not torch.allclose(h_all[0, 0], h1[0, 0])  # node 2 mattered when it was real


def test_egnn_grads_config_and_errors():
    net = EGNN(4, hidden_dim=16, num_layers=2, time_embedding="sinusoidal", time_embed_dim=8)
    h, x = torch.randn(2, 5, 4), torch.randn(2, 5, 3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    h_out, x_out = net(h, x, t=torch.rand(2) * 100, mask=mask)
    (h_out.square().mean() + (x_out - x).square().mean()).backward()
    assert_all_grads(net)
    assert_config_roundtrip(net)
    with pytest.raises(ValueError, match="t is required"):
        net(h, x)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\)"):
        net(h, x, t=0.1, mask=mask[:, :4])
    with pytest.raises(ValueError, match="time_embedding=None"):
        EGNN(4, time_embedding=None)(h, x, t=0.1)
    with pytest.raises(ValueError, match="edge_attr"):
        EGNN(4, edge_dim=2)(h, x, t=0.1)
