"""pydiff.accel: DeepCache feature reuse and stream batching, checked against the plain
network and against sampling each stream alone (speed and quality live in benchmarks/)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pydiff
from pydiff.accel import DeepCache, DeepCacheState, StreamBatch
from pydiff.nn import UNet1D, UNet2D


def _randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere: a fresh UNet starts with zero output convolutions, which
    would make every comparison below hold trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
    return net.eval()


def _unet2d() -> UNet2D:
    return _randomized(UNet2D(1, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1))


def _unet1d(cond: int = 0) -> UNet1D:
    return _randomized(UNet1D(2, global_cond_dim=cond, time_embed_dim=16,
                              down_dims=(8, 16, 32)))


def _noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class _Counter:
    """Counts forward calls of a module through a forward hook."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


# -- DeepCache ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["unet2d", "unet1d"])
@pytest.mark.parametrize("branch", [0, 1])
def test_interval_one_is_the_plain_network_exactly(kind, branch):
    net = _unet2d() if kind == "unet2d" else _unet1d()
    x = _noise(2, 1, 12, 10) if kind == "unet2d" else _noise(2, 2, 14)
    model = pydiff.Denoiser(DeepCache(net, branch=branch), pydiff.VPSchedule(), prediction="eps")
    plain = pydiff.Denoiser(net, pydiff.VPSchedule(), prediction="eps")
    with torch.no_grad():
        cached = pydiff.sample(model.bind(deep_cache=DeepCacheState(1)), x, "dpmpp_2m", steps=5)
        reference = pydiff.sample(plain, x, "dpmpp_2m", steps=5)
    assert torch.equal(cached, reference)


@pytest.mark.parametrize("kind", ["unet2d", "unet1d"])
def test_cached_calls_skip_the_deep_blocks(kind):
    net = _unet2d() if kind == "unet2d" else _unet1d()
    deep, shallow = _Counter(net.mid[0]), _Counter(net.up[-1][0] if kind == "unet2d"
                                                    else net.final)
    x = _noise(2, 1, 8, 8) if kind == "unet2d" else _noise(2, 2, 16)
    model = pydiff.Denoiser(DeepCache(net), pydiff.VPSchedule(), prediction="eps")
    cache = DeepCacheState(interval=3)
    with torch.no_grad():
        pydiff.sample(model.bind(deep_cache=cache), x, "ddim", steps=8)
    assert (cache.calls, cache.full_calls, cache.cached_calls) == (8, 3, 5)  # full: 0, 3, 6
    assert deep.calls == 3 and shallow.calls == 8


@pytest.mark.parametrize("kind", ["unet2d", "unet1d"])
@pytest.mark.parametrize("branch", [0, 1])
def test_a_cached_call_on_unchanged_input_reproduces_the_full_call(kind, branch):
    # the shallow path on the deep features of the same (x, t) is the whole network again:
    # this pins the split (which skips feed which blocks) exactly
    net = DeepCache(_unet2d() if kind == "unet2d" else _unet1d(cond=3), branch=branch)
    x = _noise(3, 1, 12, 12) if kind == "unet2d" else _noise(3, 2, 13)
    args = {} if kind == "unet2d" else {"global_cond": _noise(3, 3, seed=1)}
    t = torch.tensor([0.2, 0.5, 0.9])
    if kind == "unet1d":  # per-position times, as streaming policies use
        t = torch.linspace(0.1, 0.9, 13).expand(3, 13)
    cache = DeepCacheState(interval=2)
    with torch.no_grad():
        full = net(x, t, deep_cache=cache, **args)
        cached = net(x, t, deep_cache=cache, **args)
        plain = net(x, t, **args)
    assert cache.cached_calls == 1
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-6)
    assert torch.equal(full, plain)


def test_a_refresh_schedule_runs_exactly_the_listed_calls_in_full():
    net = _unet2d()
    deep = _Counter(net.mid[0])
    model = pydiff.Denoiser(DeepCache(net), pydiff.VPSchedule(), prediction="eps")
    cache = DeepCacheState.power_schedule(12, 5, power=0.5)
    assert cache.refresh == (0, 5, 8, 9, 11)  # round(12 sqrt(k / 5))
    full_at = []
    with torch.no_grad():
        solver = pydiff.get_solver("ddim")
        state = solver.init(_noise(1, 1, 8, 8), model.schedule,
                            pydiff.timesteps(model.schedule, 12, "time"))
        bound = model.bind(deep_cache=cache)
        while not state.done:
            before = deep.calls
            state = solver.step(state, bound)
            if deep.calls > before:
                full_at.append(cache.calls - 1)
    assert full_at == [0, 5, 8, 9, 11] and cache.cached_calls == 7
    assert DeepCacheState(refresh=(4, 2)).refresh == (0, 2, 4)  # call 0 always runs in full
    assert DeepCacheState.power_schedule(6, 6).refresh == tuple(range(6))
    # crowded at the end (4, 5, 6, 7 for calls 0 .. 5): pulled back into range
    assert DeepCacheState.power_schedule(6, 5, power=0.3).refresh == (0, 2, 3, 4, 5)
    for bad in ({"refresh": (1, -1)}, {"refresh": (True,)}):
        with pytest.raises(pydiff.InputError, match="refresh="):
            DeepCacheState(**bad)
    with pytest.raises(pydiff.InputError, match="full=7"):
        DeepCacheState.power_schedule(6, 7)
    with pytest.raises(pydiff.InputError, match="power=0"):
        DeepCacheState.power_schedule(6, 3, power=0)


