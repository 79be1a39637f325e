// CPU kernels of pydiff::linear_attention: normalized non-causal linear attention (LinFusion),
//   out_i = q_i KV / (q_i . ks + eps),  KV = K^T V (D x Dv),  ks = sum_j k_j (D).
//
// Per query tile of 1024 rows, one GEMM gives the numerator and one GEMV the denominator, and
// the division happens on the tile while it is in cache, so out is written once (the eager
// formula makes five passes and two L x Dv temporaries). O(L * D * Dv) time, O(D * Dv) extra memory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "blas.h"

namespace pydiff {
namespace {

using cpu::gemm;
using cpu::Trans;

constexpr int64_t kRowBlock = 1024;
constexpr int64_t kKeyChunk = 2048;

void check_linear(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiff::linear_attention: q, k, v must be [B, H, L, D]; got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) &&
                  v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == k.size(2),
              "pydiff::linear_attention: shapes do not match: q ", q.sizes(), ", k ", k.sizes(),
              ", v ", v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                  at::isFloatingType(q.scalar_type()),
              "pydiff::linear_attention: q, k, v must share a floating dtype; got ",
              q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
}

at::Tensor prep(const at::Tensor& t, at::ScalarType acc) {
  at::Tensor r = t.scalar_type() == acc ? t : t.to(acc);
  if (r.size(-1) > 1 && r.stride(-1) != 1) r = r.contiguous();
  return r;
}

// KV = K^T V (D x Dv, row-major) and ks = K^T 1 (D) of one (batch, head). KV accumulates over
// key chunks that fit in L2, so ks sums each chunk of K while it is in cache instead of reading
// K from memory a second time (a pass of its own: benchmarks/ops_linear_parts.py, BENCHMARKS.md).
template <typename T>
void kv_and_ks(const T* kt, int64_t ldk, const T* vt, int64_t ldv, int64_t Lk, int64_t D,
               int64_t Dv, T* kv, T* ks) {
  std::fill(ks, ks + D, T(0));
  if (Lk == 0) std::fill(kv, kv + D * Dv, T(0));
  for (int64_t c0 = 0; c0 < Lk; c0 += kKeyChunk) {
    const int64_t n = std::min(kKeyChunk, Lk - c0);
    const T* kc = kt + c0 * ldk;
    // row-major KV (D x Dv) += K_c^T V_c  <=>  column-major KV^T (Dv x D) += V_c^T K_c
    gemm(Trans::N, Trans::T, Dv, D, n, T(1), vt + c0 * ldv, ldv, kc, ldk, c0 == 0 ? T(0) : T(1),
         kv, Dv);
    for (int64_t j = 0; j < n; ++j) {
      const T* kr = kc + j * ldk;
      for (int64_t d = 0; d < D; ++d) ks[d] += kr[d];
    }
  }
}

template <typename T>
void linear_fwd_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, T eps,
                     at::Tensor& out) {
  // KV (D x Dv) and ks (D) stay apart: a tile GEMM with Dv + 1 = 65 columns is much slower
  // than one with 64 (benchmarks/ops_linear_parts.py; BENCHMARKS.md, linear attention), and
  // the denominator is one more GEMV on the query block while it is in cache.
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3),
                Dv = v.size(3);
  std::vector<T> kv(B * H * D * Dv), ks(B * H * D);
  cpu::for_each_head(B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    kv_and_ks<T>(k.data_ptr<T>() + b * k.stride(0) + h * k.stride(1), k.stride(2),
                 v.data_ptr<T>() + b * v.stride(0) + h * v.stride(1), v.stride(2), Lk, D, Dv,
                 kv.data() + bh * D * Dv, ks.data() + bh * D);
  });
  const int64_t nblk = (Lq + kRowBlock - 1) / kRowBlock;
  T* op = out.data_ptr<T>();  // contiguous [B, H, Lq, Dv], untouched so far
  cpu::advise_huge_pages(op, out.numel() * sizeof(T));
  at::parallel_for(0, B * H * nblk, 1, [&](int64_t begin, int64_t end) {
    cpu::SingleThreadedBlas single_threaded_blas;
    std::vector<T> den(kRowBlock);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t bh = it / nblk, r0 = (it % nblk) * kRowBlock;
      const int64_t rows = std::min(kRowBlock, Lq - r0);
      const int64_t b = bh / H, h = bh % H;
      const T* qt = q.data_ptr<T>() + b * q.stride(0) + h * q.stride(1) + r0 * q.stride(2);
      T* orow = op + (bh * Lq + r0) * Dv;
      // den (1 x rows) = ks^T Q_blk^T, then the out tile (rows x Dv) = Q_blk KV in place
      gemm(Trans::N, Trans::N, 1, rows, D, T(1), ks.data() + bh * D, 1, qt, q.stride(2), T(0),
           den.data(), 1);
      gemm(Trans::N, Trans::N, Dv, rows, D, T(1), kv.data() + bh * D * Dv, Dv, qt, q.stride(2),
           T(0), orow, Dv);
      for (int64_t i = 0; i < rows; ++i) {
        const T inv = T(1) / (den[i] + eps);
        T* o = orow + i * Dv;
        for (int64_t e = 0; e < Dv; ++e) o[e] *= inv;
      }
    }
  });
}

