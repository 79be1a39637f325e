"""Evaluation on the held-out split: noisy input, noisereduce and each diffusion sampler.

:func:`evaluate` enhances the first ``count`` examples of the ``"test"`` split (held-out voices,
noises and rooms) with every method and reports mean PESQ (wide-band), ESTOI, SI-SDR, network
evaluations and real-time factor (processing seconds per second of audio on this machine).
:func:`plot_spectrograms` draws the log-magnitude spectrograms of one example, and
:func:`plot_waves` those of any waves (``pydiff speech enhance --plot``), with ``librosa.display``.

Example:
    >>> from pydiff.domains.speech import SpeechEnhancer
    >>> from pydiff.domains.speech.evaluate import evaluate
    >>> table = evaluate(SpeechEnhancer.from_pretrained(), count=1, methods=["noisy"])
    >>> sorted(table["noisy"])[:3]
    ['estoi', 'nfe', 'pesq']
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pydiff.errors import InputError
from pydiff.files import atomic_output

from .data import SAMPLE_RATE, Pair, make_pair
from .enhancer import SAMPLERS, SpeechEnhancer
from .metrics import all_metrics, spectral_gating


@dataclass(frozen=True)
class Method:
    """A row of the evaluation: ``solver`` None means a non-diffusion method (``label``)."""

    label: str
    solver: str | None = None
    steps: int | None = None

    def nfe(self) -> int:
        if self.solver is None:
            return 0
        sampler = SAMPLERS[self.solver]
        steps = sampler.steps if self.steps is None else self.steps
        per_step = 1 + int(sampler.options.get("corrector_steps", 0))
        # MR Sampler: one evaluation per step; PC: predictor + corrector; StoRM: + predictive
        return steps * per_step + (1 if sampler.storm else 0)


METHODS: dict[str, Method] = {
    "noisy": Method("noisy"),
    "noisereduce": Method("noisereduce"),
    "pc-60": Method("pc-60", "pc", 30),
    "mr-1": Method("mr-1", "mr", 1),
    "mr-5": Method("mr-5", "mr", 5),
    "mr-10": Method("mr-10", "mr", 10),
    "storm": Method("storm", "storm"),
    "mr-sde-10": Method("mr-sde-10", "mr_sde", 10),
}
DEFAULT_METHODS = ("noisy", "noisereduce", "pc-60", "mr-5", "mr-10", "storm")


def run_method(enhancer: SpeechEnhancer, method: Method, noisy: np.ndarray,
               seed: int = 0) -> np.ndarray:
    """The output of ``method`` on a 16 kHz mono input."""
    if method.solver is None:
        if method.label == "noisy":
            return noisy
        if method.label == "noisereduce":
            return spectral_gating(noisy, SAMPLE_RATE)
        raise InputError(f"unknown method {method.label!r}")
    return enhancer.enhance(noisy, SAMPLE_RATE, solver=method.solver, steps=method.steps,
                            seed=seed, chunk_seconds=None)


def evaluate(enhancer: SpeechEnhancer, count: int = 16, methods: Sequence[str] = DEFAULT_METHODS,
             split: str = "test", seed: int = 0,
             progress: bool = False) -> dict[str, dict[str, float]]:
    """Mean metrics of each method over the first ``count`` examples of ``split``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown methods {unknown}; expected some of {sorted(METHODS)}")
    if count < 1:
        raise InputError(f"count must be >= 1, got {count}")
    pairs = [make_pair(split, i) for i in range(count)]
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    iterator: Any = [(m, p) for m in methods for p in pairs]
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="evaluate")
    for name, pair in iterator:
        method = METHODS[name]
        started = time.perf_counter()
        out = run_method(enhancer, method, pair.noisy, seed)
        elapsed = time.perf_counter() - started
        scores = all_metrics(pair.clean, out)
        scores["rtf"] = elapsed / (len(pair.noisy) / SAMPLE_RATE)
        rows[name].append(scores)
    table = {}
    for name, scores in rows.items():
        mean = {k: _nanmean([s[k] for s in scores]) for k in scores[0]}
        mean["nfe"] = METHODS[name].nfe()
        table[name] = mean
    return table


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A plain-text table of :func:`evaluate`'s result (with gains over the noisy input)."""
    base = table.get("noisy")
    lines = [f"{'method':<12} {'NFE':>4} {'PESQ':>6} {'ESTOI':>6} {'SI-SDR':>7} "
             f"{'dPESQ':>6} {'dSI-SDR':>7} {'RTF':>6}"]
    for name, r in table.items():
        dp = r["pesq"] - base["pesq"] if base else float("nan")
        ds = r["si_sdr"] - base["si_sdr"] if base else float("nan")
        lines.append(f"{name:<12} {r['nfe']:>4d} {r['pesq']:>6.2f} {r['estoi']:>6.3f} "
                     f"{r['si_sdr']:>7.2f} {dp:>+6.2f} {ds:>+7.2f} {r['rtf']:>6.2f}")
    return "\n".join(lines)


def plot_spectrograms(enhancer: SpeechEnhancer, pair: Pair, path: str | Path,
                      methods: Sequence[str] = DEFAULT_METHODS, seed: int = 0) -> Path:
    """Save log-magnitude spectrograms of the clean target and each method's output (PNG)."""
    panels = [("clean", pair.clean)] + [(m, run_method(enhancer, METHODS[m], pair.noisy, seed))
                                        for m in methods]
    return plot_waves(panels, SAMPLE_RATE, path)


def plot_waves(panels: Sequence[tuple[str, np.ndarray]], sample_rate: int,
               path: str | Path) -> Path:
    """Save the log-magnitude spectrograms of mono waves, one titled panel each (PNG).

    ``librosa.display.specshow`` of ``librosa.stft`` (32 ms windows, 75% overlap) in dB, on one
    colour scale for all panels (80 dB below the loudest), so the panels compare directly.

    Example::

        plot_waves([("noisy", noisy), ("enhanced", enhanced)], 16000, "out.png")
    """
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("panels is empty; expected (title, wave) pairs")
    n_fft = 2 ** round(math.log2(0.032 * sample_rate))
    hop = n_fft // 4
    dbs = [librosa.amplitude_to_db(np.abs(librosa.stft(np.asarray(w, np.float32), n_fft=n_fft,
                                                       hop_length=hop)), ref=1.0, amin=1e-5,
                                   top_db=None) for _, w in panels]
    top = max(float(d.max()) for d in dbs)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.8 * len(panels)), sharex=True,
                             squeeze=False)
    for ax, (name, _), db in zip(axes[:, 0], panels, dbs):
        librosa.display.specshow(db, sr=sample_rate, hop_length=hop, n_fft=n_fft, x_axis="time",
                                 y_axis="hz", ax=ax, cmap="magma", vmin=top - 80, vmax=top)
        ax.set_title(name, fontsize=9, loc="left")
        ax.label_outer()
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path, "plot") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
