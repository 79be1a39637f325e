"""Hard data consistency as a post-step hook: project the state onto ``A x = y`` at its level.

After each step the state ``x`` sits at noise level ``(alpha, sigma)``; the measurement noised to
that level is ``alpha y + sigma A z``. :class:`DataConsistency` moves ``x`` by the smallest
correction ``d`` with ``A (x + d) = alpha y + sigma A z`` (``d = A^+ (target - A x)``):

- with ``pinv`` given, exactly (for a mask, ``pinv = A = mask *`` and this is RePaint's
  replacement, :class:`pydiff.hooks.InpaintReplace`);
- otherwise by ``iterations`` steps of conjugate gradients on ``A A^T u = target - A x`` and
  ``d = A^T u`` (the minimum-norm correction; ``adjoint`` defaults to autograd's vector-Jacobian
  product of a linear ``operator``), as DDS-style reconstructions do;
- or, with ``damping = lam > 0``, the proximal step ``argmin_z ||A z - target||^2 +
  lam ||z - x||^2`` (conjugate gradients on ``(A^T A + lam) d = A^T (target - A x)``): the
  correction no longer has to fit the measurement exactly, so with noisy data and an
  ill-conditioned ``A`` it does not amplify the noise (DDS's regularised form);
- with ``level_weighted=True`` the damping is divided by the squared noise level
  ``(sigma / alpha)^2`` of the step (the hook's, or ``project(level=...)``): the estimate's
  error shrinks with the noise level while the measurement's noise does not, so late steps
  trust the estimate more and do not write the measurement noise into it.

``noise="fresh"`` uses new noise per step from the solver's generator (RePaint); ``"none"``
projects onto ``alpha y``. At the final step (``sigma = 0``) both project onto ``y`` itself.

To project the x0 prediction instead (DDNM, DDS), wrap the model:
``ProjectX0(model, lambda x0, t: dc.project(x0))``.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import DataConsistency
    >>> mask = torch.tensor([[1.0, 0.0, 1.0]])
    >>> y = torch.tensor([[2.0, 0.0, -1.0]])
    >>> dc = DataConsistency(lambda x: mask * x, y, pinv=lambda r: mask * r)
    >>> dc.project(torch.zeros(1, 3))
    tensor([[ 2.,  0., -1.]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..hooks import StepContext
from ..noise import randn_like
from ..tree import per_sample

Tensor = torch.Tensor
Linear = Callable[[Tensor], Tensor]


class DataConsistency:
    """Post-step projection onto the measurement ``A x = alpha y + sigma A z``.

    Args:
        operator: the linear forward model ``A`` (batch first).
        measurement: ``y``, shaped like ``A(x)``.
        pinv: ``A^+`` (exact projection); if omitted, conjugate gradients are used.
        adjoint: ``A^T`` for the conjugate-gradient path (default: autograd's VJP of ``A``).
        iterations: conjugate-gradient iterations.
        noise: ``"fresh"`` or ``"none"`` (see the module docstring).
        damping: ``lam >= 0``; ``> 0`` makes the projection the proximal step above (in the
            squared units of ``A``; ignored with ``pinv``).
        level_weighted: divide ``damping`` by the squared noise level ``(sigma / alpha)^2``
            (clamped at ``1e-4``) of each step, so the hook's proximal step trusts the state
            more as the noise falls; at the final step (``sigma = 0``) it barely moves.
    """

    def __init__(self, operator: Linear, measurement: Tensor, pinv: Linear | None = None,
                 adjoint: Linear | None = None, iterations: int = 10, noise: str = "fresh",
                 damping: float = 0.0, level_weighted: bool = False):
        if not callable(operator):
            raise TypeError(f"operator must be callable as A(x), got {type(operator).__name__}")
        if noise not in ("fresh", "none"):
            raise ValueError(f"noise must be 'fresh' or 'none', got {noise!r}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.operator, self.measurement, self.pinv, self.adjoint = (
            operator, measurement, pinv, adjoint)
        self.iterations, self.noise, self.damping = int(iterations), noise, float(damping)
        self.level_weighted = bool(level_weighted)

    def project(self, x: Tensor, target: Tensor | None = None,
                damping: float | Tensor | None = None,
                level: float | Tensor | None = None) -> Tensor:
        """``x + A^+ (target - A x)`` (``target`` defaults to the measurement ``y``), or the
        proximal step with ``damping`` (default: the constructor's; a ``[B]`` tensor gives one
        per sample, e.g. a noise-level-dependent weight inside a sampler). ``level``
        (``sigma / alpha``, a float or ``[B]``) divides the damping by ``level^2`` (clamped at
        ``1e-4``): the noise-weighted proximal step, e.g. on x0-hat at time ``t`` (DDS)."""
        target = self.measurement if target is None else target
        lam = self.damping if damping is None else damping
        if level is not None and (torch.is_tensor(lam) or lam > 0):
            level = torch.as_tensor(level, dtype=torch.float64).clamp_min(1e-4)
            lam = torch.as_tensor(lam, dtype=torch.float64) / level ** 2
        with torch.no_grad():
            r = target.to(device=x.device, dtype=x.dtype) - self.operator(x)
            if self.pinv is not None:
                return x + self.pinv(r)
            if torch.is_tensor(lam) or lam > 0:
                return x + self._damped(x, r, lam)
            return x + self._min_norm(x, r)

    def _transpose(self, x: Tensor) -> Linear:
        if self.adjoint is not None:
            return self.adjoint

        def vjp(u: Tensor) -> Tensor:
            # A is linear: its VJP at any point is A^T
            with torch.enable_grad():
                probe = torch.zeros_like(x, requires_grad=True)
                return torch.autograd.grad(self.operator(probe), probe, u)[0]

        return vjp

    @staticmethod
    def _dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))

    def _damped(self, x: Tensor, r: Tensor, lam: float | Tensor) -> Tensor:
        # CG on (A^T A + lam) d = A^T r in image space, batched per sample, from d = 0
        at = self._transpose(x)
        b = at(r)
        if torch.is_tensor(lam):
            lam = per_sample(lam.to(device=b.device, dtype=b.dtype).expand(b.shape[0]), b)
        return self._cg(lambda p: at(self.operator(p)) + lam * p, b)

    def _cg(self, apply, b: Tensor) -> Tensor:
        # conjugate gradients on apply(u) = b from u = 0, batched per sample
        dot = self._dot
        u = torch.zeros_like(b)
        res, p = b.clone(), b.clone()
        rr = dot(res, res)
        tiny = torch.finfo(b.dtype).tiny
        for _ in range(self.iterations):
            ap = apply(p)
            step = rr / dot(p, ap).clamp_min(tiny)
            u = u + step * p
            res = res - step * ap
            rr_new = dot(res, res)
            p = res + rr_new / rr.clamp_min(tiny) * p
            rr = rr_new
        return u

    def _min_norm(self, x: Tensor, r: Tensor) -> Tensor:
        # CG on (A A^T) u = r, batched per sample; d = A^T u is the minimum-norm correction
        at = self._transpose(x)
        return at(self._cg(lambda p: self.operator(at(p)), r))

    def __call__(self, x: Tensor, ctx: StepContext) -> Tensor:
        y = self.measurement.to(device=x.device, dtype=x.dtype)
        target = per_sample(ctx.alpha, y).to(x.dtype) * y
        if self.noise == "fresh" and not ctx.final:
            s = per_sample(ctx.sigma, x).to(x.dtype)
            with torch.no_grad():
                target = target + self.operator(s * randn_like(x, ctx.generator))
        level = None
        if self.level_weighted:
            level = torch.as_tensor(ctx.sigma) / torch.as_tensor(ctx.alpha)
        return self.project(x, target, level=level)

    def __repr__(self) -> str:
        how = "pinv" if self.pinv is not None else f"cg({self.iterations})"
        if self.pinv is None and self.damping > 0:
            how += f", damping={self.damping:g}" + (" / level^2" if self.level_weighted else "")
        return f"DataConsistency({how}, noise={self.noise!r})"


__all__ = ["DataConsistency"]
