// ctest: load libpydiff_ops into a libtorch program, check the schemas are registered with a
// CPU kernel, and run lincomb once against a hand-computed result.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>

int main() {
  if (dlopen(PYDIFF_OPS_LIB, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::printf("FAIL: cannot load %s: %s\n", PYDIFF_OPS_LIB, dlerror());
    return 1;
  }
  int failures = 0;
  for (const char* op : {"pydiff::lincomb", "pydiff::lincomb_out", "pydiff::lincomb_multi",
                         "pydiff::attention", "pydiff::attention_backward",
                         "pydiff::linear_attention", "pydiff::linear_attention_backward",
                         "pydiff::halo_pack", "pydiff::halo_unpack"}) {
    auto h = c10::Dispatcher::singleton().findSchema({op, ""});
    if (!h.has_value() || !h->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
      std::printf("FAIL: %s has no CPU kernel\n", op);
      ++failures;
    }
  }
  auto lincomb = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("pydiff::lincomb", "")
                     .typed<at::Tensor(at::TensorList, at::TensorList, at::IntArrayRef,
                                       at::ArrayRef<double>)>();
  const at::Tensor x = at::arange(6, at::kFloat).reshape({2, 3});
  const at::Tensor h = at::tensor({0.5, 2.0}, at::kDouble).reshape({2, 1});
  const at::Tensor y = lincomb.call({x, x}, {h}, {-1, 0}, {1.0, 1.0});
  const at::Tensor want = x + x * h.to(at::kFloat);
  if (!at::allclose(y, want)) {
    std::printf("FAIL: lincomb result\n");
    ++failures;
  }
  if (failures == 0) std::printf("op registration: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
