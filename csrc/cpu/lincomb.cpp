// CPU kernel of pydiff::lincomb: out = sum_k c_k * T_k, one pass over memory.
//
// The coalesced iteration space (see lincomb_plan.h) is cut into chunks of kChunk inner
// elements. A chunk is accumulated in a small float (double for float64 results) buffer that
// stays in L1: each term streams once from memory into it, then it is converted and stored
// once. So every byte of every term and of out moves exactly once, whatever the dtypes, and
// the per-dtype code is one short loop per (term dtype, coefficient kind) instead of one
// kernel per combination of K dtypes.
#include <ATen/ATen.h>
#include <cstdlib>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../lincomb_plan.h"
#include "output_cache.h"
#include "pydiff/common.h"

#if (defined(CPU_CAPABILITY_AVX512) && defined(__AVX512F__)) || \
    (defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__))
#include <immintrin.h>
#define PYDIFF_STREAM_STORES 1
#endif

namespace pydiff {
namespace {

using at::vec::Vectorized;
using fVec = Vectorized<float>;

// Non-temporal stores need addresses aligned to the vector's size.
constexpr uintptr_t kVecBytes = sizeof(float) * fVec::size();
#ifdef PYDIFF_STREAM_STORES
#if defined(CPU_CAPABILITY_AVX512)
inline void stream_store(float* p, __m512 v) { _mm512_stream_ps(p, v); }
inline void stream_store(void* p, __m512i v) { _mm512_stream_si512(static_cast<__m512i*>(p), v); }
#else
inline void stream_store(float* p, __m256 v) { _mm256_stream_ps(p, v); }
inline void stream_store(void* p, __m256i v) { _mm256_stream_si256(static_cast<__m256i*>(p), v); }
#endif
#endif

constexpr int64_t kChunk = 1024;
// Below this many elements the whole op runs on the calling thread: waking the pool costs as
// much as the work. Where a second thread starts to pay is measured by
// benchmarks/ops_lincomb_threads.py (figures in BENCHMARKS.md, "Threads from 64K elements on").
constexpr int64_t kParallelMinElems = 1 << 16;
// From this many bytes touched (the result plus its distinct terms) on, results bypass the
// cache (non-temporal stores) unless out is one of the terms (see run_plan). When an op's
// streams together exceed the last-level cache (32 MB on the machines measured), the start of
// its result is evicted before the op ends, so the next op reads it from memory anyway, and a
// normal store first reads the line it overwrites: one extra pass over memory of the five a
// solver step's 4-term fold makes, or of the six a 3-term + noise update makes. (Judged by
// the result's size alone, a 16 MB result of a 4-term step kept the extra pass.)
constexpr int64_t kStreamMinBytes = int64_t(32) << 20;
// From this output size on, the fused loop prefetches every term kPrefetchBytes ahead. The
// hardware prefetcher alone keeps too few lines in flight for four or more concurrent read
// streams (and stops at each 4 KB page); measured with benchmarks/ops_lincomb_paths.py, alike
// for distances of 1 to 4 KB. Below this size the terms are in L1/L2: pure overhead there.
constexpr int64_t kPrefetchMinBytes = int64_t(1) << 20;
constexpr int64_t kPrefetchBytes = 1024;
constexpr int64_t kCacheLine = 64;

// Runtime switches, on unless set to 0. PYDIFF_LINCOMB_STREAM_STORES=0 keeps large results in
// the cache hierarchy (for machines whose last-level cache holds them and whose next op reads
// them at once); PYDIFF_LINCOMB_PREFETCH=0 leaves prefetching to the hardware. Both let
// benchmarks/ops_lincomb_paths.py A/B the paths in one process. Read per call: only calls of
// >= 1 MB ask, and those take tens of microseconds or more.
bool switch_enabled(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || v[0] != '0';
}

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

constexpr int kMaxFusedTerms = 16;

// The common case in one pass with the sum in registers: every term and out share one float
// dtype T, are unit-stride, and every coefficient is constant along the chunk. (The general
// path below round-trips a float buffer in L1 once per term; at L2-resident sizes that, not
// DRAM, is the limit, so this path is the faster one there: BENCHMARKS.md, lincomb.)
template <typename T>
void fused_same_dtype(T* __restrict out, const T* const* p, const float* c, int K, int64_t n,
                      bool stream, bool prefetch) {
  // U vectors per step, the term loop inside: the sum stays in U registers and the per-term
  // loop overhead (pointer, broadcast, branch) is paid once per U vectors, not per vector,
  // which at L1/L2-resident sizes is what bounds the kernel.
  constexpr int U = 8;
  constexpr int64_t W = fVec::size();
  int64_t i = 0;
  constexpr int64_t kStepBytes = U * W * sizeof(T);
  for (; i + U * W <= n; i += U * W) {
    if (prefetch) {
      for (int k = 0; k < K; ++k) {
        const char* ahead = reinterpret_cast<const char*>(p[k] + i) + kPrefetchBytes;
        for (int64_t b = 0; b < kStepBytes; b += kCacheLine) __builtin_prefetch(ahead + b, 0, 3);
      }
    }
    fVec a[U];
    {
      const fVec c0(c[0]);
      for (int u = 0; u < U; ++u) a[u] = c0 * load_f(p[0] + i + u * W);
    }
    for (int k = 1; k < K; ++k) {
      const fVec ck(c[k]);
      const T* pk = p[k] + i;
      for (int u = 0; u < U; ++u) a[u] = at::vec::fmadd(ck, load_f(pk + u * W), a[u]);
    }
    if constexpr (std::is_same_v<T, float>) {
#ifdef PYDIFF_STREAM_STORES
      if (stream) {
        for (int u = 0; u < U; ++u) stream_store(out + i + u * W, a[u]);
        continue;
      }
#endif
      for (int u = 0; u < U; ++u) a[u].store(out + i + u * W);
    } else {
#ifdef PYDIFF_STREAM_STORES
      if (stream) {
        for (int u = 0; u < U; u += 2) {
          stream_store(out + i + u * W, at::vec::convert_from_float<T>(a[u], a[u + 1]));
        }
        continue;
      }
#endif
      for (int u = 0; u < U; u += 2) {
        at::vec::convert_from_float<T>(a[u], a[u + 1]).store(out + i + u * W);
      }
    }
  }
  for (; i < n; ++i) {
    float a = 0.f;
    for (int k = 0; k < K; ++k) a += c[k] * static_cast<float>(p[k][i]);
    out[i] = static_cast<T>(a);
  }
}

// Whether a plan can take fused_same_dtype (decided once per call, see run_plan).
bool fusable(const LincombPlan& p) {
  const int in = p.ndim - 1;
  const auto dt = p.ops[0].dtype;
  if (dt == at::kDouble || p.coef_op.size() > kMaxFusedTerms) return false;
  for (size_t k = 0; k < p.coef_op.size(); ++k) {
    const Operand& t = p.ops[1 + k];
    if (t.dtype != dt || t.stride[in] != 1) return false;
    if (p.coef_op[k] >= 0 && p.ops[p.coef_op[k]].stride[in] != 0) return false;
  }
  return p.ops[0].stride[in] == 1;
}

// Entry e's coefficient over elements [j0, j0 + n): nullptr with the constant in *cbuf when it
// is constant along the chunk, else cbuf filled with the per-element values.
template <typename A>
const A* entry_coef(const LincombPlan& p, int e, const int64_t* off, int64_t j0, int64_t n,
                    A* cbuf) {
  const int in = p.ndim - 1;
  const int ci = p.coef_op[e];
  const A scale = static_cast<A>(p.scales[e]);
  cbuf[0] = scale;
  if (ci < 0) return nullptr;
  const Operand& co = p.ops[ci];
  const char* cp = co.data + off[ci] + j0 * co.stride[in] * co.elsize;
  if (co.stride[in] == 0) {
    cbuf[0] = scale * read_scalar<A>(cp, co.dtype);
    return nullptr;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, co.dtype, "lincomb_coef", [&] {
    gather<A, scalar_t>(cbuf, reinterpret_cast<const scalar_t*>(cp), co.stride[in], n, scale);
  });
  return cbuf;
}

// acc (=|+=) coefficient * operand `q` over elements [j0, j0 + n) of the inner dimension; the
// coefficient is the per-element `cv`, or the constant `c` when cv is nullptr.
template <typename A>
void add_term(A* acc, const LincombPlan& p, int q, const A* cv, A c, const int64_t* off,
              int64_t j0, int64_t n, bool assign) {
  const int in = p.ndim - 1;
  const Operand& t = p.ops[q];
  const char* tp = t.data + off[q] + j0 * t.stride[in] * t.elsize;
  const int64_t ts = t.stride[in];
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.dtype, "lincomb_term", [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(tp);
    if (ts == 1) {
      if (cv == nullptr) axpy_scalar<A, scalar_t>(acc, c, x, n, assign);
      else axpy_vector<A, scalar_t>(acc, cv, x, n, assign);
    } else if (cv == nullptr) {
      if (assign) for (int64_t i = 0; i < n; ++i) acc[i] = c * static_cast<A>(x[i * ts]);
      else for (int64_t i = 0; i < n; ++i) acc[i] += c * static_cast<A>(x[i * ts]);
    } else {
      if (assign) for (int64_t i = 0; i < n; ++i) acc[i] = cv[i] * static_cast<A>(x[i * ts]);
      else for (int64_t i = 0; i < n; ++i) acc[i] += cv[i] * static_cast<A>(x[i * ts]);
    }
  });
}

template <typename A>
void store_output(const A* acc, const LincombPlan& p, int q, const int64_t* off, int64_t j0,
                  int64_t n) {
  const int in = p.ndim - 1;
  const Operand& o = p.ops[q];
  char* op = o.data + off[q] + j0 * o.stride[in] * o.elsize;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.dtype, "lincomb_store", [&] {
    store<A, scalar_t>(acc, reinterpret_cast<scalar_t*>(op), o.stride[in], n);
  });
}

