// CPU kernels of pydiff::halo_pack / halo_unpack (schemas in csrc/ops.cpp): the halo rows of a
// list of feature maps gathered into one contiguous buffer per neighbour, and scattered back
// into the neighbour's (padded) maps. One message per neighbour instead of one per map, and no
// intermediate .contiguous() copies of strided slices.
//
// Copies are dtype-agnostic (element size only). A slab row whose elements are contiguous in the
// map (stride(3) == 1) is one memcpy of W elements; other layouts go element by element.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../halo_plan.h"

namespace pydiff {
namespace {

// Copies between each map's slab rows and the buffer; to_buffer picks the direction.
void halo_copy(const std::vector<HaloMap>& plan, std::vector<char*> map_ptr, char* buffer,
               int64_t elsize, bool to_buffer) {
  for (size_t i = 0; i < plan.size(); ++i) {
    const HaloMap& m = plan[i];
    if (m.numel == 0) continue;
    const int64_t n_rows = m.numel / m.W;  // B * C * rows slab rows of W elements
    char* base = map_ptr[i];
    at::parallel_for(0, n_rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        char* buf = buffer + (m.offset + r * m.W) * elsize;
        char* src = base + halo_map_offset(m, r * m.W) * elsize;
        if (m.s3 == 1) {
          if (to_buffer) std::memcpy(buf, src, m.W * elsize);
          else std::memcpy(src, buf, m.W * elsize);
        } else {
          for (int64_t w = 0; w < m.W; ++w) {
            char* s = src + w * m.s3 * elsize;
            if (to_buffer) std::memcpy(buf + w * elsize, s, elsize);
            else std::memcpy(s, buf + w * elsize, elsize);
          }
        }
      }
    });
  }
}

at::Tensor halo_pack_cpu(at::TensorList maps, at::IntArrayRef rows, bool top) {
  TORCH_CHECK(!maps.empty(), "pydiff::halo_pack: no maps");
  int64_t total = 0;
  auto plan = halo_plan("pydiff::halo_pack", maps, rows, top, &total);
  at::Tensor buffer = at::empty({total}, maps[0].options());
  std::vector<char*> ptr;
  for (const auto& m : maps) ptr.push_back(static_cast<char*>(m.data_ptr()));
  halo_copy(plan, ptr, static_cast<char*>(buffer.data_ptr()), maps[0].element_size(), true);
  return buffer;
}

void halo_unpack_cpu(const at::Tensor& buffer, at::TensorList dests, at::IntArrayRef rows,
                     bool top) {
  TORCH_CHECK(!dests.empty(), "pydiff::halo_unpack: no destinations");
  int64_t total = 0;
  auto plan = halo_plan("pydiff::halo_unpack", dests, rows, top, &total);
  check_halo_buffer(buffer, dests, total);
  std::vector<char*> ptr;
  for (const auto& d : dests) ptr.push_back(static_cast<char*>(d.data_ptr()));
  halo_copy(plan, ptr, static_cast<char*>(buffer.data_ptr()), buffer.element_size(), false);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiff, CPU, m) {
  m.impl("halo_pack", &halo_pack_cpu);
  m.impl("halo_unpack", &halo_unpack_cpu);
}

}  // namespace pydiff
