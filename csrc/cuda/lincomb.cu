// CUDA kernels of pydiff::lincomb (same schema and semantics as csrc/cpu/lincomb.cpp).
//
// Two kernels:
//  - vec: every term and out share one dtype, are contiguous, and every coefficient is a scalar
//    (0-dim tensor or float). Each thread moves 16 bytes per operand per step (float4 / 8 halves)
//    and keeps the sum in float (double for float64) registers: the solver-step common case,
//    bandwidth-bound.
//  - generic: anything else the plan allows (mixed dtypes, strides, per-sample and per-position
//    coefficients): one element per thread, offsets from the coalesced dims of the plan.
// lincomb_multi (several outputs from one read of the terms, see ops.cpp) has one kernel of the
// generic kind, the outputs summed in registers in order.
// Coefficient tensors on the device are read by the kernels (no host sync); 0-dim CPU
// coefficients and Python floats are folded into the per-term scale on the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../lincomb_plan.h"
#include "pydiff/common.h"

namespace pydiff {
namespace {

constexpr int kCudaMaxTerms = 16;
constexpr int kCudaMaxDims = 6;
constexpr int kThreads = 256;

enum DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

DType code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "pydiff::lincomb: unsupported dtype ", t);
  }
  return kF32;
}

template <typename A>
__device__ __forceinline__ A load_as(const char* p, int dt) {
  switch (dt) {
    case kF32: return static_cast<A>(*reinterpret_cast<const float*>(p));
    case kF64: return static_cast<A>(*reinterpret_cast<const double*>(p));
    case kF16: return static_cast<A>(static_cast<float>(*reinterpret_cast<const c10::Half*>(p)));
    default: return static_cast<A>(static_cast<float>(*reinterpret_cast<const c10::BFloat16*>(p)));
  }
}

template <typename A>
__device__ __forceinline__ void store_as(char* p, int dt, A v) {
  switch (dt) {
    case kF32: *reinterpret_cast<float*>(p) = static_cast<float>(v); break;
    case kF64: *reinterpret_cast<double*>(p) = static_cast<double>(v); break;
    case kF16: *reinterpret_cast<c10::Half*>(p) = c10::Half(static_cast<float>(v)); break;
    default: *reinterpret_cast<c10::BFloat16*>(p) = c10::BFloat16(static_cast<float>(v)); break;
  }
}

struct ScalarCoefs {
  int K;
  double scale[kCudaMaxTerms];
  const char* ptr[kCudaMaxTerms];  // device 0-dim coefficient or nullptr
  int dtype[kCudaMaxTerms];
};

template <typename A>
__device__ __forceinline__ A coef_value(const ScalarCoefs& c, int k) {
  A v = static_cast<A>(c.scale[k]);
  if (c.ptr[k] != nullptr) v *= load_as<A>(c.ptr[k], c.dtype[k]);
  return v;
}

// ---- vectorized same-dtype kernel ----------------------------------------------------------

template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

template <typename T, typename A>
__global__ void lincomb_vec_kernel(int64_t n,
                                   ScalarCoefs coefs, T* __restrict__ out,
                                   const T* t0, const T* t1, const T* t2, const T* t3,
                                   const T* t4, const T* t5, const T* t6, const T* t7) {
  // Up to 8 term pointers by value (kernel parameters live in constant memory).
  const T* tp[8] = {t0, t1, t2, t3, t4, t5, t6, t7};
  constexpr int N = Pack<T>::N;
  A c[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) c[k] = k < coefs.K ? coef_value<A>(coefs, k) : A(0);
  const int64_t npack = n / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < npack;
       i += stride) {
    A acc[N];
#pragma unroll
    for (int j = 0; j < N; ++j) acc[j] = A(0);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (k >= coefs.K) break;
      const Pack<T> p = reinterpret_cast<const Pack<T>*>(tp[k])[i];
#pragma unroll
      for (int j = 0; j < N; ++j) acc[j] += c[k] * static_cast<A>(p.v[j]);
    }
    Pack<T> o;
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = static_cast<T>(acc[j]);
    reinterpret_cast<Pack<T>*>(out)[i] = o;
  }
  // tail (n not a multiple of N): the first threads of the grid take one element each
  const int64_t t = npack * N + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t < n) {
    A acc = A(0);
    for (int k = 0; k < coefs.K; ++k) acc += c[k] * static_cast<A>(tp[k][t]);
    out[t] = static_cast<T>(acc);
  }
}

