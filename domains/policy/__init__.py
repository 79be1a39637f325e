"""Diffusion policies for robot control loops.

Action-chunk diffusion policies (:class:`DiffusionPolicy`, LeRobot's five methods) with full,
real-time-iteration and streaming inference on any pydiff solver; a Diffuser-style planner
(:class:`TrajectoryPlanner`); gymnasium environments with scripted experts (:func:`make_env`);
one training path for both (:func:`train`, :func:`load`); a fixed-rate control loop with
deadlines that measures what robotics users report (:func:`run_episode`, :func:`evaluate`).

Example:
    >>> from pydiff.domains.policy import evaluate, load
    >>> policy = load("pointmass", preset="rti")
    >>> result = evaluate(policy, "pointmass", seeds=[1000, 1001])
    >>> sorted(result.summary)[:3]
    ['boundary_jump', 'chunk_cpu_ms', 'chunk_latency_ms']

The rest (experts, demonstrations, normalizers, plots, metrics) stays importable from the
submodules (``pydiff.domains.policy.data``, ``.experts``, ``.planner``, ...).
"""

from .control import evaluate, run_episode
from .envs import make_env
from .planner import PlannerConfig, TrajectoryPlanner
from .policy import PRESETS, DiffusionPolicy, DiffusionPolicyConfig
from .train import load, train

__all__ = ["DiffusionPolicy", "DiffusionPolicyConfig", "TrajectoryPlanner", "PlannerConfig",
           "PRESETS", "make_env", "run_episode", "evaluate", "train", "load"]
