"""``pydiff medical``: medical image reconstruction priors from the command line.

Subcommands:

- ``recon INPUT_DIR OUTPUT_DIR --modality {ct,mri} --method M``: the batch job
  (:func:`pydiff.domains.medical.batch.run_batch`): every DICOM/NIfTI case of INPUT_DIR
  reconstructed into OUTPUT_DIR (``<case>.nii.gz``, ``<case>.dcm`` for DICOM input,
  ``<case>_std.nii.gz`` for ``--samples`` > 1, ``<case>.png``, ``metrics.csv``); resumable,
  sharded over ranks under ``torchrun``. Exit status 2 when any case failed (its input is
  named on stderr and in metrics.csv).
- ``train -o DIR``: train the reconstruction prior (a small fully convolutional UNet) on
  procedural anatomy-like images within a wall-clock budget and save it with
  ``save_pretrained`` (:func:`pydiff.domains.medical.prior.train_prior`).

Example:
    $ pydiff medical recon scans/ out/ --modality ct --views 8 --method dds --steps 20
    $ torchrun --nproc_per_node 2 -m pydiff.apps.cli medical recon scans/ out/ --modality mri \
          --acceleration 4 --method projection
    $ nice -n 10 pydiff medical train -o prior/ --minutes 25
    $ pydiff medical train -o prior_gpu/ --device cuda --minutes 8 --base-channels 40 \
          --batch-size 64 --pool 8192 --ema 0.999
"""

from __future__ import annotations

import argparse
import json
import sys

