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

// One step of the online (streaming) softmax used by the flash attention kernels.
//
// State (m, l): running max m and running sum l = sum_j exp(s_j - m) over the scores seen so
// far. Merging a block whose max is m_blk and whose sum (relative to m_blk) is l_blk gives the
// new state and the factor by which the old partial output has to be rescaled.
struct SoftmaxState {
  float m;  // running max; -inf before any (unmasked) score was seen
  float l;  // running sum of exp(s - m)
};

PYDIFF_HD SoftmaxState softmax_init() {
  return {-std::numeric_limits<float>::infinity(), 0.f};
}

// Returns the factor exp(m_old - m_new) for the old partial output (0 when the state was empty;
// written so that -inf - -inf never produces NaN).
PYDIFF_HD float softmax_merge(SoftmaxState& st, float m_blk, float l_blk, float* blk_scale) {
  const float m_new = st.m > m_blk ? st.m : m_blk;
  if (m_new == -std::numeric_limits<float>::infinity()) {  // nothing seen yet, all masked
    *blk_scale = 0.f;
    return 0.f;
  }
  const float a = st.m == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(st.m - m_new);
  const float b = m_blk == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(m_blk - m_new);
  st.l = st.l * a + l_blk * b;
  st.m = m_new;
  *blk_scale = b;
  return a;
}

// log-sum-exp of the finished state; -inf for a row whose keys were all masked.
PYDIFF_HD float softmax_lse(const SoftmaxState& st) {
  if (st.l <= 0.f) return -std::numeric_limits<float>::infinity();
  return st.m + std::log(st.l);
}

// 1/l for the final normalization; 0 for an all-masked row so its output is exactly 0.
PYDIFF_HD float softmax_inv_sum(const SoftmaxState& st) { return st.l > 0.f ? 1.f / st.l : 0.f; }

}  // namespace pydiff