// Processes elements [j0, j0 + n) of the inner dimension, with per-operand byte offsets `off`
// of the current outer index.
template <typename A>
void run_chunk(const LincombPlan& p, const int64_t* off, int64_t j0, int64_t n, bool fused,
               bool stream, bool prefetch) {
  const int in = p.ndim - 1;
  const int K = static_cast<int>(p.coef_op.size());
  if constexpr (std::is_same_v<A, float>) {
    if (fused) {
      const void* ptrs[kMaxFusedTerms];
      float cs[kMaxFusedTerms];
      for (int k = 0; k < K; ++k) {
        const Operand& t = p.ops[1 + k];
        ptrs[k] = t.data + off[1 + k] + j0 * t.elsize;
        const int ci = p.coef_op[k];
        cs[k] = static_cast<float>(p.scales[k]);
        if (ci >= 0) cs[k] *= read_scalar<float>(p.ops[ci].data + off[ci], p.ops[ci].dtype);
      }
      const Operand& o = p.ops[0];
      char* op = o.data + off[0] + j0 * o.elsize;
      const bool aligned = reinterpret_cast<uintptr_t>(op) % kVecBytes == 0;
      auto go = [&](auto tag) {
        using T = decltype(tag);
        fused_same_dtype<T>(reinterpret_cast<T*>(op), reinterpret_cast<const T* const*>(ptrs), cs,
                            K, n, stream && aligned, prefetch);
      };
      if (o.dtype == at::kFloat) go(float{});
      else if (o.dtype == at::kBFloat16) go(at::BFloat16{});
      else go(at::Half{});  // fusable() admits no other dtype
      return;
    }
  }
  A acc[kChunk];
  A cbuf[kChunk];
  for (int k = 0; k < K; ++k) {
    const A* cv = entry_coef<A>(p, k, off, j0, n, cbuf);
    add_term<A>(acc, p, 1 + k, cv, cbuf[0], off, j0, n, k == 0);
  }
  store_output<A>(acc, p, 0, off, j0, n);
}

