"""QM9-like molecules made locally: RDKit's NCI SMILES, enlarged by graph edits, 3D by ETKDG+MMFF.

The seed set is RDKit's ``Data/NCI/first_5K.smi`` (found through ``RDConfig.RDDataDir``)
filtered as QM9 is: elements H, C, N, O, F only, 2 to 9 heavy atoms, net charge 0
(charge-separated groups such as nitro allowed), one fragment, no radicals. About 400
molecules pass, too few to learn from without memorising, so :func:`enlarge` adds every
molecule one graph edit away (an atom's element changed to C, N or O; one C, N, O or F atom
attached by a single bond) that RDKit sanitizes and that passes the same filter,
deduplicated by canonical SMILES. :func:`embed` gives each an all-hydrogen 3D conformer by
ETKDGv3 and MMFF94 at a fixed seed.

Generating the set takes minutes, so it ships with the package as ``data/molecules.sdf.gz``
(:func:`build_dataset` remakes it; :func:`load_molecules` reads it, with a held-out split
chosen by a hash of the canonical SMILES).

Example:
    >>> from pydiff.domains.molecules import data
    >>> mols = data.load_molecules("test", limit=3)
    >>> [m.GetNumConformers() for m in mols]
    [1, 1, 1]
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import AllChem

import pydiff

ATOM_TYPES = ("H", "C", "N", "O", "F")
CHARGES = (-1, 0, 1)
MAX_HEAVY_ATOMS = 9
DATA_FILE = Path(__file__).parent / "data" / "molecules.sdf.gz"
TEST_FRACTION = 0.1
_ELEMENTS = {"H", "C", "N", "O", "F"}


def passes_filter(mol: Chem.Mol | None) -> bool:
    """QM9's composition rule: H/C/N/O/F, 2-9 heavy atoms, net charge 0, one fragment,
    no radicals, formal charges within -1..1."""
    if mol is None:
        return False
    atoms = list(mol.GetAtoms())
    return (all(a.GetSymbol() in _ELEMENTS for a in atoms)
            and 2 <= mol.GetNumHeavyAtoms() <= MAX_HEAVY_ATOMS
            and Chem.GetFormalCharge(mol) == 0
            and len(Chem.GetMolFrags(mol)) == 1
            and not any(a.GetNumRadicalElectrons() for a in atoms)
            and all(a.GetFormalCharge() in CHARGES for a in atoms))


def nci_molecules() -> list[str]:
    """Canonical SMILES of RDKit's NCI set that pass :func:`passes_filter` (sorted)."""
    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    out = set()
    with _quiet():
        for line in path.read_text().splitlines():
            mol = Chem.MolFromSmiles(line.split()[0]) if line.strip() else None
            if passes_filter(mol):
                out.add(Chem.MolToSmiles(mol))
    return sorted(out)


class _quiet:
    """RDKit's parse and sanitize warnings off (rejected candidates are expected)."""

    def __enter__(self):
        RDLogger.DisableLog("rdApp.*")

    def __exit__(self, *exc):
        RDLogger.EnableLog("rdApp.*")


def _edits(mol: Chem.Mol) -> Iterator[Chem.RWMol]:
    for atom in mol.GetAtoms():
        i = atom.GetIdx()
        for element in (6, 7, 8):
            if element != atom.GetAtomicNum() and not atom.GetFormalCharge():
                rw = Chem.RWMol(mol)
                rw.GetAtomWithIdx(i).SetAtomicNum(element)
                yield rw
        for element in (6, 7, 8, 9):
            rw = Chem.RWMol(mol)
            j = rw.AddAtom(Chem.Atom(element))
            rw.AddBond(i, j, Chem.BondType.SINGLE)
            yield rw


def enlarge(seeds: Iterable[str]) -> list[str]:
    """``seeds`` plus every valid molecule one graph edit away (sorted canonical SMILES).

    Example:
        >>> out = enlarge(["CO"])
        >>> "CO" in out and "CCO" in out and "CN" in out and "COF" in out
        True
    """
    out = set(seeds)
    with _quiet():
        for smiles in sorted(out):
            for rw in _edits(Chem.MolFromSmiles(smiles)):
                mol = rw.GetMol()
                try:
                    Chem.SanitizeMol(mol)
                except Exception:  # noqa: BLE001 (RDKit raises several types for bad valences)
                    continue
                if passes_filter(mol):
                    out.add(Chem.MolToSmiles(mol))
    return sorted(out)


