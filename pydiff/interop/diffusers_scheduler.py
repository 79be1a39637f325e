"""Read a diffusers scheduler config into the matching pydiff schedule, grid, solver and Denoiser.

``spec = from_diffusers_config("scheduler_config.json")`` (or a dict) returns a
:class:`DiffusersScheduler` holding

- ``schedule``: the training noise schedule (``beta_schedule``, ``beta_start``/``beta_end``,
  ``trained_betas``, ``num_train_timesteps``, ``rescale_betas_zero_snr``) as a
  :class:`pydiff.DiscreteSchedule`, a :class:`pydiff.FlowSchedule` for flow matching, or an
  :class:`pydiff.EDMSchedule` (with ``precond="edm"``) for diffusers' EDM schedulers;
- ``prediction`` and the network time convention (``time_input``/``time_scale``) for
  :class:`pydiff.Denoiser`: ``epsilon -> "eps"``, ``v_prediction -> "v"``, ``sample -> "x0"``,
  flow matching ``-> "velocity"``; the network sees the DDPM index ``t N - 1`` (diffusers'
  ``timestep``), ``1000 sigma`` for flow matching, ``ln(sigma) / 4`` for continuous Euler;
- ``grid(steps)``: the float64 pydiff grid whose noise levels equal diffusers' ``set_timesteps``
  (``timestep_spacing`` linspace/leading/trailing, ``steps_offset``, ``use_karras_sigmas``,
  ``use_exponential_sigmas``, ``use_lu_lambdas``, ``final_sigmas_type``, ``set_alpha_to_one``,
  ``lambda_min_clipped``, flow ``shift`` and dynamic shifting with ``mu``);
- ``solver()``: the pydiff solver of the scheduler's algorithm (``DDIMScheduler -> "ddim"``,
  ``DPMSolverMultistepScheduler`` with ``dpmsolver++``/order 2 ``-> "dpmpp_2m"``,
  ``PNDMScheduler -> "plms"`` (``warmup="prk"`` unless ``skip_prk_steps``),
  ``UniPCMultistepScheduler -> "unipc"``, ``LMSDiscreteScheduler -> "lms"``,
  ``KDPM2DiscreteScheduler -> "dpm2"``, ``DEISMultistepScheduler -> "deis"``, ...). A mapped
  solver pydiff does not provide raises a ValueError naming it and the available ones;
  ``solver("ddim")`` overrides the choice;
- ``denoiser(net)``: the Denoiser, wrapped in :class:`pydiff.guidance.ClipX0` for
  ``clip_sample`` and :class:`pydiff.guidance.DynamicThresholding` for ``thresholding``;
- ``to_config()``: the diffusers config of this spec (a round trip keeps every key pydiff reads).

Known differences: diffusers passes rounded integer timesteps to the network for Karras grids of
DPM-Solver while pydiff passes the exact continuous index; DDIM with linspace/trailing spacing
steps to ``t - N // steps`` in diffusers (not the next grid time), pydiff steps along the grid;
likewise PNDM's Runge-Kutta stages (``skip_prk_steps=False``) sit at ``t - N // steps // 2`` in
diffusers, the middle of the step only for ``leading`` spacing with an even ``N // steps``, and
always at the middle in pydiff.

Example:
    >>> from pydiff.interop import from_diffusers_config
    >>> spec = from_diffusers_config({"_class_name": "DDIMScheduler", "beta_schedule":
    ...     "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
    ...     "set_alpha_to_one": False, "clip_sample": False})
    >>> spec.solver_name, spec.prediction, [round(v, 3) for v in spec.grid(4).tolist()]
    ('ddim', 'eps', [0.752, 0.502, 0.252, 0.002, 0.001])
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..denoiser import Denoiser
from ..grids import flow_shift, karras_sigmas
from ..schedules import F64, DiscreteSchedule, EDMSchedule, FlowSchedule, Schedule
from ..solvers import Solver, available_solvers, get_solver

Tensor = torch.Tensor

# family: how set_timesteps builds the grid; solver: the pydiff solver of the algorithm
_DISCRETE = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler")
_MULTISTEP = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
              "DPMSolverSinglestepScheduler")
_SIGMA = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
          "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
_FLOW = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
SUPPORTED = _DISCRETE + _MULTISTEP + _SIGMA + _FLOW + _EDM

# diffusers 0.42 constructor defaults of the keys read here (tests check them against diffusers)
_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
           "beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
           "steps_offset": 0, "rescale_betas_zero_snr": False}
DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {**_COMMON, "variance_type": "fixed_small", "clip_sample": True,
                      "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                      "clip_sample_range": 1.0, "sample_max_value": 1.0,
                      "timestep_spacing": "leading"},
    "DDIMScheduler": {**_COMMON, "clip_sample": True, "set_alpha_to_one": True,
                      "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                      "clip_sample_range": 1.0, "sample_max_value": 1.0,
                      "timestep_spacing": "leading"},
    "PNDMScheduler": {**_COMMON, "skip_prk_steps": False, "set_alpha_to_one": False,
                      "timestep_spacing": "leading"},
    "DPMSolverMultistepScheduler": {
        **_COMMON, "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
        "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
        "use_flow_sigmas": False, "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf,
        "variance_type": None, "timestep_spacing": "linspace"},
    "UniPCMultistepScheduler": {
        **_COMMON, "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0, "predict_x0": True, "solver_type": "bh2",
        "lower_order_final": True, "use_karras_sigmas": False, "use_exponential_sigmas": False,
        "use_beta_sigmas": False, "use_flow_sigmas": False, "timestep_spacing": "linspace",
        "final_sigmas_type": "zero"},
    "DEISMultistepScheduler": {
        **_COMMON, "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0, "lower_order_final": True, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False,
        "timestep_spacing": "linspace"},
    "DPMSolverSinglestepScheduler": {
        **_COMMON, "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "lower_order_final": False,
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
        "use_flow_sigmas": False, "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf,
        "timestep_spacing": "linspace"},
    "EulerDiscreteScheduler": {
        **_COMMON, "interpolation_type": "linear", "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "sigma_min": None,
        "sigma_max": None, "timestep_spacing": "linspace", "timestep_type": "discrete",
        "final_sigmas_type": "zero"},
    "EulerAncestralDiscreteScheduler": {**_COMMON, "timestep_spacing": "linspace"},
    "HeunDiscreteScheduler": {
        **_COMMON, "beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "clip_sample": False,
        "clip_sample_range": 1.0, "timestep_spacing": "linspace"},
    "LMSDiscreteScheduler": {
        **_COMMON, "use_karras_sigmas": False, "use_exponential_sigmas": False,
        "use_beta_sigmas": False, "timestep_spacing": "linspace"},
    "KDPM2DiscreteScheduler": {
        **_COMMON, "beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "timestep_spacing": "linspace"},
    "KDPM2AncestralDiscreteScheduler": {
        **_COMMON, "beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "timestep_spacing": "linspace"},
    "FlowMatchEulerDiscreteScheduler": {
        "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
        "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
        "max_image_seq_len": 4096, "invert_sigmas": False, "shift_terminal": None,
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
        "time_shift_type": "exponential", "stochastic_sampling": False},
    "FlowMatchHeunDiscreteScheduler": {"num_train_timesteps": 1000, "shift": 1.0},
}
_EDM_COMMON = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5,
               "sigma_schedule": "karras", "num_train_timesteps": 1000,
               "prediction_type": "epsilon", "rho": 7.0}
DEFAULTS["EDMEulerScheduler"] = {**_EDM_COMMON, "final_sigmas_type": "zero"}
DEFAULTS["EDMDPMSolverMultistepScheduler"] = {
    **_EDM_COMMON, "solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
    "lower_order_final": True, "euler_at_final": False, "final_sigmas_type": "zero"}
for _cls in ("PNDMScheduler", "DEISMultistepScheduler", "HeunDiscreteScheduler",
             "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
             "DPMSolverSinglestepScheduler"):
    del DEFAULTS[_cls]["rescale_betas_zero_snr"]  # these classes do not have the option
for _key in ("steps_offset", "timestep_spacing"):  # singlestep spaces like linspace, no offset
    del DEFAULTS["DPMSolverSinglestepScheduler"][_key]

_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0",
                "flow_prediction": "velocity"}
_SPACINGS = ("linspace", "leading", "trailing")


@dataclass(frozen=True)
class DiffusersScheduler:
    """A diffusers scheduler config read into pydiff terms (see the module docstring).

    Attributes:
        class_name: the diffusers scheduler class (``_class_name``).
        config: the full config with diffusers' defaults filled in.
        schedule: the pydiff schedule of the training process.
        prediction: the Denoiser's ``prediction``.
        time_input, time_scale: the Denoiser's network time convention.
        precond: the Denoiser's ``precond`` (``"edm"`` for diffusers' EDM schedulers).
        solver_name, solver_options: the pydiff solver of the algorithm.
        solver_problem: why the mapped solver cannot reproduce the config (None if it can).
        ignored: config keys pydiff does not interpret (informational).
    """

    class_name: str
    config: dict[str, Any]
    schedule: Schedule
    prediction: str
    time_input: str
    time_scale: float
    solver_name: str
    solver_options: dict[str, Any] = field(default_factory=dict)
    precond: str | None = None
    solver_problem: str | None = None
    ignored: tuple[str, ...] = ()

    # -- grids -------------------------------------------------------------------------------
    def sigmas(self, steps: int, mu: float | None = None) -> Tensor:
        """diffusers' ``scheduler.sigmas`` after ``set_timesteps(steps)``, in VE terms
        ``sigma / alpha`` (flow matching: ``sigma``), float64 ``[steps + 1]``."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if self.class_name in _FLOW + _EDM:
            return self.grid(steps, mu)
        t = self.grid(steps, mu)
        return self.schedule.sigma_tilde(t)

    def grid(self, steps: int, mu: float | None = None) -> Tensor:
        """The pydiff grid (float64 times, ``[steps + 1]``) of ``set_timesteps(steps)``.

        ``mu`` is the resolution shift of flow models with ``use_dynamic_shifting`` (Flux).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        c = self.config
        if self.class_name in _FLOW:
            return _flow_sigmas(c, steps, mu)  # sigma = t for FlowSchedule
        if self.class_name in _EDM:  # sigma = t for EDMSchedule
            kind = "karras" if c["sigma_schedule"] == "karras" else "exponential"
            sig = _convert(kind, c["sigma_min"], c["sigma_max"], steps, rho=c["rho"])
            return _append_final(sig, "zero", 1)
        n = c["num_train_timesteps"]
        sched = self.schedule
        assert isinstance(sched, DiscreteSchedule)
        table = _ve_sigmas(sched)
        if self.class_name in _SIGMA:
            ts = _float_timesteps(c, steps)
            sig = _interp(ts, table)
            conv = _conversion(c)
            if conv is not None:
                lo = c.get("sigma_min") or float(sig[-1])
                hi = c.get("sigma_max") or float(sig[0])
                sig = _convert(conv, lo, hi, steps)
            times = sched.t_from_sigma_tilde(sig)
            exact = ts == ts.round()
            if conv is None and bool(exact.all()):
                times = (ts + 1) / n  # integer timesteps: the table entries themselves
            final = c.get("final_sigmas_type", "zero")
            return _append_final(times, final, n)
        # integer-timestep families
        last = n
        plus_one = self.class_name in _MULTISTEP
        if plus_one and c.get("lambda_min_clipped", -math.inf) > -math.inf:
            lam = torch.log(sched.alpha((torch.arange(n, dtype=F64) + 1) / n)) - torch.log(
                sched.sigma((torch.arange(n, dtype=F64) + 1) / n))
            clipped = int(torch.searchsorted(lam.flip(0).contiguous(),
                                             torch.tensor([float(c["lambda_min_clipped"])],
                                                          dtype=F64)))
            last = n - clipped
        ts = _int_timesteps(c, steps, plus_one, last)
        conv = _conversion(c)
        if conv is not None:
            sig = _convert(conv, float(table[0]), float(table[-1]), steps)
            times = sched.t_from_sigma_tilde(sig)
        else:
            times = (ts + 1) / n
        if self.class_name in _MULTISTEP:
            return _append_final(times, c.get("final_sigmas_type", "zero"), n)
        if self.class_name == "DDPMScheduler":
            return _append_final(times, "zero", n)
        return _append_final(times, "zero" if c["set_alpha_to_one"] else "sigma_min", n)

    # -- pydiff objects ----------------------------------------------------------------------
    def solver(self, name: str | None = None, **options: Any) -> Solver:
        """The pydiff solver (``name``/``options`` override the mapped ones)."""
        if name is None:
            if self.solver_problem is not None:
                raise ValueError(f"{self.class_name}: {self.solver_problem}; pass solver(name) "
                                 "to choose a pydiff solver instead")
            if self.solver_name not in available_solvers():
                raise ValueError(
                    f"{self.class_name} maps to pydiff solver {self.solver_name!r}, which this "
                    f"pydiff does not provide; available: {', '.join(available_solvers())}. "
                    "Pass solver(name) to choose one")
            return get_solver(self.solver_name, **{**self.solver_options, **options})
        return get_solver(name, **options)

    def denoiser(self, net: Any, **kwargs: Any) -> Denoiser:
        """``pydiff.Denoiser(net, ...)`` with this config's prediction and time convention,
        wrapped in the x0 clipping / dynamic thresholding the config asks for."""
        from ..guidance import ClipX0, DynamicThresholding

        model: Denoiser = Denoiser(net, self.schedule, prediction=self.prediction,
                                   precond=self.precond, time_input=self.time_input,
                                   time_scale=self.time_scale, **kwargs)
        c = self.config
        if c.get("thresholding"):
            model = DynamicThresholding(model, c["dynamic_thresholding_ratio"],
                                        max_value=c["sample_max_value"])
        elif c.get("clip_sample"):
            model = ClipX0(model, c["clip_sample_range"])
        return model

    def to_config(self) -> dict[str, Any]:
        """The diffusers config of this spec: rebuilt from the pydiff schedule and prediction,
        plus the grid and solver keys (``_class_name`` first)."""
        out: dict[str, Any] = {"_class_name": self.class_name}
        inverse = {v: k for k, v in _PREDICTIONS.items()}
        if self.class_name not in _FLOW + _EDM:
            out.update(_schedule_config(self.schedule, self.config))
            out["prediction_type"] = inverse[self.prediction]
        for k, v in self.config.items():
            if k not in out and k not in self.ignored and not k.startswith("_"):
                out[k] = v
        return out


def from_diffusers_config(config: dict[str, Any] | str | os.PathLike) -> DiffusersScheduler:
    """Read a diffusers scheduler config (a dict, or a path to its JSON file).

    Raises a ValueError for scheduler classes and options pydiff cannot reproduce, naming them.
    """
    if not isinstance(config, dict):
        with open(config) as f:
            config = json.load(f)
    cls = config.get("_class_name")
    if cls not in SUPPORTED:
        raise ValueError(f"unsupported diffusers scheduler _class_name={cls!r}; pydiff reads: "
                         f"{', '.join(SUPPORTED)}")
    defaults = DEFAULTS[cls]
    c = {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}
    ignored = tuple(sorted(k for k in config if k not in defaults and not k.startswith("_")))
    _check_options(cls, c)

    precond = None
    if cls in _FLOW:
        schedule: Schedule = FlowSchedule(t_eps=1.0 / c["num_train_timesteps"],
                                          shift=float(c["shift"]))
        prediction, time_input, time_scale = "velocity", "scaled", float(c["num_train_timesteps"])
    elif cls in _EDM:
        if c["prediction_type"] != "epsilon":
            raise ValueError(f"{cls}: prediction_type={c['prediction_type']!r} is not supported "
                             "(EDM's 'epsilon' is the preconditioned F-prediction pydiff reads)")
        if c["final_sigmas_type"] != "zero" or c["sigma_schedule"] not in ("karras",
                                                                          "exponential"):
            raise ValueError(f"{cls}: final_sigmas_type={c['final_sigmas_type']!r} / "
                             f"sigma_schedule={c['sigma_schedule']!r} not supported (expected "
                             "'zero' and 'karras' or 'exponential')")
        schedule = EDMSchedule(c["sigma_min"], c["sigma_max"], c["sigma_data"])
        # diffusers' EDM "epsilon" output is F of Karras et al.: x0 = c_skip x + c_out F
        prediction, time_input, time_scale, precond = "x0", "log_sigma", 999.0, "edm"
    else:
        schedule = _schedule(c)
        if c["prediction_type"] not in _PREDICTIONS or c["prediction_type"] == "flow_prediction":
            raise ValueError(f"prediction_type={c['prediction_type']!r} is not supported for "
                             f"{cls}; expected epsilon, v_prediction or sample")
        prediction = _PREDICTIONS[c["prediction_type"]]
        time_input, time_scale = "index", 999.0
        if c.get("timestep_type") == "continuous" and prediction == "v":
            time_input = "log_sigma"  # diffusers passes 0.25 ln(sigma) to such networks
    name, options, problem = _solver_for(cls, c)
    return DiffusersScheduler(cls, c, schedule, prediction, time_input, time_scale, name,
                              options, precond, problem, ignored)


# -- helpers ----------------------------------------------------------------------------------

def _check_options(cls: str, c: dict[str, Any]) -> None:
    for key in ("use_beta_sigmas", "use_flow_sigmas", "invert_sigmas"):
        if c.get(key):
            raise ValueError(f"{cls}: {key}=True is not supported by pydiff's diffusers reader")
    if c.get("shift_terminal"):
        raise ValueError(f"{cls}: shift_terminal={c['shift_terminal']} is not supported")
    if "timestep_spacing" in c and c["timestep_spacing"] not in _SPACINGS:
        raise ValueError(f"{cls}: timestep_spacing={c['timestep_spacing']!r}; expected one of "
                         f"{_SPACINGS}")
    if c.get("interpolation_type", "linear") != "linear":
        raise ValueError(f"{cls}: interpolation_type={c['interpolation_type']!r} is not "
                         "supported (only 'linear')")


def _schedule(c: dict[str, Any]) -> DiscreteSchedule:
    n, kind = int(c["num_train_timesteps"]), c["beta_schedule"]
    if c.get("trained_betas") is not None:
        betas = torch.as_tensor(c["trained_betas"], dtype=F64)
    elif kind == "linear":
        betas = torch.linspace(c["beta_start"], c["beta_end"], n, dtype=F64)
    elif kind == "scaled_linear":
        betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n, dtype=F64) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = 1 - DiscreteSchedule.cosine(n).alphas_cumprod / torch.cat(
            [torch.ones(1, dtype=F64), DiscreteSchedule.cosine(n).alphas_cumprod[:-1]])
    elif kind == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=F64)) * (
            c["beta_end"] - c["beta_start"]) + c["beta_start"]
    else:
        raise ValueError(f"unsupported beta_schedule={kind!r}; expected linear, scaled_linear, "
                         "squaredcos_cap_v2, sigmoid or trained_betas")
    if c.get("rescale_betas_zero_snr"):
        betas = _zero_terminal_snr(betas)
    ac = torch.cumprod(1 - betas, 0)
    if c.get("rescale_betas_zero_snr"):
        # zero terminal SNR makes alpha_T = 0; like diffusers' Euler, keep it just above 0
        ac[-1] = 2.0**-24
    if c.get("trained_betas") is None and not c.get("rescale_betas_zero_snr"):
        if kind == "linear":
            return DiscreteSchedule.linear(c["beta_start"], c["beta_end"], n)
        if kind == "scaled_linear":
            return DiscreteSchedule.scaled_linear(c["beta_start"], c["beta_end"], n)
        if kind == "squaredcos_cap_v2":
            return DiscreteSchedule.cosine(n)
    return DiscreteSchedule(ac)


def _zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alphas_cumprod) to end at 0."""
    abar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * first / (first - last)
    abar = abar_sqrt**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def _schedule_config(schedule: Schedule, original: dict[str, Any]) -> dict[str, Any]:
    cfg = schedule.config()
    n = len(schedule.alphas_cumprod) if isinstance(schedule, DiscreteSchedule) else None
    kind = cfg.get("kind")
    out: dict[str, Any] = {"num_train_timesteps": n}
    if kind in ("linear", "scaled_linear"):
        out.update(beta_schedule=kind, beta_start=cfg["beta_start"], beta_end=cfg["beta_end"])
    elif kind == "cosine":
        out.update(beta_schedule="squaredcos_cap_v2")
    else:  # a custom table: betas (or the original recipe, e.g. sigmoid / zero terminal SNR)
        for key in ("beta_schedule", "beta_start", "beta_end", "trained_betas",
                    "rescale_betas_zero_snr"):
            out[key] = original.get(key)
    return out


