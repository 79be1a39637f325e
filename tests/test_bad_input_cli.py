"""Bad input never ends in a traceback: one mistake per row, for every ``pydiff`` command.

Each row runs the real command line (``pydiff.apps.cli.main``, what the ``pydiff`` script calls)
in a subprocess with one mistake and checks the exit status (2 for user errors), that no
traceback is printed, that stderr is one line ``pydiff <command>: ...``, and that the line names
the culprit (the option, the file or the bad value). Importing torch costs each process a
second or two, so the rows run in batches, one process per command group, two processes at a
time; the Ctrl-C rows and the exit-status rows run one command per process through
``python -m pydiff.apps.cli``.

A new command adds its rows to ``ROWS`` (see DEVELOPERS.md, "Command-line errors").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

USER_ERROR = 2


@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]  # {tmp} is replaced by the fixture folder
    culprit: tuple[str, ...]  # every string must appear in the error line
    code: int = USER_ERROR
    read_only: bool = False  # needs a read-only folder (skipped where those are writable)
    # the mistake may surface only when the output is written, after a (cheap) run whose
    # progress bar comes first: then only stderr's last line is checked
    late: bool = False
    after: tuple[str, ...] = field(default=())  # files that must exist afterwards


NAN = "nan"


# Each command's row starts from cheap settings, so a mistake that slipped through would fail
# the row quickly instead of training for minutes; the mistake comes last (argparse keeps the
# last value of an option).
def demo(*mistake: str) -> list[str]:
    return ["demo", "--train-steps", "1", "--samples", "2", "--steps", "1", "--solvers",
            "euler", "--out", "{tmp}/demo_out", *mistake]


def policy_train(*mistake: str) -> list[str]:
    return ["policy", "train", "--env", "pointmass", "--episodes", "2", "--steps", "1",
            "--out", "{tmp}/policy_out", *mistake]


def policy_run(*mistake: str) -> list[str]:
    return ["policy", "run", "--env", "pointmass", *mistake]


def policy_eval(*mistake: str) -> list[str]:
    return ["policy", "eval", "--env", "pointmass", "--seeds", "1", "--presets", "expert",
            *mistake]


def policy_demos(*mistake: str) -> list[str]:
    return ["policy", "demos", "--env", "pointmass", "--episodes", "1",
            "--out", "{tmp}/demos_out", *mistake]


def enhance(source: str = "{tmp}/noisy.wav", output: str = "{tmp}/o.wav",
            *mistake: str) -> list[str]:
    return ["speech", "enhance", source, "-o", output, "--solver", "mr", "--steps", "1",
            *mistake]


def recon(source: str, *mistake: str, output: str = "{tmp}/recon_out") -> list[str]:
    return ["medical", "recon", source, output, "--modality", "ct", "--views", "8", "--method",
            "fbp", *mistake]


def speech_train(*mistake: str) -> list[str]:
    return ["speech", "train", "-o", "{tmp}/sp", "--utterances", "2", "--score-steps", "1",
            "--predictive-steps", "0", *mistake]


def parallel_sample(*mistake: str) -> list[str]:
    return ["parallel-sample", "--nproc", "2", "--size", "64", "--steps", "1", "-o",
            "{tmp}/p.png", *mistake]


def evaluate(*mistake: str) -> list[str]:
    return ["speech", "evaluate", "--count", "1", "--methods", "noisy", *mistake]


def ts_forecast(source: str = "{tmp}/series.csv", *mistake: str) -> list[str]:
    return ["timeseries", "forecast", source, "--horizon", "4", "-n", "2", "--steps", "1",
            "-o", "{tmp}/ts_forecast.csv", *mistake]


def ts_train(*mistake: str) -> list[str]:
    return ["timeseries", "train", "{tmp}/series.csv", "--out", "{tmp}/ts_model", "--steps",
            "1", "--context", "8", "--horizon", "4", "--channels", "8", "--blocks", "1",
            *mistake]


def ts_evaluate(source: str = "{tmp}/series.csv", *mistake: str) -> list[str]:
    return ["timeseries", "evaluate", source, "--horizon", "4", "--windows", "1", "-n", "2",
            "--steps", "1", "--baselines", "seasonal_naive", *mistake]


def ts_impute(source: str = "{tmp}/series.csv", *mistake: str) -> list[str]:
    return ["timeseries", "impute", source, "-o", "{tmp}/filled.csv", "-n", "2", "--steps", "1",
            *mistake]


def mol_sample(*mistake: str) -> list[str]:
    return ["molecules", "sample", "-n", "1", "--steps", "1", "-o", "{tmp}/m.sdf", *mistake]


def mol_train(*mistake: str) -> list[str]:
    return ["molecules", "train", "--out", "{tmp}/mol_model", "--steps", "1", "--hidden-dim",
            "4", "--num-layers", "1", *mistake]


ROWS: list[Row] = [
    # -- parallel-sample (checked before any worker starts)
    Row("parallel-size-not-divisible", parallel_sample("--nproc", "3"),
        ("--size 64", "3 ranks", "multiple of 24")),
    Row("parallel-nproc-zero", parallel_sample("--nproc", "0"), ("--nproc", "'0'")),
    Row("parallel-nproc-missing", ["parallel-sample", "-o", "{tmp}/p.png"], ("--nproc",)),
    Row("parallel-unknown-mode", parallel_sample("--mode", "fast"), ("--mode", "fast")),
    Row("parallel-timeout-nan", parallel_sample("--timeout", NAN), ("--timeout", "nan")),
    Row("parallel-output-read-only", parallel_sample("-o", "{tmp}/read_only/p.png"),
        ("--output", "not writable"), read_only=True),
    Row("parallel-fraction-above-one", parallel_sample("--mode", "partial", "--fraction", "1.5"),
        ("--fraction 1.5", "at most 1")),
    Row("parallel-fraction-zero", parallel_sample("--fraction", "0"), ("--fraction", "'0'")),
    Row("parallel-warmup-zero", parallel_sample("--warmup", "0"), ("--warmup", "'0'")),
    Row("parallel-model-not-a-checkpoint", parallel_sample("--model", "{tmp}"), ("config.json",)),
    Row("parallel-train-minutes-zero", ["parallel-train", "-o", "{tmp}/m", "--minutes", "0"],
        ("--minutes", "'0'")),
    Row("parallel-unknown-arch", parallel_sample("--arch", "vit"), ("--arch", "vit")),
    Row("parallel-train-unknown-arch", ["parallel-train", "-o", "{tmp}/m", "--arch", "vit"],
        ("--arch", "vit")),
    Row("parallel-train-output-read-only",
        ["parallel-train", "-o", "{tmp}/read_only/m", "--minutes", "0.01"],
        ("--output", "not writable"), read_only=True),
    # -- demo
    Row("demo-train-steps-zero", demo("--train-steps", "0"), ("--train-steps", "'0'")),
    Row("demo-samples-negative", demo("--samples", "-3"), ("--samples", "'-3'")),
    Row("demo-steps-nan", demo("--steps", "5", NAN), ("--steps", "'nan'")),
    Row("demo-unknown-solver", demo("--solvers", "euler", "nosuch"), ("nosuch",)),
    Row("demo-out-is-a-file", demo("--out", "{tmp}/a_file"), ("--out", "a_file", "file")),
    Row("demo-out-read-only", demo("--out", "{tmp}/read_only/demo"),
        ("--out", "read_only", "not writable"), read_only=True),
    Row("demo-unknown-option", demo("--bogus"), ("--bogus",)),
    # -- info
    Row("info-unknown-option", ["info", "--verbose"], ("--verbose",)),
    Row("no-such-command", ["nosuch"], ("nosuch",)),
    # -- policy train
    Row("train-unknown-env", policy_train("--env", "nosuch"), ("--env", "nosuch")),
    Row("train-missing-env", ["policy", "train"], ("--env",)),
    Row("train-steps-zero", policy_train("--steps", "0"), ("--steps",)),
    Row("train-lr-nan", policy_train("--lr", NAN), ("--lr", "nan")),
    Row("train-batch-negative", policy_train("--batch-size", "-1"), ("--batch-size",)),
    Row("train-out-is-a-file", policy_train("--out", "{tmp}/a_file"), ("--out", "a_file")),
    Row("train-out-read-only", policy_train("--out", "{tmp}/read_only/policy"),
        ("--out", "not writable"), read_only=True),
    Row("train-demos-missing", policy_train("--demos", "/nonexistent"),
        ("--demos", "/nonexistent")),
    Row("train-demos-not-a-dataset", policy_train("--demos", "{tmp}"), ("info.json",)),
    Row("train-init-missing", policy_train("--init", "/nonexistent"),
        ("--init", "/nonexistent")),
    # teacher_ckpt is the shipped point-mass policy: another env's warm start is refused
    Row("train-init-other-env", ["policy", "train", "--env", "pendulum", "--episodes", "2",
                                 "--steps", "1", "--out", "{tmp}/policy_out", "--init",
                                 "{tmp}/teacher_ckpt"],
        ("--init", "teacher_ckpt", "pointmass", "pendulum")),
    # -- policy distill
    Row("distill-unknown-env", ["policy", "distill", "--env", "nosuch", "--out",
                                "{tmp}/cp_out"], ("--env", "nosuch")),
    Row("distill-minutes-zero", ["policy", "distill", "--env", "pointmass", "--minutes", "0"],
        ("--minutes",)),
    Row("distill-minutes-nan", ["policy", "distill", "--env", "pointmass", "--minutes", NAN],
        ("--minutes", "nan")),
    Row("distill-consistency-steps-zero", ["policy", "distill", "--env", "pointmass",
                                           "--consistency-steps", "0"],
        ("--consistency-steps",)),
    Row("distill-solver-steps-zero", ["policy", "distill", "--env", "pointmass",
                                      "--solver-steps", "0"], ("--solver-steps",)),
    Row("distill-demos-missing", ["policy", "distill", "--env", "pointmass", "--demos",
                                  "/nonexistent", "--out", "{tmp}/cp_out"],
        ("--demos", "/nonexistent")),
    Row("distill-teacher-missing", ["policy", "distill", "--env", "pointmass", "--teacher",
                                    "/nonexistent", "--out", "{tmp}/cp_out"],
        ("--teacher", "/nonexistent")),
    Row("distill-out-is-a-file", ["policy", "distill", "--env", "pointmass", "--out",
                                  "{tmp}/a_file"], ("--out", "a_file")),
    # -- policy run
    Row("run-unknown-preset", policy_run("--preset", "cp3"), ("--preset", "cp3")),
    Row("run-consistency-preset-on-a-diffusion-policy",
        policy_run("--preset", "cp1", "--checkpoint", "{tmp}/teacher_ckpt"),
        ("cp1", "teacher_ckpt", "distill")),
    Row("run-hz-negative", policy_run("--hz", "-5"), ("--hz", "-5")),
    Row("run-hz-nan", policy_run("--hz", NAN), ("--hz", "nan")),
    Row("run-hz-zero", policy_run("--hz", "0"), ("--hz",)),
    Row("run-unknown-env", policy_run("--env", "nosuch"), ("nosuch",)),
    Row("run-unknown-solver", policy_run("--solver", "nosuch"), ("nosuch",)),
    Row("run-unknown-mode", policy_run("--mode", "fast"), ("--mode", "fast")),
    Row("run-episodes-zero", policy_run("--episodes", "0"), ("--episodes",)),
    Row("run-checkpoint-missing", policy_run("--checkpoint", "/nonexistent"),
        ("--checkpoint", "/nonexistent")),
    Row("run-checkpoint-not-a-checkpoint", policy_run("--checkpoint", "{tmp}/empty_dir"),
        ("empty_dir", "config.json")),
    Row("run-json-read-only", policy_run("--json", "{tmp}/read_only/run.json"),
        ("--json", "not writable"), read_only=True),
    Row("run-json-is-a-folder", policy_run("--json", "{tmp}/empty_dir"),
        ("--json", "empty_dir", "folder")),
    # -- policy eval
    Row("eval-checkpoint-missing", ["policy", "eval", "--env", "pendulum", "--seeds", "2",
                                    "--checkpoint", "/nonexistent"],
        ("--checkpoint", "/nonexistent", "does not exist")),
    Row("eval-checkpoint-is-a-file", policy_eval("--checkpoint", "{tmp}/a_file"),
        ("--checkpoint", "a_file", "file")),
    Row("eval-checkpoint-bad-json", policy_eval("--presets", "rti", "--checkpoint",
                                                "{tmp}/bad_json_ckpt"),
        ("bad_json_ckpt", "JSON")),
    Row("eval-seeds-zero", policy_eval("--seeds", "0"), ("--seeds",)),
    Row("eval-seed0-negative", policy_eval("--seed0", "-1"), ("--seed0",)),
    Row("eval-unknown-preset", policy_eval("--presets", "rti,foo"), ("--presets", "foo")),
    Row("eval-plots-is-a-file", policy_eval("--plots", "{tmp}/a_file"), ("--plots", "a_file")),
    Row("eval-json-under-a-file", policy_eval("--json", "{tmp}/a_file/x.json"),
        ("--json", "a_file", "not a folder")),
    Row("train-minutes-zero", policy_train("--minutes", "0"), ("--minutes",)),
    Row("train-minutes-nan", policy_train("--minutes", NAN), ("--minutes", "nan")),
    # -- policy demos
    Row("demos-missing-out", ["policy", "demos", "--env", "pointmass"], ("--out",)),
    Row("demos-unknown-env", policy_demos("--env", "nosuch"), ("--env", "nosuch")),
    Row("demos-episodes-zero", policy_demos("--episodes", "0"), ("--episodes",)),
    Row("demos-seed-negative", policy_demos("--seed", "-3"), ("--seed",)),
    Row("demos-out-is-a-file", policy_demos("--out", "{tmp}/a_file"), ("--out", "a_file")),
    # -- speech enhance
    Row("enhance-input-missing", enhance("{tmp}/missing.wav"), ("missing.wav", "does not exist")),
    Row("enhance-input-empty", enhance("{tmp}/empty.wav"), ("empty.wav", "empty")),
    Row("enhance-input-not-audio", enhance("{tmp}/not_audio.wav"),
        ("not_audio.wav", "cannot read audio")),
    Row("enhance-input-folder-without-audio", enhance("{tmp}/empty_dir", "{tmp}/outs"),
        ("empty_dir", ".wav")),
    Row("enhance-output-is-a-folder", enhance(output="{tmp}/empty_dir"),
        ("empty_dir", "folder")),
    Row("enhance-output-read-only", enhance(output="{tmp}/read_only/x.wav"),
        ("read_only", "not writable"), read_only=True),
    Row("enhance-output-under-a-file", enhance(output="{tmp}/a_file/x.wav"),
        ("a_file", "not a folder")),
    Row("enhance-steps-zero", enhance("{tmp}/noisy.wav", "{tmp}/o.wav", "--steps", "0"),
        ("--steps",)),
    Row("enhance-chunk-nan", enhance("{tmp}/noisy.wav", "{tmp}/o.wav", "--chunk-seconds", NAN),
        ("--chunk-seconds", "nan")),
    Row("enhance-overlap-too-long", enhance("{tmp}/noisy.wav", "{tmp}/o.wav",
                                            "--chunk-seconds", "1", "--overlap-seconds", "2"),
        ("--overlap-seconds",)),
    Row("enhance-unknown-solver", enhance("{tmp}/noisy.wav", "{tmp}/o.wav", "--solver",
                                          "nosuch"), ("--solver", "nosuch")),
    Row("enhance-checkpoint-missing", enhance("{tmp}/noisy.wav", "{tmp}/o.wav", "--checkpoint",
                                              "/nonexistent"), ("--checkpoint", "/nonexistent")),
    Row("enhance-checkpoint-not-a-checkpoint", enhance("{tmp}/noisy.wav", "{tmp}/o.wav",
                                                       "--checkpoint", "{tmp}/empty_dir"),
        ("empty_dir",)),
    Row("enhance-plot-for-a-folder", enhance("{tmp}/empty_dir", "{tmp}/outs", "--plot",
                                             "{tmp}/p.png"), ("--plot", "empty_dir")),
    Row("enhance-plot-under-a-file", enhance("{tmp}/noisy.wav", "{tmp}/o.wav", "--plot",
                                             "{tmp}/a_file/p.png"), ("--plot", "a_file")),
    # a missing output folder is created (the one row that succeeds)
    Row("enhance-output-folder-created", enhance(output="{tmp}/new_dir/sub/x.wav"), (),
        code=0, after=("new_dir/sub/x.wav",)),
    # a folder the file system refuses even to root (/sys): refused before the work where
    # the permissions tell, else when the output is written, and nothing is left behind
    Row("enhance-output-unwritable", enhance(output="/sys/x.wav"), ("/sys/x.wav",), late=True),
    Row("train-out-unwritable", policy_train("--out", "/sys/policy"), ("/sys/policy",),
        late=True),
    Row("demo-out-unwritable", demo("--out", "/sys/demo"), ("/sys/demo",), late=True),
    # -- speech train
    Row("train-speech-output-is-a-file", speech_train("-o", "{tmp}/a_file"), ("-o", "a_file")),
    Row("train-speech-output-read-only", speech_train("-o", "{tmp}/read_only/sp"),
        ("read_only", "not writable"), read_only=True),
    Row("train-speech-score-steps-zero", speech_train("--score-steps", "0"),
        ("--score-steps",)),
    Row("train-speech-sigma-nan", speech_train("--sigma-data", NAN), ("--sigma-data",)),
    Row("train-speech-perturbation-3-values", speech_train("--input-perturbation", "0", "0.5",
                                                           "1"), ("--input-perturbation",)),
    Row("train-speech-init-from-missing", speech_train("--init-from", "/nonexistent"),
        ("--init-from", "/nonexistent")),
    Row("train-speech-missing-output", ["speech", "train"], ("-o",)),
    # -- medical train
    Row("medical-train-missing-output", ["medical", "train"], ("-o",)),
    Row("medical-train-minutes-nan", ["medical", "train", "-o", "{tmp}/m", "--minutes", NAN],
        ("--minutes",)),
    Row("medical-train-steps-zero", ["medical", "train", "-o", "{tmp}/m", "--steps", "0"],
        ("--steps", "'0'")),
    Row("medical-train-unknown-modality", ["medical", "train", "-o", "{tmp}/m", "--modality",
                                           "pet"], ("--modality", "pet")),
    Row("medical-train-crop-too-big", ["medical", "train", "-o", "{tmp}/m", "--crop", "999"],
        ("--crop", "999")),
    Row("medical-train-output-is-a-file", ["medical", "train", "-o", "{tmp}/a_file"],
        ("a_file",)),
    Row("medical-train-ema-one", ["medical", "train", "-o", "{tmp}/m", "--ema", "1"],
        ("--ema", "[0, 1)")),
    Row("medical-train-pool-zero", ["medical", "train", "-o", "{tmp}/m", "--pool", "0"],
        ("--pool", "'0'")),
    Row("medical-train-unknown-device", ["medical", "train", "-o", "{tmp}/m", "--device",
                                         "tpu"], ("--device", "tpu")),
    Row("medical-train-init-missing", ["medical", "train", "-o", "{tmp}/m", "--init",
                                       "/nonexistent"], ("--init", "/nonexistent")),
    Row("medical-train-network-too-big", ["medical", "train", "-o", "{tmp}/m",
                                          "--max-mb", "1"], ("1.5 MB", "--base-channels")),
    # -- medical recon (a bad case fails alone after the others ran: its line is the last)
    Row("medical-recon-missing-folder", recon("{tmp}/no_such_scans"), ("INPUT_DIR",
                                                                       "no_such_scans")),
    Row("medical-recon-empty-folder", recon("{tmp}/empty_dir"), ("empty_dir",
                                                                  "no DICOM or NIfTI")),
    Row("medical-recon-non-image-file", recon("{tmp}/scans_text"), ("notes.txt",
                                                                     "neither DICOM nor NIfTI"),
        late=True),
    Row("medical-recon-4d-volume", recon("{tmp}/scans_4d"), ("four_d.nii.gz", "4D"), late=True),
    Row("medical-recon-nan", recon("{tmp}/scans_nan"), ("has_nan.nii.gz", "NaN"), late=True),
    Row("medical-recon-unknown-method", recon("{tmp}/scans_4d", "--method", "magic"),
        ("--method", "magic")),
    Row("medical-recon-unknown-modality", recon("{tmp}/scans_4d", "--modality", "pet"),
        ("--modality", "pet")),
    Row("medical-recon-views-zero", recon("{tmp}/scans_4d", "--views", "0"), ("--views", "'0'")),
    Row("medical-recon-tv-refine-baseline", recon("{tmp}/scans_4d", "--tv-refine", "0.01"),
        ("--tv-refine", "fbp")),
    Row("medical-recon-tv-refine-negative", recon("{tmp}/scans_4d", "--method", "dds",
                                                  "--tv-refine", "-1"), ("--tv-refine",)),
    Row("medical-recon-output-is-a-file", recon("{tmp}/scans_4d", output="{tmp}/a_file"),
        ("OUTPUT_DIR", "a_file")),
    # -- speech evaluate
    Row("evaluate-count-zero", evaluate("--count", "0"), ("--count",)),
    Row("evaluate-unknown-method", evaluate("--methods", "noisy,foo"), ("--methods", "foo")),
    Row("evaluate-checkpoint-empty", evaluate("--checkpoint", "{tmp}/empty_dir"),
        ("empty_dir",)),
    Row("evaluate-output-is-a-file", evaluate("--output", "{tmp}/a_file"),
        ("--output", "a_file")),
    # -- timeseries forecast
    Row("ts-forecast-input-missing", ts_forecast("{tmp}/missing.csv"), ("missing.csv",)),
    Row("ts-forecast-no-numeric-column", ts_forecast("{tmp}/no_numbers.csv"),
        ("no_numbers.csv", "no numeric column")),
    Row("ts-forecast-horizon-zero", ts_forecast("{tmp}/series.csv", "--horizon", "0"),
        ("--horizon", "'0'")),
    Row("ts-forecast-horizon-negative", ts_forecast("{tmp}/series.csv", "--horizon", "-3"),
        ("--horizon", "'-3'")),
    Row("ts-forecast-bad-dates", ts_forecast("{tmp}/bad_dates.csv"),
        ("bad_dates.csv", "no date column")),
    Row("ts-forecast-all-nan", ts_forecast("{tmp}/all_nan.csv"), ("'y'", "all missing")),
    Row("ts-forecast-too-short", ts_forecast("{tmp}/short.csv"),
        ("'y'", "5 observed", "at least 8")),
    Row("ts-forecast-unknown-column", ts_forecast("{tmp}/series.csv", "--column", "nosuch"),
        ("--column", "nosuch")),
    Row("ts-forecast-bad-freq", ts_forecast("{tmp}/series.csv", "--freq", "fortnightly"),
        ("--freq", "fortnightly")),
    Row("ts-forecast-samples-zero", ts_forecast("{tmp}/series.csv", "-n", "0"), ("-n",)),
    Row("ts-forecast-empty-file", ts_forecast("{tmp}/empty.wav"), ("empty.wav",)),
    Row("ts-forecast-output-read-only", ts_forecast("{tmp}/series.csv", "-o",
                                                    "{tmp}/read_only/f.csv"),
        ("-o", "not writable"), read_only=True),
    Row("ts-forecast-unknown-solver", ts_forecast("{tmp}/series.csv", "--solver", "nosuch"),
        ("nosuch",)),
    # -- timeseries evaluate
    Row("ts-evaluate-input-missing", ts_evaluate("{tmp}/missing.csv"), ("missing.csv",)),
    Row("ts-evaluate-no-numeric-column", ts_evaluate("{tmp}/no_numbers.csv"),
        ("no_numbers.csv", "no numeric column")),
    Row("ts-evaluate-horizon-zero", ts_evaluate("{tmp}/series.csv", "--horizon", "0"),
        ("--horizon", "'0'")),
    Row("ts-evaluate-unknown-baseline", ts_evaluate("{tmp}/series.csv", "--baselines",
                                                    "seasonal_naive,prophet"),
        ("--baselines", "prophet")),
    Row("ts-evaluate-windows-zero", ts_evaluate("{tmp}/series.csv", "--windows", "0"),
        ("--windows", "'0'")),
    Row("ts-evaluate-too-many-windows", ts_evaluate("{tmp}/series.csv", "--windows", "7"),
        ("'y'", "--horizon 4", "fewer --windows")),
    Row("ts-evaluate-unknown-guidance", ts_evaluate("{tmp}/series.csv", "--guidance", "l1"),
        ("--guidance", "l1")),
    Row("ts-evaluate-budget-nan", ts_evaluate("{tmp}/series.csv", "--deepar-budget", NAN),
        ("--deepar-budget", "nan")),
    Row("ts-evaluate-all-nan", ts_evaluate("{tmp}/all_nan.csv"), ("'y'", "all missing")),
    Row("ts-evaluate-json-read-only", ts_evaluate("{tmp}/series.csv", "--json",
                                                  "{tmp}/read_only/e.json"),
        ("--json", "not writable"), read_only=True),
    # -- timeseries impute
    Row("ts-impute-input-missing", ts_impute("{tmp}/missing.csv"), ("missing.csv",)),
    Row("ts-impute-no-numeric-column", ts_impute("{tmp}/no_numbers.csv"),
        ("no_numbers.csv", "no numeric column")),
    Row("ts-impute-bad-dates", ts_impute("{tmp}/bad_dates.csv"),
        ("bad_dates.csv", "no date column")),
    Row("ts-impute-all-nan", ts_impute("{tmp}/all_nan.csv"), ("'y'", "all missing")),
    Row("ts-impute-samples-zero", ts_impute("{tmp}/series.csv", "-n", "0"), ("-n",)),
    Row("ts-impute-unknown-solver", ts_impute("{tmp}/series.csv", "--solver", "nosuch"),
        ("nosuch",)),
    Row("ts-impute-checkpoint-not-a-model", ts_impute("{tmp}/series.csv", "--checkpoint",
                                                      "{tmp}/empty_dir"),
        ("empty_dir", "timeseries.json")),
    Row("ts-impute-missing-output", ["timeseries", "impute", "{tmp}/series.csv"],
        ("-o/--output",)),
    Row("ts-impute-output-read-only", ts_impute("{tmp}/series.csv", "-o",
                                                "{tmp}/read_only/f.csv"),
        ("-o", "not writable"), read_only=True),
    # -- timeseries train
    Row("ts-train-no-input", ["timeseries", "train", "--out", "{tmp}/ts_model"],
        ("CSV", "--mixture")),
    Row("ts-train-context-zero", ts_train("--context", "0"), ("--context", "'0'")),
    Row("ts-train-out-is-a-file", ts_train("--out", "{tmp}/a_file"), ("--out", "a_file")),
    Row("ts-train-series-too-short", ts_train("--context", "96", "--horizon", "24"),
        ("no series", "120 points")),
    Row("ts-train-unknown-balance", ts_train("--balance", "rows"), ("--balance", "rows")),
    Row("ts-train-stride-zero", ts_train("--stride", "0"), ("--stride", "'0'")),
    # -- molecules sample / evaluate / train
    Row("mol-sample-atoms-zero", mol_sample("--atoms", "0"), ("--atoms", "'0'")),
    Row("mol-sample-atoms-500", mol_sample("--atoms", "500"), ("--atoms 500", "2 to 64")),
    Row("mol-sample-n-zero", mol_sample("-n", "0"), ("-n", "'0'")),
    Row("mol-sample-unknown-reward", mol_sample("--reward", "sweetness"),
        ("--reward", "sweetness", "qed")),
    Row("mol-sample-unknown-guidance", mol_sample("--reward", "qed", "--guidance", "dps"),
        ("--guidance", "dps")),
    Row("mol-sample-guidance-without-reward", mol_sample("--guidance", "svdd"),
        ("--guidance svdd", "--reward")),
    Row("mol-sample-unknown-solver", mol_sample("--solver", "nosuch"), ("--solver", "nosuch")),
    Row("mol-sample-candidates-zero", mol_sample("--candidates", "0"), ("--candidates",)),
    Row("mol-sample-checkpoint-empty", mol_sample("--checkpoint", "{tmp}/empty_dir"),
        ("empty_dir",)),
    Row("mol-sample-output-read-only", mol_sample("-o", "{tmp}/read_only/m.sdf"),
        ("-o", "not writable"), read_only=True),
    Row("mol-evaluate-missing", ["molecules", "evaluate", "{tmp}/missing.sdf"],
        ("missing.sdf",)),
    Row("mol-evaluate-empty", ["molecules", "evaluate", "{tmp}/empty.wav"], ("empty.wav",)),
    Row("mol-evaluate-not-sdf", ["molecules", "evaluate", "{tmp}/not_audio.wav"],
        ("not_audio.wav", "record 1")),
    Row("mol-evaluate-unknown-atom-type", ["molecules", "evaluate", "{tmp}/chlorine.sdf"],
        ("chlorine.sdf", "Cl")),
    Row("mol-evaluate-folder", ["molecules", "evaluate", "{tmp}/empty_dir"], ("empty_dir",)),
    Row("mol-train-out-is-a-file", mol_train("--out", "{tmp}/a_file"), ("--out", "a_file")),
    Row("mol-train-steps-zero", mol_train("--steps", "0"), ("--steps", "'0'")),
    Row("mol-train-budget-nan", mol_train("--time-budget", NAN), ("--time-budget", "nan")),
    Row("mol-train-init-missing", mol_train("--init", "{tmp}/missing_model"),
        ("--init", "missing_model")),
    Row("mol-train-unknown-time-sampler", mol_train("--time-sampler", "lognormal"),
        ("--time-sampler", "lognormal")),
    Row("mol-sample-gradient-wrong-reward",
        mol_sample("--reward", "rings", "--guidance", "gradient"),
        ("--guidance gradient", "qed", "rings")),
    Row("mol-sample-scale-negative", mol_sample("--scale", "-1"), ("--scale", "'-1'")),
    Row("mol-sample-regressor-empty", mol_sample("--reward", "qed", "--guidance", "gradient",
                                                 "--regressor", "{tmp}/empty_dir"),
        ("empty_dir", "not a pydiff checkpoint")),
    Row("mol-sample-fragment-missing", mol_sample("--fragment", "{tmp}/missing.sdf"),
        ("--fragment", "missing.sdf", "does not exist")),
    Row("mol-sample-fragment-folder", mol_sample("--fragment", "{tmp}/empty_dir"),
        ("--fragment", "empty_dir", "folder")),
    Row("mol-sample-fragment-not-sdf", mol_sample("--fragment", "{tmp}/not_audio.wav"),
        ("not_audio.wav", "record 1")),
    Row("mol-sample-fragment-unknown-atom-type", mol_sample("--fragment", "{tmp}/chlorine.sdf"),
        ("chlorine.sdf", "Cl")),
    Row("mol-sample-fragment-fills-the-molecule",
        mol_sample("--fragment", "{tmp}/ethanol.sdf", "--atoms", "9"),
        ("atoms=9", "fragment already has 9 atoms")),
    Row("mol-sample-superpose-missing", mol_sample("--superpose", "{tmp}/missing_model"),
        ("--superpose", "missing_model")),
    Row("mol-sample-superpose-unknown-mode", mol_sample("--superpose", "{tmp}/empty_dir",
                                                        "--mode", "xor"),
        ("--mode", "xor", "and")),
    Row("mol-sample-superpose-with-reward", mol_sample("--superpose", "{tmp}/empty_dir",
                                                       "--reward", "qed"),
        ("--superpose", "--reward", "not both")),
    Row("mol-sample-superpose-not-a-model", mol_sample("--superpose", "{tmp}/empty_dir"),
        ("empty_dir", "not a pydiff checkpoint")),
    Row("mol-train-select-unknown-property", mol_train("--select", "sweetness:0.5"),
        ("--select", "sweetness:0.5", "qed")),
    Row("mol-train-select-keeps-nothing", mol_train("--select", "qed:2"),
        ("qed:2", "keeps none")),
    Row("mol-train-regressor-out-is-a-file",
        ["molecules", "train-regressor", "--out", "{tmp}/a_file", "--steps", "1"],
        ("--out", "a_file")),
    Row("mol-train-regressor-budget-zero",
        ["molecules", "train-regressor", "--out", "{tmp}/reg", "--time-budget", "0"],
        ("--time-budget", "'0'")),
]

# the driver runs rows one after the other in one process, each with its own stdout/stderr
DRIVER = r"""
import contextlib, io, json, sys
from pydiff.apps.cli import main
results = []
for argv in json.load(open(sys.argv[1])):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exits (--help, usage errors)
            code = e.code if isinstance(e.code, int) else 1
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


