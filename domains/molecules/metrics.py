"""EDM's molecule metrics: atom and molecule stability, validity, uniqueness, novelty.

Example:
    >>> from pydiff.domains.molecules import data, metrics
    >>> mols = data.load_molecules("test", limit=5)
    >>> metrics.evaluate(mols, training_smiles=[])["validity"]
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rdkit import Chem

from .chemistry import atom_stability, to_mol


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


__all__ = ["evaluate"]