def embed(smiles: str, seed: int = 0) -> Chem.Mol | None:
    """All-hydrogen molecule with one ETKDGv3 + MMFF94 conformer at ``seed`` (None if RDKit
    cannot embed or parametrize it)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        return None
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        return None
    AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    mol.SetProp("_Name", smiles)
    return mol


def split_of(smiles: str) -> str:
    """``"test"`` for about :data:`TEST_FRACTION` of molecules (by a hash of the SMILES)."""
    h = int(hashlib.sha256(smiles.encode()).hexdigest()[:8], 16)
    return "test" if h % 1000 < TEST_FRACTION * 1000 else "train"


def build_dataset(path: str | os.PathLike = DATA_FILE, size: int = 4000, seed: int = 0,
                  progress: bool = False) -> int:
    """Make the shipped set: the enlarged NCI molecules (every one when fewer than ``size``,
    else an evenly spaced pick of the sorted SMILES), embedded at ``seed``; written as
    gzipped SDF with ``smiles`` and ``split`` properties. Returns the number written."""
    smiles = enlarge(nci_molecules())
    if len(smiles) > size:
        smiles = [smiles[round(i * len(smiles) / size)] for i in range(size)]
    mols = []
    for k, s in enumerate(smiles):
        mol = embed(s, seed)
        if mol is not None:
            mol.SetProp("smiles", s)
            mol.SetProp("split", split_of(s))
            mols.append(mol)
        if progress and k % 500 == 0:
            print(f"{k}/{len(smiles)} embedded", flush=True)
    with pydiff.files.atomic_output(path) as tmp, gzip.open(tmp, "wt") as fh:
        writer = Chem.SDWriter(fh)
        for mol in mols:
            writer.write(mol)
        writer.close()
    return len(mols)


def load_molecules(split: str | None = "train", limit: int | None = None,
                   path: str | os.PathLike = DATA_FILE) -> list[Chem.Mol]:
    """Molecules (with hydrogens and a 3D conformer) of ``split`` (``"train"``, ``"test"`` or
    None for all), the first ``limit`` of them."""
    if split not in ("train", "test", None):
        raise pydiff.InputError(f"split must be 'train', 'test' or None, got {split!r}")
    out = []
    with gzip.open(path, "rb") as fh:
        for mol in Chem.ForwardSDMolSupplier(fh, removeHs=False):
            if mol is None or (split is not None and mol.GetProp("split") != split):
                continue
            out.append(mol)
            if limit is not None and len(out) >= limit:
                break
    return out


def to_tensors(mols: Sequence[Chem.Mol], max_atoms: int | None = None) -> dict[str, torch.Tensor]:
    """Padded batch of molecules: ``positions [B, N, 3]`` (float32, centre of mass of the real
    atoms at 0), ``atom_types [B, N]`` (indices into :data:`ATOM_TYPES`), ``charges [B, N]``
    (indices into :data:`CHARGES`) and ``mask [B, N]`` (bool)."""
    sizes = [m.GetNumAtoms() for m in mols]
    n = max_atoms or max(sizes)
    if max(sizes) > n:
        raise pydiff.InputError(f"a molecule has {max(sizes)} atoms, more than max_atoms={n}")
    b = len(mols)
    pos = torch.zeros(b, n, 3, dtype=torch.float64)
    types = torch.zeros(b, n, dtype=torch.long)
    charges = torch.full((b, n), CHARGES.index(0), dtype=torch.long)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, mol in enumerate(mols):
        k = mol.GetNumAtoms()
        pos[i, :k] = torch.as_tensor(mol.GetConformer().GetPositions())
        for atom in mol.GetAtoms():
            types[i, atom.GetIdx()] = ATOM_TYPES.index(atom.GetSymbol())
            charges[i, atom.GetIdx()] = CHARGES.index(atom.GetFormalCharge())
        mask[i, :k] = True
        pos[i, :k] -= pos[i, :k].mean(0)
    return {"positions": pos.float(), "atom_types": types, "charges": charges, "mask": mask}


__all__ = ["ATOM_TYPES", "CHARGES", "MAX_HEAVY_ATOMS", "DATA_FILE", "passes_filter",
           "nci_molecules", "enlarge", "embed", "split_of", "build_dataset", "load_molecules",
           "to_tensors"]