// Calls chunk(off, j0, n) over the plan's chunks of kChunk inner elements (`off`: the byte
// offsets of each operand at the chunk's row), on the pool from kParallelMinElems elements.
template <typename F>
void for_each_chunk(const LincombPlan& p, bool fence, const F& chunk) {
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
      chunk(off.data(), j0, std::min(kChunk, inner - j0));
    }
#ifdef PYDIFF_STREAM_STORES
    // Orders the write-combined stores before whatever this thread does next. Once per thread's
    // range, not per chunk: a fence waits for every pending streaming store to reach memory,
    // and fencing each 4 KB chunk made large outputs slower (in-kernel A/B, BENCHMARKS.md).
    if (fence) _mm_sfence();
#endif
  };
  if (p.numel < kParallelMinElems) {
    work(0, items);
  } else {
    const int64_t grain = std::max<int64_t>(1, (kParallelMinElems / 2) / kChunk);
    at::parallel_for(0, items, grain, work);
  }
}

template <typename A>
void run_plan(const LincombPlan& p) {
  const bool fused = fusable(p);
  const int64_t out_bytes = p.numel * p.ops[0].elsize;
  // An in-place update (out is a term, as solvers write it) has just read every line it
  // writes, so a normal store costs no extra read, and streaming would push the lines out of
  // the cache only to write them: in place, streaming measured slower than normal stores
  // (benchmarks/ops_lincomb_paths.py --inplace; figures in BENCHMARKS.md).
  bool out_is_a_term = false;
  for (size_t k = 0; k < p.coef_op.size(); ++k)
    out_is_a_term |= p.ops[1 + k].data == p.ops[0].data;
  int64_t touched = out_bytes;
  for (size_t k = 0; k < p.coef_op.size(); ++k) {
    bool seen = false;  // a term given twice is read once
    for (size_t q = 0; q < k; ++q) seen |= p.ops[1 + q].data == p.ops[1 + k].data;
    if (!seen) touched += p.numel * p.ops[1 + k].elsize;
  }
  const bool stream = fused && !out_is_a_term && touched >= kStreamMinBytes &&
                      switch_enabled("PYDIFF_LINCOMB_STREAM_STORES");
  const bool prefetch =
      fused && out_bytes >= kPrefetchMinBytes && switch_enabled("PYDIFF_LINCOMB_PREFETCH");
  for_each_chunk(p, stream, [&](const int64_t* off, int64_t j0, int64_t n) {
    run_chunk<A>(p, off, j0, n, fused, stream, prefetch);
  });
}

