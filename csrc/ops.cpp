// The pydiff operator library: schemas only. Device implementations register themselves in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); fake (meta) kernels and autograd formulas
// are registered from Python in pydiff/ops/_register.py.
//
// Coefficients travel as `coeffs` (the tensor coefficients, each broadcastable to the terms: a
// per-sample [B] coefficient arrives reshaped to [B, 1, ..., 1]), `coeff_index` (for each term,
// the position of its tensor in `coeffs`, or -1) and `scales` (a float per term). The effective
// coefficient of term k is scales[k] * coeffs[coeff_index[k]], or scales[k] when the index is
// -1. Python numbers therefore never become tensors on the hot path, and tensor coefficients
// stay tensors, so torch.compile does not guard on their values. (`coeffs` is a plain Tensor[]
// rather than a Tensor?[] with holes because autograd only flows through lists of tensors.)
// (The Python module itself, pydiff._C, is defined in python.cpp.)
#include <torch/library.h>

TORCH_LIBRARY(pydiff, m) {
  // sum_k scales[k] * coeffs[coeff_index[k]] * terms[k]; result has terms[0]'s shape and dtype, contiguous.
  m.def(
      "lincomb(Tensor[] terms, Tensor[] coeffs, int[] coeff_index, float[] scales) -> Tensor");
  // Same sum written into `out` (which may be terms[0] itself: an in-place solver update).
  m.def(
      "lincomb_out(Tensor[] terms, Tensor[] coeffs, int[] coeff_index, float[] scales, "
      "Tensor(a!) out) -> ()");

  // Several combinations of the same terms in one pass, computed in order: output j sums its
  // counts[j] entries, entry e adding scales[e] * coeffs[coeff_index[e]] * source sources[e],
  // where sources 0..K-1 are the terms and K + l is output l < j (summed in registers or L1,
  // never re-read from memory). Returns the outputs with keep[j] set, in order, each with
  // terms[0]'s shape and dtype, contiguous. (A solver step with an eps model: x0 = a x + b eps
  // kept for the history, x_next = c x + d x0 + ..., both from one read of x and eps.)
  m.def(
      "lincomb_multi(Tensor[] terms, Tensor[] coeffs, int[] coeff_index, float[] scales, "
      "int[] sources, int[] counts, int[] keep) -> Tensor[]");

  // Flash-style softmax attention over [B, H, L, D]; mask is a bool key-padding mask [B, Lk]
  // (True = attend). Returns (out [B, H, Lq, Dv] in q's dtype, lse [B, H, Lq] in float32, or
  // float64 for float64 inputs). All-masked rows give out = 0 and lse = -inf.
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? mask) -> (Tensor, Tensor)");
  // Gradients (dq, dk, dv) recomputed tile by tile from (out, lse); grad_lse may be None.
  m.def(
      "attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, float scale, Tensor? mask) -> (Tensor, Tensor, Tensor)");

  // Normalized non-causal linear attention: q (k^T v) / (q . sum_j k_j + eps), O(L D Dv).
  m.def("linear_attention(Tensor q, Tensor k, Tensor v, float eps) -> Tensor");
  m.def(
      "linear_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, float eps) "
      "-> (Tensor, Tensor, Tensor)");

  // Patch-parallel halo exchange. halo_pack gathers, for each [B, C, H, W] map i, its first
  // (top) or last rows[i] rows into one contiguous 1-D buffer in maps' dtype: map after map,
  // each slab [B, C, rows[i], W] in row-major order. halo_unpack scatters such a buffer into
  // the first (top) or last rows[i] rows of each destination (e.g. a band padded for its halo).
  m.def("halo_pack(Tensor[] maps, int[] rows, bool top) -> Tensor");
  m.def("halo_unpack(Tensor buffer, Tensor(a!)[] dests, int[] rows, bool top) -> ()");
}
