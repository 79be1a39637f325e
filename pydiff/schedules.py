"""Noise schedules: the marginals of every forward process pydiff knows.

Every forward process is described by its marginals ``x_t = alpha(t) * x0 + sigma(t) * eps`` in
continuous time ``t``, computed in float64. ``t = 0`` always denotes clean data
(``alpha = 1, sigma = 0``), so a timestep grid that ends at 0 denoises fully, whatever the family.

Families:

- :class:`DiscreteSchedule`: DDPM tables (``linear``, ``scaled_linear``, ``cosine`` or your own
  ``alphas_cumprod``) in continuous time; table entry ``n`` sits at ``t = (n + 1) / N`` and
  ``log alpha`` is interpolated linearly in between (as in DPM-Solver's discrete wrapper).
- :class:`VPSchedule`: continuous variance preserving, linear beta (Song et al.).
- :class:`CosineSchedule`: continuous cosine (Nichol & Dhariwal).
- :class:`VESchedule`: variance exploding, geometric sigma (Song et al.).
- :class:`EDMSchedule`: ``alpha = 1, sigma = t`` (Karras et al.).
- :class:`FlowSchedule`: rectified flow / flow matching, ``alpha = 1 - t, sigma = t``.
- :class:`MeanRevertingSchedule`: Ornstein-Uhlenbeck with variance exploding noise (SGMSE+).
  The mean ``e^{-theta t} x0 + (1 - e^{-theta t}) y`` drifts towards ``y``; in the shifted
  coordinate ``x - y`` the process is an ordinary ``alpha/sigma`` process with
  ``alpha = e^{-theta t}``, which is what this class describes (the Denoiser and
  :func:`pydiff.sample` apply the shift).

Example:
    >>> import torch, pydiff
    >>> s = pydiff.schedules.DiscreteSchedule.scaled_linear()
    >>> t = torch.tensor([0.5], dtype=torch.float64)
    >>> bool(torch.allclose(s.t_from_log_snr(s.log_snr(t)), t))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .errors import InputError

Tensor = torch.Tensor
F64 = torch.float64


def as_time(t: float | Tensor, device: torch.device | str | None = None) -> Tensor:
    """``t`` as a float64 tensor (schedule math is always float64)."""
    if torch.is_tensor(t):
        return t.to(dtype=F64, device=device if device is not None else t.device)
    return torch.as_tensor(t, dtype=F64, device=device)


class Schedule:
    """Base class: subclasses define ``_alpha`` and ``_sigma`` (float64, elementwise).

    Attributes:
        t_max: largest valid time (the prior).
        t_eps: smallest positive time the model was trained on; default grids end here before
            the final step to ``t = 0``.
        default_time_input: how a network trained on this schedule sees time
            (see :mod:`pydiff.denoiser`).
        mean_reverting: True for processes whose mean drifts towards a conditioning ``y``.
    """

    t_max: float = 1.0
    t_eps: float = 1e-3
    default_time_input: str = "t"
    mean_reverting: bool = False
    # the grid spacing that suits this family whatever the solver (None: the solver's choice)
    default_spacing: str | None = None

    # -- to be defined by families --------------------------------------------------------
    def _alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serializable constructor arguments (``type`` names the class)."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------
    def alpha(self, t: float | Tensor) -> Tensor:
        """Signal scale ``alpha(t)`` (float64); ``alpha(0) = 1``."""
        t = as_time(t)
        return torch.where(t == 0, torch.ones_like(t), self._alpha(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        """Noise scale ``sigma(t)`` (float64); ``sigma(0) = 0``."""
        t = as_time(t)
        return torch.where(t == 0, torch.zeros_like(t), self._sigma(t))

    def alpha_sigma(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))``; for a row of a grid tensor (``grid[i]``, as solvers pass
        times to models) the whole grid's values are computed once and kept with the grid.

        A wrapper such as :class:`pydiff.guidance.ClipX0` needs them at every model call; a
        policy's chunk reuses one grid for every call (``pydiff.sample`` keeps its default
        grids), where recomputing the table interpolation cost as much as a small network.
        The 16 most recent grids are kept (checked by identity and in-place version).

        Example:
            >>> import pydiff
            >>> s = pydiff.VPSchedule()
            >>> grid = pydiff.timesteps(s, 4)
            >>> bool(s.alpha_sigma(grid[1])[0] == s.alpha(grid[1]))
            True
        """
        t = as_time(t)
        base = t._base
        if (base is None or base.dim() != t.dim() + 1 or base.stride(0) == 0
                or base.requires_grad or t.requires_grad or base.is_inference()
                or torch.is_inference_mode_enabled() or torch.compiler.is_compiling()
                or base.shape[1:] != t.shape or base.stride()[1:] != t.stride()):
            return self.alpha(t), self.sigma(t)
        row, rem = divmod(t.storage_offset() - base.storage_offset(), base.stride(0))
        if rem or not 0 <= row < base.shape[0]:
            return self.alpha(t), self.sigma(t)
        cache = self.__dict__.setdefault("_grid_levels", {})
        hit = cache.get(id(base))
        if hit is None or hit[0] is not base or hit[1] != base._version:
            if len(cache) >= 16:
                cache.clear()
            hit = cache[id(base)] = (base, base._version, self.alpha(base).unbind(0),
                                     self.sigma(base).unbind(0))
        return hit[2][row], hit[3][row]

    def log_snr(self, t: float | Tensor) -> Tensor:
        """``lambda(t) = log(alpha / sigma)``; ``+inf`` at ``t = 0``."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def sigma_tilde(self, t: float | Tensor) -> Tensor:
        """``sigma / alpha``: the noise level in EDM's (variance exploding) coordinates."""
        return self.sigma(t) / self.alpha(t)

    def t_from_log_snr(self, lam: float | Tensor) -> Tensor:
        """Inverse of :meth:`log_snr` (bisection in float64 unless a family overrides it)."""
        lam = as_time(lam)
        lo = torch.full_like(lam, 0.0)
        hi = torch.full_like(lam, float(self.t_max))
        for _ in range(100):  # log_snr decreases in t: 100 halvings reach float64 resolution
            mid = 0.5 * (lo + hi)
            go_right = self.log_snr(mid) > lam
            lo = torch.where(go_right, mid, lo)
            hi = torch.where(go_right, hi, mid)
        t = 0.5 * (lo + hi)
        return torch.where(torch.isposinf(lam), torch.zeros_like(t), t)

    def t_from_sigma_tilde(self, sigma_tilde: float | Tensor) -> Tensor:
        """Time at which ``sigma / alpha`` equals ``sigma_tilde``."""
        return self.t_from_log_snr(-torch.log(as_time(sigma_tilde)))

    def derivatives(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(d alpha / dt, d sigma / dt)`` in float64 (autograd unless overridden)."""
        t = as_time(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = []
            for value in (self._alpha(t), self._sigma(t)):
                if value.requires_grad:  # constant in t (alpha = 1 for VE): no graph
                    grad = torch.autograd.grad(value.sum(), t, allow_unused=True)[0]
                else:
                    grad = None
                out.append(torch.zeros_like(t) if grad is None else grad.detach())
        return out[0], out[1]

    def sde(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """Drift and squared diffusion ``(f(t), g(t)^2)`` of ``dx = f x dt + g dw``.

        ``f = d log alpha / dt`` and ``g^2 = d sigma^2 / dt - 2 f sigma^2``.
        """
        t = as_time(t)
        da, ds = self.derivatives(t)
        a, s = self._alpha(t), self._sigma(t)
        f = da / a
        return f, 2 * s * ds - 2 * f * s**2

    def check_time(self, t: Tensor, name: str = "t") -> None:
        """Raise an InputError if any ``t`` lies outside ``[0, t_max]`` (a host sync: call at
        init)."""
        if torch.isnan(t).any() or (t < 0).any() or (t > self.t_max * (1 + 1e-12)).any():
            raise InputError(
                f"{name}={_brief(t)} lies outside this {type(self).__name__}'s range "
                f"[0, {self.t_max}]"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _brief(t: Tensor) -> str:
    flat = t.flatten()
    if flat.numel() <= 6:
        return str([round(float(v), 6) for v in flat])
    return f"tensor with range [{float(flat.min()):.6g}, {float(flat.max()):.6g}]"


def _vp_alpha_from_log_snr(lam: Tensor) -> Tensor:
    # alpha^2 = sigmoid(2 lambda) for alpha^2 + sigma^2 = 1
    return torch.exp(-0.5 * torch.nn.functional.softplus(-2 * lam))


class _VPFromLogAlpha(Schedule):
    """Variance preserving families given by ``log alpha(t)`` (subclasses define ``_log_alpha``).

    ``sigma = sqrt(1 - alpha^2)`` is computed as ``sqrt(-expm1(2 log alpha))``, which keeps its
    relative precision near ``t = 0``, where ``1 - alpha^2`` would cancel.
    """

    def _log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))


class DiscreteSchedule(_VPFromLogAlpha):
    """A DDPM table ``alphas_cumprod[n]`` in continuous time ``t = (n + 1) / N``.

    ``log alpha`` is piecewise linear in ``t`` between table entries and 0 at ``t = 0``, so every
    table entry is reproduced exactly and intermediate times are well defined.
    A network trained on the table sees ``index = t * N - 1`` (``time_input="index"``).

    Example:
        >>> s = DiscreteSchedule.linear(1e-4, 0.02, 1000)
        >>> round(float(s.alpha(1.0) ** 2), 6)  # alphas_cumprod[-1]
        4e-05
    """

    t_eps = 0.0  # set per table: 1 / N
    default_time_input = "index"
    # Steps uniform in the table's time, as diffusers spaces every scheduler on a DDPM table by
    # default. Uniform log-SNR (the DPM-Solver default elsewhere) puts most of a few-step grid
    # at the table's noisy end, where the cosine table's log-SNR falls steeply to log(5e-4):
    # with 5 steps two of them land above t = 0.9 and one jump spans t = 0.91 -> 0.25, which
    # is what sank DPM-Solver++ 2M at 5 steps on the pendulum policy (BENCHMARKS.md, Policy).
    default_spacing = "time"

    def __init__(self, alphas_cumprod: Tensor | list[float], kind: str = "custom", **kind_args):
        ac = torch.as_tensor(alphas_cumprod, dtype=F64).flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac <= 1)).all()):
            raise InputError("alphas_cumprod must hold at least 2 values in (0, 1]")
        if not bool((ac[1:] <= ac[:-1]).all()):
            raise InputError("alphas_cumprod must be non-increasing")
        self.alphas_cumprod = ac
        self.num_train_timesteps = n = ac.numel()
        self.t_eps = 1.0 / n
        self._kind, self._kind_args = kind, kind_args
        self._log_alpha_knots = torch.cat([torch.zeros(1, dtype=F64), 0.5 * torch.log(ac)])

    # constructors named as in diffusers' beta_schedule
    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02,
               num_train_timesteps: int = 1000):
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=F64)
        return cls(torch.cumprod(1 - betas, 0), "linear", beta_start=beta_start,
                   beta_end=beta_end, num_train_timesteps=num_train_timesteps)

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012,
                      num_train_timesteps: int = 1000):
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=F64) ** 2
        return cls(torch.cumprod(1 - betas, 0), "scaled_linear", beta_start=beta_start,
                   beta_end=beta_end, num_train_timesteps=num_train_timesteps)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, max_beta: float = 0.999):
        """``squaredcos_cap_v2`` (Nichol & Dhariwal), betas capped at ``max_beta``.

        With few table entries (e.g. 100, as diffusion policies use) ``alpha(1)`` is tiny (about
        5e-4), so an eps-predicting model's x0 estimate at the start of sampling is huge: clamp
        it (``pydiff.guidance.ClipX0``) when the data is bounded, as Diffusion Policy does.
        """
        i = torch.arange(num_train_timesteps, dtype=F64)

        def abar(u):
            return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.clamp(1 - abar((i + 1) / num_train_timesteps) / abar(i / num_train_timesteps),
                            max=max_beta)
        return cls(torch.cumprod(1 - betas, 0), "cosine", num_train_timesteps=num_train_timesteps,
                   max_beta=max_beta)

    @classmethod
    def from_betas(cls, betas: Tensor | list[float]):
        return cls(torch.cumprod(1 - torch.as_tensor(betas, dtype=F64), 0))

    def _log_alpha(self, t: Tensor) -> Tensor:
        vals = self._log_alpha_knots.to(t.device)
        n = self.num_train_timesteps
        idx = torch.clamp(torch.floor(t * n).long(), 0, n - 1)
        w = t * n - idx.to(F64)
        return vals[idx] * (1 - w) + vals[idx + 1] * w

    def t_from_log_snr(self, lam):
        lam = as_time(lam)
        log_alpha = torch.log(_vp_alpha_from_log_snr(lam))
        vals = self._log_alpha_knots.to(lam.device)
        n = self.num_train_timesteps
        # knots decrease: search on the negated (increasing) sequence
        j = torch.searchsorted(-vals, -log_alpha.reshape(-1).contiguous()).reshape(lam.shape)
        j = torch.clamp(j, 1, n)
        lo, hi = vals[j - 1], vals[j]
        w = (log_alpha - lo) / (hi - lo)
        return ((j - 1).to(F64) + w) / n

    def config(self):
        if self._kind == "custom":
            return {"type": "DiscreteSchedule", "alphas_cumprod": self.alphas_cumprod.tolist()}
        return {"type": "DiscreteSchedule", "kind": self._kind, **self._kind_args}


class VPSchedule(_VPFromLogAlpha):
    """Continuous variance preserving SDE with linear ``beta(t)`` (Song et al. 2021).

    ``log alpha(t) = -beta_d t^2 / 4 - beta_min t / 2`` with ``beta_d = beta_max - beta_min``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_eps: float = 1e-3):
        self.beta_min, self.beta_max, self.t_eps = float(beta_min), float(beta_max), float(t_eps)

    def _log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_log_snr(self, lam):
        lam = as_time(lam)
        bd = self.beta_max - self.beta_min
        # solve bd/2 t^2 + beta_min t - log(1 + e^{-2 lam}) = 0
        c = torch.nn.functional.softplus(-2 * lam)
        t = 2 * c / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * bd * c))
        return t

    def config(self):
        return {"type": "VPSchedule", "beta_min": self.beta_min, "beta_max": self.beta_max,
                "t_eps": self.t_eps}