def _ve_sigmas(sched: DiscreteSchedule) -> Tensor:
    ac = sched.alphas_cumprod
    return ((1 - ac) / ac).sqrt()


def _interp(ts: Tensor, table: Tensor) -> Tensor:
    # np.interp(ts, arange(N), table): linear in sigma between table entries
    lo = ts.floor().clamp(0, table.numel() - 1).long()
    hi = (lo + 1).clamp(max=table.numel() - 1)
    w = ts - lo.to(F64)
    return table[lo] * (1 - w) + table[hi] * w


def _spaced(spacing: str, n: int, steps: int, offset: int, last: int, plus_one: bool) -> Tensor:
    k = steps + 1 if plus_one else steps
    if spacing == "linspace":
        ts = torch.linspace(0, last - 1, k, dtype=F64).round().flip(0)
    elif spacing == "leading":
        ratio = (last if plus_one else n) // k
        ts = (torch.arange(k, dtype=F64) * ratio).round().flip(0) + offset
    else:  # trailing
        ts = (torch.arange(last if plus_one else n, 0, -n / steps, dtype=F64)).round() - 1
        return ts
    return ts[:-1] if plus_one else ts


def _int_timesteps(c: dict[str, Any], steps: int, plus_one: bool, last: int) -> Tensor:
    n = c["num_train_timesteps"]
    if steps > n:
        raise ValueError(f"steps={steps} exceeds num_train_timesteps={n}")
    return _spaced(c.get("timestep_spacing", "linspace"), n, steps, c.get("steps_offset", 0),
                   last, plus_one)


