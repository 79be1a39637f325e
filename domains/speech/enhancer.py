"""``SpeechEnhancer``: diffusion speech enhancement at any sample rate, any length.

``SpeechEnhancer.from_pretrained().enhance(wave, sr, solver="mr", steps=10)`` takes mono ``[N]``
or multichannel ``[C, N]`` audio at any rate from 8 kHz up, resamples it to 16 kHz with soxr,
enhances it in chunks with overlap-add, and returns audio of the same shape and rate.
:meth:`SpeechEnhancer.enhance_file` streams a file through the same pipeline block by block
(soxr's streaming resampler, soundfile block reads and writes), so memory does not grow with the
file's length.

How a file stays seamless and reproducible:

- SGMSE+'s peak normalization uses the peak of the *whole* input (a first pass over a file),
  so every chunk sees the same scale.
- The prior noise is keyed by absolute STFT frame (one generator seed per frame and channel):
  chunk boundaries do not change the noise a frame gets. With a deterministic solver
  (``"mr"``, the ODE form) chunked and whole-file results then differ only by the network's limited
  context at chunk edges, which the raised-cosine crossfade over the overlap hides.
- Chunks start at multiples of 8 STFT hops, so their frames, and the network's strided
  downsampling grid, line up with the whole file's. The network normalizes each time frame
  on its own and has no global attention, so only its receptive field couples frames.

Samplers (``solver=``): see :data:`SAMPLERS` (``"pc"`` SGMSE+'s predictor-corrector, ``"mr"`` /
``"mr_sde"`` the MR Sampler, ``"storm"`` stochastic regeneration, ``"em"`` Euler-Maruyama).
Each maps to core solvers; none is written here.

Example:
    >>> import numpy as np
    >>> from pydiff.domains.speech import SpeechEnhancer
    >>> enhancer = SpeechEnhancer.from_pretrained()
    >>> noisy = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    >>> enhancer.enhance(noisy, 8000, solver="mr", steps=2).shape
    (8000,)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr  # with the module: a Ctrl-C inside its (nanobind) initialization aborts the process
import torch

import pydiff
from pydiff.errors import InputError
from pydiff.files import atomic_output, atomic_output_dir, check_input_file
from pydiff.pretrained import from_pretrained, save_pretrained

from .audio import CLIP_FRACTION, CLIP_LEVEL, ClippingWarning, check_sample_rate, check_wave
from .model import ScoreNet, make_denoiser
from .stft import SAMPLE_RATE, Spectrogram, SpectrogramConfig

Tensor = torch.Tensor
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
CONFIG_NAME = "speech.json"


@dataclass(frozen=True)
class Sampler:
    """A named way to run the reverse process with core solvers.

    Attributes:
        solver: the core solver's registry name.
        steps: default solver steps.
        options: solver constructor options.
        storm: start from the predictive network's estimate (StoRM) instead of the noisy input.
        t_start: the noise level to start from (default: the schedule's ``t_max``).
        stochastic: whether results vary with ``seed`` beyond the prior.
    """

    solver: str
    steps: int
    options: dict[str, Any] = field(default_factory=dict)
    storm: bool = False
    t_start: float | None = None


SAMPLERS: dict[str, Sampler] = {
    # SGMSE+: reverse-diffusion predictor + one annealed Langevin corrector step, snr 0.5, N = 30
    "pc": Sampler("pc", 30, {"predictor": "reverse_diffusion", "corrector": "ald",
                                "snr": 0.5, "corrector_steps": 1}),
    # MR Sampler (Li et al. 2024): data prediction, 2nd order, probability-flow ODE form
    "mr": Sampler("mr_sampler", 10, {"form": "ode", "prediction": "data", "order": 2}),
    # MR Sampler, reverse-SDE form (stochastic)
    "mr_sde": Sampler("mr_sampler", 10, {"form": "sde", "prediction": "data", "order": 2}),
    # StoRM: predictive estimate as start and condition, then a short diffusion
    "storm": Sampler("mr_sampler", 5, {"form": "ode", "prediction": "data", "order": 2},
                     storm=True, t_start=0.5),
    # plain reverse SDE (SGMSE+'s predictor without a corrector)
    "em": Sampler("euler_maruyama", 30),
}


def _resolve_solver(name: str, sampler: Sampler) -> str:
    if sampler.solver not in pydiff.available_solvers():
        raise ValueError(f"sampler {name!r} needs the core solver {sampler.solver!r}, which is not "
                         f"registered (available: {pydiff.available_solvers()})")
    return sampler.solver


def frame_noise(seed: int, channel: int, first_frame: int, num_frames: int,
                bins: int) -> Tensor:
    """Standard normal noise ``[2, bins, num_frames]`` keyed by absolute frame index.

    Frame ``f`` of channel ``c`` always gets the same column, whichever chunk it falls in.
    """
    cols = []
    for f in range(first_frame, first_frame + num_frames):
        g = torch.Generator().manual_seed(((seed * 65_537 + channel) * 2_147_483_647 + f)
                                          % (2**63 - 1))
        cols.append(torch.randn(2, bins, generator=g))
    return torch.stack(cols, dim=-1)


class SpeechEnhancer:
    """A score network (plus an optional StoRM predictive network) and its front end.

    Args:
        score_net: a :class:`~pydiff.domains.speech.model.ScoreNet`, or a ready
            :class:`pydiff.Denoiser` around one (e.g. loaded with ``from_pretrained``).
        predictive_net: a :class:`~pydiff.domains.speech.model.PredictiveNet` (needed only by
            ``solver="storm"``).
        schedule: the diffusion schedule (default: SGMSE+'s, real-view units).
        spectrogram: the STFT front end (default: SGMSE+'s).
        metadata: free-form facts stored with the checkpoint (training recipe, figures).
    """

    def __init__(self, score_net: torch.nn.Module | pydiff.Denoiser,
                 predictive_net: torch.nn.Module | None = None,
                 schedule: pydiff.schedules.Schedule | None = None,
                 spectrogram: Spectrogram | None = None,
                 metadata: dict[str, Any] | None = None):
        if isinstance(score_net, pydiff.Denoiser):
            score_net.net.eval()
            self.model = score_net
        else:
            if schedule is not None and schedule.config() != score_net.schedule.config():
                raise InputError(f"schedule {schedule} differs from the network's "
                                 f"{score_net.schedule}")
            self.model = make_denoiser(score_net.eval())
        self.predictive_net = None if predictive_net is None else predictive_net.eval()
        self.spectrogram = spectrogram or Spectrogram()
        self.metadata = dict(metadata or {})
        if self.spectrogram.config.sample_rate != SAMPLE_RATE:
            raise InputError(f"the model works at {SAMPLE_RATE} Hz, got a spectrogram at "
                             f"{self.spectrogram.config.sample_rate} Hz")

    @property
    def schedule(self) -> pydiff.schedules.Schedule:
        return self.model.schedule

    # -- checkpoints -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> SpeechEnhancer:
        """Load a folder written by :meth:`save_pretrained` (default: the shipped checkpoint)."""
        path = Path(path) if path is not None else PRETRAINED_DIR
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise InputError(f"{str(path)!r} is not a speech enhancer checkpoint: no {CONFIG_NAME}")
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{str(cfg_file)!r} is not valid JSON: {err}") from err
        model = _upgrade(from_pretrained(path / "score"))
        predictive = None
        if (path / "predictive").is_dir():
            predictive = from_pretrained(path / "predictive")
        return cls(model, predictive, model.schedule,
                   Spectrogram(SpectrogramConfig(**cfg["spectrogram"])), cfg.get("metadata"))

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``score/``, ``predictive/`` (pydiff checkpoints) and ``speech.json``."""
        path = Path(path)
        cfg = {"spectrogram": self.spectrogram.config.to_dict(), "metadata": self.metadata}
        # all parts complete before any replaces the folder's (other entries such as
        # snapshots/ stay)
        with atomic_output_dir(path, "checkpoint folder") as tmp:
            save_pretrained(self.model, tmp / "score")
            if self.predictive_net is not None:
                save_pretrained(self.predictive_net, tmp / "predictive")
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
        return path

    # -- the spectrogram-domain core -----------------------------------------------------------
    @property
    def default_solver(self) -> str:
        """``"storm"`` when the checkpoint has a predictive network (the best sampler on the
        held-out split, 6 NFE), else ``"mr"``; what ``solver=None`` means."""
        return "storm" if self.predictive_net is not None else "mr"

    def _sampler_name(self, solver: str | None) -> str:
        """``solver``, or the default for ``None``; a clear error for unknown names."""
        solver = self.default_solver if solver is None else solver
        if solver not in SAMPLERS:
            raise InputError(f"solver must be one of {sorted(SAMPLERS)}, got {solver!r}")
        return solver

    @torch.no_grad()
    def enhance_states(self, y: Tensor, solver: str | None = None, steps: int | None = None, *,
                       seed: int = 0, first_frame: int = 0, noise: Tensor | None = None,
                       progress: bool = False) -> Tensor:
        """Enhance normalized real-view spectrograms ``y [B, 2, F, T]`` -> ``[B, 2, F, T]``.

        ``noise`` (standard normal, like ``y``) overrides the frame-keyed prior noise.
        """
        solver = self._sampler_name(solver)
        spec = SAMPLERS[solver]
        steps = spec.steps if steps is None else int(steps)
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        core = _resolve_solver(solver, spec)
        if noise is None:
            noise = torch.stack([frame_noise(seed, c, first_frame, y.shape[-1], y.shape[-2])
                                 for c in range(y.shape[0])])
        mean = y
        if spec.storm:
            if self.predictive_net is None:
                raise InputError("solver='storm' needs a predictive network; this checkpoint has "
                                 "none")
            mean = self.predictive_net(y)
        t_start = self.schedule.t_max if spec.t_start is None else spec.t_start
        x_start = pydiff.prior(self.schedule, y.shape, t=t_start, mean=mean,
                               noise=noise.to(y.dtype))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + first_frame)
        return pydiff.sample(self.model.bind(y=mean, noisy=y), x_start, solver=core,
                             steps=steps, t_start=t_start, generator=generator,
                             progress=progress, **spec.options)

    def _enhance_chunk(self, wave: np.ndarray, start: int, opts: dict[str, Any]) -> np.ndarray:
        """Enhance a normalized 16 kHz chunk ``[C, L]`` that starts at sample ``start``."""
        hop = self.spectrogram.config.hop_length
        y = self.spectrogram.forward(torch.from_numpy(np.ascontiguousarray(wave)))
        x = self.enhance_states(y, first_frame=start // hop, **opts)
        return self.spectrogram.inverse(x, wave.shape[-1]).numpy()

    # -- waveforms ---------------------------------------------------------------------------
    def enhance(self, wave: np.ndarray | Tensor | tuple[np.ndarray, int],
                sample_rate: int | None = None, solver: str | None = None,
                steps: int | None = None, *, seed: int = 0, chunk_seconds: float | None = 4.0,
                overlap_seconds: float = 0.5, progress: bool = False) -> np.ndarray | Tensor:
        """Enhance ``wave`` (``[N]`` or ``[C, N]`` at ``sample_rate``); same shape, rate and type.

        Args:
            wave: samples, channels first; integer PCM is scaled to [-1, 1). Or the
                ``(samples, sample_rate)`` pair that ``librosa.load`` returns, as it is.
            sample_rate: the rate of ``wave`` in Hz (any from 8 kHz up; not needed with a pair).
            solver, steps: a sampler from :data:`SAMPLERS` (default :attr:`default_solver`) and
                its step count (default the sampler's).
            seed: seed of the prior noise (and of stochastic solvers).
            chunk_seconds: chunk length (``None``: the whole input at once).
            overlap_seconds: overlap of consecutive chunks (crossfaded).

        Example (a file as librosa reads it)::

            y = enhancer.enhance(librosa.load("noisy.wav", sr=None))
        """
        if isinstance(wave, tuple):
            if len(wave) != 2 or sample_rate is not None:
                raise ValueError("wave may be a (samples, sample_rate) pair, as librosa.load "
                                 f"returns, with no separate sample_rate; got a {len(wave)}-tuple"
                                 f" and sample_rate={sample_rate!r}")
            wave, sample_rate = wave
        if sample_rate is None:
            raise ValueError("sample_rate is missing: pass the rate of wave in Hz, or wave as the "
                             "(samples, sample_rate) pair librosa.load returns")
        as_tensor = torch.is_tensor(wave)
        arr = wave.detach().cpu().numpy() if as_tensor else np.asarray(wave)
        mono = arr.ndim == 1
        checked = check_wave(arr, sample_rate)
        peak = float(np.abs(checked).max())
        out = np.concatenate(list(self._stream([checked], sample_rate, peak, solver, steps, seed,
                                               chunk_seconds, overlap_seconds)), axis=1)
        out = out[0] if mono else out
        return torch.from_numpy(out) if as_tensor else out

    def enhance_file(self, source: str | Path, target: str | Path, solver: str | None = None,
                     steps: int | None = None, *, seed: int = 0, chunk_seconds: float = 4.0,
                     overlap_seconds: float = 0.5, block_seconds: float = 2.0) -> dict[str, Any]:
        """Stream ``source`` -> ``target`` (WAV, same rate and channels) in constant memory.

        Two passes over the input: the first finds the peak (SGMSE+ normalization) and checks
        the samples, the second enhances. The output is written atomically. Returns facts
        about the file (rate, channels, seconds, whether it looked clipped).
        """
        import soundfile as sf

        source, target = check_input_file(source, "audio file"), Path(target)
        try:
            info = sf.info(str(source))
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise InputError(f"cannot read audio file {str(source)!r}: {err}") from err
        sr = check_sample_rate(info.samplerate, "sample rate of " + str(source))
        if info.frames == 0:
            raise InputError(f"audio file {str(source)!r} is empty (0 samples)")
        block = max(int(block_seconds * sr), 1)
        peak, at_full_scale = 0.0, 0
        for i, b in enumerate(sf.blocks(str(source), blocksize=block, dtype="float32",
                                        always_2d=True)):
            chunk = check_wave(b.T, sr, name=f"{source.name} (block {i})", warn_clipping=False)
            peak = max(peak, float(np.abs(chunk).max()))
            at_full_scale += int(np.count_nonzero(np.abs(chunk) >= CLIP_LEVEL))
        clipped = at_full_scale > CLIP_FRACTION * info.frames * info.channels
        if clipped:
            warnings.warn(f"{source.name} looks clipped: {at_full_scale} samples are at full "
                          "scale; noise is reduced but clipped peaks cannot be restored",
                          ClippingWarning, stacklevel=2)
        blocks = (b.T for b in sf.blocks(str(source), blocksize=block, dtype="float32",
                                         always_2d=True))
        with atomic_output(target, "output") as tmp, sf.SoundFile(
                str(tmp), "w", samplerate=sr, channels=info.channels, subtype="PCM_16",
                format="WAV") as out:
            for piece in self._stream(blocks, sr, peak, solver, steps, seed, chunk_seconds,
                                      overlap_seconds):
                out.write(np.clip(piece.T, -1.0, 1.0))
        return {"sample_rate": sr, "channels": info.channels, "seconds": info.frames / sr,
                "clipped": clipped}

    def _stream(self, blocks: Iterable[np.ndarray], sample_rate: int, peak: float,
                solver: str | None, steps: int | None, seed: int, chunk_seconds: float | None,
                overlap_seconds: float) -> Iterator[np.ndarray]:
        """Blocks ``[C, n]`` at ``sample_rate`` in, enhanced blocks out (same total length)."""
        solver = self._sampler_name(solver)  # fail before reading anything
        opts = {"solver": solver, "steps": steps, "seed": seed}
        _resolve_solver(solver, SAMPLERS[solver])
        hop = self.spectrogram.config.hop_length
        chunk = None if chunk_seconds is None else _to_hops(chunk_seconds, hop, "chunk_seconds")
        overlap = _to_hops(overlap_seconds, hop, "overlap_seconds", allow_zero=True)
        if chunk is not None and overlap >= chunk:
            raise InputError(f"overlap_seconds={overlap_seconds} must be shorter than "
                             f"chunk_seconds={chunk_seconds}")
        silent = peak <= 0.0
        scale = 1.0 if silent else 1.0 / peak

        def process(wave16: np.ndarray, start: int) -> np.ndarray:
            if silent:
                return np.zeros_like(wave16)
            return self._enhance_chunk(wave16 * scale, start, opts) * peak

        chunker = _OverlapAdd(process, chunk, overlap)
        resample = sample_rate != SAMPLE_RATE
        total_in = total_out = 0
        down = up = channels = None
        for b in blocks:
            b = np.ascontiguousarray(b, dtype=np.float32)
            if channels is None:
                channels = b.shape[0]
                if resample:
                    down = soxr.ResampleStream(sample_rate, SAMPLE_RATE, channels, dtype="float32")
                    up = soxr.ResampleStream(SAMPLE_RATE, sample_rate, channels, dtype="float32")
            total_in += b.shape[1]
            x16 = down.resample_chunk(b.T).T if resample else b
            for y16 in chunker.push(x16):
                y = up.resample_chunk(np.ascontiguousarray(y16.T)).T if resample else y16
                y = y[:, :max(total_in - total_out, 0)]
                total_out += y.shape[1]
                if y.shape[1]:
                    yield y
        if channels is None:
            raise InputError("wave is empty; expected at least one sample")
        tail16 = down.resample_chunk(np.zeros((0, channels), np.float32), last=True).T \
            if resample else np.zeros((channels, 0), np.float32)
        outs = chunker.push(tail16) + chunker.flush()
        if resample:
            outs = [up.resample_chunk(np.ascontiguousarray(o.T)).T for o in outs]
            outs.append(up.resample_chunk(np.zeros((0, channels), np.float32), last=True).T)
        for y in outs:
            y = y[:, :max(total_in - total_out, 0)]
            total_out += y.shape[1]
            if y.shape[1]:
                yield np.ascontiguousarray(y)
        if total_out < total_in:  # the resampler's flush can come up a few samples short
            yield np.zeros((channels, total_in - total_out), np.float32)

    def __repr__(self) -> str:
        return (f"SpeechEnhancer(schedule={self.schedule!r}, "
                f"storm={'yes' if self.predictive_net is not None else 'no'})")


def _upgrade(model: pydiff.Denoiser) -> pydiff.Denoiser:
    """The Denoiser of a score checkpoint written before the core did the preconditioning.

    Such checkpoints recorded ``precond=None, time_input="t"`` (the ScoreNet then applied EDM's
    input, skip and output scalings itself); the weights are the same network ``F``, so only
    the Denoiser around it changes.
    """
    if isinstance(model.net, ScoreNet) and model.precond is None:
        return make_denoiser(model.net)
    return model


# chunk starts land on multiples of this many frames: the UNet downsamples time 3 times, so
# chunks aligned to 8 frames see the same strided grid as the whole file
FRAME_ALIGN = 8


def _to_hops(seconds: float, hop: int, name: str, allow_zero: bool = False) -> int:
    if not seconds >= 0 or (seconds == 0 and not allow_zero):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {seconds}")
    unit = hop * FRAME_ALIGN
    return max(int(round(seconds * SAMPLE_RATE / unit)), 0 if allow_zero else 1) * unit


class _OverlapAdd:
    """Cut a stream into chunks (``chunk`` samples, ``overlap`` shared), process, crossfade.

    ``process(wave [C, L], start) -> [C, L]``; ``chunk=None`` processes everything at flush.
    """

    def __init__(self, process: Callable[[np.ndarray, int], np.ndarray], chunk: int | None,
                 overlap: int):
        self.process, self.chunk, self.overlap = process, chunk, overlap
        self.buffer: np.ndarray | None = None
        self.start = 0  # absolute index of buffer[:, 0]
        self.tail: np.ndarray | None = None  # processed overlap of the previous chunk
        # the crossfade covers the middle half of the overlap: each chunk's outer quarter (the
        # frames with the least context on one side) is dropped rather than blended
        margin = overlap // 4
        fade = max(overlap - 2 * margin, 1)
        ramp = (np.arange(fade, dtype=np.float64) + 0.5) / fade
        self.fade_in = np.concatenate([np.zeros(margin), 0.5 - 0.5 * np.cos(np.pi * ramp),
                                       np.ones(overlap - margin - fade)])[:overlap]
        self.fade_in = self.fade_in.astype(np.float32)

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        self.buffer = block if self.buffer is None else np.concatenate([self.buffer, block], 1)
        out = []
        while self.chunk is not None and self.buffer.shape[1] >= self.chunk:
            done = self._run(self.buffer[:, :self.chunk])
            stride = self.chunk - self.overlap
            out.append(done[:, :stride])
            self.tail = done[:, stride:]
            self.buffer, self.start = self.buffer[:, stride:], self.start + stride
        return out

    def flush(self) -> list[np.ndarray]:
        if self.buffer is None:
            return []
        rest = self.buffer
        if self.tail is not None and rest.shape[1] <= self.overlap:
            return [self.tail[:, :rest.shape[1]]]
        return [self._run(rest)] if rest.shape[1] else []

    def _run(self, wave: np.ndarray) -> np.ndarray:
        done = np.asarray(self.process(wave, self.start), dtype=np.float32)
        if self.tail is not None and self.overlap:
            n = self.overlap
            w = self.fade_in
            done = done.copy()
            done[:, :n] = self.tail * (1 - w) + done[:, :n] * w
        return done


__all__ = ["SpeechEnhancer", "SAMPLERS", "Sampler", "frame_noise"]
