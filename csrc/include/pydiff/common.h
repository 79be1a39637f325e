// Header-only math shared by the CPU and CUDA kernels (and tested on the host by ctest).
//
// Everything here is `inline` and marked PYDIFF_HD so nvcc compiles it for the device too;
// it must not depend on ATen so the CMake test can include it on its own.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYDIFF_HD __host__ __device__ __forceinline__
#else
#define PYDIFF_HD inline
#endif

namespace pydiff {

// Accumulation type: float for every float type narrower than double, double for double.
// Half precision inputs are summed in float32 because bf16 has only 8 mantissa bits: three
// bf16-rounded partial sums of a solver step would lose the update of a late, small step.
template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <typename T> using acc_t = typename acc_type<T>::type;

// bfloat16 <-> float on raw bits, round-to-nearest-even, NaN kept quiet. The same rounding as
// c10::BFloat16, written out so the header has no ATen dependency.
PYDIFF_HD float bf16_bits_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

PYDIFF_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if (f != f) return 0x7fc0;  // canonical quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Online (streaming) softmax, the heart of the flash attention kernels.
//
// A query row sees its scores block by block. The state keeps the running max m and the running
// sum l = sum_j exp(s_j - m) of the scores seen so far. For each new block the caller
//   1. calls softmax_advance(st, max of the block): the max moves to m_new and the returned
//      factor exp(m_old - m_new) rescales everything accumulated against the old max (l is
//      rescaled here, the caller rescales its output accumulator);
//   2. computes p_j = exp(s_j - softmax_ref(st)) for the block, adds sum_j p_j to st.l and
//      p_j * v_j to its output accumulator.
// At the end out = acc * softmax_inv_sum(st) and lse = softmax_lse(st).
// Masked scores are -inf; a row whose scores are all masked ends with l = 0, an output of 0 and
// an lse of -inf (the reference defines it so; -inf - -inf must never produce a NaN).
template <typename T>
struct SoftmaxState {
  T m;  // running max; -inf before any unmasked score was seen
  T l;  // running sum of exp(s - m)
};

template <typename T>
PYDIFF_HD SoftmaxState<T> softmax_init() {
  return {-std::numeric_limits<T>::infinity(), T(0)};
}

template <typename T>
PYDIFF_HD T softmax_advance(SoftmaxState<T>& st, T m_blk) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const T m_new = st.m > m_blk ? st.m : m_blk;
  const T a = (st.m == ninf) ? T(0) : std::exp(st.m - m_new);
  st.l *= a;
  st.m = m_new;
  return a;
}

// The max that exp() is taken against: 0 while the row has seen only masked scores, so that
// exp(-inf - 0) = 0 instead of exp(-inf - -inf) = NaN.
template <typename T>
PYDIFF_HD T softmax_ref(const SoftmaxState<T>& st) {
  return st.m == -std::numeric_limits<T>::infinity() ? T(0) : st.m;
}

template <typename T>
PYDIFF_HD T softmax_lse(const SoftmaxState<T>& st) {
  if (!(st.l > T(0))) return -std::numeric_limits<T>::infinity();
  return st.m + std::log(st.l);
}

template <typename T>
PYDIFF_HD T softmax_inv_sum(const SoftmaxState<T>& st) {
  return st.l > T(0) ? T(1) / st.l : T(0);
}

// Probability of a score given the row's final log-sum-exp (the backward pass recomputes P this
// way instead of storing it): 0 for masked scores and for all-masked rows.
template <typename T>
PYDIFF_HD T softmax_prob(T s, T lse) {
  return lse == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(s - lse);
}

}  // namespace pydiff
