// CUDA kernels of pydiff::attention (+ backward) and pydiff::linear_attention (+ backward).
//
// Softmax attention, one warp per query row, ROWS rows per block. The block walks the keys in
// tiles that it stages in shared memory (K and V tile, Bc keys each), and each warp runs the
// online softmax of include/pydiff/common.h over them: the query row and the output
// accumulator live in registers (lane l owns dims l, l+32, ...), dot products are warp
// reductions. Nothing of size L x L exists; the row log-sum-exp is written for the backward.
// The backward recomputes the probabilities from the lse in two kernels without atomics:
// dQ (a warp per query row, K/V tiles in shared memory) and dK/dV (a warp per key row, Q/dO
// tiles in shared memory).
//
// These kernels are the exact, O(L)-memory path for every dtype (float64 included) and the
// reference that our own faster kernels are checked against on a GPU; pydiff.ops.attention sends
// float16/bfloat16/float32 to torch's SDPA backends instead, which are far faster on CUDA
// (BENCHMARKS.md, "Kernels on a GPU").
//
// Linear attention forward: [K^T V | K^T 1] is a split-L reduction kernel (float32 or float64
// accumulators, read in the input dtype, no converted copies) plus a kernel that sums the
// chunks, Q [K^T V | K^T 1] one cuBLAS GEMM in the input dtype with the denominator as an extra
// column, and the normalization one elementwise kernel. The backward is GEMMs in the input
// dtype plus one fused elementwise kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../attention_backward.h"
#include "pydiff/common.h"

namespace pydiff {
namespace {

constexpr int kWarp = 32;
constexpr int kRows = 8;          // warps (query or key rows) per block
constexpr int kMaxPerLane = 8;    // head dims up to 8 * 32 = 256
// Dynamic shared memory a block may take without cudaFuncSetAttribute on every GPU since sm_50.
constexpr int64_t kSmemBudget = 48 * 1024;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct Dims {
  int64_t B, H, Lq, Lk, D, Dv;
};

// Rows per shared-memory tile for a kernel that stages `per_row` elements of T per row (K and V
// rows for the forward and dQ; Q and dO rows plus lse and delta for dK/dV), so that the tile
// fits the default dynamic shared-memory budget. Each kernel sizes its own tile: sizing the
// dK/dV tile for K and V rows alone overflowed the budget for float64 at D = 64 and 80.
template <typename T>
int tile_rows(int64_t per_row) {
  const int64_t bytes = per_row * static_cast<int64_t>(sizeof(T));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(64, kSmemBudget / bytes)));
}

// The launch must fit the device: checked here, with a message, rather than left to surface as
// "invalid argument" from the launch.
void check_launch(const char* what, size_t smem, int threads) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(static_cast<int64_t>(smem) <= static_cast<int64_t>(prop->sharedMemPerBlock) &&
                  threads <= prop->maxThreadsPerBlock,
              "pydiff::", what, " (CUDA): a block needs ", smem, " bytes of shared memory and ",
              threads, " threads; ", prop->name, " allows ", prop->sharedMemPerBlock, " and ",
              prop->maxThreadsPerBlock);
}

// Cooperative copy of `rows` rows of width w (row stride ld, in elements) into shared memory.
template <typename T>
__device__ __forceinline__ void stage(T* dst, const T* src, int rows, int64_t w, int64_t ld) {
  for (int64_t x = threadIdx.x; x < rows * w; x += blockDim.x) {
    dst[x] = src[(x / w) * ld + (x % w)];
  }
}

template <typename T>
__global__ void __launch_bounds__(kRows * kWarp)
    attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const bool* __restrict__ mask, T* __restrict__ out, T* __restrict__ lse, Dims s,
                    T scale, int bc) {
  extern __shared__ unsigned char smem_raw[];
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + bc * s.D;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t bh = blockIdx.y, b = bh / s.H;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + warp;
  const bool active = row < s.Lq;
  const T* qrow = q + (bh * s.Lq + (active ? row : 0)) * s.D;
  T qr[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t d = lane + t * kWarp;
    qr[t] = (active && d < s.D) ? qrow[d] : T(0);
    acc[t] = T(0);
  }
  SoftmaxState<T> st = softmax_init<T>();
  const T* kb = k + bh * s.Lk * s.D;
  const T* vb = v + bh * s.Lk * s.Dv;
  for (int64_t k0 = 0; k0 < s.Lk; k0 += bc) {
    const int n = static_cast<int>(min(static_cast<int64_t>(bc), s.Lk - k0));
    __syncthreads();
    stage(ks, kb + k0 * s.D, n, s.D, s.D);
    stage(vs, vb + k0 * s.Dv, n, s.Dv, s.Dv);
    __syncthreads();
    if (!active) continue;
    for (int j = 0; j < n; ++j) {
      if (mask != nullptr && !mask[b * s.Lk + k0 + j]) continue;
      T dot = T(0);
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) {
        const int64_t d = lane + t * kWarp;
        if (d < s.D) dot += qr[t] * ks[j * s.D + d];
      }
      const T sc = warp_sum(dot) * scale;
      const T alpha = softmax_advance(st, sc);
      const T p = exp(sc - softmax_ref(st));
      st.l += p;
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) {
        const int64_t e = lane + t * kWarp;
        if (e < s.Dv) acc[t] = acc[t] * alpha + p * vs[j * s.Dv + e];
      }
    }
  }
  if (!active) return;
  const T inv = softmax_inv_sum(st);
  T* orow = out + (bh * s.Lq + row) * s.Dv;
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t e = lane + t * kWarp;
    if (e < s.Dv) orow[e] = acc[t] * inv;
  }
  if (lane == 0) lse[bh * s.Lq + row] = softmax_lse(st);
}

