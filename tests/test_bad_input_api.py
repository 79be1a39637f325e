"""Bad input to the public Python entry points: one mistake per row (wrong type, shape, range,
device), each raising a clear exception that names the culprit rather than a broadcasting
``RuntimeError`` from deep inside. Value mistakes raise :class:`pydiff.InputError` (a
``ValueError``), type mistakes ``TypeError``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import pydiff
from pydiff import InputError
from pydiff.parallel import PatchParallel


@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[], object]
    error: type[BaseException] | tuple[type[BaseException], ...]
    culprit: tuple[str, ...]


SCHED = pydiff.VPSchedule()
X = torch.randn(8, 3)


def zeros_net(x, t):
    return torch.zeros_like(x)


class MetaNet(torch.nn.Module):
    """Weights on the meta device: a network on another device than the state (no GPU
    needed)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 3, device="meta")

    def forward(self, x, t):
        return self.layer(x)


MODEL = pydiff.Denoiser(zeros_net, SCHED, prediction="eps")
UNET = pydiff.nn.UNet2D(1, base_channels=8, channel_mult=(1, 2))


def sample(**kw):
    args = {"model": MODEL, "x": X, "steps": 3} | kw
    return pydiff.sample(args.pop("model"), args.pop("x"), **args)


CORE: list[Row] = [
    # pydiff.sample
    Row("sample-model-not-a-denoiser", lambda: sample(model=zeros_net), TypeError, ("model",)),
    Row("sample-x-a-list", lambda: sample(x=[1.0, 2.0]), TypeError, ("x must be",)),
    Row("sample-x-empty-dict", lambda: sample(x={}), TypeError, ("x must be",)),
    Row("sample-x-0-dim", lambda: sample(x=torch.tensor(1.0)), InputError, ("dimension",)),
    Row("sample-steps-zero", lambda: sample(steps=0), InputError, ("steps", "0")),
    Row("sample-steps-float", lambda: sample(steps=2.5), InputError, ("steps", "2.5")),
    Row("sample-unknown-solver", lambda: sample(solver="nosuch"), InputError, ("nosuch",)),
    Row("sample-solver-bad-option", lambda: sample(solver="ddim", bogus=1), TypeError,
        ("ddim", "bogus")),
    Row("sample-t-start-wrong-batch", lambda: sample(t_start=torch.tensor([0.3, 0.4])),
        InputError, ("t_start", "(2,)", "batch size 8")),
    Row("sample-t-start-nan", lambda: sample(t_start=float("nan")), InputError, ("t_start",)),
    Row("sample-t-start-out-of-range", lambda: sample(t_start=2.0), InputError,
        ("t_start", "2.0")),
    Row("sample-t-end-above-t-start", lambda: sample(t_start=0.1, t_end=0.5), InputError,
        ("t_start", "t_end")),
    Row("sample-grid-increasing", lambda: sample(grid=torch.tensor([0.1, 0.5, 1.0])),
        InputError, ("grid", "decreasing")),
    Row("sample-grid-wrong-batch", lambda: sample(grid=torch.linspace(1, 0, 4)[:, None]
                                                  .expand(4, 5)),
        InputError, ("grid", "batch size 8")),
    Row("sample-unknown-spacing", lambda: sample(spacing="fast"), InputError, ("spacing",)),
    Row("sample-nan-state", lambda: sample(x=torch.full((2, 3), float("nan"))),
        FloatingPointError, ("non-finite",)),
    Row("sample-x-on-meta-device", lambda: sample(x=X.to("meta")), InputError, ("meta",)),
    Row("sample-generator-list-wrong-length",
        lambda: sample(solver="ddpm", generator=[torch.Generator()] * 3), InputError,
        ("generator", "3", "8")),
    # pydiff.prior
    Row("prior-negative-shape", lambda: pydiff.prior(SCHED, (-1, 2)), InputError, ("shape",)),
    Row("prior-t-out-of-range", lambda: pydiff.prior(SCHED, (2, 2), t=5.0), InputError,
        ("t=", "5.0")),
    Row("prior-shape-a-float", lambda: pydiff.prior(SCHED, (2.5, 2)), InputError, ("shape",)),
    Row("prior-unknown-device", lambda: pydiff.prior(SCHED, (2, 2), device="gpu0"),
        InputError, ("device", "gpu0")),
    Row("prior-missing-device", lambda: pydiff.prior(SCHED, (2, 2), device="cuda:7"),
        InputError, ("device", "cuda:7")),
    # pydiff.Denoiser
    Row("denoiser-net-not-callable", lambda: pydiff.Denoiser(5, SCHED), TypeError, ("net",)),
    Row("denoiser-schedule-a-string", lambda: pydiff.Denoiser(zeros_net, "vp"), TypeError,
        ("schedule",)),
    Row("denoiser-unknown-prediction", lambda: pydiff.Denoiser(zeros_net, SCHED, "noise"),
        InputError, ("prediction", "noise")),
    Row("denoiser-unknown-time-input",
        lambda: pydiff.Denoiser(zeros_net, SCHED, time_input="steps"), InputError,
        ("time_input", "steps")),
    Row("denoiser-net-output-shape",
        lambda: pydiff.Denoiser(lambda x, t: x[:, :1], SCHED).x0(X, 0.5), InputError,
        ("network returned (8, 1)", "(8, 3)")),
    Row("denoiser-net-output-broadcastable",
        lambda: pydiff.Denoiser(lambda x, t: x[:1], SCHED).x0(X, 0.5), InputError,
        ("network returned (1, 3)", "(8, 3)")),
    Row("denoiser-net-output-not-a-tensor",
        lambda: pydiff.Denoiser(lambda x, t: x.tolist(), SCHED).x0(X, 0.5), InputError,
        ("network returned list",)),
    Row("denoiser-net-on-another-device", lambda: pydiff.Denoiser(MetaNet(), SCHED).x0(X, 0.5),
        InputError, ("weights are on meta", "x is on cpu")),
    Row("sample-net-on-another-device", lambda: sample(model=pydiff.Denoiser(MetaNet(), SCHED)),
        InputError, ("weights are on meta", "x is on cpu")),
    Row("denoiser-t-wrong-batch", lambda: MODEL.x0(X, torch.full((5,), 0.5)), InputError,
        ("(5,)", "(8, 3)")),
    Row("denoiser-dict-state-tensor-output",
        lambda: pydiff.Denoiser(lambda x, t: x["a"], SCHED).x0({"a": X}, 0.5), TypeError,
        ("same structure",)),
    # solvers and grids
    Row("get-solver-unknown", lambda: pydiff.get_solver("nosuch"), InputError,
        ("nosuch", "known solvers")),
    Row("get-solver-not-a-name", lambda: pydiff.get_solver(5), InputError, ("5",)),
    Row("solver-init-increasing-grid",
        lambda: pydiff.get_solver("euler").init(X, SCHED, torch.tensor([0.2, 0.6, 1.0])),
        InputError, ("grid", "decreasing")),
    Row("trainer-checkpoint-dir-is-a-file",
        lambda: pydiff.training.Trainer(torch.nn.Linear(2, 2), [torch.zeros(2)],
                                        loss_fn=lambda m, b, g: m(b).sum(),
                                        checkpoint_dir=__file__),
        InputError, ("checkpoint_dir", "is a file")),
    Row("timesteps-steps-negative", lambda: pydiff.timesteps(SCHED, -2), InputError,
        ("steps", "-2")),
    Row("timesteps-unknown-spacing", lambda: pydiff.timesteps(SCHED, 4, "linear"), InputError,
        ("spacing", "linear")),
    # pydiff.accel
    Row("deepcache-interval-zero", lambda: pydiff.accel.DeepCacheState(interval=0), InputError,
        ("interval=0",)),
    Row("deepcache-net-not-a-unet", lambda: pydiff.accel.DeepCache(torch.nn.Linear(3, 3)),
        TypeError, ("net is Linear",)),
    Row("deepcache-branch-out-of-range",
        lambda: pydiff.accel.DeepCache(pydiff.nn.UNet2D(1, base_channels=8,
                                                        channel_mult=(1, 2)), branch=9),
        InputError, ("branch=9", "0 .. ")),
    Row("deepcache-state-not-a-cache",
        lambda: pydiff.accel.DeepCache(pydiff.nn.UNet1D(2, down_dims=(8, 16)))(
            torch.zeros(1, 2, 8), 0.5, deep_cache={}), TypeError, ("deep_cache is dict",)),
    Row("deepcache-refresh-negative", lambda: pydiff.accel.DeepCacheState(refresh=(0, -2)),
        InputError, ("refresh=(0, -2)",)),
    Row("deepcache-power-schedule-too-many-full",
        lambda: pydiff.accel.DeepCacheState.power_schedule(10, 12), InputError,
        ("full=12", "calls=10")),
    Row("stream-batch-model-a-function", lambda: pydiff.accel.StreamBatch(zeros_net), TypeError,
        ("model",)),
    Row("stream-batch-max-streams-zero", lambda: pydiff.accel.StreamBatch(MODEL, max_streams=0),
        InputError, ("max_streams=0",)),
    Row("stream-batch-push-a-list", lambda: pydiff.accel.StreamBatch(MODEL).push([1.0, 2.0]),
        InputError, ("push", "x must")),
    Row("stream-batch-cond-wrong-batch",
        lambda: pydiff.accel.StreamBatch(MODEL).push(X, label=torch.zeros(3)), InputError,
        ("label", "(3,)", "8")),
    # pydiff.parallel
    Row("patch-parallel-mode-unknown", lambda: PatchParallel(UNET, mode="fast"), InputError,
        ("mode='fast'",)),
    Row("patch-parallel-warmup-zero", lambda: PatchParallel(UNET, mode="displaced", warmup=0),
        InputError, ("warmup=0",)),
    Row("patch-parallel-fraction-zero", lambda: PatchParallel(UNET, mode="partial", fraction=0),
        InputError, ("fraction=0",)),
    Row("patch-parallel-gn-unknown", lambda: PatchParallel(UNET, mode="displaced", gn="stale"),
        InputError, ("gn='stale'",)),
    Row("patch-parallel-wire-int32", lambda: PatchParallel(UNET, mode="partial",
                                                           wire=torch.int32),
        InputError, ("wire=torch.int32", "int8")),
    Row("patch-parallel-image-dit-height", lambda: PatchParallel(
        pydiff.nn.ImageDiT(1, patch=4, hidden_dim=16, depth=1)).check_size(6), InputError,
        ("height 6", "patch 4")),
    Row("patch-parallel-not-a-unet2d", lambda: PatchParallel(torch.nn.Linear(3, 3)), TypeError,
        ("UNet2D",)),
]


