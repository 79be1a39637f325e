// A bounded cache of CPU blocks for the results of pydiff's solver-step ops (lincomb,
// lincomb_multi). See output_cache.cpp for why.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace pydiff {

// A contiguous CPU tensor like at::empty(sizes, options), whose memory comes from (and returns
// to) the output cache.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes held by the cache now (blocks not in use), and releasing them to the system allocator.
int64_t output_cache_bytes();
int64_t output_cache_clear();
// The cache's bound in bytes (PYDIFF_CPU_CACHE_MB, default 256; 0 turns the cache off).
int64_t output_cache_limit();

}  // namespace pydiff
