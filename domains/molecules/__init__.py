"""3D molecule generation with E(3)-equivariant diffusion (issue 17), built on the pydiff core.

So far: the local QM9-like data set (:mod:`.data`) and the EGNN joint denoiser
(:mod:`.model`). Chemistry, metrics and the ``pydiff molecules`` commands follow.

Example:
    >>> from pydiff.domains.molecules import load_molecules, to_tensors
    >>> batch = to_tensors(load_molecules("test", limit=4))
    >>> sorted(batch)
    ['atom_types', 'charges', 'mask', 'positions']
"""

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
from .model import MoleculeNet, make_model

__all__ = ["MoleculeNet", "make_model", "ATOM_TYPES", "CHARGES", "build_dataset", "embed",
           "enlarge", "load_molecules", "nci_molecules", "passes_filter", "to_tensors"]
