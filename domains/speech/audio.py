"""Audio input checks, WAV I/O (soundfile) and resampling (soxr).

Waveforms are float32 ``[N]`` (mono) or ``[C, N]`` (channels first). Files are read and written
with soundfile, which stores ``[N, C]``; :func:`read_audio` and :func:`write_audio` transpose.

Bad input (documented behaviour, tested):

- empty audio, NaN/inf samples, a sample rate below 8 kHz, an unreadable file: ``ValueError``
  naming the argument, the value and what is expected;
- silent audio (all samples zero): enhancement returns silence of the same shape;
- clipped audio (a run of samples at full scale): processed normally with a
  :class:`ClippingWarning`, since clipped peaks cannot be restored by denoising.

Example:
    >>> import numpy as np
    >>> from pydiff.domains.speech.audio import check_wave
    >>> check_wave(np.zeros((2, 100), dtype=np.float32), 16000).shape
    (2, 100)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pydiff.errors import InputError
from pydiff.files import atomic_output

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 384000
CLIP_LEVEL = 0.999
CLIP_FRACTION = 1e-3


class ClippingWarning(UserWarning):
    """The input has many samples at full scale: clipped peaks stay clipped."""


def check_sample_rate(sample_rate: int, name: str = "sample_rate") -> int:
    """Validate a sample rate (8 kHz .. 384 kHz, an integer)."""
    if isinstance(sample_rate, bool) or not float(sample_rate).is_integer():
        raise InputError(f"{name} must be an integer number of Hz, got {sample_rate!r}")
    sr = int(sample_rate)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise InputError(f"{name}={sr} Hz is outside the supported {MIN_SAMPLE_RATE}.."
                         f"{MAX_SAMPLE_RATE} Hz (speech below 8 kHz has no wide-band content "
                         "to enhance)")
    return sr


def check_wave(wave: np.ndarray, sample_rate: int, name: str = "wave",
               warn_clipping: bool = True) -> np.ndarray:
    """Validate audio and return it as float32 ``[C, N]`` (mono becomes ``[1, N]``)."""
    check_sample_rate(sample_rate)
    arr = np.asarray(wave)
    if arr.dtype.kind in "iu":  # integer PCM: scale to [-1, 1)
        arr = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max + 1)
    elif arr.dtype.kind != "f":
        raise InputError(f"{name} must hold real audio samples, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InputError(f"{name} must be [N] (mono) or [C, N] (channels first), got shape "
                         f"{arr.shape}")
    if arr.shape[-1] == 0 or arr.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {arr.shape}); expected at least one sample")
    bad = ~np.isfinite(arr)
    if bad.any():
        ch, idx = np.argwhere(bad)[0]
        raise InputError(f"{name} contains {int(bad.sum())} non-finite samples (NaN/inf), the "
                         f"first at sample {idx} of channel {ch}; expected finite audio")
    if warn_clipping:
        warn_if_clipped(arr, name)
    return arr.astype(np.float32, copy=False)


def warn_if_clipped(wave: np.ndarray, name: str = "wave") -> bool:
    """Warn (:class:`ClippingWarning`) when more than 0.1 % of samples sit at full scale."""
    at_full_scale = int(np.count_nonzero(np.abs(wave) >= CLIP_LEVEL))
    if at_full_scale > CLIP_FRACTION * wave.size:
        warnings.warn(f"{name} looks clipped: {at_full_scale} of {wave.size} samples are at full "
                      "scale; noise is reduced but clipped peaks cannot be restored",
                      ClippingWarning, stacklevel=3)
        return True
    return False


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file: float32 ``[C, N]`` and its sample rate."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise InputError(f"cannot read audio file {str(path)!r}: {err}") from err
    return np.ascontiguousarray(data.T), int(sr)


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
    """Write ``[N]`` or ``[C, N]`` float audio as 16-bit PCM WAV, atomically
    (:func:`pydiff.files.atomic_output`)."""
    import soundfile as sf

    path = Path(path)
    arr = np.asarray(wave, dtype=np.float32)
    arr = arr[None] if arr.ndim == 1 else arr
    with atomic_output(path, "audio output") as tmp:
        sf.write(str(tmp), np.clip(arr.T, -1.0, 1.0), int(sample_rate), subtype="PCM_16",
                 format="WAV")


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``[C, N]`` with soxr (high quality); unchanged when the rates match."""
    import soxr

    if rate_in == rate_out:
        return wave
    out = soxr.resample(np.ascontiguousarray(wave.T), rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, wave.shape[0]).T)
