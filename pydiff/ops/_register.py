"""Fake (meta) kernels and autograd formulas for the compiled ``torch.ops.pydiff`` ops.

The schemas and device kernels live in C++ (csrc/); what torch.compile needs to trace them
(output shapes/dtypes without running) and what autograd needs (derivatives) is registered
here, once, when ``pydiff.ops`` loads the extension.

Example:
    >>> import torch, pydiff.ops
    >>> if pydiff.ops.backend() == "extension":
    ...     report = torch.library.opcheck(
    ...         torch.ops.pydiff.lincomb.default, ([torch.randn(3)], [], [-1], [2.0])
    ...     )
    ...     assert all(v == "SUCCESS" for v in report.values()), report
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


def _lincomb_multi_fake(
    terms: list[Tensor],
    coeffs: list[Tensor],
    coeff_index: list[int],
    scales: list[float],
    sources: list[int],
    counts: list[int],
    keep: list[int],
) -> list[Tensor]:
    x = terms[0]
    return [x.new_empty(x.shape) for k in keep if k]


def _lincomb_multi_backward(ctx: Any, *grads: Tensor) -> tuple:
    raise RuntimeError(
        "pydiff::lincomb_multi has no derivative of its own: pydiff.ops.lincomb_multi computes "
        "the outputs with differentiable pydiff.ops.lincomb calls when a term or coefficient "
        "requires grad; call that instead of torch.ops.pydiff.lincomb_multi"
    )


def _attention_fake(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    B, H, Lq, _ = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty((B, H, Lq, v.shape[-1])), q.new_empty((B, H, Lq), dtype=acc)


def _attention_backward_fake(
    grad_out: Tensor,
    grad_lse: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    scale: float,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, scale, mask = inputs
    out, lse = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, out, lse, mask)


def _attention_backward(ctx: Any, grad_out: Tensor | None, grad_lse: Tensor | None) -> tuple:
    q, k, v, out, lse, mask = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.pydiff.attention_backward.default(
        grad_out, grad_lse, q, k, v, out, lse, ctx.scale, mask
    )
    return dq, dk, dv, None, None


def _linear_attention_fake(q: Tensor, k: Tensor, v: Tensor, eps: float) -> Tensor:
    return q.new_empty((*q.shape[:3], v.shape[-1]))


def _linear_attention_backward_fake(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _linear_attention_setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    q, k, v, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(q, k, v)


def _linear_attention_backward(ctx: Any, grad_out: Tensor) -> tuple:
    q, k, v = ctx.saved_tensors
    dq, dk, dv = torch.ops.pydiff.linear_attention_backward.default(grad_out, q, k, v, ctx.eps)
    return dq, dk, dv, None


def _halo_pack_fake(maps: list[Tensor], rows: list[int], top: bool) -> Tensor:
    total = sum(m.shape[0] * m.shape[1] * r * m.shape[3] for m, r in zip(maps, rows))
    return maps[0].new_empty((total,))


def _halo_unpack_fake(buffer: Tensor, dests: list[Tensor], rows: list[int], top: bool) -> None:
    return None


def _setup_nothing(ctx: Any, inputs: tuple, output: Any) -> None:
    pass


def _no_double_backward(name: str):
    """An autograd formula for a backward op that refuses to be differentiated: without one,
    ``create_graph=True`` through attention would only warn and give zero second-order terms."""

    def backward(ctx: Any, *grads: Tensor) -> tuple:
        raise RuntimeError(
            f"pydiff::{name}: double backward (create_graph=True through pydiff's attention "
            "kernels) is not implemented; use torch.nn.functional.scaled_dot_product_attention"
        )

    return backward


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
    torch.library.register_fake("pydiff::lincomb_multi")(_lincomb_multi_fake)
    torch.library.register_autograd(
        "pydiff::lincomb_multi", _lincomb_multi_backward, setup_context=_setup_nothing
    )
    torch.library.register_fake("pydiff::attention")(_attention_fake)
    torch.library.register_fake("pydiff::attention_backward")(_attention_backward_fake)
    torch.library.register_autograd(
        "pydiff::attention", _attention_backward, setup_context=_attention_setup_context
    )
    torch.library.register_autograd(
        "pydiff::attention_backward",
        _no_double_backward("attention_backward"),
        setup_context=_setup_nothing,
    )
    torch.library.register_fake("pydiff::linear_attention")(_linear_attention_fake)
    torch.library.register_fake("pydiff::linear_attention_backward")(
        _linear_attention_backward_fake
    )
    torch.library.register_autograd(
        "pydiff::linear_attention",
        _linear_attention_backward,
        setup_context=_linear_attention_setup_context,
    )
    torch.library.register_autograd(
        "pydiff::linear_attention_backward",
        _no_double_backward("linear_attention_backward"),
        setup_context=_setup_nothing,
    )
    torch.library.register_fake("pydiff::halo_pack")(_halo_pack_fake)
    torch.library.register_fake("pydiff::halo_unpack")(_halo_unpack_fake)
    _DONE = True