from pydiff.apps.cli import (
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

from pydiff.files import check_input_dir, check_output


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("medical", help=help_text, description=help_text)
    cmds = p.add_subparsers(dest="medical_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    r = cmds.add_parser("recon", help="reconstruct every DICOM/NIfTI case of a folder",
                        description="Reconstruct every DICOM file and NIfTI volume of INPUT_DIR "
                        "(simulated measurements seeded by the case name, or <case>_sino.npy "
                        "/ <case>_kspace.npy beside it) into OUTPUT_DIR; resumable.")
    r.add_argument("input_dir", metavar="INPUT_DIR", help="folder of DICOM/NIfTI files")
    r.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the outputs")
    r.add_argument("--modality", choices=["ct", "mri"], required=True)
    r.add_argument("--method", default="dds",
                   help="fbp, tv (CT); zero_filled, cg_sense, tv (MRI); dps, projection, dds, "
                   "red_diff, mbir_tv (default dds)")
    r.add_argument("--views", type=positive_int, default=60, help="CT views (default 60)")
    r.add_argument("--geometry", choices=["parallel", "fan"], default="parallel",
                   help="CT beam geometry")
    r.add_argument("--acceleration", type=positive_float, default=4.0,
                   help="MRI undersampling factor (default 4)")
    r.add_argument("--coils", type=positive_int, default=8, help="MRI simulated coils")
    r.add_argument("--steps", type=positive_int, default=None,
                   help="solver steps (NFE) of a diffusion method (default: the method's)")
    r.add_argument("--samples", type=positive_int, default=1,
                   help="posterior samples K (K > 1 writes <case>_std.nii.gz)")
    r.add_argument("--noise-level", type=nonnegative_float, default=0.0,
                   help="Gaussian measurement noise relative to the measurement's RMS")
    r.add_argument("--tv-refine", type=nonnegative_float, default=0.0,
                   help="dps/projection/dds/red_diff: refine the (mean) image by TV anchored at "
                        "it with this anchor weight (0: off; 0.01 for CT and 0.03 for MRI were "
                        "chosen on held-out images)")
    r.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per process (fixed threads: bit-identical reruns)")
    r.add_argument("--timeout", type=positive_float, default=3600.0,
                   help="seconds a rank waits for the others at the end (torchrun)")
    r.set_defaults(func=run_recon)

    t = cmds.add_parser("train", help="train the reconstruction prior on procedural images")
    t.add_argument("-o", "--output", required=True, help="folder for the prior (save_pretrained)")
    t.add_argument("--modality", choices=["ct", "mri"], default="ct",
                   help="recorded in the checkpoint (both train on the same procedural images)")
    t.add_argument("--minutes", type=positive_float, default=None, help="wall-clock budget")
    t.add_argument("--steps", type=positive_int, default=None, help="optimizer steps at most")
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--base-channels", type=positive_int, default=None)
    t.add_argument("--crop", type=positive_int, default=None, help="training patch side")
    t.add_argument("--pool", type=positive_int, default=None,
                   help="procedural images drawn up front (default 1024)")
    t.add_argument("--pool-size", type=positive_int, default=None,
                   help="their side in pixels (default 128)")
    t.add_argument("--lr", type=positive_float, default=None, help="AdamW rate (1e-3)")
    t.add_argument("--ema", type=nonnegative_float, default=None,
                   help="EMA decay of the saved weights, in [0, 1) (0.998)")
    t.add_argument("--max-mb", type=positive_float, default=None,
                   help="refuse a network whose checkpoint would pass this many MB (16)")
    t.add_argument("--seed", type=nonnegative_int, default=None)
    t.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    t.add_argument("--device", default=None, help="cpu (default) or cuda")
    t.add_argument("--init", default=None,
                   help="continue from this checkpoint folder (same network), e.g. the shipped "
                        "prior's")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch
    from pydiff.domains.medical.prior import PriorConfig, train_prior

    from pydiff.errors import InputError
    from pydiff.training import load_config

    config = PriorConfig(modality=args.modality)
    for name, key in (("minutes", "minutes"), ("steps", "max_steps"),
                      ("batch_size", "batch_size"), ("base_channels", "base_channels"),
                      ("crop", "crop"), ("pool", "pool"), ("pool_size", "pool_size"),
                      ("lr", "lr"), ("ema", "ema"), ("max_mb", "max_megabytes"),
                      ("seed", "seed"), ("threads", "threads")):
        value = getattr(args, name)
        if value is not None:
            setattr(config, key, value)
    config.check()
    if args.device is not None:
        kind = args.device.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise InputError(f"--device {args.device!r}: expected cpu or cuda (cuda:N)")
        if kind == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {args.device!r}: this torch sees no CUDA device")
    if args.init is not None:
        check_input_dir(args.init, "--init")
    check_output(args.output, "output (-o)", folder=True)
    model = train_prior(config, args.output, device=args.device, init=args.init)
    meta = load_config(args.output)["metadata"]
    print(json.dumps({"output": args.output,
                      "parameters": sum(p.numel() for p in model.net.parameters()),
                      "steps": meta["steps"], "final_loss": meta["final_loss"]}))
    return 0


def run_recon(args: argparse.Namespace) -> int:
    from pydiff.domains.medical.batch import BatchSettings, run_batch

    from pydiff.distributed import process_group
    from pydiff.errors import InputError

    settings = BatchSettings(args.modality, args.method, views=args.views,
                             geometry=args.geometry, acceleration=args.acceleration,
                             coils=args.coils, steps=args.steps, samples=args.samples,
                             noise_level=args.noise_level, threads=args.threads,
                             options={"tv_refine": args.tv_refine} if args.tv_refine else {})
    settings.check()
    with process_group(timeout=args.timeout) as info:
        result = run_batch(args.input_dir, args.output_dir, settings)
    if result.failed:
        first = next(r for r in result.rows if r["status"] == "failed")
        raise InputError(f"{result.failed} of {len(result.rows)} cases failed (first: "
                         f"{first['input']!r}: {first['message']}); see "
                         f"{args.output_dir}/metrics.csv")
    if info.rank == 0:
        print(json.dumps({"output": args.output_dir, "done": result.done,
                          "skipped": result.skipped, "failed": result.failed}))
    return 0
