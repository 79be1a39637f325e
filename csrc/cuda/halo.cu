// CUDA kernels of pydiff::halo_pack / halo_unpack (same schema and semantics as
// csrc/cpu/halo.cpp): one launch per group of up to kMaxMaps maps, one element per thread
// (grid-stride), each thread finding its map by a scan over the group's slab offsets. The
// element is moved as an unsigned integer of the dtype's size, so every dtype shares the kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../halo_plan.h"

namespace pydiff {
namespace {

constexpr int kMaxMaps = 24;  // HaloMap is 80 bytes: the group fits in the 4 KB of kernel args
constexpr int kThreads = 256;

struct HaloGroup {
  HaloMap maps[kMaxMaps];
  void* ptr[kMaxMaps];
  int n;
  int64_t begin, end;  // the group's range of buffer elements
};

template <typename E, bool ToBuffer>
__global__ void halo_kernel(HaloGroup g, E* buffer) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = g.begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       e < g.end; e += stride) {
    int i = 0;
    while (i + 1 < g.n && e >= g.maps[i + 1].offset) ++i;
    const HaloMap& m = g.maps[i];
    E* p = static_cast<E*>(g.ptr[i]) + halo_map_offset(m, e - m.offset);
    if (ToBuffer) buffer[e] = *p;
    else *p = buffer[e];
  }
}

template <typename E>
void launch_groups(const std::vector<HaloMap>& plan, const std::vector<void*>& ptr, void* buffer,
                   bool to_buffer, cudaStream_t stream) {
  for (size_t first = 0; first < plan.size(); first += kMaxMaps) {
    HaloGroup g{};
    g.n = static_cast<int>(std::min<size_t>(kMaxMaps, plan.size() - first));
    for (int j = 0; j < g.n; ++j) {
      g.maps[j] = plan[first + j];
      g.ptr[j] = ptr[first + j];
    }
    g.begin = g.maps[0].offset;
    g.end = g.maps[g.n - 1].offset + g.maps[g.n - 1].numel;
    if (g.end == g.begin) continue;
    const int64_t blocks = std::min<int64_t>((g.end - g.begin + kThreads - 1) / kThreads, 65535);
    if (to_buffer) {
      halo_kernel<E, true><<<blocks, kThreads, 0, stream>>>(g, static_cast<E*>(buffer));
    } else {
      halo_kernel<E, false><<<blocks, kThreads, 0, stream>>>(g, static_cast<E*>(buffer));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void halo_copy_cuda(const std::vector<HaloMap>& plan, const std::vector<void*>& ptr,
                    void* buffer, int64_t elsize, bool to_buffer) {
  auto stream = at::cuda::getCurrentCUDAStream();
  switch (elsize) {
    case 1: launch_groups<uint8_t>(plan, ptr, buffer, to_buffer, stream); break;
    case 2: launch_groups<uint16_t>(plan, ptr, buffer, to_buffer, stream); break;
    case 4: launch_groups<uint32_t>(plan, ptr, buffer, to_buffer, stream); break;
    case 8: launch_groups<uint64_t>(plan, ptr, buffer, to_buffer, stream); break;
    default: TORCH_CHECK(false, "pydiff::halo: unsupported element size ", elsize);
  }
}

at::Tensor halo_pack_cuda(at::TensorList maps, at::IntArrayRef rows, bool top) {
  TORCH_CHECK(!maps.empty(), "pydiff::halo_pack: no maps");
  c10::cuda::CUDAGuard guard(maps[0].device());
  int64_t total = 0;
  auto plan = halo_plan("pydiff::halo_pack", maps, rows, top, &total);
  at::Tensor buffer = at::empty({total}, maps[0].options());
  std::vector<void*> ptr;
  for (const auto& m : maps) ptr.push_back(m.data_ptr());
  halo_copy_cuda(plan, ptr, buffer.data_ptr(), maps[0].element_size(), true);
  return buffer;
}

void halo_unpack_cuda(const at::Tensor& buffer, at::TensorList dests, at::IntArrayRef rows,
                      bool top) {
  TORCH_CHECK(!dests.empty(), "pydiff::halo_unpack: no destinations");
  c10::cuda::CUDAGuard guard(dests[0].device());
  int64_t total = 0;
  auto plan = halo_plan("pydiff::halo_unpack", dests, rows, top, &total);
  check_halo_buffer(buffer, dests, total);
  std::vector<void*> ptr;
  for (const auto& d : dests) ptr.push_back(d.data_ptr());
  halo_copy_cuda(plan, ptr, buffer.data_ptr(), buffer.element_size(), false);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiff, CUDA, m) {
  m.impl("halo_pack", &halo_pack_cuda);
  m.impl("halo_unpack", &halo_unpack_cuda);
}

}  // namespace pydiff