@pytest.mark.parametrize("kind", ["unet2d", "unet1d"])
def test_extrapolated_features_are_the_line_through_the_last_two_full_calls(kind):
    net = DeepCache(_unet2d() if kind == "unet2d" else _unet1d(cond=3), branch=1 if
                    kind == "unet2d" else 0)
    x = _noise(2, 1, 8, 8) if kind == "unet2d" else _noise(2, 2, 16)
    args = {} if kind == "unet2d" else {"global_cond": _noise(2, 3, seed=1)}
    times = [torch.tensor([0.9, 0.8]), torch.tensor([0.7, 0.8]), torch.tensor([0.4, 0.8])]
    cache = DeepCacheState(refresh=(0, 1), extrapolate=True)
    plain = DeepCacheState(refresh=(0, 1))
    with torch.no_grad():
        feats = []
        for t in times[:2]:
            net(x, t, deep_cache=cache, **args)
            net(x, t, deep_cache=plain, **args)
            feats.append(cache.features)
        out = net(x, times[2], deep_cache=cache, **args)
        stale = net(x, times[2], deep_cache=plain, **args)
        # sample 0: 0.9 -> 0.7 -> 0.4 is 1.5 steps on; sample 1's times never moved: its last
        step = torch.tensor([1.5, 0.0]).reshape(-1, *[1] * (feats[1].dim() - 1))
        line = feats[1] + step * (feats[1] - feats[0])
        run = net._unet2d if kind == "unet2d" else net._unet1d
        expected, _ = run(x, times[2], deep=line, **args)
    assert cache.cached_calls == 1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[1], stale[1]) and not torch.allclose(out[0], stale[0])


def test_quadratic_extrapolation_is_the_parabola_through_the_last_three_full_calls():
    net = DeepCache(_unet2d(), branch=1)
    x = _noise(1, 1, 8, 8)
    times = [torch.tensor([t]) for t in (0.9, 0.7, 0.6, 0.3)]
    cache = DeepCacheState(refresh=(0, 1, 2), extrapolate=2)
    with torch.no_grad():
        feats = []
        for t in times[:3]:
            net(x, t, deep_cache=cache)
            feats.append(cache.features)
        out = net(x, times[3], deep_cache=cache)
        # Lagrange weights at 0.3 for nodes 0.9, 0.7, 0.6: 2, -9, 8
        curve = 2.0 * feats[0] - 9.0 * feats[1] + 8.0 * feats[2]
        expected, _ = net._unet2d(x, times[3], deep=curve)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(pydiff.InputError, match="extrapolate=3"):
        DeepCacheState(extrapolate=3)


def test_caching_changes_the_result():
    net = _unet2d()
    x = _noise(2, 1, 16, 16)
    sched = pydiff.VPSchedule()
    with torch.no_grad():
        ref = pydiff.sample(pydiff.Denoiser(net, sched, prediction="eps"), x, "ddim", steps=10)
        errs = []
        for branch in (0, 3):
            model = pydiff.Denoiser(DeepCache(net, branch), sched, prediction="eps")
            out = pydiff.sample(model.bind(deep_cache=DeepCacheState(3)), x, "ddim", steps=10)
            errs.append((out - ref).abs().max().item())
    # reuse is an approximation, not a no-op (its quality on a trained model: BENCHMARKS.md)
    assert min(errs) > 1e-4


