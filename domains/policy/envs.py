"""Gymnasium environments for the policy domain, all local (no downloads).

- ``Pendulum-v1`` (gymnasium classic control): swing-up and balance, torque in ``[-2, 2]``.
- ``pydiff/PointMassObstacle-v0`` (registered here): a 2D point mass must go from the bottom of
  the square ``[-1, 1]^2`` to a goal at the top, around a disc-shaped obstacle in the middle,
  so demonstrations pass left or right (bimodal): the multimodality test and the planner's
  testbed.
- ``gym_pusht/PushT-v0`` (``gym-pusht``, state observations) when that package is installed.

:func:`make_env` builds any of them by a short name (``"pendulum"``, ``"pointmass"``,
``"pusht"``) or a gymnasium id, and :func:`env_spec` says how to judge an episode (success and
the side taken).

Example:
    >>> from pydiff.domains.policy.envs import make_env
    >>> env = make_env("pointmass")
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, env.action_space.shape
    ((4,), (2,))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pydiff.errors import InputError

POINTMASS_ID = "pydiff/PointMassObstacle-v0"
ALIASES = {
    "pendulum": "Pendulum-v1",
    "pointmass": POINTMASS_ID,
    "pusht": "gym_pusht/PushT-v0",
}


class PointMassObstacleEnv(gym.Env):
    """A point mass with velocity lag that must reach the goal around a round obstacle.

    State: position ``p`` and velocity ``v`` in the square ``[-1, 1]^2``; observation
    ``[x, y, vx, vy]``. Action: the desired velocity in ``[-1, 1]^2`` (units per second); the
    velocity follows it with a first-order lag, ``v <- v + lag (a - v)``, and
    ``p <- p + dt * speed * v``. The start is near ``(0, -0.75)``, the goal at ``(0, 0.75)``, the
    obstacle a disc of radius ``0.3`` at the origin. Entering the obstacle pushes the point
    back to its boundary, stops it and counts a collision. The episode terminates when the point
    is within ``goal_radius`` of the goal; reward is ``-0.1 * distance to goal`` per step plus 10
    at the goal. ``info`` holds ``is_success`` (goal reached with no collision), ``collisions``
    and ``side`` (-1 left, +1 right, 0 not yet decided: the sign of ``x`` when the point first
    crosses ``y = 0``).

    Example:
        >>> env = PointMassObstacleEnv()
        >>> obs, _ = env.reset(seed=1)
        >>> obs, r, term, trunc, info = env.step(np.array([0.0, 1.0], dtype=np.float32))
        >>> bool(info["is_success"]), info["collisions"]
        (False, 0)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    # the registered env's dynamics (class constants, so controllers read them without an env)
    DT, SPEED, LAG = 0.1, 0.6, 0.5

    def __init__(self, render_mode: str | None = None, dt: float = DT, speed: float = SPEED,
                 lag: float = LAG, obstacle_radius: float = 0.3, goal_radius: float = 0.08,
                 start_jitter: float = 0.1):
        self.render_mode = render_mode
        self.dt, self.speed, self.lag = dt, speed, lag
        self.obstacle = np.zeros(2)
        self.obstacle_radius, self.goal_radius = obstacle_radius, goal_radius
        self.goal = np.array([0.0, 0.75])
        self.start = np.array([0.0, -0.75])
        self.start_jitter = start_jitter
        self.observation_space = spaces.Box(
            low=np.array([-1, -1, -1, -1], dtype=np.float32),
            high=np.array([1, 1, 1, 1], dtype=np.float32), dtype=np.float32)
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)
        self.pos = self.start.copy()
        self.vel = np.zeros(2)
        self.collisions = 0
        self.side = 0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.vel]).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        reached = bool(np.linalg.norm(self.pos - self.goal) < self.goal_radius)
        return {"is_success": reached and self.collisions == 0, "reached": reached,
                "collisions": self.collisions, "side": self.side}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        jitter = self.np_random.uniform(-self.start_jitter, self.start_jitter, size=2)
        self.pos = self.start + jitter
        self.vel = np.zeros(2)
        self.collisions, self.side = 0, 0
        return self._obs(), self._info()

    def step(self, action: np.ndarray):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.vel = self.vel + self.lag * (a - self.vel)
        old = self.pos
        new = np.clip(old + self.dt * self.speed * self.vel, -1.0, 1.0)
        offset = new - self.obstacle
        dist = float(np.linalg.norm(offset))
        if dist < self.obstacle_radius:
            # push back to the boundary along the radial direction and stop: a contact
            direction = offset / max(dist, 1e-9)
            new = self.obstacle + direction * self.obstacle_radius
            self.vel = np.zeros(2)
            self.collisions += 1
        if self.side == 0 and old[1] < 0.0 <= new[1]:
            self.side = 1 if new[0] >= 0 else -1
        self.pos = new
        info = self._info()
        distance = float(np.linalg.norm(self.pos - self.goal))
        reward = -0.1 * distance + (10.0 if info["reached"] else 0.0)
        return self._obs(), reward, info["reached"], False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        size = 160
        img = np.full((size, size, 3), 255, dtype=np.uint8)
        yy, xx = np.mgrid[0:size, 0:size]
        # world [-1, 1]^2 -> pixels, y up
        wx = (xx + 0.5) / size * 2 - 1
        wy = 1 - (yy + 0.5) / size * 2

        def disc(center: np.ndarray, radius: float) -> np.ndarray:
            return (wx - center[0]) ** 2 + (wy - center[1]) ** 2 < radius**2

        img[disc(self.obstacle, self.obstacle_radius)] = (120, 120, 120)
        img[disc(self.goal, self.goal_radius)] = (120, 220, 120)
        img[disc(self.pos, 0.04)] = (40, 80, 220)
        return img


