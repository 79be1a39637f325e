"""The SGMSE+ front end: complex STFT, amplitude compression, real-view states.

Waveforms at 16 kHz go through a centred STFT (``n_fft = 510``, so 256 frequency bins, hop 128,
periodic Hann window), then through SGMSE+'s amplitude compression
``c -> beta |c|^alpha e^{i angle(c)}`` (``alpha = 0.5``, ``beta = 0.15``). Both have exact
inverses: :meth:`Spectrogram.inverse` recovers the waveform to float precision.

Diffusion states are real tensors ``[B, 2, F, T]`` (real and imaginary parts as two channels,
:func:`to_real` / :func:`to_complex`). SGMSE+ draws *complex* standard normal noise, whose real
and imaginary parts each have variance 1/2; pydiff's noise is real with variance 1 per entry.
:func:`sgmse_schedule` therefore divides SGMSE+'s ``sigma_min`` and ``sigma_max`` by sqrt(2):
with that schedule the real-view process is exactly SGMSE+'s complex process (the same marginal
per part, the same reverse SDE), and ``sigma(t)`` is the per-part standard deviation.

Normalization (SGMSE+): the noisy waveform is divided by its peak magnitude before the STFT and
the estimate is multiplied back; :func:`peak_normalizer` computes that factor.

Example:
    >>> import torch
    >>> from pydiff.domains.speech.stft import Spectrogram
    >>> spec = Spectrogram()
    >>> wave = torch.randn(2, 16000) * 0.1
    >>> state = spec.forward(wave)
    >>> state.shape
    torch.Size([2, 2, 256, 126])
    >>> bool(torch.allclose(spec.inverse(state, 16000), wave, atol=1e-5))
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pydiff.schedules import MeanRevertingSchedule

Tensor = torch.Tensor

SAMPLE_RATE = 16000
# per-part std of SGMSE+'s complex normal noise (E|z|^2 = 1)
COMPLEX_NOISE_STD = 1 / math.sqrt(2)


@dataclass(frozen=True)
class SpectrogramConfig:
    """STFT and compression settings (the SGMSE+ defaults)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 510
    hop_length: int = 128
    alpha: float = 0.5
    beta: float = 0.15

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Spectrogram:
    """Waveform <-> compressed complex STFT <-> real-view state ``[..., 2, F, T]``.

    Args:
        config: a :class:`SpectrogramConfig` (default: SGMSE+'s).

    Example:
        >>> spec = Spectrogram()
        >>> spec.frames(16000), spec.bins
        (126, 256)
    """

    def __init__(self, config: SpectrogramConfig | None = None):
        self.config = config or SpectrogramConfig()
        c = self.config
        if c.n_fft < 2 or c.hop_length < 1 or c.hop_length > c.n_fft:
            raise ValueError(f"need n_fft >= 2 and 1 <= hop_length <= n_fft, got n_fft={c.n_fft}, "
                             f"hop_length={c.hop_length}")
        if not (c.alpha > 0 and c.beta > 0):
            raise ValueError(f"compression needs alpha > 0 and beta > 0, got alpha={c.alpha}, "
                             f"beta={c.beta}")
        self._windows: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def bins(self) -> int:
        """Number of frequency bins ``n_fft // 2 + 1``."""
        return self.config.n_fft // 2 + 1

    def frames(self, num_samples: int) -> int:
        """STFT frames of a centred transform of ``num_samples`` samples."""
        return num_samples // self.config.hop_length + 1

    def samples(self, num_frames: int) -> int:
        """The waveform length whose transform has exactly ``num_frames`` frames."""
        return (num_frames - 1) * self.config.hop_length

    def window(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in self._windows:
            self._windows[key] = torch.hann_window(self.config.n_fft, periodic=True,
                                                   device=device, dtype=dtype)
        return self._windows[key]

    # -- STFT --------------------------------------------------------------------------------
    def stft(self, wave: Tensor) -> Tensor:
        """Complex STFT ``[..., F, T]`` of ``wave [..., N]`` (centred, reflect padding)."""
        if wave.shape[-1] < 2:
            raise ValueError(f"wave needs at least 2 samples, got shape {tuple(wave.shape)}")
        c = self.config
        lead = wave.shape[:-1]
        flat = wave.reshape(-1, wave.shape[-1])
        # reflect padding needs more samples than half a window; zero padding otherwise
        mode = "reflect" if flat.shape[-1] > c.n_fft // 2 else "constant"
        spec = torch.stft(flat, c.n_fft, c.hop_length, window=self.window(wave.device, wave.dtype),
                          center=True, pad_mode=mode, return_complex=True)
        return spec.reshape(*lead, *spec.shape[-2:])

    def istft(self, spec: Tensor, length: int) -> Tensor:
        """Inverse of :meth:`stft` (exact up to float rounding), ``length`` samples."""
        c = self.config
        lead = spec.shape[:-2]
        flat = spec.reshape(-1, *spec.shape[-2:])
        real_dtype = spec.real.dtype
        wave = torch.istft(flat, c.n_fft, c.hop_length,
                           window=self.window(spec.device, real_dtype), center=True,
                           length=length)
        return wave.reshape(*lead, length)

    # -- compression -------------------------------------------------------------------------
    def compress(self, spec: Tensor) -> Tensor:
        """``beta |c|^alpha e^{i angle(c)}`` (zero stays zero)."""
        c = self.config
        mag = spec.abs()
        # |c|^alpha e^{i angle} = c |c|^(alpha - 1); the where keeps 0 at 0 without 0^(-0.5)
        scale = torch.where(mag > 0, mag.clamp_min(1e-30) ** (c.alpha - 1), torch.zeros_like(mag))
        return c.beta * spec * scale

    def decompress(self, spec: Tensor) -> Tensor:
        """Exact inverse of :meth:`compress`: ``|c / beta|^(1/alpha) e^{i angle(c)}``."""
        c = self.config
        s = spec / c.beta
        mag = s.abs()
        scale = torch.where(mag > 0, mag.clamp_min(1e-30) ** (1 / c.alpha - 1),
                            torch.zeros_like(mag))
        return s * scale

    # -- states ------------------------------------------------------------------------------
    def forward(self, wave: Tensor) -> Tensor:
        """Real-view compressed spectrogram ``[..., 2, F, T]`` of ``wave [..., N]``."""
        return to_real(self.compress(self.stft(wave)))

    def inverse(self, state: Tensor, length: int) -> Tensor:
        """Waveform ``[..., length]`` of a real-view state (exact inverse of :meth:`forward`)."""
        return self.istft(self.decompress(to_complex(state)), length)


def to_real(spec: Tensor) -> Tensor:
    """Complex ``[..., F, T]`` -> real ``[..., 2, F, T]`` (real and imaginary channels)."""
    if not spec.is_complex():
        raise TypeError(f"spec must be complex, got {spec.dtype}")
    return torch.view_as_real(spec).movedim(-1, -3).contiguous()


def to_complex(state: Tensor) -> Tensor:
    """Real ``[..., 2, F, T]`` -> complex ``[..., F, T]`` (inverse of :func:`to_real`)."""
    if state.dim() < 3 or state.shape[-3] != 2:
        raise ValueError(f"state must be [..., 2, F, T], got shape {tuple(state.shape)}")
    return torch.view_as_complex(state.movedim(-3, -1).contiguous())


def peak_normalizer(wave: Tensor, eps: float = 1e-8) -> Tensor:
    """SGMSE+'s normalization factor: the peak magnitude of each signal (``[..., 1]``).

    Divide the noisy input by it before :meth:`Spectrogram.forward`; multiply the estimate back.
    ``eps`` keeps all-zero input finite (it then stays zero).
    """
    return wave.abs().amax(dim=-1, keepdim=True).clamp_min(eps)


def sgmse_schedule(theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5,
                   t_eps: float = 0.03) -> MeanRevertingSchedule:
    """SGMSE+'s OUVE SDE for real-view states (arguments as in the paper, complex noise).

    The returned schedule's sigmas are per real part: SGMSE+'s ``sigma_min``/``sigma_max``
    times ``1/sqrt(2)`` (see the module docstring), so real standard normal noise in pydiff
    reproduces SGMSE+'s complex noise exactly.

    Example:
        >>> s = sgmse_schedule()
        >>> round(float(s.sigma(1.0)) * 2 ** 0.5, 3)  # SGMSE+'s complex std at T
        0.389
    """
    return MeanRevertingSchedule(theta=theta, sigma_min=sigma_min * COMPLEX_NOISE_STD,
                                 sigma_max=sigma_max * COMPLEX_NOISE_STD, t_eps=t_eps)
