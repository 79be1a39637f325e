"""Fake (meta) kernels and autograd formulas for the compiled ``torch.ops.pydiff`` ops.

The schemas and device kernels live in C++ (csrc/); what torch.compile needs to trace them
(output shapes/dtypes without running) and what autograd needs (derivatives) is registered
here, once, when ``pydiff.ops`` loads the extension.

Example:
    >>> import torch, pydiff.ops
    >>> if pydiff.ops.backend() == "extension":
    ...     torch.library.opcheck(torch.ops.pydiff.lincomb.default,
    ...                           ([torch.randn(3)], [], [-1], [2.0]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_DONE = False


def _lincomb_fake(
    terms: list[Tensor], coeffs: list[Tensor], coeff_index: list[int], scales: list[float]
) -> Tensor:
    x = terms[0]
    return x.new_empty(x.shape)  # contiguous, like the kernels' result


def _lincomb_out_fake(
    terms: list[Tensor],
    coeffs: list[Tensor],
    coeff_index: list[int],
    scales: list[float],
    out: Tensor,
) -> None:
    return None


def _lincomb_setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    terms, coeffs, coeff_index, scales = inputs
    ctx.scales = list(scales)
    ctx.index = list(coeff_index)
    ctx.term_dtypes = [t.dtype for t in terms]
    # Terms are saved only where a coefficient gradient needs them.
    need_term = [i >= 0 and coeffs[i].requires_grad for i in coeff_index]
    ctx.save_for_backward(*[t if n else None for t, n in zip(terms, need_term)], *coeffs)


def _lincomb_backward(ctx: Any, grad: Tensor) -> tuple:
    n = len(ctx.scales)
    saved = ctx.saved_tensors
    terms, coeffs = saved[:n], saved[n:]
    need_terms, need_coeffs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_terms: list[Tensor | None] = [None] * n
    grad_coeffs: list[Tensor | None] = [None] * len(coeffs)
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    for k in range(n):
        i, s = ctx.index[k], ctx.scales[k]
        if need_terms[k]:
            # d out / d T_k = c_k (linear): one more lincomb, then the term's dtype.
            cs, ci = ([coeffs[i]], [0]) if i >= 0 else ([], [-1])
            g = torch.ops.pydiff.lincomb.default([grad], cs, ci, [s])
            grad_terms[k] = g.to(ctx.term_dtypes[k])
        if i >= 0 and need_coeffs[i]:
            c = coeffs[i]
            gc = (grad.to(acc) * terms[k].to(acc)).sum_to_size(c.shape) * s
            # one tensor may serve several terms
            gc = gc.to(c.dtype)
            grad_coeffs[i] = gc if grad_coeffs[i] is None else grad_coeffs[i] + gc
    return grad_terms, grad_coeffs, None, None


def register() -> None:
    """Register fakes and autograd for the ops of ``pydiff._C`` (idempotent)."""
    global _DONE
    if _DONE:
        return
    torch.library.register_fake("pydiff::lincomb")(_lincomb_fake)
    torch.library.register_fake("pydiff::lincomb_out")(_lincomb_out_fake)
    torch.library.register_autograd(
        "pydiff::lincomb", _lincomb_backward, setup_context=_lincomb_setup_context
    )
    _DONE = True