@pytest.mark.parametrize("row", CORE, ids=[r.id for r in CORE])
def test_core_entry_points(row: Row) -> None:
    _check(row)


def _check(row: Row) -> None:
    with pytest.raises(row.error) as info:
        row.call()
    message = str(info.value)
    for culprit in row.culprit:
        assert culprit in message, (culprit, message)


# -- speech ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def enhancer():
    from pydiff.domains.speech import SpeechEnhancer

    return SpeechEnhancer.from_pretrained()


WAVE = (0.1 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32)
SPEECH: list[tuple[str, Callable, type[BaseException], tuple[str, ...]]] = [
    ("wave-with-nan", lambda e: e.enhance(np.where(np.arange(4000) == 7, np.nan, WAVE), 16000),
     InputError, ("non-finite",)),
    ("wave-3-dim", lambda e: e.enhance(WAVE.reshape(1, 1, -1), 16000), InputError,
     ("shape", "(1, 1, 4000)")),
    ("wave-empty", lambda e: e.enhance(np.zeros(0, np.float32), 16000), InputError,
     ("empty",)),
    ("wave-strings", lambda e: e.enhance(np.array(["a", "b"]), 16000), InputError,
     ("dtype",)),
    ("sample-rate-zero", lambda e: e.enhance(WAVE, 0), InputError, ("0",)),
    ("sample-rate-float", lambda e: e.enhance(WAVE, 16000.5), InputError, ("16000.5",)),
    ("unknown-solver", lambda e: e.enhance(WAVE, 16000, solver="nosuch"), InputError,
     ("solver", "nosuch")),
    ("steps-zero", lambda e: e.enhance(WAVE, 16000, solver="mr", steps=0), InputError,
     ("steps",)),
    ("chunk-negative", lambda e: e.enhance(WAVE, 16000, chunk_seconds=-1.0), InputError,
     ("chunk_seconds",)),
    ("overlap-longer-than-chunk",
     lambda e: e.enhance(WAVE, 16000, chunk_seconds=0.5, overlap_seconds=1.0), InputError,
     ("overlap_seconds",)),
    ("train-output-is-a-file", lambda e: _speech_train(__file__), InputError,
     ("output", "is a file")),
    ("enhance-file-missing", lambda e: e.enhance_file("/nonexistent.wav", "/tmp/x.wav"),
     InputError, ("/nonexistent.wav",)),
]