def test_two_interleaved_samplers_with_own_caches_equal_each_alone():
    net = _unet2d()
    model = pydiff.Denoiser(DeepCache(net), pydiff.VPSchedule(), prediction="eps")
    solver = pydiff.get_solver("dpmpp_2m")
    grid = pydiff.timesteps(model.schedule, 7, "logsnr")
    xa, xb = _noise(1, 1, 8, 8, seed=1), _noise(2, 1, 16, 8, seed=2)
    with torch.no_grad():
        alone = [pydiff.sample(model.bind(deep_cache=DeepCacheState(3)), x, solver, grid=grid)
                 for x in (xa, xb)]
        ma = model.bind(deep_cache=DeepCacheState(3))
        mb = model.bind(deep_cache=DeepCacheState(3))
        sa, sb = solver.init(xa, model.schedule, grid), solver.init(xb, model.schedule, grid)
        while not (sa.done and sb.done):  # one model, steps interleaved
            sa = solver.step(sa, ma)
            sb = solver.step(sb, mb)
    assert torch.equal(sa.x, alone[0]) and torch.equal(sb.x, alone[1])


def test_cache_refills_when_the_input_shape_changes():
    net = DeepCache(_unet1d())
    cache = DeepCacheState(interval=10)
    with torch.no_grad():
        net(_noise(2, 2, 16), torch.rand(2), deep_cache=cache)
        out = net(_noise(3, 2, 16), torch.rand(3), deep_cache=cache)
    assert cache.full_calls == 2 and out.shape == (3, 2, 16)
    cache.reset()
    assert cache.calls == 0 and cache.features is None


def test_deepcache_with_guidance_wrapper_and_grad_free_features():
    net = _unet1d(cond=3)
    base = pydiff.Denoiser(DeepCache(net), pydiff.DiscreteSchedule.cosine(), prediction="eps",
                           time_input="index")
    model = pydiff.guidance.ClipX0(base).bind(deep_cache=DeepCacheState(2),
                                             global_cond=_noise(2, 3))
    x = pydiff.sample(model, _noise(2, 2, 16), "ddim", steps=4)
    assert x.shape == (2, 2, 16) and model.cond["deep_cache"].cached_calls == 2
    assert not model.cond["deep_cache"].features.requires_grad


# -- stream batching ------------------------------------------------------------------------------
def _staggered(streams: StreamBatch, xs, **push) -> list[torch.Tensor]:
    """Push one stream per tick (so streams are at different noise levels), then drain."""
    for k, x in enumerate(xs):
        streams.push(x, **{key: v[k] for key, v in push.items()})
        streams.tick()
    return streams.drain()


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "ddpm", "heun"])
def test_each_stream_equals_sampling_it_alone(solver):
    net = _unet2d()
    model = pydiff.Denoiser(net, pydiff.VPSchedule(), prediction="eps")
    xs = [_noise(1 + k % 2, 1, 8, 8, seed=k) for k in range(6)]
    gens = [torch.Generator().manual_seed(10 + k) for k in range(6)]
    streams = StreamBatch(model, solver, steps=4, max_streams=3)
    with torch.no_grad():
        outs = _staggered(streams, xs, generator=gens)
        alone = [pydiff.sample(model, x, solver, steps=4,
                               generator=torch.Generator().manual_seed(10 + k))
                 for k, x in enumerate(xs)]
    assert len(outs) == 6
    for out, ref in zip(outs, alone):
        # a batched convolution rounds differently; the random network amplifies that (one
        # element in ~100 differs by ~1e-5 relative)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert streams.ticks < 6 * 4  # streams shared ticks
    if solver == "heun":  # per stream in the first tick only, then both stages batched
        assert 0 < streams.unbatched_calls <= 1 + 2  # the first tick's streams (batch 1 + 2)
        assert streams.ticks < streams.network_calls <= 2 * streams.ticks
    else:  # one batched network call per tick, nothing else
        assert streams.unbatched_calls == 0 and streams.network_calls == streams.ticks


def test_every_stage_is_batched_wherever_it_evaluates():
    # Heun with churn evaluates first at a raised noise level (not the state's own x, t), then
    # at the Euler point: both stages come from batched calls; every stream's own generator
    net = _unet2d()
    model = pydiff.Denoiser(net, pydiff.VPSchedule(), prediction="eps")
    options = {"S_churn": 20.0, "S_tmax": 1e3}
    xs = [_noise(1, 1, 8, 8, seed=k) for k in range(4)]
    streams = StreamBatch(model, "heun", steps=3, max_streams=4, **options)
    calls = _Counter(net)
    with torch.no_grad():
        for k, x in enumerate(xs):
            streams.push(x, generator=torch.Generator().manual_seed(30 + k))
        outs = streams.drain()
        # the first tick finds both evaluations elsewhere than its batched call: 4 x 2 per
        # stream; then coroutine ticks, 2 + 1 batched calls
        assert streams.unbatched_calls == 8 and streams.network_calls == 1 + 2 + 1
        assert calls.calls == streams.network_calls + streams.unbatched_calls
        alone = [pydiff.sample(model, x, "heun", steps=3, **options,
                               generator=torch.Generator().manual_seed(30 + k))
                 for k, x in enumerate(xs)]
    for out, ref in zip(outs, alone):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_a_failing_stage_raises_and_leaves_no_parked_step():
    import threading

    calls = []

    def net(x, t):
        calls.append(x.shape[0])
        if len(calls) == 6:  # the second (batched) stage of the second tick
            raise RuntimeError("network failed on purpose")
        return 0.5 * x

    model = pydiff.Denoiser(net, pydiff.VPSchedule(), prediction="eps")
    streams = StreamBatch(model, "heun", steps=3, max_streams=3)
    before = threading.active_count()
    for k in range(3):
        streams.push(torch.full((1, 2), float(k)))
    streams.tick()  # batched first stage, per-stream second stages: coroutines from now on
    with pytest.raises(RuntimeError, match="failed on purpose"):
        streams.tick()
    assert calls == [3, 1, 1, 1, 3, 3] and threading.active_count() == before


