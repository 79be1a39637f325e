// CPU kernels of pydiff::attention (flash-style forward + recomputing backward).
//
// Forward: for each (batch, head, block of queries) a thread walks the keys in blocks:
//   S = scale * Q_blk K_blk^T (BLAS), online softmax update (include/pydiff/common.h),
//   acc = alpha * acc + P V_blk (BLAS).
// Only a [qBlock x kvBlock] score tile exists at a time, never the L x L matrix, and the row
// log-sum-exp is returned so the backward can rebuild P = exp(S - lse) tile by tile.
//
// Half and bfloat16 inputs are converted to float32 once (O(L*D) memory) and everything runs in
// float32; float64 runs in float64. Inputs need a unit stride in the last dim (others are made
// so); batch/head/sequence strides are used as they are, so [B, L, H, D] tensors transposed to
// [B, H, L, D] cost no copy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <limits>
#include <vector>

#include "../attention_backward.h"
#include "blas.h"
#include "pydiff/common.h"

namespace pydiff {
namespace {

using cpu::gemm;
using cpu::Trans;

// Tile sizes: the same split as torch's CPU flash attention (a 256 x 512 float tile is 512 KB,
// it lives in L2 between the two GEMMs that touch it).
inline int64_t q_block(int64_t lq) { return lq >= 768 ? 256 : (lq >= 192 ? 64 : 32); }
constexpr int64_t kKvBlock = 512;

// Row-wise helpers on a tile (vectorized for float through ATen's Vectorized).
template <typename T>
T row_max(const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return at::vec::reduce_all<float>(
        [](auto a, auto b) { return at::vec::maximum(a, b); }, x, n);
  } else {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
    return m;
  }
}

// x[i] = exp(x[i] - m); returns the sum. exp_u20 is the same fast exp torch's flash kernel uses.
template <typename T>
T exp_sub_sum(T* x, int64_t n, T m) {
  if constexpr (std::is_same_v<T, float>) {
    using V = at::vec::Vectorized<float>;
    const V mv(m);
    V sv(0.f);
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) {
      V e = (V::loadu(x + i) - mv).exp_u20();
      e.store(x + i);
      sv = sv + e;
    }
    float s = at::vec::vec_reduce_all<float>([](auto a, auto b) { return a + b; }, sv);
    for (; i < n; ++i) {
      x[i] = std::exp(x[i] - m);
      s += x[i];
    }
    return s;
  } else {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) {
      x[i] = std::exp(x[i] - m);
      s += x[i];
    }
    return s;
  }
}

// Masked-out keys (mask[j] false) get score -inf in every row of a rows x cols tile.
template <typename T>
void mask_columns(T* S, int64_t rows, int64_t cols, const bool* mask) {
  if (mask == nullptr) return;
  for (int64_t j = 0; j < cols; ++j) {
    if (mask[j]) continue;
    for (int64_t i = 0; i < rows; ++i) S[i * cols + j] = -std::numeric_limits<T>::infinity();
  }
}

template <typename T>
void scale_row(T* x, int64_t n, T a) {
  if constexpr (std::is_same_v<T, float>) {
    at::vec::map([a](auto v) { return v * decltype(v)(a); }, x, x, n);
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] *= a;
  }
}

struct AttnShape {
  int64_t B, H, Lq, Lk, D, Dv;
};

void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiff::attention: q, k, v must be [B, H, L, D]; got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "pydiff::attention: k ", k.sizes(), " does not match q ", q.sizes());
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == k.size(2),
              "pydiff::attention: v ", v.sizes(), " does not match k ", k.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "pydiff::attention: q, k, v must share a dtype; got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(at::isFloatingType(q.scalar_type()) && q.scalar_type() != at::kFloat8_e4m3fn,
              "pydiff::attention: unsupported dtype ", q.scalar_type());
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 2 &&
                    mask->size(0) == q.size(0) && mask->size(1) == k.size(2),
                "pydiff::attention: mask must be a bool [B, Lk] = [", q.size(0), ", ", k.size(2),
                "] key-padding mask; got ", mask->scalar_type(), " ", mask->sizes());
  }
}

