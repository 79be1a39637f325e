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
// pydiff::lincomb_multi: outputs per call and entries (term x coefficient) over all of them.
constexpr int kMaxOutputs = 4;
constexpr int kMaxEntries = 32;

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Entry k's coefficient: none (-1) or a float tensor that broadcasts to the term shape, on the
// terms' device (or a 0-dim CPU tensor).
inline void check_coef(at::TensorList coeffs, int64_t ci, const at::Tensor& x, size_t k) {
  if (ci < 0) return;
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
    check_coef(coeffs, coeff_index[k], x, k);
  }
}

// Checks of pydiff::lincomb_multi: outputs j = 0..R-1 in order, output j the sum of its
// counts[j] entries; entry e adds scales[e] * coeffs[coeff_index[e]] * source sources[e], where
// sources 0..K-1 are the terms and K + l is output l (l < j).
inline void check_lincomb_multi_args(at::TensorList terms, at::TensorList coeffs,
                                     at::IntArrayRef coeff_index, at::ArrayRef<double> scales,
                                     at::IntArrayRef sources, at::IntArrayRef counts,
                                     at::IntArrayRef keep) {
  TORCH_CHECK(!terms.empty(), "pydiff::lincomb_multi: terms must hold at least one tensor");
  const int64_t K = static_cast<int64_t>(terms.size());
  const int64_t R = static_cast<int64_t>(counts.size());
  TORCH_CHECK(R >= 1 && R <= kMaxOutputs, "pydiff::lincomb_multi: got ", R,
              " outputs, expected 1 to ", kMaxOutputs);
  TORCH_CHECK(static_cast<int64_t>(keep.size()) == R, "pydiff::lincomb_multi: keep has ",
              keep.size(), " entries for ", R, " outputs");
  const size_t E = sources.size();
  TORCH_CHECK(coeff_index.size() == E && scales.size() == E, "pydiff::lincomb_multi: got ", E,
              " sources, ", coeff_index.size(), " coeff_index entries and ", scales.size(),
              " scales; expected one of each per entry");
  TORCH_CHECK(E <= static_cast<size_t>(kMaxEntries), "pydiff::lincomb_multi: at most ",
              kMaxEntries, " entries are supported, got ", E);
  const auto& x = terms[0];
  TORCH_CHECK(x.dim() <= kMaxDims, "pydiff::lincomb_multi: terms have ", x.dim(),
              " dims, at most ", kMaxDims, " are supported");
  for (size_t k = 0; k < terms.size(); ++k) {
    const auto& t = terms[k];
    TORCH_CHECK(t.sizes() == x.sizes(), "pydiff::lincomb_multi: terms[", k, "] has shape ",
                t.sizes(), ", expected the shape of terms[0] ", x.sizes());
    TORCH_CHECK(is_supported_float(t.scalar_type()), "pydiff::lincomb_multi: terms[", k,
                "] has dtype ", t.scalar_type(), ", expected float32, float64, float16 or bfloat16");
    TORCH_CHECK(t.device() == x.device(), "pydiff::lincomb_multi: terms[", k, "] is on ",
                t.device(), ", expected ", x.device(), " like terms[0]");
  }
  size_t e = 0;
  for (int64_t j = 0; j < R; ++j) {
    TORCH_CHECK(counts[j] >= 0, "pydiff::lincomb_multi: counts[", j, "] = ", counts[j]);
    for (int64_t q = 0; q < counts[j]; ++q, ++e) {
      TORCH_CHECK(e < E, "pydiff::lincomb_multi: counts add up to more than the ", E,
                  " entries");
      TORCH_CHECK(sources[e] >= 0 && sources[e] < K + j, "pydiff::lincomb_multi: sources[", e,
                  "] = ", sources[e], " in output ", j, "; expected a term (0..", K - 1,
                  ") or an earlier output (", K, "..", K + j - 1, ")");
      check_coef(coeffs, coeff_index[e], x, e);
    }
  }
  TORCH_CHECK(e == E, "pydiff::lincomb_multi: counts add up to ", e, " entries, got ", E);
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
// ops[0..nout-1] are the outputs, ops[nout..nout+K-1] the terms, then one operand per tensor
// coefficient (coef_op[e] is its index in ops, or -1 when entry e has a plain float
// coefficient). A plain lincomb has one output and one entry per term.
struct LincombPlan {
  int ndim = 0;                            // after coalescing; the last dim is the inner one
  std::array<int64_t, kMaxDims> size{};    // sizes of the coalesced dims
  std::vector<Operand> ops;
  std::vector<int> coef_op;
  std::vector<double> scales;
  int64_t numel = 0;
  int nout = 1;
};

inline LincombPlan make_lincomb_plan(at::TensorList terms, at::TensorList coeffs,
                                     at::IntArrayRef coeff_index, at::ArrayRef<double> scales,
                                     at::TensorList outs) {
  LincombPlan p;
  const at::Tensor& out = outs[0];
  const int64_t nd = out.dim();
  p.numel = out.numel();
  p.nout = static_cast<int>(outs.size());
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
  for (const auto& o : outs) add(o);
  for (const auto& t : terms) add(t);
  p.coef_op.assign(coeff_index.size(), -1);
  for (size_t k = 0; k < coeff_index.size(); ++k) {
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

// How a device makes a fresh contiguous result (the CPU takes it from its output cache).
using EmptyResult = at::Tensor (*)(at::IntArrayRef, const at::TensorOptions&);

inline at::Tensor empty_contiguous(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
}

// The functional lincomb op on top of a device's `into`: a fresh contiguous result.
template <LincombInto into, EmptyResult empty = empty_contiguous>
at::Tensor lincomb_via(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                       at::ArrayRef<double> scales) {
  check_lincomb_args(terms, coeffs, coeff_index, scales);
  at::Tensor out = empty(terms[0].sizes(), terms[0].options());
  into(terms, coeffs, coeff_index, scales, out);
  return out;
}

}  // namespace pydiff
