"""``pydiff molecules``: sample 3D molecules as SDF, steer them by a property, evaluate, train.

Example:
    $ pydiff molecules sample -n 100 -o out.sdf --atoms 19 --steps 50 --solver dpmpp_2m --seed 0
    $ pydiff molecules sample -n 100 -o out.sdf --reward qed --guidance svdd --candidates 8
    $ pydiff molecules sample -n 100 -o out.sdf --reward qed --guidance gradient --scale 2
    $ pydiff molecules sample -n 100 -o out.sdf --fragment benzene.sdf --atoms 18
    $ pydiff molecules sample -n 100 -o out.sdf --checkpoint qed/ --superpose rings/ --mode and
    $ pydiff molecules evaluate out.sdf
    $ pydiff molecules train --out model/ --time-budget 1200
    $ pydiff molecules train --out model2/ --init model/ --time-sampler low_noise
    $ pydiff molecules train-regressor --out qed_regressor/ --time-budget 420
"""

from __future__ import annotations

import argparse
import json

from pydiff.errors import InputError
from pydiff.files import check_input_dir, check_input_file, check_output

from .cli import int_at_least, nonnegative_float, positive_float, positive_int


def register(subparsers, help_text: str) -> None:
    p = subparsers.add_parser("molecules", help=help_text,
                              description="3D molecule generation with equivariant diffusion.")
    cmds = p.add_subparsers(dest="molecules_command", metavar="COMMAND", required=True)

    s = cmds.add_parser("sample", help="sample molecules into an SDF file")
    s.add_argument("-n", "--num-molecules", type=positive_int, default=100,
                   help="molecules to write (default 100)")
    s.add_argument("-o", "--output", required=True, help="SDF file to write")
    s.add_argument("--atoms", type=positive_int, default=None,
                   help="atoms per molecule, hydrogens included (default: drawn from the "
                        "training set's sizes)")
    s.add_argument("--steps", type=positive_int, default=50, help="solver steps (default 50)")
    s.add_argument("--solver", default=None,
                   help="core solver on the positions (default dpmpp_2m; ddpm when guided)")
    s.add_argument("--seed", type=int_at_least(0), default=0)
    s.add_argument("--reward", default=None,
                   help="steer towards this RDKit property: qed, logp (window 1..2) or rings")
    s.add_argument("--guidance", default=None,
                   help="steering method: svdd (default when --reward is given) or gradient "
                        "(a trained regressor's gradient on x0-hat; --reward qed only)")
    s.add_argument("--candidates", type=positive_int, default=8,
                   help="SVDD candidate steps per molecule and step (default 8)")
    s.add_argument("--scale", type=nonnegative_float, default=1.0,
                   help="gradient guidance's scale (default 1)")
    s.add_argument("--regressor", default=None,
                   help="gradient guidance's regressor folder (default: the shipped QED one)")
    s.add_argument("--fragment", default=None, metavar="FILE.sdf",
                   help="keep this fragment (the first record of an SDF file: its atoms, "
                        "charges and 3D coordinates as given) and generate the rest of each "
                        "molecule; --atoms counts the fragment's atoms too")
    s.add_argument("--superpose", default=None, metavar="MODEL_DIR",
                   help="superpose a second model folder with the first (SuperDiff): --mode and "
                        "samples where both models' densities are equal, or their mixture")
    s.add_argument("--mode", default="and", help="with --superpose: and (default) or or")
    s.add_argument("--checkpoint", default=None, help="a model folder (default: shipped)")
    s.add_argument("--threads", type=positive_int, default=None)
    s.set_defaults(func=run_sample)

    e = cmds.add_parser("evaluate", help="EDM metrics and property statistics of an SDF file")
    e.add_argument("input", help="SDF file (with hydrogens and 3D conformers)")
    e.add_argument("--json", default=None, help="also write the figures to this JSON file")
    e.set_defaults(func=run_evaluate)

    t = cmds.add_parser("train", help="train the molecule model on the shipped data set")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--steps", type=positive_int, default=None)
    t.add_argument("--time-budget", type=positive_float, default=None,
                   help="seconds of training at most")
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--hidden-dim", type=positive_int, default=None)
    t.add_argument("--num-layers", type=positive_int, default=None)
    t.add_argument("--lr", type=positive_float, default=None)
    t.add_argument("--seed", type=int_at_least(0), default=None)
    t.add_argument("--threads", type=positive_int, default=None)
    t.add_argument("--init", default=None,
                   help="warm start: a model folder whose weights training continues from")
    t.add_argument("--time-sampler", default=None, choices=("uniform", "low_noise"),
                   help="training times: uniform (default) or low_noise (more below t = 0.4)")
    t.add_argument("--select", default=None, metavar="NAME:MIN",
                   help="train only on molecules whose property NAME (qed, logp, rings) is at "
                        "least MIN, e.g. qed:0.5 (fine-tune a property model with --init)")
    t.set_defaults(func=run_train)

    r = cmds.add_parser("train-regressor",
                        help="train the QED regressor that gradient guidance follows")
    r.add_argument("--out", required=True, help="regressor folder to write")
    r.add_argument("--steps", type=positive_int, default=None)
    r.add_argument("--time-budget", type=positive_float, default=None,
                   help="seconds of training at most")
    r.add_argument("--seed", type=int_at_least(0), default=None)
    r.add_argument("--threads", type=positive_int, default=None)
    r.set_defaults(func=run_train_regressor)


