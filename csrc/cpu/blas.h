// Raw-pointer GEMM for the CPU attention kernels (column-major, BLAS conventions).
//
// The attention kernels multiply small tiles (e.g. 256x64 by 64x512) thousands of times per
// call; going through at::mm for each tile would cost microseconds of dispatch per tile. torch's
// own at::native::cpublas::gemm is not exported from libtorch, but the BLAS that torch links
// (MKL on x86-64) exports the Fortran symbols sgemm_/dgemm_, which we look up once at run time.
// If they are absent (another BLAS build), we fall back to at::mm_out on from_blob views:
// correct, only slower.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace pydiff::cpu {

enum class Trans : char { N = 'N', T = 'T' };

// C (m x n, ldc) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, all column-major.
void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// Makes the BLAS of the calling thread single-threaded for the guard's lifetime. The kernels
// call gemm() from inside at::parallel_for, one tile per thread; MKL would otherwise start a
// nested team of threads in every call (torch turns MKL's dynamic adjustment off), and the
// oversubscribed, spin-waiting teams cost many times the CPU time of the work.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int prev_ = 0;
};

// Runs body(i) for i in [0, n), one (batch, head) pair each, whose GEMMs are large. With at
// least as many pairs as threads, the pairs run in parallel on single-threaded BLAS; with fewer,
// they run one after another and each GEMM uses BLAS's own threads (B * H = 1 would otherwise
// leave all threads but one idle).
template <typename F>
void for_each_head(int64_t n, const F& body) {
  if (n >= at::get_num_threads()) {
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      SingleThreadedBlas single_threaded_blas;
      for (int64_t i = begin; i < end; ++i) body(i);
    });
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// Which implementation gemm() uses: "blas" (sgemm_/dgemm_ found) or "aten".
const char* gemm_backend();

// Ask the kernel for transparent huge pages on a fresh, untouched output buffer of at least
// 8 MB (only the 2 MB-aligned interior; a no-op where THP is off or unsupported). With the
// common THP mode "madvise", first-touch page faults of a large fresh output in 4 KB pages
// cost as much as the GEMM that fills it (benchmarks/ops_linear_parts.py; BENCHMARKS.md,
// linear attention).
void advise_huge_pages(void* data, size_t bytes);

}  // namespace pydiff::cpu
