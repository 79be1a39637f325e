// Why a cache: a sampler allocates one result per step of the state's size and frees the one
// from a step or two before. glibc serves such large blocks with fresh mmaps or trims them
// from the top of the heap, so each step's result is first-touch memory: the kernel page-faults
// (and zeroes) every page of it before writing, which costs about as much as the step's own
// memory traffic at large states, and more or less of it from run to run depending on the
// allocator's state (BENCHMARKS.md, "Time per step"). Keeping freed blocks of the exact size
// and handing them back to the next step removes that, as torch's CUDA caching allocator does
// on the GPU. The cache is bounded (PYDIFF_CPU_CACHE_MB, default 256 MiB; 0 turns it off), holds
// only blocks of at least kMinBytes (glibc keeps smaller ones in its own bins), and
// pydiff.ops.empty_cache() releases what it holds.
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace pydiff {
namespace {

constexpr size_t kMinBytes = size_t(64) << 10;
// A block starts with a header holding its payload size; the payload stays 64-byte aligned.
constexpr size_t kHeader = 64;

size_t limit_from_env() {
  const char* v = std::getenv("PYDIFF_CPU_CACHE_MB");
  if (v == nullptr || *v == '\0') return size_t(256) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(v, &end, 10);
  if (end == v || mb < 0) return size_t(256) << 20;
  return static_cast<size_t>(mb) << 20;
}

class OutputCache final : public c10::Allocator {
 public:
  OutputCache() : limit_(limit_from_env()) {
    // a fork while another thread holds the lock would leave the child's cache locked forever
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
  }

  static OutputCache& instance() {
    // never destroyed: tensors freed during interpreter exit still return their blocks here
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, c10::Device(c10::DeviceType::CPU)};
    char* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(n);
      if (it != free_.end() && !it->second.empty()) {
        block = static_cast<char*>(it->second.back());
        it->second.pop_back();
        cached_ -= n;
      }
    }
    if (block == nullptr) {
      block = static_cast<char*>(c10::alloc_cpu(n + kHeader));
      std::memcpy(block, &n, sizeof(n));
    }
    char* data = block + kHeader;
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  bool caches(size_t n) const { return limit_ > 0 && n >= kMinBytes; }

  int64_t bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_);
  }

  int64_t limit() const { return static_cast<int64_t>(limit_); }

  int64_t clear() {
    std::vector<void*> blocks;
    size_t freed = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [n, list] : free_) blocks.insert(blocks.end(), list.begin(), list.end());
      free_.clear();
      freed = cached_;
      cached_ = 0;
    }
    for (void* b : blocks) c10::free_cpu(b);
    return static_cast<int64_t>(freed);
  }

 private:
  static void release(void* data) {
    if (data == nullptr) return;
    char* block = static_cast<char*>(data) - kHeader;
    size_t n = 0;
    std::memcpy(&n, block, sizeof(n));
    OutputCache& c = instance();
    {
      std::lock_guard<std::mutex> lock(c.mutex_);
      if (c.cached_ + n <= c.limit_) {
        c.free_[n].push_back(block);
        c.cached_ += n;
        return;
      }
    }
    c10::free_cpu(block);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  const size_t limit_;
};

}  // namespace

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  OutputCache& cache = OutputCache::instance();
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (!options.device().is_cpu() || !cache.caches(bytes))
    return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
  return at::detail::empty_generic(sizes, &cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), at::MemoryFormat::Contiguous);
}

int64_t output_cache_bytes() { return OutputCache::instance().bytes(); }
int64_t output_cache_clear() { return OutputCache::instance().clear(); }
int64_t output_cache_limit() { return OutputCache::instance().limit(); }

}  // namespace pydiff
