"""Speech quality metrics and the classical baseline.

- :func:`pesq_wb`: wide-band PESQ (ITU-T P.862.2) through the ``pesq`` package, 16 kHz.
- :func:`estoi`: extended STOI through ``pystoi``.
- :func:`si_sdr`: scale-invariant signal-to-distortion ratio in dB.
- :func:`spectral_gating`: the ``noisereduce`` spectral-gating baseline.

Example:
    >>> import numpy as np
    >>> from pydiff.domains.speech.metrics import si_sdr
    >>> ref = np.sin(np.arange(16000) / 10.0)
    >>> round(si_sdr(ref, 0.5 * ref + 0.01 * np.cos(np.arange(16000) / 3.0)), 1)
    34.0
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000


def _pair(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    if ref.shape != est.shape:
        raise ValueError(f"reference and estimate must have the same length, got {ref.shape} "
                         f"and {est.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(est).all()):
        raise ValueError("reference and estimate must be finite (found NaN or inf)")
    return ref, est


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR (Le Roux et al. 2019) in dB; both signals are mean-removed."""
    ref, est = _pair(reference, estimate)
    ref, est = ref - ref.mean(), est - est.mean()
    energy = float(np.dot(ref, ref))
    if energy <= 0:
        raise ValueError("reference is silent: SI-SDR is undefined")
    target = np.dot(est, ref) / energy * ref
    residual = est - target
    return 10 * math.log10(max(float(np.dot(target, target)), 1e-20)
                           / max(float(np.dot(residual, residual)), 1e-20))


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (MOS-LQO, 1.04..4.64); ``nan`` when PESQ finds no speech."""
    from pesq import NoUtterancesError, pesq

    ref, est = _pair(reference, estimate)
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"wide-band PESQ needs {SAMPLE_RATE} Hz, got sample_rate={sample_rate}")
    try:
        return float(pesq(SAMPLE_RATE, ref, est, "wb"))
    except NoUtterancesError:
        return float("nan")


def estoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Extended STOI (0..1)."""
    from pystoi import stoi

    ref, est = _pair(reference, estimate)
    return float(stoi(ref, est, sample_rate, extended=True))


def all_metrics(reference: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    """``{"pesq": ..., "estoi": ..., "si_sdr": ...}`` at 16 kHz."""
    return {"pesq": pesq_wb(reference, estimate), "estoi": estoi(reference, estimate),
            "si_sdr": si_sdr(reference, estimate)}


def spectral_gating(noisy: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The classical baseline: non-stationary spectral gating with ``noisereduce`` defaults."""
    import noisereduce

    wave = np.asarray(noisy, dtype=np.float32)
    out = noisereduce.reduce_noise(y=wave, sr=sample_rate, stationary=False, n_jobs=1)
    return np.asarray(out, dtype=np.float32)[..., :wave.shape[-1]]
