// CPU kernel of pydiff::lincomb: out = sum_k c_k * T_k, one pass over memory.
//
// The coalesced iteration space (see lincomb_plan.h) is cut into chunks of kChunk inner
// elements. A chunk is accumulated in a small float (double for float64 results) buffer that
// stays in L1: each term streams once from memory into it, then it is converted and stored
// once. So every byte of every term and of out moves exactly once, whatever the dtypes, and
// the per-dtype code is one short loop per (term dtype, coefficient kind) instead of one
// kernel per combination of K dtypes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../lincomb_plan.h"
#include "pydiff/common.h"

namespace pydiff {
namespace {

using at::vec::Vectorized;
using fVec = Vectorized<float>;

constexpr int64_t kChunk = 1024;
// Below this many elements the whole op runs on the calling thread: waking the pool costs a few
// microseconds, more than the work (measured in benchmarks/ops_lincomb.py).
constexpr int64_t kParallelMinElems = 1 << 17;

template <typename T>
inline fVec load_f(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p);
  } else {
    fVec v;
    at::vec::load_to_float<T>(p, v);
    return v;
  }
}

// acc[i] (=|+=) c * x[i] for a contiguous term and a scalar coefficient.
template <typename A, typename T>
void axpy_scalar(A* __restrict acc, A c, const T* __restrict x, int64_t n, bool assign) {
  int64_t i = 0;
  if constexpr (std::is_same_v<A, float> && !std::is_same_v<T, double>) {
    const fVec cv(c);
    constexpr int64_t W = fVec::size();
    if (assign) {
      for (; i + W <= n; i += W) (cv * load_f(x + i)).store(acc + i);
    } else {
      for (; i + W <= n; i += W) at::vec::fmadd(cv, load_f(x + i), fVec::loadu(acc + i)).store(acc + i);
    }
  }
  if (assign) {
    for (; i < n; ++i) acc[i] = c * static_cast<A>(x[i]);
  } else {
    for (; i < n; ++i) acc[i] += c * static_cast<A>(x[i]);
  }
}

// acc[i] (=|+=) c[i] * x[i] for a contiguous term and a per-element coefficient buffer.
template <typename A, typename T>
void axpy_vector(A* __restrict acc, const A* __restrict c, const T* __restrict x, int64_t n,
                 bool assign) {
  int64_t i = 0;
  if constexpr (std::is_same_v<A, float> && !std::is_same_v<T, double>) {
    constexpr int64_t W = fVec::size();
    if (assign) {
      for (; i + W <= n; i += W) (fVec::loadu(c + i) * load_f(x + i)).store(acc + i);
    } else {
      for (; i + W <= n; i += W)
        at::vec::fmadd(fVec::loadu(c + i), load_f(x + i), fVec::loadu(acc + i)).store(acc + i);
    }
  }
  if (assign) {
    for (; i < n; ++i) acc[i] = c[i] * static_cast<A>(x[i]);
  } else {
    for (; i < n; ++i) acc[i] += c[i] * static_cast<A>(x[i]);
  }
}

// dst[i] = scale * src[i * stride], converting to the accumulation type (strided gathers and
// per-element coefficients).
template <typename A, typename T>
void gather(A* __restrict dst, const T* __restrict src, int64_t stride, int64_t n, A scale) {
  if (stride == 1) {
    axpy_scalar<A, T>(dst, scale, src, n, /*assign=*/true);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = scale * static_cast<A>(src[i * stride]);
}

template <typename A, typename T>
void store(const A* __restrict acc, T* __restrict out, int64_t stride, int64_t n) {
  int64_t i = 0;
  if (stride == 1) {
    if constexpr (std::is_same_v<A, float> && std::is_same_v<T, float>) {
      for (; i + fVec::size() <= n; i += fVec::size()) fVec::loadu(acc + i).store(out + i);
    } else if constexpr (std::is_same_v<A, float> &&
                         (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>)) {
      constexpr int64_t W = Vectorized<T>::size();  // two float vectors per reduced vector
      for (; i + W <= n; i += W) {
        at::vec::convert_from_float<T>(fVec::loadu(acc + i), fVec::loadu(acc + i + fVec::size()))
            .store(out + i);
      }
    }
    for (; i < n; ++i) out[i] = static_cast<T>(acc[i]);
  } else {
    for (; i < n; ++i) out[i * stride] = static_cast<T>(acc[i]);
  }
}

template <typename A>
A read_scalar(const char* p, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return static_cast<A>(*reinterpret_cast<const float*>(p));
    case at::kDouble: return static_cast<A>(*reinterpret_cast<const double*>(p));
    case at::kHalf: return static_cast<A>(static_cast<float>(*reinterpret_cast<const at::Half*>(p)));
    case at::kBFloat16:
      return static_cast<A>(static_cast<float>(*reinterpret_cast<const at::BFloat16*>(p)));
    default: TORCH_CHECK(false, "pydiff::lincomb: unsupported dtype ", t);
  }
  return A(0);
}

