"""``Reconstructor``: CT and MRI reconstruction with a diffusion prior, or a classical baseline.

Every diffusion method is the core's sampler (:func:`pydiff.sample`) with the core's guidance;
this module only builds the measurement model in the prior's units:

- ``"dps"``: :class:`pydiff.guidance.MeasurementGuidance` (the residual's gradient through
  x0-hat, DPS step rule); the guided x0-hat also goes through the noise-weighted
  proximal step, as DDS;
- ``"projection"``: data consistency after every step, :class:`pydiff.guidance.DataConsistency`
  (the state projected onto ``A x = alpha y + sigma A z`` by conjugate gradients: score-MRI's
  k-space projection, and its CT analogue), as the noise-weighted proximal step (as DDS for MRI);
- ``"dds"``: DDS: a few conjugate-gradient steps on x0-hat (:class:`pydiff.guidance.ProjectX0`
  around ``DataConsistency.project``, no backpropagation through the network), DDIM; for MRI
  the step is proximal, with a weight on x0-hat that grows as the noise level falls;
- ``"red_diff"``: RED-diff, :func:`pydiff.guidance.red_diff` (variational: Adam on the image
  with the denoiser's noise residual as the regulariser's gradient, no backpropagation through
  the network), started from a short TV reconstruction;
- ``"mbir_tv"`` (:meth:`Reconstructor.reconstruct_volume`): a 3D volume from the 2D slice prior
  (DiffusionMBIR): every slice is denoised by the prior in one batch and x0-hat of the whole
  volume goes through ADMM for ``1/2 ||A x - y||^2 + weight ||D_z x||_1`` (TV along z,
  :func:`pydiff.domains.medical.classical.admm_tv_z`), inside DDIM as DDS does;
- baselines: ``"fbp"`` and ``"tv"`` (CT), ``"zero_filled"``, ``"cg_sense"`` and ``"tv"`` (MRI),
  from :mod:`pydiff.domains.medical.classical`.

Units: the prior works in ``[-1, 1]``. The image's value range ``(lo, hi)`` is given or estimated
from the measurement (CT: the 0.5% and 99.5% quantiles of a short TV reconstruction; MRI:
``lo = 0`` for magnitudes and the maximum of a short CS-TV reconstruction); since ``A`` is
linear, ``x = c0 + c1 u`` turns ``y`` into the measurement of ``u``: ``(y - c0 A 1) / c1``.
Outputs are in the input's units. MRI images are real-valued (magnitude images, simulated
data); complex k-space becomes real pairs for the guidance, and is first projected onto the
k-space of real images (``A A^+ y``): noise has no conjugate symmetry, and the data-consistency
CG cannot remove the part of ``y`` that no real image explains.

Example:
    >>> import torch
    >>> from pydiff.domains.medical import CTProjector, Reconstructor, shepp_logan
    >>> x = shepp_logan(32)[None, None]
    >>> ct = CTProjector(angles=8, size=32)
    >>> rec = Reconstructor.from_pretrained("ct")
    >>> out = rec.reconstruct(ct.A(x), operator=ct, method="dds", steps=4, n_samples=2)
    >>> out.image.shape, out.std.shape
    (torch.Size([1, 1, 32, 32]), torch.Size([1, 1, 32, 32]))
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import pydiff
from pydiff.errors import InputError
from pydiff.guidance import ClipX0, DataConsistency, MeasurementGuidance, ProjectX0, red_diff

from .classical import (
    admm_tv_z,
    cg_sense,
    conjugate_gradient,
    operator_norm,
    tv_reconstruct,
    zero_filled,
)
from .operators import CTProjector, MRIOperator

Tensor = torch.Tensor

PRETRAINED = Path(__file__).parent / "pretrained"
# One prior serves both modalities: both are trained on the same procedural images (see
# docs/medical.md); the names stay separate so a modality-specific prior can replace either.
SHIPPED = {"ct": "anatomy", "mri": "anatomy"}
DIFFUSION_METHODS = ("dps", "projection", "dds", "red_diff")
VOLUME_METHODS = ("mbir_tv",)
BASELINES = {"ct": ("fbp", "tv"), "mri": ("zero_filled", "cg_sense", "tv")}
DEFAULT_STEPS = {"dps": 50, "projection": 30, "dds": 20, "red_diff": 50, "mbir_tv": 20}
# DPS's zeta per modality: the residual's scale differs (k-space of 8 coils vs a sinogram);
# MRI's was chosen on a held-out procedural image (BENCHMARKS.md, issue 16)
DPS_SCALE = {"ct": 1.0, "mri": 100.0}
# the bound on x0-hat in the prior's units (chosen on held-out procedural images: 2 for CT,
# where 8-view TV blurs thin bright structures out of the estimated range; 1 for MRI)
CLIP = {"ct": 2.0, "mri": 1.0}
# DDS's CG steps on x0-hat per modality (held-out procedural images); MRI's proximal step
# (DDS_DAMPING) keeps more steps from fitting the measurement noise
DDS_CG = {"ct": 5, "mri": 10}
# DDS's DDIM eta per modality (held-out procedural images)
DDS_ETA = {"ct": 0.85, "mri": 1.0}
# DDS's data consistency as the proximal step argmin ||A x - y||^2 + lam ||x - x0-hat||^2 with
# lam = damping * ||A||^2 / sigma_t^2 (0: the minimum-norm correction); MRI's value and CG
# steps were chosen on held-out procedural images (BENCHMARKS.md, issue 16); on CT it made no
# difference there
DDS_DAMPING = {"ct": 0.0, "mri": 3e-4}
# the same noise-weighted proximal step for projection's post-step hook (the state's distance
# to the noised measurement, lam = damping ||A||^2 / (sigma_t / alpha_t)^2); both values were
# chosen on held-out procedural images (BENCHMARKS.md, issue 16)
PROJECTION_DAMPING = {"ct": 1e-4, "mri": 3e-4}
# DPS's x0-hat through the same noise-weighted proximal step after the guidance (chosen on
# held-out procedural images, BENCHMARKS.md, issue 16)
DPS_DAMPING = {"ct": 1e-4, "mri": 3e-4}


@dataclass
class Reconstruction:
    """A reconstruction: ``image`` (the mean over samples) and ``std`` (per pixel, zeros for
    one sample or a deterministic method), both ``[B, 1, H, W]`` in the input's units."""

    image: Tensor
    std: Tensor
    method: str
    nfe: int = 0
    seconds: float = 0.0
    samples: Tensor | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)


