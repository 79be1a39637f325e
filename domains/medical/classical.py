"""Classical reconstructions: the baselines every diffusion method is compared with.

- :func:`tv_reconstruct`: total-variation regularised least squares,
  ``min_x 1/2 ||A x - y||^2 / ||A||^2 + weight * TV(x)`` (isotropic TV), solved by the
  primal-dual hybrid gradient method (Chambolle and Pock 2011). For CT this is the standard
  TV-PDHG baseline; for MRI it is compressed-sensing TV. The data term is divided by
  ``||A||^2`` (estimated by power iteration) so that ``weight`` means the same for 8 views or
  720, for one coil or eight: it is in the image's intensity units. The solver is the core's
  :func:`pydiff.guidance.tv.tv_pdhg`, which also takes an anchor image (the TV refinement of a
  diffusion reconstruction).
- :func:`cg_sense`: CG-SENSE, conjugate gradients on ``(A^H A + damping I) x = A^H y`` (complex
  image; the magnitude is the usual baseline). :func:`conjugate_gradient` is the solver.
- :func:`estimate_sensitivities`: coil maps of measured multi-coil k-space from its fully sampled
  centre (a ratio estimate: windowed low-resolution coil images over their root sum of squares).
- :func:`zero_filled` (MRI) and FBP (``CTProjector.fbp``) are the analytic baselines.

Operators are the objects of :mod:`pydiff.domains.medical.operators` (anything with ``A`` and
``A_adjoint``). Images are ``[B, C, H, W]``.

Example:
    >>> import torch
    >>> from pydiff.domains.medical import CTProjector, shepp_logan
    >>> from pydiff.domains.medical.classical import tv_reconstruct
    >>> x = shepp_logan(64)[None, None]
    >>> ct = CTProjector(angles=16, size=64)
    >>> y = ct.A(x)
    >>> err = lambda r: float((r - x).pow(2).mean().sqrt())
    >>> err(tv_reconstruct(ct, y, weight=0.002, iterations=150)) < err(ct.fbp(y))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pydiff.errors import InputError
from pydiff.guidance.tv import divergence2d, gradient2d, operator_norm, tv_pdhg

Tensor = torch.Tensor
Linear = Callable[[Tensor], Tensor]

__all__ = ["tv_reconstruct", "cg_sense", "conjugate_gradient", "estimate_sensitivities",
           "zero_filled", "operator_norm", "gradient2d", "divergence2d"]


def _real_adjoint(operator) -> Linear:
    def adjoint(y: Tensor) -> Tensor:
        out = operator.A_adjoint(y)
        return out.real if out.is_complex() else out
    return adjoint


def _vdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample real inner product ``Re <a, b>`` shaped ``[B, 1, ..., 1]``."""
    prod = (a.conj() * b).real if a.is_complex() else a * b
    return prod.reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


def tv_reconstruct(operator, y: Tensor, weight: float, *, iterations: int = 300,
                   x_init: Tensor | None = None, complex_image: bool = False,
                   nonnegative: bool = False, op_norm: float | None = None,
                   anchor: Tensor | None = None, anchor_weight: float = 0.0) -> Tensor:
    """TV-regularised reconstruction by PDHG (CT: TV-PDHG; MRI: compressed-sensing TV).

    Solves ``min_x 1/2 ||A x - y||^2 / ||A||^2 + weight * sum |grad x|`` for images
    ``[B, C, H, W]``.

    Args:
        operator: an object with ``A`` and ``A_adjoint`` (a ``CTProjector``, an
            ``MRIOperator``).
        y: the measurement.
        weight: TV weight in image intensity units (larger: smoother).
        iterations: PDHG iterations (each one ``A`` and one ``A_adjoint``).
        x_init: start (default zeros).
        complex_image: reconstruct a complex image (measured MRI data with phase); by default
            the image is real (``Re A^H``).
        nonnegative: clamp the image at 0 after each step (densities, magnitudes).
        op_norm: ``||A||`` if known (default: 30 power iterations).
        anchor / anchor_weight: adds ``anchor_weight / 2 ||x - anchor||^2`` (and starts from
            the anchor): the TV refinement of another reconstruction, e.g. a diffusion one.

    Example: ``tv_reconstruct(CTProjector(angles=8, size=256), sinogram, weight=0.01)``.
    """
    adjoint = operator.A_adjoint if complex_image else _real_adjoint(operator)
    return tv_pdhg(operator.A, adjoint, y, weight, iterations=iterations, x_init=x_init,
                   nonnegative=nonnegative, op_norm=op_norm, anchor=anchor,
                   anchor_weight=anchor_weight)


