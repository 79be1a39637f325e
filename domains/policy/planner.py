"""Diffuser-style planner: diffusion over whole state-action trajectories (Janner et al. 2022).

The model learns trajectories ``tau = [(s_0, a_0), ..., (s_{H-1}, a_{H-1})]`` (channel-first
``[B, obs_dim + action_dim, H]``, min-max normalized) from demonstrations, with no observation
conditioning at all. Planning conditions by **inpainting** and steers by **value guidance**,
both from the core:

- the current state at position 0 and the goal (position, zero velocity) at position ``H - 1``
  are pasted in after every solver step (:class:`pydiff.hooks.InpaintReplace`);
- an optional value ``value(trajectory) -> [B]`` (in env units) is climbed through
  :class:`pydiff.guidance.RewardGuidance` on the predicted clean trajectory.

:class:`PlannerPolicy` puts a planner behind the policy interface: it plans, executes the first
``replan_every`` planned actions, and plans again from the state reached.

Example:
    >>> import torch
    >>> from pydiff.domains.policy.planner import PlannerConfig, TrajectoryPlanner
    >>> planner = TrajectoryPlanner(PlannerConfig(obs_dim=4, action_dim=2, horizon=16,
    ...                                           down_dims=(16, 32), steps=4))
    >>> plan = planner.plan(torch.zeros(3, 4), goal=torch.tensor([0.0, 0.75]))
    >>> plan.shape                                   # [B, H, obs_dim + action_dim]
    torch.Size([3, 16, 6])
    >>> bool((plan[:, 0, :4] == 0).all())            # the start state is inpainted exactly
    True
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pydiff
from pydiff.errors import InputError
from pydiff.guidance import ClipX0, RewardGuidance
from pydiff.hooks import InpaintReplace
from pydiff.nn import UNet1D

from .chunking import ChunkedPolicy
from .data import Episode, MinMaxNormalizer, trajectory_windows
from .envs import EnvSpec
from .validation import check_observation

Tensor = torch.Tensor


@dataclass
class PlannerConfig:
    """Trajectory model and planning settings (JSON-serializable).

    Attributes:
        obs_dim, action_dim, horizon: trajectory layout ``[H, obs_dim + action_dim]``.
        goal_dims: state dimensions that the goal fixes (others of the last state are set to
            ``goal_rest``, e.g. zero velocity); empty: no goal inpainting.
        down_dims, time_embed_dim, kernel_size: the :class:`pydiff.nn.UNet1D`.
        num_train_timesteps: the DDPM table (cosine).
        solver, steps: inference.
        replan_every: actions executed between plans (:class:`PlannerPolicy`).
        action_low, action_high: action bounds (clipping).
    """

    obs_dim: int
    action_dim: int
    horizon: int = 48
    goal_dims: list[int] = field(default_factory=lambda: [0, 1])
    goal_rest: list[float] = field(default_factory=lambda: [0.0, 0.0])
    down_dims: tuple[int, ...] = (32, 64)
    time_embed_dim: int = 32
    kernel_size: int = 5
    num_train_timesteps: int = 100
    solver: str = "ddim"
    steps: int = 10
    replan_every: int = 8
    action_low: list[float] = field(default_factory=list)
    action_high: list[float] = field(default_factory=list)
    env: str | None = None

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        for name in ("obs_dim", "action_dim", "horizon", "steps", "replan_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.horizon < 2:
            raise InputError(f"horizon must be >= 2 (start and goal), got {self.horizon}")
        bad = [d for d in self.goal_dims if not 0 <= d < self.obs_dim]
        if bad:
            raise InputError(f"goal_dims {bad} are not state dimensions (obs_dim={self.obs_dim})")
        if self.solver not in pydiff.available_solvers():
            raise InputError(f"solver={self.solver!r}; expected one of "
                             f"{pydiff.available_solvers()}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["down_dims"] = list(self.down_dims)
        return d


class TrajectoryPlanner(nn.Module):
    """Unconditional trajectory diffusion model with inpainting and value-guided planning."""

    def __init__(self, config: PlannerConfig, normalizer: MinMaxNormalizer | None = None):
        super().__init__()
        self.config = config
        width = config.obs_dim + config.action_dim
        self.normalizer = normalizer or MinMaxNormalizer(width)
        self.net = UNet1D(in_channels=width, time_embed_dim=config.time_embed_dim,
                          down_dims=config.down_dims, kernel_size=config.kernel_size)
        self.schedule = pydiff.DiscreteSchedule.cosine(
            num_train_timesteps=config.num_train_timesteps)
        self.denoiser = pydiff.Denoiser(self.net, self.schedule, prediction="eps",
                                        time_input="index")

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        """Denoising loss on ``batch = {"trajectory": [B, H, obs_dim + action_dim]}``."""
        from pydiff.training import diffusion_loss

        x0 = self.normalizer.normalize(batch["trajectory"].float()).transpose(1, 2)
        out = diffusion_loss(self.denoiser, x0, generator=generator)
        return out.loss, {"loss": float(out.loss.detach())}

    def _known(self, obs: Tensor, goal: Tensor | None) -> tuple[Tensor, Tensor]:
        """Normalized known values and mask ``[B, C, H]`` for start (and goal) inpainting."""
        cfg = self.config
        b = obs.shape[0]
        width = cfg.obs_dim + cfg.action_dim
        raw = torch.zeros(b, cfg.horizon, width)
        mask = torch.zeros(b, cfg.horizon, width)
        raw[:, 0, :cfg.obs_dim] = obs
        mask[:, 0, :cfg.obs_dim] = 1
        if goal is not None and cfg.goal_dims:
            goal = torch.as_tensor(goal, dtype=torch.float32).reshape(-1, len(cfg.goal_dims))
            raw[:, -1, cfg.goal_dims] = goal.expand(b, -1)
            rest = [d for d in range(cfg.obs_dim) if d not in cfg.goal_dims]
            if rest:
                raw[:, -1, rest] = torch.as_tensor(cfg.goal_rest[:len(rest)],
                                                   dtype=torch.float32)
            mask[:, -1, :cfg.obs_dim] = 1
        known = self.normalizer.normalize(raw) * mask
        return known.transpose(1, 2), mask.transpose(1, 2)

    def plan(self, obs: Any, goal: Tensor | None = None, *,
             value: Callable[[Tensor], Tensor] | None = None, guidance_scale: float = 0.0,
             generator: torch.Generator | list | None = None) -> Tensor:
        """Plan ``[B, H, obs_dim + action_dim]`` trajectories (env units) from states ``obs``.

        Args:
            obs: current states ``[obs_dim]`` or ``[B, obs_dim]`` (validated).
            goal: the goal values of ``config.goal_dims`` (None: no goal inpainting).
            value: ``value(trajectory [B, H, C] in env units) -> [B]``, climbed with
                :class:`pydiff.guidance.RewardGuidance` at ``guidance_scale``.
            generator: noise (one generator or one per sample).
        """
        obs = check_observation(obs, self.config.obs_dim, name="obs")
        known, mask = self._known(obs, goal)
        model = self.denoiser
        if value is not None and guidance_scale != 0.0:
            def reward(x0: Tensor) -> Tensor:
                return value(self.normalizer.unnormalize(x0.transpose(1, 2)))

            model = RewardGuidance(model, reward, scale=guidance_scale)
        # x0-hat clamped to the normalized range, as for the policy (the cosine table ends at
        # alpha = 5e-4, where an unclamped x0-hat amplifies eps errors ~2000-fold); outermost,
        # so the value gradient is taken before the clamp (a clamp has zero gradient)
        model = ClipX0(model, bound=1.0)
        # one standard normal draw: the prior where the trajectory is free, the same noise on
        # the known start/goal entries brought to the start level (the core's noising)
        z = pydiff.noise.randn(known.shape, generator, device=known.device)
        x_t = pydiff.add_noise(self.schedule, known, self.schedule.t_max, z, mask=mask,
                               x=pydiff.prior(self.schedule, known.shape, noise=z))
        with torch.set_grad_enabled(value is not None and guidance_scale != 0.0):
            x = pydiff.sample(model, x_t, solver=self.config.solver, steps=self.config.steps,
                              generator=generator, hooks=[InpaintReplace(known, mask)])
        return self.normalizer.unnormalize(x.detach().transpose(1, 2))

    @classmethod
    def for_demonstrations(cls, demos: list[Episode], spec: EnvSpec, **config: Any
                           ) -> tuple[TrajectoryPlanner, dict[str, Tensor]]:
        """An untrained planner for ``spec``'s env with its normalizer fitted on ``demos``, and
        its training tensors ``{"trajectory": [N, H, obs_dim + action_dim]}``."""
        cfg = PlannerConfig(obs_dim=spec.obs_dim, action_dim=len(spec.action_low),
                            action_low=list(spec.action_low),
                            action_high=list(spec.action_high), **config)
        traj = trajectory_windows(demos, cfg.horizon)
        return cls(cfg, MinMaxNormalizer.fit(traj)), {"trajectory": traj}

    def as_policy(self, goal: Tensor | None = None, *,
                  value: Callable[[Tensor], Tensor] | None = None, guidance_scale: float = 0.0,
                  track: Callable[[Tensor, Tensor], Tensor] | None = None) -> PlannerPolicy:
        """This planner behind the policy interface (:class:`PlannerPolicy`): plan to
        ``goal``, execute (or ``track``) ``config.replan_every`` steps, plan again."""
        return PlannerPolicy(self, goal, value=value, guidance_scale=guidance_scale, track=track)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (via ``save_pretrained``)."""
        from pydiff.training import save_pretrained

        return save_pretrained(self, directory, net_config=self.config.to_dict(),
                               metadata={"kind": "trajectory_planner", "env": self.config.env})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any
                        ) -> TrajectoryPlanner:
        """Load a saved planner; ``overrides`` change config fields (e.g. ``steps``)."""
        from pydiff.training import from_pretrained

        def build(class_path: str, config: dict[str, Any]) -> TrajectoryPlanner:
            return cls(PlannerConfig(**{**config, **overrides}))

        return from_pretrained(directory, factory=build).eval()