// ---- generic kernel ------------------------------------------------------------------------

struct GenericParams {
  int K;
  int ndim;
  int64_t numel;
  int64_t size[kCudaMaxDims];
  // operands: 0 = out, 1..K = terms, K+1.. = coefficient tensors
  const char* data[1 + 2 * kCudaMaxTerms];
  int dtype[1 + 2 * kCudaMaxTerms];
  int64_t stride[1 + 2 * kCudaMaxTerms][kCudaMaxDims];  // bytes
  int coef_op[kCudaMaxTerms];                           // operand index or -1
  double scale[kCudaMaxTerms];
  int nops;
};

template <typename A>
__global__ void lincomb_generic_kernel(GenericParams p) {
  const int64_t gstride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < p.numel;
       e += gstride) {
    int64_t off[1 + 2 * kCudaMaxTerms];
    for (int q = 0; q < p.nops; ++q) off[q] = 0;
    int64_t r = e;
    for (int d = p.ndim - 1; d >= 0; --d) {
      const int64_t idx = r % p.size[d];
      r /= p.size[d];
      for (int q = 0; q < p.nops; ++q) off[q] += idx * p.stride[q][d];
    }
    A acc = A(0);
    for (int k = 0; k < p.K; ++k) {
      A c = static_cast<A>(p.scale[k]);
      const int ci = p.coef_op[k];
      if (ci >= 0) c *= load_as<A>(p.data[ci] + off[ci], p.dtype[ci]);
      acc += c * load_as<A>(p.data[1 + k] + off[1 + k], p.dtype[1 + k]);
    }
    store_as<A>(const_cast<char*>(p.data[0]) + off[0], p.dtype[0], acc);
  }
}

int blocks_for(int64_t work) {
  const int64_t sm = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads,
                                                                 sm * 8)));
}

