"""Batch reconstruction of a folder of scans (``pydiff medical recon``), resumable and sharded.

:func:`run_batch` reconstructs every DICOM file and NIfTI volume of a folder with one method
of :class:`Reconstructor` and writes, per case (``<case>`` is the file name without its
extensions):

- ``<case>.nii.gz``: the reconstruction in the input's geometry (affine) and units;
- ``<case>.dcm`` for a DICOM input: the source's patient/study metadata, a new series (its UID
  derived from the case name and the method, so reruns give the same UID);
- ``<case>_std.nii.gz`` when ``samples > 1``: the per-pixel posterior standard deviation;
- ``<case>.png``: a panel (input, the measurement-domain baseline, reconstruction, |error|, std);
- a row of ``metrics.csv``: PSNR and SSIM against the input (MONAI's metrics, with the data
  range used), seconds, NFE.

Inputs are read through MONAI's readers (:class:`monai.data.NibabelReader`,
:class:`monai.data.PydicomReader`: the affine, i.e. spacing and orientation, is kept; DICOM
values are rescaled to their physical units). A 2D image (also ``H x W x 1``) is one slice; a
3D volume is reconstructed slice by slice, or as a whole with ``mbir_tv``. A subfolder of DICOM
files is one series, read as one volume (slices in ``InstanceNumber`` order, as MONAI stacks
them; the case is the subfolder's name) and written back as a DICOM series, one file per slice,
in ``OUTPUT_DIR/<case>/``. The measurement is simulated from the image with a random stream
seeded by the case name, unless measured files sit beside it: ``<case>_sino.npy``
``[angles, detectors]`` (``[slices, angles, detectors]`` for a volume) with
``<case>_angles.npy`` (radians) for CT, ``<case>_kspace.npy`` (complex ``[coils, H, W]``, or
``[slices, coils, H, W]``) with ``<case>_mask.npy`` ``[H, W]`` for MRI.

Guarantees:

- resumable and idempotent: a case is finished when its record
  ``OUTPUT_DIR/.pydiff-recon/<case>.json`` (written last) holds the same settings; a rerun skips
  it, so a killed job rerun with the same command ends with the same arrays as an uninterrupted
  run (bit-identical at fixed torch threads: every random draw comes from the case's seed);
- every file is written atomically (:mod:`pydiff.files`);
- a broken input fails its own case only: reported on stderr and in ``metrics.csv``
  (``status`` ``failed`` and the message), the others finish; :attr:`BatchResult.failed` counts
  them;
- under ``torchrun`` the sorted cases are sharded over the ranks (:func:`pydiff.distributed.shard`);
  every case's outputs are the same as in one process, and rank 0 writes ``metrics.csv``.

Example:
    >>> import tempfile, pathlib, numpy as np, nibabel as nib
    >>> from pydiff.domains.medical import shepp_logan
    >>> from pydiff.domains.medical.batch import BatchSettings, run_batch
    >>> src, out = (pathlib.Path(tempfile.mkdtemp()) for _ in range(2))
    >>> image = shepp_logan(32).numpy()[..., None]
    >>> nib.save(nib.Nifti1Image(image, np.eye(4)), src / "phantom.nii.gz")
    >>> result = run_batch(src, out, BatchSettings("ct", "fbp", views=16), progress=False)
    >>> result.done, result.failed, sorted(p.name for p in out.iterdir())
    (1, 0, ['.pydiff-recon', 'metrics.csv', 'phantom.nii.gz', 'phantom.png'])
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pydiff import distributed
from pydiff.errors import InputError
from pydiff.files import atomic_output, check_input_dir, check_output

from .classical import estimate_sensitivities
from .operators import CTProjector, GaussianNoise, MRIMask, MRIOperator, coil_sensitivities
from .reconstructor import BASELINES, DIFFUSION_METHODS, VOLUME_METHODS, Reconstructor

Tensor = torch.Tensor

METHODS = {"ct": ("fbp", "tv") + DIFFUSION_METHODS + VOLUME_METHODS,
           "mri": ("zero_filled", "cg_sense", "tv") + DIFFUSION_METHODS + VOLUME_METHODS}
"""The ``--method`` names per modality (a contract of ``pydiff medical recon``)."""
MEASURED_SUFFIXES = ("_sino.npy", "_angles.npy", "_kspace.npy", "_mask.npy")
COLUMNS = ("case", "input", "status", "modality", "method", "shape", "psnr", "ssim",
           "data_range", "seconds", "nfe", "samples", "measurement", "message")
"""The columns of ``metrics.csv``."""
RECORDS = ".pydiff-recon"  # per-case records inside OUTPUT_DIR (written last: "finished")


@dataclass
class BatchSettings:
    """What a batch job does to every case (the record of a finished case holds these).

    Attributes:
        modality: ``"ct"`` or ``"mri"``.
        method: one of :data:`METHODS` for the modality.
        views: CT views (simulated measurements).
        geometry: CT ``"parallel"`` or ``"fan"``.
        acceleration: MRI undersampling factor (simulated measurements).
        coils: MRI simulated coils.
        steps: solver steps of a diffusion method (default: the method's).
        samples: posterior samples (``> 1`` writes the std map).
        noise_level: Gaussian measurement noise, relative to the RMS of the noiseless
            measurement (``0.01`` is 1%).
        threads: torch intra-op threads (fixed threads make reruns bit-identical).
        options: more :meth:`Reconstructor.reconstruct` options, e.g. ``{"tv_refine": 0.01}``
            (``--tv-refine``: the TV refinement of a diffusion method's image).
    """

    modality: str
    method: str
    views: int = 60
    geometry: str = "parallel"
    acceleration: float = 4.0
    coils: int = 8
    steps: int | None = None
    samples: int = 1
    noise_level: float = 0.0
    threads: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.modality not in METHODS:
            raise InputError(f"--modality {self.modality!r}: expected 'ct' or 'mri'")
        if self.method not in METHODS[self.modality]:
            raise InputError(f"--method {self.method!r} is not a {self.modality} method; "
                             f"expected one of {', '.join(METHODS[self.modality])}")
        for name, value, low in (("--views", self.views, 1), ("--coils", self.coils, 1),
                                 ("--samples", self.samples, 1), ("--threads", self.threads, 1)):
            if not isinstance(value, int) or value < low:
                raise InputError(f"{name} {value!r}: expected an integer >= {low}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise InputError(f"--steps {self.steps!r}: expected an integer >= 1")
        if not (math.isfinite(self.acceleration) and self.acceleration >= 1):
            raise InputError(f"--acceleration {self.acceleration!r}: expected a number >= 1")
        if not (math.isfinite(self.noise_level) and self.noise_level >= 0):
            raise InputError(f"--noise-level {self.noise_level!r}: expected a number >= 0")
        if self.geometry not in ("parallel", "fan"):
            raise InputError(f"--geometry {self.geometry!r}: expected 'parallel' or 'fan'")
        refine = self.options.get("tv_refine", 0.0)
        if not (isinstance(refine, (int, float)) and math.isfinite(refine) and refine >= 0):
            raise InputError(f"--tv-refine {refine!r}: expected a number >= 0")
        if refine and self.method not in DIFFUSION_METHODS:
            raise InputError(f"--tv-refine refines a diffusion reconstruction; --method "
                             f"{self.method!r} is not one of {', '.join(DIFFUSION_METHODS)}")


@dataclass
class BatchResult:
    """Counts of a batch job (over all ranks) and the ``metrics.csv`` rows."""

    done: int
    skipped: int
    failed: int
    rows: list[dict[str, Any]]


@dataclass
class Case:
    """One input: a file (or a series' folder), its case name, and its kind (``"nifti"``,
    ``"dicom"``, ``"dicom_series"`` or ``"other"``)."""

    name: str
    path: Path
    kind: str


# ----------------------------------------------------------------------------------------------
# finding and reading cases


def case_name(path: Path) -> str:
    """The file name without its extensions (``a.nii.gz`` -> ``a``)."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.split(".")[0] if "." in name[1:] else name


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def find_cases(input_dir: str | os.PathLike) -> list[Case]:
    """Every case of ``input_dir`` in sorted order: DICOM and NIfTI files, and any other
    visible file (which fails as its own case: the user sees it was not an image), except the
    measured-data files that sit beside a case."""
    folder = check_input_dir(input_dir, "INPUT_DIR")
    cases: list[Case] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.endswith(MEASURED_SUFFIXES):
            continue
        if path.is_dir():  # a DICOM series; a folder of anything else fails as its own case
            case = Case(path.name, path, "dicom_series" if _series_files(path) else "other")
        elif path.is_file():
            name = path.name.lower()
            kind = "nifti" if name.endswith((".nii", ".nii.gz")) else \
                "dicom" if _is_dicom(path) else "other"
            case = Case(case_name(path), path, kind)
        else:
            continue
        if case.name in seen:
            raise InputError(f"INPUT_DIR {str(folder)!r}: {seen[case.name].name!r} and "
                             f"{path.name!r} give the same case name {case.name!r}")
        seen[case.name] = path
        cases.append(case)
    if not cases:
        raise InputError(f"INPUT_DIR {str(folder)!r} holds no DICOM or NIfTI files")
    return cases


def _series_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (sorted by name)."""
    return [p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and _is_dicom(p)]


def _series_datasets(folder: Path) -> list[Any]:
    """The series' datasets in MONAI's slice order (``InstanceNumber``; MONAI skips slices
    without one), each with its file name in ``.source_name``."""
    import pydicom

    datasets = []
    for path in _series_files(folder):
        ds = pydicom.dcmread(path)
        if "InstanceNumber" in ds:
            ds.source_name = path.name
            datasets.append(ds)
    return sorted(datasets, key=lambda ds: ds.InstanceNumber)


@dataclass
class Volume:
    """An input read through MONAI: ``data`` ``[D, H, W]`` (float64, slices first), the affine,
    the array's original shape, and for DICOM the source dataset (a list of them, in slice
    order, for a series)."""

    data: np.ndarray
    affine: np.ndarray
    shape: tuple[int, ...]
    dicom: Any = None


def read_case(case: Case) -> Volume:
    """Read one case through MONAI's readers; a bad file raises :class:`InputError`."""
    from monai.data import NibabelReader, PydicomReader
    from monai.transforms import LoadImage

    if case.kind == "other":
        if case.path.is_dir():
            raise InputError(f"folder {case.path.name!r} holds no DICOM files (a subfolder of "
                             "INPUT_DIR is read as one DICOM series)")
        raise InputError(f"{case.path.name!r} is neither DICOM nor NIfTI (.nii, .nii.gz)")
    # MONAI announces each time that its optional GPU DICOM decoder is missing (CPU is fine)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    reader = NibabelReader() if case.kind == "nifti" else PydicomReader()
    kind = "a DICOM series" if case.kind == "dicom_series" else case.kind.upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's optional GPU decoder plugin notices
            image = LoadImage(reader=reader, image_only=True)(str(case.path))
    except Exception as err:  # any reader failure is this file's problem, not pydiff's
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{case.path.name!r} cannot be read as {kind}: "
                         f"{first[:200]}") from None
    array = np.asarray(image.numpy(), dtype=np.float64)
    shape = tuple(array.shape)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InputError(f"{case.path.name!r} has shape {shape}: a {array.ndim}D image; "
                         "expected a 2D image or a 3D volume")
    if not np.isfinite(array).all():
        raise InputError(f"{case.path.name!r} contains NaN or infinite values")
    if min(array.shape[:2]) < 8:
        raise InputError(f"{case.path.name!r} has shape {shape}; expected slices of at least "
                         "8 x 8 pixels")
    dicom = None
    if case.kind == "dicom":
        import pydicom
        dicom = pydicom.dcmread(case.path)
    elif case.kind == "dicom_series":
        dicom = _series_datasets(case.path)
        if len(dicom) != array.shape[2]:
            raise InputError(f"{case.path.name!r}: MONAI read {array.shape[2]} slices but "
                             f"{len(dicom)} files have an InstanceNumber")
    affine = np.asarray(image.affine, dtype=np.float64)
    return Volume(np.ascontiguousarray(array.transpose(2, 0, 1)), affine, shape, dicom)


