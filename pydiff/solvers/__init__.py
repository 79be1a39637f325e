"""Solvers: immutable objects with explicit state (see :mod:`pydiff.solvers.base`).

``get_solver("dpmpp_2m")`` builds a solver by name; :func:`available_solvers` lists the names.
Register a new one with :func:`register`.

Example:
    >>> import pydiff
    >>> pydiff.solvers.get_solver("ddim", eta=0.5)
    DDIM(eta=0.5, s_noise=1.0, brownian=False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InputError
from .base import Coefficients, Solver, SolverState, combine
from .consistency import MultistepConsistency
from .dpm import (
    DPMSolverMultistep,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
    DPMSolverSinglestep,
    MRSampler,
)
from .dpm2 import DPM2, DPM2Ancestral
from .first_order import DDIM, DDPM, Euler, EulerAncestral, EulerMaruyama, Heun
from .flow import FlowEuler, FlowMidpoint
from .inversion import BDIA, BDIAInversion, DDIMInversion
from .langevin import PredictorCorrector
from .linear_multistep import DEIS, GHVB, LMS, PLMS, HeavyBall
from .resampling import Resampling
from .time_shift import TimeShiftDDIM
from .unipc import UniPC

SOLVERS: dict[str, Callable[..., Solver]] = {}


def register(cls: type[Solver], *aliases: str) -> type[Solver]:
    """Add a solver class to the registry under ``cls.name`` and any ``aliases`` (usable as a
    decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    for name in (cls.name, *aliases):
        SOLVERS[name] = cls
    return cls


for _cls in (DDPM, DDIM, Euler, Heun, EulerMaruyama, DPMSolverPP2M, DPMSolverPP3M,
             DPMSolverPP2MSDE, DPMSolverMultistep, DPMSolverSinglestep, MRSampler, EulerAncestral,
             PLMS, HeavyBall, GHVB, UniPC, FlowEuler, FlowMidpoint, MultistepConsistency,
             PredictorCorrector, TimeShiftDDIM, DDIMInversion, BDIA, BDIAInversion, LMS, DEIS,
             DPM2, DPM2Ancestral):
    register(_cls)
register(PLMS, "pndm")  # diffusers' name (PNDMScheduler with skip_prk_steps)


def available_solvers() -> list[str]:
    """Names accepted by :func:`get_solver` and :func:`pydiff.sample`."""
    return sorted(SOLVERS)


def get_solver(solver: str | Solver, **kwargs: Any) -> Solver:
    """A solver instance from a name (plus its options), or the instance itself."""
    if isinstance(solver, Solver):
        if kwargs:
            raise ValueError(f"solver options {sorted(kwargs)} given with a solver instance; "
                             "pass them to its constructor instead")
        return solver
    if solver not in SOLVERS:
        known = ", ".join(available_solvers())
        raise InputError(f"unknown solver={solver!r}; known solvers: {known}")
    try:
        return SOLVERS[solver](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad options for solver {solver!r}: {err}") from None


__all__ = ["Solver", "SolverState", "Coefficients", "combine", "register", "get_solver",
           "available_solvers", "SOLVERS", "Resampling", "DDPM", "DDIM", "Euler", "Heun",
           "EulerMaruyama",
           "DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP2MSDE", "DPMSolverMultistep",
           "DPMSolverSinglestep", "MRSampler", "EulerAncestral", "PLMS", "HeavyBall", "GHVB",
           "UniPC", "FlowEuler", "FlowMidpoint", "MultistepConsistency", "PredictorCorrector",
           "TimeShiftDDIM", "DDIMInversion", "BDIA", "BDIAInversion", "LMS", "DEIS", "DPM2",
           "DPM2Ancestral"]
