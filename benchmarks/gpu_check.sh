#!/usr/bin/env bash
# The GPU check, one command on any machine with a CUDA GPU, a CUDA build of torch and nvcc:
# builds pydiff with its CUDA kernels for the visible GPU against the torch already installed
# (no network needed: no build isolation, no dependency resolution), runs tests/gpu and
# benchmarks/ops_gpu.py. Results go to $RESULTS (default benchmarks/results): ops_gpu.json,
# gpu_tests.log, gpu_build.log.
#
#   bash benchmarks/gpu_check.sh                 # python3 on PATH
#   PYTHON=/path/to/python RESULTS=/tmp/r bash benchmarks/gpu_check.sh
#
# Knobs: PYTHON, RESULTS, TORCH_CUDA_ARCH_LIST (default: the visible GPU's), CUDA_HOME
# (default: the nvcc on PATH), SITE (where the build is installed, default a temp dir),
# BENCH_ARGS (extra arguments of ops_gpu.py), SKIP_TESTS=1, SKIP_BENCH=1.
# tests/gpu covers every CUDA op against the reference, the halo exchange (halo_pack /
# halo_unpack, patch parallelism) included.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
results=$(mkdir -p "${RESULTS:-$repo/benchmarks/results}" && cd "${RESULTS:-$repo/benchmarks/results}" && pwd)
site=${SITE:-$(mktemp -d /tmp/pydiff-gpu-site.XXXXXX)}
status=0

"$py" - <<'EOF' || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name} (sm {p.major}.{p.minor}), torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, python {sys.version.split()[0]}")
EOF
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
fi
export TORCH_CUDA_ARCH_LIST
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

echo "== build (arch $TORCH_CUDA_ARCH_LIST, CUDA_HOME $CUDA_HOME) into $site"
start=$(date +%s)
if ! (cd "$repo" && PYDIFF_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" -m pip install -q \
      --no-build-isolation --no-deps --no-index --target "$site" . ) >"$results/gpu_build.log" 2>&1; then
  tail -40 "$results/gpu_build.log"
  echo "gpu_check: build FAILED (log: $results/gpu_build.log)"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
# the repository's build/ is reused by later runs (ninja-incremental); the installed copy is used
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== pytest tests/gpu"
  start=$(date +%s)
  (cd /tmp && PYDIFF_REQUIRE_EXT=1 "$py" -m pytest -q -p no:cacheprovider --import-mode=importlib \
     --durations=8 "$repo/tests/gpu") 2>&1 | tee "$results/gpu_tests.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  echo "tests/gpu took $(( $(date +%s) - start )) s"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "== benchmarks/ops_gpu.py"
  (cd /tmp && PYTHONUNBUFFERED=1 "$py" -P "$repo/benchmarks/ops_gpu.py" \
     --json "$results/ops_gpu.json" ${BENCH_ARGS:-}) || status=1
fi
exit $status
