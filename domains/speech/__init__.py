"""Diffusion speech enhancement: SGMSE+, StoRM and fast mean-reverting samplers on pydiff.

- :mod:`.stft`: the SGMSE+ front end (STFT, amplitude compression, real-view states, schedule).
- :mod:`.synth`, :mod:`.data`: espeak-ng speech, noises, rooms, reproducible noisy/clean pairs.
- :mod:`.model`: the score network and StoRM's predictive network.
- :mod:`.enhancer`: :class:`SpeechEnhancer` (any rate, any length, chunked, streaming files).
- :mod:`.train`: the training recipe (on :mod:`pydiff.training`).
- :mod:`.metrics`: PESQ, ESTOI, SI-SDR and the noisereduce baseline.

Example:
    >>> import numpy as np
    >>> from pydiff.domains.speech import SpeechEnhancer
    >>> enhancer = SpeechEnhancer.from_pretrained()
    >>> enhancer.enhance(np.zeros(4000, np.float32), 8000).shape  # silence stays silence
    (4000,)
"""

from .audio import ClippingWarning, read_audio, resample, write_audio
from .enhancer import SAMPLERS, Sampler, SpeechEnhancer
from .stft import Spectrogram, SpectrogramConfig, sgmse_schedule

__all__ = ["SpeechEnhancer", "SAMPLERS", "Sampler", "Spectrogram", "SpectrogramConfig",
           "sgmse_schedule", "ClippingWarning", "read_audio", "write_audio", "resample"]
