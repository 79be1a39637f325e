"""Build and install pydiff: the Python package plus the compiled extension ``pydiff._C``.

The extension is built against the torch that is already installed (always install with
``pip install --no-build-isolation``: an isolated build resolves its own torch, possibly a CUDA
build of another version, and the resulting binary no longer matches the runtime ABI).

Environment knobs:
    PYDIFF_CUDA=1          also compile csrc/cuda/*.cu (needs a CUDA build of torch and nvcc)
    PYDIFF_CPU_ISA=...     "avx512", "avx2" or "default"; by default the widest of AVX-512
                           (F/BW/VL/DQ) and AVX2+FMA the build machine has (the extension is
                           built on the machine that runs it)
    PYDIFF_DEBUG=1         -O0 -g

Example:
    pip install --no-build-isolation --no-deps .
"""

from __future__ import annotations

import glob
import os
import platform

from setuptools import find_namespace_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _packages() -> tuple[list[str], dict[str, str]]:
    """Map top-level ``domains/`` and ``apps/`` into ``pydiff.domains`` / ``pydiff.apps``."""

    # Namespace discovery so a folder is packaged even before it has an __init__.py; caches and
    # hidden folders are no packages.
    def find(where: str = ".", include: tuple[str, ...] = ("*",)) -> list[str]:
        found = find_namespace_packages(where=where, include=list(include))
        return [p for p in found if "__pycache__" not in p.split(".")]

    packages = find(include=("pydiff", "pydiff.*"))
    package_dir = {"pydiff": "pydiff"}
    for folder in ("domains", "apps"):
        if not os.path.isdir(os.path.join(HERE, folder)):
            continue
        package_dir[f"pydiff.{folder}"] = folder
        packages.append(f"pydiff.{folder}")
        for sub in find(where=folder):
            packages.append(f"pydiff.{folder}.{sub}")
            package_dir[f"pydiff.{folder}.{sub}"] = os.path.join(folder, *sub.split("."))
    return packages, package_dir


AVX512_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c")


def _cpu_has(*flags: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split()
    except OSError:
        return False
    return all(flag in info for flag in flags)


def _cpu_isa_flags() -> list[str]:
    """Instruction-set flags for the CPU kernels.

    ATen's ``Vectorized<T>`` is plain scalar code unless the translation unit is compiled with
    the CPU_CAPABILITY defines and the matching -m flags, so choose them here.
    """
    isa = os.environ.get("PYDIFF_CPU_ISA", "auto").lower()
    if isa == "auto":
        return [*_cpu_isa_flags_for(_auto_isa()), "-DPYDIFF_CPU_ISA_AUTO=1"]
    return _cpu_isa_flags_for(isa)


def _auto_isa() -> str:
    """The widest instruction set the build machine has, as torch's own CPU dispatch picks."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and _cpu_has(*AVX512_CPU_FLAGS):
        return "avx512"
    if x86 and _cpu_has("avx2", "fma", "f16c"):
        return "avx2"
    return "default"


def _cpu_isa_flags_for(isa: str) -> list[str]:
    if isa == "avx512":
        return [
            "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
            "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
        ]
    if isa == "avx2":
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if isa == "default":
        return ["-DCPU_CAPABILITY=DEFAULT"]
    raise ValueError(
        f"PYDIFF_CPU_ISA={isa!r}: expected 'auto', 'avx512', 'avx2' or 'default'"
    )


def _cuda_wheel_includes() -> list[str]:
    """Header folders of the CUDA library wheels that a CUDA build of torch pulls in
    (site-packages/nvidia/cu13/include etc.): cuBLAS/cuSPARSE headers that ATen's CUDA headers
    include live there, not in the nvcc toolkit."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for root in spec.submodule_search_locations:
        dirs += sorted(glob.glob(os.path.join(root, "*", "include")))
    return [d for d in dirs if os.path.isdir(d)]


def _extensions() -> tuple[list, dict]:
    if os.environ.get("PYDIFF_NO_BUILD_EXT") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    debug = os.environ.get("PYDIFF_DEBUG") == "1"
    use_cuda = os.environ.get("PYDIFF_CUDA") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = [*opt, "-fdiagnostics-color=always"]
    cxx += _cpu_isa_flags()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(HERE, "csrc", "include")]
    extra = {"cxx": cxx}
    ext_cls = CppExtension
    if use_cuda:
        ext_cls = CUDAExtension
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        include_dirs += _cuda_wheel_includes()
        cxx.append("-DPYDIFF_WITH_CUDA")
        extra["nvcc"] = [*opt, "-DPYDIFF_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
    # at::parallel_for is a header template around `#pragma omp parallel` (torch is built with
    # OpenMP): without -fopenmp our kernels silently run on one thread. Linking with -fopenmp
    # adds libgomp.so.1, which at run time resolves to the copy torch has already loaded.
    link = []
    if platform.system() == "Linux":
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    ext = ext_cls(
        "pydiff._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=link,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


packages, package_dir = _packages()
ext_modules, cmdclass = _extensions()

setup(
    name="pydiff",
    version="0.1.0",
    description="Diffusion models for domain scientists: one core on fused C++/CUDA kernels.",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={
        "pydiff.domains": [
            "**/*.json",
            "**/*.safetensors",
            "**/*.npz",
            "**/*.pt",
            "**/*.txt",
            "**/*.csv",
            "**/*.wav",
            "**/*.npy",
            "**/*.sdf.gz",
        ],
        "pydiff": ["py.typed"],
        "pydiff.training": ["pretrained/*/*.json", "pretrained/*/*.safetensors"],
    },
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch is deliberately not pinned here: the Makefile installs the CPU build 2.13.0 first,
    # and a lower bound that it satisfies never makes pip fetch a (CUDA) torch.
    install_requires=["torch>=2.4", "numpy", "scipy", "tqdm", "safetensors", "matplotlib"],
    extras_require={
        "policy": ["gymnasium==1.4.0", "gym-pusht==0.1.8", "pymunk==6.11.1", "pillow",
                   "pyarrow==26.0.1"],
        "speech": ["soundfile", "soxr", "pesq", "pystoi", "pyroomacoustics", "noisereduce",
                   "espeakng-loader", "librosa"],
        "medical": ["monai", "nibabel", "pydicom", "scikit-image"],
        "molecules": ["rdkit"],
        "timeseries": ["gluonts[torch]", "pandas<3", "statsmodels"],
    },
    entry_points={"console_scripts": ["pydiff = pydiff.apps.cli:main"]},
    zip_safe=False,
)