def _float_timesteps(c: dict[str, Any], steps: int) -> Tensor:
    n, spacing = c["num_train_timesteps"], c["timestep_spacing"]
    if spacing == "linspace":  # not rounded for sigma-based schedulers
        return torch.linspace(0, n - 1, steps, dtype=torch.float32).flip(0).to(F64)
    return _spaced(spacing, n, steps, c["steps_offset"], n, False)


def _conversion(c: dict[str, Any]) -> str | None:
    if c.get("use_karras_sigmas"):
        return "karras"
    if c.get("use_exponential_sigmas") or c.get("use_lu_lambdas"):
        return "exponential"  # uniform in log sigma = uniform in log-SNR
    return None


def _convert(kind: str, sigma_min: float, sigma_max: float, steps: int,
             rho: float = 7.0) -> Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=F64)
    if kind == "karras":
        return karras_sigmas(sigma_max, sigma_min, ramp, rho)
    return torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))


def _append_final(times: Tensor, final: str, n: int) -> Tensor:
    if final == "zero":
        end = 0.0
    elif final == "sigma_min":
        end = 1.0 / n  # the first table entry
    else:
        raise ValueError(f"final_sigmas_type={final!r}; expected 'zero' or 'sigma_min'")
    return torch.cat([times.to(F64), torch.tensor([end], dtype=F64)])