def _cli_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYDIFF_DEBUG="0")
    env.pop("PYTHONPATH", None)  # the installed package, as users run it
    return env


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The fixture folder: the files and folders the rows point at."""
    import soundfile as sf

    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "a_file").write_text("a file, not a folder")
    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "not_audio.wav").write_text("not audio at all")
    (tmp / "empty_dir").mkdir()
    (tmp / "bad_json_ckpt").mkdir()
    (tmp / "bad_json_ckpt" / "config.json").write_text("{not json")
    from importlib.resources import files as package_files

    shutil.copytree(str(package_files("pydiff.domains.policy") / "checkpoints" / "pointmass"),
                    tmp / "teacher_ckpt")  # a diffusion policy, not a consistency student
    rng = np.random.default_rng(0)
    sf.write(tmp / "noisy.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    dates = [f"2024-01-{d:02d}" for d in range(1, 31)]
    ys = [f"{10 + (d % 7)}" for d in range(30)]
    (tmp / "series.csv").write_text("date,y\n" + "".join(f"{d},{y}\n" for d, y in zip(dates, ys)))
    (tmp / "no_numbers.csv").write_text("date,name\n" + "".join(f"{d},x\n" for d in dates))
    (tmp / "bad_dates.csv").write_text("when,y\n" + "".join(f"day {i},{i}\n" for i in range(30)))
    (tmp / "all_nan.csv").write_text("date,y\n" + "".join(f"{d},\n" for d in dates))
    (tmp / "short.csv").write_text("date,y\n" + "".join(f"{d},1\n" for d in dates[:5]))
    import nibabel as nib

    for folder, name, image in (
            ("scans_text", "notes.txt", None),
            ("scans_4d", "four_d.nii.gz", np.ones((16, 16, 2, 2), np.float32)),
            ("scans_nan", "has_nan.nii.gz", np.full((16, 16, 1), np.nan, np.float32))):
        (tmp / folder).mkdir()
        if image is None:
            (tmp / folder / name).write_text("not an image")
        else:
            nib.save(nib.Nifti1Image(image, np.eye(4)), tmp / folder / name)

    from rdkit import Chem
    from rdkit.Chem import AllChem

    chlorine = Chem.AddHs(Chem.MolFromSmiles("CCl"))
    AllChem.EmbedMolecule(chlorine, randomSeed=0)
    Chem.MolToMolFile(chlorine, str(tmp / "chlorine.sdf"))
    ethanol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(ethanol, randomSeed=0)
    Chem.MolToMolFile(ethanol, str(tmp / "ethanol.sdf"))
    (tmp / "read_only").mkdir()
    os.chmod(tmp / "read_only", 0o555)
    return tmp


def _read_only_is_writable(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return False
    probe.unlink()
    return True  # root (or a file system that ignores modes)


def _sys_refuses_writes() -> bool:
    try:
        Path("/sys/pydiff-probe").write_text("x")
    except OSError:
        return Path("/sys").is_dir()
    Path("/sys/pydiff-probe").unlink()
    return False


@pytest.fixture(scope="module")
def results(files) -> dict[str, dict]:
    """Run every row: one process per command group, two processes at a time."""
    skip_read_only = _read_only_is_writable(files / "read_only")
    groups: dict[str, list[Row]] = {}
    for row in ROWS:
        if row.read_only and skip_read_only:
            continue  # it would run the whole command (as root the folder is writable)
        if any(a.startswith("/sys/") for a in row.argv) and not _sys_refuses_writes():
            continue
        key = row.argv[0] if row.argv[0] != "policy" else f"policy-{row.argv[1]}"
        groups.setdefault(key, []).append(row)

    def run(rows: list[Row]) -> list[dict]:
        name = rows[0].id
        spec, out = files / f"rows-{name}.json", files / f"results-{name}.json"
        spec.write_text(json.dumps([[a.replace("{tmp}", str(files)) for a in r.argv]
                                    for r in rows]))
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec), str(out)],
                              capture_output=True, text=True, env=_cli_env(), cwd=files,
                              timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(groups, pool.map(run, groups.values())))
    print(f"\n{len(ROWS)} bad-input rows in {len(groups)} processes: "
          f"{time.perf_counter() - start:.1f} s")
    return {row.id: res for key, rows in groups.items() for row, res in zip(rows, done[key])}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_row(row: Row, results, files) -> None:
    if row.read_only and _read_only_is_writable(files / "read_only"):
        pytest.skip("read-only folders are writable here (running as root)")
    if row.id not in results:
        pytest.skip("no /sys folder that refuses writes here")
    res = results[row.id]
    err = res["stderr"]
    assert res["code"] == row.code, (res["code"], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    for path in row.after:
        assert (files / path).is_file(), path
    if row.code == 0:
        return
    lines = err.strip().splitlines()
    if row.late:
        lines = lines[-1:]
    assert len(lines) == 1, err  # one line, nothing else
    words = row.argv[:2] if row.argv[0] in ("policy", "speech", "timeseries",
                                            "medical", "molecules") else row.argv[:1]
    prog = "pydiff" if row.id == "no-such-command" else " ".join(["pydiff", *words])
    assert lines[0].startswith(f"{prog}: "), lines[0]
    for culprit in row.culprit:
        assert culprit in lines[0], (culprit, lines[0])


def test_no_partial_files_left(results, files) -> None:
    leftovers = [p for p in files.rglob("*") if ".partial" in p.name]
    assert not leftovers, leftovers
    for output in ("sp", "o.wav", "outs", "demo_out", "policy_out", "ts_model",
                   "ts_forecast.csv", "m.sdf", "mol_model"):
        assert not (files / output).exists(), output


# -- whole processes: exit status, --debug, Ctrl-C -------------------------------------------------
def _cli(*argv: str, cwd: Path, debug: str = "0") -> subprocess.Popen:
    # (cwd away from the repository, whose pydiff/ folder would shadow the installed package)
    return subprocess.Popen([sys.executable, "-m", "pydiff.apps.cli", *argv], cwd=cwd,
                            env=dict(_cli_env(), PYDIFF_DEBUG=debug), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_exit_status_and_debug(files) -> None:
    """The process's own exit status is 2; --debug and PYDIFF_DEBUG=1 add the traceback."""
    argv = ["policy", "eval", "--env", "pendulum", "--checkpoint", "/nonexistent"]
    procs = [_cli(*argv, cwd=files), _cli(*argv, "--debug", cwd=files),
             _cli(*argv, cwd=files, debug="1")]
    outs = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    (_, plain, code), *debug = outs
    assert code == USER_ERROR and plain.count("\n") == 1 and "Traceback" not in plain
    assert plain.startswith("pydiff policy eval: --checkpoint '/nonexistent' does not exist")
    for _, err, code in debug:
        assert code == USER_ERROR and "Traceback" in err and "InputError" in err
        assert err.strip().splitlines()[-1] == plain.strip()