// dQ_i = scale * sum_j P_ij (dP_ij - delta_i) k_j, dP_ij = dO_i . v_j
template <typename T>
__global__ void __launch_bounds__(kRows * kWarp)
    attn_bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                       const T* __restrict__ dout, const T* __restrict__ lse,
                       const T* __restrict__ delta, const bool* __restrict__ mask,
                       T* __restrict__ dq, Dims s, T scale, int bc) {
  extern __shared__ unsigned char smem_raw[];
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + bc * s.D;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t bh = blockIdx.y, b = bh / s.H;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + warp;
  const bool active = row < s.Lq;
  const int64_t r = active ? row : 0;
  T qr[kMaxPerLane], dor[kMaxPerLane], g[kMaxPerLane];
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t d = lane + t * kWarp;
    qr[t] = (active && d < s.D) ? q[(bh * s.Lq + r) * s.D + d] : T(0);
    dor[t] = (active && d < s.Dv) ? dout[(bh * s.Lq + r) * s.Dv + d] : T(0);
    g[t] = T(0);
  }
  const T l = active ? lse[bh * s.Lq + r] : T(0);
  const T dl = active ? delta[bh * s.Lq + r] : T(0);
  const T* kb = k + bh * s.Lk * s.D;
  const T* vb = v + bh * s.Lk * s.Dv;
  for (int64_t k0 = 0; k0 < s.Lk; k0 += bc) {
    const int n = static_cast<int>(min(static_cast<int64_t>(bc), s.Lk - k0));
    __syncthreads();
    stage(ks, kb + k0 * s.D, n, s.D, s.D);
    stage(vs, vb + k0 * s.Dv, n, s.Dv, s.Dv);
    __syncthreads();
    if (!active) continue;
    for (int j = 0; j < n; ++j) {
      if (mask != nullptr && !mask[b * s.Lk + k0 + j]) continue;
      T sd = T(0), pd = T(0);
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) {
        const int64_t d = lane + t * kWarp;
        if (d < s.D) sd += qr[t] * ks[j * s.D + d];
        if (d < s.Dv) pd += dor[t] * vs[j * s.Dv + d];
      }
      const T p = softmax_prob(warp_sum(sd) * scale, l);
      const T ds = p * (warp_sum(pd) - dl) * scale;
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) {
        const int64_t d = lane + t * kWarp;
        if (d < s.D) g[t] += ds * ks[j * s.D + d];
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t d = lane + t * kWarp;
    if (d < s.D) dq[(bh * s.Lq + row) * s.D + d] = g[t];
  }
}

// dV_j = sum_i P_ij dO_i,  dK_j = scale * sum_i P_ij (dP_ij - delta_i) q_i
template <typename T>
__global__ void __launch_bounds__(kRows * kWarp)
    attn_bwd_dkv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ dout, const T* __restrict__ lse,
                        const T* __restrict__ delta, const bool* __restrict__ mask,
                        T* __restrict__ dk, T* __restrict__ dv, Dims s, T scale, int bc) {
  extern __shared__ unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* dos = qs + bc * s.D;
  T* ls = dos + bc * s.Dv;
  T* des = ls + bc;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t bh = blockIdx.y, b = bh / s.H;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kRows + warp;
  const bool active = col < s.Lk && (mask == nullptr || mask[b * s.Lk + col]);
  const int64_t c = col < s.Lk ? col : 0;
  T kr[kMaxPerLane], vr[kMaxPerLane], gk[kMaxPerLane], gv[kMaxPerLane];
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t d = lane + t * kWarp;
    kr[t] = d < s.D ? k[(bh * s.Lk + c) * s.D + d] : T(0);
    vr[t] = d < s.Dv ? v[(bh * s.Lk + c) * s.Dv + d] : T(0);
    gk[t] = gv[t] = T(0);
  }
  const T* qb = q + bh * s.Lq * s.D;
  const T* db = dout + bh * s.Lq * s.Dv;
  for (int64_t q0 = 0; q0 < s.Lq; q0 += bc) {
    const int n = static_cast<int>(min(static_cast<int64_t>(bc), s.Lq - q0));
    __syncthreads();
    stage(qs, qb + q0 * s.D, n, s.D, s.D);
    stage(dos, db + q0 * s.Dv, n, s.Dv, s.Dv);
    stage(ls, lse + bh * s.Lq + q0, n, 1, 1);
    stage(des, delta + bh * s.Lq + q0, n, 1, 1);
    __syncthreads();
    if (!active) continue;
    for (int i = 0; i < n; ++i) {
      T sd = T(0), pd = T(0);
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) {
        const int64_t d = lane + t * kWarp;
        if (d < s.D) sd += kr[t] * qs[i * s.D + d];
        if (d < s.Dv) pd += vr[t] * dos[i * s.Dv + d];
      }
      const T p = softmax_prob(warp_sum(sd) * scale, ls[i]);
      const T ds = p * (warp_sum(pd) - des[i]) * scale;
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) {
        const int64_t d = lane + t * kWarp;
        if (d < s.Dv) gv[t] += p * dos[i * s.Dv + d];
        if (d < s.D) gk[t] += ds * qs[i * s.D + d];
      }
    }
  }
  if (col >= s.Lk) return;
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {  // masked keys get exactly 0
    const int64_t d = lane + t * kWarp;
    if (d < s.D) dk[(bh * s.Lk + col) * s.D + d] = gk[t];
    if (d < s.Dv) dv[(bh * s.Lk + col) * s.Dv + d] = gv[t];
  }
}

