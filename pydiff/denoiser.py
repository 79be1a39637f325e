"""Denoiser: one network, every parameterization.

``Denoiser(net, schedule, prediction=..., precond=..., time_input=...)`` wraps any callable
``net(x, time, **cond)`` whose output is one of

- ``"eps"``: the noise, ``x = alpha x0 + sigma eps``;
- ``"x0"``: the clean data;
- ``"v"``: ``alpha eps - sigma x0`` (Salimans & Ho);
- ``"score"``: ``grad log p_t(x) = -eps / sigma``;
- ``"velocity"``: ``dx/dt = alpha' x0 + sigma' eps`` (flow matching; ``eps - x0`` for
  rectified flow),

and answers all of them: :meth:`x0`, :meth:`eps`, :meth:`v`, :meth:`score`, :meth:`velocity`.

``precond="edm"`` applies Karras et al.'s preconditioning in the variance exploding coordinate
``x / alpha``: the network sees ``c_in x / alpha`` and ``x0 = c_skip x / alpha + c_out F``.

``time_input`` is the map from continuous ``t`` to what the network was trained on:
``"t"``, ``"index"`` (DDPM table index ``t N - 1``), ``"scaled"`` (``time_scale * t``, e.g. 999 t),
``"log_sigma"`` (``ln(sigma/alpha) / 4``, EDM's c_noise), ``"sigma"`` (``sigma / alpha``), or a
callable of the float64 time. The default is the schedule's.

``t`` may be a scalar, one value per sample ``[B]``, or a tensor broadcastable to ``x``
(per-position noise levels). The network receives ``[B]`` for scalar and per-sample times and the
tensor itself for per-position times (it then needs a per-position time embedding).

For mean-reverting schedules the state is the shifted ``x - y``; pass ``y`` as conditioning
(``bind(y=...)``). The network sees the unshifted ``x`` and ``y``, except with
``precond="edm"``, where it sees the preconditioned shifted state ``c_in (x - y) / alpha`` and
``y`` (EDM's scalings are designed for the process, which lives in the shifted coordinate).

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.VPSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched, prediction="eps")
    >>> x = torch.randn(4, 2)
    >>> torch.allclose(model.x0(x, 1e-3), x / sched.alpha(1e-3).float())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import ops
from .errors import InputError
from .model import Model, Prediction, eps_from_x0_coefs, x0_from_eps_coefs
from .schedules import DiscreteSchedule, Schedule, as_time
from .tree import State, batch_size, leaves, per_sample, tree_map

Tensor = torch.Tensor
# bound once: Denoiser.evaluate's fast path runs on every solver step
_is_compiling = torch.compiler.is_compiling
_trusted = Prediction._trusted
PREDICTIONS = ("eps", "x0", "v", "score", "velocity")
TIME_INPUTS = ("t", "index", "scaled", "log_sigma", "sigma")
PRECONDS = (None, "edm")


class Denoiser(Model):
    """A network plus the schedule it was trained on (see the module docstring).

    Its :meth:`evaluate` hands solvers the network output with the parameterization's linear
    map (a :class:`pydiff.Prediction` over ``(x, output)``), so the eps/v/score -> x0 conversion
    folds into the solver's fused step.
    """

    def __init__(
        self,
        net: Callable[..., Any],
        schedule: Schedule,
        prediction: str | None = None,
        precond: str | None = None,
        time_input: str | Callable[[Tensor], Tensor] | None = None,
        *,
        time_scale: float = 999.0,
        sigma_data: float | None = None,
        dtype: torch.dtype | None = None,
        mean_key: str = "y",
        cond: dict[str, Any] | None = None,
    ):
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
        super().__init__(schedule, cond)
        if precond not in PRECONDS:
            raise InputError(f"unknown precond={precond!r}; expected one of {PRECONDS}")
        if prediction is None:
            prediction = "x0" if precond == "edm" else "eps"
        if prediction not in PREDICTIONS:
            raise InputError(f"unknown prediction={prediction!r}; expected one of {PREDICTIONS}")
        if precond == "edm" and prediction != "x0":
            raise InputError("precond='edm' makes the network predict x0 through c_skip/c_out; "
                             f"prediction must be 'x0', got {prediction!r}")
        if time_input is None:
            time_input = "log_sigma" if precond == "edm" else schedule.default_time_input
        if not callable(time_input) and time_input not in TIME_INPUTS:
            raise InputError(f"unknown time_input={time_input!r}; expected one of {TIME_INPUTS} "
                             "or a callable")
        if time_input == "index" and not isinstance(schedule, DiscreteSchedule):
            raise InputError("time_input='index' needs a DiscreteSchedule, got "
                             f"{type(schedule).__name__}")
        self.net, self.schedule, self.prediction, self.precond = net, schedule, prediction, precond
        self.time_input, self.time_scale, self.dtype, self.mean_key = (
            time_input, float(time_scale), dtype, mean_key)
        self.sigma_data = float(sigma_data if sigma_data is not None
                                else getattr(schedule, "sigma_data", 0.5))
        self._levels: dict[tuple, tuple[Tensor, list[dict[str, Any]]]] = {}
        # per grid row (by address): what a call at that row needs, see evaluate
        self._ready: dict[int, tuple] = {}
        self._net_times: dict[tuple, tuple[Tensor, ...]] = {}

    # -- configuration ---------------------------------------------------------------------
    def network_time(self, t: Tensor) -> Tensor:
        """Map float64 continuous time to the network's time input (float64)."""
        ti = self.time_input
        if callable(ti):
            return ti(t)
        if ti == "t":
            return t
        if ti == "scaled":
            return self.time_scale * t
        if ti == "index":
            idx = t * self.schedule.num_train_timesteps - 1
            return torch.where((idx - idx.round()).abs() < 1e-6, idx.round(), idx)
        sig = self.schedule.sigma_tilde(t)
        return torch.log(sig) / 4 if ti == "log_sigma" else sig

    # -- per-time coefficients, cached -----------------------------------------------------
    def _level(self, t: Tensor) -> dict[str, Tensor]:
        """Float64 coefficients of time ``t``: the network time and the parameter conversions.

        Solvers call the model at the rows of one grid tensor (``grid[i]``); recomputing the
        schedule math (a dozen small float64 ops) per call cost more than the solver step. So
        when ``t`` is a row of a larger tensor, the levels of the whole grid are computed at
        once (as cheap as one row) and kept for the 16 most recent grids: memory stays flat
        over a run. Any other ``t`` is computed directly.
        """
        base = t._base
        # inference tensors have no version counter and must not leak into later autograd use
        if (base is None or base.dim() != t.dim() + 1 or base.stride(0) == 0
                or torch.compiler.is_compiling() or base.requires_grad or base.is_inference()
                or torch.is_inference_mode_enabled()
                or base.shape[1:] != t.shape or base.stride()[1:] != t.stride()):
            return self._compute_level(t)
        row, rem = divmod(t.storage_offset() - base.storage_offset(), base.stride(0))
        if rem or not 0 <= row < base.shape[0]:
            return self._compute_level(t)
        key = (base.data_ptr(), base._version, tuple(base.shape), tuple(base.stride()))
        hit = self._levels.get(key)
        if hit is None or hit[0] is not base:
            whole = self._compute_level(base)
            rows = [{name: tuple(_row(v, r) for v in value) if isinstance(value, tuple)
                     else value[r] for name, value in whole.items()} for r in range(base.shape[0])]
            for r, row_level in enumerate(rows):
                row_level["grid"] = (key, r)
            if len(self._levels) >= 16:
                self._levels.clear()
                self._net_times.clear()
                self._ready.clear()
            hit = self._levels[key] = (base, rows, whole["t_net"])
        return hit[1][row]

    def _remember(self, x: Tensor, level: dict[str, Any]) -> None:
        """Prepare what a call at any row of this level's grid needs (see :meth:`evaluate`),
        for every row at once: a run visits each row once, and memory stays flat over it."""
        key, _ = level["grid"]
        hit = self._levels.get(key)
        batch = x.shape[0]
        if hit is None or (key, batch, x.dtype) in self._net_times:
            return
        base, rows, t_all = hit
        whole = self._net_time(t_all, x.dtype)
        if whole.dim() == 1:  # scalar times: the network gets [B]
            whole = whole[:, None].expand(-1, batch)
        times = self._net_times[key, batch, x.dtype] = whole.unbind(0)
        if len(self._ready) >= 8192:
            self._ready.clear()
        ptr, step = base.data_ptr(), base.stride(0) * base.element_size()
        shape, stride = base.shape[1:], base.stride()[1:]
        for r, lv in enumerate(rows):
            self._ready[ptr + r * step] = (base, base._version, batch, x.dtype, times[r],
                                           _host_coefs(lv["x0"]), _host_coefs(lv["eps"]),
                                           shape, stride, times[r].device)

    def _compute_level(self, t: Tensor) -> dict[str, Tensor]:
        """Float64 network time and the linear maps ``x0``/``eps`` on the basis ``(x, out)``
        (``(x, out, y)`` for an x0 network on a mean-reverting schedule without precond)."""
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        level = {"t_net": self.network_time(t)}
        p = self.prediction
        if self.precond == "edm":  # x0 = c_skip x + c_out F (F: the network output)
            sd, sig = self.sigma_data, s / a
            level["c_in"] = 1 / torch.sqrt(sig**2 + sd**2) / a
            x0 = (sd**2 / (sig**2 + sd**2) / a, sig * sd / torch.sqrt(sig**2 + sd**2))
        elif p == "x0":
            x0 = (None, 1.0)
        elif p == "eps":  # x0 = (x - s eps) / a
            x0 = x0_from_eps_coefs(a, s)
        elif p == "score":  # eps = -s score
            c_x, c_eps = x0_from_eps_coefs(a, s)
            x0 = (c_x, -s * c_eps)
        elif p == "v":  # v = a eps - s x0 and x = a x0 + s eps
            n = a * a + s * s
            x0 = (a / n, -s / n)
        else:  # velocity v = a' x0 + s' eps
            da, ds = self.schedule.derivatives(t)
            det = a * ds - s * da
            x0 = (ds / det, -s / det)
        if p == "eps":
            eps = (None, 1.0)
        else:  # eps = (x - a x0) / s, with x0 = x0[0] x + x0[1] out
            c_x, c_x0 = eps_from_x0_coefs(a, s)
            eps = (c_x if x0[0] is None else c_x + c_x0 * x0[0], c_x0 * x0[1])
        if self.schedule.mean_reverting and self.precond is None and p == "x0":
            # the network predicts the unshifted x0: x0 - y in the state's coordinate
            x0, eps = (*x0, -1.0), (*eps, -eps[1])
        level["x0"], level["eps"] = x0, eps
        return level

    # -- the one network call --------------------------------------------------------------
    def evaluate(self, x: State, t: float | Tensor, **cond: Any) -> Prediction:
        """x0 and eps at state ``x`` and time ``t`` (one network evaluation), as the network
        output and the parameterization's linear map (see :class:`pydiff.Prediction`)."""
        if not cond and type(x) is Tensor and type(t) is Tensor and not _is_compiling():
            # a solver's step: t is a row of its grid, which an earlier call prepared (see
            # _remember): the network time and the maps are ready, the call costs the network
            hit = self._ready.get(t.data_ptr())
            if (hit is not None and t._base is hit[0] and hit[1] == t._version
                    and hit[3] is x.dtype and hit[2] == x.shape[0] and t.shape == hit[7]
                    and t.stride() == hit[8] and hit[9] == x.device):
                bound = self.cond
                out = self.net(x, hit[4], **bound) if bound else self.net(x, hit[4])
                if type(out) is Tensor and out.shape == x.shape:
                    return _trusted((x, out), hit[5], hit[6])
        cond = {**self.cond, **cond} if cond else self.cond
        ref = x if isinstance(x, Tensor) else leaves(x)[0]
        t_arg = t
        t = as_time(t, ref.device)
        level = self._level(t)
        if t.dim() == 0:
            t_net = level["t_net"].expand(batch_size(x))
        else:
            tree_map(lambda leaf: per_sample(t, leaf), x)  # validates the shape
            t_net = level["t_net"]

        shift = None
        if self.schedule.mean_reverting:
            if self.mean_key not in cond:
                raise InputError(f"a mean-reverting schedule needs its mean: pass "
                                 f"{self.mean_key}=... (the noisy observation)")
            shift = cond[self.mean_key]

        if self.precond == "edm":
            # EDM's c_in/c_skip/c_out are designed for the process itself: for mean-reverting
            # schedules that is the shifted state x - y, so the network sees c_in (x - y) / alpha
            # (y comes as conditioning) and c_skip (x - y) / alpha + c_out F is x0 - y
            x_in = tree_map(lambda v: ops.lincomb([v], [level["c_in"]]), x)
            out = self._call_net(x_in, t_net, cond)
        else:
            x_in = x if shift is None else tree_map(torch.add, x, shift)
            out = self._call_net(x_in, t_net, cond)
            if shift is not None and self.prediction == "x0":
                return Prediction((x, out, shift), level["x0"], level["eps"])
        if (t is t_arg and "grid" in level and shift is None and self.precond is None
                and self.dtype is None and type(x) is Tensor):
            self._remember(x, level)
        return Prediction((x, out), level["x0"], level["eps"])

    def _net_time(self, t_net: Tensor, dtype: torch.dtype) -> Tensor:
        # time stays at least float32: bf16 would round 999 t to multiples of 4 near 1000
        return t_net.to(torch.float64 if (self.dtype or dtype) == torch.float64 else torch.float32)

    def _call_net(self, x_in: State, t_net: Tensor, cond: dict) -> State:
        # a half-precision output stays half: the solver's fused step reads it as it is
        run_dtype = self.dtype or (x_in if isinstance(x_in, Tensor) else leaves(x_in)[0]).dtype
        if self.dtype is not None:
            x_in = tree_map(lambda v: v.to(run_dtype), x_in)
        try:
            out = self.net(x_in, self._net_time(t_net, run_dtype), **cond)
        except RuntimeError as err:  # say so when the cause is weights and state on two devices
            weights, state = _weights_device(self.net), leaves(x_in)[0].device
            if weights is None or weights == state:
                raise
            raise InputError(f"the network's weights are on {weights} but the state x is on "
                             f"{state}: put both on one device (net.to(x.device))") from err
        if isinstance(x_in, dict) != isinstance(out, dict):
            raise TypeError("the network must return the same structure as the state "
                            "(a tensor for tensor states, a dict for dict states)")
        return tree_map(_check_shape, out, x_in)

    def __repr__(self) -> str:
        return (f"Denoiser(net={type(self.net).__name__}, schedule={self.schedule!r}, "
                f"prediction={self.prediction!r}, precond={self.precond!r}, "
                f"time_input={self.time_input!r})")


