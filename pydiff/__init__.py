"""pydiff: one diffusion core (schedules, parameterizations, solvers, guidance, training) on fused
kernels, with domain packages built on it.

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.DiscreteSchedule.scaled_linear()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched, prediction="eps")
    >>> x = pydiff.sample(model, pydiff.prior(sched, (2, 3)), solver="ddim", steps=5)
    >>> x.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from . import files, hooks, noise, ops, schedules, solvers
from .denoiser import Denoiser, JumpDenoiser
from .errors import InputError
from .grids import timesteps
from .model import Linear, Model, Prediction
from .noise import add_noise
from .sampling import prior, sample
from .schedules import (
    CosineSchedule,
    DiscreteSchedule,
    EDMSchedule,
    FlowSchedule,
    MeanRevertingSchedule,
    Schedule,
    VESchedule,
    VPSchedule,
)
from .solvers import SolverState, available_solvers, get_solver

__version__ = "0.1.0"

# heavier subpackages load on first use: `pydiff.guidance.ClassifierFreeGuidance(...)` just works
_LAZY_SUBMODULES = ("categorical", "guidance", "interop", "nn", "training", "testing",
                    "distributed", "parallel", "accel")


_LAZY_FUNCTIONS = {"save_pretrained": "pretrained", "from_pretrained": "pretrained"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module 'pydiff' has no attribute {name!r}")

__all__ = [
    "Denoiser", "JumpDenoiser", "Model", "Prediction", "Linear", "sample", "prior", "add_noise",
    "timesteps",
    "get_solver", "available_solvers", "SolverState",
    "Schedule", "DiscreteSchedule", "VPSchedule", "CosineSchedule", "VESchedule", "EDMSchedule",
    "FlowSchedule", "MeanRevertingSchedule", "schedules", "solvers", "hooks", "noise", "ops",
    "save_pretrained", "from_pretrained", "InputError", "files", "__version__",
]