void check_cuda_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiff::attention: q, k, v must be [B, H, L, D]");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) &&
                  v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == k.size(2),
              "pydiff::attention: shapes do not match: q ", q.sizes(), ", k ", k.sizes(), ", v ",
              v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "pydiff::attention: q, k, v must share a dtype");
  TORCH_CHECK(q.size(3) <= kMaxPerLane * kWarp && v.size(3) <= kMaxPerLane * kWarp,
              "pydiff::attention (CUDA): head dims up to ", kMaxPerLane * kWarp, " supported");
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 2 &&
                    mask->size(0) == q.size(0) && mask->size(1) == k.size(2),
                "pydiff::attention: mask must be a bool [B, Lk] key-padding mask");
    TORCH_CHECK(mask->device() == q.device(), "pydiff::attention: mask is on ", mask->device());
  }
}

at::ScalarType acc_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale,
                                                  const std::optional<at::Tensor>& mask) {
  check_cuda_attention(q, k, v, mask);
  c10::cuda::CUDAGuard guard(q.device());
  const auto acc = acc_of(q.scalar_type());
  const at::Tensor qc = q.to(acc).contiguous(), kc = k.to(acc).contiguous(),
                   vc = v.to(acc).contiguous();
  const Dims s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  at::Tensor out = at::empty({s.B, s.H, s.Lq, s.Dv}, q.options().dtype(acc));
  at::Tensor lse = at::empty({s.B, s.H, s.Lq}, q.options().dtype(acc));
  at::Tensor m;
  if (mask.has_value() && mask->defined()) m = mask->contiguous();
  if (s.B * s.H * s.Lq > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "pydiff_attention_fwd", [&] {
      const int bc = tile_rows<scalar_t>(s.D + s.Dv);
      const dim3 grid((s.Lq + kRows - 1) / kRows, s.B * s.H);
      const size_t smem = static_cast<size_t>(bc) * (s.D + s.Dv) * sizeof(scalar_t);
      check_launch("attention", smem, kRows * kWarp);
      attn_fwd_kernel<scalar_t><<<grid, kRows * kWarp, smem, at::cuda::getCurrentCUDAStream()>>>(
          qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
          m.defined() ? m.data_ptr<bool>() : nullptr, out.data_ptr<scalar_t>(),
          lse.data_ptr<scalar_t>(), s, static_cast<scalar_t>(scale), bc);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    double scale, const std::optional<at::Tensor>& mask) {
  check_cuda_attention(q, k, v, mask);
  c10::cuda::CUDAGuard guard(q.device());
  const auto acc = acc_of(q.scalar_type());
  const at::Tensor qc = q.to(acc).contiguous(), kc = k.to(acc).contiguous(),
                   vc = v.to(acc).contiguous(), doc = grad_out.to(acc).contiguous();
  const at::Tensor delta = attention_delta(doc, out, grad_lse, acc);
  const at::Tensor lsec = lse.to(acc).contiguous();
  const Dims s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  at::Tensor dq, dk, dv;
  std::tie(dq, dk, dv) = zero_grads(q, k, v, acc);
  at::Tensor m;
  if (mask.has_value() && mask->defined()) m = mask->contiguous();
  const bool* mp = m.defined() ? m.data_ptr<bool>() : nullptr;
  if (s.B * s.H * s.Lq > 0 && s.Lk > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(acc, "pydiff_attention_bwd", [&] {
      const scalar_t sc = static_cast<scalar_t>(scale);
      const int bc = tile_rows<scalar_t>(s.D + s.Dv);
      const size_t smem_kv = static_cast<size_t>(bc) * (s.D + s.Dv) * sizeof(scalar_t);
      check_launch("attention_backward", smem_kv, kRows * kWarp);
      attn_bwd_dq_kernel<scalar_t>
          <<<dim3((s.Lq + kRows - 1) / kRows, s.B * s.H), kRows * kWarp, smem_kv, stream>>>(
              qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
              doc.data_ptr<scalar_t>(), lsec.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), mp,
              dq.data_ptr<scalar_t>(), s, sc, bc);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int bq = tile_rows<scalar_t>(s.D + s.Dv + 2);  // Q, dO rows + lse, delta
      const size_t smem_q = static_cast<size_t>(bq) * (s.D + s.Dv + 2) * sizeof(scalar_t);
      check_launch("attention_backward", smem_q, kRows * kWarp);
      attn_bwd_dkv_kernel<scalar_t>
          <<<dim3((s.Lk + kRows - 1) / kRows, s.B * s.H), kRows * kWarp, smem_q, stream>>>(
              qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
              doc.data_ptr<scalar_t>(), lsec.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), mp,
              dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), s, sc, bq);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

// ---- linear attention ----------------------------------------------------------------------
//
// The forward and backward work with the key MEAN [K^T V | K^T 1] / Lk rather than the sum: the
// normalization is invariant to scaling numerator and denominator alike (with eps / Lk), and
// in float16 the sum over thousands of keys overflows once multiplied by q.

// Four consecutive accumulators from shared memory in one (float) or two (double) 16-byte loads.
__device__ __forceinline__ void load4(const float* p, float (&r)[4]) {
  const float4 x = *reinterpret_cast<const float4*>(p);
  r[0] = x.x, r[1] = x.y, r[2] = x.z, r[3] = x.w;
}
__device__ __forceinline__ void load4(const double* p, double (&r)[4]) {
  const double2 x = *reinterpret_cast<const double2*>(p);
  const double2 y = *reinterpret_cast<const double2*>(p + 2);
  r[0] = x.x, r[1] = x.y, r[2] = y.x, r[3] = y.y;
}

// Partial sums of K^T V and K^T 1 over one chunk of key rows, for a 64 x 64 tile of [D, Dv]:
// part_kv[chunk, bh, d, e] = sum_r k[r, d] v[r, e] and part_ks[chunk, bh, d] = sum_r k[r, d].
// A split over L, since one (batch, head) has only D x Dv outputs but L rows to reduce; the
// chunks are summed afterwards (deterministically, no atomics). Rows are staged in shared
// memory in the accumulation type, the next tile's rows fetched into registers while the
// current one is used; each of the 256 threads owns a 4 x 4 block of the tile.
constexpr int kKvTile = 64;
constexpr int kKvRows = 32;
constexpr int kKvThreads = 256;
constexpr int kKvPerThread = kKvRows * kKvTile / kKvThreads;

// This thread's share of the next staged tile (rows r0 .. r0 + kKvRows) into registers, in the
// input type: converted only when stored to shared memory, so the loads stay in flight.
template <typename T>
__device__ __forceinline__ void kv_fetch(const T* __restrict__ kb, const T* __restrict__ vb,
                                         T (&kr)[kKvPerThread], T (&vr)[kKvPerThread],
                                         int64_t r0, int64_t r_end, int64_t D, int64_t Dv,
                                         int64_t d0, int64_t e0) {
#pragma unroll
  for (int i = 0; i < kKvPerThread; ++i) {
    const int x = threadIdx.x + i * kKvThreads;
    const int64_t r = r0 + x / kKvTile;
    const int c = x % kKvTile;
    kr[i] = (r < r_end && d0 + c < D) ? kb[r * D + d0 + c] : T(0);
    vr[i] = (r < r_end && e0 + c < Dv) ? vb[r * Dv + e0 + c] : T(0);
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kKvThreads)
    linear_kv_kernel(const T* __restrict__ k, const T* __restrict__ v, A* __restrict__ part_kv,
                     A* __restrict__ part_ks, int64_t L, int64_t D, int64_t Dv,
                     int64_t rows_per_chunk, int tiles_v) {
  __shared__ __align__(16) A ks[kKvRows][kKvTile];
  __shared__ __align__(16) A vs[kKvRows][kKvTile];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int tv = blockIdx.y % tiles_v;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y / tiles_v) * kKvTile, e0 = tv * kKvTile;
  const int64_t bh = blockIdx.z, BH = gridDim.z, chunk = blockIdx.x;
  const int64_t r_begin = chunk * rows_per_chunk;
  const int64_t r_end = min(L, r_begin + rows_per_chunk);
  const T* kb = k + bh * L * D;
  const T* vb = v + bh * L * Dv;
  const bool sums = tv == 0 && tx == 0;  // one column of threads also sums K's rows
  A acc[4][4], sk[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    sk[i] = A(0);
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
  }
  T kr[kKvPerThread], vr[kKvPerThread];
  if (r_begin < r_end) kv_fetch(kb, vb, kr, vr, r_begin, r_end, D, Dv, d0, e0);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kKvRows) {
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kKvPerThread; ++i) {
      const int x = threadIdx.x + i * kKvThreads;
      ks[x / kKvTile][x % kKvTile] = static_cast<A>(kr[i]);
      vs[x / kKvTile][x % kKvTile] = static_cast<A>(vr[i]);
    }
    __syncthreads();
    if (r0 + kKvRows < r_end) {  // in flight during the products below
      kv_fetch(kb, vb, kr, vr, r0 + kKvRows, r_end, D, Dv, d0, e0);
    }
#pragma unroll 8
    for (int rr = 0; rr < kKvRows; ++rr) {
      A a[4], b[4];
      load4(&ks[rr][ty * 4], a);
      load4(&vs[rr][tx * 4], b);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
      }
      if (sums) {
#pragma unroll
        for (int i = 0; i < 4; ++i) sk[i] += a[i];
      }
    }
  }
  A* pkv = part_kv + (chunk * BH + bh) * D * Dv;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t d = d0 + ty * 4 + i;
    if (d >= D) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t e = e0 + tx * 4 + j;
      if (e < Dv) pkv[d * Dv + e] = acc[i][j];
    }
    if (sums) part_ks[(chunk * BH + bh) * D + d] = sk[i];
  }
}

