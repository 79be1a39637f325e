"""``pydiff policy``: train, run (real time) and evaluate diffusion policies.

Examples:
    $ pydiff policy train --env pointmass --out policy-pointmass
    $ pydiff policy run --env pendulum --hz 20 --mode rti
    $ pydiff policy eval --env pointmass --seeds 50 --presets ddim10,rti,stream --plots out/
    $ pydiff policy distill --env pendulum --out cp-pendulum --minutes 15
    $ pydiff policy eval --env pendulum --presets ddpm100,cp1,cp2
    $ pydiff policy demos --env pusht --episodes 100 --out pusht-demos
    $ pydiff policy train --env pusht --demos pusht-demos --minutes 30
    $ pydiff policy train --env pusht --demos pusht-demos --init policy-pusht --minutes 30 \
        --out policy-pusht-2
"""

from __future__ import annotations

import argparse
import sys
import time

from pydiff.apps.cli import nonnegative_int, positive_float, positive_int

from pydiff.errors import InputError
from pydiff.files import check_input_dir, check_output, write_json


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    """Add ``pydiff policy {train,distill,run,eval,demos}``."""
    p = sub.add_parser("policy", help=help_text, description=help_text)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])
    cmds = p.add_subparsers(dest="policy_command", metavar="{train,distill,run,eval,demos}")

    t = cmds.add_parser("train", help="train a policy on scripted demonstrations")
    t.add_argument("--env", required=True, help="pendulum, pointmass or pusht")
    t.add_argument("--out", default=None, help="output folder (default policy-<env>)")
    t.add_argument("--episodes", type=positive_int, default=None)
    t.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--lr", type=positive_float, default=None)
    t.add_argument("--minutes", type=positive_float, default=None,
                   help="time budget: fewer optimizer steps if --steps would not fit")
    t.add_argument("--seed", type=nonnegative_int, default=0)
    t.add_argument("--demos", default=None,
                   help="a LeRobot dataset folder (pydiff policy demos) to train on instead of "
                        "recording --episodes demonstrations")
    t.add_argument("--prediction", choices=("eps", "x0"), default=None,
                   help="what the network predicts (default: eps, or --init's)")
    t.add_argument("--init", default=None,
                   help="warm start: a folder saved by policy train (or the shipped checkpoint's "
                        "folder) to continue training; its architecture and normalizers are "
                        "kept, optimizer and learning-rate schedule start afresh")
    t.add_argument("--down-dims", type=positive_int, nargs="+", default=None)
    t.add_argument("--planner", action="store_true",
                   help="train the Diffuser-style trajectory planner instead of the policy")
    t.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (the CPU is shared)")
    t.set_defaults(func=run_train)

    d = cmds.add_parser("distill", help="distil a trained policy into a one/two-step "
                        "consistency policy (presets cp1, cp2)")
    d.add_argument("--env", required=True, help="pendulum, pointmass or pusht")
    d.add_argument("--teacher", default=None,
                   help="a saved policy folder (default: the shipped policy of --env)")
    d.add_argument("--out", default=None, help="output folder (default consistency-<env>)")
    d.add_argument("--steps", type=positive_int, default=None, help="optimizer steps at most")
    d.add_argument("--minutes", type=positive_float, default=None,
                   help="wall-clock budget (default: the recipe's)")
    d.add_argument("--consistency-steps", type=positive_int, default=None,
                   help="intervals of the consistency discretization")
    d.add_argument("--solver-steps", type=positive_int, default=None,
                   help="the teacher's DDIM steps per target (its solve to clean data)")
    d.add_argument("--episodes", type=positive_int, default=None)
    d.add_argument("--demos", default=None,
                   help="a LeRobot dataset folder to distil on instead of recording "
                        "--episodes demonstrations")
    d.add_argument("--batch-size", type=positive_int, default=None)
    d.add_argument("--lr", type=positive_float, default=None)
    d.add_argument("--seed", type=nonnegative_int, default=0)
    d.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (the CPU is shared)")
    d.set_defaults(func=run_distill)

    r = cmds.add_parser("run", help="run episodes in real time at a fixed control rate")
    _common(r)
    r.add_argument("--hz", type=positive_float, default=20.0, help="control rate")
    r.add_argument("--mode", choices=("full", "rti", "stream"), default="rti")
    r.add_argument("--preset", default=None,
                   help="an inference preset instead of --mode (e.g. cp1, cp2, ddim10)")
    r.add_argument("--solver", default=None, help="any pydiff solver (default: the preset's)")
    r.add_argument("--steps", type=positive_int, default=None,
                   help="solver steps of full inference")
    r.add_argument("--seed", type=nonnegative_int, default=0, help="first env seed")
    r.add_argument("--episodes", type=positive_int, default=1)
    r.set_defaults(func=run_run)

    e = cmds.add_parser("eval", help="evaluate many seeds in simulated time (table, plots, GIF)")
    _common(e)
    e.add_argument("--seeds", type=positive_int, default=50,
                   help="number of env seeds (from --seed0)")
    e.add_argument("--seed0", type=nonnegative_int, default=1000)
    e.add_argument("--presets", default="expert,ddim10,rti,stream",
                   help="comma-separated: expert, ddpm100, ddim10, dpmpp2m5, rti, rti2, "
                        "stream, cp1, cp2 (consistency students), planner (pointmass)")
    e.add_argument("--plots", default=None, help="folder for trajectory/chunk plots and a GIF")
    e.set_defaults(func=run_eval)

    d = cmds.add_parser("demos", help="record expert demonstrations in LeRobot's dataset layout")
    d.add_argument("--env", required=True, help="pendulum, pointmass or pusht")
    d.add_argument("--out", required=True, help="dataset folder (parquet episodes + meta/)")
    d.add_argument("--episodes", type=positive_int, default=50,
                   help="successful episodes to record")
    d.add_argument("--seed", type=nonnegative_int, default=0, help="first env seed")
    d.set_defaults(func=run_demos)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="pendulum, pointmass or pusht")
    p.add_argument("--checkpoint", default=None,
                   help="a saved policy folder (default: the shipped checkpoint of --env)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads")


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _check_env(env: str) -> None:
    from pydiff.domains.policy import make_env

    try:
        make_env(env).close()  # an unknown name fails here, before any loading or training
    except InputError as err:
        raise InputError(f"--env {env!r}: {err}") from None


