"""Total variation for images: the regulariser, and TV-regularised least squares by PDHG.

- :func:`gradient2d` / :func:`divergence2d`: forward differences over the last two axes and
  minus their adjoint;
- :func:`operator_norm`: ``||A||`` by power iteration (to put a data term in image units);
- :func:`tv_pdhg`: ``min_x 1/2 ||A x - y||^2 / ||A||^2 + weight TV(x) + anchor_weight/2
  ||x - anchor||^2`` (isotropic TV) by the primal-dual hybrid gradient method (Chambolle and
  Pock 2011). Without the anchor it is the classical TV reconstruction (CT's TV-PDHG, MRI's
  compressed-sensing TV); with an anchor at a diffusion reconstruction it is a TV-regularised
  refinement of it, a proximal step that mixes the prior's estimate with TV's piecewise-smooth
  model (their errors differ, so the mix can beat both).

The data term is divided by ``||A||^2`` so that ``weight`` and ``anchor_weight`` mean the same
for any operator: ``weight`` is in the image's intensity units.

Example:
    >>> import torch
    >>> from pydiff.guidance.tv import tv_pdhg
    >>> x = torch.zeros(1, 1, 16, 16); x[..., 4:12, 4:12] = 1.0
    >>> mask = (torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.5)
    >>> A = lambda v: v * mask                          # inpainting: self-adjoint
    >>> out = tv_pdhg(A, A, A(x), weight=0.02, iterations=300)
    >>> float((out - x).abs().mean()) < float((A(x) - x).abs().mean())
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError

Tensor = torch.Tensor
Linear = Callable[[Tensor], Tensor]

__all__ = ["gradient2d", "divergence2d", "operator_norm", "tv_pdhg"]


def gradient2d(x: Tensor) -> Tensor:
    """Forward differences over the last two axes (zero at the far edge): ``[..., 2, H, W]``."""
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([gy, gx], dim=-3)


def divergence2d(g: Tensor) -> Tensor:
    """Minus the adjoint of :func:`gradient2d` (``<grad x, g> = -<x, div g>``)."""
    gy, gx = g.unbind(dim=-3)
    d = torch.zeros_like(gy)
    d[..., :-1, :] += gy[..., :-1, :]
    d[..., 1:, :] -= gy[..., :-1, :]
    d[..., :, :-1] += gx[..., :, :-1]
    d[..., :, 1:] -= gx[..., :, :-1]
    return d


def operator_norm(forward: Linear, adjoint: Linear, like: Tensor, iterations: int = 30,
                  generator: torch.Generator | None = None) -> float:
    """``||A||`` by power iteration on ``A^T A`` from a seeded random start shaped ``like``."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randn(like.shape, generator=g, dtype=like.real.dtype).to(like.device)
    x = x.to(like.dtype) if like.is_complex() else x
    value = 0.0
    for _ in range(iterations):
        x = x / x.norm()
        x = adjoint(forward(x))
        value = float(x.norm())
    return value ** 0.5


def tv_pdhg(forward: Linear, adjoint: Linear, y: Tensor, weight: float, *,
            iterations: int = 300, x_init: Tensor | None = None, anchor: Tensor | None = None,
            anchor_weight: float = 0.0, nonnegative: bool = False,
            op_norm: float | None = None) -> Tensor:
    """TV-regularised least squares by PDHG, optionally anchored at an image.

    Solves ``min_x 1/2 ||A x - y||^2 / ||A||^2 + weight sum |grad x| + anchor_weight / 2
    ||x - anchor||^2`` for images ``[..., H, W]``.

    Args:
        forward / adjoint: ``A`` and its adjoint ``A^T`` (real images; for complex
            measurements, ``adjoint`` returns what the image should be, e.g. its real part).
        y: the measurement.
        weight: TV weight in image intensity units (larger: smoother).
        iterations: PDHG iterations (each one ``A`` and one ``A^T``).
        x_init: start (default: the anchor, else zeros).
        anchor / anchor_weight: the quadratic pull towards ``anchor`` (e.g. a diffusion
            reconstruction); ``anchor_weight = 0`` is plain TV.
        nonnegative: clamp the image at 0 after each step (densities, magnitudes).
        op_norm: ``||A||`` if known (default: 30 power iterations).

    Returns:
        the image, shaped like ``adjoint(y)``.
    """
    if not weight >= 0:
        raise InputError(f"weight must be >= 0, got {weight}")
    if iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    if not anchor_weight >= 0 or (anchor_weight > 0 and anchor is None):
        raise InputError(f"anchor_weight must be >= 0 and needs an anchor, got {anchor_weight}")
    like = adjoint(y)
    start = x_init if x_init is not None else anchor
    x = torch.zeros_like(like) if start is None else start.to(like.dtype).clone()
    norm = op_norm if op_norm is not None else operator_norm(forward, adjoint, like)
    yn = y / norm
    # K = [A / ||A||; grad] has norm <= sqrt(1 + 8); steps with tau * sigma * ||K||^2 < 1
    tau = sigma = 0.99 / 3.0
    pull = tau * anchor_weight
    target = anchor.to(like.dtype) if pull > 0 else None
    p = torch.zeros_like(yn)
    q = torch.zeros_like(gradient2d(x))
    x_bar = x
    for _ in range(iterations):
        # dual of the data term f(z) = 1/2 ||z - y'||^2: prox of f* is (v - sigma y') / (1 + sigma)
        p = (p + sigma * (forward(x_bar) / norm - yn)) / (1 + sigma)
        # dual of weight * ||.||_{2,1}: pointwise projection onto the weight-ball
        q = q + sigma * gradient2d(x_bar)
        magnitude = q.abs().pow(2).sum(dim=-3, keepdim=True).sqrt()
        q = q / torch.clamp(magnitude / max(weight, 1e-30), min=1.0)
        x_new = x - tau * (adjoint(p) / norm - divergence2d(q))
        if target is not None:  # prox of anchor_weight / 2 ||x - anchor||^2
            x_new = (x_new + pull * target) / (1 + pull)
        if nonnegative:
            x_new = x_new.clamp_min(0) if not x_new.is_complex() else x_new
        x_bar = 2 * x_new - x
        x = x_new
    return x
