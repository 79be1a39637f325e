"""EDM's molecule metrics: atom and molecule stability, validity, uniqueness, novelty.

Example:
    >>> from pydiff.domains.molecules import data, metrics
    >>> mols = data.load_molecules("test", limit=5)
    >>> metrics.evaluate(mols, training_smiles=[])["validity"]
    1.0
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
from rdkit import Chem, RDLogger

from pydiff.errors import InputError

from .chemistry import atom_stability, to_mol
from .data import ATOM_TYPES


def evaluate(mols: Sequence[Chem.Mol], training_smiles: Iterable[str] = ()) -> dict[str, float]:
    """Atom stability (EDM distance rule), molecule stability, validity (RDKit sanitizes
    the ``rdDetermineBonds`` molecule and it is one fragment), valid-and-unique (fraction of
    all molecules), novelty (valid unique SMILES not in ``training_smiles``, of the valid
    unique ones). Bonds are re-derived from each molecule's coordinates."""
    if not mols:
        raise ValueError("evaluate needs at least one molecule")
    train = {Chem.MolToSmiles(Chem.MolFromSmiles(s), isomericSmiles=False)
             for s in training_smiles}
    stable_atoms = total_atoms = stable_mols = 0
    smiles = []
    for mol in mols:
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
        pos = mol.GetConformer().GetPositions()
        stable = atom_stability(symbols, charges, pos)
        stable_atoms += int(stable.sum())
        total_atoms += len(stable)
        stable_mols += bool(stable.all())
        built = to_mol(symbols, charges, pos)
        if built.GetProp("valid") == "1":
            smiles.append(built.GetProp("smiles"))
    unique = set(smiles)
    n = len(mols)
    return {"atom_stability": stable_atoms / max(total_atoms, 1),
            "molecule_stability": stable_mols / n,
            "validity": len(smiles) / n,
            "valid_and_unique": len(unique) / n,
            "novelty": len(unique - train) / max(len(unique), 1)}


def property_stats(mols: Sequence[Chem.Mol]) -> dict[str, float]:
    """Mean QED, Crippen logP and ring count of the valid molecules (RDKit rebuilds each from
    its atoms and coordinates), and the rewards' means over all of them (0 for invalid ones)."""
    from .rewards import REWARDS

    built = [to_mol([a.GetSymbol() for a in m.GetAtoms()],
                    [a.GetFormalCharge() for a in m.GetAtoms()], m.GetConformer().GetPositions())
             for m in mols]
    valid = [m for m in built if m.GetProp("valid") == "1"]
    out: dict[str, float] = {}
    if valid:
        from rdkit.Chem import QED, Crippen

        out["qed_mean_valid"] = float(np.mean([QED.qed(m) for m in valid]))
        out["logp_mean_valid"] = float(np.mean([Crippen.MolLogP(m) for m in valid]))
        out["rings_mean_valid"] = float(np.mean([m.GetRingInfo().NumRings() for m in valid]))
    for name, fn in REWARDS.items():
        out[f"reward_{name}_mean"] = float(np.mean([fn(m) for m in built]))
    out["atoms_mean"] = float(np.mean([m.GetNumAtoms() for m in built]))
    return out


def close_pair_fraction(mols: Sequence[Chem.Mol], cutoff: float = 0.7) -> float:
    """Fraction of all atom pairs (within each molecule) closer than ``cutoff`` Angstrom: atoms
    that collapsed onto each other, which no bond rule catches."""
    close = total = 0
    for mol in mols:
        pos = mol.GetConformer().GetPositions()
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(len(pos), 1)]
        close += int((d < cutoff).sum())
        total += d.size
    return close / max(total, 1)


def read_sdf(path: str | os.PathLike) -> list[Chem.Mol]:
    """Every record of an SDF file as written (unsanitized: invalid molecules are read too);
    an :class:`pydiff.InputError` naming the file for records without a 3D conformer or with
    elements outside H, C, N, O, F, or a file with no records."""
    RDLogger.DisableLog("rdApp.*")
    try:
        records = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
    except OSError as e:
        raise InputError(f"{path} cannot be read as SDF: {e}") from None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if not records:
        raise InputError(f"{path} holds no SDF records")
    for i, mol in enumerate(records):
        if mol is None:
            raise InputError(f"{path}: record {i + 1} is not a readable SDF molecule")
        if mol.GetNumConformers() == 0:
            raise InputError(f"{path}: record {i + 1} has no conformer (coordinates)")
        odd = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(ATOM_TYPES))
        if odd:
            raise InputError(f"{path}: record {i + 1} has atom types {odd}; the metrics know "
                             f"only {list(ATOM_TYPES)} (with explicit hydrogens)")
    return records


def evaluate_file(path: str | os.PathLike) -> dict[str, float]:
    """:func:`evaluate` (novelty against the shipped training set) and :func:`property_stats`
    of an SDF file, with the number of molecules."""
    from .data import load_molecules

    mols = read_sdf(path)
    train = [m.GetProp("smiles") for m in load_molecules("train")]
    return {"molecules": len(mols), **evaluate(mols, train), **property_stats(mols),
            "close_pairs": close_pair_fraction(mols)}


__all__ = ["evaluate", "property_stats", "close_pair_fraction", "read_sdf", "evaluate_file"]
