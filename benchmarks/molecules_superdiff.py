"""SuperDiff on molecules: two property fine-tunes superposed (AND / OR) against each alone.

Model A and model B are model folders (default: the shipped fine-tunes of the shipped
checkpoint, ``pretrained/qed_finetune`` and ``pretrained/rings_finetune``, made by ``pydiff
molecules train --init <shipped> --select qed:0.5`` and ``--select rings:0.3``); each is
sampled alone, the shipped model too, and the two are superposed by
:class:`pydiff.guidance.SuperDiff` (AND and OR), all at the same sizes, solver, steps and seed.
Printed per row: validity, atom stability, and over the valid molecules the mean QED, the
fraction with a ring and the fraction with both QED >= 0.5 and a ring (of all molecules);
``--json`` writes every figure.

    python benchmarks/molecules_superdiff.py --a DIR_QED --b DIR_RINGS --n 200 \\
        --json benchmarks/results/molecules_superdiff.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def properties(mols) -> dict[str, float]:
    from rdkit.Chem import QED

    valid = [m for m in mols if m.GetProp("valid") == "1"]
    qed = [QED.qed(m) for m in valid]
    rings = [m.GetRingInfo().NumRings() for m in valid]
    both = sum(q >= 0.5 and r >= 1 for q, r in zip(qed, rings))
    return {"valid_molecules": len(valid),
            "qed_mean_valid": float(np.mean(qed)) if valid else float("nan"),
            "ring_fraction_valid": float(np.mean([r >= 1 for r in rings])) if valid
            else float("nan"),
            "qed_and_ring_fraction": both / len(mols),
            "reward_qed": float(np.sum(qed)) / len(mols)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", default=None,
                   help="model folder A (default: the shipped high-QED fine-tune)")
    p.add_argument("--b", default=None,
                   help="model folder B (default: the shipped ring fine-tune)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--solver", default="ddpm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="written after every row")
    p.add_argument("--rows", default="shipped,a,b,and,or",
                   help="comma list of rows to run: shipped, a, b, and, or, and01 (AND with "
                        "its weight clipped to [0, 1])")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from pydiff.domains.molecules import MoleculeGenerator, evaluate
    from pydiff.domains.molecules.generator import FINETUNES

    args.a = args.a or str(FINETUNES["qed"])
    args.b = args.b or str(FINETUNES["rings"])

    shipped = MoleculeGenerator.from_pretrained()
    a, b = MoleculeGenerator.from_pretrained(args.a), MoleculeGenerator.from_pretrained(args.b)
    sizes = shipped.atom_counts(args.n, None, torch.Generator().manual_seed(args.seed))
    rows = {"shipped": ("shipped model", shipped, {}), "a": ("A alone", a, {}),
            "b": ("B alone", b, {}),
            "and": ("SuperDiff AND(A, B)", a, {"superpose": b, "mode": "and"}),
            "or": ("SuperDiff OR(A, B)", a, {"superpose": b, "mode": "or"}),
            "and01": ("SuperDiff AND(A, B), kappa in [0, 1]", a,
                      {"superpose": b, "mode": "and", "kappa_range": (0.0, 1.0)})}
    chosen = [rows[key] for key in args.rows.split(",")]
    out = {"a": args.a, "b": args.b, "n": args.n, "steps": args.steps, "solver": args.solver,
           "rows": []}
    print(f"\n## SuperDiff: A = {args.a}, B = {args.b} ({args.n} molecules per row, "
          f"{args.solver} {args.steps} steps)\n")
    print("| model | validity | atom stab. | mean QED of valid | ring fraction of valid | "
          "QED >= 0.5 and a ring (of all) | s / 100 mol. |\n|---|---|---|---|---|---|---|")
    for name, gen, kw in chosen:
        t = time.perf_counter()
        mols = gen.sample(args.n, sizes, steps=args.steps, solver=args.solver, seed=args.seed,
                          **kw)
        seconds = time.perf_counter() - t
        row = {"model": name, "seconds_per_100": round(100 * seconds / args.n, 2),
               **evaluate(mols), **properties(mols)}
        out["rows"].append(row)
        print(f"| {name} | {100 * row['validity']:.1f}% | {100 * row['atom_stability']:.1f}% | "
              f"{row['qed_mean_valid']:.3f} | {100 * row['ring_fraction_valid']:.1f}% | "
              f"{100 * row['qed_and_ring_fraction']:.1f}% | {row['seconds_per_100']} |",
              flush=True)
        if args.json:
            from pydiff.files import write_json

            write_json(args.json, out)


if __name__ == "__main__":
    main()
