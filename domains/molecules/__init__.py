"""3D molecule generation with E(3)-equivariant diffusion (issue 17), built on the pydiff core.

So far: the local QM9-like data set (:mod:`.data`), the EGNN joint denoiser (:mod:`.model`),
molecules from coordinates through RDKit (:mod:`.chemistry`) and EDM's metrics
(:mod:`.metrics`). The sampling API, checkpoint and ``pydiff molecules`` commands follow.

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
from .metrics import evaluate
from .model import MoleculeNet, make_model

__all__ = ["to_mol", "write_sdf", "evaluate", "MoleculeNet", "make_model", "ATOM_TYPES",
           "CHARGES", "build_dataset", "embed", "enlarge", "load_molecules", "nci_molecules",
           "passes_filter", "to_tensors"]
