// Argument checks and buffer layout of pydiff::halo_pack / halo_unpack, shared by the CPU and
// CUDA implementations (ATen-side; the per-element index math is in pydiff/halo.h).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "pydiff/halo.h"

namespace pydiff {

// One HaloMap per tensor (maps to pack, or destinations to unpack into): checks 4-D shapes, one
// dtype and device, 0 <= rows[i] <= H_i, and lays the slabs out one after another.
inline std::vector<HaloMap> halo_plan(const char* op, at::TensorList maps, at::IntArrayRef rows,
                                      bool top, int64_t* total) {
  TORCH_CHECK(maps.size() == rows.size(), op, ": ", maps.size(), " maps but ", rows.size(),
              " row counts");
  std::vector<HaloMap> plan;
  plan.reserve(maps.size());
  int64_t offset = 0;
  for (size_t i = 0; i < maps.size(); ++i) {
    const at::Tensor& m = maps[i];
    TORCH_CHECK(m.dim() == 4, op, ": maps[", i, "] must be [B, C, H, W]; got ", m.sizes());
    TORCH_CHECK(m.scalar_type() == maps[0].scalar_type() && m.device() == maps[0].device(), op,
                ": maps[", i, "] is ", m.scalar_type(), " on ", m.device(), ", maps[0] ",
                maps[0].scalar_type(), " on ", maps[0].device(), "; expected one dtype and device");
    const int64_t r = rows[i], H = m.size(2);
    TORCH_CHECK(r >= 0 && r <= H, op, ": rows[", i, "] = ", r, " must be in [0, H = ", H, "]");
    HaloMap h{offset, m.size(0) * m.size(1) * r * m.size(3), m.size(1), r, m.size(3),
              top ? 0 : H - r, m.stride(0), m.stride(1), m.stride(2), m.stride(3)};
    offset += h.numel;
    plan.push_back(h);
  }
  *total = offset;
  return plan;
}

// The buffer halo_unpack scatters: 1-D, contiguous, `total` elements, the destinations' dtype
// and device.
inline void check_halo_buffer(const at::Tensor& buffer, at::TensorList dests,
                              int64_t total) {
  TORCH_CHECK(buffer.dim() == 1 && buffer.numel() == total && buffer.is_contiguous(),
              "pydiff::halo_unpack: buffer must be a contiguous 1-D tensor of ", total,
              " elements (the destinations' halo rows); got ", buffer.sizes());
  TORCH_CHECK(buffer.scalar_type() == dests[0].scalar_type() &&
                  buffer.device() == dests[0].device(),
              "pydiff::halo_unpack: buffer is ", buffer.scalar_type(), " on ", buffer.device(),
              ", the destinations ", dests[0].scalar_type(), " on ", dests[0].device());
}

}  // namespace pydiff