class _RealOperator:
    """``A`` in the prior's units, with complex measurements as real pairs (``[..., 2]``)."""

    def __init__(self, operator, c1: float):
        self.operator, self.c1 = operator, c1

    def __call__(self, u: Tensor) -> Tensor:
        y = self.operator.A(u)
        return torch.view_as_real(y) if y.is_complex() else y


def _modality(operator) -> str:
    if isinstance(operator, CTProjector):
        return "ct"
    if isinstance(operator, MRIOperator):
        return "mri"
    raise InputError(f"operator must be a CTProjector or an MRIOperator, got "
                     f"{type(operator).__name__}")


class Reconstructor:
    """Reconstruct CT/MRI measurements with a diffusion prior (see the module docstring).

    Args:
        model: the prior, a :class:`pydiff.Denoiser` on ``[-1, 1]`` images ``[B, 1, H, W]``.
        modality: ``"ct"`` or ``"mri"`` (the default method parameters).
    """

    def __init__(self, model: pydiff.Denoiser, modality: str = "ct"):
        if modality not in BASELINES:
            raise InputError(f"modality={modality!r}; expected 'ct' or 'mri'")
        self.model, self.modality = model, modality

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike = "ct") -> Reconstructor:
        """The shipped prior for ``"ct"`` or ``"mri"``, or a ``save_pretrained`` folder."""
        if str(name) in SHIPPED:
            path, modality = PRETRAINED / SHIPPED[str(name)], str(name)
        else:
            path = Path(name)
            modality = pydiff.training.load_config(path)["metadata"].get("modality", "ct")
        model = pydiff.from_pretrained(path)
        return cls(model, modality)

    # -- the public call -------------------------------------------------------------------------
    def reconstruct(self, y: Tensor, operator, method: str = "dds", steps: int | None = None,
                    n_samples: int = 1, *, value_range: tuple[float, float] | None = None,
                    generator: torch.Generator | None = None, seed: int = 0,
                    **options: Any) -> Reconstruction:
        """Reconstruct measurement ``y`` (batch 1) taken with ``operator``.

        Args:
            y: sinogram ``[1, C, views, detectors]`` or k-space ``[1, coils, H, W]``.
            operator: the :class:`CTProjector` / :class:`MRIOperator` that took ``y``.
            method: ``"dps"``, ``"projection"``, ``"dds"``, ``"red_diff"``, or a baseline
                (``"fbp"``, ``"tv"``, ``"zero_filled"``, ``"cg_sense"``).
            steps: solver steps (NFE for these single-stage solvers); default per method.
            n_samples: posterior samples; >1 gives ``std``.
            value_range: the image's ``(lo, hi)`` in its units (default: estimated).
            generator / seed: the random stream (default: seeded by ``seed``).
            options: ``scale`` (DPS zeta; default 1 for CT, 100 for MRI), ``clip`` (bound on
                x0-hat in the prior's units; 2 for CT, 1 for MRI), ``cg`` (CG iterations of
                projection/DDS; DDS: 5 for CT, 10 for MRI), ``eta`` (DDIM eta; DDS: 0.85 for
                CT, 1 for MRI), ``damping`` (DDS, projection and DPS: the data consistency
                becomes the noise-weighted proximal step ``argmin ||A x - y||^2 + lam ||x -
                x_hat||^2`` on x0-hat (DDS; DPS after its guidance) or the state (projection),
                ``lam = damping ||A||^2 /
                (sigma_t / alpha_t)^2``; DDS: 0 for CT, 3e-4 for MRI; DPS and projection: 1e-4
                for CT, 3e-4 for MRI),
                ``warm_start`` (``"tv"``: projection/DDS start from the TV reconstruction
                noised to ``t_start``, sigma in the prior's units, default 0.5),
                ``weight`` (TV weight relative to the value range),
                ``iterations`` (TV/CG-SENSE iterations), ``lr`` and ``lam`` (RED-diff's Adam
                rate and regulariser weight), ``tv_refine`` (``> 0``: the mean image is refined
                by TV anchored at it, :func:`pydiff.guidance.tv_pdhg` with ``anchor_weight =
                tv_refine`` and the TV baseline's ``weight``, ``refine_iterations`` PDHG steps,
                default 200; ``extra["unrefined"]`` keeps the mean).
        """
        modality = _modality(operator)
        if not torch.is_tensor(y) or y.dim() != 4 or y.shape[0] != 1:
            raise InputError(f"y must be one measurement [1, ...] (4 dims), got "
                             f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}")
        if not bool(torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all()):
            raise InputError("y contains NaN or inf values")
        methods = DIFFUSION_METHODS + BASELINES[modality]
        if method not in methods:
            raise InputError(f"method={method!r} is not one for {modality}; expected one of "
                             f"{methods}")
        if not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive int, got {n_samples!r}")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise InputError(f"steps must be a positive int, got {steps!r}")
        start = time.perf_counter()
        if modality == "mri":  # unsampled entries carry no data (noise models may fill them)
            y = y * operator.mask.to(y.device)
        baseline = operator.fbp(y) if modality == "ct" else zero_filled(operator, y)
        if method in ("fbp", "zero_filled", "cg_sense"):  # no range needed
            lo, hi = (0.0, 1.0) if value_range is None else value_range
        else:
            lo, hi = value_range if value_range is not None else self._estimate_range(
                y, operator, baseline, modality)
        if not hi > lo:
            raise InputError(f"value_range must have hi > lo, got {(lo, hi)}")
        if method in BASELINES[modality]:
            image = self._baseline(y, operator, method, baseline, hi - lo, **options)
            return Reconstruction(image, torch.zeros_like(image), method,
                                  seconds=time.perf_counter() - start, value_range=(lo, hi))
        steps = steps or DEFAULT_STEPS[method]
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        u = self._sample(y, operator, method, steps, n_samples, lo, hi, g, **options)
        c1 = (hi - lo) / 2
        samples = lo + c1 * (u + 1)
        image = samples.mean(0, keepdim=True)
        std = samples.std(0, unbiased=False, keepdim=True)
        extra: dict[str, Any] = {}
        anchor_weight = float(options.get("tv_refine", 0.0))
        if anchor_weight > 0:
            # the TV-regularised refinement of the diffusion reconstruction (the mean of the
            # samples): min 1/2 ||A x - y||^2 / ||A||^2 + weight TV(x) + tv_refine / 2
            # ||x - image||^2; the prior's and TV's errors differ, so the mix beats either
            extra["unrefined"] = image
            weight = options.get("weight", 0.01 if modality == "ct" else 0.003)
            image = tv_reconstruct(operator, y, weight=weight * (hi - lo), anchor=image,
                                   anchor_weight=anchor_weight,
                                   iterations=options.get("refine_iterations", 200))
        return Reconstruction(image, std, method, nfe=steps, samples=samples,
                              seconds=time.perf_counter() - start, value_range=(lo, hi),
                              extra=extra)

    # -- pieces ----------------------------------------------------------------------------------
    @staticmethod
    def _estimate_range(y, operator, baseline: Tensor, modality: str) -> tuple[float, float]:
        # the analytic baselines' streaks and aliasing widen (FBP) or shrink (zero-filled) the
        # range; a short regularised reconstruction estimates it better
        def quantiles(image: Tensor) -> tuple[float, float]:
            flat = image.detach().flatten().float()
            return float(torch.quantile(flat, 0.005)), float(torch.quantile(flat, 0.995))

        if modality == "mri":
            # CG-SENSE's aliasing and noise move its quantiles either way (-36% to +2% of the
            # span on held-out procedural images); the maximum of a short CS-TV reconstruction
            # is within -9% to +6% (BENCHMARKS.md, issue 16)
            scale = quantiles(cg_sense(operator, y, iterations=30).abs())[1]
            tv = tv_reconstruct(operator, y, weight=0.003 * scale, iterations=100)
            return 0.0, max(float(tv.detach().abs().max()), 1e-6)
        lo, hi = quantiles(baseline)
        lo, hi = quantiles(tv_reconstruct(operator, y, weight=0.01 * (hi - lo), iterations=100))
        return lo, max(hi, lo + 1e-6)

    @staticmethod
    def _baseline(y, operator, method, baseline, span, **options) -> Tensor:
        if method in ("fbp", "zero_filled"):
            return baseline
        if method == "cg_sense":
            return cg_sense(operator, y, iterations=options.get("iterations", 10)).abs()
        weight = options.get("weight", 0.01 if isinstance(operator, CTProjector) else 0.003)
        return tv_reconstruct(operator, y, weight=weight * span,
                              iterations=options.get("iterations", 300))

    def _sample(self, y, operator, method, steps, n, lo, hi, g, **options) -> Tensor:
        c1 = (hi - lo) / 2
        c0 = lo + c1
        like = operator.fbp(y) if isinstance(operator, CTProjector) else \
            operator.A_adjoint(y).real
        shape = (n, 1, *like.shape[-2:])
        a = _RealOperator(operator, c1)
        y_real = torch.view_as_real(y) if y.is_complex() else y
        offset = a(torch.full((1, 1, *like.shape[-2:]), c0, dtype=like.dtype))
        y_u = (y_real - offset) / c1
        if isinstance(operator, MRIOperator):
            y_u = self._range_of_real_images(a, self._real_adjoint(operator), y_u, like)
        y_u = y_u.expand(n, *y_real.shape[1:])
        # x0-hat may pass the estimated range: the estimate (quantiles of a short TV
        # reconstruction) misses thin bright structures that few views blur, and a bound of 1
        # clipped them
        model = ClipX0(self.model, bound=float(options.get("clip", CLIP[_modality(operator)])))
        x_T = pydiff.prior(model.schedule, shape, generator=g)
        cg = options.get("cg", DDS_CG[_modality(operator)] if method == "dds" else 10)
        if method == "red_diff":
            weight = options.get("weight", 0.01 if isinstance(operator, CTProjector) else 0.003)
            start = tv_reconstruct(operator, y, weight=weight * (hi - lo),
                                   iterations=options.get("iterations", 50))
            x_init = ((start - c0) / c1).clamp(-1, 1).expand(shape).to(like.dtype)
            # the data term in image units (||A|| = 1), so lam means the same for CT and MRI
            norm = operator_norm(a, self._real_adjoint(operator), like)
            return red_diff(model, lambda v: a(v) / norm, y_u / norm, x_init, steps,
                            lr=options.get("lr", 0.05), weight=options.get("lam", 0.25),
                            t_start=options.get("t_start"), generator=g)
        t_start = None
        if options.get("warm_start") == "tv" and method in ("dds", "projection"):
            # SDEdit-style: the TV reconstruction noised to sigma = t_start, then the method
            # from there (fewer, lower-noise steps; the prior corrects TV's staircase)
            weight = options.get("weight", 0.01 if isinstance(operator, CTProjector) else 0.003)
            start = tv_reconstruct(operator, y, weight=weight * (hi - lo),
                                   iterations=options.get("iterations", 300))
            x_init = ((start - c0) / c1).clamp(-1, 1).expand(shape).to(like.dtype)
            t_start = float(options.get("t_start", 0.5))
            x_T = pydiff.add_noise(model.schedule, x_init, t_start, generator=g)
        elif options.get("warm_start") not in (None, "noise"):
            raise InputError(f"warm_start={options.get('warm_start')!r}: expected 'noise' or "
                             "'tv' (dds and projection)")
        with torch.no_grad():
            adjoint = self._real_adjoint(operator)  # exact, cheaper than autograd's VJP
            defaults = {"dds": DDS_DAMPING, "projection": PROJECTION_DAMPING,
                        "dps": DPS_DAMPING}[method]
            damping = float(options.get("damping", defaults[_modality(operator)]))
            if method == "dps":
                guided = MeasurementGuidance(model, a, y_u, step="dps",
                                             scale=options.get("scale",
                                                               DPS_SCALE[_modality(operator)]))
                if damping > 0:  # DPS's x0-hat through the noise-weighted proximal step too
                    dc = DataConsistency(a, y_u, adjoint=adjoint, iterations=cg, noise="none",
                                         damping=damping * operator_norm(a, adjoint, like) ** 2,
                                         level_weighted=True)
                    schedule = model.schedule
                    guided = ProjectX0(guided, lambda x0, t: dc.project(
                        x0, level=schedule.sigma(t) / schedule.alpha(t)))
                return pydiff.sample(guided, x_T, "ddim", steps=steps, generator=g,
                                     eta=options.get("eta", 1.0))
            # the noise-weighted proximal step argmin ||A x - y||^2 + lam ||x - x_hat||^2 with
            # lam = damping ||A||^2 / (sigma_t / alpha_t)^2: the estimate's error shrinks with
            # the noise level while the measurement's noise does not, so late steps trust the
            # estimate more and the DC stops writing the measurement noise into the image
            scaled = damping * operator_norm(a, adjoint, like) ** 2 if damping > 0 else 0.0
            if method == "projection":
                hook = DataConsistency(a, y_u, adjoint=adjoint, iterations=cg, noise="fresh",
                                       damping=scaled, level_weighted=True)
                return pydiff.sample(model, x_T, "ddim", steps=steps, generator=g,
                                     hooks=[hook], eta=options.get("eta", 1.0),
                                     t_start=t_start)
            dc = DataConsistency(a, y_u, adjoint=adjoint, iterations=cg, noise="none",
                                 damping=scaled, level_weighted=True)
            schedule = model.schedule

            def proximal(x0: Tensor, t: Tensor) -> Tensor:
                return dc.project(x0, level=schedule.sigma(t) / schedule.alpha(t))

            return pydiff.sample(ProjectX0(model, proximal), x_T, "ddim", steps=steps,
                                 generator=g,
                                 eta=options.get("eta", DDS_ETA[_modality(operator)]),
                                 t_start=t_start)

    def reconstruct_volume(self, y: Tensor | list[Tensor], operator, steps: int | None = None,
                           n_samples: int = 1, *, value_range: tuple[float, float] | None = None,
                           generator: torch.Generator | None = None, seed: int = 0,
                           **options: Any) -> Reconstruction:
        """``mbir_tv``: a volume from the 2D slice prior with TV along z (DiffusionMBIR).

        Every slice is measured by the same ``operator``; DDIM runs on all slices at once and
        x0-hat of the volume goes through :func:`~pydiff.domains.medical.classical.admm_tv_z`
        after each network call (no backpropagation through the network).

        Args:
            y: the slices' measurements, ``[D, C, ...]`` or a list of ``[1, C, ...]``.
            operator: the :class:`CTProjector` / :class:`MRIOperator` of one slice.
            steps, n_samples, value_range, generator, seed: as :meth:`reconstruct`.
            options: ``weight`` (the z-TV weight in the prior's [-1, 1] units, default 0.05),
                ``rho`` (ADMM penalty, 1), ``admm`` (ADMM rounds per step, 1), ``cg`` (CG steps
                per round, 5), ``eta`` (DDIM eta, 0.85).

        Returns:
            a :class:`Reconstruction` whose ``image`` and ``std`` are ``[1, D, H, W]``.

        Example:
            >>> import torch
            >>> from pydiff.domains.medical import CTProjector, shepp_logan
            >>> ct = CTProjector(angles=8, size=32)
            >>> vol = shepp_logan(32)[None, None].repeat(3, 1, 1, 1)    # 3 slices
            >>> rec = Reconstructor.from_pretrained("ct")
            >>> rec.reconstruct_volume(ct.A(vol), ct, steps=3).image.shape
            torch.Size([1, 3, 32, 32])
        """
        modality = _modality(operator)
        if isinstance(y, (list, tuple)):
            y = torch.cat(list(y))
        if not torch.is_tensor(y) or y.dim() != 4:
            raise InputError("y must be the slices' measurements [D, C, ...] (4 dims)")
        if not bool(torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all()):
            raise InputError("y contains NaN or inf values")
        if not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive int, got {n_samples!r}")
        steps = steps or DEFAULT_STEPS["mbir_tv"]
        if not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps must be a positive int, got {steps!r}")
        start = time.perf_counter()
        if modality == "mri":
            y = y * operator.mask.to(y.device)
        depth = y.shape[0]
        if value_range is None:  # one estimate over all slices (a batch)
            baseline = operator.fbp(y) if modality == "ct" else zero_filled(operator, y)
            value_range = self._estimate_range(y, operator, baseline, modality)
        lo, hi = value_range
        if not hi > lo:
            raise InputError(f"value_range must have hi > lo, got {(lo, hi)}")
        c1 = (hi - lo) / 2
        c0 = lo + c1
        like = operator.A_adjoint(y[:1]).real
        H, W = like.shape[-2:]
        a = _RealOperator(operator, c1)
        y_real = torch.view_as_real(y) if y.is_complex() else y
        offset = a(torch.full((1, 1, H, W), c0, dtype=like.dtype))
        norm = operator_norm(a, self._real_adjoint(operator), like)
        y_u = ((y_real - offset) / c1 / norm).repeat(n_samples, *([1] * (y_real.dim() - 1)))

        def project(x0: Tensor, t: Tensor) -> Tensor:  # x0 [n * D, 1, H, W]
            vol = admm_tv_z(lambda v: a(v) / norm,
                            lambda r: self._real_adjoint(operator)(r) / norm, y_u,
                            x0.reshape(n_samples, depth, H, W),
                            options.get("weight", 0.05), rho=options.get("rho", 1.0),
                            iterations=options.get("admm", 1), cg=options.get("cg", 5))
            return vol.reshape(x0.shape)

        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        model = ProjectX0(ClipX0(self.model, bound=float(options.get("clip", 1.0))), project)
        x_T = pydiff.prior(model.schedule, (n_samples * depth, 1, H, W), generator=g)
        with torch.no_grad():
            u = pydiff.sample(model, x_T, "ddim", steps=steps, generator=g,
                              eta=options.get("eta", 0.85))
        samples = (lo + c1 * (u + 1)).reshape(n_samples, depth, H, W)
        return Reconstruction(samples.mean(0, keepdim=True),
                              samples.std(0, unbiased=False, keepdim=True), "mbir_tv",
                              nfe=steps, samples=samples, seconds=time.perf_counter() - start,
                              value_range=(lo, hi))

    @staticmethod
    def _range_of_real_images(forward, adjoint, y: Tensor, like: Tensor) -> Tensor:
        """``y`` projected onto the measurements of real images (``A A^+ y``).

        A real image's k-space has a conjugate symmetry that noise lacks; the part of ``y``
        outside ``A``'s range lies in the null space of ``A A^T``, where the data-consistency
        CG (on ``A A^T u = r``) cannot reduce it and its steps grow instead."""
        x = conjugate_gradient(lambda v: adjoint(forward(v)), adjoint(y),
                               x0=torch.zeros_like(like), iterations=30)
        return forward(x)

    @staticmethod
    def _real_adjoint(operator):
        """``A^T`` of :class:`_RealOperator` (real pairs back to complex for MRI)."""
        def adjoint(r: Tensor) -> Tensor:
            if isinstance(operator, MRIOperator):
                return operator.A_adjoint(torch.view_as_complex(r.contiguous())).real
            return operator.A_adjoint(r)
        return adjoint

    def __repr__(self) -> str:
        return f"Reconstructor(modality={self.modality!r})"


__all__ = ["Reconstructor", "Reconstruction", "DIFFUSION_METHODS", "VOLUME_METHODS", "BASELINES"]