def conjugate_gradient(apply: Linear, b: Tensor, x0: Tensor | None = None,
                       iterations: int = 30, tol: float = 1e-6) -> Tensor:
    """Conjugate gradients for ``apply(x) = b`` (``apply`` Hermitian positive semidefinite),
    batched per sample (real or complex)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _vdot(r, r)
    stop = tol**2 * _vdot(b, b)
    tiny = torch.finfo(rr.dtype).tiny
    for _ in range(iterations):
        if bool((rr <= stop).all()):
            break
        ap = apply(p)
        step = rr / _vdot(p, ap).clamp_min(tiny)
        x = x + step * p
        r = r - step * ap
        rr_new = _vdot(r, r)
        p = r + (rr_new / rr.clamp_min(tiny)) * p
        rr = rr_new
    return x


def cg_sense(operator, y: Tensor, *, iterations: int = 30, damping: float = 0.0) -> Tensor:
    """CG-SENSE: ``(A^H A + damping I) x = A^H y`` by conjugate gradients, a complex image.

    ``damping`` (Tikhonov) keeps the solve stable at high acceleration; the usual baseline is the
    magnitude ``cg_sense(...).abs()`` with a few tens of iterations (early stopping regularises).

    Example: ``cg_sense(MRIOperator(mask, sensitivities=8), kspace).abs()``.
    """
    if iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    if damping < 0:
        raise InputError(f"damping must be >= 0, got {damping}")
    rhs = operator.A_adjoint(y)
    return conjugate_gradient(lambda v: operator.A_adjoint(operator.A(v)) + damping * v, rhs,
                              iterations=iterations)


def zero_filled(operator, y: Tensor) -> Tensor:
    """Zero-filled MRI baseline ``|A^H y|`` (coil-combined with the operator's maps)."""
    return operator.A_adjoint(y).abs()


def _calibration_lines(mask: Tensor) -> tuple[int, int]:
    """The contiguous run of sampled columns through the centre of the k-space mask."""
    lines = mask.reshape(-1, mask.shape[-1]).all(0) if mask.dim() > 1 else mask
    lines = lines.bool().tolist()
    centre = len(lines) // 2
    if not lines[centre]:
        raise InputError("the k-space mask does not sample its centre line: coil maps cannot be "
                         "estimated from a fully sampled centre")
    lo = hi = centre
    while lo > 0 and lines[lo - 1]:
        lo -= 1
    while hi < len(lines) - 1 and lines[hi + 1]:
        hi += 1
    return lo, hi + 1


def estimate_sensitivities(kspace: Tensor, mask: Tensor, *, threshold: float = 0.02) -> Tensor:
    """Coil maps ``[coils, H, W]`` from the fully sampled k-space centre (ratio estimate).

    The central calibration block (the contiguous sampled lines around the centre, and as many
    rows) is Hann-windowed and inverse transformed into smooth low-resolution coil images
    ``c_k``; the maps are ``c_k / sqrt(sum_j |c_j|^2)`` (sum of |maps|^2 is 1, like
    :func:`pydiff.domains.medical.operators.coil_sensitivities`), and 0 where the low-resolution
    image is below ``threshold`` times its maximum (no signal to estimate from).

    Args:
        kspace: ``[coils, H, W]`` or ``[1, coils, H, W]`` complex k-space (centred).
        mask: the ``[H, W]`` sampling mask (columns are phase-encode lines).
        threshold: relative signal level below which the maps are 0.

    Example:
        >>> import torch
        >>> from pydiff.domains.medical import MRIOperator, MRIMask, shepp_logan
        >>> mask = MRIMask(4, center_fraction=0.16)(64, 64, torch.Generator().manual_seed(0))
        >>> mri = MRIOperator(mask, sensitivities=8)
        >>> maps = estimate_sensitivities(mri.A(shepp_logan(64)[None, None]), mask)
        >>> maps.shape
        torch.Size([8, 64, 64])
    """
    from .operators import ifft2c

    if kspace.dim() == 4:
        if kspace.shape[0] != 1:
            raise InputError(f"kspace must be [coils, H, W] or [1, coils, H, W], got "
                             f"{tuple(kspace.shape)}")
        kspace = kspace[0]
    if kspace.dim() != 3 or not kspace.is_complex():
        raise InputError(f"kspace must be complex [coils, H, W], got {kspace.dtype} "
                         f"{tuple(kspace.shape)}")
    if tuple(mask.shape[-2:]) != tuple(kspace.shape[-2:]):
        raise InputError(f"mask has shape {tuple(mask.shape)}, kspace {tuple(kspace.shape)}")
    H, W = kspace.shape[-2:]
    lo, hi = _calibration_lines(mask.to(kspace.device))
    width = hi - lo
    rlo = max(0, H // 2 - width // 2)
    rhi = min(H, rlo + width)
    real = kspace.real.dtype
    win_c = torch.hann_window(width + 2, periodic=False, dtype=real, device=kspace.device)[1:-1]
    win_r = torch.hann_window(rhi - rlo + 2, periodic=False, dtype=real,
                              device=kspace.device)[1:-1]
    window = torch.zeros(H, W, dtype=real, device=kspace.device)
    window[rlo:rhi, lo:hi] = win_r[:, None] * win_c[None, :]
    coil_images = ifft2c(kspace * window)
    rss = coil_images.abs().pow(2).sum(0, keepdim=True).sqrt()
    maps = coil_images / rss.clamp_min(torch.finfo(real).tiny)
    return torch.where(rss > threshold * rss.max(), maps, torch.zeros_like(maps))


def _diff_z(v: Tensor) -> Tensor:
    """Forward differences along the slice axis of ``[B, D, H, W]`` (zero past the last)."""
    d = torch.zeros_like(v)
    d[:, :-1] = v[:, 1:] - v[:, :-1]
    return d


def _diff_z_adjoint(d: Tensor) -> Tensor:
    out = torch.zeros_like(d)
    out[:, :-1] -= d[:, :-1]
    out[:, 1:] += d[:, :-1]
    return out


def admm_tv_z(forward: Linear, adjoint: Linear, y: Tensor, x_init: Tensor, weight: float, *,
              rho: float = 1.0, iterations: int = 1, cg: int = 5) -> Tensor:
    """TV along z by ADMM (DiffusionMBIR's data step): volumes ``[B, D, H, W]``, each slice
    measured on its own (``forward`` maps ``[B * D, 1, H, W]`` to ``[B * D, ...]``, ``y``).

    Solves ``min_x 1/2 ||A x - y||^2 + weight ||D_z x||_1`` from ``x_init`` with ``iterations``
    ADMM rounds (``z = D_z x`` split off; the x-update ``(A^T A + rho D_z^T D_z) x = A^T y +
    rho D_z^T (z - u)`` by ``cg`` warm-started conjugate-gradient steps on the whole volume; the
    z-update is soft thresholding). Few rounds from a prior's estimate keep it close to that
    estimate, as DDS's few CG steps do.

    Example:
        >>> import torch
        >>> from pydiff.domains.medical import CTProjector
        >>> ct = CTProjector(angles=8, size=16)
        >>> vol = torch.rand(1, 3, 16, 16)
        >>> fwd = lambda v: ct.A(v)
        >>> y = fwd(vol.reshape(3, 1, 16, 16))
        >>> x = admm_tv_z(fwd, ct.A_adjoint, y, torch.zeros(1, 3, 16, 16), 0.01, iterations=3)
        >>> x.shape
        torch.Size([1, 3, 16, 16])
    """
    if not weight >= 0 or not rho > 0:
        raise InputError(f"weight must be >= 0 and rho > 0, got weight={weight}, rho={rho}")
    B, D, H, W = x_init.shape

    def slices(v: Tensor) -> Tensor:
        return v.reshape(B * D, 1, H, W)

    def volume(v: Tensor) -> Tensor:
        return v.reshape(B, D, H, W)

    def normal(v: Tensor) -> Tensor:
        return volume(adjoint(forward(slices(v)))) + rho * _diff_z_adjoint(_diff_z(v))

    aty = volume(adjoint(y))
    x = x_init
    # start from the shrunk z-differences of x_init (u = 0): starting from z = D_z x_init left
    # the first x-update blind to the weight, so one round (the default) ignored it
    z = _soft(_diff_z(x), weight / rho)
    u = torch.zeros_like(z)
    for _ in range(iterations):
        x = conjugate_gradient(normal, aty + rho * _diff_z_adjoint(z - u), x0=x, iterations=cg)
        dz = _diff_z(x)
        v = dz + u
        z = _soft(v, weight / rho)
        u = v - z
    return x


def _soft(v: Tensor, threshold: float) -> Tensor:
    """Soft thresholding, the proximal map of ``threshold * ||.||_1``."""
    return torch.sign(v) * (v.abs() - threshold).clamp_min(0)


__all__ += ["admm_tv_z"]
