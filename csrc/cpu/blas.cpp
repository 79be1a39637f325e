#include "blas.h"

#include <dlfcn.h>
#include <sys/mman.h>

#include <cstdint>


namespace pydiff::cpu {
namespace {

using sgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const float*, const float*, const int*, const float*, const int*,
                         const float*, float*, const int*);
using dgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const double*, const double*, const int*, const double*, const int*,
                         const double*, double*, const int*);

using set_threads_local_t = int (*)(int);

struct Blas {
  sgemm_t sgemm = nullptr;
  dgemm_t dgemm = nullptr;
  set_threads_local_t set_threads_local = nullptr;  // MKL only
};

const Blas& blas() {
  static Blas b = [] {
    Blas r;
    // libtorch_cpu is already loaded (we link against it); RTLD_NOLOAD just gets its handle.
    void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (h == nullptr) h = RTLD_DEFAULT;
    r.sgemm = reinterpret_cast<sgemm_t>(dlsym(h, "sgemm_"));
    r.dgemm = reinterpret_cast<dgemm_t>(dlsym(h, "dgemm_"));
    r.set_threads_local = reinterpret_cast<set_threads_local_t>(dlsym(h, "MKL_Set_Num_Threads_Local"));
    return r;
  }();
  return b;
}

// Fallback: the same column-major product through ATen. A column-major (r x c, ld) matrix is a
// row-major (c x r) matrix with row stride ld, so op(A)*op(B) in column-major is computed as
// C^T = op(B)^T op(A)^T in row-major.
template <typename T>
void gemm_aten(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // row-major views of the column-major operands
  auto A = ta == Trans::N ? at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, opts)
                          : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts).t();
  auto B = tb == Trans::N ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opts)
                          : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts).t();
  auto C = at::from_blob(c, {n, m}, {ldc, 1}, opts);
  // C^T (n x m) = B^T-as-rowmajor (n x k) @ A^T-as-rowmajor (k x m)
  if (beta == T(0)) {
    at::mm_out(C, B, A);
    if (alpha != T(1)) C.mul_(alpha);
  } else {
    C.mul_(beta).add_(at::mm(B, A), alpha);
  }
}

template <typename T, typename F>
void gemm_impl(F f, Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (f == nullptr) return gemm_aten<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const char cta = static_cast<char>(ta), ctb = static_cast<char>(tb);
  const int im = m, in = n, ik = k, ilda = lda, ildb = ldb, ildc = ldc;
  f(&cta, &ctb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
}

}  // namespace

void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm_impl<float>(blas().sgemm, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  gemm_impl<double>(blas().dgemm, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

SingleThreadedBlas::SingleThreadedBlas() {
  if (const auto f = blas().set_threads_local) prev_ = f(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (const auto f = blas().set_threads_local) f(prev_);  // 0 restores the global setting
}

void advise_huge_pages(void* data, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < (size_t(8) << 20)) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

const char* gemm_backend() { return blas().sgemm != nullptr ? "blas" : "aten"; }

}  // namespace pydiff::cpu