def case_seed(name: str) -> int:
    """The case's seed: the same name gives the same random stream on every run and rank."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# measurements


@dataclass
class Measurement:
    """A case's operators and measurements, one per slice (``[1, C, ...]`` each)."""

    operators: list[Any]
    ys: list[Tensor]
    baselines: list[Tensor]
    source: str  # "simulated" or the measured file's name
    pad: int = 0  # CT: pixels of padding to a square slice (cropped from the outputs)


def _pad_square(image: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """CT slices are square: pad the short side with the image's minimum (air)."""
    h, w = image.shape[-2:]
    side = max(h, w)
    out = torch.full((*image.shape[:-2], side, side), float(image.min()), dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[..., top:top + h, left:left + w] = image
    return out, (top, left)


def _add_noise(y: Tensor, level: float, generator: torch.Generator) -> Tensor:
    if level == 0:
        return y
    rms = float((y.abs() if y.is_complex() else y).pow(2).mean().sqrt())
    return GaussianNoise(level * rms)(y, generator)


def _measured_files(case: Case, suffixes: tuple[str, str]) -> tuple[Path, Path] | None:
    first, second = (case.path.with_name(case.name + s) for s in suffixes)
    if not first.exists():
        return None
    if not second.exists():
        raise InputError(f"{first.name!r} needs {second.name!r} beside it")
    return first, second


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path.name!r} is not a NumPy array file: {err}") from None


def measure(case: Case, volume: Volume, settings: BatchSettings) -> Measurement:
    """The measurement of every slice: measured files beside the case, else simulated."""
    g = torch.Generator().manual_seed(case_seed(case.name))
    slices = torch.from_numpy(volume.data).float()
    D, H, W = slices.shape
    if settings.modality == "ct":
        measured = _measured_files(case, ("_sino.npy", "_angles.npy"))
        padded, _ = _pad_square(slices[None])
        side = padded.shape[-1]
        if measured is not None:
            sino, angles = (_load_npy(p) for p in measured)
            if sino.ndim == 2:
                sino = sino[None]
            if sino.ndim != 3 or angles.ndim != 1 or angles.shape[0] != sino.shape[1] or \
                    not np.isfinite(sino).all():
                raise InputError(f"{measured[0].name!r} must be a finite [angles, detectors] "
                                 f"(or [slices, angles, detectors]) array with one angle per "
                                 f"view in {measured[1].name!r}; got {sino.shape} and "
                                 f"{angles.shape}")
            if sino.shape[0] != D:
                raise InputError(f"{measured[0].name!r} holds {sino.shape[0]} slices' "
                                 f"sinograms; {case.path.name!r} has {D} slices")
            ct = CTProjector(angles=torch.from_numpy(angles.astype(np.float64)), size=side,
                             geometry=settings.geometry, detectors=int(sino.shape[2]))
            ys = [torch.from_numpy(s.astype(np.float32))[None, None] for s in sino]
            return Measurement([ct] * D, ys, [ct.fbp(y) for y in ys], measured[0].name,
                               pad=side - min(H, W))
        ct = CTProjector(angles=settings.views, size=side, geometry=settings.geometry)
        ys = [_add_noise(ct.A(padded[:, d:d + 1]), settings.noise_level, g) for d in range(D)]
        return Measurement([ct] * D, ys, [ct.fbp(y) for y in ys], "simulated",
                           pad=side - min(H, W))
    measured = _measured_files(case, ("_kspace.npy", "_mask.npy"))
    if measured is not None:
        kspace, mask = (_load_npy(p) for p in measured)
        if kspace.ndim == 3:
            kspace = kspace[None]
        if kspace.ndim != 4 or tuple(kspace.shape[2:]) != (H, W) or \
                tuple(mask.shape) != (H, W) or not np.isfinite(kspace).all():
            raise InputError(f"{measured[0].name!r} must be finite complex [coils, {H}, {W}] "
                             f"(or [slices, coils, {H}, {W}]) and {measured[1].name!r} "
                             f"[{H}, {W}]; got {kspace.shape} and {mask.shape}")
        if kspace.shape[0] != D:
            raise InputError(f"{measured[0].name!r} holds {kspace.shape[0]} slices' k-space; "
                             f"{case.path.name!r} has {D} slices")
        if kspace.shape[1] > 1 and D > 1 and settings.method == "mbir_tv":
            raise InputError(f"{measured[0].name!r}: mbir_tv takes one operator for all "
                             "slices, and measured multi-coil k-space has coil maps per "
                             "slice; use a slice-wise method (dds, projection, ...)")
        m = torch.from_numpy(mask != 0)
        operators, ys = [], []
        for slice_k in torch.from_numpy(kspace.astype(np.complex64)):
            maps = estimate_sensitivities(slice_k, m) if slice_k.shape[0] > 1 else None
            operators.append(MRIOperator(m, sensitivities=maps))
            ys.append(slice_k[None] * m)
        return Measurement(operators, ys, [op.zero_filled(y) for op, y in zip(operators, ys)],
                           measured[0].name)
    mask = MRIMask(settings.acceleration)(H, W, generator=g)
    maps = coil_sensitivities(max(H, W), settings.coils)[:, :H, :W]
    mri = MRIOperator(mask, sensitivities=maps)
    ys = [_add_noise(mri.A(slices[None, d:d + 1]), settings.noise_level, g) for d in range(D)]
    return Measurement([mri] * D, ys, [mri.zero_filled(y) for y in ys], "simulated")


# ----------------------------------------------------------------------------------------------
# reconstruction of one case


def _crop(image: Tensor, h: int, w: int) -> Tensor:
    top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
    return image[..., top:top + h, left:left + w]


def reconstruct_case(reconstructor: Reconstructor, case: Case, volume: Volume,
                     measurement: Measurement, settings: BatchSettings
                     ) -> tuple[Tensor, Tensor, Tensor, int]:
    """``(image, std, baseline, nfe)``, each ``[D, H, W]`` in the input's units."""
    D, H, W = volume.data.shape
    seed = case_seed(case.name)
    options = dict(settings.options)
    if settings.method == "mbir_tv":  # the whole volume at once: TV along z couples slices
        out = reconstructor.reconstruct_volume(
            measurement.ys, measurement.operators[0], steps=settings.steps,
            n_samples=settings.samples, seed=seed, **options)
        results = [out]
        images, stds = out.image[0], out.std[0]
    else:
        results = [reconstructor.reconstruct(y, operator=op, method=settings.method,
                                             steps=settings.steps, n_samples=settings.samples,
                                             seed=seed + d, **options)
                   for d, (y, op) in enumerate(zip(measurement.ys, measurement.operators))]
        images = torch.cat([r.image[0] for r in results])
        stds = torch.cat([r.std[0] for r in results])
    baseline = torch.cat([b[0] for b in measurement.baselines])
    images, stds, baseline = (_crop(t, H, W) for t in (images, stds, baseline))
    return images.float(), stds.float(), baseline.float(), sum(r.nfe for r in results)


def _quality(image: Tensor, reference: Tensor) -> tuple[float, float, float]:
    """PSNR and SSIM (MONAI) of ``image`` against ``reference`` (``[D, H, W]``), with the data
    range of the reference; SSIM is the mean over slices (2D windows)."""
    from monai.metrics import PSNRMetric, SSIMMetric

    data_range = float(reference.max() - reference.min()) or 1.0
    x, ref = image[:, None].double(), reference[:, None].double()
    # PSNR over the whole volume: [1, 1, D, H, W]
    value = float(PSNRMetric(max_val=data_range)(x.transpose(0, 1)[None],
                                                 ref.transpose(0, 1)[None]))
    win = min(11, min(x.shape[-2:]) - (1 - min(x.shape[-2:]) % 2))
    ssim = SSIMMetric(spatial_dims=2, data_range=data_range, win_size=win)
    return value, float(ssim(x, ref).mean()), data_range


# ----------------------------------------------------------------------------------------------
# outputs


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file's bytes; gzip's timestamp is fixed so reruns are identical."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """``array`` (the input's array layout) with the input's affine, written atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(_nifti_bytes(array, affine))


def series_uid(case: str, method: str) -> str:
    """A DICOM UID derived from the case name and the method (the same on every rerun)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["pydiff medical recon", case, method])


def write_dicom(path: Path, source: Any, image: np.ndarray, case: str, method: str,
                instance: str = "") -> None:
    """The reconstruction (``[H, W]`` in MONAI's array layout, physical units) as a DICOM file
    of a new derived series: the source's patient and study (and slice position), stored values
    through the source's rescale slope/intercept. ``instance`` tells a series' files apart
    (their SOP instance UIDs)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.dcmread(io.BytesIO(_dicom_bytes(source)))
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    stored = np.rint((image.T - intercept) / slope)  # MONAI's arrays are pixel_array.T
    bits = int(getattr(ds, "BitsStored", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = np.int16 if signed else np.uint16
    ds.PixelData = np.clip(stored, low, high).astype(dtype).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.SeriesInstanceUID = series_uid(case, method)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["pydiff medical recon", case, method,
                                                   "instance"] + ([instance] if instance else []))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesDescription = f"pydiff {method} reconstruction"[:64]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"pydiff medical recon --method {method}"[:1024]
    with atomic_output(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _dicom_bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_panel(path: Path, image: Tensor, baseline: Tensor, recon: Tensor, std: Tensor,
                title: str, baseline_name: str) -> None:
    """The PNG panel of one slice: input, baseline, reconstruction, |error|, std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(image.min()), float(image.max())
    panels = [("input", image, lo, hi), (baseline_name, baseline, lo, hi),
              ("reconstruction", recon, lo, hi),
              ("|error|", (recon - image).abs(), 0, max(hi - lo, 1e-12) / 4),
              ("std", std, 0, max(float(std.max()), 1e-12))]
    fig, axes = plt.subplots(1, 5, figsize=(12.5, 2.9))
    for ax, (name, img, vmin, vmax) in zip(axes, panels):
        ax.imshow(img.T.numpy(), cmap="gray", vmin=vmin, vmax=vmax, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=72, metadata={"Software": None})
    plt.close(fig)


def _record_path(output_dir: Path, name: str) -> Path:
    return output_dir / RECORDS / f"{name}.json"


def _finished(output_dir: Path, case: Case, settings: dict[str, Any]) -> dict[str, Any] | None:
    record = _record_path(output_dir, case.name)
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("settings") != settings or saved.get("input") != str(case.path):
        return None
    if not all((output_dir / f).exists() for f in saved.get("outputs", [])):
        return None
    return saved


def _row(case: Case, settings: BatchSettings, **values: Any) -> dict[str, Any]:
    row = {c: "" for c in COLUMNS}
    row.update(case=case.name, input=case.path.name, modality=settings.modality,
               method=settings.method, samples=settings.samples)
    row.update(values)
    return row


def process_case(reconstructor: Reconstructor, case: Case, output_dir: Path,
                 settings: BatchSettings) -> dict[str, Any]:
    """Reconstruct and write one case; returns its ``metrics.csv`` row (and writes its record
    last). A bad input raises :class:`InputError` before anything of the case is written."""
    start = time.perf_counter()
    volume = read_case(case)
    measurement = measure(case, volume, settings)
    recon, std, baseline, nfe = reconstruct_case(reconstructor, case, volume, measurement,
                                                 settings)
    seconds = time.perf_counter() - start
    reference = torch.from_numpy(volume.data).float()
    psnr, ssim, data_range = _quality(recon, reference)

    def layout(t: Tensor) -> np.ndarray:  # back to the input's array shape
        return t.numpy().transpose(1, 2, 0).reshape(volume.shape)

    outputs = [f"{case.name}.nii.gz", f"{case.name}.png"]
    write_nifti(output_dir / outputs[0], layout(recon), volume.affine)
    if settings.samples > 1:
        outputs.append(f"{case.name}_std.nii.gz")
        write_nifti(output_dir / outputs[-1], layout(std), volume.affine)
    if isinstance(volume.dicom, list):  # a series: one file per slice, in <case>/
        for d, source in enumerate(volume.dicom):
            outputs.append(f"{case.name}/{source.source_name}")
            write_dicom(output_dir / outputs[-1], source, recon[d].numpy(), case.name,
                        settings.method, instance=source.source_name)
    elif volume.dicom is not None:
        outputs.append(f"{case.name}.dcm")
        write_dicom(output_dir / outputs[-1], volume.dicom, recon[0].numpy(), case.name,
                    settings.method)
    mid = recon.shape[0] // 2
    baseline_name = "FBP" if settings.modality == "ct" else "zero-filled"
    write_panel(output_dir / outputs[1], reference[mid], baseline[mid], recon[mid], std[mid],
                f"{case.name}: {settings.method}, PSNR {psnr:.2f} dB, SSIM {ssim:.3f}",
                baseline_name)
    row = _row(case, settings, status="ok", shape="x".join(map(str, volume.shape)),
               psnr=f"{psnr:.4f}", ssim=f"{ssim:.4f}", data_range=f"{data_range:.6g}",
               seconds=f"{seconds:.2f}", nfe=nfe, measurement=measurement.source)
    record = {"settings": asdict(settings), "input": str(case.path), "outputs": outputs,
              "row": row}
    with atomic_output(_record_path(output_dir, case.name)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return row


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """``metrics.csv``: one row per case, in case order, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    with atomic_output(path) as tmp:
        tmp.write_text(buf.getvalue())


# ----------------------------------------------------------------------------------------------
# the job


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="case", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def run_batch(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
              settings: BatchSettings, *, reconstructor: Reconstructor | None = None,
              progress: bool = True, log=None) -> BatchResult:
    """Reconstruct every case of ``input_dir`` into ``output_dir`` (see the module docstring).

    Inside a process group (``torchrun``), each rank takes its shard of the sorted cases and
    rank 0 writes ``metrics.csv`` once all ranks are done; the counts are over all ranks.

    Args:
        settings: the :class:`BatchSettings` (checked first).
        reconstructor: the prior (default: the shipped one of the modality).
        progress: show a progress bar over this rank's cases.
        log: ``callable(str)`` for per-case failure lines (default: print to stderr).
    """
    settings.check()
    cases = find_cases(input_dir)
    out = check_output(output_dir, "OUTPUT_DIR", folder=True)
    if log is None:
        from tqdm.auto import tqdm

        def log(line: str) -> None:  # above the progress bar, not through it
            tqdm.write(line, file=sys.stderr)
    info = distributed.dist_info()
    mine = distributed.shard(cases, info.rank, info.world_size)
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        needs_prior = settings.method not in BASELINES[settings.modality]
        if reconstructor is None:
            reconstructor = Reconstructor.from_pretrained(settings.modality) if needs_prior \
                else Reconstructor(None, settings.modality)  # type: ignore[arg-type]
        key = asdict(settings)
        rows: dict[str, dict[str, Any]] = {}
        done = skipped = failed = 0
        desc = "recon" if info.world_size == 1 else f"recon (rank {info.rank})"
        with _progress(len(mine), progress, desc) as bar:
            for case in mine:
                saved = _finished(out, case, key)
                if saved is not None:
                    rows[case.name] = saved["row"]
                    skipped += 1
                else:
                    try:
                        rows[case.name] = process_case(reconstructor, case, out, settings)
                        done += 1
                    except InputError as err:
                        message = str(err)
                        log(f"{case.path.name}: failed: {message}")
                        rows[case.name] = _row(case, settings, status="failed",
                                               message=message)
                        failed += 1
                if info.world_size == 1:  # the table grows as cases finish
                    write_metrics(out / "metrics.csv",
                                  [rows[c.name] for c in cases if c.name in rows])
                bar.update(1)
        if info.world_size > 1:
            with distributed.collective_errors("the cases' results"):
                gathered: list[Any] = [None] * info.world_size
                torch.distributed.all_gather_object(gathered, (rows, done, skipped, failed))
            rows = {k: v for part in gathered for k, v in part[0].items()}
            done, skipped, failed = (sum(part[i] for part in gathered) for i in (1, 2, 3))
            if info.rank == 0:
                write_metrics(out / "metrics.csv", [rows[c.name] for c in cases])
        return BatchResult(done, skipped, failed, [rows[c.name] for c in cases])
    finally:
        torch.set_num_threads(before)


__all__ = ["BatchSettings", "BatchResult", "Case", "METHODS", "COLUMNS", "run_batch",
           "find_cases", "read_case", "measure", "case_seed", "series_uid", "write_metrics"]
