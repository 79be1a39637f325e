"""Diffusion policies for robot control loops.

Action-chunk diffusion policies (:class:`DiffusionPolicy`, LeRobot's five methods) with full,
real-time-iteration and streaming inference on any pydiff solver; a Diffuser-style planner
(:class:`TrajectoryPlanner`); gymnasium environments and scripted experts; a fixed-rate control
loop with deadlines (:func:`run_episode`) and the metrics robotics users report.

Example:
    >>> from pydiff.domains.policy import make_env, collect_demonstrations
    >>> env = make_env("pendulum")
    >>> demos = collect_demonstrations("pendulum", episodes=1, seed=0)
    >>> demos[0].success
    True
"""

from .data import (
    Episode,
    MinMaxNormalizer,
    collect_demonstrations,
    policy_windows,
    rollout_expert,
    trajectory_windows,
)
from .envs import POINTMASS_ID, EnvSpec, PointMassObstacleEnv, env_spec, episode_success, make_env
from .experts import PendulumExpert, PointMassExpert, PushTExpert, make_expert
from .policy import MODES, PRESETS, DiffusionPolicy, DiffusionPolicyConfig
from .train import checkpoint_path, load_policy, train_policy
from .validation import ActionClipper, ObservationError, check_observation

__all__ = [
    "Episode", "MinMaxNormalizer", "collect_demonstrations", "policy_windows", "rollout_expert",
    "trajectory_windows", "POINTMASS_ID", "EnvSpec", "PointMassObstacleEnv", "env_spec",
    "episode_success", "make_env", "PendulumExpert", "PointMassExpert", "PushTExpert",
    "make_expert", "MODES", "PRESETS", "DiffusionPolicy", "DiffusionPolicyConfig", "ActionClipper",
    "ObservationError", "check_observation", "checkpoint_path", "load_policy", "train_policy",
]
