// Host-side pieces of pydiff::attention_backward shared by the CPU and CUDA implementations.
// (ATen-dependent, so it lives beside ops.cpp rather than in include/pydiff/.)
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pydiff {

// delta_i = sum_d dO_id O_id - dlse_i in the compute dtype `acc` (the lse output's own
// gradient enters here), contiguous [B, H, Lq].
inline at::Tensor attention_delta(const at::Tensor& dout, const at::Tensor& out,
                                  const std::optional<at::Tensor>& grad_lse,
                                  at::ScalarType acc) {
  at::Tensor delta = (dout.to(acc) * out.to(acc)).sum(-1);
  if (grad_lse.has_value() && grad_lse->defined()) delta = delta - grad_lse->to(acc);
  return delta.contiguous();
}

// Zero-filled (dq, dk, dv) in the compute dtype, which the tiles accumulate into.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> zero_grads(const at::Tensor& q,
                                                                 const at::Tensor& k,
                                                                 const at::Tensor& v,
                                                                 at::ScalarType acc) {
  return {at::zeros(q.sizes(), q.options().dtype(acc)),
          at::zeros(k.sizes(), k.options().dtype(acc)),
          at::zeros(v.sizes(), v.options().dtype(acc))};
}

}  // namespace pydiff