def _flow_sigmas(c: dict[str, Any], steps: int, mu: float | None) -> Tensor:
    n = c["num_train_timesteps"]
    dynamic = c.get("use_dynamic_shifting", False)
    if dynamic and mu is None:
        raise ValueError("this flow config uses dynamic shifting: pass grid(steps, mu=...) "
                         "(the resolution-dependent shift)")

    # dynamic shifting (Flux) is the same shift with exp(mu) (or mu, "linear") for the factor
    if not dynamic:
        k = c["shift"]
    elif c.get("time_shift_type", "exponential") == "exponential":
        k = math.exp(mu)
    else:
        k = mu
    # set_timesteps spaces between the (already shifted, unless dynamic) training extremes
    train = torch.arange(n, 0, -1, dtype=F64) / n
    train = train if dynamic else flow_shift(train, k)
    sig = torch.linspace(float(train[0]) * n, float(train[-1]) * n, steps, dtype=F64) / n
    sig = flow_shift(sig, k)
    conv = _conversion(c)
    if conv is not None:
        sig = _convert(conv, float(sig[-1]), float(sig[0]), steps)
    return torch.cat([sig, torch.zeros(1, dtype=F64)])


def _solver_for(cls: str, c: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    if cls == "DDPMScheduler":
        if c["variance_type"] not in ("fixed_small", "fixed_small_log", None):
            return "ddpm", {}, (f"variance_type={c['variance_type']!r} has no pydiff solver "
                                "(pydiff's 'ddpm' samples with fixed_small)")
        return "ddpm", {}, None
    if cls == "DDIMScheduler":
        return "ddim", {"eta": 0.0}, None
    if cls == "PNDMScheduler":
        return "plms", ({} if c["skip_prk_steps"] else {"warmup": "prk"}), None
    if cls in _FLOW:
        if c.get("stochastic_sampling"):
            return "flow_euler", {}, "stochastic_sampling=True has no pydiff solver"
        return ("flow_euler" if cls == "FlowMatchEulerDiscreteScheduler" else "heun"), {}, None
    if cls in ("EulerDiscreteScheduler", "EDMEulerScheduler"):
        return "euler", {}, None
    if cls == "HeunDiscreteScheduler":
        return "heun", {}, None
    simple = {"EulerAncestralDiscreteScheduler": "euler_ancestral", "LMSDiscreteScheduler": "lms",
              "KDPM2DiscreteScheduler": "dpm2", "KDPM2AncestralDiscreteScheduler": "dpm2_ancestral"}
    if cls in simple:
        return simple[cls], {}, None
    order = int(c["solver_order"])
    if cls == "UniPCMultistepScheduler":
        return "unipc", {"order": order, "variant": c["solver_type"],
                         "predict_x0": bool(c["predict_x0"]),
                         "disable_corrector": tuple(c.get("disable_corrector") or ()),
                         "lower_order_final": bool(c["lower_order_final"])}, None
    if cls == "DEISMultistepScheduler":
        return "deis", {"order": order}, None
    algo = c["algorithm_type"]
    if algo not in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"):
        return algo, {}, f"algorithm_type={algo!r} has no pydiff solver"
    base = algo.removeprefix("sde-")
    if cls == "DPMSolverSinglestepScheduler":
        if algo != base:
            return "dpm_solver", {}, f"algorithm_type={algo!r} (singlestep SDE) is not in pydiff"
        return "dpm_solver", {"order": order, "algorithm": base}, None
    options: dict[str, Any] = {"lower_order_final": bool(c["lower_order_final"]),
                               "solver_type": c.get("solver_type", "midpoint")}
    if algo == "dpmsolver++" and order == 2:
        return "dpmpp_2m", options, None  # diffusers' default, DPM-Solver++(2M)
    if algo == "sde-dpmsolver++" and order == 2:
        return "dpmpp_2m_sde", options, None
    return "dpm_multistep", {**options, "order": order, "algorithm": base,
                             "eta": 1.0 if algo != base else 0.0}, None


__all__ = ["DiffusersScheduler", "from_diffusers_config", "SUPPORTED", "DEFAULTS"]
