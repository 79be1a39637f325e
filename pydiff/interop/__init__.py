"""Interop: bring diffusers models and scheduler configs to pydiff.

- :class:`DiffusersNet`: a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``,
  transformers) as a pydiff network ``net(x, t, **cond)``.
- :func:`from_diffusers_config`: a diffusers scheduler config (dict or JSON file) as the matching
  pydiff schedule, grid, solver and Denoiser settings (:class:`DiffusersScheduler`).

Example:
    >>> import pydiff
    >>> from pydiff.interop import from_diffusers_config
    >>> spec = from_diffusers_config({"_class_name": "FlowMatchEulerDiscreteScheduler",
    ...                               "shift": 3.0})
    >>> spec.schedule, spec.prediction, spec.solver().name
    (FlowSchedule(t_eps=0.001, shift=3.0), 'velocity', 'flow_euler')
"""

from __future__ import annotations

from .diffusers_model import DiffusersNet
from .diffusers_scheduler import SUPPORTED, DiffusersScheduler, from_diffusers_config

__all__ = ["DiffusersNet", "DiffusersScheduler", "from_diffusers_config", "SUPPORTED"]
