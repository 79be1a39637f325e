"""Speech domain: front end, data, resampling, chunking, bad input, CLI, shipped checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pydiff.domains.speech import ClippingWarning, SpeechEnhancer, read_audio, write_audio
from pydiff.domains.speech.audio import resample
from pydiff.domains.speech.data import (
    TEST_VOICES,
    TRAIN_VOICES,
    make_noise,
    make_pair,
    mix,
)
from pydiff.domains.speech.enhancer import PRETRAINED_DIR, _OverlapAdd, frame_noise
from pydiff.domains.speech.metrics import si_sdr
from pydiff.domains.speech.stft import (
    Spectrogram,
    peak_normalizer,
    sgmse_schedule,
    to_complex,
    to_real,
)

import pydiff

SPEECH_DEPS = ("soundfile", "soxr", "pesq", "pystoi", "pyroomacoustics", "noisereduce",
               "espeakng_loader")
_missing = [m for m in SPEECH_DEPS if importlib.util.find_spec(m) is None]
if _missing:  # the package imports without them (lazily); these tests need them all
    pytest.skip(f"speech dependencies missing: {_missing} (pip install soundfile soxr pesq "
                "pystoi pyroomacoustics noisereduce espeakng-loader)", allow_module_level=True)


@pytest.fixture(scope="module")
def enhancer() -> SpeechEnhancer:
    torch.set_num_threads(1)
    return SpeechEnhancer.from_pretrained()


# -- front end ---------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [2, 100, 255, 16000, 16001])
def test_stft_compression_exact_inverse(length: int) -> None:
    spec = Spectrogram()
    wave = torch.randn(3, length, generator=torch.Generator().manual_seed(length)) * 0.3
    state = spec.forward(wave)
    assert state.shape == (3, 2, 256, spec.frames(length))
    back = spec.inverse(state, length)
    assert torch.allclose(back, wave, atol=2e-6), (back - wave).abs().max()


def test_compression_formula_and_inverse() -> None:
    spec = Spectrogram()
    g = torch.Generator().manual_seed(0)
    c = torch.complex(torch.randn(50, generator=g).double(), torch.randn(50, generator=g).double())
    c[0] = 0
    comp = spec.compress(c)
    expected = 0.15 * c.abs() ** 0.5 * torch.exp(1j * c.angle())
    assert torch.allclose(comp, expected, atol=1e-12)
    assert torch.allclose(spec.decompress(comp), c, atol=1e-12)
    assert comp[0] == 0
    assert torch.equal(to_complex(to_real(c.reshape(5, 10))), c.reshape(5, 10))


def test_schedule_is_sgmse_complex_process_per_real_part() -> None:
    # SGMSE+: complex noise with E|z|^2 = 1 and std sigma(t); per real part std sigma / sqrt 2
    sched = sgmse_schedule()
    t = torch.linspace(0.03, 1, 7, dtype=torch.float64)
    smin, smax, theta = 0.05, 0.5, 1.5
    lg = math.log(smax / smin)
    var = smin**2 * (torch.exp(2 * lg * t) - torch.exp(-2 * theta * t)) * lg / (theta + lg)
    assert torch.allclose(sched.sigma(t), torch.sqrt(var / 2), rtol=1e-12)
    assert torch.allclose(sched.alpha(t), torch.exp(-theta * t))
    assert sched.t_eps == 0.03


def test_peak_normalizer() -> None:
    wave = torch.tensor([[0.0, -0.5, 0.25], [0.0, 0.0, 0.0]])
    assert peak_normalizer(wave)[:, 0].tolist() == [0.5, pytest.approx(1e-8)]


# -- data --------------------------------------------------------------------------------------
def test_data_is_deterministic_and_splits_are_disjoint() -> None:
    a, b = make_pair("test", 5), make_pair("test", 5)
    assert np.array_equal(a.noisy, b.noisy) and np.array_equal(a.clean, b.clean)
    assert a.meta == b.meta
    c = make_pair("test", 6)
    assert not (a.clean.shape == c.clean.shape and np.array_equal(a.clean, c.clean))
    assert a.meta["voice"] in TEST_VOICES
    assert make_pair("train", 5).meta["voice"] in TRAIN_VOICES
    assert not set(TEST_VOICES) & set(TRAIN_VOICES)
    assert a.clean.dtype == np.float32 and np.abs(a.noisy).max() <= 0.95 + 1e-6


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 15.0])
def test_mixing_hits_the_requested_snr(snr: float) -> None:
    g = torch.Generator().manual_seed(1)
    speech = make_noise("hum", 8000, g, "train")
    noise = make_noise("bursts", 8000, g, "train")
    noisy = mix(speech, noise, snr)
    measured = 10 * np.log10(np.sum(speech**2) / np.sum((noisy - speech) ** 2))
    assert abs(measured - snr) < 1e-9
    # a dry example keeps its SNR through the final peak scaling
    pair = make_pair("train", 3, snr_db=snr, reverb=False)
    err = pair.noisy.astype(np.float64) - pair.clean
    measured = 10 * np.log10(np.sum(pair.clean.astype(np.float64) ** 2) / np.sum(err**2))
    assert abs(measured - snr) < 1e-3


def test_noise_kinds_are_unit_rms_and_mixing_rejects_silence() -> None:
    g = torch.Generator().manual_seed(2)
    for kind in ("coloured", "hum", "bursts"):
        n = make_noise(kind, 4000, g, "test")
        assert abs(np.sqrt(np.mean(n**2)) - 1) < 1e-9
    with pytest.raises(ValueError, match="non-zero power"):
        mix(np.zeros(10), np.ones(10), 0.0)
    with pytest.raises(ValueError, match="kind"):
        make_noise("rain", 10, g, "train")


# -- resampling and shapes -----------------------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_sample_rate_round_trip(rate: int) -> None:
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    back = resample(resample(tone, 16000, rate), rate, 16000)
    assert back.shape == tone.shape
    assert si_sdr(tone[0, 1000:-1000], back[0, 1000:-1000]) > 40


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2)])
def test_enhance_keeps_rate_shape_and_type(enhancer: SpeechEnhancer, rate: int,
                                           channels: int) -> None:
    n = int(0.7 * rate)
    g = torch.Generator().manual_seed(rate)
    wave = 0.1 * torch.randn(channels, n, generator=g)
    wave = wave[0] if channels == 1 else wave
    out = enhancer.enhance(wave, rate, solver="mr", steps=1, chunk_seconds=0.5,
                           overlap_seconds=0.125)
    assert torch.is_tensor(out) and out.shape == wave.shape and torch.isfinite(out).all()
    arr = enhancer.enhance(wave.numpy(), rate, solver="mr", steps=1, chunk_seconds=0.5,
                           overlap_seconds=0.125)
    assert isinstance(arr, np.ndarray) and np.allclose(arr, out.numpy(), atol=1e-6)


# -- chunking ------------------------------------------------------------------------------------
def test_overlap_add_of_identity_is_exact() -> None:
    wave = np.random.default_rng(0).normal(size=(2, 10_000)).astype(np.float32)
    starts = []

    def identity(x: np.ndarray, start: int) -> np.ndarray:
        starts.append(start)
        return x

    ola = _OverlapAdd(identity, chunk=2048, overlap=512)
    pieces = ola.push(wave[:, :3000]) + ola.push(wave[:, 3000:]) + ola.flush()
    out = np.concatenate(pieces, axis=1)
    assert out.shape == wave.shape
    assert np.allclose(out, wave, atol=1e-6)
    assert starts == list(range(0, 10_000 - 512, 1536))[:len(starts)]


def test_speech_unet_is_local_in_time() -> None:
    # what chunking relies on: per-frame normalization, no global attention
    from pydiff.domains.speech.model import ScoreNet

    torch.manual_seed(0)
    net = ScoreNet(base_channels=8, channel_mult=(1, 2, 2, 2))
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 1, 2, 256, 160, generator=g)
    t = torch.tensor([0.4])
    with torch.no_grad():
        full, part = net(x, t, y), net(x[..., 64:], t, y[..., 64:])
    far = slice(120, 136)  # far from both edges of the cut (frame 64 is a multiple of 8)
    # F itself (the Denoiser scales it by c_out ~ sigma_data before it reaches x0)
    assert torch.allclose(full[..., far], part[..., far.start - 64:far.stop - 64], atol=1e-4)


def test_frame_noise_is_keyed_by_absolute_frame() -> None:
    whole = frame_noise(3, 1, 0, 12, 256)
    assert torch.equal(frame_noise(3, 1, 5, 4, 256), whole[..., 5:9])
    assert not torch.equal(frame_noise(3, 0, 0, 12, 256), whole)


def test_chunked_matches_whole_file(enhancer: SpeechEnhancer) -> None:
    pair_a, pair_b = make_pair("test", 1), make_pair("test", 2)
    noisy = np.concatenate([pair_a.noisy, pair_b.noisy])[:16000 * 4]
    whole = enhancer.enhance(noisy, 16000, solver="mr", steps=3, chunk_seconds=None)
    chunked = enhancer.enhance(noisy, 16000, solver="mr", steps=3, chunk_seconds=1.5,
                               overlap_seconds=0.5)
    assert chunked.shape == whole.shape
    assert si_sdr(whole, chunked) >= 25.0


# -- bad input -----------------------------------------------------------------------------------
def test_bad_inputs(enhancer: SpeechEnhancer, tmp_path) -> None:
    with pytest.raises(ValueError, match="empty"):
        enhancer.enhance(np.zeros(0, np.float32), 16000)
    bad = np.zeros(1000, np.float32)
    bad[17] = np.nan
    bad[40] = np.inf
    with pytest.raises(ValueError, match="2 non-finite samples.*sample 17"):
        enhancer.enhance(bad, 16000)
    with pytest.raises(ValueError, match="sample_rate=4000"):
        enhancer.enhance(np.zeros(1000, np.float32), 4000)
    with pytest.raises(ValueError, match="solver must be one of"):
        enhancer.enhance(np.ones(1000, np.float32) * 0.1, 16000, solver="magic")
    with pytest.raises(ValueError, match=r"\[N\] \(mono\) or \[C, N\]"):
        enhancer.enhance(np.zeros((1, 2, 30), np.float32), 16000)
    # silence in, silence out (no model call, same shape)
    silent = enhancer.enhance(np.zeros((2, 3000), np.float32), 16000)
    assert silent.shape == (2, 3000) and not silent.any()
    # unreadable file
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF nonsense")
    with pytest.raises(ValueError, match="cannot read audio file"):
        read_audio(broken)
    with pytest.raises(ValueError, match="cannot read audio file"):
        enhancer.enhance_file(broken, tmp_path / "out.wav")
    # clipped input: processed, with a warning
    clipped = np.clip(make_pair("test", 0).noisy * 4, -1, 1)
    with pytest.warns(ClippingWarning, match="clipped"):
        out = enhancer.enhance(clipped[:8000], 16000, solver="mr", steps=1)
    assert np.isfinite(out).all() and out.shape == (8000,)
    # a very short input still works
    assert enhancer.enhance(np.full(3, 0.1, np.float32), 16000, steps=1).shape == (3,)


def test_enhance_file_streams_multichannel(enhancer: SpeechEnhancer, tmp_path) -> None:
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    noisy = make_pair("test", 4).noisy
    stereo = np.stack([noisy, noisy[::-1]])
    write_audio(src, resample(stereo, 16000, 22050), 22050)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = enhancer.enhance_file(src, dst, solver="mr", steps=1, chunk_seconds=1.0,
                                     overlap_seconds=0.25, block_seconds=0.3)
    out, rate = read_audio(dst)
    src_wave, _ = read_audio(src)
    assert rate == 22050 and out.shape == src_wave.shape and info["channels"] == 2


# -- CLI folder mode -----------------------------------------------------------------------------
def test_folder_mode_isolates_failures(tmp_path, capsys) -> None:
    from pydiff.apps.cli import main

    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        write_audio(src / f"ok{i}.wav", make_pair("test", i).noisy[:6000], 16000)
    (src / "bad.wav").write_bytes(b"not audio at all")
    write_audio(src / "low.wav", np.zeros(100), 16000)
    code = main(["speech", "enhance", str(src), "-o", str(dst), "--solver", "mr", "--steps",
                 "1", "--threads", "1"])
    assert code == 2  # every failure was bad input (a bug among them would make it 1)
    assert sorted(p.name for p in dst.iterdir()) == ["low.wav", "ok0.wav", "ok1.wav"]
    err = capsys.readouterr().err
    assert "FAILED" in err and "bad.wav" in err and "ok0.wav" not in err
    # a rerun skips the finished files and still reports the broken one
    assert main(["speech", "enhance", str(src), "-o", str(dst), "--steps", "1"]) == 2
    assert "skipped 3 existing" in capsys.readouterr().out


def test_enhance_takes_what_librosa_load_returns(enhancer: SpeechEnhancer, tmp_path) -> None:
    librosa = pytest.importorskip("librosa")
    path = tmp_path / "noisy.wav"
    write_audio(path, make_pair("test", 4).noisy[:8000], 16000)
    loaded = librosa.load(path, sr=None)  # (float32 [N], 16000)
    assert loaded[0].dtype == np.float32 and loaded[0].ndim == 1 and loaded[1] == 16000
    out = enhancer.enhance(loaded, solver="mr", steps=1)
    np.testing.assert_array_equal(out, enhancer.enhance(loaded[0], 16000, solver="mr", steps=1))
    y, sr = librosa.load(path)  # librosa's default: resampled to 22050 Hz
    assert sr == 22050 and enhancer.enhance((y, sr), solver="mr", steps=1).shape == y.shape
    with pytest.raises(ValueError, match="no separate sample_rate"):
        enhancer.enhance(loaded, 16000)
    with pytest.raises(ValueError, match="sample_rate is missing"):
        enhancer.enhance(loaded[0])


def test_enhance_cli_plots_noisy_and_enhanced_spectrograms(tmp_path, capsys) -> None:
    pytest.importorskip("librosa")
    import matplotlib.image
    from pydiff.apps.cli import main

    src, dst, png = tmp_path / "noisy.wav", tmp_path / "clean.wav", tmp_path / "spec.png"
    write_audio(src, make_pair("test", 5).noisy[:8000], 16000)
    assert main(["speech", "enhance", str(src), "-o", str(dst), "--solver", "mr", "--steps",
                 "1", "--plot", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    img = matplotlib.image.imread(png)[..., :3]
    top, bottom = img[: img.shape[0] // 2], img[img.shape[0] // 2:]
    # two drawn panels (not a blank canvas) that differ: noisy above, enhanced below
    assert top.std() > 0.1 and bottom.std() > 0.1 and np.abs(top - bottom).mean() > 0.01
    assert main(["speech", "enhance", str(tmp_path), "-o", str(tmp_path / "o"), "--plot",
                 str(png)]) == 2
    assert "--plot needs a single input file" in capsys.readouterr().err


# -- the shipped checkpoint ----------------------------------------------------------------------
def test_shipped_checkpoint_improves_si_sdr(enhancer: SpeechEnhancer) -> None:
    # a held-out voice in coloured noise at 0 dB (averaged over the test split the gains are
    # smaller: BENCHMARKS.md, Speech)
    pair = make_pair("test", 7, kind="coloured", snr_db=0.0, reverb=False)
    before = si_sdr(pair.clean, pair.noisy)
    one = enhancer.enhance(pair.noisy, 16000, solver="mr", steps=1, chunk_seconds=None)
    five = enhancer.enhance(pair.noisy, 16000, solver="mr", steps=5, chunk_seconds=None)
    assert si_sdr(pair.clean, one) - before > 5.0  # measured 7.2
    assert si_sdr(pair.clean, five) - before > 3.0  # measured 4.5


# Enhancement outputs of the shipped checkpoint on a fixed input, written by the code before the
# core took over the EDM preconditioning and the prior (ScoreNet applied c_in/c_skip/c_out itself
# and the enhancer built y + sigma z by hand; commit 0582ee2). Regenerate with
# `python tests/test_speech.py` only when the checkpoint itself changes.
REFERENCE = Path(__file__).parent / "data" / "speech_enhance_reference.npz"
REFERENCE_CASES = {"mr": 3, "storm": None, "pc": 6}  # sampler -> steps


def _reference_input() -> np.ndarray:
    rng = np.random.default_rng(1234)
    t = np.arange(12000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (tone + rng.normal(0, 0.1, t.size)).astype(np.float32)


def _reference_outputs(enhancer: SpeechEnhancer) -> dict[str, np.ndarray]:
    wave = _reference_input()
    return {name: enhancer.enhance(wave, 16000, solver=name, steps=steps, seed=7,
                                   chunk_seconds=None) for name, steps in REFERENCE_CASES.items()}


def test_shipped_checkpoint_gives_its_reference_outputs(enhancer: SpeechEnhancer) -> None:
    assert enhancer.model.precond == "edm" and enhancer.model.time_input == "log_sigma"
    expected = np.load(REFERENCE)
    for name, out in _reference_outputs(enhancer).items():
        np.testing.assert_allclose(out, expected[name], rtol=0, atol=1e-5, err_msg=name)


def test_checkpoint_without_core_preconditioning_loads_upgraded(enhancer: SpeechEnhancer,
                                                                tmp_path) -> None:
    # a checkpoint written before the core preconditioned (denoiser precond=None, time "t")
    legacy = tmp_path / "legacy"
    shutil.copytree(PRETRAINED_DIR, legacy)
    cfg_file = legacy / "score" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["denoiser"].update(precond=None, time_input="t")
    cfg_file.write_text(json.dumps(cfg))
    old = SpeechEnhancer.from_pretrained(legacy)
    assert old.model.precond == "edm" and old.model.time_input == "log_sigma"
    wave = _reference_input()[:4000]
    np.testing.assert_array_equal(old.enhance(wave, 16000, solver="mr", steps=2),
                                  enhancer.enhance(wave, 16000, solver="mr", steps=2))


def test_default_solver_is_storm_when_a_predictive_net_exists(enhancer: SpeechEnhancer) -> None:
    assert enhancer.default_solver == "storm"
    wave = make_pair("test", 2).noisy[:6000]
    torch.testing.assert_close(
        torch.from_numpy(enhancer.enhance(wave, 16000, chunk_seconds=None)),
        torch.from_numpy(enhancer.enhance(wave, 16000, solver="storm", chunk_seconds=None)))
    without = SpeechEnhancer(enhancer.model, None, spectrogram=enhancer.spectrogram)
    assert without.default_solver == "mr"


def test_samplers_map_to_core_solvers(enhancer: SpeechEnhancer) -> None:
    from pydiff.domains.speech import SAMPLERS

    y = enhancer.spectrogram.forward(torch.from_numpy(make_pair("test", 3).noisy[:4000]))[None]
    available = set(pydiff.available_solvers())
    for name, sampler in SAMPLERS.items():
        assert sampler.solver in available, (name, sampler.solver)
        x = enhancer.enhance_states(y, name, steps=2)
        assert x.shape == y.shape and torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["stft", "synth", "data", "metrics", "audio", "model", "enhancer",
                                  "evaluate", "train"])
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(f"pydiff.domains.speech.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_loudness_bin_weights() -> None:
    from pydiff.domains.speech.train import bin_weights

    y = torch.zeros(2, 2, 3, 4)
    y[0, 0, 1, 2], y[0, 1, 1, 2] = 3.0, 4.0  # one loud bin, |y|^2 = 25
    y[1] = 0.1
    w = bin_weights(y, "loudness")
    assert w.shape == (2, 1, 3, 4)
    assert w[0, 0, 1, 2] == pytest.approx(1 + 25 / (25 / 12)) and w[0, 0, 0, 0] == 1.0
    torch.testing.assert_close(w[1], torch.full((1, 3, 4), 2.0))  # flat input: flat weights
    assert bin_weights(y, "none") is None
    with pytest.raises(ValueError, match="bin_weighting must be one of"):
        bin_weights(y, "loud")


def test_predictive_loss_is_a_per_sample_weighted_mean() -> None:
    from pydiff.domains.speech.stft import Spectrogram
    from pydiff.domains.speech.train import PredictiveLoss, batch_states, bin_weights

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 4096, generator=g) * torch.tensor([[0.1], [0.5], [1.0]])
    batch = {"clean": clean, "noisy": clean + 0.3 * torch.randn(3, 4096, generator=g)}
    spec = Spectrogram()
    loss = PredictiveLoss(spec)(lambda y: 0.5 * y, batch, g)
    x, y = batch_states(spec, batch)
    err, w = (0.5 * y - x) ** 2, bin_weights(y, "loudness")
    per_sample = [(err[i] * w[i]).sum() / (2 * w[i].sum()) for i in range(3)]
    torch.testing.assert_close(loss, torch.stack(per_sample).mean())
    # every sample's weights sum alike, so the global weighted mean is the same number
    torch.testing.assert_close(loss, (err * w).sum() / (2 * w.sum()))


def test_train_cli_input_perturbation(tmp_path) -> None:
    from pydiff.apps.cli import main

    args = ["speech", "train", "-o", str(tmp_path / "run"), "--utterances", "2",
            "--predictive-steps", "1", "--score-steps", "1", "--batch-size", "2",
            "--base-channels", "4", "--threads", "1"]
    assert main([*args, "--input-perturbation", "1", "2", "3"]) == 2
    assert main([*args, "--input-perturbation", "0", "0.5"]) == 0
    meta = json.loads((tmp_path / "run" / "speech.json").read_text())["metadata"]
    assert meta["recipe"]["input_perturbation"] == [0.0, 0.5]


def test_warm_start_needs_matching_architecture(tmp_path) -> None:
    from pydiff.domains.speech.model import PredictiveNet, ScoreNet
    from pydiff.domains.speech.train import TrainConfig, _warm_start, train

    small = dict(utterances=2, predictive_steps=1, score_steps=1, batch_size=2, progress=False,
                 base_channels=4, channel_mult=(1, 2))
    first = train(TrainConfig(**small), tmp_path / "a")
    arch = dict(base_channels=4, channel_mult=(1, 2))
    predictive, score = PredictiveNet(**arch), ScoreNet(**arch)
    _warm_start(predictive, score, str(tmp_path / "a"))
    for a, b in [(first.predictive_net, predictive), (first.model.net, score)]:
        for p, q in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="does not match the recipe's architecture"):
        train(TrainConfig(**{**small, "base_channels": 8}, init_from=str(tmp_path / "a")))


if __name__ == "__main__":  # rewrite the reference outputs (after retraining the checkpoint)
    torch.set_num_threads(1)
    np.savez(REFERENCE, **_reference_outputs(SpeechEnhancer.from_pretrained()))