def _check_names(args: argparse.Namespace) -> None:
    """Names and sizes checked before the model loads (one clear line each)."""
    from pydiff.domains.molecules.generator import (
        GRADIENT_REWARDS,
        GUIDANCE,
        MAX_ATOMS,
        MIN_ATOMS,
        SUPERPOSE_MODES,
    )
    from pydiff.domains.molecules.rewards import REWARDS

    import pydiff

    if args.solver is not None and args.solver not in pydiff.available_solvers():
        raise InputError(f"--solver {args.solver!r} is not a pydiff solver; expected one of "
                         f"{pydiff.available_solvers()}")
    if args.reward is not None and args.reward not in REWARDS:
        raise InputError(f"--reward {args.reward!r} is not known; expected one of "
                         f"{sorted(REWARDS)}")
    if args.guidance is not None and args.guidance not in GUIDANCE:
        raise InputError(f"--guidance {args.guidance!r} is not known; expected one of "
                         f"{list(GUIDANCE)}")
    if args.guidance is not None and args.reward is None:
        raise InputError(f"--guidance {args.guidance} needs --reward (qed, logp or rings)")
    if args.guidance == "gradient" and args.reward not in GRADIENT_REWARDS:
        raise InputError(f"--guidance gradient follows a trained regressor, which exists for "
                         f"--reward {' or '.join(GRADIENT_REWARDS)} only, not {args.reward!r}")
    if args.mode not in SUPERPOSE_MODES:
        raise InputError(f"--mode {args.mode!r} is not known; expected one of "
                         f"{list(SUPERPOSE_MODES)}")
    if args.superpose is not None and args.reward is not None:
        raise InputError("--superpose combines two models without a reward: give --superpose "
                         "or --reward, not both")
    if args.atoms is not None and not MIN_ATOMS <= args.atoms <= MAX_ATOMS:
        raise InputError(f"--atoms {args.atoms}: a molecule needs {MIN_ATOMS} to {MAX_ATOMS} "
                         "atoms (hydrogens included)")


def run_sample(args: argparse.Namespace) -> int:
    check_output(args.output, "output (-o)")
    if args.checkpoint is not None:
        check_input_dir(args.checkpoint, "--checkpoint")
    if args.regressor is not None:
        check_input_dir(args.regressor, "--regressor")
    if args.superpose is not None:
        check_input_dir(args.superpose, "--superpose")
    fragment = None
    if args.fragment is not None:
        check_input_file(args.fragment, "--fragment")
        from pydiff.domains.molecules.generator import load_fragment

        fragment = load_fragment(args.fragment)
    _check_names(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from pydiff.domains.molecules import MoleculeGenerator, write_sdf

    gen = MoleculeGenerator.from_pretrained(args.checkpoint)
    mols = gen.sample(args.num_molecules, args.atoms, steps=args.steps, solver=args.solver,
                      seed=args.seed, reward=args.reward,
                      guidance=args.guidance or ("svdd" if args.reward else None),
                      candidates=args.candidates, scale=args.scale, regressor=args.regressor,
                      fragment=fragment, superpose=args.superpose, mode=args.mode)
    write_sdf(mols, args.output)
    valid = sum(m.GetProp("valid") == "1" for m in mols)
    print(f"wrote {args.output} ({len(mols)} molecules, {valid} valid)")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    check_input_file(args.input, "input SDF")
    if args.json is not None:
        check_output(args.json, "--json")
    from pydiff.domains.molecules.metrics import evaluate_file

    from pydiff.files import write_json

    scores = evaluate_file(args.input)
    print(json.dumps(scores, indent=2))
    if args.json is not None:
        write_json(args.json, scores)
    return 0


def run_train(args: argparse.Namespace) -> int:
    check_output(args.out, "--out", folder=True)
    if args.init is not None:
        check_input_dir(args.init, "--init")
    from pydiff.domains.molecules.train import TrainConfig, parse_select, train

    if args.select is not None:
        try:
            parse_select(args.select)
        except InputError as err:
            raise InputError(f"--select: {err}") from None

    config = TrainConfig()
    for name in ("steps", "time_budget", "batch_size", "hidden_dim", "num_layers", "lr", "seed",
                 "threads", "init", "time_sampler", "select"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    gen = train(config, args.out)
    shown = {k: v for k, v in gen.metadata.items() if k != "atom_counts"}
    print(json.dumps(shown, indent=2))
    print(f"saved to {args.out}")
    return 0


def run_train_regressor(args: argparse.Namespace) -> int:
    check_output(args.out, "--out", folder=True)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from pydiff.domains.molecules.regressor import RegressorConfig, train_regressor

    config = RegressorConfig()
    for name in ("steps", "time_budget", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    train_regressor(config, args.out)
    print(f"saved to {args.out}")
    return 0