class PlannerPolicy(ChunkedPolicy):
    """A :class:`TrajectoryPlanner` behind the policy interface (``reset``, ``select_action``);
    made by :meth:`TrajectoryPlanner.as_policy`.

    Plans from the current state to ``goal`` and plans again every ``replan_every`` steps.
    Between plans it either executes the planned actions open loop (``track=None``) or, as
    Diffuser does in Maze2D, follows the planned *states* with a tracking controller
    ``track(obs [B, obs_dim], target_state [B, obs_dim]) -> action [B, action_dim]`` (see
    :func:`pointmass_tracker`).
    """

    def __init__(self, planner: TrajectoryPlanner, goal: Tensor | None, *,
                 value: Callable[[Tensor], Tensor] | None = None, guidance_scale: float = 0.0,
                 track: Callable[[Tensor, Tensor], Tensor] | None = None):
        self.planner, self.goal = planner, goal
        self.value, self.guidance_scale, self.track = value, guidance_scale, track
        cfg = planner.config
        super().__init__(obs_dim=cfg.obs_dim, n_obs_steps=1, action_low=cfg.action_low,
                         action_high=cfg.action_high)

    def _next_chunk(self, history: Tensor, obs: Tensor, generator: Any) -> list[Tensor]:
        plan = self.planner.plan(obs, self.goal, value=self.value,
                                 guidance_scale=self.guidance_scale, generator=generator)
        obs_dim = self.planner.config.obs_dim
        self.last_chunk = plan[:, :, obs_dim:]
        steps = range(self.planner.config.replan_every)
        if self.track is None:
            return [plan[:, k, obs_dim:] for k in steps]
        # the state planned one step ahead is the target of each tick
        return [plan[:, min(k + 1, plan.shape[1] - 1), :obs_dim] for k in steps]

    def _to_action(self, obs: Tensor, item: Tensor) -> Tensor:
        return item if self.track is None else self.track(obs, item)


