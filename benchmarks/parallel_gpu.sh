#!/usr/bin/env bash
# Patch parallelism on GPUs, a few minutes on a machine with CUDA GPUs, a CUDA build of torch
# and nvcc. Builds pydiff with its CUDA kernels for the visible GPUs (as gpu_check.sh does),
# runs the halo pack/unpack CUDA tests, then:
#   - with 2 or more GPUs: torchrun, one rank per GPU (NCCL; NPROC ranks, default all GPUs up
#     to 4), benchmarks/parallel_gpu.py: sync against one GPU, displaced/partial PSNR, bytes
#     and ms per step at 512 and 1024 px, a random DiT's sync against one GPU, the trained
#     DiT's three modes at 64 px
#     -> $RESULTS/parallel_gpu.json;
#   - with one GPU: sync with one rank on the GPU (the wrapper is then the plain model, so
#     this checks the shipped model and the CUDA path only); NCCL patch parallelism needs 2.
# It refuses more ranks than GPUs (two ranks on one GPU would measure nothing useful).
#
#   bash benchmarks/parallel_gpu.sh
#   NPROC=2 PYTHON=/path/to/python RESULTS=/tmp/r bash benchmarks/parallel_gpu.sh
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
results=$(mkdir -p "${RESULTS:-$repo/benchmarks/results}" && cd "${RESULTS:-$repo/benchmarks/results}" && pwd)
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())") || exit 1
if [ "$gpus" -lt 1 ]; then echo "parallel_gpu: no CUDA GPU visible"; exit 1; fi
nproc=${NPROC:-$(( gpus < 4 ? gpus : 4 ))}
if [ "$nproc" -gt "$gpus" ]; then
  echo "parallel_gpu: NPROC=$nproc but $gpus GPU(s): one rank per GPU, refusing"; exit 2
fi
status=0
# build + the CUDA halo tests (tests/gpu/test_cuda_ops.py -k halo), no benchmarks
site=${SITE:-$(mktemp -d /tmp/pydiff-gpu-site.XXXXXX)}
SITE=$site SKIP_BENCH=1 SKIP_TESTS=1 RESULTS=$results bash "$repo/benchmarks/gpu_check.sh" || exit 1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
(cd /tmp && PYDIFF_REQUIRE_EXT=1 "$py" -m pytest -q -p no:cacheprovider --import-mode=importlib \
   -k halo "$repo/tests/gpu/test_cuda_ops.py") 2>&1 | tee "$results/parallel_gpu_tests.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
if [ "$nproc" -ge 2 ]; then
  echo "== patch parallelism, $nproc ranks on $nproc GPUs (NCCL)"
  (cd /tmp && timeout 600 "$py" -m torch.distributed.run --nnodes 1 --nproc_per_node "$nproc" \
     "$repo/benchmarks/parallel_gpu.py" --json "$results/parallel_gpu.json") || status=1
else
  echo "== one GPU: sync with one rank (patch parallelism over NCCL needs 2 GPUs)"
  (cd /tmp && "$py" - <<'PY') || status=1
import torch
from pydiff.parallel import PatchParallel
from pydiff.parallel.model import load_patch_model, sample_image
net = load_patch_model().net.cuda()
a = sample_image(PatchParallel(net, mode="sync"), 256, 4, 0, device="cuda")
b = sample_image(net, 256, 4, 0, device="cuda")
assert torch.equal(a, b), float((a - b).abs().max())
print("sync, one rank on the GPU: equals the plain model")
from pydiff.testing.distributed import random_dit
dit = random_dit().cuda()
x, t = torch.randn(2, 2, 512, device="cuda"), torch.rand(2, device="cuda")
g = torch.randn(2, 3, device="cuda")
with torch.no_grad():
    assert torch.equal(PatchParallel(dit, mode="sync")(x, t, global_cond=g), dit(x, t, global_cond=g))
print("DiT sync, one rank on the GPU: equals the plain model")
from pydiff.parallel.model import SHIPPED_DIT
image_dit = load_patch_model(SHIPPED_DIT).net.cuda()
a = sample_image(PatchParallel(image_dit, mode="displaced"), 64, 4, 0, device="cuda")
b = sample_image(image_dit, 64, 4, 0, device="cuda")
assert torch.equal(a, b), float((a - b).abs().max())
print("trained image DiT, one rank on the GPU: equals the plain model")
PY
fi
exit $status
