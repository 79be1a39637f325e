"""Demonstrations (scripted experts, fixed seeds), min-max normalization and training windows.

- :func:`collect_demonstrations` rolls an expert out in an env for seeds ``seed0, seed0+1, ...``,
  alternating the expert's mode (+1/-1: swing direction or side), and keeps successful episodes.
- :class:`MinMaxNormalizer` maps each dimension to ``[-1, 1]`` with the data's min and max.
- :func:`policy_windows` cuts episodes into ``(observation history, action chunk)`` pairs:
  ``To`` observations ending at step ``k`` (the first one repeated before the start) and the
  ``Tp`` actions from step ``k`` on (the last one repeated after the end, as Diffusion Policy
  pads).
- :func:`trajectory_windows` cuts state-action trajectories of length ``H`` for the planner.

Example:
    >>> from pydiff.domains.policy.data import collect_demonstrations, policy_windows
    >>> demos = collect_demonstrations("pointmass", episodes=2, seed=0)
    >>> obs, act = policy_windows(demos, n_obs_steps=2, horizon=16)
    >>> obs.shape[1:], act.shape[1:]
    (torch.Size([2, 4]), torch.Size([16, 2]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pydiff.errors import InputError

from .envs import env_spec, episode_success, make_env
from .experts import make_expert

Tensor = torch.Tensor


@dataclass
class Episode:
    """One demonstration: ``observations [T + 1, obs_dim]``, ``actions [T, act_dim]``."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    seed: int
    mode: int
    success: bool
    infos: list[dict] = field(default_factory=list, repr=False)

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())


def rollout_expert(env_name: str, seed: int, mode: int = 1, max_steps: int | None = None,
                   ) -> Episode:
    """One episode of the env's scripted expert from ``env.reset(seed=seed)``."""
    spec = env_spec(env_name)
    env = make_env(env_name)
    expert = make_expert(env_name, mode)
    expert.reset()
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, infos = [obs], [], [], []
    for _ in range(max_steps or spec.max_steps):
        action = expert(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    env.close()
    observations = np.asarray(observations, dtype=np.float32)
    return Episode(observations, np.asarray(actions, dtype=np.float32),
                   np.asarray(rewards, dtype=np.float64), seed, mode,
                   episode_success(spec, observations, infos), infos)


def collect_demonstrations(env_name: str, episodes: int, seed: int = 0,
                           only_success: bool = True, max_steps: int | None = None,
                           ) -> list[Episode]:
    """Expert episodes from seeds ``seed, seed + 1, ...``, modes alternating +1/-1.

    With ``only_success`` failed episodes are skipped and more seeds are tried (at most
    ``3 * episodes``), so the data set is the expert at its best. ``max_steps`` shortens the
    episodes (e.g. Pendulum: swing-up and catch take at most ~60 of the 200 steps; the rest is
    balancing, which would otherwise dominate the data).
    """
    if episodes < 1:
        raise InputError(f"episodes must be >= 1, got {episodes}")
    out: list[Episode] = []
    s = seed
    while len(out) < episodes and s < seed + 3 * episodes:
        ep = rollout_expert(env_name, s, mode=1 if (s - seed) % 2 == 0 else -1,
                            max_steps=max_steps)
        if ep.success or not only_success:
            out.append(ep)
        s += 1
    if not out:
        raise RuntimeError(f"the expert of {env_name!r} succeeded on none of seeds "
                           f"{seed}..{s - 1}")
    return out


class MinMaxNormalizer(nn.Module):
    """Per-dimension affine map of ``[min, max]`` to ``[-1, 1]`` (stats are buffers).

    A dimension whose range is below ``eps`` is only shifted (its scale stays 1), so constant
    dimensions never divide by zero.

    Example:
        >>> n = MinMaxNormalizer.fit(torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
        >>> n.normalize(torch.tensor([1.0, 5.0]))
        tensor([0., 0.])
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("low", -torch.ones(dim))
        self.register_buffer("high", torch.ones(dim))

    @classmethod
    def fit(cls, data: Tensor, eps: float = 1e-6) -> MinMaxNormalizer:
        """Fit on ``data [..., dim]``."""
        data = torch.as_tensor(data, dtype=torch.float32).reshape(-1, data.shape[-1])
        norm = cls(data.shape[-1])
        low, high = data.min(0).values, data.max(0).values
        flat = (high - low) < eps
        norm.low.copy_(torch.where(flat, low - 1, low))
        norm.high.copy_(torch.where(flat, low + 1, high))
        return norm

    def normalize(self, x: Tensor) -> Tensor:
        return 2 * (x - self.low) / (self.high - self.low) - 1

    def unnormalize(self, y: Tensor) -> Tensor:
        return (y + 1) / 2 * (self.high - self.low) + self.low


def policy_windows(episodes: list[Episode], n_obs_steps: int, horizon: int,
                   ) -> tuple[Tensor, Tensor]:
    """All ``(obs [N, To, obs_dim], actions [N, Tp, act_dim])`` training pairs (module doc)."""
    obs_windows, act_windows = [], []
    for ep in episodes:
        steps = len(ep.actions)
        obs = ep.observations[:steps]  # the observation each action was taken from
        for k in range(steps):
            oi = np.clip(np.arange(k - n_obs_steps + 1, k + 1), 0, steps - 1)
            ai = np.clip(np.arange(k, k + horizon), 0, steps - 1)
            obs_windows.append(obs[oi])
            act_windows.append(ep.actions[ai])
    return (torch.from_numpy(np.stack(obs_windows)), torch.from_numpy(np.stack(act_windows)))


def trajectory_windows(episodes: list[Episode], horizon: int, stride: int = 1) -> Tensor:
    """State-action windows ``[N, H, obs_dim + act_dim]`` for the planner.

    An episode shorter than ``H`` (or a window past its end) is padded with its final state
    and a zero action: the agent rests at the goal.
    """
    out = []
    for ep in episodes:
        steps = len(ep.actions)
        states = ep.observations  # [T + 1, obs_dim]
        actions = np.concatenate([ep.actions, np.zeros_like(ep.actions[:1])])  # [T + 1]
        pairs = np.concatenate([states, actions], axis=1)
        last = max(steps + 1 - horizon, 0)
        for k in range(0, last + 1, stride):
            idx = np.arange(k, k + horizon)
            window = pairs[np.clip(idx, 0, steps)]
            window[idx > steps, states.shape[1]:] = 0.0
            out.append(window)
    return torch.from_numpy(np.stack(out).astype(np.float32))


__all__ = ["Episode", "rollout_expert", "collect_demonstrations", "MinMaxNormalizer",
           "policy_windows", "trajectory_windows"]
