"""The control loop: a policy drives an env at a fixed rate, with deadlines.

:func:`run_episode` runs one episode. With ``hz`` set it runs in real time: control tick ``k`` is
due at ``start + k / hz``; the policy's ``select_action`` must return before the tick's
deadline (the next tick). **On a missed deadline the actuator holds its last command**: the
env is stepped with the previous action once for every tick period that elapsed past the
deadline (time passed in the world while the policy computed), each such tick is counted in
``deadline_misses``, and the late action is applied at the next tick. The loop then sleeps to
the next tick boundary. Without ``hz`` (``hz=None``) it runs unthrottled in simulated time: no
deadlines, nothing held.

:func:`evaluate` runs many seeds in lockstep, one batched ``select_action`` per tick, in
simulated time, and summarizes them.

Every action passes the policy's clipper (counted), and every observation its checks.

Example:
    >>> from pydiff.domains.policy.control import run_episode
    >>> from pydiff.domains.policy.experts import PointMassExpert
    >>> result = run_episode(ExpertPolicy(PointMassExpert(side=1)), "pointmass", seed=0)
    >>> result.success, result.side
    (True, 1)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pydiff.errors import InputError

from .envs import POINTMASS_ID, env_spec, episode_success, make_env, pendulum_angle, resolve_env_id
from .metrics import jump_summary, latency_summary
from .validation import ActionClipper, check_observation


@dataclass
class EpisodeResult:
    """One episode of a policy in an env (see :func:`run_episode`)."""

    seed: int
    ret: float
    success: bool
    steps: int
    side: int = 0
    # Push-T: the episode's maximum target coverage (None where the env reports none)
    coverage: float | None = None
    deadline_misses: int = 0
    held_steps: int = 0
    clipped_actions: int = 0
    select_latency_ms: list[float] = field(default_factory=list)
    chunk_latency_ms: list[float] = field(default_factory=list)
    chunk_cpu_ms: list[float] = field(default_factory=list)
    boundary_jumps: list[float] = field(default_factory=list)
    observations: np.ndarray | None = None
    actions: np.ndarray | None = None
    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures (latencies in ms)."""
        return {
            "seed": self.seed, "return": self.ret, "success": self.success, "steps": self.steps,
            "side": self.side, "coverage": self.coverage,
            "deadline_misses": self.deadline_misses,
            "held_steps": self.held_steps, "clipped_actions": self.clipped_actions,
            "select_latency_ms": latency_summary(self.select_latency_ms),
            "chunk_latency_ms": latency_summary(self.chunk_latency_ms),
            "chunk_cpu_ms": latency_summary(self.chunk_cpu_ms),
            # without the episode's first chunk, which RTI and streaming compute in full
            "steady_chunk_latency_ms": latency_summary(self.chunk_latency_ms[1:]),
            "boundary_jump": jump_summary(self.boundary_jumps),
        }

    def plot_chunks(self, path: str, title: str = "") -> str:
        """Executed actions with every predicted chunk overlaid (needs ``record_chunks``)."""
        from .plots import plot_action_chunks

        return plot_action_chunks(self, path, title)

    def save_gif(self, path: str, fps: int = 20) -> str:
        """The rendered frames as an animated GIF (needs ``render=True``)."""
        from .plots import save_gif

        return save_gif(self.frames, path, fps)


@dataclass
class Evaluation:
    """Episodes of one policy in one env (:func:`evaluate`) and their :attr:`summary`."""

    env: str
    episodes: list[EpisodeResult]

    @property
    def summary(self) -> dict[str, Any]:
        """Success, return, latencies, jumps, sides and misses (see :func:`summarize`)."""
        return summarize(self.episodes)

    def plot(self, path: str, title: str = "") -> str:
        """Trajectories of all episodes (point mass: paths; pendulum: angle over time)."""
        from .plots import plot_trajectories

        return plot_trajectories(self.episodes, self.env, path, title)


class ExpertPolicy:
    """A scripted expert behind the policy interface (``reset``, ``select_action``), batched.

    It keeps one expert copy per batch row, so experts with internal state stay separate.
    """

    def __init__(self, expert: Any, action_low: Any = None, action_high: Any = None):
        self.expert = expert
        self._copies: list[Any] = []
        self.clipper = None if action_low is None else ActionClipper(action_low, action_high)

    def reset(self) -> None:
        self._copies = []
        if self.clipper is not None:
            self.clipper.reset_counts()

    def select_action(self, obs: Any, generator: Any = None) -> torch.Tensor:
        import copy

        obs_np = np.asarray(obs, dtype=np.float32)
        x = check_observation(obs_np, obs_np.shape[-1]).numpy()
        while len(self._copies) < x.shape[0]:
            clone = copy.deepcopy(self.expert)
            clone.reset()
            self._copies.append(clone)
        act = torch.as_tensor(np.stack([e(o) for e, o in zip(self._copies, x)]))
        if self.clipper is not None:
            act = self.clipper(act)
        return act[0] if obs_np.ndim == 1 else act