// Compute dtype: float64 stays, everything else runs in float32. Also gives the last dim a unit
// stride, which the BLAS calls need.
at::Tensor prep(const at::Tensor& t, at::ScalarType acc) {
  at::Tensor r = t.scalar_type() == acc ? t : t.to(acc);
  if (r.size(-1) > 1 && r.stride(-1) != 1) r = r.contiguous();
  TORCH_CHECK(r.stride(0) < INT_MAX && r.stride(1) < INT_MAX && r.stride(2) < INT_MAX,
              "pydiff::attention: tensor too large for 32-bit BLAS strides");
  return r;
}

inline at::ScalarType acc_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <typename T>
void attention_fwd_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const bool* mask, T scale, at::Tensor& out, at::Tensor& lse) {
  const AttnShape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  const int64_t qB = q_block(s.Lq);
  const int64_t nQ = (s.Lq + qB - 1) / qB;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();  // contiguous [B, H, Lq, Dv]
  T* lp = lse.data_ptr<T>();  // contiguous [B, H, Lq]
  const int64_t kvB = std::min<int64_t>(kKvBlock, std::max<int64_t>(s.Lk, 1));

  at::parallel_for(0, s.B * s.H * nQ, 1, [&](int64_t begin, int64_t end) {
    cpu::SingleThreadedBlas single_threaded_blas;
    std::vector<T> S(qB * kvB), acc(qB * s.Dv);
    std::vector<SoftmaxState<T>> st(qB);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / (s.H * nQ), h = (idx / nQ) % s.H, qi = idx % nQ;
      const int64_t q0 = qi * qB, rows = std::min(qB, s.Lq - q0);
      const T* qt = qp + b * q.stride(0) + h * q.stride(1) + q0 * q.stride(2);
      const T* kt = kp + b * k.stride(0) + h * k.stride(1);
      const T* vt = vp + b * v.stride(0) + h * v.stride(1);
      const bool* mrow = mask ? mask + b * s.Lk : nullptr;
      std::fill(acc.begin(), acc.begin() + rows * s.Dv, T(0));
      std::fill(st.begin(), st.begin() + rows, softmax_init<T>());
      for (int64_t k0 = 0; k0 < s.Lk; k0 += kvB) {
        const int64_t cols = std::min(kvB, s.Lk - k0);
        // S (rows x cols, row-major) = scale * Q K^T: column-major S^T = K Q^T
        gemm(Trans::T, Trans::N, cols, rows, s.D, scale, kt + k0 * k.stride(2), k.stride(2), qt,
             q.stride(2), T(0), S.data(), cols);
        mask_columns(S.data(), rows, cols, mrow ? mrow + k0 : nullptr);
        for (int64_t i = 0; i < rows; ++i) {
          T* srow = S.data() + i * cols;
          const T alpha = softmax_advance(st[i], row_max(srow, cols));
          st[i].l += exp_sub_sum(srow, cols, softmax_ref(st[i]));
          if (k0 > 0) scale_row(acc.data() + i * s.Dv, s.Dv, alpha);
        }
        // acc (rows x Dv) += P V: column-major acc^T = V^T P^T
        gemm(Trans::N, Trans::N, s.Dv, rows, cols, T(1), vt + k0 * v.stride(2), v.stride(2),
             S.data(), cols, T(1), acc.data(), s.Dv);
      }
      T* orow = op + ((b * s.H + h) * s.Lq + q0) * s.Dv;
      T* lrow = lp + (b * s.H + h) * s.Lq + q0;
      for (int64_t i = 0; i < rows; ++i) {
        const T inv = softmax_inv_sum(st[i]);
        for (int64_t d = 0; d < s.Dv; ++d) orow[i * s.Dv + d] = acc[i * s.Dv + d] * inv;
        lrow[i] = softmax_lse(st[i]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, double scale,
                                                 const std::optional<at::Tensor>& mask) {
  check_attention(q, k, v, mask);
  const auto acc = acc_of(q.scalar_type());
  const at::Tensor qc = prep(q, acc), kc = prep(k, acc), vc = prep(v, acc);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options().dtype(acc));
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(acc));
  at::Tensor m;
  if (mask.has_value() && mask->defined()) m = mask->contiguous();
  if (q.size(0) * q.size(1) * q.size(2) > 0) {
    if (acc == at::kDouble) {
      attention_fwd_impl<double>(qc, kc, vc, m.defined() ? m.data_ptr<bool>() : nullptr, scale,
                                 out, lse);
    } else {
      attention_fwd_impl<float>(qc, kc, vc, m.defined() ? m.data_ptr<bool>() : nullptr,
                                static_cast<float>(scale), out, lse);
    }
  }
  return {out.to(q.scalar_type()), lse};
}

// Backward, FlashAttention-2 style: per (batch, head), for each key block j and query block i
//   P = exp(S - lse), dV_j += P^T dO_i, dP = dO_i V_j^T, dS = P * (dP - delta_i),
//   dK_j += scale dS^T Q_i, dQ_i += scale dS K_j,
// with delta_i = rowsum(dO_i * O_i) - dlse_i. Nothing of size L x L is stored.
template <typename T>
void attention_bwd_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& delta, const at::Tensor& lse,
                        const bool* mask, T scale, at::Tensor& dq, at::Tensor& dk,
                        at::Tensor& dv) {
  const AttnShape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  // small tiles: five GEMMs touch each one (128 x 256 measured the same within noise)
  constexpr int64_t qB = 64, kvB = 128;
  // With fewer (batch, head) pairs than threads, each pair's key blocks are split into parts
  // run in parallel: dK and dV rows are disjoint per part, dQ gets one buffer per extra part,
  // summed at the end (Lq x D each, small next to the tiles' work).
  const int64_t BH = s.B * s.H;
  const int64_t key_blocks = (s.Lk + kvB - 1) / kvB;
  const int64_t threads = at::get_num_threads();
  const int64_t parts =
      BH >= threads ? 1 : std::max<int64_t>(1, std::min(key_blocks, (threads + BH - 1) / BH));
  at::Tensor dq_extra;
  if (parts > 1) dq_extra = at::zeros({parts - 1, BH, s.Lq, s.D}, dq.options());
  T* const dq_extra_data = parts > 1 ? dq_extra.data_ptr<T>() : nullptr;
  at::parallel_for(0, BH * parts, 1, [&](int64_t begin, int64_t end) {
    cpu::SingleThreadedBlas single_threaded_blas;
    std::vector<T> S(qB * kvB), dP(qB * kvB);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / parts, part = item % parts;
      const int64_t b = bh / s.H, h = bh % s.H;
      const T* qt = q.data_ptr<T>() + b * q.stride(0) + h * q.stride(1);
      const T* kt = k.data_ptr<T>() + b * k.stride(0) + h * k.stride(1);
      const T* vt = v.data_ptr<T>() + b * v.stride(0) + h * v.stride(1);
      const T* dot = dout.data_ptr<T>() + b * dout.stride(0) + h * dout.stride(1);
      const T* lt = lse.data_ptr<T>() + bh * s.Lq;
      const T* delt = delta.data_ptr<T>() + bh * s.Lq;
      T* dqt = (part == 0 ? dq.data_ptr<T>() : dq_extra_data + (part - 1) * BH * s.Lq * s.D) +
               bh * s.Lq * s.D;
      T* dkt = dk.data_ptr<T>() + bh * s.Lk * s.D;
      T* dvt = dv.data_ptr<T>() + bh * s.Lk * s.Dv;
      const bool* mrow = mask ? mask + b * s.Lk : nullptr;
      const int64_t k_begin = key_blocks * part / parts * kvB;
      const int64_t k_end = std::min(s.Lk, key_blocks * (part + 1) / parts * kvB);
      for (int64_t k0 = k_begin; k0 < k_end; k0 += kvB) {
        const int64_t cols = std::min(kvB, s.Lk - k0);
        const T* kb = kt + k0 * k.stride(2);
        const T* vb = vt + k0 * v.stride(2);
        for (int64_t q0 = 0; q0 < s.Lq; q0 += qB) {
          const int64_t rows = std::min(qB, s.Lq - q0);
          const T* qb = qt + q0 * q.stride(2);
          const T* dob = dot + q0 * dout.stride(2);
          gemm(Trans::T, Trans::N, cols, rows, s.D, scale, kb, k.stride(2), qb, q.stride(2), T(0),
               S.data(), cols);
          mask_columns(S.data(), rows, cols, mrow ? mrow + k0 : nullptr);
          for (int64_t i = 0; i < rows; ++i) {
            T* prow = S.data() + i * cols;
            const T l = lt[q0 + i];
            // P = exp(S - lse) with the forward's (vectorized) exp; a fully masked row has
            // lse = -inf and P = 0
            if (l == -std::numeric_limits<T>::infinity()) std::fill(prow, prow + cols, T(0));
            else exp_sub_sum(prow, cols, l);
          }
          // dV_j (cols x Dv) += P^T dO_i: column-major dV^T = dO^T P
          gemm(Trans::N, Trans::T, s.Dv, cols, rows, T(1), dob, dout.stride(2), S.data(), cols,
               T(1), dvt + k0 * s.Dv, s.Dv);
          // dP (rows x cols) = dO_i V_j^T
          gemm(Trans::T, Trans::N, cols, rows, s.Dv, T(1), vb, v.stride(2), dob, dout.stride(2),
               T(0), dP.data(), cols);
          for (int64_t i = 0; i < rows; ++i) {
            const T di = delt[q0 + i];
            for (int64_t j = 0; j < cols; ++j) {
              dP[i * cols + j] = S[i * cols + j] * (dP[i * cols + j] - di);
            }
          }
          // dK_j (cols x D) += scale dS^T Q_i
          gemm(Trans::N, Trans::T, s.D, cols, rows, scale, qb, q.stride(2), dP.data(), cols, T(1),
               dkt + k0 * s.D, s.D);
          // dQ_i (rows x D) += scale dS K_j: column-major dQ^T = K^T dS^T
          gemm(Trans::N, Trans::N, s.D, rows, cols, scale, kb, k.stride(2), dP.data(), cols, T(1),
               dqt + q0 * s.D, s.D);
        }
      }
    }
  });
  if (parts > 1) dq.add_(dq_extra.sum(0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    double scale, const std::optional<at::Tensor>& mask) {
  check_attention(q, k, v, mask);
  const auto acc = acc_of(q.scalar_type());
  const at::Tensor qc = prep(q, acc), kc = prep(k, acc), vc = prep(v, acc);
  const at::Tensor doc = prep(grad_out, acc);
  const at::Tensor delta = attention_delta(doc, out, grad_lse, acc);
  const at::Tensor lsec = lse.to(acc).contiguous();
  at::Tensor dq, dk, dv;
  std::tie(dq, dk, dv) = zero_grads(q, k, v, acc);
  at::Tensor m;
  if (mask.has_value() && mask->defined()) m = mask->contiguous();
  const bool* mp = m.defined() ? m.data_ptr<bool>() : nullptr;
  if (q.size(0) * q.size(1) * q.size(2) > 0 && k.size(2) > 0) {
    if (acc == at::kDouble) {
      attention_bwd_impl<double>(doc, qc, kc, vc, delta, lsec, mp, scale, dq, dk, dv);
    } else {
      attention_bwd_impl<float>(doc, qc, kc, vc, delta, lsec, mp, static_cast<float>(scale), dq,
                                dk, dv);
    }
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiff, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace pydiff
