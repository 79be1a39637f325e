# pydiff developer and CI commands. On a fresh machine `make test` or `make demo` does all the
# set-up: a venv in .venv with torch pinned to the CPU build, the dev requirements, a build of the
# C++ extension and a (non-editable) install of the package. Re-runs reuse the venv (stamp file)
# and the compiled objects (build/temp*, incremental through ninja).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of torch (a file on this machine's disk; a plain `torch` would resolve to a CUDA
# build of several GB). Every pip call that could touch torch repeats the pin.
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.pydiff-venv-stamp
# Where `make test` runs pytest from: not the repository root, so nothing but the installed
# package can answer `import pydiff`.
TEST_ENV := PYDIFF_REQUIRE_EXT=1

# CUDA build (no GPU needed: it compiles, links and checks the registrations). The venv holding
# the CUDA build of torch is large and slow to make, so it lives outside the clone and survives
# across clones and CI runs.
CUDA_TORCH_VERSION := 2.14.1
CUDA_VENV ?= $(HOME)/.cache/pydiff/venv-cuda-$(CUDA_TORCH_VERSION)
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_STAMP := $(CUDA_VENV)/.pydiff-venv-stamp
CUDA_HOME ?= /usr/local/cuda
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
CUDA_BUILD := build/cuda

.PHONY: venv install test test-fast demo lint format bench cuda-build cmake-test clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-domains.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -r requirements-dev.txt torch==$(TORCH_VERSION)
	$(PY) -c "import torch, sys; v = torch.__version__; \
	  sys.exit(0 if v.startswith('$(TORCH_VERSION)') and torch.version.cuda is None \
	  else f'expected the CPU torch $(TORCH_VERSION) in $(VENV), found {v}')"
	touch $@

# Non-editable install, as users and CI get it. build/lib* is dropped first so that a module
# deleted from the tree cannot survive in the wheel; build/temp* (objects) is kept for ninja.
install: venv
	@if [ -f $(VENV)/.pydiff-dev-editable ]; then \
	  echo "$(VENV) is the team's shared EDITABLE dev environment (marker $(VENV)/.pydiff-dev-editable):"; \
	  echo "a non-editable install here would hide everyone's live edits. Verify CI in a clean clone:"; \
	  echo "  git clone . /tmp/ci && cd /tmp/ci && make test"; exit 1; fi
	rm -rf build/lib* build/bdist*
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation --no-deps .
	cd /tmp && $(abspath $(PY)) -P -c "import torch, pydiff.ops as o; \
	  assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__; \
	  print('pydiff.ops backend:', o.backend())"

# Tests run against the installed package: pytest's importlib mode does not add the repository
# root to sys.path, and the console script puts .venv/bin (not the cwd) first.
test: install
	cd /tmp && $(abspath $(PY)) -P -c "import pydiff, pydiff.ops as o, sys; \
	  f = pydiff.__spec__.submodule_search_locations[0]; \
	  sys.exit(0 if o.backend() == 'extension' and 'site-packages' in f else \
	  f'pydiff must be the installed package with the compiled extension: backend ' \
	  f'{o.backend()!r}, loaded from {f}')"
	$(TEST_ENV) $(VENV)/bin/pytest -q tests

test-fast: install
	$(TEST_ENV) $(VENV)/bin/pytest -q -m "not slow" tests

demo: install
	$(VENV)/bin/pydiff demo

lint: venv
	$(VENV)/bin/ruff check .

format: venv
	$(VENV)/bin/ruff format setup.py pydiff/ops tests/test_ops*.py tests/gpu benchmarks/ops_*.py

bench: install
	$(PY) -P benchmarks/ops_lincomb.py
	$(PY) -P benchmarks/ops_lincomb_paths.py
	$(PY) -P benchmarks/ops_lincomb_threads.py
	$(PY) -P benchmarks/ops_attention.py --with-sdpa-16k

# CMake build of the same kernels against libtorch + ctest (header math, op registration).
cmake-test: venv
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

# CUDA build check (no GPU needed): a separate venv with the CUDA 13.0 build of torch, cached
# outside the clone; compiles csrc/*.cpp, csrc/cpu/*.cpp and csrc/cuda/*.cu for sm_80 and sm_90,
# links, loads the library and checks that every op has a CUDA kernel registered. Objects go to
# build/cuda (ninja-incremental, separate from the CPU build).
$(CUDA_STAMP):
	mkdir -p $(dir $(CUDA_VENV))
	test -x $(CUDA_PY) || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q torch==$(CUDA_TORCH_VERSION) numpy setuptools wheel ninja
	$(CUDA_PY) -c "import torch, sys; sys.exit(0 if torch.version.cuda else \
	  f'expected a CUDA build of torch in $(CUDA_VENV), found {torch.__version__}')"
	touch $@

cuda-build: $(CUDA_STAMP)
	@test -x $(CUDA_HOME)/bin/nvcc || { echo "nvcc not found at $(CUDA_HOME)/bin/nvcc (set CUDA_HOME)"; exit 1; }
	CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" PYDIFF_CUDA=1 \
	  MAX_JOBS=$${MAX_JOBS:-2} $(CUDA_PY) setup.py -q build_ext \
	  --build-lib $(CUDA_BUILD)/lib --build-temp $(CUDA_BUILD)/temp
	cd /tmp && $(abspath $(CUDA_PY)) -P $(CURDIR)/tests/gpu/check_cuda_build.py \
	  $(CURDIR)/$(CUDA_BUILD)/lib/pydiff

clean:
	rm -rf build dist *.egg-info