void lincomb_into_cuda(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                       at::ArrayRef<double> scales, const at::Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const int K = static_cast<int>(terms.size());
  TORCH_CHECK(K <= kCudaMaxTerms, "pydiff::lincomb (CUDA): at most ", kCudaMaxTerms,
              " terms are supported, got ", K);
  c10::cuda::CUDAGuard guard(out.device());
  auto stream = at::cuda::getCurrentCUDAStream();

  // Fold Python floats and 0-dim CPU coefficients into the scale; keep device 0-dim pointers.
  std::vector<double> sc(scales.begin(), scales.end());
  std::vector<at::Tensor> dev_coefs;
  std::vector<int64_t> dev_index(K, -1);
  bool all_scalar = true;
  for (int k = 0; k < K; ++k) {
    if (coeff_index[k] < 0) continue;
    const at::Tensor& c = coeffs[coeff_index[k]];
    if (c.device().is_cpu()) {  // 0-dim (checked): reading it costs no device sync
      sc[k] *= c.item<double>();
    } else {
      dev_index[k] = static_cast<int64_t>(dev_coefs.size());
      dev_coefs.push_back(c);
      if (c.numel() != 1) all_scalar = false;
    }
  }

  // Fast path: same dtype, contiguous, scalar coefficients, 16-byte aligned, at most 8 terms.
  bool vec_ok = all_scalar && K <= 8 && out.is_contiguous() &&
                reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  for (const auto& t : terms) {
    vec_ok = vec_ok && t.scalar_type() == out.scalar_type() && t.is_contiguous() &&
             reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  }
  if (vec_ok) {
    ScalarCoefs c{};
    c.K = K;
    for (int k = 0; k < K; ++k) {
      c.scale[k] = sc[k];
      c.ptr[k] = dev_index[k] >= 0 ? static_cast<const char*>(dev_coefs[dev_index[k]].data_ptr())
                                   : nullptr;
      c.dtype[k] = dev_index[k] >= 0 ? code(dev_coefs[dev_index[k]].scalar_type()) : 0;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "lincomb_vec",
                                    [&] {
      using A = acc_t<scalar_t>;
      const scalar_t* tp[8] = {};
      for (int k = 0; k < K; ++k) tp[k] = terms[k].data_ptr<scalar_t>();
      const int64_t npack = n / Pack<scalar_t>::N + 1;
      lincomb_vec_kernel<scalar_t, A><<<blocks_for(npack), kThreads, 0, stream>>>(
          n, c, out.data_ptr<scalar_t>(), tp[0], tp[1], tp[2], tp[3], tp[4], tp[5],
          tp[6], tp[7]);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }

  // Generic path over the coalesced plan (host coefficients already folded into the scales).
  std::vector<int64_t> idx2(K, -1);
  std::vector<at::Tensor> plan_coefs;
  for (int k = 0; k < K; ++k) {
    if (dev_index[k] < 0) continue;
    idx2[k] = static_cast<int64_t>(plan_coefs.size());
    plan_coefs.push_back(dev_coefs[dev_index[k]]);
  }
  LincombPlan plan = make_lincomb_plan(terms, plan_coefs, idx2, sc, out);
  if (plan.ndim > kCudaMaxDims) {  // rare: materialize the broadcasts, then it coalesces
    std::vector<at::Tensor> ts;
    for (const auto& t : terms) ts.push_back(t.contiguous());
    std::vector<at::Tensor> cs;
    for (const auto& c : plan_coefs) cs.push_back(c.expand(out.sizes()).contiguous());
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    lincomb_into_cuda(ts, cs, idx2, sc, tmp);
    out.copy_(tmp);
    return;
  }
  GenericParams p{};
  p.K = K;
  p.ndim = plan.ndim;
  p.numel = n;
  p.nops = static_cast<int>(plan.ops.size());
  for (int d = 0; d < plan.ndim; ++d) p.size[d] = plan.size[d];
  for (int q = 0; q < p.nops; ++q) {
    p.data[q] = plan.ops[q].data;
    p.dtype[q] = code(plan.ops[q].dtype);
    for (int d = 0; d < plan.ndim; ++d) p.stride[q][d] = plan.ops[q].stride[d] * plan.ops[q].elsize;
  }
  for (int k = 0; k < K; ++k) {
    p.coef_op[k] = plan.coef_op[k];
    p.scale[k] = plan.scales[k];
  }
  if (out.scalar_type() == at::kDouble) {
    lincomb_generic_kernel<double><<<blocks_for(n), kThreads, 0, stream>>>(p);
  } else {
    lincomb_generic_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- lincomb_multi ---------------------------------------------------------------------------

constexpr int kCudaMultiOps = 40;

struct MultiParams {
  int K, R, ndim, nops, nout;
  int64_t numel;
  int64_t size[kCudaMaxDims];
  // operands: 0..nout-1 = kept outputs, nout..nout+K-1 = terms, then coefficient tensors
  const char* data[kCudaMultiOps];
  int dtype[kCudaMultiOps];
  int64_t stride[kCudaMultiOps][kCudaMaxDims];  // bytes
  int source[kMaxEntries];
  int coef_op[kMaxEntries];
  double scale[kMaxEntries];
  int count[kMaxOutputs];
  int slot[kMaxOutputs];  // operand of a kept output, or -1
};

template <typename A>
__device__ __forceinline__ A pick(const A (&acc)[kMaxOutputs], int l) {
  return l == 0 ? acc[0] : l == 1 ? acc[1] : l == 2 ? acc[2] : acc[3];
}

template <typename A>
__global__ void lincomb_multi_kernel(MultiParams p) {
  const int64_t gstride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < p.numel;
       e += gstride) {
    int64_t off[kCudaMultiOps];
    for (int q = 0; q < p.nops; ++q) off[q] = 0;
    int64_t r = e;
    for (int d = p.ndim - 1; d >= 0; --d) {
      const int64_t idx = r % p.size[d];
      r /= p.size[d];
      for (int q = 0; q < p.nops; ++q) off[q] += idx * p.stride[q][d];
    }
    A acc[kMaxOutputs];
    int en = 0;
#pragma unroll
    for (int j = 0; j < kMaxOutputs; ++j) {
      acc[j] = A(0);
      if (j >= p.R) continue;
      A sum = A(0);
      for (int q = 0; q < p.count[j]; ++q, ++en) {
        A c = static_cast<A>(p.scale[en]);
        const int ci = p.coef_op[en];
        if (ci >= 0) c *= load_as<A>(p.data[ci] + off[ci], p.dtype[ci]);
        const int src = p.source[en];
        const A v = src < p.K ? load_as<A>(p.data[p.nout + src] + off[p.nout + src],
                                           p.dtype[p.nout + src])
                              : pick(acc, src - p.K);
        sum += c * v;
      }
      acc[j] = sum;
      if (p.slot[j] >= 0) {
        store_as<A>(const_cast<char*>(p.data[p.slot[j]]) + off[p.slot[j]], p.dtype[p.slot[j]],
                    sum);
      }
    }
  }
}

void lincomb_multi_into_cuda(at::TensorList terms, at::TensorList coeffs,
                             at::IntArrayRef coeff_index, at::ArrayRef<double> scales,
                             at::IntArrayRef sources, at::IntArrayRef counts,
                             at::IntArrayRef keep, at::TensorList outs) {
  const int64_t n = outs[0].numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(outs[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int E = static_cast<int>(sources.size());
  // Fold 0-dim CPU coefficients into the scales (no device sync); device tensors stay.
  std::vector<double> sc(scales.begin(), scales.end());
  std::vector<int64_t> idx(E, -1);
  std::vector<at::Tensor> dev;
  for (int e = 0; e < E; ++e) {
    if (coeff_index[e] < 0) continue;
    const at::Tensor& c = coeffs[coeff_index[e]];
    if (c.device().is_cpu()) {
      sc[e] *= c.item<double>();
    } else {
      idx[e] = static_cast<int64_t>(dev.size());
      dev.push_back(c);
    }
  }
  LincombPlan plan = make_lincomb_plan(terms, dev, idx, sc, outs);
  TORCH_CHECK(static_cast<int>(plan.ops.size()) <= kCudaMultiOps,
              "pydiff::lincomb_multi (CUDA): at most ", kCudaMultiOps,
              " operands (outputs, terms and coefficient tensors) are supported, got ",
              plan.ops.size());
  if (plan.ndim > kCudaMaxDims) {  // rare: materialize the broadcasts, then it coalesces
    std::vector<at::Tensor> ts;
    for (const auto& t : terms) ts.push_back(t.contiguous());
    std::vector<at::Tensor> cs;
    for (const auto& c : dev) cs.push_back(c.expand(outs[0].sizes()).contiguous());
    lincomb_multi_into_cuda(ts, cs, idx, sc, sources, counts, keep, outs);
    return;
  }
  MultiParams p{};
  p.K = static_cast<int>(terms.size());
  p.R = static_cast<int>(counts.size());
  p.nout = static_cast<int>(outs.size());
  p.ndim = plan.ndim;
  p.numel = n;
  p.nops = static_cast<int>(plan.ops.size());
  for (int d = 0; d < plan.ndim; ++d) p.size[d] = plan.size[d];
  for (int q = 0; q < p.nops; ++q) {
    p.data[q] = plan.ops[q].data;
    p.dtype[q] = code(plan.ops[q].dtype);
    for (int d = 0; d < plan.ndim; ++d) p.stride[q][d] = plan.ops[q].stride[d] * plan.ops[q].elsize;
  }
  for (int e = 0; e < E; ++e) {
    p.source[e] = static_cast<int>(sources[e]);
    p.coef_op[e] = plan.coef_op[e];
    p.scale[e] = plan.scales[e];
  }
  int slot = 0;
  for (int j = 0; j < p.R; ++j) {
    p.count[j] = static_cast<int>(counts[j]);
    p.slot[j] = keep[j] ? slot++ : -1;
  }
  if (terms[0].scalar_type() == at::kDouble) {
    lincomb_multi_kernel<double><<<blocks_for(n), kThreads, 0, stream>>>(p);
  } else {
    lincomb_multi_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> lincomb_multi_cuda(at::TensorList terms, at::TensorList coeffs,
                                           at::IntArrayRef coeff_index,
                                           at::ArrayRef<double> scales, at::IntArrayRef sources,
                                           at::IntArrayRef counts, at::IntArrayRef keep) {
  check_lincomb_multi_args(terms, coeffs, coeff_index, scales, sources, counts, keep);
  std::vector<at::Tensor> outs;
  for (int64_t k : keep) {
    if (k) {
      outs.push_back(at::empty(terms[0].sizes(),
                               terms[0].options().memory_format(at::MemoryFormat::Contiguous)));
    }
  }
  if (!outs.empty()) {
    lincomb_multi_into_cuda(terms, coeffs, coeff_index, scales, sources, counts, keep, outs);
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiff, CUDA, m) {
  m.impl("lincomb_multi", &lincomb_multi_cuda);
  m.impl("lincomb", &lincomb_via<lincomb_into_cuda>);
  m.impl("lincomb_out", &lincomb_out_via<lincomb_into_cuda>);
}

}  // namespace pydiff
