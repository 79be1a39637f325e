// Index math of the halo exchange ops (pydiff::halo_pack / halo_unpack), shared by the CPU and
// CUDA kernels. A packed buffer holds, one map after another, the [B, C, rows, W] slab of halo
// rows of each [B, C, H, W] feature map, contiguous; `HaloMap` says where a map's slab starts
// in the buffer and how to find its elements in the (possibly strided) map.
#pragma once

#include <cstdint>

#include "pydiff/common.h"

namespace pydiff {

struct HaloMap {
  int64_t offset;  // first element of this map's slab in the buffer
  int64_t numel;   // B * C * rows * W
  int64_t C, rows, W;
  int64_t row0;    // first halo row in the map: 0 (top) or H - rows (bottom)
  int64_t s0, s1, s2, s3;  // the map's strides (elements)
};

// Element offset in the map of element `e` (0 <= e < numel) of the map's slab.
PYDIFF_HD int64_t halo_map_offset(const HaloMap& m, int64_t e) {
  const int64_t w = e % m.W;
  int64_t t = e / m.W;
  const int64_t row = t % m.rows;
  t /= m.rows;
  const int64_t c = t % m.C;
  const int64_t b = t / m.C;
  return b * m.s0 + c * m.s1 + (m.row0 + row) * m.s2 + w * m.s3;
}

}  // namespace pydiff
