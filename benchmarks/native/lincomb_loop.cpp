// Standalone loop variants of lincomb's fused 3-term + noise pass (float32, 64M elements, two
// OpenMP threads), to find what the machine's memory system rewards without a torch build in
// between. Each variant is timed in 12 interleaved rounds; prints a table and writes JSON.
//
//   g++ -O3 -mavx2 -mfma -fopenmp benchmarks/native/lincomb_loop.cpp -o /tmp/lincomb_loop
//   /tmp/lincomb_loop benchmarks/results/lincomb_loop.json
//
// Variants: streaming stores fenced once per thread (what the kernel does) or once per 4 KB
// chunk (what it did until the fourth session); software prefetch 1 KB ahead into L1 (T0,
// the kernel's choice), L2 (T1) or non-temporally (NTA); normal stores; AVX-512; and the eager
// sequence as four passes.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr long kN = 1L << 26;
constexpr long kChunk = 1024;  // the kernel's chunk, in elements
float* g_in[4];
float* g_out;
const float g_c[4] = {0.9f, 0.3f, -0.2f, 0.1f};

enum Fence { kPerThread, kPerChunk };

// The four cache lines of every term that 64 floats from element i on will need, Pf bytes ahead.
template <int Pf, int Hint>
inline void prefetch_terms(long i) {
  if (Pf == 0) return;
  for (int k = 0; k < 4; ++k)
    for (int l = 0; l < 4; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(g_in[k] + i) + Pf + 64 * l, (_mm_hint)Hint);
}

// One chunk of 1024 floats, 64 at a time, with an optional prefetch `Pf` bytes ahead.
template <int Pf, int Hint, bool Stream>
inline void avx2_chunk(long b, long e) {
  const __m256 c0 = _mm256_set1_ps(g_c[0]), c1 = _mm256_set1_ps(g_c[1]);
  const __m256 c2 = _mm256_set1_ps(g_c[2]), c3 = _mm256_set1_ps(g_c[3]);
  for (long i = b; i < e; i += 64) {
    prefetch_terms<Pf, Hint>(i);
    for (int u = 0; u < 8; ++u) {
      const long j = i + 8 * u;
      __m256 a = _mm256_mul_ps(c0, _mm256_loadu_ps(g_in[0] + j));
      a = _mm256_fmadd_ps(c1, _mm256_loadu_ps(g_in[1] + j), a);
      a = _mm256_fmadd_ps(c2, _mm256_loadu_ps(g_in[2] + j), a);
      a = _mm256_fmadd_ps(c3, _mm256_loadu_ps(g_in[3] + j), a);
      if (Stream) _mm256_stream_ps(g_out + j, a);
      else _mm256_storeu_ps(g_out + j, a);
    }
  }
}

template <int Pf, int Hint, bool Stream, Fence F>
void avx2(long b, long e) {
  for (long i = b; i < e; i += kChunk) {
    avx2_chunk<Pf, Hint, Stream>(i, i + kChunk);
    if (Stream && F == kPerChunk) _mm_sfence();
  }
  if (Stream) _mm_sfence();
}

template <int Pf>
__attribute__((target("avx512f"))) void avx512(long b, long e) {
  const __m512 c0 = _mm512_set1_ps(g_c[0]), c1 = _mm512_set1_ps(g_c[1]);
  const __m512 c2 = _mm512_set1_ps(g_c[2]), c3 = _mm512_set1_ps(g_c[3]);
  for (long i = b; i < e; i += 64) {
    prefetch_terms<Pf, _MM_HINT_T0>(i);
    for (int u = 0; u < 4; ++u) {
      const long j = i + 16 * u;
      __m512 a = _mm512_mul_ps(c0, _mm512_loadu_ps(g_in[0] + j));
      a = _mm512_fmadd_ps(c1, _mm512_loadu_ps(g_in[1] + j), a);
      a = _mm512_fmadd_ps(c2, _mm512_loadu_ps(g_in[2] + j), a);
      a = _mm512_fmadd_ps(c3, _mm512_loadu_ps(g_in[3] + j), a);
      _mm512_stream_ps(g_out + j, a);
    }
  }
  _mm_sfence();
}