class CosineSchedule(Schedule):
    """Continuous cosine schedule: ``alpha = cos((t + s) / (1 + s) * pi / 2) / cos(s/(1+s) pi/2)``.

    ``t_max`` stays below 1 (where alpha would vanish), as in DPM-Solver.
    """

    def __init__(self, s: float = 0.008, t_max: float = 0.9946, t_eps: float = 1e-3):
        self.s, self.t_max, self.t_eps = float(s), float(t_max), float(t_eps)

    def _alpha(self, t):
        s = self.s
        return torch.cos((t + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)

    def _sigma(self, t):
        return torch.sqrt(1 - self._alpha(t) ** 2)

    def t_from_log_snr(self, lam):
        a = _vp_alpha_from_log_snr(as_time(lam))
        s = self.s
        return torch.acos(a * math.cos(s / (1 + s) * math.pi / 2)) * 2 * (1 + s) / math.pi - s

    def config(self):
        return {"type": "CosineSchedule", "s": self.s, "t_max": self.t_max, "t_eps": self.t_eps}


class VESchedule(Schedule):
    """Variance exploding: ``alpha = 1``, ``sigma = sigma_min (sigma_max / sigma_min)^t``."""

    t_eps = 1e-5
    default_spacing = "karras"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_eps: float = 1e-5):
        if not 0 < sigma_min < sigma_max:
            raise InputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_eps = float(sigma_min), float(sigma_max), t_eps

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_from_log_snr(self, lam):
        lam = as_time(lam)
        t = (-lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        return torch.where(torch.isposinf(lam), torch.zeros_like(t), t)

    def config(self):
        return {"type": "VESchedule", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "t_eps": self.t_eps}


class EDMSchedule(Schedule):
    """Karras et al. (EDM): ``alpha = 1``, ``sigma = t`` for ``t`` in ``[0, sigma_max]``.

    ``sigma_min`` is where default grids end before the final step to 0; ``sigma_data`` is the
    data's standard deviation used by EDM preconditioning.
    """

    default_time_input = "log_sigma"
    default_spacing = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max:
            raise InputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.t_max, self.t_eps = self.sigma_max, self.sigma_min

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return t

    def t_from_log_snr(self, lam):
        return torch.exp(-as_time(lam))

    def derivatives(self, t):
        t = as_time(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def config(self):
        return {"type": "EDMSchedule", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data}


class FlowSchedule(Schedule):
    """Rectified flow / flow matching: ``alpha = 1 - t``, ``sigma = t``; velocity ``eps - x0``.

    ``shift`` applies the resolution shift of SD3 / flux to grids (``t -> s t / (1 + (s-1) t)``)
    through :func:`pydiff.timesteps`; the marginals themselves are unchanged. Default grids are
    uniform in ``t`` (log-SNR and Karras grids from ``alpha = 0`` crowd the noisy end).
    """

    default_spacing = "time"

    def __init__(self, t_eps: float = 1e-3, shift: float = 1.0):
        self.t_eps, self.shift = float(t_eps), float(shift)

    def _alpha(self, t):
        return 1 - t

    def _sigma(self, t):
        return t

    def t_from_log_snr(self, lam):
        lam = as_time(lam)
        return torch.sigmoid(-lam)

    def derivatives(self, t):
        t = as_time(t)
        return -torch.ones_like(t), torch.ones_like(t)

    def config(self):
        return {"type": "FlowSchedule", "t_eps": self.t_eps, "shift": self.shift}


class MeanRevertingSchedule(Schedule):
    """Ornstein-Uhlenbeck variance exploding SDE of SGMSE+, in the shifted coordinate ``x - y``.

    ``dx = theta (y - x) dt + sigma_min r^t sqrt(2 log r) dw`` with ``r = sigma_max / sigma_min``
    gives ``alpha = e^{-theta t}`` and
    ``sigma^2 = sigma_min^2 (e^{2 t log r} - e^{-2 theta t}) log r / (theta + log r)``.
    The conditioning ``y`` is passed to the Denoiser as ``y``.
    """

    mean_reverting = True

    def __init__(self, theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5,
                 t_eps: float = 0.03):
        if not (theta > 0 and 0 < sigma_min < sigma_max):
            raise InputError(f"need theta > 0 and 0 < sigma_min < sigma_max, got "
                             f"theta={theta}, sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.theta = float(theta)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_eps = float(t_eps)
        self._logsig = math.log(self.sigma_max / self.sigma_min)

    def _alpha(self, t):
        return torch.exp(-self.theta * t)

    def _sigma(self, t):
        th, lg = self.theta, self._logsig
        var = self.sigma_min**2 * (torch.exp(2 * lg * t) - torch.exp(-2 * th * t)) * lg / (th + lg)
        return torch.sqrt(var)

    def config(self):
        return {"type": "MeanRevertingSchedule", "theta": self.theta, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "t_eps": self.t_eps}


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    cls.__name__: cls
    for cls in (DiscreteSchedule, VPSchedule, CosineSchedule, VESchedule, EDMSchedule,
                FlowSchedule, MeanRevertingSchedule)
}


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.config` (used by ``from_pretrained``)."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in SCHEDULES:
        raise InputError(f"unknown schedule type {kind!r}; known: {sorted(SCHEDULES)}")
    if kind == "DiscreteSchedule" and "kind" in config:
        return getattr(DiscreteSchedule, config.pop("kind"))(**config)
    return SCHEDULES[kind](**config)