def _overrides(args: argparse.Namespace) -> dict:
    """The training settings given on the command line (the recipe supplies the rest)."""
    settings = {key: getattr(args, key) for key in ("episodes", "steps", "batch_size", "lr",
                                                    "minutes")
                if getattr(args, key) is not None}
    if args.down_dims:
        settings["down_dims"] = tuple(args.down_dims)
    return settings


def _check_common(args: argparse.Namespace) -> None:
    """Refuse a bad --env, --checkpoint or --json before any work starts."""
    _check_env(args.env)
    if args.checkpoint is not None:
        check_input_dir(args.checkpoint, "--checkpoint")
    if args.json is not None:
        check_output(args.json, "--json")


def run_train(args: argparse.Namespace) -> int:
    """``pydiff policy train``."""
    from pydiff.domains.policy import train

    _threads(args.threads)
    _check_env(args.env)
    model = "planner" if args.planner else "policy"
    out = args.out or f"{model}-{args.env}"
    check_output(out, "--out", folder=True)
    if args.demos is not None:
        check_input_dir(args.demos, "--demos")
    if args.init is not None:
        check_input_dir(args.init, "--init")
    settings = _overrides(args)
    if args.prediction is not None and not args.planner:
        settings["prediction"] = args.prediction
    try:
        _, history = train(args.env, out, model=model, seed=args.seed, demos=args.demos,
                           init=args.init, **settings)
    except InputError as err:
        if args.init is None or not str(err).startswith("init="):
            raise
        raise InputError(f"--init {str(err)[len('init='):]}") from None
    last = [h for h in history if "loss" in h][-1:]
    print(f"saved {out} (final loss {last[0]['loss']:.4f})" if last else f"saved {out}")
    return 0


def run_distill(args: argparse.Namespace) -> int:
    """``pydiff policy distill``: a consistency student of a trained policy."""
    from pydiff.domains.policy import train

    _threads(args.threads)
    _check_env(args.env)
    if args.teacher is not None:
        check_input_dir(args.teacher, "--teacher")
    out = args.out or f"consistency-{args.env}"
    check_output(out, "--out", folder=True)
    if args.demos is not None:
        check_input_dir(args.demos, "--demos")
    settings = {key: getattr(args, key) for key in ("episodes", "steps", "batch_size", "lr",
                                                      "minutes", "consistency_steps",
                                                      "solver_steps")
                if getattr(args, key) is not None}
    if args.teacher is not None:
        settings["teacher"] = args.teacher
    start = time.monotonic()
    _, history = train(args.env, out, model="consistency", seed=args.seed, demos=args.demos,
                       **settings)
    steps = max((h.get("step", 0) for h in history), default=0)
    print(f"saved {out} ({steps} steps in {(time.monotonic() - start) / 60:.1f} min; "
          f"evaluate with --presets cp1,cp2 --checkpoint {out})")
    return 0


def _load(args: argparse.Namespace, **overrides):
    from pydiff.domains.policy import load

    return load(args.checkpoint or args.env, **overrides)


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.2f}"


