"""Clean speech from espeak-ng, called through ctypes.

The ``espeakng-loader`` wheel ships ``libespeak-ng`` and its data; when it is missing, Debian's
``libespeak-ng.so.1`` (package ``espeak-ng``) is used. espeak-ng synthesizes at 22.05 kHz; the
result is resampled to the requested rate with soxr. The library keeps global state, so calls
are serialized with a lock.

espeak-ng's output depends on what it synthesized before in the same process (its wave
generator keeps running state across utterances), so the same call could return different
samples in different runs. To make every utterance reproducible, each one is synthesized in a
forked child of a process whose espeak instance never spoke (POSIX; elsewhere in-process).

Example:
    >>> from pydiff.domains.speech.synth import synthesize
    >>> wave = synthesize("hello world", voice="en+f3", rate=170, pitch=60)
    >>> wave.dtype.name, wave.ndim, 0.3 < len(wave) / 16000 < 3
    ('float32', 1, True)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading

import numpy as np

_ESPEAK_RATE = 1  # espeak_PARAMETER values from speak_lib.h
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
_lock = threading.Lock()
_engine: _Espeak | None = None


class _Espeak:
    """The loaded library, its output rate and the chunks of the utterance being synthesized."""

    def __init__(self) -> None:
        lib, data = _load_library()
        self.lib = lib
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}); data path {data!r}")
        self.sample_rate = int(rate)
        self.chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis


def _load_library() -> tuple[ctypes.CDLL, bytes | None]:
    try:
        import espeakng_loader

        return (ctypes.CDLL(espeakng_loader.get_library_path()),
                espeakng_loader.get_data_path().encode())
    except (ImportError, OSError, RuntimeError):
        pass
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise RuntimeError("espeak-ng is not available: pip install espeakng-loader "
                           "(or apt-get install espeak-ng)")
    return ctypes.CDLL(name), None


def _engine_instance() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


def _speak(eng: _Espeak, voice: str, rate: int, pitch: int, pitch_range: int,
           text: str) -> np.ndarray:
    """int16 samples at espeak's rate (in this process)."""
    if eng.lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"unknown espeak voice {voice!r}")
    eng.lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
    eng.lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
    eng.lib.espeak_SetParameter(_ESPEAK_RANGE, pitch_range, 0)
    data = text.encode() + b"\0"
    eng.chunks = []
    err = eng.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8,
                               None, None)
    eng.lib.espeak_Synchronize()
    chunks, eng.chunks = eng.chunks, []
    if err != 0 or not chunks:
        raise RuntimeError(f"espeak_Synth failed (error {err}) for voice {voice!r}")
    return np.concatenate(chunks)


def _speak_forked(eng: _Espeak, *speak: object) -> np.ndarray:
    """:func:`_speak` in a forked child, so the parent's espeak state never changes."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: speak, send (status, length, samples), exit without cleanup
        status = 0
        try:
            try:
                payload = _speak(eng, *speak).astype("<i2").tobytes()
            except ValueError as err:
                status, payload = 1, str(err).encode()
            except Exception as err:  # noqa: BLE001 -- reported to the parent
                status, payload = 2, str(err).encode()
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(struct.pack("<iq", status, len(payload)) + payload)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        blob = pipe.read()
    os.waitpid(pid, 0)
    if len(blob) < 12:
        raise RuntimeError("espeak-ng synthesis process died without a result")
    status, size = struct.unpack("<iq", blob[:12])
    payload = blob[12:12 + size]
    if status == 1:
        raise ValueError(payload.decode())
    if status:
        raise RuntimeError(payload.decode())
    return np.frombuffer(payload, dtype="<i2").copy()


def synthesize(text: str, voice: str = "en", rate: int = 170, pitch: int = 50,
               pitch_range: int = 50, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` with espeak-ng; float32 mono in [-1, 1] at ``sample_rate``.

    Args:
        text: UTF-8 text.
        voice: an espeak voice name, optionally with a variant (``"en-us+m3"``).
        rate: words per minute (80..450).
        pitch: base pitch (0..99).
        pitch_range: pitch variation (0..99).
        sample_rate: output rate (resampled from espeak's 22.05 kHz with soxr).
    """
    import soxr

    if not text.strip():
        raise ValueError(f"text must contain something to say, got {text!r}")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80..450 words per minute, got {rate}")
    if not (0 <= pitch <= 99 and 0 <= pitch_range <= 99):
        raise ValueError(f"pitch and pitch_range must be 0..99, got {pitch}, {pitch_range}")
    with _lock:
        eng = _engine_instance()
        speak = (voice, int(rate), int(pitch), int(pitch_range), text)
        pcm = _speak_forked(eng, *speak) if hasattr(os, "fork") else _speak(eng, *speak)
        native = eng.sample_rate
    wave = pcm.astype(np.float32) / 32768.0
    if sample_rate != native:
        wave = soxr.resample(wave, native, sample_rate).astype(np.float32)
    return wave
