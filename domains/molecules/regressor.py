"""A small property regressor on 3D molecules: the model of gradient guidance's objective.

:class:`PropertyRegressor` maps a (clean or estimated) joint state to one property per molecule:
an EGNN over positions with atom types and charges as node features (one-hot, or the
denoiser's class probabilities ``p(x_0 | x_t)``, which keeps it differentiable with respect to
the noisy positions through the network), mean-pooled over the real atoms, then an MLP. It is
E(3)-invariant by construction. :func:`train_regressor` fits it to RDKit's QED of the training
molecules with :class:`pydiff.training.Trainer` (no loop here); positions are jittered by a
random amount up to ``jitter`` Angstrom, since guidance evaluates it on x0-hat, which is never
an exact geometry. The shipped one is in ``pretrained/qed_regressor``.

Example:
    >>> from pydiff.domains.molecules import load_molecules, to_tensors
    >>> from pydiff.domains.molecules.regressor import PropertyRegressor
    >>> reg = PropertyRegressor.from_pretrained()
    >>> reg(to_tensors(load_molecules("test", limit=3))).shape
    torch.Size([3])
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rdkit.Chem import QED
from torch import Tensor, nn

from pydiff.errors import InputError
from pydiff.files import check_output
from pydiff.nn import EGNN
from pydiff.pretrained import CheckpointError, from_pretrained, load_config, save_pretrained
from pydiff.training import BatchLoader, Trainer

from .data import ATOM_TYPES, CHARGES, load_molecules, to_tensors

PRETRAINED_REGRESSOR = Path(__file__).parent / "pretrained" / "qed_regressor"


def _features(x: dict[str, Tensor], key: str, k: int, dtype: torch.dtype) -> Tensor:
    """One-hot of class indices ``[B, N]``, or class probabilities ``[B, N, K]`` as they are."""
    v = x[key]
    if v.is_floating_point() and v.dim() == 3 and v.shape[-1] == k:
        return v.to(dtype)
    return nn.functional.one_hot(v.long(), k).to(dtype)


class PropertyRegressor(nn.Module):
    """E(3)-invariant regressor of one molecular property (see the module docstring).

    ``forward(x) -> [B]``: ``x`` holds ``positions [B, N, 3]``, ``atom_types`` and ``charges``
    (indices ``[B, N]`` or probabilities ``[B, N, K]``) and ``mask [B, N]``.
    """

    def __init__(self, hidden_dim: int = 32, num_layers: int = 3):
        super().__init__()
        self.config: dict[str, Any] = dict(hidden_dim=hidden_dim, num_layers=num_layers)
        width = len(ATOM_TYPES) + len(CHARGES)
        self.egnn = EGNN(width, hidden_dim, out_node_dim=hidden_dim, num_layers=num_layers,
                         attention=True, coords_range=15.0, time_embedding=None)
        self.head = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
                                  nn.Linear(hidden_dim, 1))

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        pos, mask = x["positions"], x["mask"].bool()
        h = torch.cat([_features(x, "atom_types", len(ATOM_TYPES), pos.dtype),
                       _features(x, "charges", len(CHARGES), pos.dtype)], -1)
        h_out, _ = self.egnn(h, pos, mask=mask)
        m = mask[..., None].to(pos.dtype)
        pooled = (h_out * m).sum(1) / m.sum(1).clamp_min(1)
        return self.head(pooled).squeeze(-1)

    def save_pretrained(self, path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
        return save_pretrained(self, path, metadata=metadata)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> PropertyRegressor:
        """Load a folder written by :func:`train_regressor` (default: the shipped QED one)."""
        path = PRETRAINED_REGRESSOR if path is None else Path(path)
        load_config(path)
        net = from_pretrained(path)
        if not isinstance(net, cls):
            raise CheckpointError(f"{path} holds a {type(net).__name__}, not a "
                                  "PropertyRegressor")
        return net.eval()


@dataclass
class RegressorConfig:
    """Recipe of :func:`train_regressor` (stored in the checkpoint's metadata)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    hidden_dim: int = 32
    num_layers: int = 3
    jitter: float = 0.3  # Angstrom: positions get N(0, u^2) noise, u ~ U(0, jitter) per molecule
    seed: int = 0
    limit: int | None = None
    time_budget: float | None = None
    progress: bool = True


class _RegressionLoss:
    """``loss_fn`` of the Trainer: MSE of the property on jittered molecules (cropped batch)."""

    def __init__(self, jitter: float):
        self.jitter = jitter

    def __call__(self, net: nn.Module, batch: dict[str, Tensor],
                 generator: torch.Generator) -> Tensor:
        n = int(batch["mask"].sum(1).max())
        x = {k: v[:, :n] for k, v in batch.items() if k != "target"}
        b = x["positions"].shape[0]
        scale = self.jitter * torch.rand(b, 1, 1, generator=generator)
        noise = torch.randn(x["positions"].shape, generator=generator) * scale
        x["positions"] = (x["positions"] + noise) * x["mask"][..., None]
        return nn.functional.mse_loss(net(x), batch["target"])


def qed_targets(mols: list) -> Tensor:
    """RDKit QED of each molecule (float32 ``[B]``)."""
    return torch.tensor([QED.qed(m) for m in mols], dtype=torch.float32)


def train_regressor(config: RegressorConfig | None = None,
                    output: str | Path | None = None) -> PropertyRegressor:
    """Fit a :class:`PropertyRegressor` to the QED of the training molecules (saved to
    ``output`` when given; held-out mean absolute error in its metadata)."""
    config = config or RegressorConfig()
    if output is not None:
        check_output(output, "output", folder=True)
    if config.time_budget is not None and not config.time_budget > 0:
        raise InputError(f"time_budget must be > 0 seconds, got {config.time_budget}")
    torch.manual_seed(config.seed)
    started = time.time()
    mols = load_molecules("train", limit=config.limit)
    batch = {**to_tensors(mols), "target": qed_targets(mols)}
    net = PropertyRegressor(config.hidden_dim, config.num_layers)
    loader = BatchLoader(batch, min(config.batch_size, len(mols)), seed=config.seed)
    trainer = Trainer(net, loader, loss_fn=_RegressionLoss(config.jitter),
                      max_steps=config.steps, lr=config.lr, grad_clip=1.0, seed=config.seed,
                      progress=config.progress, log_every=100)
    trainer.fit(time_budget=config.time_budget)
    net.eval()
    test = load_molecules("test")
    with torch.no_grad():
        mae = float((net(to_tensors(test)) - qed_targets(test)).abs().mean())
    metadata = {"property": "qed", "recipe": asdict(config), "steps_done": trainer.step,
                "train_seconds": round(time.time() - started, 1), "test_mae": round(mae, 4)}
    if output is not None:
        net.save_pretrained(output, metadata)
    return net


__all__ = ["PropertyRegressor", "RegressorConfig", "train_regressor", "qed_targets",
           "PRETRAINED_REGRESSOR"]
