"""``pydiff speech``: diffusion speech enhancement from the command line.

Subcommands:

- ``enhance IN -o OUT``: a file to a file, or a folder to a folder (every .wav/.flac/.ogg,
  with a progress bar; a file that fails is reported and the others still finish (exit
  status 2 when every failure was bad input, 1 when one was a bug, with its traceback); existing
  outputs are skipped unless ``--overwrite``, so a stopped job resumes). ``--plot PNG`` (a
  single file) also draws the noisy and enhanced spectrograms with ``librosa.display``.
- ``train``: the training recipe (:mod:`pydiff.domains.speech.train`).
- ``evaluate``: PESQ, ESTOI, SI-SDR and real-time factor on the held-out split for the noisy
  input, noisereduce and each sampler, plus spectrogram plots.

Example:
    $ pydiff speech enhance noisy.wav -o clean.wav --solver mr --steps 10 --plot spec.png
    $ pydiff speech enhance noisy_dir/ -o clean_dir/
    $ pydiff speech evaluate --count 8 --output speech_eval/
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from pydiff.apps.cli import nonnegative_float, nonnegative_int, positive_float, positive_int

from pydiff.errors import InputError
from pydiff.files import check_input_dir, check_output, write_json

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("speech", help=help_text, description=help_text)
    cmds = p.add_subparsers(dest="speech_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    e = cmds.add_parser("enhance", help="enhance a file or every audio file of a folder")
    e.add_argument("input", help="an audio file or a folder of audio files")
    e.add_argument("-o", "--output", required=True, help="output file (or folder)")
    e.add_argument("--solver", default=None,
                   help="pc, mr, mr_sde, storm or em (default storm when the checkpoint has a "
                        "predictive network, else mr)")
    e.add_argument("--steps", type=positive_int, default=None,
                   help="solver steps (default: per solver)")
    e.add_argument("--seed", type=nonnegative_int, default=0)
    e.add_argument("--chunk-seconds", type=positive_float, default=4.0)
    e.add_argument("--overlap-seconds", type=nonnegative_float, default=0.5)
    e.add_argument("--checkpoint", default=None, help="a SpeechEnhancer folder (default: shipped)")
    e.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    e.add_argument("--plot", default=None, metavar="PNG",
                   help="also save the noisy and enhanced spectrograms (librosa.display) to PNG; "
                        "a single input file only (the first channel of multichannel audio)")
    e.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: faster than 2 for this small network)")
    e.set_defaults(func=run_enhance)

    t = cmds.add_parser("train", help="train the score and predictive networks")
    t.add_argument("-o", "--output", required=True, help="folder for the SpeechEnhancer")
    t.add_argument("--utterances", type=positive_int, default=None)
    t.add_argument("--predictive-steps", type=nonnegative_int, default=None)
    t.add_argument("--score-steps", type=positive_int, default=None)
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--base-channels", type=positive_int, default=None)
    t.add_argument("--seed", type=nonnegative_int, default=None)
    t.add_argument("--threads", type=positive_int, default=None)
    t.add_argument("--init-from", default=None,
                   help="a SpeechEnhancer folder to fine-tune (same architecture)")
    t.add_argument("--bin-weighting", default=None, choices=["loudness", "none"],
                   help="per-bin loss weights (default loudness: see pydiff.domains.speech.train)")
    t.add_argument("--sigma-data", type=positive_float, default=None,
                   help="the score network's EDM data scale (default 0.13)")
    t.add_argument("--input-perturbation", type=nonnegative_float, nargs="+", default=None,
                   metavar="GAMMA",
                   help="the score network's input perturbation: GAMMA, or LOW HIGH for a "
                        "per-sample uniform range (default 0 1; 0 turns it off; see "
                        "docs/speech.md)")
    t.add_argument("--snapshot-every", type=positive_int, default=None,
                   help="save an enhancer to OUTPUT/snapshots every N score steps")
    t.set_defaults(func=run_train)

    v = cmds.add_parser("evaluate", help="metrics on the held-out split and spectrogram plots")
    v.add_argument("--checkpoint", default=None)
    v.add_argument("--count", type=positive_int, default=8, help="held-out examples")
    v.add_argument("--methods", default=None,
                   help="comma-separated, from noisy,noisereduce,pc-60,mr-1,mr-5,mr-10,storm,"
                   "mr-sde-10")
    v.add_argument("--output", default=None, help="folder for results.json and plots")
    v.add_argument("--threads", type=positive_int, default=None)
    v.set_defaults(func=run_evaluate)


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _load(checkpoint: str | None):
    from pydiff.domains.speech import SpeechEnhancer

    if checkpoint is not None:
        check_input_dir(checkpoint, "--checkpoint")
    return SpeechEnhancer.from_pretrained(checkpoint)


def _plot(noisy: Path, enhanced: Path, png: Path) -> Path:
    """The noisy and enhanced spectrograms of a file (its first channel) as a PNG."""
    import soundfile as sf
    from pydiff.domains.speech.evaluate import plot_waves

    x, sr = sf.read(str(noisy), dtype="float32", always_2d=True)
    y, _ = sf.read(str(enhanced), dtype="float32", always_2d=True)
    return plot_waves([("noisy", x[:, 0]), ("enhanced", y[:, 0])], sr, png)


def run_enhance(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    _threads(args.threads)
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise InputError(f"input {str(src)!r} does not exist; expected an audio file or a "
                         "folder of audio files")
    if args.overlap_seconds >= args.chunk_seconds:
        raise InputError(f"--overlap-seconds {args.overlap_seconds:g} must be shorter than "
                         f"--chunk-seconds {args.chunk_seconds:g}")
    check_output(dst, "output (-o)", folder=src.is_dir())
    if args.plot is not None:
        if not src.is_file():
            raise InputError(f"--plot needs a single input file, got the folder {str(src)!r}")
        check_output(args.plot, "--plot")
    from pydiff.domains.speech import SAMPLERS

    if args.solver is not None and args.solver not in SAMPLERS:
        raise InputError(f"--solver {args.solver!r} is not a speech sampler; expected one of "
                         f"{sorted(SAMPLERS)}")
    enhancer = _load(args.checkpoint)
    opts = dict(solver=args.solver, steps=args.steps, seed=args.seed,
                chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds)
    if src.is_file():
        enhancer.enhance_file(src, dst, **opts)
        print(f"wrote {dst}")
        if args.plot is not None:
            print(f"wrote {_plot(src, dst, Path(args.plot))}")
        return 0

    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"input folder {str(src)!r} has no {'/'.join(AUDIO_SUFFIXES)} files")
    failed: list[tuple[Path, Exception]] = []
    done = skipped = 0
    for path in tqdm(files, desc="enhance", unit="file"):
        out = (dst / path.relative_to(src)).with_suffix(".wav")
        if out.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            enhancer.enhance_file(path, out, **opts)
            done += 1
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the batch
            failed.append((path, err))
    print(f"enhanced {done}, skipped {skipped} existing, failed {len(failed)} of {len(files)}")
    bugs = [err for _, err in failed if not isinstance(err, InputError)]
    for err in bugs:  # a bug keeps its traceback, as everywhere on the command line
        traceback.print_exception(err)
    for path, err in failed:
        kind = "" if isinstance(err, InputError) else f"{type(err).__name__} (a bug): "
        print(f"  FAILED {path}: {kind}{' '.join(str(err).split())}", file=sys.stderr)
    # like a single file: 2 when every failure was bad input, 1 when a bug was among them
    return (1 if bugs else 2) if failed else 0


def run_train(args: argparse.Namespace) -> int:
    from pydiff.domains.speech.train import TrainConfig, train

    config = TrainConfig()
    for name in ("utterances", "predictive_steps", "score_steps", "batch_size", "base_channels",
                 "seed", "threads", "snapshot_every", "init_from", "bin_weighting",
                 "sigma_data", "input_perturbation"):
        value = getattr(args, name)
        if name == "input_perturbation" and value is not None:
            if len(value) > 2:
                raise InputError(f"--input-perturbation takes GAMMA or LOW HIGH, got "
                                 f"{len(value)} values")
            value = value[0] if len(value) == 1 else tuple(value)
        if value is not None:
            setattr(config, name, value)
    if config.init_from is not None:
        check_input_dir(config.init_from, "--init-from")
    check_output(args.output, "output (-o)", folder=True)
    enhancer = train(config, args.output)
    print(json.dumps(enhancer.metadata, indent=2))
    print(f"saved to {args.output}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from pydiff.domains.speech.data import make_pair
    from pydiff.domains.speech.evaluate import (
        DEFAULT_METHODS,
        METHODS,
        evaluate,
        format_table,
        plot_spectrograms,
    )

    _threads(args.threads)
    methods = DEFAULT_METHODS if args.methods is None else tuple(
        m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"--methods {args.methods!r}: expected a comma-separated list from "
                         f"{sorted(METHODS)}" + (f"; unknown: {unknown}" if unknown else ""))
    if args.output:
        check_output(args.output, "--output", folder=True)
    enhancer = _load(args.checkpoint)
    table = evaluate(enhancer, count=args.count, methods=methods, progress=True)
    print(format_table(table))
    if args.output:
        out = Path(args.output)
        write_json(out / "results.json", table, "--output")
        plot = plot_spectrograms(enhancer, make_pair("test", 0), out / "spectrograms.png",
                                 methods)
        print(f"wrote {out / 'results.json'} and {plot}")
    return 0