// kv[bh, d, :] = [sum_c part_kv[c, bh, d, :] | sum_c part_ks[c, bh, d] | 0 ...] * scale, in the
// output type O, rows of width W.
template <typename A, typename O>
__global__ void linear_kv_finalize_kernel(const A* __restrict__ part_kv,
                                          const A* __restrict__ part_ks, O* __restrict__ kv,
                                          int64_t chunks, int64_t rows, int64_t Dv, int64_t W,
                                          A scale) {
  const int64_t n = rows * W;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < n;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = x / W, e = x % W;
    A s = A(0);
    if (e < Dv) {
      for (int64_t c = 0; c < chunks; ++c) s += part_kv[(c * rows + row) * Dv + e];
    } else if (e == Dv) {
      for (int64_t c = 0; c < chunks; ++c) s += part_ks[c * rows + row];
    }
    kv[x] = static_cast<O>(s * scale);
  }
}

int grid_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + 255) / 256, 65535)); }

// Which implementation a step of linear attention takes: the environment variable `name` if
// set (benchmarks/ops_gpu.py times each, tests/gpu checks each), else `fallback`, the one
// measured faster for the dtype (BENCHMARKS.md, "Kernels on a GPU"): for float16/bfloat16,
// K^T V by cuBLAS and the tensor-core forward; for float32/float64, our reduction kernel and
// cuBLAS + normalization. Read per call (cheap next to a launch).
bool is_half(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

bool linear_path_is(const char* name, const char* value, const char* fallback) {
  const char* set = std::getenv(name);
  return std::strcmp(set != nullptr && *set != '\0' ? set : fallback, value) == 0;
}

// Row width of [K^T V | K^T 1 | 0 ...]: Dv + 1 padded to a multiple of 16 (aligned rows for the
// GEMMs, whole 16-column tiles for the tensor-core kernel).
int64_t kv_width(int64_t Dv) { return (Dv + 1 + 15) / 16 * 16; }

// The same through cuBLAS (tensor cores for half types): K^T V with alpha = 1 / Lk, so the sum
// is never formed in the half type, and the key mean.
at::Tensor linear_kv_mean_gemm(const at::Tensor& k, const at::Tensor& v,
                               at::ScalarType out_dtype) {
  const int64_t B = k.size(0), H = k.size(1), L = k.size(2), D = k.size(3), Dv = v.size(3);
  at::Tensor kv = at::zeros({B, H, D, kv_width(Dv)}, k.options().dtype(out_dtype));
  if (B * H == 0 || D == 0 || L == 0) return kv;
  const at::Tensor k3 = k.reshape({B * H, L, D}), v3 = v.reshape({B * H, L, Dv});
  const at::Tensor kvv = at::baddbmm(at::empty({B * H, D, Dv}, k.options()), k3.transpose(1, 2),
                                     v3, /*beta=*/0, /*alpha=*/1.0 / static_cast<double>(L));
  at::Tensor kv3 = kv.view({B * H, D, kv.size(-1)});
  kv3.narrow(-1, 0, Dv).copy_(kvv);
  kv3.select(-1, Dv).copy_(k3.mean(1));
  return kv;
}

// [K^T V | K^T 1 | 0 ...] / Lk per (batch, head), accumulated in `acc`, returned in `out_dtype`
// as [B, H, D, kv_width(Dv)].
at::Tensor linear_kv_mean(const at::Tensor& k, const at::Tensor& v, at::ScalarType acc,
                          at::ScalarType out_dtype) {
  if (linear_path_is("PYDIFF_LINEAR_KV", "gemm", is_half(k.scalar_type()) ? "gemm" : "kernel")) {
    return linear_kv_mean_gemm(k, v, out_dtype);
  }
  const int64_t B = k.size(0), H = k.size(1), L = k.size(2), D = k.size(3), Dv = v.size(3);
  const int64_t BH = B * H, W = kv_width(Dv);
  if (BH == 0 || D == 0 || L == 0) return at::zeros({B, H, D, W}, k.options().dtype(out_dtype));
  const at::Tensor kc = k.contiguous(), vc = v.contiguous();
  const int tiles_d = static_cast<int>((D + kKvTile - 1) / kKvTile);
  const int tiles_v = static_cast<int>((Dv + kKvTile - 1) / kKvTile);
  TORCH_CHECK(BH <= 65535 && tiles_d * tiles_v <= 65535,
              "pydiff::linear_attention (CUDA): batch * heads must be at most 65535, got ", BH);
  // enough chunks for about four blocks per multiprocessor, each at least a staged tile of rows
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = BH * tiles_d * tiles_v;
  const int64_t want = std::max<int64_t>(1, (4 * sms + blocks - 1) / blocks);
  int64_t rows = (L + want - 1) / want;
  rows = (rows + kKvRows - 1) / kKvRows * kKvRows;
  const int64_t chunks = (L + rows - 1) / rows;
  const auto opts = k.options().dtype(acc);
  at::Tensor part_kv = at::empty({chunks, BH, D, Dv}, opts);
  at::Tensor part_ks = at::empty({chunks, BH, D}, opts);
  at::Tensor kv = at::empty({B, H, D, W}, k.options().dtype(out_dtype));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "pydiff_linear_kv",
                                  [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc, "pydiff_linear_kv_acc", [&] {
      using A = scalar_t;
      linear_kv_kernel<T, A><<<dim3(chunks, tiles_d * tiles_v, BH), kKvThreads, 0, stream>>>(
          kc.data_ptr<T>(), vc.data_ptr<T>(), part_kv.data_ptr<A>(), part_ks.data_ptr<A>(), L,
          D, Dv, rows, tiles_v);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype,
                                      "pydiff_linear_kv_out", [&] {
        linear_kv_finalize_kernel<A, scalar_t><<<grid_for(BH * D * W), 256, 0, stream>>>(
            part_kv.data_ptr<A>(), part_ks.data_ptr<A>(), kv.data_ptr<scalar_t>(), chunks,
            BH * D, Dv, W, static_cast<A>(1.0 / static_cast<double>(L)));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return kv;
}

// out[r, e] = t[r, e] / (t[r, Dv] + eps), t = Q [K^T V | K^T 1 | 0 ...] / Lk of row width `ld`,
// computed in the accumulation type A and written in the output's type T.
template <typename T, typename A>
__global__ void linear_normalize_kernel(const T* __restrict__ t, T* __restrict__ out,
                                        int64_t rows, int64_t Dv, int64_t ld, A eps) {
  const int64_t n = rows * Dv;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < n;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = x / Dv, e = x % Dv;
    const T* tr = t + r * ld;
    out[x] = static_cast<T>(static_cast<A>(tr[e]) / (static_cast<A>(tr[Dv]) + eps));
  }
}

// dA[r] = [g / den | -(g . num) / den^2] (den = t[r, Dv] + eps), one warp per row, computed in
// A; t and dA have rows of width Dv + 1.
template <typename T, typename A>
__global__ void linear_grad_kernel(const T* __restrict__ t, const T* __restrict__ g,
                                   T* __restrict__ da, int64_t rows, int64_t Dv, A eps) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  const T* tr = t + r * (Dv + 1);
  const T* gr = g + r * Dv;
  T* dr = da + r * (Dv + 1);
  const A inv = A(1) / (static_cast<A>(tr[Dv]) + eps);
  A go = A(0);
  for (int64_t e = lane; e < Dv; e += kWarp) {
    const A ge = static_cast<A>(gr[e]);
    go += ge * static_cast<A>(tr[e]);
    dr[e] = static_cast<T>(ge * inv);
  }
  go = warp_sum(go);
  if (lane == 0) dr[Dv] = static_cast<T>(-go * inv * inv);
}

void check_linear(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiff::linear_attention: q, k, v must be [B, H, L, D]");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "pydiff::linear_attention: q, k, v must share a dtype");
}

// Tensor-core (WMMA) forward for float16/bfloat16: out = (q kv)[:Dv] / ((q kv)[Dv] + eps) in one
// pass over q, with kv = [K^T V | K^T 1 | 0 ...] / Lk (width W, NF tiles of 16) staged in shared
// memory. Four warps, 16 query rows each; float32 accumulation; the normalization is applied to
// the accumulators, so the [Lq, W] product is never written out.
constexpr int kApplyWarps = 4;
constexpr int kApplyRows = 16 * kApplyWarps;
constexpr int kApplyMaxTiles = 9;  // W up to 144 (Dv up to 143)

template <typename T>
struct WmmaType;
template <>
struct WmmaType<at::Half> {
  using type = __half;
};
template <>
struct WmmaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T, int NF>
__global__ void __launch_bounds__(kApplyWarps * kWarp)
    linear_apply_wmma_kernel(const T* __restrict__ q, const T* __restrict__ kv,
                             T* __restrict__ out, int64_t Lq, int D, int Dv, float eps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using WT = typename WmmaType<T>::type;
  constexpr int W = NF * 16;
  // WMMA loads and stores need 32-byte aligned tiles: every offset below is a multiple of that
  extern __shared__ __align__(128) unsigned char apply_smem[];
  uint16_t* kvs = reinterpret_cast<uint16_t*>(apply_smem);  // [D][W]
  uint16_t* qs = kvs + D * W;                              // [kApplyRows][D]
  float* scratch = reinterpret_cast<float*>(qs + kApplyRows * D) + (threadIdx.x / kWarp) * 256;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t bh = blockIdx.y, row0 = static_cast<int64_t>(blockIdx.x) * kApplyRows;
  // stage kv and the block's q rows (zeros past Lq), 8 half values per 16-byte access
  const uint4* kvg = reinterpret_cast<const uint4*>(kv + bh * D * W);
  for (int x = threadIdx.x; x < D * W / 8; x += blockDim.x) {
    reinterpret_cast<uint4*>(kvs)[x] = kvg[x];
  }
  const uint4* qg = reinterpret_cast<const uint4*>(q + bh * Lq * D);
  const int per_row = D / 8;
  for (int x = threadIdx.x; x < kApplyRows * per_row; x += blockDim.x) {
    const int64_t r = row0 + x / per_row;
    reinterpret_cast<uint4*>(qs)[x] =
        r < Lq ? qg[r * per_row + x % per_row] : make_uint4(0u, 0u, 0u, 0u);
  }
  __syncthreads();
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NF];
#pragma unroll
  for (int n = 0; n < NF; ++n) wmma::fill_fragment(acc[n], 0.0f);
  for (int d0 = 0; d0 < D; d0 += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> a;
    wmma::load_matrix_sync(a, reinterpret_cast<const WT*>(qs) + warp * 16 * D + d0, D);
#pragma unroll
    for (int n = 0; n < NF; ++n) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::row_major> b;
      wmma::load_matrix_sync(b, reinterpret_cast<const WT*>(kvs) + d0 * W + n * 16, W);
      wmma::mma_sync(acc[n], a, b, acc[n]);
    }
  }
  // lane i < 16 holds the denominator of the warp's row i
  float den = 0.0f;
#pragma unroll
  for (int n = 0; n < NF; ++n) {
    if (n == Dv / 16) {
      wmma::store_matrix_sync(scratch, acc[n], 16, wmma::mem_row_major);
      __syncwarp();
      den = lane < 16 ? scratch[lane * 16 + Dv % 16] + eps : 1.0f;
      __syncwarp();
    }
  }
  const int64_t wrow0 = row0 + warp * 16;
#pragma unroll
  for (int n = 0; n < NF; ++n) {
    if (n * 16 >= Dv) continue;
    wmma::store_matrix_sync(scratch, acc[n], 16, wmma::mem_row_major);
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int idx = lane + 32 * i, row = idx / 16, e = n * 16 + idx % 16;
      const float d = __shfl_sync(0xffffffffu, den, row);
      if (wrow0 + row < Lq && e < Dv) {
        out[(bh * Lq + wrow0 + row) * Dv + e] = static_cast<T>(scratch[idx] / d);
      }
    }
    __syncwarp();
  }