// torch.mul(x, c0, out=buf) then buf.add_(t, alpha=c) three times.
void eager(long b, long e) {
  const __m256 c0 = _mm256_set1_ps(g_c[0]);
  for (long i = b; i < e; i += 8) _mm256_storeu_ps(g_out + i, _mm256_mul_ps(c0, _mm256_loadu_ps(g_in[0] + i)));
  for (int k = 1; k < 4; ++k) {
    const __m256 c = _mm256_set1_ps(g_c[k]);
    for (long i = b; i < e; i += 8)
      _mm256_storeu_ps(g_out + i, _mm256_fmadd_ps(c, _mm256_loadu_ps(g_in[k] + i), _mm256_loadu_ps(g_out + i)));
  }
}

using Loop = void (*)(long, long);

double run_ms(Loop f) {
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(2)
  {
    const long half = kN / 2, t = omp_get_thread_num();
    f(t * half, (t + 1) * half);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  for (int k = 0; k < 5; ++k) {
    float* p = static_cast<float*>(std::aligned_alloc(64, kN * sizeof(float)));
    for (long i = 0; i < kN; ++i) p[i] = (i % 97) * 0.01f;
    (k < 4 ? g_in[k] : g_out) = p;
  }
  const struct { const char* name; Loop f; bool avx512 = false; } variants[] = {
      {"stream, fence per thread", avx2<0, 0, true, kPerThread>},
      {"stream, fence per chunk", avx2<0, 0, true, kPerChunk>},
      {"stream + prefetch T0 1K", avx2<1024, _MM_HINT_T0, true, kPerThread>},
      {"stream + prefetch T1 1K", avx2<1024, _MM_HINT_T1, true, kPerThread>},
      {"stream + prefetch NTA 1K", avx2<1024, _MM_HINT_NTA, true, kPerThread>},
      {"normal stores + prefetch T0 1K", avx2<1024, _MM_HINT_T0, false, kPerThread>},
      {"avx512 stream", avx512<0>, true},
      {"avx512 stream + prefetch T0 1K", avx512<1024>, true},
      {"eager (4 passes)", eager},
  };
  const int nv = sizeof(variants) / sizeof(variants[0]);
  const bool has_avx512 = __builtin_cpu_supports("avx512f");  // else those rows read 0
  std::vector<std::vector<double>> ms(nv);
  for (int round = 0; round < 12; ++round)
    for (int v = 0; v < nv; ++v)
      ms[v].push_back(variants[v].avx512 && !has_avx512 ? 0.0 : run_ms(variants[v].f));
  for (auto& m : ms) std::sort(m.begin(), m.end());
  const double eager_ms = ms[nv - 1][0];
  std::printf("%-32s %8s %8s %8s\n", "64M float32, 2 threads", "min ms", "med ms", "x eager");
  for (int v = 0; v < nv; ++v)
    std::printf("%-32s %8.1f %8.1f %8.2f\n", variants[v].name, ms[v][0], ms[v][6], eager_ms / ms[v][0]);
  if (argc > 1) {
    FILE* f = std::fopen(argv[1], "w");
    if (!f) return 1;
    std::fprintf(f, "{\"benchmark\": \"lincomb_loop\", \"elements\": %ld, \"threads\": 2, \"results\": [", kN);
    for (int v = 0; v < nv; ++v)
      std::fprintf(f, "%s\n {\"variant\": \"%s\", \"min_ms\": %.3f, \"median_ms\": %.3f}", v ? "," : "",
                   variants[v].name, ms[v][0], ms[v][6]);
    std::fprintf(f, "\n]}\n");
    std::fclose(f);
    std::printf("wrote %s\n", argv[1]);
  }
}
