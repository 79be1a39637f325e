"""``pydiff medical recon``: the batch job on real files (pydicom's CT_small.dcm and MR_small.dcm,
nibabel's anatomical.nii, scikit-image's Shepp-Logan written as NIfTI), small and few steps.

A run and its outputs, a killed-and-resumed run equal to an uninterrupted one (bit-identical
arrays), a 2-process torchrun (gloo) run equal to one process, DICOM output metadata, measured
k-space beside a case, and mbir_tv on a volume.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydiff.domains.medical import MRIMask, MRIOperator
from pydiff.domains.medical.batch import (
    BatchSettings,
    case_seed,
    find_cases,
    read_case,
    run_batch,
    series_uid,
)

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
# the settings every CT run here uses: 8 views, DDS at 2 steps, 2 samples (std maps)
CT_ARGS = ["--modality", "ct", "--views", "8", "--method", "dds", "--steps", "2",
           "--samples", "2"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYDIFF_DEBUG="0")
    env.pop("PYTHONPATH", None)
    return env


def _cli(*argv: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pydiff.apps.cli", "medical", "recon",
                             *argv], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _phantom(size: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (size, size), anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Two 2D cases: Shepp-Logan (NIfTI, 32 x 32 x 1, 0.5 mm pixels) and MR_small.dcm (64 x 64;
    reconstructed as CT here: the prior and the operators do not care where an image came
    from). CT_small.dcm has a test of its own, with FBP (128 x 128 costs more per step)."""
    folder = tmp_path_factory.mktemp("scans")
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(_phantom(32)[..., None], affine), folder / "phantom.nii.gz")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr_small.dcm")
    return folder


@pytest.fixture(scope="module")
def single(scans, tmp_path_factory) -> Path:
    """An uninterrupted single-process CLI run."""
    out = tmp_path_factory.mktemp("single")
    proc = _cli(str(scans), str(out), *CT_ARGS, cwd=out.parent)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert '"done": 2' in stdout
    return out


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def _same_arrays(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert left.keys() == right.keys() and len(left) == 4
    for name in left:
        assert np.array_equal(left[name], right[name]), name  # bit-identical
    assert pydicom.dcmread(a / "mr_small.dcm").PixelData == \
        pydicom.dcmread(b / "mr_small.dcm").PixelData


def test_run_writes_every_output_in_the_input_geometry(scans, single):
    names = sorted(p.name for p in single.iterdir() if not p.name.startswith("."))
    assert names == sorted(["metrics.csv", "mr_small.dcm"]
                           + [f"{c}{s}" for c in ("phantom", "mr_small")
                              for s in (".nii.gz", "_std.nii.gz", ".png")])
    src, out = nib.load(scans / "phantom.nii.gz"), nib.load(single / "phantom.nii.gz")
    assert out.shape == src.shape == (32, 32, 1)
    assert np.allclose(out.affine, src.affine) and out.header.get_zooms() == (0.5, 0.5, 2.0)
    std = np.asarray(nib.load(single / "phantom_std.nii.gz").dataobj)
    assert std.shape == (32, 32, 1) and std.max() > 0
    mr = read_case(next(c for c in find_cases(scans) if c.name == "mr_small"))
    recon = nib.load(single / "mr_small.nii.gz")
    assert recon.shape == (64, 64) and np.allclose(recon.affine, mr.affine)
    rows = list(csv.DictReader(open(single / "metrics.csv")))
    assert [r["case"] for r in rows] == ["mr_small", "phantom"]
    for row in rows:
        assert row["status"] == "ok" and row["nfe"] == "2" and row["method"] == "dds"
        assert float(row["psnr"]) > 10 and 0 < float(row["ssim"]) <= 1
        assert float(row["seconds"]) > 0 and row["measurement"] == "simulated"
    assert float(rows[1]["data_range"]) == pytest.approx(float(_phantom(32).max()
                                                               - _phantom(32).min()), rel=1e-4)


def _check_dicom(source: Path, output: Path, recon: Path, case: str, method: str) -> None:
    src, out = pydicom.dcmread(source), pydicom.dcmread(output)
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "PixelSpacing",
                "ImagePositionPatient", "Rows", "Columns"):
        assert out.get(tag) == src.get(tag), tag
    assert out.SeriesInstanceUID == series_uid(case, method) != src.SeriesInstanceUID
    assert out.SOPInstanceUID != src.SOPInstanceUID and "DERIVED" in out.ImageType
    # the stored values are the reconstruction (NIfTI) through the rescale, transposed back
    slope, intercept = float(out.get("RescaleSlope", 1)), float(out.get("RescaleIntercept", 0))
    values = out.pixel_array * slope + intercept
    image = np.asarray(nib.load(recon).dataobj)
    assert np.abs(values - image.T).max() <= 0.5 * slope + 1e-3