def _speech_train(output):
    from pydiff.domains.speech.train import TrainConfig, train

    return train(TrainConfig(utterances=2, score_steps=1, predictive_steps=0), output)


@pytest.mark.parametrize("case", SPEECH, ids=[c[0] for c in SPEECH])
def test_speech_entry_points(case, enhancer) -> None:
    name, call, error, culprit = case
    _check(Row(name, lambda: call(enhancer), error, culprit))


# -- policy ---------------------------------------------------------------------------------------
def _policy():
    from pydiff.domains.policy import DiffusionPolicy, DiffusionPolicyConfig

    cfg = DiffusionPolicyConfig(obs_dim=3, action_dim=1, action_low=[-2.0], action_high=[2.0],
                                down_dims=(8, 16), steps=2)
    policy = DiffusionPolicy(cfg)
    policy.reset()
    return policy


def _config(**kw):
    from pydiff.domains.policy import DiffusionPolicyConfig

    return DiffusionPolicyConfig(**({"obs_dim": 3, "action_dim": 1, "action_low": [-2.0],
                                     "action_high": [2.0]} | kw))


def _policy_rows() -> list[Row]:
    from pydiff.domains.policy import evaluate, load, make_env, run_episode, train
    from pydiff.domains.policy.train import checkpoint_path
    from pydiff.domains.policy.validation import ObservationError

    return [
        Row("config-steps-zero", lambda: _config(steps=0), InputError, ("steps",)),
        Row("config-unknown-mode", lambda: _config(mode="fast"), InputError, ("mode", "fast")),
        Row("config-unknown-solver", lambda: _config(solver="nosuch"), InputError,
            ("solver", "nosuch")),
        Row("config-action-bounds", lambda: _config(action_low=[-1.0, -1.0]), InputError,
            ("action_low",)),
        Row("observation-wrong-size", lambda: _policy().select_action(torch.zeros(5)),
            ObservationError, ("observation", "3")),
        Row("observation-nan", lambda: _policy().select_action(torch.tensor([0.0, np.nan, 0])),
            ObservationError, ("observation",)),
        Row("observation-a-string", lambda: _policy().select_action("up"), ObservationError,
            ("observation",)),
        Row("load-policy-missing-folder", lambda: load("/nonexistent/policy"),
            InputError, ("/nonexistent/policy",)),
        Row("load-policy-unknown-env", lambda: load("nosuch"), InputError, ("nosuch",)),
        Row("load-policy-unknown-preset", lambda: load("pointmass", preset="turbo"), InputError,
            ("preset", "turbo", "rti")),
        Row("evaluate-unknown-policy-name", lambda: evaluate("turbo", "pointmass", [0]),
            InputError, ("turbo", "expert")),
        Row("make-env-unknown", lambda: make_env("nosuch"), InputError, ("nosuch",)),
        Row("run-episode-hz-negative", lambda: run_episode(_policy(), "pendulum", 0, hz=-5),
            InputError, ("hz", "-5")),
        Row("train-policy-out-dir-is-a-file",
            lambda: train("pointmass", __file__, episodes=2, steps=1), InputError,
            ("out_dir", "is a file")),
        Row("evaluate-no-seeds", lambda: evaluate(_policy(), "pendulum", []), InputError,
            ("seeds",)),
        Row("load-consistency-preset-of-a-diffusion-policy",
            lambda: load(checkpoint_path("pointmass"), preset="cp1"), InputError,
            ("cp1", "distill")),
        Row("distill-unknown-setting",
            lambda: train("pointmass", None, model="consistency", episodes=2, steps=1,
                          turbo=True), InputError, ("turbo",)),
        Row("distill-minutes-zero",
            lambda: train("pointmass", None, model="consistency", episodes=2, steps=1,
                          minutes=0), InputError, ("minutes",)),
        Row("distill-a-student",
            lambda: train("pointmass", None, model="consistency", episodes=2, steps=1,
                          teacher=checkpoint_path("pointmass_consistency")), InputError,
            ("teacher",)),
    ]


