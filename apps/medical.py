"""``pydiff medical``: medical image reconstruction priors from the command line.

Subcommands:

- ``train -o DIR``: train the reconstruction prior (a small fully convolutional UNet) on
  procedural anatomy-like images within a wall-clock budget and save it with
  ``save_pretrained`` (:func:`pydiff.domains.medical.prior.train_prior`).

Example:
    $ nice -n 10 pydiff medical train -o prior/ --minutes 25
    $ pydiff medical train -o prior_gpu/ --minutes 240 --base-channels 64 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import sys

from pydiff.apps.cli import nonnegative_int, positive_float, positive_int

from pydiff.files import check_output


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("medical", help=help_text, description=help_text)
    cmds = p.add_subparsers(dest="medical_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    t = cmds.add_parser("train", help="train the reconstruction prior on procedural images")
    t.add_argument("-o", "--output", required=True, help="folder for the prior (save_pretrained)")
    t.add_argument("--modality", choices=["ct", "mri"], default="ct",
                   help="recorded in the checkpoint (both train on the same procedural images)")
    t.add_argument("--minutes", type=positive_float, default=None, help="wall-clock budget")
    t.add_argument("--steps", type=positive_int, default=None, help="optimizer steps at most")
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--base-channels", type=positive_int, default=None)
    t.add_argument("--crop", type=positive_int, default=None, help="training patch side")
    t.add_argument("--seed", type=nonnegative_int, default=None)
    t.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    t.add_argument("--device", default=None, help="cpu (default) or cuda")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from pydiff.domains.medical.prior import PriorConfig, train_prior

    config = PriorConfig(modality=args.modality)
    for name, key in (("minutes", "minutes"), ("steps", "max_steps"),
                      ("batch_size", "batch_size"), ("base_channels", "base_channels"),
                      ("crop", "crop"), ("seed", "seed"), ("threads", "threads")):
        value = getattr(args, name)
        if value is not None:
            setattr(config, key, value)
    check_output(args.output, "output (-o)", folder=True)
    model = train_prior(config, args.output, device=args.device)
    print(json.dumps({"output": args.output,
                      "parameters": sum(p.numel() for p in model.net.parameters())}))
    return 0
