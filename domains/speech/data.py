"""Reproducible noisy/clean speech pairs made locally (no downloads).

Clean speech: espeak-ng sentences (:mod:`.synth`) across voices, speaking rates and pitches.
Noise: coloured noise (spectral slope ``f^-exponent``), babble (3..5 other utterances), mains
hum (fundamental plus harmonics, slowly modulated) and band-limited bursts, mixed at -5..15 dB
SNR; a share of the examples is reverberated with a room impulse response simulated by
pyroomacoustics (the target stays the dry speech, aligned to the direct path).

Splits are disjoint in voices, sentences and noise draws: ``"test"`` uses held-out voices
(:data:`TEST_VOICES`), babble made of held-out voices, 60 Hz hum (train: 50 Hz) and its own
rooms. Every random draw goes through a ``torch.Generator`` seeded from
``(seed, split, index)``, so :func:`make_pair` returns the same example every time.

Example:
    >>> from pydiff.domains.speech.data import make_pair
    >>> a, b = make_pair("test", 3), make_pair("test", 3)
    >>> bool((a.noisy == b.noisy).all()), a.clean.shape == a.noisy.shape
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .synth import synthesize

SAMPLE_RATE = 16000
SPLITS = ("train", "valid", "test")
TRAIN_VOICES = ("en+m1", "en+m2", "en+m3", "en+m5", "en+m7", "en+f1", "en+f2", "en+f5",
                "en-us+m6", "en-us+f3", "en-gb-x-rp+m8", "en-gb-scotland+f4")
TEST_VOICES = ("en+m4", "en+f4", "en-us+m3", "en-us+f1")
NOISE_KINDS = ("coloured", "babble", "hum", "bursts")
SNR_RANGE = (-5.0, 15.0)
REVERB_PROB = 0.25

_SUBJECTS = ("the old man", "a young girl", "my brother", "the small dog", "our teacher",
             "the doctor", "a farmer", "the children", "her neighbour", "the pilot", "his sister",
             "the baker", "a stranger", "the captain", "my friend", "the singer")
_VERBS = ("painted", "carried", "opened", "found", "watched", "cleaned", "bought", "lifted",
          "followed", "answered", "repaired", "dropped", "counted", "visited", "borrowed")
_OBJECTS = ("the green door", "a heavy box", "seven apples", "the broken clock", "a red kite",
            "the wooden chair", "two letters", "the silver key", "a paper boat", "the yellow car",
            "an empty bottle", "the long ladder", "nine candles", "the blue window")
_ENDINGS = ("before dinner", "in the morning", "near the river", "after the storm",
            "on a cold day", "without a word", "at the station", "behind the house",
            "during the game", "for the first time", "last summer", "very slowly")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}


@dataclass
class Pair:
    """One example: ``clean`` (dry target) and ``noisy`` (float32 mono, 16 kHz) plus ``meta``."""

    clean: np.ndarray
    noisy: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def example_generator(split: str, index: int, seed: int = 0) -> torch.Generator:
    """The generator of example ``index`` of ``split`` (distinct streams per split and seed)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return torch.Generator().manual_seed(
        (seed * 1_000_003 + _SPLIT_IDS[split] * 7_919 + 1) * 104_729 + index)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _choice(g: torch.Generator, options: tuple | list) -> Any:
    return options[int(torch.randint(len(options), (), generator=g))]


def sentence(g: torch.Generator) -> str:
    """A random sentence from a small grammar (subject, verb, object, optional ending)."""
    words = [_choice(g, _SUBJECTS), _choice(g, _VERBS), _choice(g, _OBJECTS)]
    if float(torch.rand((), generator=g)) < 0.7:
        words.append(_choice(g, _ENDINGS))
    return " ".join(words).capitalize() + "."


def voices(split: str) -> tuple[str, ...]:
    """The voices of a split (train and valid share them; test is held out)."""
    return TEST_VOICES if split == "test" else TRAIN_VOICES