// What pydiff::lincomb_multi computes besides the plan: the source of each entry and how many
// entries each output has (see check_lincomb_multi_args).
struct MultiSpec {
  int K = 0;
  std::vector<int64_t> source, count, keep;
};

inline float read_any(const char* p, at::ScalarType dt, int64_t i) {
  switch (dt) {
    case at::kFloat: return reinterpret_cast<const float*>(p)[i];
    case at::kHalf: return static_cast<float>(reinterpret_cast<const at::Half*>(p)[i]);
    default: return static_cast<float>(reinterpret_cast<const at::BFloat16*>(p)[i]);
  }
}

// The common case of lincomb_multi with the sums in registers (as fused_same_dtype): unit-stride
// float32/half/bf16 terms and outputs, coefficients constant along the chunk. Term dtypes may
// differ (a float32 state with a half-precision network output). Output j lives in U vector
// registers; j is a compile-time constant in each unrolled part, and the dtype of a term and
// the index of an earlier output are switched on once per block, not per vector.
template <typename TO>
void fused_multi(const MultiSpec& m, const char* const* tp, const at::ScalarType* tdt,
                 const float* c, TO* const* outp, int64_t n, bool prefetch) {
  constexpr int U = 8;
  constexpr int64_t W = fVec::size();
  const int R = static_cast<int>(m.count.size());
  // entries of each output: [first[j], first[j + 1])
  int first[kMaxOutputs + 1] = {0, 0, 0, 0, 0};
  for (int j = 0; j < R; ++j) first[j + 1] = first[j] + static_cast<int>(m.count[j]);
  for (int j = R; j < kMaxOutputs; ++j) first[j + 1] = first[j];
  int64_t i = 0;
  for (; i + U * W <= n; i += U * W) {
    if (prefetch) {
      for (int k = 0; k < m.K; ++k) {
        const char* ahead = tp[k] + i * at::elementSize(tdt[k]) + kPrefetchBytes;
        for (int64_t b = 0; b < U * W * 4; b += kCacheLine) __builtin_prefetch(ahead + b, 0, 3);
      }
    }
    fVec a[kMaxOutputs][U];
    auto output = [&](auto jc) {
      constexpr int j = decltype(jc)::value;
      for (int u = 0; u < U; ++u) a[j][u] = fVec(0.f);
      for (int e = first[j]; e < first[j + 1]; ++e) {
        const fVec cv(c[e]);
        const int64_t src = m.source[e];
        if (src < m.K) {
          const char* p = tp[src];
          switch (tdt[src]) {
            case at::kFloat: {
              const float* f = reinterpret_cast<const float*>(p) + i;
              for (int u = 0; u < U; ++u) a[j][u] = at::vec::fmadd(cv, fVec::loadu(f + u * W), a[j][u]);
              break;
            }
            case at::kHalf: {
              const at::Half* h = reinterpret_cast<const at::Half*>(p) + i;
              for (int u = 0; u < U; ++u) a[j][u] = at::vec::fmadd(cv, load_f(h + u * W), a[j][u]);
              break;
            }
            default: {
              const at::BFloat16* h = reinterpret_cast<const at::BFloat16*>(p) + i;
              for (int u = 0; u < U; ++u) a[j][u] = at::vec::fmadd(cv, load_f(h + u * W), a[j][u]);
              break;
            }
          }
        } else {
          // an earlier output (validated: src - K < j)
          switch (src - m.K) {
            case 0:
              for (int u = 0; u < U; ++u) a[j][u] = at::vec::fmadd(cv, a[0][u], a[j][u]);
              break;
            case 1:
              for (int u = 0; u < U; ++u) a[j][u] = at::vec::fmadd(cv, a[1][u], a[j][u]);
              break;
            default:
              for (int u = 0; u < U; ++u) a[j][u] = at::vec::fmadd(cv, a[2][u], a[j][u]);
              break;
          }
        }
      }
      if (outp[j] != nullptr) {
        if constexpr (std::is_same_v<TO, float>) {
          for (int u = 0; u < U; ++u) a[j][u].store(outp[j] + i + u * W);
        } else {
          for (int u = 0; u < U; u += 2)
            at::vec::convert_from_float<TO>(a[j][u], a[j][u + 1]).store(outp[j] + i + u * W);
        }
      }
    };
    output(std::integral_constant<int, 0>{});
    if (R > 1) output(std::integral_constant<int, 1>{});
    if (R > 2) output(std::integral_constant<int, 2>{});
    if (R > 3) output(std::integral_constant<int, 3>{});
  }
  for (; i < n; ++i) {
    float a[kMaxOutputs] = {0.f, 0.f, 0.f, 0.f};
    int e = 0;
    for (int j = 0; j < R; ++j) {
      for (int64_t q = 0; q < m.count[j]; ++q, ++e) {
        const int64_t src = m.source[e];
        a[j] += c[e] * (src < m.K ? read_any(tp[src], tdt[src], i) : a[src - m.K]);
      }
      if (outp[j] != nullptr) outp[j][i] = static_cast<TO>(a[j]);
    }
  }
}