def test_dicom_output_keeps_patient_and_study_in_a_new_series(scans, single, tmp_path):
    _check_dicom(scans / "mr_small.dcm", single / "mr_small.dcm", single / "mr_small.nii.gz",
                 "mr_small", "dds")
    # CT_small: stored values -> HU through slope 1, intercept -1024 (MONAI applies them)
    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "in" / "CT_small.dcm")
    result = run_batch(tmp_path / "in", tmp_path / "out", BatchSettings("ct", "fbp", views=90),
                       progress=False)
    assert result.done == 1 and float(result.rows[0]["psnr"]) > 20
    hu = np.asarray(nib.load(tmp_path / "out" / "CT_small.nii.gz").dataobj)
    assert hu.shape == (128, 128) and hu.min() < -500  # air, in HU
    _check_dicom(tmp_path / "in" / "CT_small.dcm", tmp_path / "out" / "CT_small.dcm",
                 tmp_path / "out" / "CT_small.nii.gz", "CT_small", "fbp")


def test_killed_job_resumes_to_the_same_arrays_and_a_rerun_changes_nothing(scans, single,
                                                                          tmp_path):
    out = tmp_path / "resumed"
    proc = _cli(str(scans), str(out), *CT_ARGS, cwd=tmp_path)
    records = out / ".pydiff-recon"
    deadline = time.monotonic() + 240
    while proc.poll() is None and not any(records.glob("*.json")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a hard kill: no clean-up of any kind
    proc.wait()
    finished = len(list(records.glob("*.json")))
    assert finished == 1
    proc = _cli(str(scans), str(out), *CT_ARGS, cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert f'"skipped": {finished}' in stdout
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    _same_arrays(single, out)
    # a finished job rerun: every case skipped, no file touched
    before = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    settings = BatchSettings("ct", "dds", views=8, steps=2, samples=2)
    result = run_batch(scans, out, settings, progress=False)
    assert (result.done, result.skipped, result.failed) == (0, 2, 0)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()
            and p.name != "metrics.csv"} == {p: t for p, t in before.items()
                                             if p.name != "metrics.csv"}


def test_torchrun_two_processes_equal_one(scans, single, tmp_path):
    out = tmp_path / "torchrun"
    # its own session: on a timeout the launcher and its workers go together (no orphans)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", "-m", "pydiff.apps.cli", "medical",
                             "recon", str(scans), str(out), *CT_ARGS],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    _same_arrays(single, out)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["case"] for r in rows] == ["mr_small", "phantom"]
    single_rows = list(csv.DictReader(open(single / "metrics.csv")))
    assert [r["psnr"] for r in rows] == [r["psnr"] for r in single_rows]


