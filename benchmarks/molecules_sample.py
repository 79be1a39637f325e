"""Molecule sampling: EDM metrics and geometry, quality against steps, property steering (SVDD
and gradient guidance), seconds per 100 molecules.

Uses the shipped checkpoint (or ``--checkpoint``) and prints markdown tables; ``--json`` writes
every figure. The EDM paper's QM9 figures (1000 ancestral steps; atom stability 98.7%,
molecule stability 82.0%, validity 91.9%, valid-and-unique 90.7%) are printed beside ours, and
so are the same metrics of held-out data molecules (their MMFF geometries through the same
bond rules: the ceiling of this data set, which is below 100% for the EDM distance rule).

    python benchmarks/molecules_sample.py --n 1000 --json benchmarks/results/molecules_sample.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

EDM_QM9 = {"atom_stability": 0.987, "molecule_stability": 0.820, "validity": 0.919,
           "valid_and_unique": 0.907}
KEYS = ("atom_stability", "molecule_stability", "validity", "valid_and_unique", "novelty")


def run(gen, n, steps, solver, seed, train_smiles, geometry_ref=None, **kw):
    from pydiff.domains.molecules import evaluate
    from pydiff.domains.molecules.metrics import geometry_distances, mmff_strain
    from pydiff.domains.molecules.rewards import REWARDS

    t = time.perf_counter()
    mols = gen.sample(n, steps=steps, solver=solver, seed=seed, **kw)
    seconds = time.perf_counter() - t
    row = {"n": n, "steps": steps, "solver": solver, "seconds": round(seconds, 2),
           "seconds_per_100": round(100 * seconds / n, 2), **evaluate(mols, train_smiles)}
    for name, fn in REWARDS.items():
        row[f"reward_{name}"] = float(np.mean([fn(m) for m in mols]))
    valid = [m for m in mols if m.GetProp("valid") == "1"]
    if valid:
        from rdkit.Chem import QED

        row["qed_mean_valid"] = float(np.mean([QED.qed(m) for m in valid]))
    if geometry_ref is not None:
        row.update(geometry_distances(mols, geometry_ref))
        row.update(mmff_strain(mols))
    return row


def data_row(mols, train_smiles, geometry_ref):
    """The metrics of data molecules themselves (held-out set, MMFF geometries)."""
    from pydiff.domains.molecules import evaluate
    from pydiff.domains.molecules.metrics import geometry_distances, mmff_strain

    return {"n": len(mols), **evaluate(mols, train_smiles),
            **geometry_distances(mols, geometry_ref), **mmff_strain(mols)}


def pct(v):
    return f"{100 * v:.1f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="molecules for the EDM metrics")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n-steps", type=int, default=200, help="molecules per quality-vs-steps row")
    p.add_argument("--grid", default="ddpm:1000,ddpm:50,dpmpp_2m:50,dpmpp_2m:20,dpmpp_2m:10,"
                                      "unipc:20,unipc:10",
                   help="solver:steps rows of quality against steps")
    p.add_argument("--n-svdd", type=int, default=100, help="molecules per SVDD row")
    p.add_argument("--candidates", default="4,8,16")
    p.add_argument("--scales", default="1,3,10",
                   help="gradient guidance scales (the QED regressor's gradient on x0-hat)")
    p.add_argument("--reward", default="qed")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="",
                   help="comma list of sections to skip: edm,steps,svdd,gradient")
    p.add_argument("--json", default=None)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: rows are not started once this much wall time has passed "
                        "(the skipped rows are printed)")
    args = p.parse_args()
    started = time.perf_counter()

    def within_budget(what: str) -> bool:
        if args.time_budget is None or time.perf_counter() - started < args.time_budget:
            return True
        print(f"(time budget of {args.time_budget:g} s spent: {what} not run)", flush=True)
        out.setdefault("skipped", []).append(what)
        return False

    torch.set_num_threads(args.threads)
    from pydiff.domains.molecules import MoleculeGenerator, load_molecules

    gen = MoleculeGenerator.from_pretrained(args.checkpoint)
    train_smiles = [m.GetProp("smiles") for m in load_molecules("train")]
    skip = set(filter(None, args.skip.split(",")))
    out = {"checkpoint": {k: gen.metadata.get(k) for k in ("steps_done", "train_seconds",
                                                            "final_loss", "molecules")},
           "threads": args.threads, "edm_qm9": EDM_QM9}

    if "edm" not in skip:
        train_mols = load_molecules("train")
        row = run(gen, args.n, args.steps, "dpmpp_2m", args.seed, train_smiles,
                  geometry_ref=train_mols)
        ref = data_row(load_molecules("test"), train_smiles, train_mols)
        out["edm"], out["held_out_data"] = row, ref
        print(f"\n## EDM metrics, {args.n} molecules, dpmpp_2m {args.steps} steps\n")
        print("| metric | pydiff (this checkpoint) | held-out data (MMFF geometries) | "
              "EDM paper, QM9 |\n|---|---|---|---|")
        for k in KEYS:
            print(f"| {k} | {pct(row[k])} | {pct(ref[k])} | "
                  f"{pct(EDM_QM9[k]) if k in EDM_QM9 else '-'} |")
        for k, unit in (("bond_length_w1", "A"), ("bond_angle_w1", "deg"),
                        ("mmff_strain_median", "kcal/mol"), ("mmff_strain_mean", "kcal/mol")):
            print(f"| {k} ({unit}) | {row[k]:.4g} | {ref[k]:.4g} | - |")
        print(f"| seconds per 100 molecules ({args.threads} thread) | "
              f"{row['seconds_per_100']} | - | - |", flush=True)

    if "steps" not in skip:
        out["steps"] = []
        print(f"\n## Quality against steps ({args.n_steps} molecules per row)\n")
        print("| solver | steps | atom stab. | mol. stab. | validity | valid & unique | "
              "s / 100 mol. |\n|---|---|---|---|---|---|---|")
        for item in args.grid.split(","):
            solver, steps = item.split(":")
            if not within_budget(f"steps row {item}"):
                continue
            row = run(gen, args.n_steps, int(steps), solver, args.seed, train_smiles)
            out["steps"].append(row)
            print(f"| {solver} | {steps} | {pct(row['atom_stability'])} | "
                  f"{pct(row['molecule_stability'])} | {pct(row['validity'])} | "
                  f"{pct(row['valid_and_unique'])} | {row['seconds_per_100']} |", flush=True)

    if "svdd" not in skip:
        out["svdd"] = []
        r = args.reward
        print(f"\n## SVDD steering by {r} ({args.n_svdd} molecules, ddpm {args.steps} steps)\n")
        print(f"| method | mean {r} reward (0 if invalid) | mean QED of valid | validity | "
              "s / 100 mol. |\n|---|---|---|---|---|")
        methods = [("unguided", {})] + [(f"SVDD M={m}", {"reward": r, "candidates": m})
                                         for m in (int(c) for c in args.candidates.split(","))]
        for name, kw in methods:
            if not within_budget(f"SVDD row {name}"):
                continue
            row = run(gen, args.n_svdd, args.steps, "ddpm", args.seed, train_smiles, **kw)
            out["svdd"].append({"method": name, **row})
            print(f"| {name} | {row[f'reward_{r}']:.3f} | {row.get('qed_mean_valid', 0):.3f} | "
                  f"{pct(row['validity'])} | {row['seconds_per_100']} |", flush=True)

    if "gradient" not in skip:
        out["gradient"] = []
        print(f"\n## Gradient guidance by the QED regressor ({args.n_svdd} molecules, ddpm "
              f"{args.steps} steps)\n")
        print("| scale | mean qed reward (0 if invalid) | mean QED of valid | validity | "
              "s / 100 mol. |\n|---|---|---|---|---|")
        for scale in (float(c) for c in args.scales.split(",")):
            if not within_budget(f"gradient row scale {scale:g}"):
                continue
            row = run(gen, args.n_svdd, args.steps, "ddpm", args.seed, train_smiles,
                      reward="qed", guidance="gradient", scale=scale)
            out["gradient"].append({"scale": scale, **row})
            print(f"| {scale:g} | {row['reward_qed']:.3f} | {row.get('qed_mean_valid', 0):.3f} "
                  f"| {pct(row['validity'])} | {row['seconds_per_100']} |", flush=True)

    if args.json:
        from pydiff.files import write_json

        write_json(args.json, out)


if __name__ == "__main__":
    main()