def _register() -> None:
    if POINTMASS_ID not in gym.registry:
        gym.register(id=POINTMASS_ID, entry_point=PointMassObstacleEnv, max_episode_steps=100)


_register()


def resolve_env_id(name: str) -> str:
    """The gymnasium id for a short name (``pendulum``, ``pointmass``, ``pusht``) or an id."""
    if not isinstance(name, str) or not name:
        raise InputError(f"env must be a non-empty name, got {name!r}; expected one of "
                         f"{sorted(ALIASES)} or a gymnasium id")
    return ALIASES.get(name.lower(), name)


def make_env(name: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """Build an environment by short name or gymnasium id.

    Push-T needs ``gym-pusht`` (and ``pymunk < 7``); it is imported only when asked for.
    """
    env_id = resolve_env_id(name)
    if env_id.startswith("gym_pusht/"):
        try:
            import gym_pusht  # noqa: F401  (registers the env)
        except ImportError as err:
            raise ImportError("env 'pusht' needs the gym-pusht package "
                              "(pip install gym-pusht 'pymunk<7')") from err
        kwargs.setdefault("obs_type", "state")
    if env_id not in gym.registry:
        raise InputError(f"env={name!r} is not registered; expected one of {sorted(ALIASES)} "
                         "or a registered gymnasium id")
    return gym.make(env_id, render_mode=render_mode, **kwargs)


@dataclass(frozen=True)
class EnvSpec:
    """How to judge an episode of an environment.

    Attributes:
        env_id: the gymnasium id.
        max_steps: episode length used for demonstrations and evaluation.
        obs_dim, action_low, action_high: the observation size and the action box (the same
            as the env's spaces; here so that configs are built without making an env).
        success_from: ``"info"`` (the env's ``is_success``), or ``"upright"`` (Pendulum: the
            angle stays within ``upright_tol`` radians of upright over the last
            ``upright_steps`` steps).
    """

    env_id: str
    max_steps: int
    obs_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    success_from: str = "info"
    upright_tol: float = 0.3
    upright_steps: int = 50


SPECS = {
    "Pendulum-v1": EnvSpec("Pendulum-v1", max_steps=200, obs_dim=3, action_low=(-2.0,),
                           action_high=(2.0,), success_from="upright"),
    POINTMASS_ID: EnvSpec(POINTMASS_ID, max_steps=100, obs_dim=4, action_low=(-1.0, -1.0),
                          action_high=(1.0, 1.0)),
    "gym_pusht/PushT-v0": EnvSpec("gym_pusht/PushT-v0", max_steps=300, obs_dim=5,
                                  action_low=(0.0, 0.0), action_high=(512.0, 512.0)),
}


def env_spec(name: str) -> EnvSpec:
    """The :class:`EnvSpec` of an env (short name or id)."""
    env_id = resolve_env_id(name)
    if env_id not in SPECS:
        raise InputError(f"no EnvSpec for env={name!r}; known: {sorted(SPECS)}")
    return SPECS[env_id]


def pendulum_angle(obs: np.ndarray) -> np.ndarray:
    """Pendulum angle in ``(-pi, pi]`` (0 = upright) from observations ``[..., (cos, sin, w)]``."""
    obs = np.asarray(obs)
    return np.arctan2(obs[..., 1], obs[..., 0])


def episode_success(spec: EnvSpec, observations: np.ndarray, infos: list[dict]) -> bool:
    """Whether an episode succeeded, from its observations ``[T + 1, obs_dim]`` and infos."""
    if spec.success_from == "upright":
        # on the last upright_steps steps (or the last quarter of a shortened episode)
        window = min(spec.upright_steps, max(len(observations) // 4, 1))
        tail = observations[-window:]
        return bool(len(observations) >= window
                    and np.all(np.abs(pendulum_angle(tail)) < spec.upright_tol))
    return bool(infos and any(bool(i.get("is_success", False)) for i in infos))


__all__ = ["PointMassObstacleEnv", "POINTMASS_ID", "make_env", "resolve_env_id", "EnvSpec",
           "env_spec", "episode_success", "pendulum_angle", "SPECS"]