// Whether a lincomb_multi plan can take fused_multi (decided once per call).
bool multi_fusable(const LincombPlan& p, int K) {
  const int in = p.ndim - 1;
  for (int q = 0; q < static_cast<int>(p.ops.size()); ++q) {
    const Operand& o = p.ops[q];
    if (q >= p.nout + K) {  // a coefficient tensor: constant along the chunk
      if (o.stride[in] != 0) return false;
    } else if (o.stride[in] != 1 || o.dtype == at::kDouble) {
      return false;
    }
  }
  return true;
}

// One chunk of lincomb_multi: the outputs are summed in order in L1 buffers, so an output that
// reads an earlier one (the x0 a solver step folds in) reads it from the buffer, every input is
// read from memory once per chunk, and only the kept outputs are stored.
template <typename A>
void multi_chunk(const LincombPlan& p, const MultiSpec& m, const int64_t* off, int64_t j0,
                 int64_t n, bool fused, bool prefetch) {
  const int R = static_cast<int>(m.count.size());
  if constexpr (std::is_same_v<A, float>) {
    if (fused) {
      const char* tp[kMaxEntries];
      at::ScalarType tdt[kMaxEntries];
      for (int k = 0; k < m.K; ++k) {
        const Operand& t = p.ops[p.nout + k];
        tp[k] = t.data + off[p.nout + k] + j0 * t.elsize;
        tdt[k] = t.dtype;
      }
      float cs[kMaxEntries];
      for (size_t e = 0; e < m.source.size(); ++e) {
        const int ci = p.coef_op[e];
        cs[e] = static_cast<float>(p.scales[e]);
        if (ci >= 0) cs[e] *= read_scalar<float>(p.ops[ci].data + off[ci], p.ops[ci].dtype);
      }
      char* op[kMaxOutputs] = {nullptr, nullptr, nullptr, nullptr};
      int slot = 0;
      for (int j = 0; j < R; ++j)
        if (m.keep[j]) op[j] = p.ops[slot].data + off[slot] + j0 * p.ops[slot].elsize, ++slot;
      auto go = [&](auto tag) {
        using TO = decltype(tag);
        TO* outp[kMaxOutputs];
        for (int j = 0; j < kMaxOutputs; ++j) outp[j] = reinterpret_cast<TO*>(op[j]);
        fused_multi<TO>(m, tp, tdt, cs, outp, n, prefetch);
      };
      const auto dt = p.ops[0].dtype;
      if (dt == at::kFloat) go(float{});
      else if (dt == at::kBFloat16) go(at::BFloat16{});
      else go(at::Half{});  // multi_fusable() admits no other dtype
      return;
    }
  }
  A acc[kMaxOutputs][kChunk];
  A cbuf[kChunk];
  if (prefetch) {
    // the next chunk of every unit-stride term, one chunk ahead (see kPrefetchMinBytes)
    const int in = p.ndim - 1;
    for (int k = 0; k < m.K; ++k) {
      const Operand& t = p.ops[p.nout + k];
      if (t.stride[in] != 1) continue;
      const char* next = t.data + off[p.nout + k] + (j0 + n) * t.elsize;
      const int64_t bytes = std::min<int64_t>(n, p.size[in] - j0 - n) * t.elsize;
      for (int64_t b = 0; b < bytes; b += kCacheLine) __builtin_prefetch(next + b, 0, 3);
    }
  }
  int e = 0;
  for (int j = 0; j < R; ++j) {
    if (m.count[j] == 0) std::fill(acc[j], acc[j] + n, A(0));
    for (int64_t q = 0; q < m.count[j]; ++q, ++e) {
      const A* cv = entry_coef<A>(p, e, off, j0, n, cbuf);
      const A c = cbuf[0];
      const int64_t src = m.source[e];
      if (src < m.K) {
        add_term<A>(acc[j], p, p.nout + static_cast<int>(src), cv, c, off, j0, n, q == 0);
      } else if (cv == nullptr) {
        axpy_scalar<A, A>(acc[j], c, acc[src - m.K], n, q == 0);
      } else {
        axpy_vector<A, A>(acc[j], cv, acc[src - m.K], n, q == 0);
      }
    }
  }
  int slot = 0;  // kept outputs are ops[0..nout-1], in order
  for (int j = 0; j < R; ++j)
    if (m.keep[j]) store_output<A>(acc[j], p, slot++, off, j0, n);
}

