"""The EDM-style denoiser: an EGNN over positions, atom types and charges, with atom masks.

:class:`MoleculeNet` is the network of :class:`pydiff.categorical.JointDenoiser`: it reads the
joint state (positions as the Denoiser gives them, atom types and charges one-hot, the atom
mask) and returns the noise on the positions (the EGNN's coordinate update ``x_out - x`` with
its centre of mass over the real atoms removed, as EDM does) and logits of the clean atom type
and charge of every atom. Equivariant by construction: rotating, reflecting or translating the
positions rotates (reflects) the noise and leaves the logits unchanged; permuting the atoms
permutes everything. Padding atoms (mask False) are ignored and get zero outputs.

Example:
    >>> import torch
    >>> from pydiff.domains.molecules.model import MoleculeNet, make_model
    >>> model = make_model(MoleculeNet(hidden_dim=16, num_layers=2))
    >>> sorted(model.processes)
    ['atom_types', 'charges']
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import pydiff
from pydiff.categorical import CategoricalProcess, JointDenoiser
from pydiff.nn import EGNN

from .data import ATOM_TYPES, CHARGES


def centre(x: Tensor, mask: Tensor) -> Tensor:
    """``x [B, N, 3]`` minus its centre of mass over the real atoms; padding set to 0."""
    return pydiff.hooks.ZeroCenterOfMass(mask=mask)(x, None)


class MoleculeNet(nn.Module):
    """EGNN denoiser of the joint molecule state (see the module docstring).

    Args:
        hidden_dim, num_layers: EGNN size.
        attention: EGNN message gating.
        coords_range: bound on each layer's coordinate step (EDM's ``tanh`` option).

    ``forward(x, t) -> dict``: ``x`` holds ``positions [B, N, 3]``, ``atom_types [B, N, 5]``,
    ``charges [B, N, 3]`` (one-hot, float) and ``mask [B, N]`` (bool); ``t`` is ``[B]``.
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 4, attention: bool = True,
                 coords_range: float | None = 15.0):
        super().__init__()
        self.config: dict[str, Any] = dict(hidden_dim=hidden_dim, num_layers=num_layers,
                                           attention=attention, coords_range=coords_range)
        self.types, self.charges = len(ATOM_TYPES), len(CHARGES)
        self.egnn = EGNN(self.types + self.charges, hidden_dim, num_layers=num_layers,
                         attention=attention, coords_range=coords_range, aggregation="sum",
                         time_embedding="identity")

    def forward(self, x: dict[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        mask = x["mask"].bool()
        pos = x["positions"]
        h = torch.cat([x["atom_types"], x["charges"]], dim=-1).to(pos.dtype)
        h_out, x_out = self.egnn(h, pos, t=t, mask=mask)
        eps = centre(x_out - pos, mask)
        return {"positions": eps, "atom_types": h_out[..., :self.types],
                "charges": h_out[..., self.types:]}


def make_model(net: MoleculeNet, type_prior: Any = None, charge_prior: Any = None,
               schedule: pydiff.Schedule | None = None) -> JointDenoiser:
    """The joint model: VP cosine schedule on positions (noise prediction), marginal-prior
    categorical diffusion on atom types and charges (uniform where no prior is given)."""
    def process(k: int, prior: Any) -> CategoricalProcess:
        return (CategoricalProcess(k, "uniform") if prior is None
                else CategoricalProcess(k, "marginal", prior=prior))

    return JointDenoiser(net, schedule or pydiff.CosineSchedule(),
                         {"atom_types": process(len(ATOM_TYPES), type_prior),
                          "charges": process(len(CHARGES), charge_prior)},
                         fixed=("mask",), prediction="eps")


__all__ = ["MoleculeNet", "make_model", "centre"]