def pointmass_tracker(obs: Tensor, target: Tensor) -> Tensor:
    """Inverse dynamics of :class:`~.envs.PointMassObstacleEnv` (default constants): the
    velocity command that moves the point to ``target``'s position in one step."""
    from .envs import PointMassObstacleEnv as env  # the registered env's constants

    dt, speed, lag = env.DT, env.SPEED, env.LAG
    v_needed = (target[:, :2] - obs[:, :2]) / (dt * speed)
    return (v_needed - (1 - lag) * obs[:, 2:4]) / lag


def side_value(side: int) -> Callable[[Tensor], Tensor]:
    """A value that prefers passing the obstacle on ``side`` (-1 left, +1 right): the mean
    signed ``x`` of the planned positions in the obstacle's band ``|y| < 0.4``."""
    if side not in (-1, 1):
        raise InputError(f"side must be -1 or 1, got {side!r}")

    def value(traj: Tensor) -> Tensor:
        x, y = traj[..., 0], traj[..., 1]
        band = torch.sigmoid((0.4 - y.abs()) * 20)
        return side * (x * band).sum(-1) / band.sum(-1).clamp_min(1e-3)

    return value


__all__ = ["PlannerConfig", "TrajectoryPlanner", "PlannerPolicy", "side_value",
           "pointmass_tracker"]