void lincomb_into(at::TensorList terms, at::TensorList coeffs, at::IntArrayRef coeff_index,
                  at::ArrayRef<double> scales, const at::Tensor& out) {
  if (out.numel() == 0) return;
  // A 0-dim CPU coefficient is read directly; other coefficients must be CPU tensors here.
  const LincombPlan plan = make_lincomb_plan(terms, coeffs, coeff_index, scales, out);
  if (out.scalar_type() == at::kDouble) run_plan<double>(plan);
  else run_plan<float>(plan);
}

}  // namespace

std::vector<at::Tensor> lincomb_multi_cpu(at::TensorList terms, at::TensorList coeffs,
                                          at::IntArrayRef coeff_index,
                                          at::ArrayRef<double> scales, at::IntArrayRef sources,
                                          at::IntArrayRef counts, at::IntArrayRef keep) {
  check_lincomb_multi_args(terms, coeffs, coeff_index, scales, sources, counts, keep);
  std::vector<at::Tensor> outs;
  for (int64_t k : keep) {
    if (k) {
      outs.push_back(empty_cached(terms[0].sizes(), terms[0].options()));
    }
  }
  if (outs.empty() || terms[0].numel() == 0) return outs;
  const LincombPlan plan = make_lincomb_plan(terms, coeffs, coeff_index, scales, outs);
  MultiSpec m;
  m.K = static_cast<int>(terms.size());
  m.source.assign(sources.begin(), sources.end());
  m.count.assign(counts.begin(), counts.end());
  m.keep.assign(keep.begin(), keep.end());
  const bool prefetch = plan.numel * terms[0].element_size() >= kPrefetchMinBytes &&
                        switch_enabled("PYDIFF_LINCOMB_PREFETCH");
  const bool fused = multi_fusable(plan, m.K);
  auto run = [&](auto tag) {
    using A = decltype(tag);
    for_each_chunk(plan, false, [&](const int64_t* off, int64_t j0, int64_t n) {
      multi_chunk<A>(plan, m, off, j0, n, fused, prefetch);
    });
  };
  if (terms[0].scalar_type() == at::kDouble) run(double{});
  else run(float{});
  return outs;
}

TORCH_LIBRARY_IMPL(pydiff, CPU, m) {
  m.impl("lincomb_multi", &lincomb_multi_cpu);
  m.impl("lincomb", &lincomb_via<lincomb_into, empty_cached>);
  m.impl("lincomb_out", &lincomb_out_via<lincomb_into>);
}

}  // namespace pydiff