def _side(infos: list[dict], observations: np.ndarray, spec: Any) -> int:
    """The mode an episode took: the point mass's side of the obstacle (-1 left, +1 right);
    for Pendulum the swing direction on arrival at the top (sign of the angular velocity the
    first time the angle comes within 0.6 rad of upright; 0 if it starts there or never)."""
    if spec.success_from == "upright":
        near = np.abs(pendulum_angle(observations)) < 0.6
        if len(near) == 0 or near[0] or not near.any():
            return 0
        return int(np.sign(observations[int(np.argmax(near)), 2]))
    return int(infos[-1].get("side", 0)) if infos else 0


def max_coverage(infos: list[dict]) -> float | None:
    """The largest ``info["coverage"]`` of an episode (Push-T), or None if the env has none.

    Diffusion Policy reports Push-T as the mean over episodes of this maximum.
    """
    values = [float(i["coverage"]) for i in infos if "coverage" in i]
    return max(values) if values else None


def run_episode(policy: Any, env_name: str, seed: int, *, hz: float | None = None,
                max_steps: int | None = None, generator_seed: int | None = None,
                record_chunks: bool = False, render: bool = False) -> EpisodeResult:
    """Run one episode (real time with ``hz``, simulated time without; module docstring).

    Args:
        policy: anything with ``reset()`` and ``select_action(obs, generator=...)``.
        env_name: env short name or gymnasium id.
        seed: ``env.reset(seed=seed)``; the policy's noise comes from a generator seeded with
            ``generator_seed`` (default ``seed``).
        hz: control rate for real-time runs (None: unthrottled, simulated time).
        max_steps: episode length (default the env spec's).
        record_chunks: keep every predicted chunk (for plots).
        render: keep ``env.render()`` frames (for GIFs).
    """
    if hz is not None and not hz > 0:
        raise InputError(f"hz must be > 0 (or None for simulated time), got {hz}")
    spec = env_spec(env_name)
    env = make_env(env_name, render_mode="rgb_array" if render else None)
    steps_limit = max_steps or spec.max_steps
    generator = torch.Generator().manual_seed(seed if generator_seed is None else generator_seed)
    policy.reset()
    obs, _ = env.reset(seed=seed)
    observations, actions, infos, frames, chunks = [obs], [], [], [], []
    ret, misses, held = 0.0, 0, 0
    select_ms: list[float] = []
    chunk_ms: list[float] = []
    chunk_cpu: list[float] = []
    jumps: list[float] = []
    period = 1.0 / hz if hz else 0.0
    next_tick = time.perf_counter()
    last_action = None
    done = False

    def apply(action: np.ndarray) -> None:
        nonlocal obs, ret, done
        obs, reward, terminated, truncated, info = env.step(action)
        ret += float(reward)
        observations.append(obs)
        actions.append(action)
        infos.append(info)
        if render:
            frames.append(env.render())
        done = bool(terminated or truncated) or len(actions) >= steps_limit

    if render:
        frames.append(env.render())
    while not done:
        chunks_before = getattr(policy, "chunk_count", None)
        start, cpu_start = time.perf_counter(), time.process_time()
        action = policy.select_action(obs, generator=generator)
        finished = time.perf_counter()
        select_ms.append(1e3 * (finished - start))
        action = action.detach().cpu().numpy().astype(np.float32)
        if chunks_before is not None and policy.chunk_count > chunks_before:
            chunk_ms.append(select_ms[-1])
            chunk_cpu.append(1e3 * (time.process_time() - cpu_start))
            if last_action is not None:
                # smoothness: the step from the last executed action to a new chunk's first
                jumps.append(float(np.linalg.norm(action - last_action)))
            if record_chunks:
                chunks.append((len(actions), policy.last_chunk[0].detach().cpu().numpy()))
        if hz:
            deadline = next_tick + period
            if finished > deadline and last_action is not None:
                # the world did not wait: the actuator held its last command meanwhile
                late = int((finished - deadline) // period) + 1
                for _ in range(late):
                    if done:
                        break
                    apply(last_action)
                    misses += 1
                    held += 1
                next_tick += late * period
            elif finished > deadline:
                misses += 1  # first tick: nothing to hold yet, the env waited
        if not done:
            apply(action)
            last_action = action
        if hz:
            next_tick += period
            pause = next_tick - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    env.close()
    obs_arr = np.asarray(observations, dtype=np.float32)
    clipper = getattr(policy, "clipper", None)
    return EpisodeResult(
        seed=seed, ret=ret, success=episode_success(spec, obs_arr, infos), steps=len(actions),
        side=_side(infos, obs_arr, spec), coverage=max_coverage(infos),
        deadline_misses=misses, held_steps=held,
        clipped_actions=clipper.clipped_actions if clipper is not None else 0,
        select_latency_ms=select_ms, chunk_latency_ms=chunk_ms, chunk_cpu_ms=chunk_cpu,
        boundary_jumps=jumps, observations=obs_arr,
        actions=np.asarray(actions, dtype=np.float32), chunks=chunks, frames=frames)


def _noise_seed(seed: int, noise_seed: int) -> int:
    """The policy's generator seed for env ``seed`` in noise stream ``noise_seed`` (0: the
    env seed itself, as every figure before streams existed)."""
    return seed if noise_seed == 0 else seed + 1_000_003 * noise_seed


def _lockstep(policy: Any, env_name: str, seeds: list[int], max_steps: int | None,
              noise_seed: int = 0) -> list[EpisodeResult]:
    """All ``seeds`` in lockstep in simulated time, one batched ``select_action`` a tick."""
    spec = env_spec(env_name)
    steps_limit = max_steps or spec.max_steps
    envs = [make_env(env_name) for _ in seeds]
    generators = [torch.Generator().manual_seed(_noise_seed(s, noise_seed)) for s in seeds]
    policy.reset()
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
    n = len(seeds)
    observations = [[o.copy()] for o in obs]  # rows of obs are overwritten each tick
    actions: list[list[np.ndarray]] = [[] for _ in range(n)]
    infos: list[list[dict]] = [[] for _ in range(n)]
    jumps: list[list[float]] = [[] for _ in range(n)]
    rets = np.zeros(n)
    done = np.zeros(n, dtype=bool)
    # one batched call serves every episode: all share these lists
    select_ms: list[float] = []
    chunk_ms: list[float] = []
    chunk_cpu: list[float] = []
    clipped = np.zeros(n, dtype=np.int64)
    while not done.all():
        chunks_before = getattr(policy, "chunk_count", None)
        start, cpu_start = time.perf_counter(), time.process_time()
        act = policy.select_action(obs, generator=generators)
        select_ms.append(1e3 * (time.perf_counter() - start))
        new_chunk = chunks_before is not None and policy.chunk_count > chunks_before
        if new_chunk:
            chunk_ms.append(select_ms[-1])
            chunk_cpu.append(1e3 * (time.process_time() - cpu_start))
        act = act.detach().cpu().numpy().astype(np.float32)
        clipper = getattr(policy, "clipper", None)
        if clipper is not None:
            clipped += clipper.last_clipped_rows.numpy().astype(np.int64) * ~done
        for i, env in enumerate(envs):
            if done[i]:
                continue
            if new_chunk and actions[i]:
                jumps[i].append(float(np.linalg.norm(act[i] - actions[i][-1])))
            o, r, terminated, truncated, info = env.step(act[i])
            obs[i] = o
            rets[i] += float(r)
            observations[i].append(o)
            actions[i].append(act[i])
            infos[i].append(info)
            done[i] = bool(terminated or truncated) or len(actions[i]) >= steps_limit
    results = []
    for i, s in enumerate(seeds):
        envs[i].close()
        obs_arr = np.asarray(observations[i], dtype=np.float32)
        results.append(EpisodeResult(
            seed=s, ret=float(rets[i]), success=episode_success(spec, obs_arr, infos[i]),
            steps=len(actions[i]), side=_side(infos[i], obs_arr, spec),
            coverage=max_coverage(infos[i]),
            clipped_actions=int(clipped[i]), select_latency_ms=select_ms,
            chunk_latency_ms=chunk_ms, chunk_cpu_ms=chunk_cpu, boundary_jumps=jumps[i],
            observations=obs_arr, actions=np.asarray(actions[i], dtype=np.float32)))
    return results


def _named_policies(name: str, env_name: str, seeds: list[int], checkpoint: Any
                    ) -> list[tuple[Any, list[int]]]:
    """``(policy, seeds)`` pairs for a policy given by name (see :func:`evaluate`)."""
    from .policy import PRESETS
    from .train import load

    if name == "expert":
        from .experts import make_expert

        spec = env_spec(env_name)
        # one expert per mode, alternating over the seeds as in the demonstrations
        return [(ExpertPolicy(make_expert(env_name, mode), spec.action_low, spec.action_high),
                 seeds[k::2]) for k, mode in enumerate((1, -1)) if seeds[k::2]]
    if name == "planner":
        from .planner import pointmass_tracker

        if resolve_env_id(env_name) != POINTMASS_ID:
            raise InputError(f"the 'planner' policy exists for env 'pointmass' only, not "
                             f"{env_name!r}")
        # plan once per horizon and follow the planned states (replanning every few steps
        # switches between the left and right modes and fails; see docs/policy.md)
        planner = load(checkpoint or "pointmass_planner", replan_every=48)
        return [(planner.as_policy(torch.tensor([0.0, 0.75]), track=pointmass_tracker),
                 seeds)]
    if name in PRESETS:
        return [(load(checkpoint or env_name, preset=name), seeds)]
    raise InputError(f"unknown policy {name!r}; expected a policy object, 'expert', "
                     f"'planner' or a preset of {sorted(PRESETS)}")


def evaluate(policy: Any, env_name: str, seeds: list[int], *, hz: float | None = None,
             max_steps: int | None = None, checkpoint: Any = None, noise_seed: int = 0,
             ) -> Evaluation:
    """Run ``policy`` on every seed of ``env_name`` and summarize.

    Args:
        policy: anything with ``reset()`` and ``select_action(obs, generator=...)``, or a
            name: ``"expert"`` (the scripted expert, modes alternating over the seeds),
            ``"planner"`` (the shipped point-mass planner, tracked), or a preset of
            :data:`~.policy.PRESETS` (the shipped checkpoint of the env, or ``checkpoint``).
        seeds: env seeds; each episode's noise generator is seeded with its seed, so a result
            does not depend on which other seeds run beside it (up to float rounding of
            batched matmuls).
        hz: ``None`` runs all seeds in lockstep in simulated time (one batched
            ``select_action`` per tick; finished envs receive ignored actions until all are
            done); a rate runs them one by one in real time (:func:`run_episode`).
        noise_seed: which noise stream the policies draw (0: each episode's generator is
            seeded with its env seed). Over 50 seeds a success rate moves by up to ~0.1 from
            one stream to another (BENCHMARKS.md, "Policy"), so presets closer than that are
            compared over several streams.

    Example:
        >>> from pydiff.domains.policy import evaluate
        >>> evaluate("expert", "pointmass", [0, 1]).summary["success"]
        1.0
    """
    if not seeds:
        raise InputError("seeds must name at least one seed")
    runs = (_named_policies(policy, env_name, list(seeds), checkpoint)
            if isinstance(policy, str) else [(policy, list(seeds))])
    episodes = []
    for p, chosen in runs:
        if hz is None:
            episodes += _lockstep(p, env_name, chosen, max_steps, noise_seed)
        else:
            episodes += [run_episode(p, env_name, s, hz=hz, max_steps=max_steps,
                                     generator_seed=_noise_seed(s, noise_seed))
                         for s in chosen]
    return Evaluation(env_name, sorted(episodes, key=lambda r: seeds.index(r.seed)))


def summarize(results: list[EpisodeResult]) -> dict[str, Any]:
    """Success rate, mean return, latencies, boundary jumps, sides and misses over episodes;
    for Push-T also ``coverage``, the mean of each episode's maximum coverage."""
    from .metrics import side_share

    def pooled(name: str) -> list[float]:
        # lockstep episodes share one list (one batched call serves all): count it once
        lists = {id(getattr(r, name)): getattr(r, name) for r in results}
        return [v for values in lists.values() for v in values]

    chunk_ms, select_ms = pooled("chunk_latency_ms"), pooled("select_latency_ms")
    chunk_cpu = pooled("chunk_cpu_ms")
    # every episode's first chunk is a full solve in RTI and streaming: report the rest apart
    lists = {id(r.chunk_latency_ms): r.chunk_latency_ms for r in results}
    steady_ms = [v for values in lists.values() for v in values[1:]]
    jumps = pooled("boundary_jumps")
    coverages = [r.coverage for r in results if r.coverage is not None]
    extra = {"coverage": float(np.mean(coverages))} if coverages else {}
    return {
        "episodes": len(results),
        "success": float(np.mean([r.success for r in results])) if results else float("nan"),
        "return": float(np.mean([r.ret for r in results])) if results else float("nan"),
        "chunk_latency_ms": latency_summary(chunk_ms),
        "chunk_cpu_ms": latency_summary(chunk_cpu),
        "steady_chunk_latency_ms": latency_summary(steady_ms),
        "select_latency_ms": latency_summary(select_ms),
        "boundary_jump": jump_summary(jumps),
        "sides": side_share([r.side for r in results]),
        "deadline_misses": int(sum(r.deadline_misses for r in results)),
        "clipped_actions": int(sum(r.clipped_actions for r in results)),
        **extra,  # Push-T: mean over episodes of each episode's maximum coverage
    }


__all__ = ["EpisodeResult", "Evaluation", "ExpertPolicy", "run_episode", "evaluate", "summarize",
           "max_coverage"]