def run_run(args: argparse.Namespace) -> int:
    """``pydiff policy run``: real-time episodes with latency and deadline figures."""
    from pydiff.domains.policy import PRESETS, evaluate

    _threads(args.threads)
    _check_common(args)
    if args.preset is not None and args.preset not in PRESETS:
        raise InputError(f"--preset {args.preset!r}: expected one of {sorted(PRESETS)}")
    name = args.preset or ("ddim10" if args.mode == "full" else args.mode)
    preset = dict(PRESETS[name])
    if args.solver:
        import pydiff

        pydiff.get_solver(args.solver)  # an unknown name fails here, naming the known ones
        preset["solver"] = args.solver
    if args.steps:
        preset["steps"] = args.steps
    policy = _load(args, preset=name, **preset)
    run = evaluate(policy, args.env, list(range(args.seed, args.seed + args.episodes)),
                   hz=args.hz)
    results, s = run.episodes, run.summary
    c, a, w = s["chunk_latency_ms"], s["select_latency_ms"], s["steady_chunk_latency_ms"]
    print(f"env {args.env}, {args.preset or 'mode ' + args.mode} ({policy.config.solver}), "
          f"{args.hz:g} Hz, "
          f"{len(results)} episode(s) in real time")
    print(f"  chunk inference  p50 {_fmt(c['p50'])} ms  p99 {_fmt(c['p99'])} ms  "
          f"max {_fmt(c['max'])} ms  ({c['n']} chunks)")
    print(f"  ... without each episode's first (full) chunk  p50 {_fmt(w['p50'])} ms  "
          f"p99 {_fmt(w['p99'])} ms  max {_fmt(w['max'])} ms")
    print(f"  select_action    p50 {_fmt(a['p50'])} ms  p99 {_fmt(a['p99'])} ms  "
          f"max {_fmt(a['max'])} ms  ({a['n']} calls)")
    print(f"  deadline misses {s['deadline_misses']} (actuator held its last command), "
          f"clipped actions {s['clipped_actions']}")
    print(f"  return {s['return']:.2f}  success {s['success']:.2f}  "
          f"boundary jump mean {_fmt(s['boundary_jump']['mean'])} "
          f"max {_fmt(s['boundary_jump']['max'])}")
    if args.json:
        write_json(args.json, {"args": vars(args) | {"func": None, "_prog": None}, "summary": s,
                               "episodes": [r.summary() for r in results]}, "--json",
                   default=str)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """``pydiff policy eval``: a table over many seeds; plots and a GIF with ``--plots``."""
    import os

    from pydiff.domains.policy import PRESETS, evaluate, run_episode

    _threads(args.threads)
    _check_common(args)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    known = ["expert", "planner", *PRESETS]
    unknown = [p for p in presets if p not in known]
    if unknown or not presets:
        raise InputError(f"--presets {args.presets!r}: expected a comma-separated list of "
                         f"{known}" + (f"; unknown: {unknown}" if unknown else ""))
    if args.plots is not None:
        check_output(args.plots, "--plots", folder=True)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    table = {name: evaluate(name, args.env, seeds, checkpoint=args.checkpoint)
             for name in presets}
    print(f"env {args.env}: {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), simulated time")
    coverage = all("coverage" in run.summary for run in table.values())
    print(f"{'preset':<10} {'success':>8} {'return':>9} {'jump mean':>10} {'jump max':>9} "
          f"{'chunk p50 ms':>13} {'chunk p99 ms':>13} {'left':>5} {'right':>6}"
          + (f" {'coverage':>9}" if coverage else ""))
    for name, run in table.items():
        s = run.summary
        print(f"{name:<10} {s['success']:>8.2f} {s['return']:>9.2f} "
              f"{_fmt(s['boundary_jump']['mean']):>10} {_fmt(s['boundary_jump']['max']):>9} "
              f"{_fmt(s['chunk_latency_ms']['p50']):>13} {_fmt(s['chunk_latency_ms']['p99']):>13}"
              f" {s['sides']['left']:>5.2f} {s['sides']['right']:>6.2f}"
              + (f" {s['coverage']:>9.3f}" if coverage else ""))
    if args.plots:
        for name, run in table.items():
            run.plot(os.path.join(args.plots, f"{args.env}_{name}_trajectories.png"),
                     title=f"{args.env} / {name}")
        policy_presets = [p for p in presets if p in PRESETS]
        if policy_presets:
            name = policy_presets[0]
            policy = _load(args, preset=name)
            r = run_episode(policy, args.env, seeds[0], record_chunks=True, render=True)
            r.plot_chunks(os.path.join(args.plots, f"{args.env}_{name}_chunks.png"),
                          title=f"{args.env} / {name}: executed actions and chunks")
            r.save_gif(os.path.join(args.plots, f"{args.env}_{name}.gif"))
        print(f"plots in {args.plots}")
    if args.json:
        write_json(args.json, {name: run.summary for name, run in table.items()}, "--json")
    return 0


def run_demos(args: argparse.Namespace) -> int:
    """``pydiff policy demos``: expert episodes at fixed seeds, written in LeRobot's layout."""
    from pydiff.domains.policy.data import collect_demonstrations
    from pydiff.domains.policy.lerobot import export_lerobot

    _check_env(args.env)
    check_output(args.out, "--out", folder=True)
    demos = collect_demonstrations(args.env, args.episodes, seed=args.seed)
    info = export_lerobot(demos, args.out, env=args.env)
    seeds = [d.seed for d in demos]
    print(f"saved {args.out}: {info['total_episodes']} episodes, {info['total_frames']} frames "
          f"(LeRobot {info['codebase_version']}, {info['fps']} fps; env seeds {seeds[0]}.."
          f"{seeds[-1]}, failed ones skipped)")
    return 0
