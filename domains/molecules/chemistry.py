"""Molecules from generated atoms and coordinates, through RDKit only.

:func:`to_mol` builds a ``Chem.Mol`` with a 3D conformer from atom types, formal charges and
positions; its bonds come from ``rdDetermineBonds`` (connectivity and bond orders from the
geometry and the net charge), and where RDKit cannot assign bond orders the molecule keeps
its connectivity and is marked invalid (property ``valid`` = 0) rather than dropped.
:func:`edm_bond_orders` is the comparison rule of EDM (Hoogeboom et al. 2022): a bond order
from a distance table with margins. :func:`write_sdf` writes every molecule, valid or not,
with its conformer and bond block.

Example:
    >>> from rdkit import Chem
    >>> from pydiff.domains.molecules import chemistry, data
    >>> mol = data.load_molecules("test", limit=1)[0]
    >>> types = [a.GetSymbol() for a in mol.GetAtoms()]
    >>> built = chemistry.to_mol(types, [0] * len(types), mol.GetConformer().GetPositions())
    >>> built.GetProp("valid")
    '1'
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

import pydiff

# EDM's bond length table (pm, from its qm9 bond_analyze) and margins
_SINGLE = {"HH": 74, "CH": 109, "HN": 101, "HO": 96, "FH": 92, "CC": 154, "CN": 147, "CO": 143,
           "CF": 135, "NN": 145, "NO": 140, "FN": 136, "OO": 148, "FO": 142, "FF": 142}
_DOUBLE = {"CC": 134, "CN": 129, "CO": 120, "NN": 125, "NO": 121, "OO": 121}
_TRIPLE = {"CC": 120, "CN": 116, "NN": 110, "CO": 113}
_MARGINS = (10, 5, 3)
ALLOWED_VALENCE = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}


def _key(a: str, b: str) -> str:
    return "".join(sorted((a, b)))


def edm_bond_order(a: str, b: str, distance: float) -> int:
    """EDM's rule: 0-3 from the distance (Angstrom) against the table plus margins."""
    d = 100.0 * distance
    k = _key(a, b)
    if k not in _SINGLE or d >= _SINGLE[k] + _MARGINS[0]:
        return 0
    if k in _DOUBLE and d < _DOUBLE[k] + _MARGINS[1]:
        if k in _TRIPLE and d < _TRIPLE[k] + _MARGINS[2]:
            return 3
        return 2
    return 1


def edm_bond_orders(symbols: Sequence[str], positions: np.ndarray) -> np.ndarray:
    """``[N, N]`` bond orders by :func:`edm_bond_order`."""
    pos = np.asarray(positions, dtype=np.float64)
    n = len(symbols)
    orders = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            o = edm_bond_order(symbols[i], symbols[j], float(np.linalg.norm(pos[i] - pos[j])))
            orders[i, j] = orders[j, i] = o
    return orders


def atom_stability(symbols: Sequence[str], charges: Sequence[int],
                   positions: np.ndarray) -> np.ndarray:
    """Per atom: does the EDM-rule valence equal the allowed one (shifted by the formal
    charge: N+ 4, O- 1)?"""
    valence = edm_bond_orders(symbols, positions).sum(1)
    allowed = []
    for s, c in zip(symbols, charges):
        v = ALLOWED_VALENCE[s]
        allowed.append(v + c if s == "N" else v - abs(c) if s in ("O", "C") else v)
    return valence == np.asarray(allowed)


def to_mol(symbols: Sequence[str], charges: Sequence[int], positions: np.ndarray) -> Chem.Mol:
    """A ``Chem.Mol`` with a 3D conformer and bonds from ``rdDetermineBonds``; properties
    ``valid`` ("1" when it sanitizes and is one fragment), ``smiles`` (canonical, valid ones)."""
    pos = np.asarray(positions, dtype=np.float64)
    if len(symbols) == 0:
        raise pydiff.InputError("a molecule needs at least one atom, got 0")
    rw = Chem.RWMol()
    for s, c in zip(symbols, charges):
        atom = Chem.Atom(s)
        atom.SetFormalCharge(int(c))
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    conf = Chem.Conformer(len(symbols))
    for i, p in enumerate(pos):
        conf.SetAtomPosition(i, p.tolist())
    conf.Set3D(True)
    rw.AddConformer(conf, assignId=True)
    mol = rw.GetMol()
    RDLogger.DisableLog("rdApp.*")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=int(sum(charges)))
        Chem.SanitizeMol(mol)
        valid = len(Chem.GetMolFrags(mol)) == 1
    except Exception:  # noqa: BLE001 (RDKit raises ValueError/RuntimeError/sanitize errors)
        mol = Chem.Mol(rw.GetMol())
        try:
            rdDetermineBonds.DetermineConnectivity(mol)
        except Exception:  # noqa: BLE001
            pass
        valid = False
    finally:
        RDLogger.EnableLog("rdApp.*")
    mol.SetProp("valid", "1" if valid else "0")
    if valid:
        mol.SetProp("smiles", Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False))
    return mol


def write_sdf(mols: Sequence[Chem.Mol], path: str | os.PathLike) -> None:
    """Every molecule as an SDF record (conformer, bond block, properties), atomically."""
    with pydiff.files.atomic_output(path) as tmp:
        writer = Chem.SDWriter(str(tmp))
        writer.SetKekulize(False)
        for mol in mols:
            writer.write(mol)
        writer.close()


__all__ = ["to_mol", "write_sdf", "edm_bond_order", "edm_bond_orders", "atom_stability",
           "ALLOWED_VALENCE"]
