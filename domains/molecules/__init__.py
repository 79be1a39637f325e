"""3D molecule generation with E(3)-equivariant diffusion (issue 17), built on the pydiff core.

The local QM9-like data set (:mod:`.data`), the EGNN joint denoiser (:mod:`.model`), the
sampling API with property steering (:mod:`.generator`: ``MoleculeGenerator``; :mod:`.rewards`),
the training recipe (:mod:`.train`), molecules from coordinates through RDKit
(:mod:`.chemistry`) and EDM's metrics (:mod:`.metrics`).

Example:
    >>> from pydiff.domains.molecules import load_molecules, to_tensors
    >>> batch = to_tensors(load_molecules("test", limit=4))
    >>> sorted(batch)
    ['atom_types', 'charges', 'mask', 'positions']
"""

from .chemistry import to_mol, write_sdf
from .data import (
    ATOM_TYPES,
    CHARGES,
    build_dataset,
    embed,
    enlarge,
    load_molecules,
    nci_molecules,
    passes_filter,
    to_tensors,
)
from .generator import MoleculeGenerator, state_to_mols
from .metrics import evaluate
from .model import MoleculeNet, make_model
from .rewards import REWARDS, molecule_reward

__all__ = ["MoleculeGenerator", "state_to_mols", "REWARDS", "molecule_reward", "to_mol",
           "write_sdf", "evaluate", "MoleculeNet", "make_model", "ATOM_TYPES", "CHARGES",
           "build_dataset", "embed", "enlarge", "load_molecules", "nci_molecules",
           "passes_filter", "to_tensors"]
