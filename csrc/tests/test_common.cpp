// ctest of the header-only math in include/pydiff/common.h (no ATen, no torch): the pieces the
// CPU and CUDA kernels share. Exits non-zero on the first failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "pydiff/common.h"

namespace {

int failures = 0;

void check(bool ok, const char* what, double got, double want) {
  if (!ok) {
    std::printf("FAIL %s: got %.17g, want %.17g\n", what, got, want);
    ++failures;
  }
}

// Direct softmax statistics of a row (with -inf for masked scores).
template <typename T>
void direct(const std::vector<T>& s, T* lse) {
  T m = -std::numeric_limits<T>::infinity();
  for (T x : s) m = std::max(m, x);
  if (m == -std::numeric_limits<T>::infinity()) {
    *lse = m;
    return;
  }
  T l = 0;
  for (T x : s) l += std::exp(x - m);
  *lse = m + std::log(l);
}

// Online softmax over blocks of `blk` scores, as the kernels run it: returns the lse and the
// softmax-weighted sum of w (a stand-in for the value rows).
template <typename T>
void online(const std::vector<T>& s, const std::vector<T>& w, size_t blk, T* lse, T* out) {
  pydiff::SoftmaxState<T> st = pydiff::softmax_init<T>();
  T acc = 0;
  for (size_t b0 = 0; b0 < s.size(); b0 += blk) {
    const size_t b1 = std::min(s.size(), b0 + blk);
    T mb = -std::numeric_limits<T>::infinity();
    for (size_t j = b0; j < b1; ++j) mb = std::max(mb, s[j]);
    const T alpha = pydiff::softmax_advance(st, mb);
    acc *= alpha;
    for (size_t j = b0; j < b1; ++j) {
      const T p = std::exp(s[j] - pydiff::softmax_ref(st));
      st.l += p;
      acc += p * w[j];
    }
  }
  *lse = pydiff::softmax_lse(st);
  *out = acc * pydiff::softmax_inv_sum(st);
}

void test_softmax() {
  const double ninf = -std::numeric_limits<double>::infinity();
  std::srand(1);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n = 1 + std::rand() % 300;
    std::vector<double> s(n), w(n);
    for (size_t j = 0; j < n; ++j) {
      s[j] = 40.0 * (std::rand() / double(RAND_MAX) - 0.5);  // large spread: exp would overflow
      w[j] = std::rand() / double(RAND_MAX);
      if (trial % 3 == 0 && std::rand() % 4 == 0) s[j] = ninf;  // masked keys
    }
    if (trial % 17 == 0)
      for (auto& x : s) x = ninf;  // an all-masked row
    double lse_d, lse_o, out_o;
    direct(s, &lse_d);
    online(s, w, 1 + std::rand() % 64, &lse_o, &out_o);
    if (lse_d == ninf) {
      check(lse_o == ninf && out_o == 0.0, "all-masked row gives lse -inf and out 0", out_o, 0);
      continue;
    }
    double out_d = 0;
    for (size_t j = 0; j < n; ++j) out_d += std::exp(s[j] - lse_d) * w[j];
    check(std::fabs(lse_o - lse_d) < 1e-12 * (1 + std::fabs(lse_d)), "online lse", lse_o, lse_d);
    check(std::fabs(out_o - out_d) < 1e-12, "online weighted sum", out_o, out_d);
    // the backward's probabilities from the lse sum to one
    double psum = 0;
    for (double x : s) psum += pydiff::softmax_prob(x, lse_o);
    check(std::fabs(psum - 1.0) < 1e-12, "probabilities from lse sum to 1", psum, 1.0);
  }
  check(pydiff::softmax_prob(1.0, ninf) == 0.0, "prob of an all-masked row", 0, 0);
  // float version with the same recurrence
  std::vector<float> s = {1e3f, 1e3f - 1.f, -1e3f};
  std::vector<float> w = {1.f, 2.f, 3.f};
  float lse, out;
  online(s, w, 2, &lse, &out);
  const float want = (1.f + 2.f * std::exp(-1.f)) / (1.f + std::exp(-1.f));
  check(std::fabs(out - want) < 1e-6f && std::isfinite(lse), "float online, no overflow", out,
        want);
}

void test_bf16() {
  // exact values round-trip, ties round to even, NaN stays NaN
  const float exact[] = {0.f, 1.f, -2.5f, 65280.f, 1.f / 128.f};
  for (float f : exact) {
    const float r = pydiff::bf16_bits_to_float(pydiff::float_to_bf16_bits(f));
    check(r == f, "bf16 round trip of a representable value", r, f);
  }
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even gives 1
  float r = pydiff::bf16_bits_to_float(pydiff::float_to_bf16_bits(1.f + 1.f / 256.f));
  check(r == 1.f, "bf16 tie rounds to even (down)", r, 1.f);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even gives 1 + 2^-6
  r = pydiff::bf16_bits_to_float(pydiff::float_to_bf16_bits(1.f + 3.f / 256.f));
  check(r == 1.f + 1.f / 64.f, "bf16 tie rounds to even (up)", r, 1.f + 1.f / 64.f);
  r = pydiff::bf16_bits_to_float(pydiff::float_to_bf16_bits(std::nanf("")));
  check(std::isnan(r), "bf16 NaN", r, NAN);
  r = pydiff::bf16_bits_to_float(pydiff::float_to_bf16_bits(std::numeric_limits<float>::infinity()));
  check(std::isinf(r), "bf16 inf", r, INFINITY);
}

}  // namespace

int main() {
  test_softmax();
  test_bf16();
  if (failures == 0) std::printf("header math: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