#endif
}

template <typename T, int NF>
void launch_apply_wmma(const at::Tensor& q, const at::Tensor& kv, at::Tensor& out, double eps,
                       size_t smem) {
  auto kernel = linear_apply_wmma_kernel<T, NF>;
  const int64_t BH = q.size(0) * q.size(1), Lq = q.size(2);
  const dim3 grid((Lq + kApplyRows - 1) / kApplyRows, BH);
  kernel<<<grid, kApplyWarps * kWarp, smem, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<T>(), kv.data_ptr<T>(), out.data_ptr<T>(), Lq, static_cast<int>(q.size(3)),
      static_cast<int>(out.size(3)), static_cast<float>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// NF, the number of 16-column tiles of kv, is a template parameter: the accumulators are an
// array of fragments indexed by unrolled loops, which keeps them in registers.
template <typename T>
void launch_apply_tiles(int64_t tiles, const at::Tensor& q, const at::Tensor& kv,
                        at::Tensor& out, double eps, size_t smem) {
  switch (tiles) {
    case 1: return launch_apply_wmma<T, 1>(q, kv, out, eps, smem);
    case 2: return launch_apply_wmma<T, 2>(q, kv, out, eps, smem);
    case 3: return launch_apply_wmma<T, 3>(q, kv, out, eps, smem);
    case 4: return launch_apply_wmma<T, 4>(q, kv, out, eps, smem);
    case 5: return launch_apply_wmma<T, 5>(q, kv, out, eps, smem);
    case 6: return launch_apply_wmma<T, 6>(q, kv, out, eps, smem);
    case 7: return launch_apply_wmma<T, 7>(q, kv, out, eps, smem);
    case 8: return launch_apply_wmma<T, 8>(q, kv, out, eps, smem);
    default: return launch_apply_wmma<T, 9>(q, kv, out, eps, smem);
  }
}

// The tensor-core forward where it applies (half types, sm_80+, D a multiple of 16 up to 256,
// W up to 144, 16-byte aligned rows, the tiles within the default shared memory); false where
// the caller should take the GEMM path.
bool linear_apply_wmma(const at::Tensor& q, const at::Tensor& kv, at::Tensor& out, double eps) {
  const auto dt = q.scalar_type();
  if (!is_half(dt) || !linear_path_is("PYDIFF_LINEAR_APPLY", "fused", "fused")) return false;
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t D = q.size(3), W = kv.size(3), BH = q.size(0) * q.size(1);
  const size_t smem = static_cast<size_t>(D * W + kApplyRows * D) * 2 + kApplyWarps * 256 * 4;
  if (prop->major < 8 || D % 16 != 0 || D > 256 || W / 16 > kApplyMaxTiles || BH > 65535 ||
      static_cast<int64_t>(smem) > kSmemBudget || !q.is_contiguous() || !kv.is_contiguous() ||
      reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(kv.data_ptr()) % 16 != 0) {
    return false;
  }
  if (dt == at::kHalf) {
    launch_apply_tiles<at::Half>(W / 16, q, kv, out, eps, smem);
  } else {
    launch_apply_tiles<at::BFloat16>(W / 16, q, kv, out, eps, smem);
  }
  return true;
}

at::Tensor linear_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 double eps) {
  check_linear(q, k, v);
  c10::cuda::CUDAGuard guard(q.device());
  const auto acc = acc_of(q.scalar_type());
  const int64_t Dv = v.size(3), rows = q.size(0) * q.size(1) * q.size(2);
  const double eps_mean = eps / static_cast<double>(std::max<int64_t>(1, k.size(2)));
  // The product with q runs in the input dtype (tensor cores for half types, float32
  // accumulation); the small [D, Dv + 1] factor is rounded to it once.
  const at::Tensor kv = linear_kv_mean(k, v, acc, q.scalar_type());
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), Dv}, q.options());
  if (out.numel() == 0) return out;
  const at::Tensor qc = q.contiguous();
  if (linear_apply_wmma(qc, kv, out, eps_mean)) return out;
  const at::Tensor t = at::matmul(qc, kv).contiguous();
  {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                    "pydiff_linear_attention", [&] {
      using T = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc, "pydiff_linear_attention_acc", [&] {
        linear_normalize_kernel<T, scalar_t>
            <<<grid_for(out.numel()), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
                t.data_ptr<T>(), out.data_ptr<T>(), rows, Dv, t.size(-1),
                static_cast<scalar_t>(eps_mean));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return out;
}

// Backward in the input dtype (GEMMs on tensor cores for half types, as eager autograd runs
// them), with the elementwise part in the accumulation type.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    double eps) {
  check_linear(q, k, v);
  c10::cuda::CUDAGuard guard(q.device());
  const auto acc = acc_of(q.scalar_type());
  const int64_t Dv = v.size(3), rows = q.size(0) * q.size(1) * q.size(2);
  const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(1, k.size(2)));
  const at::Tensor kva = linear_kv_mean(k, v, acc, q.scalar_type()).narrow(-1, 0, Dv + 1);
  const at::Tensor t = at::matmul(q, kva).contiguous();  // [B, H, Lq, Dv + 1]
  const at::Tensor g = grad_out.to(q.scalar_type()).contiguous();
  at::Tensor da = at::empty_like(t);
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                    "pydiff_linear_attention_bwd", [&] {
      using T = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(acc, "pydiff_linear_attention_bwd_acc", [&] {
        linear_grad_kernel<T, scalar_t>
            <<<static_cast<int>((rows * kWarp + 255) / 256), 256, 0,
               at::cuda::getCurrentCUDAStream()>>>(t.data_ptr<T>(), g.data_ptr<T>(),
                                                    da.data_ptr<T>(), rows, Dv,
                                                    static_cast<scalar_t>(eps * inv_n));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const at::Tensor dq = at::matmul(da, kva.transpose(-1, -2));
  // d/d(mean) -> d/d(sum): the small [D, Dv + 1] factor takes the 1 / Lk
  const at::Tensor dkva = at::matmul(q.transpose(-1, -2), da).mul_(inv_n);
  const at::Tensor dkv = dkva.narrow(-1, 0, Dv), dks = dkva.narrow(-1, Dv, 1);
  const at::Tensor dk = at::matmul(v, dkv.transpose(-1, -2)).add_(dks.transpose(-1, -2));
  const at::Tensor dv = at::matmul(k, dkv);
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiff, CUDA, m) {
  m.impl("attention", &attention_cuda);
  m.impl("attention_backward", &attention_backward_cuda);
  m.impl("linear_attention", &linear_attention_cuda);
  m.impl("linear_attention_backward", &linear_attention_backward_cuda);
}

}  // namespace pydiff