def _check_all(rows: list[Row]) -> None:
    failures = []
    for row in rows:
        try:
            _check(row)
        except BaseException as err:  # noqa: BLE001 -- report every failing row at once
            failures.append(f"{row.id}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_policy_entry_points() -> None:
    _check_all(_policy_rows())


# -- timeseries -----------------------------------------------------------------------------------
def _timeseries_rows() -> list[Row]:
    import pandas as pd
    from pydiff.domains.timeseries import CSDI, TSDiff
    from pydiff.domains.timeseries.evaluate import evaluate
    from pydiff.domains.timeseries.train import TrainConfig, train

    tsdiff, csdi = TSDiff.from_pretrained(), CSDI.from_pretrained()
    y = 10 + np.sin(np.arange(60) / 3)
    gappy = np.where(np.arange(60) == 30, np.nan, y)
    series = {"y": pd.Series(y, index=pd.date_range("2024-01-01", periods=60, freq="h"))}
    return [
        Row("ts-forecast-all-nan", lambda: tsdiff.forecast(np.full(30, np.nan), 4), InputError,
            ("all missing",)),
        Row("ts-forecast-2d", lambda: tsdiff.forecast(np.ones((2, 30)), 4), InputError,
            ("1-D", "(2, 30)")),
        Row("ts-forecast-horizon-zero", lambda: tsdiff.forecast(y, 0), InputError,
            ("horizon", "0")),
        Row("ts-forecast-unknown-guidance", lambda: tsdiff.forecast(y, 4, guidance="l1"),
            InputError, ("guidance", "l1")),
        Row("ts-impute-too-few-observed", lambda: csdi.impute(np.r_[np.ones(5), [np.nan] * 9]),
            InputError, ("5 observed", "at least 8")),
        Row("ts-impute-samples-zero", lambda: csdi.impute(gappy, 0), InputError,
            ("num_samples", "0")),
        Row("ts-impute-unknown-solver", lambda: csdi.impute(gappy, 2, solver="nosuch"),
            InputError, ("nosuch",)),
        Row("ts-impute-strings", lambda: csdi.impute(["a", "b"]), InputError,
            ("series", "numbers")),
        Row("ts-evaluate-horizon-zero", lambda: evaluate(series, 0, model=tsdiff), InputError,
            ("horizon", "0")),
        Row("ts-evaluate-unknown-baseline",
            lambda: evaluate(series, 4, baselines=["arima"], model=tsdiff), InputError,
            ("arima",)),
        Row("ts-evaluate-too-many-windows", lambda: evaluate(series, 24, 5, model=tsdiff),
            InputError, ("'y'", "fewer --windows")),
        Row("ts-train-unknown-kind", lambda: train([y], TrainConfig(kind="gan")), InputError,
            ("kind", "gan")),
    ]


def test_timeseries_entry_points() -> None:
    pytest.importorskip("gluonts")
    _check_all(_timeseries_rows())


# -- molecules ------------------------------------------------------------------------------------
def _molecule_rows() -> list[Row]:
    from pydiff.domains.molecules import MoleculeGenerator
    from pydiff.domains.molecules.metrics import read_sdf
    from pydiff.domains.molecules.train import TrainConfig, train
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from pydiff.guidance import SVDD, JointGradientGuidance, SuperDiff, Superposition
    from pydiff.hooks import InpaintClasses, InpaintReplace, StepContext

    gen = MoleculeGenerator.from_pretrained()
    ethanol = Path(tempfile.mkdtemp()) / "ethanol.sdf"
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    Chem.MolToMolFile(mol, str(ethanol))
    return [
        Row("mol-sample-atoms-zero", lambda: gen.sample(2, atoms=0, steps=1), InputError,
            ("atoms=0", "2 to 64")),
        Row("mol-sample-atoms-500", lambda: gen.sample(2, atoms=500, steps=1), InputError,
            ("atoms=500", "2 to 64")),
        Row("mol-sample-sizes-mismatch", lambda: gen.sample(3, atoms=[9, 9], steps=1),
            InputError, ("2 sizes", "n=3")),
        Row("mol-sample-n-zero", lambda: gen.sample(0), InputError, ("n must",)),
        Row("mol-sample-unknown-reward", lambda: gen.sample(2, steps=1, reward="sweetness"),
            InputError, ("sweetness", "qed")),
        Row("mol-sample-guidance-without-reward", lambda: gen.sample(2, guidance="svdd"),
            InputError, ("guidance", "reward")),
        Row("mol-sample-unknown-solver", lambda: gen.sample(2, solver="nosuch"), InputError,
            ("nosuch",)),
        Row("mol-sample-gradient-wrong-reward",
            lambda: gen.sample(2, steps=1, reward="logp", guidance="gradient"), InputError,
            ("gradient", "qed", "logp")),
        Row("mol-sample-scale-negative",
            lambda: gen.sample(2, steps=1, reward="qed", guidance="gradient", scale=-1.0),
            InputError, ("scale", "-1")),
        Row("mol-train-unknown-time-sampler",
            lambda: train(TrainConfig(steps=1, time_sampler="lognormal", progress=False)),
            InputError, ("time_sampler", "lognormal", "low_noise")),
        Row("mol-read-sdf-not-sdf", lambda: read_sdf(__file__), InputError, ("record 1",)),
        Row("mol-from-pretrained-not-a-model",
            lambda: MoleculeGenerator.from_pretrained("/nonexistent"), InputError,
            ("/nonexistent",)),
        Row("svdd-deterministic-solver", lambda: SVDD("ddim", reward=lambda x0: x0.sum(1)),
            InputError, ("stochastic", "ddim")),
        Row("joint-gradient-guidance-plain-model",
            lambda: JointGradientGuidance(pydiff.Denoiser(lambda x, t: x, pydiff.VPSchedule()),
                                          lambda x0, t: x0.sum()), TypeError, ("JointModel",)),
        Row("svdd-candidates-zero",
            lambda: SVDD("ddpm", reward=lambda x0: x0.sum(1), candidates=0), InputError,
            ("candidates", "0")),
        Row("mol-sample-fragment-fills-the-molecule",
            lambda: gen.sample(1, atoms=3, steps=1, fragment=read_sdf(ethanol)[0]), InputError,
            ("atoms=3", "fragment already has 9 atoms")),
        Row("mol-sample-fragment-no-conformer",
            lambda: gen.sample(1, steps=1, fragment=Chem.MolFromSmiles("CO")), InputError,
            ("fragment", "no conformer")),
        Row("mol-sample-fragment-missing-file",
            lambda: gen.sample(1, steps=1, fragment="/nonexistent.sdf"), InputError,
            ("fragment", "/nonexistent.sdf")),
        Row("mol-sample-superpose-unknown-mode",
            lambda: gen.sample(1, steps=1, superpose=gen, mode="xor"), InputError,
            ("mode", "xor")),
        Row("mol-sample-superpose-with-reward",
            lambda: gen.sample(1, steps=1, superpose=gen, reward="qed"), InputError,
            ("superpose", "not both")),
        Row("mol-train-select-unknown",
            lambda: train(TrainConfig(steps=1, select="size:3", progress=False)), InputError,
            ("select", "size:3", "NAME:MIN")),
        Row("superdiff-unknown-mode", lambda: SuperDiff("ddpm", "xor"), InputError,
            ("mode", "xor")),
        Row("superdiff-bad-kappa-range", lambda: SuperDiff("ddpm", "and", kappa_range=(1, 0)),
            InputError, ("kappa_range",)),
        Row("superposition-one-model",
            lambda: Superposition(pydiff.Denoiser(lambda x, t: x, pydiff.VPSchedule())),
            InputError, ("two or more",)),
        Row("inpaint-replace-dict-without-key",
            lambda: InpaintReplace(torch.zeros(1, 2, 3), torch.ones(1, 2, 1))(
                {"pos": torch.zeros(1, 2, 3)}, StepContext(0, *torch.ones(3))), InputError,
            ("key=",)),
        Row("inpaint-classes-float-known",
            lambda: InpaintClasses(torch.zeros(1, 2), torch.ones(1, 2), "types"), InputError,
            ("class indices",)),
    ]


def test_molecule_entry_points() -> None:
    _check_all(_molecule_rows())