// Backward, with num = q KV, den = q.ks + eps, out = num / den and g = dL/dout:
//   dnum = g / den, dden = -(g . out) / den;
//   dQ = dnum KV^T + dden ks^T, dKV = Q^T dnum, dks = Q^T dden, dK = V dKV^T + 1 dks^T,
//   dV = K dKV. Every GEMM has Dv or D columns, none Dv + 1 (see linear_fwd_impl); the rank-1
//   terms are loops over a tile in cache.
template <typename T>
void linear_bwd_impl(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, T eps, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3),
                Dv = v.size(3);
  cpu::for_each_head(B * H, [&](int64_t bh) {
    std::vector<T> kv(D * Dv), ks(D), dkv(D * Dv, T(0)), dks(D, T(0));
    std::vector<T> tile(kRowBlock * Dv), den(kRowBlock), dden(kRowBlock);
    const int64_t b = bh / H, h = bh % H;
    const T* kt = k.data_ptr<T>() + b * k.stride(0) + h * k.stride(1);
    const T* vt = v.data_ptr<T>() + b * v.stride(0) + h * v.stride(1);
    const T* qt = q.data_ptr<T>() + b * q.stride(0) + h * q.stride(1);
    const T* gt = g.data_ptr<T>() + b * g.stride(0) + h * g.stride(1);
    T* dqt = dq.data_ptr<T>() + bh * Lq * D;
    T* dkt = dk.data_ptr<T>() + bh * Lk * D;
    T* dvt = dv.data_ptr<T>() + bh * Lk * Dv;
    const int64_t ldq = q.stride(2), ldg = g.stride(2);
    kv_and_ks<T>(kt, k.stride(2), vt, v.stride(2), Lk, D, Dv, kv.data(), ks.data());
    for (int64_t r0 = 0; r0 < Lq; r0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, Lq - r0);
      const T* qb = qt + r0 * ldq;
      const T* gb = gt + r0 * ldg;
      // num tile (rows x Dv) = Q_blk KV, den (rows) = Q_blk ks
      gemm(Trans::N, Trans::N, Dv, rows, D, T(1), kv.data(), Dv, qb, ldq, T(0), tile.data(), Dv);
      gemm(Trans::N, Trans::N, 1, rows, D, T(1), ks.data(), 1, qb, ldq, T(0), den.data(), 1);
      for (int64_t i = 0; i < rows; ++i) {
        T* t = tile.data() + i * Dv;
        const T* gi = gb + i * ldg;
        const T inv = T(1) / (den[i] + eps);
        T go = 0;
        for (int64_t e = 0; e < Dv; ++e) go += gi[e] * t[e];
        for (int64_t e = 0; e < Dv; ++e) t[e] = gi[e] * inv;  // dnum
        dden[i] = -go * inv * inv;  // -(g . num) / den^2 = -(g . out) / den
      }
      // dQ_blk (rows x D) = dnum KV^T  <=>  column-major dQ^T (D x rows) = KV dnum^T
      T* dqb = dqt + r0 * D;
      gemm(Trans::T, Trans::N, D, rows, Dv, T(1), kv.data(), Dv, tile.data(), Dv, T(0), dqb, D);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t d = 0; d < D; ++d) dqb[i * D + d] += dden[i] * ks[d];
      // dKV (D x Dv) += Q_blk^T dnum  <=>  column-major dKV^T (Dv x D) += dnum^T Q_blk
      gemm(Trans::N, Trans::T, Dv, D, rows, T(1), tile.data(), Dv, qb, ldq, T(1), dkv.data(), Dv);
      // dks (D) += Q_blk^T dden
      gemm(Trans::N, Trans::T, 1, D, rows, T(1), dden.data(), 1, qb, ldq, T(1), dks.data(), 1);
    }
    // dK (Lk x D) = V dKV^T + 1 dks^T  <=>  column-major dK^T (D x Lk) = dKV V^T, then + dks
    gemm(Trans::T, Trans::N, D, Lk, Dv, T(1), dkv.data(), Dv, vt, v.stride(2), T(0), dkt, D);
    for (int64_t j = 0; j < Lk; ++j)
      for (int64_t d = 0; d < D; ++d) dkt[j * D + d] += dks[d];
    // dV (Lk x Dv) = K dKV  <=>  column-major dV^T (Dv x Lk) = dKV^T K^T
    gemm(Trans::N, Trans::N, Dv, Lk, D, T(1), dkv.data(), Dv, kt, k.stride(2), T(0), dvt, Dv);
  });
}

