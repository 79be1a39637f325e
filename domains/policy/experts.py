"""Scripted experts that make the demonstrations.

- :class:`PendulumExpert`: energy pumping (``u = k (E* - E) w``, the textbook swing-up) plus a
  linear (PD) catch near upright. ``direction=+1/-1`` sets the first swing when the pendulum
  hangs almost still, so a data set with both directions is multimodal.
- :class:`PointMassExpert`: goes to a waypoint left (``side=-1``) or right (``side=+1``) of the
  obstacle, then to the goal, with a velocity command that slows near the target.
- :class:`~.pusht.PushTExpert`: pushes planned on copies of the real gym-pusht simulator
  (state observations); see :mod:`.pusht`.

An expert is ``expert(obs) -> action`` with internal state reset by ``reset()``.

Example:
    >>> import numpy as np
    >>> from pydiff.domains.policy.experts import PendulumExpert
    >>> expert = PendulumExpert(direction=1)
    >>> expert.reset()
    >>> float(expert(np.array([-1.0, 0.0, 0.0], dtype=np.float32))[0])  # hanging still: kick
    2.0
"""

from __future__ import annotations

import numpy as np

from pydiff.errors import InputError

# Pendulum-v1 dynamics: w' = 3 g / (2 l) sin(th) + 3 / (m l^2) u with g = 10, m = l = 1
_PEND_A, _PEND_B, _PEND_MAX_TORQUE = 15.0, 3.0, 2.0


class PendulumExpert:
    """Energy-pumping swing-up with a PD catch for ``Pendulum-v1``.

    The energy per unit inertia ``E = w^2 / 2 + a (cos th - 1)`` is 0 upright at rest and
    ``dE/dt = b u w``, so ``u = k_e (E* - E) w`` pumps energy towards ``E*`` (slightly above 0
    so the swing clears the top against the torque limit). Within ``catch_angle`` of upright
    with enough energy it switches to ``u = -k_p th - k_d w``.

    Args:
        direction: +1 or -1, the first swing when hanging almost still.
        k_energy, k_p, k_d, catch_angle: gains and the switching angle (radians).
    """

    def __init__(self, direction: int = 1, k_energy: float = 0.5, k_p: float = 10.0,
                 k_d: float = 2.0, catch_angle: float = 0.6):
        if direction not in (-1, 1):
            raise InputError(f"direction must be -1 or 1, got {direction!r}")
        self.direction, self.k_energy, self.k_p, self.k_d = direction, k_energy, k_p, k_d
        self.catch_angle = catch_angle

    def reset(self) -> None:
        """No internal state; kept for the expert protocol."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        cos_th, sin_th, w = (float(v) for v in np.asarray(obs, dtype=np.float64)[:3])
        th = float(np.arctan2(sin_th, cos_th))
        if abs(th) < self.catch_angle:
            u = -self.k_p * th - self.k_d * w
        elif cos_th < -0.9 and abs(w) < 0.5:
            u = _PEND_MAX_TORQUE * self.direction  # hanging still: kick in the chosen direction
        else:
            energy = 0.5 * w * w + _PEND_A * (cos_th - 1.0)
            u = self.k_energy * (1.0 - energy) * w
        return np.array([np.clip(u, -_PEND_MAX_TORQUE, _PEND_MAX_TORQUE)], dtype=np.float32)


class PointMassExpert:
    """Detour left or right of the obstacle of :class:`~.envs.PointMassObstacleEnv`.

    Args:
        side: -1 (left) or +1 (right).
        waypoint_x: the waypoint's distance from the centre line (the obstacle radius is 0.3).
        gain: proportional gain of the velocity command (saturated to unit speed).
    """

    def __init__(self, side: int = 1, waypoint_x: float = 0.55, gain: float = 3.0,
                 goal: tuple[float, float] = (0.0, 0.75)):
        if side not in (-1, 1):
            raise InputError(f"side must be -1 or 1, got {side!r}")
        self.side, self.gain = side, gain
        self.waypoints = [np.array([side * waypoint_x, -0.15]),
                          np.array([side * waypoint_x, 0.15]), np.asarray(goal, dtype=np.float64)]
        self.k = 0

    def reset(self) -> None:
        self.k = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        pos = np.asarray(obs, dtype=np.float64)[:2]
        # switch to the next waypoint once close to (or past, in y) the current one
        while self.k < len(self.waypoints) - 1 and (
                np.linalg.norm(self.waypoints[self.k] - pos) < 0.12
                or pos[1] > self.waypoints[self.k][1] + 0.05):
            self.k += 1
        command = self.gain * (self.waypoints[self.k] - pos)
        norm = float(np.linalg.norm(command))
        if norm > 1.0:
            command = command / norm
        return command.astype(np.float32)


def make_expert(env_id: str, mode: int = 1):
    """The scripted expert of an env, with ``mode`` (+1/-1) choosing the swing or the side."""
    from .envs import POINTMASS_ID, resolve_env_id

    env_id = resolve_env_id(env_id)
    if env_id == "Pendulum-v1":
        return PendulumExpert(direction=mode)
    if env_id == POINTMASS_ID:
        return PointMassExpert(side=mode)
    if env_id == "gym_pusht/PushT-v0":
        from .pusht import PushTExpert

        return PushTExpert(mode=mode)
    raise InputError(f"no scripted expert for env={env_id!r}")


__all__ = ["PendulumExpert", "PointMassExpert", "make_expert"]
