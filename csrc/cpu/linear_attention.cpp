// CPU kernels of pydiff::linear_attention: normalized non-causal linear attention (LinFusion),
//   out_i = q_i KV / (q_i . ks + eps),  KV = K^T V (D x Dv),  ks = sum_j k_j (D).
//
// The normalizer rides along as one more column: KVa = [KV | ks] is D x (Dv + 1), so one GEMM
// per query tile gives numerator and denominator together, and the division happens on the
// tile while it is in cache. Q, K, V are read once and out written once (the eager formula
// makes five passes and two L x Dv temporaries). O(L * D * Dv) time, O(D * Dv) extra memory.
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

// KVa[bh] = [K^T V | K^T 1] for one (batch, head): (D x (Dv+1)) row-major, i.e. column-major
// ((Dv+1) x D) with ld = Dv + 1. `ones` is an Lk-vector of ones.
template <typename T>
void kv_aug(const T* kt, int64_t ldk, const T* vt, int64_t ldv, int64_t Lk, int64_t D,
            int64_t Dv, const T* ones, T* kva) {
  const int64_t W = Dv + 1;
  // row-major KV (D x Dv) = K^T V  <=>  column-major KV^T (Dv x D) = V^T K
  gemm(Trans::N, Trans::T, Dv, D, Lk, T(1), vt, ldv, kt, ldk, T(0), kva, W);
  // last column: ks = K^T 1  (a (1 x D) column-major product 1^T K)
  gemm(Trans::N, Trans::T, 1, D, Lk, T(1), ones, 1, kt, ldk, T(0), kva + Dv, W);
}

template <typename T>
void linear_fwd_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, T eps,
                     at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3),
                Dv = v.size(3), W = Dv + 1;
  std::vector<T> kva(B * H * D * W);
  std::vector<T> ones(std::max<int64_t>(Lk, 1), T(1));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    cpu::SingleThreadedBlas single_threaded_blas;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      kv_aug<T>(k.data_ptr<T>() + b * k.stride(0) + h * k.stride(1), k.stride(2),
                v.data_ptr<T>() + b * v.stride(0) + h * v.stride(1), v.stride(2), Lk, D, Dv,
                ones.data(), kva.data() + bh * D * W);
    }
  });
  const int64_t nblk = (Lq + kRowBlock - 1) / kRowBlock;
  T* op = out.data_ptr<T>();
  at::parallel_for(0, B * H * nblk, 1, [&](int64_t begin, int64_t end) {
    cpu::SingleThreadedBlas single_threaded_blas;
    std::vector<T> tile(kRowBlock * W);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t bh = it / nblk, r0 = (it % nblk) * kRowBlock;
      const int64_t rows = std::min(kRowBlock, Lq - r0);
      const int64_t b = bh / H, h = bh % H;
      const T* qt = q.data_ptr<T>() + b * q.stride(0) + h * q.stride(1) + r0 * q.stride(2);
      // tile (rows x W) = Q_blk KVa  <=>  column-major tile^T (W x rows) = KVa^T Q^T
      gemm(Trans::N, Trans::N, W, rows, D, T(1), kva.data() + bh * D * W, W, qt, q.stride(2),
           T(0), tile.data(), W);
      T* orow = op + (bh * Lq + r0) * Dv;
      for (int64_t i = 0; i < rows; ++i) {
        const T inv = T(1) / (tile[i * W + Dv] + eps);
        for (int64_t e = 0; e < Dv; ++e) orow[i * Dv + e] = tile[i * W + e] * inv;
      }
    }
  });
}

// Backward, with num = q KV, den = q.ks + eps, out = num / den and g = dL/dout:
//   dnum = g / den, dden = -(g . out) / den, written side by side as dA = [dnum | dden];
//   dQ = dA KVa^T, dKVa = Q^T dA  (= [dKV | dks]), dK = V dKV^T + 1 dks^T, dV = K dKV.
template <typename T>
void linear_bwd_impl(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, T eps, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3),
                Dv = v.size(3), W = Dv + 1;
  std::vector<T> ones(std::max<int64_t>(Lk, 1), T(1));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    cpu::SingleThreadedBlas single_threaded_blas;
    std::vector<T> kva(D * W), dkva(D * W), tile(kRowBlock * W);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const T* kt = k.data_ptr<T>() + b * k.stride(0) + h * k.stride(1);
      const T* vt = v.data_ptr<T>() + b * v.stride(0) + h * v.stride(1);
      const T* qt = q.data_ptr<T>() + b * q.stride(0) + h * q.stride(1);
      const T* gt = g.data_ptr<T>() + b * g.stride(0) + h * g.stride(1);
      T* dqt = dq.data_ptr<T>() + bh * Lq * D;
      T* dkt = dk.data_ptr<T>() + bh * Lk * D;
      T* dvt = dv.data_ptr<T>() + bh * Lk * Dv;
      kv_aug<T>(kt, k.stride(2), vt, v.stride(2), Lk, D, Dv, ones.data(), kva.data());
      std::fill(dkva.begin(), dkva.end(), T(0));
      for (int64_t r0 = 0; r0 < Lq; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, Lq - r0);
        const T* qb = qt + r0 * q.stride(2);
        const T* gb = gt + r0 * g.stride(2);
        gemm(Trans::N, Trans::N, W, rows, D, T(1), kva.data(), W, qb, q.stride(2), T(0),
             tile.data(), W);
        for (int64_t i = 0; i < rows; ++i) {
          T* t = tile.data() + i * W;
          const T inv = T(1) / (t[Dv] + eps);
          T go = 0;
          for (int64_t e = 0; e < Dv; ++e) go += gb[i * g.stride(2) + e] * t[e];
          for (int64_t e = 0; e < Dv; ++e) t[e] = gb[i * g.stride(2) + e] * inv;
          t[Dv] = -go * inv * inv;  // -(g . num) / den^2 = -(g . out) / den
        }
        // dQ_blk (rows x D) = dA KVa^T  <=>  column-major dQ^T (D x rows) = KVa dA^T
        gemm(Trans::T, Trans::N, D, rows, W, T(1), kva.data(), W, tile.data(), W, T(0),
             dqt + r0 * D, D);
        // dKVa (D x W) += Q_blk^T dA  <=>  column-major dKVa^T (W x D) += dA^T Q
        gemm(Trans::N, Trans::T, W, D, rows, T(1), tile.data(), W, qb, q.stride(2), T(1),
             dkva.data(), W);
      }
      // dK (Lk x D) = V dKV^T + 1 dks^T  <=>  column-major dK^T (D x Lk) = dKV V^T + dks 1^T
      gemm(Trans::T, Trans::N, D, Lk, Dv, T(1), dkva.data(), W, vt, v.stride(2), T(0), dkt, D);
      gemm(Trans::T, Trans::N, D, Lk, 1, T(1), dkva.data() + Dv, W, ones.data(), 1, T(1), dkt, D);
      // dV (Lk x Dv) = K dKV  <=>  column-major dV^T (Dv x Lk) = dKV^T K^T
      gemm(Trans::N, Trans::N, Dv, Lk, D, T(1), dkva.data(), W, kt, k.stride(2), T(0), dvt, Dv);
    }
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
  at::Tensor dq = at::zeros(q.sizes(), q.options().dtype(acc));
  at::Tensor dk = at::zeros(k.sizes(), k.options().dtype(acc));
  at::Tensor dv = at::zeros(v.sizes(), v.options().dtype(acc));
  if (q.numel() > 0 && k.numel() > 0) {
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