inline at::ScalarType acc_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor linear_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                double eps) {
  check_linear(q, k, v);
  const auto acc = acc_of(q.scalar_type());
  const at::Tensor qc = prep(q, acc), kc = prep(k, acc), vc = prep(v, acc);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options().dtype(acc));
  if (out.numel() > 0) {
    if (acc == at::kDouble) linear_fwd_impl<double>(qc, kc, vc, eps, out);
    else linear_fwd_impl<float>(qc, kc, vc, static_cast<float>(eps), out);
  }
  return out.to(q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    double eps) {
  check_linear(q, k, v);
  const auto acc = acc_of(q.scalar_type());
  const at::Tensor qc = prep(q, acc), kc = prep(k, acc), vc = prep(v, acc);
  const at::Tensor gc = prep(grad_out, acc);
  // Every element is written by a GEMM (beta = 0) when all dims are non-empty: no zero fill,
  // which at L = 16384 cost more than a GEMM (first-touch page faults, see the forward).
  const bool work = q.numel() > 0 && k.numel() > 0 && v.numel() > 0;
  const auto make = [&](const at::Tensor& like) {
    return work ? at::empty(like.sizes(), like.options().dtype(acc))
                : at::zeros(like.sizes(), like.options().dtype(acc));
  };
  at::Tensor dq = make(q), dk = make(k), dv = make(v);
  if (work) {
    for (at::Tensor* t : {&dq, &dk, &dv}) cpu::advise_huge_pages(t->data_ptr(), t->nbytes());
    if (acc == at::kDouble) linear_bwd_impl<double>(gc, qc, kc, vc, eps, dq, dk, dv);
    else linear_bwd_impl<float>(gc, qc, kc, vc, static_cast<float>(eps), dq, dk, dv);
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiff, CPU, m) {
  m.impl("linear_attention", &linear_attention_cpu);
  m.impl("linear_attention_backward", &linear_attention_backward_cpu);
}

}  // namespace pydiff