class JumpDenoiser(Denoiser):
    """A Denoiser whose network also sees a target time: the any-to-any jump of Consistency
    Trajectory Models (Kim et al. 2024).

    The network is called as ``net(x, t, s=..., **cond)`` where ``s`` is the network time (as
    ``time_input`` maps it) of the target time ``t_target``, clamped below at the schedule's
    ``t_eps`` (so that log-sigma inputs stay finite). Its prediction, read through the usual
    parameterization, is the x0 and eps *for that target*: the jump from ``t`` to ``t_target``
    is the DDIM-form step ``G(x, t, t_target) = alpha(t_target) x0 + sigma(t_target) eps``,
    which is ``x`` itself at ``t_target = t`` and the consistency map at ``t_target = 0``.
    Without ``t_target`` the model jumps to clean data, so every solver samples it like a
    consistency model; ``pydiff.sample(..., "consistency", gamma=...)`` uses the jumps.

    Example:
        >>> import torch, pydiff
        >>> net = lambda x, t, s: torch.zeros_like(x)       # predicts eps = 0 for any target
        >>> model = pydiff.JumpDenoiser(net, pydiff.FlowSchedule(), prediction="eps")
        >>> x = torch.ones(2, 3)
        >>> model.jump(x, 0.5, 0.25)[0, 0].item()   # x0 = x / alpha(0.5); alpha(0.25) x0
        1.5
    """

    supports_jump = True

    def __init__(self, net: Callable[..., Any], schedule: Schedule, prediction: str | None = None,
                 precond: str | None = None, time_input: str | Callable | None = None, *,
                 target_key: str = "s", **options: Any):
        super().__init__(net, schedule, prediction, precond, time_input, **options)
        self.target_key = target_key

    def evaluate(self, x: State, t: float | Tensor, t_target: float | Tensor | None = None,
                 **cond: Any) -> Prediction:
        """x0 and eps at ``(x, t)`` for a jump to ``t_target`` (default 0: clean data)."""
        ref = x if isinstance(x, Tensor) else leaves(x)[0]
        target = as_time(0.0 if t_target is None else t_target, ref.device)
        target = target.clamp(min=float(self.schedule.t_eps) or 1e-5)
        s_net = self._net_time(self.network_time(target), ref.dtype)
        if s_net.dim() == 0:
            s_net = s_net.expand(batch_size(x))
        return super().evaluate(x, t, **{self.target_key: s_net}, **cond)

    def jump(self, x: State, t: float | Tensor, t_target: float | Tensor, **cond: Any) -> State:
        """``G(x, t, t_target)``: the state at ``t_target`` (one network evaluation)."""
        ref = x if isinstance(x, Tensor) else leaves(x)[0]
        target = as_time(t_target, ref.device)
        x0, eps = self.evaluate(x, t, t_target=target, **cond).predictions()
        a, s = self.schedule.alpha(target), self.schedule.sigma(target)
        return tree_map(lambda u, e: ops.lincomb([u, e], [per_sample(a, u), per_sample(s, u)]),
                        x0, eps)

    def __repr__(self) -> str:
        return "Jump" + super().__repr__()


def _weights_device(net: Any) -> torch.device | None:
    for p in net.parameters() if isinstance(net, torch.nn.Module) else ():
        return p.device
    return None


def _host_coefs(coefs: tuple) -> tuple:
    """A map's coefficients with 0-dim CPU float64 tensors as Python floats (the same double):
    the solver's fused step reads a float without unpacking a tensor."""
    return tuple(float(c) if isinstance(c, Tensor) and c.dim() == 0 and c.device.type == "cpu"
                 and c.dtype == torch.float64 and not c.requires_grad else c for c in coefs)


def _row(v: Any, r: int) -> Any:
    """Row r of a level coefficient: tensors over the grid are indexed, numbers and None kept."""
    return v[r] if isinstance(v, Tensor) else v


def _check_shape(out: Tensor, x: Tensor) -> Tensor:
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise InputError(f"the network returned {got} for an input of shape {tuple(x.shape)}; "
                         "it must return a tensor of the input's shape")
    return out


__all__ = ["Denoiser", "JumpDenoiser", "PREDICTIONS", "TIME_INPUTS"]
