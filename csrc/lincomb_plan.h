// Argument checks and the broadcast/coalesce plan for pydiff::lincomb, shared by the CPU and
// CUDA implementations. (ATen-dependent, so it lives beside ops.cpp rather than in the
// header-only math of include/pydiff/.)
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <array>
#include <vector>

namespace pydiff {

constexpr int kMaxDims = 16;

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Validates the op's arguments with messages that name the argument. Python checks the same
// things first (with friendlier messages); these guard direct torch.ops calls.
inline void check_lincomb_args(at::TensorList terms, at::TensorList coeffs,
                               at::IntArrayRef coeff_index, at::ArrayRef<double> scales) {
  TORCH_CHECK(!terms.empty(), "pydiff::lincomb: terms must hold at least one tensor");
  TORCH_CHECK(coeff_index.size() == terms.size() && scales.size() == terms.size(),
              "pydiff::lincomb: got ", terms.size(), " terms, ", coeff_index.size(),
              " coeff_index entries and ", scales.size(),
              " scales; expected one coefficient per term");
  const auto& x = terms[0];
  TORCH_CHECK(x.dim() <= kMaxDims, "pydiff::lincomb: terms have ", x.dim(),
              " dims, at most ", kMaxDims, " are supported");
  for (size_t k = 0; k < terms.size(); ++k) {
    const auto& t = terms[k];
    TORCH_CHECK(t.sizes() == x.sizes(), "pydiff::lincomb: terms[", k, "] has shape ", t.sizes(),
                ", expected the shape of terms[0] ", x.sizes());
    TORCH_CHECK(is_supported_float(t.scalar_type()), "pydiff::lincomb: terms[", k, "] has dtype ",
                t.scalar_type(), ", expected float32, float64, float16 or bfloat16");
    TORCH_CHECK(t.device() == x.device(), "pydiff::lincomb: terms[", k, "] is on ", t.device(),
                ", expected ", x.device(), " like terms[0]");
    const int64_t ci = coeff_index[k];
    if (ci < 0) continue;
    TORCH_CHECK(ci < static_cast<int64_t>(coeffs.size()), "pydiff::lincomb: coeff_index[", k,
                "] = ", ci, " but only ", coeffs.size(), " coefficient tensors were given");
    const at::Tensor* c = &coeffs[ci];
    TORCH_CHECK(is_supported_float(c->scalar_type()), "pydiff::lincomb: coeffs[", k,
                "] has dtype ", c->scalar_type(), ", expected a floating dtype");
    TORCH_CHECK(c->device() == x.device() || (c->dim() == 0 && c->device().is_cpu()),
                "pydiff::lincomb: coeffs[", k, "] is on ", c->device(), ", expected ", x.device(),
                " (or a 0-dim CPU tensor)");
    TORCH_CHECK(c->dim() <= x.dim(), "pydiff::lincomb: coeffs[", k, "] has shape ", c->sizes(),
                ", which does not broadcast to the term shape ", x.sizes());
    const int64_t off = x.dim() - c->dim();
    for (int64_t d = 0; d < c->dim(); ++d) {
      TORCH_CHECK(c->size(d) == 1 || c->size(d) == x.size(off + d), "pydiff::lincomb: coeffs[", k,
                  "] has shape ", c->sizes(), ", which does not broadcast to the term shape ",
                  x.sizes());
    }
  }
}

inline void check_lincomb_out(at::TensorList terms, const at::Tensor& out) {
  TORCH_CHECK(out.sizes() == terms[0].sizes(), "pydiff::lincomb: out has shape ", out.sizes(),
              ", expected the term shape ", terms[0].sizes());
  TORCH_CHECK(is_supported_float(out.scalar_type()), "pydiff::lincomb: out has dtype ",
              out.scalar_type(), ", expected float32, float64, float16 or bfloat16");
  TORCH_CHECK(out.device() == terms[0].device(), "pydiff::lincomb: out is on ", out.device(),
              ", expected ", terms[0].device());
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes,
              "pydiff::lincomb: out has internal overlap (e.g. an expanded tensor); "
              "pass a tensor whose elements are distinct");
}

// True when `out` shares memory with an input in any way other than "the very same elements in
// the very same layout" (which an element-wise kernel handles in place).
inline bool needs_temporary(at::TensorList terms, at::TensorList coeffs, const at::Tensor& out) {
  auto bad = [&](const at::Tensor& t) {
    const auto st = at::get_overlap_status(out, t);
    if (st == at::MemOverlapStatus::No) return false;
    if (st == at::MemOverlapStatus::Full && t.strides() == out.strides() &&
        t.sizes() == out.sizes())
      return false;
    return true;
  };
  for (const auto& t : terms)
    if (bad(t)) return true;
  for (const auto& c : coeffs)
    if (c.device() == out.device() && bad(c)) return true;
  return false;
}

