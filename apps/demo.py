"""``pydiff demo``: train a tiny model on a 2D ring of Gaussians and compare solvers.

Prints a table (solver, steps, NFE, energy distance to fresh data, wall time) for the trained
model and for the exact denoiser of the same distribution (which separates solver error from
model error), then distils the shipped ring teacher (a rectified flow) with every distillation
recipe (``--distill-steps`` each, seconds) and prints its students beside the teacher's Euler
steps, down to one network evaluation; saves a plot of the samples and of distance against NFE.

Example:
    $ pydiff demo --train-steps 1500 --distill-steps 300 --out pydiff-demo
"""

from __future__ import annotations

import argparse
import os
import time

from pydiff.apps.cli import int_at_least, nonnegative_int, positive_int

from pydiff.files import atomic_output, check_output, write_json

DEMO_SOLVERS = ("ddpm", "ddim", "euler", "heun", "euler_maruyama", "dpmpp_2m")


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("demo", help=help_text, description=help_text)
    p.add_argument("--train-steps", type=positive_int, default=1500,
                   help="training steps (default 1500)")
    p.add_argument("--steps", type=positive_int, nargs="+", default=[5, 10, 20],
                   help="solver step counts to compare (default 5 10 20)")
    p.add_argument("--solvers", nargs="+", default=list(DEMO_SOLVERS),
                   help=f"solvers to compare (default {' '.join(DEMO_SOLVERS)})")
    p.add_argument("--samples", type=int_at_least(2), default=2000,
                   help="samples per run (default 2000)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--distill-steps", type=nonnegative_int, default=300,
                   help="optimizer steps per distillation recipe (0: skip distillation; "
                        "default 300)")
    p.add_argument("--out", default="pydiff-demo", help="folder for the plot and JSON table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import pydiff
    from pydiff.testing import GaussianMixture, energy_distance
    from pydiff.training.toy import train_toy

    for name in args.solvers:
        pydiff.get_solver(name)  # unknown names fail before training
    check_output(args.out, "--out", folder=True)
    data = GaussianMixture.ring()
    sched = pydiff.DiscreteSchedule.linear()  # DDPM's table
    g = torch.Generator().manual_seed(args.seed)

    print(f"pydiff {pydiff.__version__}, kernels: {pydiff.ops.backend()}")
    t0 = time.perf_counter()
    trained = train_toy(data, steps=args.train_steps, schedule=sched, generator=g, progress=True)
    print(f"trained a {sum(p.numel() for p in trained.net.parameters()):,}-parameter MLP for "
          f"{args.train_steps} steps in {time.perf_counter() - t0:.1f} s")

    reference = data.sample(args.samples, torch.Generator().manual_seed(args.seed + 1)).float()
    models = {"trained": trained, "exact": data.denoiser(sched, "eps")}
    rows, samples = [], {}
    with torch.no_grad():
        for model_name, model in models.items():
            for solver in args.solvers:
                for steps in args.steps:
                    gen = torch.Generator().manual_seed(args.seed + 2)
                    x_T = pydiff.prior(sched, (args.samples, 2), generator=gen)
                    start = time.perf_counter()
                    state = pydiff.sample(model, x_T, solver, steps, generator=gen,
                                          return_state=True)
                    elapsed = time.perf_counter() - start
                    x = state.x.float()
                    dist = energy_distance(x, reference)
                    rows.append({"model": model_name, "solver": solver, "steps": steps,
                                 "nfe": state.nfe, "energy_distance": dist, "seconds": elapsed})
                    samples[(model_name, solver, steps)] = x

    floor = energy_distance(data.sample(args.samples, torch.Generator().manual_seed(99)).float(),
                            reference)
    _print_table(rows, floor)
    if args.distill_steps:
        rows += _distilled(args, reference, floor)
    write_json(os.path.join(args.out, "demo.json"), {"rows": rows, "data_vs_data": floor},
               "--out", indent=1)
    path = _plot(rows, samples, reference, args, floor)
    print(f"saved {path} and {os.path.join(args.out, 'demo.json')}")
    return 0


def _distilled(args: argparse.Namespace, reference, floor: float) -> list[dict]:
    """The shipped ring flow's Euler steps beside its students of every recipe."""
    import torch

    import pydiff
    from pydiff.testing import energy_distance
    from pydiff.training.toy import ring_flow_teacher
    from pydiff.training.toy_distill import distill_ring

    teacher = ring_flow_teacher()
    start = time.perf_counter()
    students = distill_ring(teacher, steps=args.distill_steps, seed=args.seed)
    print(f"distilled the shipped ring flow with 4 recipes ({args.distill_steps} steps each) "
          f"in {time.perf_counter() - start:.1f} s")
    runs = [("flow", "euler", n, lambda x, g, n=n: pydiff.sample(teacher, x, "euler", n,
                                                                 generator=g))
            for n in (1, 2, 4, 8)]
    runs += [(s.recipe, s.solver, s.nfe, s.sample) for s in students]
    rows = []
    with torch.no_grad():
        for model_name, solver, nfe, fn in runs:
            gen = torch.Generator().manual_seed(args.seed + 2)
            x_T = pydiff.prior(teacher.schedule, (args.samples, 2), generator=gen)
            start = time.perf_counter()
            x = fn(x_T, gen).float()
            rows.append({"model": model_name, "solver": solver, "steps": nfe, "nfe": nfe,
                         "energy_distance": energy_distance(x, reference),
                         "seconds": time.perf_counter() - start})
    print("flow: the shipped teacher; cd/ct: consistency distillation/training, pd: progressive "
          "distillation, reflow(+1): reflow (+ one-step distillation)")
    _print_table(rows, floor)
    return rows


def _print_table(rows: list[dict], floor: float) -> None:
    header = (f"{'model':8} {'solver':15} {'steps':>5} {'NFE':>4} {'energy dist':>11} "
              f"{'time (s)':>9}")
    print("\n" + header)
    for r in rows:
        print(f"{r['model']:8} {r['solver']:15} {r['steps']:>5} {r['nfe']:>4} "
              f"{r['energy_distance']:>11.4f} {r['seconds']:>9.3f}")
    print(f"(two independent data samples of this size are {floor:.4f} apart)\n")


def _plot(rows, samples, reference, args, floor) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(args.steps)[len(args.steps) // 2]
    panels = [("data", reference)] + [
        (f"{solver}, {steps} steps", samples[("trained", solver, steps)])
        for solver in args.solvers]
    fig = plt.figure(figsize=(2.2 * len(panels), 6.5))
    grid = fig.add_gridspec(2, len(panels), height_ratios=[1, 1.6])
    for j, (title, x) in enumerate(panels):
        ax = fig.add_subplot(grid[0, j])
        ax.scatter(x[:1000, 0], x[:1000, 1], s=1, c="k" if j == 0 else f"C{j - 1}")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    ax = fig.add_subplot(grid[1, :])
    for j, solver in enumerate(args.solvers):
        for model_name, style in (("trained", "-o"), ("exact", "--x")):
            pts = sorted((r["nfe"], r["energy_distance"]) for r in rows
                         if r["model"] == model_name and r["solver"] == solver)
            ax.plot(*zip(*pts), style, color=f"C{j}", ms=3, label=f"{solver} ({model_name})")
    distilled = sorted({r["model"] for r in rows} - {"trained", "exact"})
    for j, model_name in enumerate(distilled):  # the ring flow and its students
        pts = sorted((r["nfe"], r["energy_distance"]) for r in rows if r["model"] == model_name)
        ax.plot(*zip(*pts), ":s", color=f"C{(len(args.solvers) + j) % 10}", ms=4,
                label=f"{model_name} (distilled)" if model_name != "flow" else "ring flow, euler")
    ax.axhline(floor, color="gray", lw=0.8, ls=":", label="data vs data")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)",
           ylabel="energy distance to data",
           title="solid: trained MLP, dashed: exact denoiser; dotted: shipped flow and its "
                 "distilled students")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    path = os.path.join(args.out, "demo.png")
    with atomic_output(path, "--out") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