def speak(g: torch.Generator, voice_set: tuple[str, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """A random sentence by a random voice at a random rate and pitch, peak 0.5..0.9."""
    info = {"voice": _choice(g, voice_set), "text": sentence(g),
            "rate": int(_uniform(g, 130, 210)), "pitch": int(_uniform(g, 25, 75)),
            "pitch_range": int(_uniform(g, 30, 80))}
    wave = synthesize(info["text"], info["voice"], info["rate"], info["pitch"],
                      info["pitch_range"], SAMPLE_RATE)
    wave = _trim_silence(wave)
    return wave * (_uniform(g, 0.5, 0.9) / max(np.abs(wave).max(), 1e-6)), info


def _trim_silence(wave: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wave) > threshold * np.abs(wave).max())
    if loud.size == 0:
        return wave
    pad = SAMPLE_RATE // 20
    return wave[max(loud[0] - pad, 0):loud[-1] + pad]


# -- noise -------------------------------------------------------------------------------------
def coloured_noise(n: int, exponent: float, g: torch.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ``~ f^-exponent`` (0 white, 1 pink, 2 brown)."""
    white = torch.randn(n, generator=g, dtype=torch.float64).numpy()
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    # amplitude ~ f^(-exponent/2); 20 Hz floor keeps brown noise from drifting
    spec *= np.maximum(f, 20.0) ** (-exponent / 2)
    return _unit_rms(np.fft.irfft(spec, n))


def hum(n: int, fundamental: float, g: torch.Generator) -> np.ndarray:
    """Mains hum: harmonics of ``fundamental`` with random levels and slow amplitude wobble."""
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    for k in range(1, 9):
        level = _uniform(g, 0.2, 1.0) / k ** _uniform(g, 0.5, 1.5)
        out += level * np.sin(2 * np.pi * k * fundamental * t + _uniform(g, 0, 2 * np.pi))
    wobble = 1 + 0.3 * np.sin(2 * np.pi * _uniform(g, 0.2, 2.0) * t + _uniform(g, 0, 6.28))
    return _unit_rms(out * wobble + 0.05 * coloured_noise(n, 1.0, g))


def bursts(n: int, g: torch.Generator, band: tuple[float, float] = (200.0, 6000.0)) -> np.ndarray:
    """Band-limited noise bursts (50..400 ms) switching on and off at random."""
    from scipy.signal import butter, sosfilt

    centre = math.exp(_uniform(g, math.log(band[0]), math.log(band[1])))
    width = _uniform(g, 0.3, 1.0) * centre
    lo, hi = max(centre - width / 2, 40.0), min(centre + width / 2, SAMPLE_RATE / 2 - 100)
    sos = butter(4, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    noise = sosfilt(sos, torch.randn(n, generator=g, dtype=torch.float64).numpy())
    gate = np.zeros(n)
    pos = int(_uniform(g, 0, 0.3) * SAMPLE_RATE)
    while pos < n:
        length = int(_uniform(g, 0.05, 0.4) * SAMPLE_RATE)
        ramp = min(160, length // 2)
        env = np.ones(length)
        env[:ramp], env[length - ramp:] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
        gate[pos:pos + length] = env[:max(0, min(length, n - pos))]
        pos += length + int(_uniform(g, 0.05, 0.5) * SAMPLE_RATE)
    # a floor keeps the noise power defined even when no burst landed
    return _unit_rms(noise * (gate + 0.02))


def babble(n: int, g: torch.Generator, voice_set: tuple[str, ...]) -> np.ndarray:
    """3..5 overlapping utterances of other speakers, looped to ``n`` samples."""
    out = np.zeros(n)
    for _ in range(int(torch.randint(3, 6, (), generator=g))):
        wave, _ = speak(g, voice_set)
        wave = np.tile(wave, n // len(wave) + 2)
        start = int(torch.randint(len(wave) - n, (), generator=g))
        out += _unit_rms(wave[start:start + n])
    return _unit_rms(out)


def make_noise(kind: str, n: int, g: torch.Generator, split: str) -> np.ndarray:
    """Unit-RMS noise of ``kind`` for ``split`` (test draws come from held-out variants)."""
    test = split == "test"
    if kind == "coloured":
        return coloured_noise(n, _uniform(g, -0.5, 2.0), g)
    if kind == "babble":
        return babble(n, g, voices(split))
    if kind == "hum":
        return hum(n, (60.0 if test else 50.0) * _uniform(g, 0.98, 1.02), g)
    if kind == "bursts":
        return bursts(n, g, band=(300.0, 7000.0) if test else (150.0, 5000.0))
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + a noise`` with ``a`` chosen so that the SNR is exactly ``snr_db``.

    Example:
        >>> s, n = np.sin(np.arange(1000.0)), np.cos(np.arange(1000.0) * 3)
        >>> y = mix(s, n, 10.0)
        >>> round(float(10 * np.log10(np.sum(s**2) / np.sum((y - s)**2))), 6)
        10.0
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech and noise must have the same shape, got {speech.shape} and "
                         f"{noise.shape}")
    ps, pn = float(np.sum(speech**2)), float(np.sum(noise**2))
    if ps <= 0 or pn <= 0:
        raise ValueError(f"speech and noise need non-zero power, got {ps} and {pn}")
    return speech + noise * math.sqrt(ps / (pn * 10 ** (snr_db / 10)))


# -- reverberation -----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def room_impulse_response(split: str, room: int) -> np.ndarray:
    """RIR of simulated shoebox room ``room`` of ``split`` (RT60 0.2..0.6 s), direct path at 0."""
    import pyroomacoustics as pra

    g = example_generator(split, room, seed=12345)
    dims = [_uniform(g, 3, 9), _uniform(g, 3, 7), _uniform(g, 2.4, 3.5)]
    rt60 = _uniform(g, 0.2, 0.6)
    absorption, order = pra.inverse_sabine(rt60, dims)
    # the image-source order is capped to keep simulation at milliseconds; the tail is shorter
    shoebox = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption),
                          max_order=min(order, 20))
    src = [_uniform(g, 0.5, d - 0.5) for d in dims]
    mic = [_uniform(g, 0.5, d - 0.5) for d in dims]
    shoebox.add_source(src)
    shoebox.add_microphone(mic)
    shoebox.compute_rir()
    h = np.asarray(shoebox.rir[0][0], dtype=np.float64)
    peak = int(np.argmax(np.abs(h)))
    return h[peak:] / h[peak]


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``speech`` convolved with ``rir`` (direct path at sample 0), same length."""
    from scipy.signal import fftconvolve

    return fftconvolve(speech, rir)[:len(speech)]


ROOMS_PER_SPLIT = 8


def make_pair(split: str, index: int, seed: int = 0, kind: str | None = None,
              snr_db: float | None = None, reverb: bool | None = None) -> Pair:
    """Example ``index`` of ``split``: a (clean, noisy) pair with its recipe in ``meta``.

    ``kind``, ``snr_db`` and ``reverb`` override the random draws (same speech either way).
    """
    g = example_generator(split, index, seed)
    clean, info = speak(g, voices(split))
    draw_kind, draw_snr = _choice(g, NOISE_KINDS), _uniform(g, *SNR_RANGE)
    draw_reverb = float(torch.rand((), generator=g)) < REVERB_PROB
    room = int(torch.randint(ROOMS_PER_SPLIT, (), generator=g))
    kind = draw_kind if kind is None else kind
    snr_db = draw_snr if snr_db is None else float(snr_db)
    reverb = draw_reverb if reverb is None else bool(reverb)
    speech = reverberate(clean, room_impulse_response(split, room)) if reverb else clean
    noise = make_noise(kind, len(clean), g, split)
    noisy = mix(speech, noise, snr_db)
    # keep the mixture below full scale (a clipped training input would teach clipping)
    scale = min(1.0, 0.95 / max(float(np.abs(noisy).max()), 1e-9))
    meta = {**info, "split": split, "index": index, "noise": kind, "snr_db": snr_db,
            "reverb": reverb, "room": room if reverb else None}
    return Pair(clean=(clean * scale).astype(np.float32), noisy=(noisy * scale).astype(np.float32),
                meta=meta)


def make_pairs(split: str, count: int, seed: int = 0, start: int = 0) -> list[Pair]:
    """``count`` consecutive examples of ``split`` starting at ``start``."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return [make_pair(split, i, seed) for i in range(start, start + count)]