def test_broken_case_fails_alone_and_measured_kspace_is_used(tmp_path):
    scans = tmp_path / "mri"
    scans.mkdir()
    image = _phantom(32)
    nib.save(nib.Nifti1Image(image[..., None], np.eye(4)), scans / "knee.nii.gz")
    mask = MRIMask(2, pattern="equispaced")(32, 32, torch.Generator().manual_seed(0))
    kspace = MRIOperator(mask).A(torch.from_numpy(image.copy())[None, None])[0]
    np.save(scans / "knee_kspace.npy", kspace.numpy())
    np.save(scans / "knee_mask.npy", mask.numpy())
    nib.save(nib.Nifti1Image(_phantom(32)[..., None], np.eye(4)), scans / "plain.nii.gz")
    (scans / "scan.nii.gz").write_bytes(b"not gzip at all")
    lines: list[str] = []
    result = run_batch(scans, tmp_path / "out", BatchSettings("mri", "cg_sense"),
                       progress=False, log=lines.append)
    assert (result.done, result.failed) == (2, 1)
    assert len(lines) == 1 and "scan.nii.gz" in lines[0]
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "out" / "metrics.csv"))}
    assert rows["scan"]["status"] == "failed" and "scan.nii.gz" in rows["scan"]["message"]
    assert rows["knee"]["measurement"] == "knee_kspace.npy"
    assert rows["plain"]["measurement"] == "simulated"
    # 2x single coil measured vs 4x with 8 simulated coils: both reconstruct well
    assert float(rows["knee"]["psnr"]) > 20 and float(rows["plain"]["psnr"]) > 15


def test_volume_slice_wise_and_mbir_tv(tmp_path):
    """nibabel's anatomical.nii (33 x 41 x 25, 2 mm): a 3D case, padded to square for CT."""
    scans = tmp_path / "vol"
    scans.mkdir()
    shutil.copy(ANATOMICAL, scans / "anatomical.nii")
    for method in ("fbp", "mbir_tv"):
        out = tmp_path / method
        result = run_batch(scans, out, BatchSettings("ct", method, views=16, steps=2),
                           progress=False)
        assert result.done == 1, result.rows
        recon = nib.load(out / "anatomical.nii.gz")
        assert recon.shape == (33, 41, 25) and recon.header.get_zooms() == (2.0, 2.0, 2.0)
        row = result.rows[0]
        assert row["shape"] == "33x41x25" and float(row["psnr"]) > 15
    assert case_seed("anatomical") == case_seed("anatomical") != case_seed("anatomical2")