def test_streams_with_per_position_times_and_own_conditioning():
    # streaming diffusion policy: per-position grids and each stream's own observation
    net = _unet1d(cond=3)
    model = pydiff.Denoiser(net, pydiff.DiscreteSchedule.cosine(num_train_timesteps=100),
                            prediction="eps", time_input="index")
    levels = (torch.arange(16, dtype=torch.float64) + 1) / 16
    frac = torch.linspace(1.0, 0.0, 3, dtype=torch.float64).reshape(-1, 1)
    grid = ((levels - 1 / 16) + frac / 16).reshape(3, 1, 1, 16)  # each position by 1/16
    xs = [_noise(2, 2, 16, seed=k) for k in range(4)]
    obs = [_noise(2, 3, seed=20 + k) for k in range(4)]
    streams = StreamBatch(model, "dpmpp_2m", steps=2, max_streams=4)
    with torch.no_grad():
        outs = _staggered(streams, xs, global_cond=obs, grid=[grid] * 4)
        alone = [pydiff.sample(model.bind(global_cond=o), x, "dpmpp_2m", grid=grid)
                 for x, o in zip(xs, obs)]
    for out, ref in zip(outs, alone):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert streams.network_calls == streams.ticks


def test_queue_order_capacity_and_pop():
    model = pydiff.Denoiser(lambda x, t: 0.5 * x, pydiff.VPSchedule(), prediction="eps")
    streams = StreamBatch(model, "ddim", steps=2, max_streams=2)
    assert streams.pop() is None and streams.tick() == 0
    tickets = [streams.push(torch.full((1, 3), float(k + 1))) for k in range(3)]
    assert tickets == [0, 1, 2] and streams.waiting == 3
    assert streams.tick() == 2 and streams.waiting == 1 and streams.active == 2
    assert streams.pop() is None
    streams.tick()  # streams 0, 1 finish; stream 2 enters after them
    assert streams.ready == 2 and streams.active == 0
    first = streams.pop()
    # per-stream (per-sample) coefficients are applied in the kernel, a lone run's scalar ones
    # compose on the host: equal up to float32 rounding
    torch.testing.assert_close(first, pydiff.sample(model, torch.full((1, 3), 1.0), "ddim",
                                                    steps=2), rtol=1e-6, atol=0)
    assert streams.tick() == 1 and streams.tick() == 1 and streams.tick() == 0
    assert len(streams.drain()) == 2 and streams.pop() is None


def test_stream_batch_rejects_mismatched_conditioning():
    model = pydiff.Denoiser(lambda x, t, c: x * 0, pydiff.VPSchedule(), prediction="eps")
    streams = StreamBatch(model, "ddim", steps=2)
    with pytest.raises(pydiff.InputError, match="c has shape"):
        streams.push(torch.zeros(2, 3), c=torch.zeros(3))
    streams.push(torch.zeros(2, 3), c=torch.zeros(2))
    streams.push(torch.zeros(2, 3), d=torch.zeros(2))
    with pytest.raises(pydiff.InputError, match="same conditioning keys"):
        streams.tick()


# -- docs -----------------------------------------------------------------------------------------
def test_docs_examples_run_and_print_what_they_say():
    import contextlib
    import io
    import pathlib
    import re

    docs = pathlib.Path(__file__).resolve().parents[1] / "docs" / "accel.md"
    if not docs.exists():  # the source tree's docs; absent when only the package is installed
        pytest.skip("docs/accel.md is not next to the tests")
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:  # one session: later examples use earlier names, as a reader would
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(docs), "exec"), namespace)
        said = [line.split("#", 1)[1].strip() for line in block.splitlines()
                if line.startswith("print(") and "#" in line]
        assert out.getvalue().splitlines() == said