// One operand of the element-wise loop: base pointer, dtype and strides (in elements) over the
// coalesced iteration dims. Broadcast dims have stride 0.
struct Operand {
  char* data = nullptr;
  at::ScalarType dtype = at::kFloat;
  int64_t elsize = 4;
  std::array<int64_t, kMaxDims> stride{};
};

// The iteration space of one lincomb call after broadcasting and dimension coalescing:
// ops[0] is out, ops[1..K] the terms, then one operand per tensor coefficient (coef_op[k] is
// its index in ops, or -1 when term k has a plain float coefficient).
struct LincombPlan {
  int ndim = 0;                            // after coalescing; the last dim is the inner one
  std::array<int64_t, kMaxDims> size{};    // sizes of the coalesced dims
  std::vector<Operand> ops;
  std::vector<int> coef_op;
  std::vector<double> scales;
  int64_t numel = 0;
};

inline LincombPlan make_lincomb_plan(at::TensorList terms, at::TensorList coeffs,
                                     at::IntArrayRef coeff_index, at::ArrayRef<double> scales,
                                     const at::Tensor& out) {
  LincombPlan p;
  const int64_t nd = out.dim();
  p.numel = out.numel();
  p.scales.assign(scales.begin(), scales.end());
  auto add = [&](const at::Tensor& t) {
    Operand o;
    o.data = static_cast<char*>(t.data_ptr());
    o.dtype = t.scalar_type();
    o.elsize = t.element_size();
    const int64_t off = nd - t.dim();  // coefficients may have fewer dims (left-padded with 1)
    for (int64_t d = 0; d < nd; ++d) {
      const int64_t sd = d - off;
      o.stride[d] = (sd < 0 || t.size(sd) == 1) ? 0 : t.stride(sd);
    }
    p.ops.push_back(o);
  };
  add(out);
  for (const auto& t : terms) add(t);
  p.coef_op.assign(terms.size(), -1);
  for (size_t k = 0; k < terms.size(); ++k) {
    if (coeff_index[k] < 0) continue;
    p.coef_op[k] = static_cast<int>(p.ops.size());
    add(coeffs[coeff_index[k]]);
  }
  // Coalesce: drop size-1 dims, and merge dim d into d+1 when every operand walks them as one
  // (stride[d] == stride[d+1] * size[d+1]). Contiguous tensors with scalar or per-sample
  // coefficients end up with one or two dims, so the inner loop is long and unit-stride.
  std::array<int64_t, kMaxDims> size{};
  int n = 0;
  for (int64_t d = 0; d < nd; ++d) {
    if (out.size(d) == 1) continue;
    if (n > 0) {
      bool merge = true;
      for (auto& o : p.ops) {
        // candidate: previous kept dim (n-1) is outer, d is inner
        if (o.stride[n - 1] != o.stride[d] * out.size(d)) { merge = false; break; }
      }
      if (merge) {
        size[n - 1] *= out.size(d);
        for (auto& o : p.ops) o.stride[n - 1] = o.stride[d];
        continue;
      }
    }
    size[n] = out.size(d);
    for (auto& o : p.ops) o.stride[n] = o.stride[d];
    ++n;
  }
  if (n == 0) {  // a single element (0-dim or all-ones shape)
    size[0] = 1;
    for (auto& o : p.ops) o.stride[0] = 0;
    n = 1;
  }
  p.ndim = n;
  p.size = size;
  return p;
}

// A device's `into` writes the combination into an `out` that overlaps no operand.
using LincombInto = void (*)(at::TensorList, at::TensorList, at::IntArrayRef,
                             at::ArrayRef<double>, const at::Tensor&);

// The lincomb_out op on top of a device's `into`: checks, and a temporary when out overlaps an
// operand in a way one pass cannot handle.
template <LincombInto into>
void lincomb_out_via(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                     at::ArrayRef<double> scales, const at::Tensor& out) {
  check_lincomb_args(terms, coeffs, coeff_index, scales);
  check_lincomb_out(terms, out);
  if (needs_temporary(terms, coeffs, out)) {
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    into(terms, coeffs, coeff_index, scales, tmp);
    out.copy_(tmp);
    return;
  }
  into(terms, coeffs, coeff_index, scales, out);
}

// The functional lincomb op on top of a device's `into`: a fresh contiguous result.
template <LincombInto into>
at::Tensor lincomb_via(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                       at::ArrayRef<double> scales) {
  check_lincomb_args(terms, coeffs, coeff_index, scales);
  at::Tensor out = at::empty(terms[0].sizes(),
                             terms[0].options().memory_format(at::MemoryFormat::Contiguous));
  into(terms, coeffs, coeff_index, scales, out);
  return out;
}

}  // namespace pydiff