def _ct_series(folder: Path, slices: int) -> list[np.ndarray]:
    """A DICOM series made from CT_small.dcm: ``slices`` files (stored out of order) whose
    pixels differ per slice, with their own InstanceNumber, position and SOP instance UID."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    images = []
    for i in range(slices):
        ds = source.copy()
        pixels = np.roll(source.pixel_array, 6 * i, axis=1)
        ds.PixelData = pixels.astype(source.pixel_array.dtype).tobytes()
        ds.InstanceNumber = i + 1
        position = [float(v) for v in source.ImagePositionPatient]
        ds.ImagePositionPatient = position[:2] + [position[2] + 5.0 * i]
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["series test", str(i)])
        ds.save_as(folder / f"im{slices - i:02d}.dcm", enforce_file_format=True)
        images.append(pixels)
    return images


def test_dicom_series_in_a_subfolder_is_one_volume_and_measured_volumes_are_used(tmp_path):
    scans = tmp_path / "in"
    pixels = _ct_series(scans / "chest", 3)
    (scans / "notes").mkdir()
    (scans / "notes" / "readme.txt").write_text("not an image")
    # a 3-slice NIfTI volume whose measured sinograms are of other images: the files win
    volume = np.stack([_phantom(32) * (1 + d) for d in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), scans / "vol.nii.gz")
    from pydiff.domains.medical import CTProjector
    angles = torch.linspace(0, np.pi, 31)[:-1].double()
    ct = CTProjector(angles=angles, size=32)
    measured = ct.A(torch.from_numpy(np.ascontiguousarray(volume[..., ::-1].transpose(2, 0, 1)))
                    [:, None].float())[:, 0]
    np.save(scans / "vol_sino.npy", measured.numpy())
    np.save(scans / "vol_angles.npy", angles.numpy())
    assert [(c.name, c.kind) for c in find_cases(scans)] == [
        ("chest", "dicom_series"), ("notes", "other"), ("vol", "nifti")]
    lines: list[str] = []
    result = run_batch(scans, tmp_path / "out", BatchSettings("ct", "fbp", views=60),
                       progress=False, log=lines.append)
    assert (result.done, result.failed) == (2, 1) and "holds no DICOM files" in lines[0]
    rows = {r["case"]: r for r in result.rows}
    # the series: one volume in InstanceNumber order (HU), written back one file per slice
    assert rows["chest"]["shape"] == "128x128x3" and float(rows["chest"]["psnr"]) > 15
    recon = np.asarray(nib.load(tmp_path / "out" / "chest.nii.gz").dataobj)
    for d in range(3):
        assert np.corrcoef(recon[..., d].T.ravel(), pixels[d].ravel())[0, 1] > 0.9
    outputs = sorted((tmp_path / "out" / "chest").iterdir())
    assert [p.name for p in outputs] == ["im01.dcm", "im02.dcm", "im03.dcm"]
    written = [pydicom.dcmread(p) for p in outputs]
    assert {ds.SeriesInstanceUID for ds in written} == {series_uid("chest", "fbp")}
    assert len({ds.SOPInstanceUID for ds in written}) == 3
    for ds in written:  # each file keeps its slice's position and holds that slice
        d = int(ds.InstanceNumber) - 1
        assert np.abs(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                      - recon[..., d].T).max() <= 0.5 * float(ds.RescaleSlope) + 1e-3
    # the volume: the measured sinograms (of the slices in reverse order) were reconstructed
    assert rows["vol"]["measurement"] == "vol_sino.npy"
    out = np.asarray(nib.load(tmp_path / "out" / "vol.nii.gz").dataobj)
    assert np.abs(out[..., 0] - volume[..., 2]).mean() < np.abs(out[..., 0] - volume[..., 0]
                                                                ).mean() / 3
    # a measured file with the wrong number of slices fails its case only, naming the file
    np.save(scans / "vol_sino.npy", measured[:2].numpy())
    shutil.rmtree(scans / "chest")
    result = run_batch(scans, tmp_path / "out2", BatchSettings("ct", "fbp"), progress=False,
                       log=lines.append)
    assert "vol_sino.npy" in lines[-1] and "2 slices" in lines[-1]


def test_measured_kspace_volume_is_read_per_slice(tmp_path):
    scans = tmp_path / "mri"
    scans.mkdir()
    volume = np.stack([_phantom(32), _phantom(32)[::-1]], axis=-1)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), scans / "head.nii.gz")
    mask = MRIMask(2, pattern="equispaced")(32, 32, torch.Generator().manual_seed(0))
    slices = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 0, 1)))[:, None]
    kspace = MRIOperator(mask).A(slices)   # [2 slices, 1 coil, 32, 32]
    np.save(scans / "head_kspace.npy", kspace.numpy())
    np.save(scans / "head_mask.npy", mask.numpy())
    result = run_batch(scans, tmp_path / "out", BatchSettings("mri", "cg_sense"), progress=False)
    row = result.rows[0]
    assert result.done == 1 and row["measurement"] == "head_kspace.npy"
    assert row["shape"] == "32x32x2" and float(row["psnr"]) > 20


def test_tv_refine_option_reaches_the_reconstruction(tmp_path):
    """``--tv-refine`` (``options={"tv_refine": a}``): the diffusion image is refined, the case
    record keeps the option (a rerun with another value is not skipped), and a baseline method
    or a negative weight is refused before any work."""
    from pydiff.errors import InputError

    scans = tmp_path / "in"
    scans.mkdir()
    nib.save(nib.Nifti1Image(_phantom(32)[..., None], np.eye(4)), scans / "phantom.nii.gz")
    arrays = []
    for refine in (0.0, 0.01):
        options = {"tv_refine": refine} if refine else {}
        settings = BatchSettings("ct", "dds", views=8, steps=2, options=options)
        settings.check()
        result = run_batch(scans, tmp_path / "out", settings, progress=False)
        assert result.done == 1 and result.skipped == 0, result.rows
        arrays.append(np.asarray(nib.load(tmp_path / "out" / "phantom.nii.gz").dataobj))
    assert float(np.abs(arrays[0] - arrays[1]).mean()) > 1e-4
    with pytest.raises(InputError, match="--tv-refine"):
        BatchSettings("ct", "fbp", options={"tv_refine": 0.01}).check()
    with pytest.raises(InputError, match="--tv-refine"):
        BatchSettings("ct", "dds", options={"tv_refine": -1.0}).check()