def test_internal_error_keeps_its_traceback(monkeypatch, capsys) -> None:
    """A bug (any exception but InputError) prints its traceback and exits with status 1."""
    import pydiff.apps.info as info
    from pydiff.apps.cli import main

    def broken(args):
        return {}["a key that is not there"]  # a bug, not bad input

    monkeypatch.setattr(info, "run", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "internal error" in err


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> tuple[str, str]:
    """Send SIGINT once ``ready(stderr_so_far)`` holds; returns (stdout, stderr)."""
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1),
                                                                "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not ready("".join(chunks)):
        assert proc.poll() is None, f"finished before the interrupt: {''.join(chunks)[-2000:]}"
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return out, "".join(chunks)


def test_ctrl_c_keeps_existing_outputs_whole(files, tmp_path) -> None:
    """Ctrl-C mid-run: status 130, one line, the old outputs untouched, nothing partial left."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    src = tmp_path / "long.wav"
    sf.write(src, (0.1 * rng.standard_normal(16000 * 240)).astype(np.float32), 16000)
    old = tmp_path / "out" / "enhanced.wav"
    old.parent.mkdir()
    old.write_bytes(b"the previous result")
    policy_out = tmp_path / "policy"
    procs = {
        # enhancing writes while it computes: interrupt once the partial output exists
        "speech enhance": (_cli("speech", "enhance", str(src), "-o", str(old), "--solver", "mr",
                                "--steps", "5", cwd=tmp_path),
                           lambda err: any(".partial" in p.name for p in old.parent.iterdir())),
        # training: interrupt once the progress bar shows
        "policy train": (_cli("policy", "train", "--env", "pointmass", "--episodes", "4",
                              "--steps", "100000", "--out", str(policy_out), cwd=tmp_path),
                         lambda err: "it/s" in err or "s/it" in err),
    }
    for command, (proc, ready) in procs.items():
        _, err = _interrupt_when(proc, ready)
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        # (after the progress bar's last line, which may not end in a newline)
        assert err.rstrip().endswith(f"pydiff {command}: interrupted"), err[-500:]
    assert old.read_bytes() == b"the previous result"
    assert sorted(p.name for p in old.parent.iterdir()) == ["enhanced.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav", "out"]
