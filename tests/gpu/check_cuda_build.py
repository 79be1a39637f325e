"""Check a CUDA build of pydiff._C without a GPU (run by `make cuda-build`).

Loads the compiled library into a CUDA build of torch and checks that every pydiff op has a
kernel registered for the CUDA and the CPU dispatch keys. Exits non-zero on any miss.

Example:
    python tests/gpu/check_cuda_build.py build/cuda/lib/pydiff
"""

from __future__ import annotations

import glob
import os
import sys

import torch

# The schema (csrc/ops.cpp) declares these; each needs a CPU and a CUDA kernel. Listed rather
# than read from the loaded library so that a schema that lost an op fails here too.
OPS = ("lincomb", "lincomb_out", "lincomb_multi", "attention", "attention_backward",
       "linear_attention", "linear_attention_backward", "halo_pack", "halo_unpack")


def main(folder: str) -> int:
    libs = glob.glob(os.path.join(folder, "_C*.so"))
    if len(libs) != 1:
        print(f"expected one _C*.so in {folder}, found {libs}")
        return 1
    assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
    torch.ops.load_library(libs[0])
    declared = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                      if n.startswith("pydiff::"))
    if declared != sorted(OPS):
        print(f"the library declares {declared}, expected {sorted(OPS)}: update OPS")
        return 1
    passed = failed = 0
    for op in OPS:
        for key in ("CUDA", "CPU"):
            ok = torch._C._dispatch_has_kernel_for_dispatch_key(f"pydiff::{op}", key)
            print(f"  pydiff::{op:<26} {key:<4} {'registered' if ok else 'MISSING'}")
            passed += ok
            failed += not ok
    print(f"{libs[0]} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    print(f"cuda-build: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
