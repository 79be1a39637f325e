"""DeepCache speed-up and quality against N (a full network call every N calls).

Two trained networks, each sampled from the same noise with and without the cache:

- the shipped medical anatomy prior (UNet2D, EDM) at ``--size`` pixels, each of ``--steps``
  step counts of DPM-Solver++ 2M (Karras grid): PSNR of the cached sample against the
  uncached one (data range 2: the prior's images lie in [-1, 1]) and seconds per sample, for
  every branch;
- a shipped diffusion policy (UNet1D; DDIM, its configured steps): RMS action error against
  the uncached chunk over observations of an expert episode, chunk CPU time, and the success
  rate of closed-loop episodes.

"work" is a cached call's share of a full call's convolution multiply-adds, "ideal" the
speed-up that share allows at interval N (``N / (1 + (N - 1) work)``): they do not depend on the
machine's load. Times are process CPU time (single-threaded), the median of ``--repeats``
rounds that interleave the variants, so the machine's load shifts all of them alike.

Refresh schedules (``--schedules``): a full call every N calls, or as many full calls placed
non-uniformly (``DeepCacheState.power_schedule``), each with or without extrapolating the deep
features from the last two full calls (``+x``).

Usage:
    python benchmarks/accel_deepcache.py --intervals 2,3,5
    python benchmarks/accel_deepcache.py --steps 20 --envs "" \
        --schedules uniform,uniform+x,power,power+x
Writes benchmarks/results/accel_deepcache.json.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

import pydiff
from pydiff.accel import DeepCache, DeepCacheState
from pydiff.guidance import ClipX0


def _cpu(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def cached_work_fraction(net: torch.nn.Module, branch: int, x: torch.Tensor, t: torch.Tensor,
                         **cond: torch.Tensor) -> float:
    """Convolution multiply-adds of a cached call over those of a full call (the load-free
    measure of what a cached call saves; the ideal speed-up at interval N is
    ``N / (1 + (N - 1) f)``)."""
    macs = [0]

    def count(module, inputs, output):
        # a convolution reads weight[0].numel() inputs per output (transposed: per input)
        n = inputs[0].numel() if isinstance(module, torch.nn.ConvTranspose1d) else output.numel()
        macs[0] += n * module.weight[0].numel()

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d)
    handles = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, kinds)]
    try:
        wrapped, cache, counts = DeepCache(net, branch), DeepCacheState(2), []
        with torch.no_grad():
            for _ in range(2):  # a full call, then a cached one
                macs[0] = 0
                wrapped(x, t, deep_cache=cache, **cond)
                counts.append(macs[0])
    finally:
        for h in handles:
            h.remove()
    return counts[1] / counts[0]


def ideal_speedup(fraction: float, interval: int) -> float:
    return interval / (1 + (interval - 1) * fraction)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    mse = (a - b).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


SCHEDULES = ("uniform", "uniform+x", "power", "power+x", "power+x2")
"""Refresh schedules at interval N: a full call every N calls (``uniform``), or as many full
calls (ceil(calls / N)) placed by ``DeepCacheState.power_schedule`` (``power``: sparse early,
dense late); ``+x`` extrapolates the deep features linearly from the last two full calls,
``+x2`` quadratically from the last three."""


def cache_state(schedule: str, interval: int, calls: int, power: float) -> DeepCacheState:
    extrapolate = 2 if schedule.endswith("+x2") else schedule.endswith("+x")
    if schedule.startswith("uniform"):
        return DeepCacheState(interval, extrapolate=extrapolate)
    return DeepCacheState.power_schedule(calls, math.ceil(calls / interval), power,
                                         extrapolate=extrapolate)


def prior_table(intervals: list[int], branches: list[int], size: int, steps: int, batch: int,
                repeats: int, schedules: list[str], power: float, seed: int) -> list[dict]:
    from pydiff.domains.medical.reconstructor import PRETRAINED

    model = pydiff.from_pretrained(PRETRAINED / "anatomy")  # the shipped prior
    net = model.net.eval()
    sched = model.schedule
    x_T = pydiff.prior(sched, (batch, 1, size, size),
                       generator=torch.Generator().manual_seed(seed))
    full_calls: dict = {}

    def run(branch: int | None, interval: int, schedule: str) -> torch.Tensor:
        if branch is None:
            return pydiff.sample(model, x_T, "dpmpp_2m", steps=steps)
        state = cache_state(schedule, interval, steps, power)  # dpmpp_2m: a call per step
        cached = _with_net(model, DeepCache(net, branch)).bind(deep_cache=state)
        out = pydiff.sample(cached, x_T, "dpmpp_2m", steps=steps)
        full_calls[(branch, interval, schedule)] = state.full_calls
        return out

    variants = [(None, 1, "none")] + [(b, n, k) for b in branches for n in intervals
                                      for k in schedules]
    times: dict = {v: [] for v in variants}
    outs: dict = {}
    with torch.no_grad():
        run(None, 1, "none")  # warm-up
        for _ in range(repeats):
            for v in variants:
                seconds, outs[v] = _cpu(lambda v=v: run(*v))
                times[v].append(seconds / batch)
    base = statistics.median(times[variants[0]])
    rows = [{"network": "anatomy prior UNet2D", "branch": None, "interval": 1,
             "schedule": "none", "full_calls": steps, "seed": seed,
             "steps": steps, "seconds_per_sample": base, "speedup": 1.0, "psnr_db": math.inf,
             "cached_work_fraction": 1.0, "ideal_speedup": 1.0}]
    fractions = {b: cached_work_fraction(net, b, x_T[:1], torch.tensor([0.5]))
                 for b in branches}
    for b, n, k in variants[1:]:
        s = statistics.median(times[(b, n, k)])
        full = full_calls[(b, n, k)]
        rows.append({"network": "anatomy prior UNet2D", "branch": b, "interval": n,
                     "schedule": k, "full_calls": full, "seed": seed,
                     "cached_work_fraction": fractions[b],
                     "ideal_speedup": steps / (full + (steps - full) * fractions[b]),
                     "steps": steps, "seconds_per_sample": s, "speedup": base / s,
                     "psnr_db": psnr(outs[(b, n, k)], outs[variants[0]])})
    return rows


def _with_net(model: pydiff.Denoiser, net) -> pydiff.Denoiser:
    return pydiff.Denoiser(net, model.schedule, prediction=model.prediction,
                           precond=model.precond, time_input=model.time_input,
                           sigma_data=model.sigma_data)


def policy_table(env: str, intervals: list[int], chunks: int, seeds: int,
                 repeats: int) -> list[dict]:
    from pydiff.domains.policy import evaluate, load
    from pydiff.domains.policy.data import rollout_expert

    policy = load(env)
    cfg = policy.config
    episode = rollout_expert(env, 1000)
    obs = torch.from_numpy(episode.observations).float()
    to = cfg.n_obs_steps
    histories = [obs[i:i + to].unsqueeze(0) for i in range(0, len(obs) - to,
                                                            max(1, (len(obs) - to) // chunks))]
    cached_base = _with_net(policy.denoiser, DeepCache(policy.net))

    def use(interval: int | None) -> None:
        if interval is None:  # the policy's own inference model
            policy.__dict__.pop("inference_model", None)
            return

        def inference_model():
            m = ClipX0(cached_base, bound=1.0) if cfg.clip_sample else cached_base
            return m.bind(deep_cache=DeepCacheState(interval))
        policy.inference_model = inference_model  # a fresh cache for every chunk

    def chunks_of(interval: int | None) -> tuple[float, torch.Tensor]:
        use(interval)
        out = []
        t0 = time.process_time()
        for k, h in enumerate(histories):
            policy.reset()
            out.append(policy.predict_action_chunk(
                h, generator=torch.Generator().manual_seed(k)))
        return (time.process_time() - t0) / len(histories), torch.cat(out)

    variants = [None, *intervals]
    times: dict = {v: [] for v in variants}
    actions: dict = {}
    chunks_of(None)
    for _ in range(repeats):
        for v in variants:
            seconds, actions[v] = chunks_of(v)
            times[v].append(seconds)
    span = torch.tensor(cfg.action_high) - torch.tensor(cfg.action_low)
    fraction = cached_work_fraction(policy.net, 0, torch.zeros(1, cfg.action_dim, cfg.horizon),
                                    torch.tensor([50.0]),
                                    global_cond=torch.zeros(1, cfg.obs_dim * cfg.n_obs_steps))
    base = statistics.median(times[None])
    rows = []
    for v in variants:
        use(v)
        success = evaluate(policy, env, list(range(seeds))).summary["success"]
        err = ((actions[v] - actions[None]) / span).pow(2).mean().sqrt().item()
        s = statistics.median(times[v])
        rows.append({"network": f"{env} policy UNet1D", "branch": None if v is None else 0,
                     "interval": v or 1, "seconds_per_chunk": s, "speedup": base / s,
                     "cached_work_fraction": 1.0 if v is None else fraction,
                     "ideal_speedup": 1.0 if v is None else ideal_speedup(fraction, v),
                     "action_rms_error_of_range": err, "success": success})
    use(None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--intervals", default="2,3,5")
    ap.add_argument("--branches", default="0,1,2")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", default="20,50", help="solver steps of the prior (a list)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--schedules", default="uniform",
                    help=f"refresh schedules of the prior, a list of {', '.join(SCHEDULES)}")
    ap.add_argument("--power", type=float, default=0.5,
                    help="the power schedule's exponent (< 1: full calls dense late)")
    ap.add_argument("--seed", type=int, default=0, help="the prior's noise seed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--envs", default="pendulum,pointmass", help="policies ('' for none)")
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "accel_deepcache.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    intervals = [int(v) for v in args.intervals.split(",")]
    print(f"1 thread, CPU time; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        prow = prior_table(intervals, [int(b) for b in args.branches.split(",")], args.size,
                           steps, args.batch, args.repeats, args.schedules.split(","),
                           args.power, args.seed)
        print(f"anatomy prior {args.size}x{args.size}, dpmpp_2m {steps} steps, seed {args.seed}")
        print(f"{'branch':>6} {'N':>3} {'schedule':>10} {'full':>4} {'work':>5} {'ideal':>6} "
              f"{'s/sample':>9} {'speed-up':>9} {'PSNR dB':>8}")
        for r in prow:
            print(f"{str(r['branch']):>6} {r['interval']:>3} {r['schedule']:>10} "
                  f"{r['full_calls']:>4} {r['cached_work_fraction']:>5.2f} "
                  f"{r['ideal_speedup']:>5.2f}x {r['seconds_per_sample']:>9.3f} "
                  f"{r['speedup']:>8.2f}x {r['psnr_db']:>8.1f}", flush=True)
        rows += prow
    for env in filter(None, args.envs.split(",")):
        prow = policy_table(env, intervals, args.chunks, args.seeds, args.repeats)
        print(f"{env} policy (UNet1D, branch 0; {args.seeds} episodes)")
        print(f"{'N':>3} {'work':>5} {'ideal':>6} {'ms/chunk':>9} {'speed-up':>9} "
              f"{'action RMS':>11} {'success':>8}")
        for r in prow:
            print(f"{r['interval']:>3} {r['cached_work_fraction']:>5.2f} "
                  f"{r['ideal_speedup']:>5.2f}x {1e3 * r['seconds_per_chunk']:>9.2f} "
                  f"{r['speedup']:>8.2f}x {r['action_rms_error_of_range']:>11.4f} "
                  f"{r['success']:>8.2f}", flush=True)
        rows += prow
    report = {"args": vars(args), "load_average_at_start": os.getloadavg(), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    pydiff.files.write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
