"""EDM's molecule metrics (atom and molecule stability, validity, uniqueness, novelty) and
geometry against a reference set (bond-length and bond-angle Wasserstein distances, MMFF strain).

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

    built = [_rebuild(m) for m in mols]
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


def _bond_label(bond: Chem.Bond) -> str:
    """``"C-O:SINGLE"``: the two elements (sorted) and RDKit's bond type (after sanitization, so
    aromatic bonds are ``AROMATIC`` in generated and reference molecules alike)."""
    a, b = sorted((bond.GetBeginAtom().GetSymbol(), bond.GetEndAtom().GetSymbol()))
    return f"{a}-{b}:{bond.GetBondType().name}"


def bond_geometry(mols: Sequence[Chem.Mol]) -> tuple[dict[str, list[float]],
                                                     dict[str, list[float]]]:
    """Bond lengths (Angstrom) per bond label (:func:`_bond_label`) and bond angles (degrees)
    per angle label ``"C-C-O"`` (centre atom in the middle, ends sorted) of sanitized molecules
    with a conformer, from their own bonds."""
    from rdkit.Chem import rdMolTransforms as T

    lengths: dict[str, list[float]] = {}
    angles: dict[str, list[float]] = {}
    for mol in mols:
        conf = mol.GetConformer()
        for bond in mol.GetBonds():
            lengths.setdefault(_bond_label(bond), []).append(
                T.GetBondLength(conf, bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        for centre in mol.GetAtoms():
            nbrs = [n.GetIdx() for n in centre.GetNeighbors()]
            for x in range(len(nbrs)):
                for y in range(x + 1, len(nbrs)):
                    i, j = nbrs[x], nbrs[y]
                    ends = sorted((mol.GetAtomWithIdx(i).GetSymbol(),
                                   mol.GetAtomWithIdx(j).GetSymbol()))
                    label = f"{ends[0]}-{centre.GetSymbol()}-{ends[1]}"
                    angles.setdefault(label, []).append(
                        T.GetAngleDeg(conf, i, centre.GetIdx(), j))
    return lengths, angles


def _weighted_w1(ours: dict[str, list[float]], ref: dict[str, list[float]]
                 ) -> tuple[float, dict[str, float]]:
    """Per label, the 1-D Wasserstein distance between our values and the reference's; and
    their mean weighted by our count of each label (labels the reference lacks are skipped)."""
    from scipy.stats import wasserstein_distance

    per = {k: float(wasserstein_distance(v, ref[k])) for k, v in sorted(ours.items())
           if k in ref and v}
    counts = {k: len(ours[k]) for k in per}
    total = sum(counts.values())
    mean = sum(per[k] * counts[k] for k in per) / total if total else float("nan")
    return mean, per


def geometry_distances(mols: Sequence[Chem.Mol], reference: Sequence[Chem.Mol]
                       ) -> dict[str, object]:
    """Bond-length (Angstrom) and bond-angle (degrees) Wasserstein-1 distances of the valid
    molecules among ``mols`` (bonds re-derived from their coordinates by :func:`to_mol`)
    against ``reference`` (sanitized molecules with their own bonds, e.g. the training set):
    per bond / angle type and their mean weighted by how often each type occurs in ``mols``.

    Example:
        >>> from pydiff.domains.molecules import data
        >>> ref = data.load_molecules("train", limit=200)
        >>> out = geometry_distances(data.load_molecules("test", limit=20), ref)
        >>> out["bond_length_w1"] < 0.01 and out["bond_angle_w1"] < 2.0
        True
    """
    built = [_rebuild(m) for m in mols]
    valid = [m for m in built if m.GetProp("valid") == "1"]
    ref_lengths, ref_angles = bond_geometry(reference)
    lengths, angles = bond_geometry(valid)
    length_w1, length_per = _weighted_w1(lengths, ref_lengths)
    angle_w1, angle_per = _weighted_w1(angles, ref_angles)
    return {"bond_length_w1": length_w1, "bond_angle_w1": angle_w1,
            "bond_length_w1_per_type": length_per, "bond_angle_w1_per_type": angle_per,
            "geometry_molecules": len(valid)}


def mmff_strain(mols: Sequence[Chem.Mol], max_iters: int = 2000) -> dict[str, float]:
    """MMFF94 strain of the valid molecules: the energy as generated minus the energy after
    MMFF optimisation from that geometry (kcal/mol, >= 0; the issue's "MMFF-optimised minus
    as-generated" with the sign turned so that larger is more strained). Median and mean over
    the molecules MMFF can parametrize, and how many those were.

    Example:
        >>> from pydiff.domains.molecules import data
        >>> out = mmff_strain(data.load_molecules("test", limit=5))
        >>> out["mmff_molecules"], out["mmff_strain_median"] < 0.5  # MMFF-optimised already
        (5, True)
    """
    from rdkit.Chem import AllChem

    strains = []
    for mol in (_rebuild(m) for m in mols):
        if mol.GetProp("valid") != "1" or not AllChem.MMFFHasAllMoleculeParams(mol):
            continue
        props = AllChem.MMFFGetMoleculeProperties(mol)
        work = Chem.Mol(mol)
        ff = AllChem.MMFFGetMoleculeForceField(work, props)
        before = ff.CalcEnergy()
        ff.Minimize(maxIts=max_iters)
        strains.append(before - ff.CalcEnergy())
    if not strains:
        return {"mmff_strain_median": float("nan"), "mmff_strain_mean": float("nan"),
                "mmff_molecules": 0}
    return {"mmff_strain_median": float(np.median(strains)),
            "mmff_strain_mean": float(np.mean(strains)), "mmff_molecules": len(strains)}


def _rebuild(mol: Chem.Mol) -> Chem.Mol:
    """The molecule as :func:`to_mol` builds it from its atoms, charges and coordinates."""
    return to_mol([a.GetSymbol() for a in mol.GetAtoms()],
                  [a.GetFormalCharge() for a in mol.GetAtoms()], mol.GetConformer().GetPositions())


def read_sdf(path: str | os.PathLike, known_by: str = "the metrics know") -> list[Chem.Mol]:
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
        check_molecule(mol, f"{path}: record {i + 1}", known_by)
    return records


def check_molecule(mol: Chem.Mol, where: str, known_by: str = "the metrics know") -> None:
    """An :class:`pydiff.InputError` starting with ``where`` for a molecule without a conformer
    or with elements outside H, C, N, O, F."""
    if mol.GetNumConformers() == 0:
        raise InputError(f"{where} has no conformer (coordinates)")
    odd = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(ATOM_TYPES))
    if odd:
        raise InputError(f"{where} has atom types {odd}; {known_by} only {list(ATOM_TYPES)} "
                         "(with explicit hydrogens)")


def evaluate_file(path: str | os.PathLike) -> dict[str, object]:
    """:func:`evaluate` (novelty against the shipped training set), :func:`property_stats`,
    :func:`geometry_distances` (against the training set) and :func:`mmff_strain` of an SDF
    file, with the number of molecules."""
    from .data import load_molecules

    mols = read_sdf(path)
    train = load_molecules("train")
    return {"molecules": len(mols), **evaluate(mols, [m.GetProp("smiles") for m in train]),
            **property_stats(mols), "close_pairs": close_pair_fraction(mols),
            **geometry_distances(mols, train), **mmff_strain(mols)}


__all__ = ["evaluate", "property_stats", "close_pair_fraction", "bond_geometry",
           "geometry_distances", "mmff_strain", "read_sdf", "check_molecule", "evaluate_file"]