// Processes elements [j0, j0 + n) of the inner dimension, with per-operand byte offsets `off`
// of the current outer index.
template <typename A>
void run_chunk(const LincombPlan& p, const int64_t* off, int64_t j0, int64_t n) {
  A acc[kChunk];
  A cbuf[kChunk];
  const int in = p.ndim - 1;
  const int K = static_cast<int>(p.coef_op.size());
  for (int k = 0; k < K; ++k) {
    const Operand& t = p.ops[1 + k];
    const char* tp = t.data + off[1 + k] + j0 * t.stride[in] * t.elsize;
    const int64_t ts = t.stride[in];
    const int ci = p.coef_op[k];
    const A scale = static_cast<A>(p.scales[k]);
    bool scalar_coef = true;
    A c = scale;
    if (ci >= 0) {
      const Operand& co = p.ops[ci];
      const char* cp = co.data + off[ci] + j0 * co.stride[in] * co.elsize;
      if (co.stride[in] == 0) {
        c = scale * read_scalar<A>(cp, co.dtype);
      } else {
        scalar_coef = false;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, co.dtype, "lincomb_coef", [&] {
          gather<A, scalar_t>(cbuf, reinterpret_cast<const scalar_t*>(cp), co.stride[in], n, scale);
        });
      }
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.dtype, "lincomb_term", [&] {
      const scalar_t* x = reinterpret_cast<const scalar_t*>(tp);
      const A* cv = cbuf;
      if (ts == 1) {
        if (scalar_coef) axpy_scalar<A, scalar_t>(acc, c, x, n, k == 0);
        else axpy_vector<A, scalar_t>(acc, cv, x, n, k == 0);
      } else if (scalar_coef) {
        if (k == 0) for (int64_t i = 0; i < n; ++i) acc[i] = c * static_cast<A>(x[i * ts]);
        else for (int64_t i = 0; i < n; ++i) acc[i] += c * static_cast<A>(x[i * ts]);
      } else {
        if (k == 0) for (int64_t i = 0; i < n; ++i) acc[i] = cv[i] * static_cast<A>(x[i * ts]);
        else for (int64_t i = 0; i < n; ++i) acc[i] += cv[i] * static_cast<A>(x[i * ts]);
      }
    });
  }
  const Operand& o = p.ops[0];
  char* op = o.data + off[0] + j0 * o.stride[in] * o.elsize;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.dtype, "lincomb_store", [&] {
    store<A, scalar_t>(acc, reinterpret_cast<scalar_t*>(op), o.stride[in], n);
  });
}

template <typename A>
void run_plan(const LincombPlan& p) {
  const int in = p.ndim - 1;
  const int64_t inner = p.size[in];
  const int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  const int64_t rows = p.numel / inner;
  const int64_t items = rows * chunks_per_row;
  const size_t nops = p.ops.size();
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<int64_t> off(nops);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t row = it / chunks_per_row;
      const int64_t j0 = (it % chunks_per_row) * kChunk;
      // byte offsets of this row: unravel `row` over the outer dims
      std::fill(off.begin(), off.end(), 0);
      int64_t r = row;
      for (int d = in - 1; d >= 0; --d) {
        const int64_t idx = r % p.size[d];
        r /= p.size[d];
        for (size_t q = 0; q < nops; ++q) off[q] += idx * p.ops[q].stride[d] * p.ops[q].elsize;
      }
      run_chunk<A>(p, off.data(), j0, std::min(kChunk, inner - j0));
    }
  };
  if (p.numel < kParallelMinElems) {
    work(0, items);
  } else {
    const int64_t grain = std::max<int64_t>(1, (kParallelMinElems / 2) / kChunk);
    at::parallel_for(0, items, grain, work);
  }
}

void lincomb_into(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                  at::ArrayRef<double> scales, const at::Tensor& out) {
  if (out.numel() == 0) return;
  // A 0-dim CPU coefficient is read directly; other coefficients must be CPU tensors here.
  const LincombPlan plan = make_lincomb_plan(terms, coeffs, coeff_index, scales, out);
  if (out.scalar_type() == at::kDouble) run_plan<double>(plan);
  else run_plan<float>(plan);
}

void lincomb_out_cpu(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                     at::ArrayRef<double> scales, const at::Tensor& out) {
  check_lincomb_args(terms, coeffs, coeff_index, scales);
  check_lincomb_out(terms, out);
  if (needs_temporary(terms, coeffs, out)) {
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    lincomb_into(terms, coeffs, coeff_index, scales, tmp);
    out.copy_(tmp);
    return;
  }
  lincomb_into(terms, coeffs, coeff_index, scales, out);
}

at::Tensor lincomb_cpu(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                       at::ArrayRef<double> scales) {
  check_lincomb_args(terms, coeffs, coeff_index, scales);
  at::Tensor out = at::empty(terms[0].sizes(), terms[0].options().memory_format(at::MemoryFormat::Contiguous));
  lincomb_into(terms, coeffs, coeff_index, scales, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiff, CPU, m) {
  m.impl("lincomb", &lincomb_cpu);
  m.impl("lincomb_out", &lincomb_out_cpu);
}

}  // namespace pydiff
