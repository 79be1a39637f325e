"""E(n)-equivariant graph networks (Satorras, Hoogeboom & Welling 2021) for molecules.

Dense, fully connected graphs over padded batches: node features ``h [B, N, F]``, coordinates
``x [B, N, 3]`` and a node mask ``[B, N]``. Node features are E(n)-invariant and coordinates
E(n)-equivariant: rotating / reflecting / translating the input coordinates does the same to
the output coordinates and leaves the features unchanged, and permuting the nodes permutes the
outputs. Masked (padding) nodes neither send nor receive messages and pass through unchanged.

Example:
    >>> import torch
    >>> from pydiff.nn import EGNN
    >>> net = EGNN(in_node_dim=5, hidden_dim=32, num_layers=2)
    >>> h, x = torch.randn(2, 9, 5), torch.randn(2, 9, 3)
    >>> mask = torch.ones(2, 9, dtype=torch.bool); mask[1, 6:] = False
    >>> h_out, x_out = net(h, x, t=torch.rand(2), mask=mask)
    >>> h_out.shape, x_out.shape
    (torch.Size([2, 9, 5]), torch.Size([2, 9, 3]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .embeddings import (
    GaussianFourierEmbedding,
    SinusoidalEmbedding,
    get_activation,
    normalize_time,
)

__all__ = ["EGNN", "EGNNLayer"]


def _check_graph(h: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
    if h.dim() != 3 or x.dim() != 3 or x.shape[:2] != h.shape[:2]:
        raise ValueError(
            f"h has shape {tuple(h.shape)} and x {tuple(x.shape)}; expected [B, N, F] and [B, N, D]"
        )
    b, n = h.shape[:2]
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=h.device)
    if mask.shape != (b, n):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected [B, N] = {(b, n)}")
    return mask.bool()


def _edge_attr(edge_attr: Tensor | None, b: int, n: int, edge_dim: int, dtype: torch.dtype,
               owner: str) -> list[Tensor]:
    """The edge features to concatenate: ``[edge_attr]`` checked against ``edge_dim``, or none."""
    if not edge_dim:
        if edge_attr is not None:
            raise ValueError(f"edge_attr was given but the {owner} was built with edge_dim=0")
        return []
    if edge_attr is None or edge_attr.shape != (b, n, n, edge_dim):
        got = None if edge_attr is None else tuple(edge_attr.shape)
        raise ValueError(f"edge_attr has shape {got}; expected [B, N, N, {edge_dim}]")
    return [edge_attr.to(dtype)]


class EGNNLayer(nn.Module):
    """One E(n)-equivariant message-passing layer (EGNN, eqs. 3-6, with normalized differences).

    ``m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij)``,
    ``x_i' = x_i + agg_j (x_i - x_j) / (|x_i - x_j| + norm_constant) * phi_x(m_ij)``,
    ``h_i' = h_i + phi_h(h_i, agg_j m_ij)``.

    Normalizing the difference vectors (as in the E(n) diffusion models of Hoogeboom et al.
    2022) keeps coordinate updates bounded for distant atoms, which the unnormalized form of
    the original paper does not.

    Args:
        node_dim: size of the node features (kept: residual update).
        hidden_dim: message size.
        edge_dim: size of optional edge features ``a_ij`` (0 = none).
        act: activation name.
        aggregation: ``"sum"`` or ``"mean"`` (over the valid neighbours) for messages and
            coordinate updates.
        norm_constant: added to the distance when normalizing difference vectors.
        attention: gate each message by a learned sigmoid weight (EGNN's soft edges).
        update_coords: update ``x`` (otherwise ``x`` is returned unchanged).
        coords_range: if set, ``phi_x`` is squashed by ``tanh`` and scaled to this range, which
            bounds coordinate steps (EDM's ``tanh=True`` option).

    ``forward(h [B, N, node_dim], x [B, N, D], mask=None, edge_attr=None) -> (h', x')`` with
    ``mask [B, N]`` (bool, ``True`` = real node) and ``edge_attr [B, N, N, edge_dim]``.
    Entries of masked nodes may hold anything finite; they are returned unchanged.
    """

    def __init__(
        self,
        node_dim: int,
        hidden_dim: int = 64,
        edge_dim: int = 0,
        act: str = "silu",
        aggregation: str = "sum",
        norm_constant: float = 1.0,
        attention: bool = False,
        update_coords: bool = True,
        coords_range: float | None = None,
    ) -> None:
        super().__init__()
        if aggregation not in ("sum", "mean"):
            raise ValueError(f"aggregation={aggregation!r}; expected 'sum' or 'mean'")
        self.edge_dim, self.aggregation = edge_dim, aggregation
        self.norm_constant, self.coords_range = norm_constant, coords_range
        self.phi_e = nn.Sequential(
            nn.Linear(2 * node_dim + 1 + edge_dim, hidden_dim),
            get_activation(act),
            nn.Linear(hidden_dim, hidden_dim),
            get_activation(act),
        )
        self.att = nn.Sequential(nn.Linear(hidden_dim, 1), nn.Sigmoid()) if attention else None
        self.phi_h = nn.Sequential(
            nn.Linear(node_dim + hidden_dim, hidden_dim),
            get_activation(act),
            nn.Linear(hidden_dim, node_dim),
        )
        self.phi_x: nn.Sequential | None = None
        if update_coords:
            last = nn.Linear(hidden_dim, 1, bias=False)
            # Tiny initial coordinate steps (as in the reference EGNN code): a deep stack of
            # layers then starts near the identity on x instead of scrambling the geometry.
            nn.init.xavier_uniform_(last.weight, gain=0.001)
            self.phi_x = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), get_activation(act), last)

    def _aggregate(self, v: Tensor, edge_mask: Tensor) -> Tensor:
        """Sum (or average) ``v [B, N, N, K]`` over neighbours ``j``; non-edges are zeroed."""
        s = torch.where(edge_mask, v, torch.zeros((), dtype=v.dtype, device=v.device)).sum(2)
        if self.aggregation == "mean":
            s = s / edge_mask.sum(2).clamp(min=1).to(v.dtype)
        return s

    def forward(
        self, h: Tensor, x: Tensor, mask: Tensor | None = None, edge_attr: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        mask = _check_graph(h, x, mask)
        b, n = mask.shape
        node = mask.unsqueeze(-1)
        # Sanitize padding first, so whatever it holds can never leak into real nodes.
        h_in = torch.where(node, h, torch.zeros((), dtype=h.dtype, device=h.device))
        x_in = torch.where(node, x, torch.zeros((), dtype=x.dtype, device=x.device))
        eye = torch.eye(n, dtype=torch.bool, device=h.device)
        edge_mask = (mask[:, :, None] & mask[:, None, :] & ~eye).unsqueeze(-1)  # [B, N, N, 1]

        diff = x_in[:, :, None, :] - x_in[:, None, :, :]  # x_i - x_j, [B, N, N, D]
        d2 = diff.pow(2).sum(-1, keepdim=True)
        feats = [
            h_in[:, :, None, :].expand(b, n, n, -1),
            h_in[:, None, :, :].expand(b, n, n, -1),
            d2,
        ]
        feats += _edge_attr(edge_attr, b, n, self.edge_dim, h.dtype, "layer")
        m = self.phi_e(torch.cat(feats, dim=-1))
        if self.att is not None:
            m = m * self.att(m)

        h_new = h_in + self.phi_h(torch.cat([h_in, self._aggregate(m, edge_mask)], dim=-1))
        x_new = x_in
        if self.phi_x is not None:
            w = self.phi_x(m)
            if self.coords_range is not None:
                w = torch.tanh(w) * self.coords_range
            # +1e-8 keeps the sqrt differentiable on the (masked) diagonal where d2 = 0.
            unit = diff / (torch.sqrt(d2 + 1e-8) + self.norm_constant)
            x_new = x_in + self._aggregate(unit * w, edge_mask)
        return torch.where(node, h_new, h), torch.where(node, x_new, x)


class EGNN(nn.Module):
    """A stack of :class:`EGNNLayer` with input/output embeddings and optional time input.

    As in E(3) diffusion models (EDM, Hoogeboom et al. 2022): the time is appended to every
    node's features, and every layer also sees the squared distances of the *input*
    coordinates as an edge feature (so deep stacks keep the original geometry in view). For a
    noise-prediction network, use ``x_out - x`` (with its centre of mass removed) as the
    coordinate output.

    Args:
        in_node_dim: input node features (e.g. one-hot atom types + charges).
        hidden_dim: node and message size inside the network.
        out_node_dim: output node features (default ``in_node_dim``).
        num_layers: number of EGNN layers.
        edge_dim: size of optional user edge features (e.g. one-hot bond types; 0 = none).
        act: activation name.
        aggregation: ``"sum"`` or ``"mean"``.
        norm_constant: see :class:`EGNNLayer`.
        attention: message gating.
        coords_range: ``tanh`` bound on each layer's coordinate step (None = unbounded).
        time_embedding: how ``t`` enters: ``None`` (no time input), ``"identity"`` (the raw
            ``t`` as one feature, as EDM does), ``"sinusoidal"`` or ``"fourier"``
            (``time_embed_dim`` features).
        time_embed_dim: size of the sinusoidal / Fourier time features.

    ``forward(h, x, t=None, mask=None, edge_attr=None) -> (h_out, x_out)``: ``h [B, N,
    in_node_dim]``, ``x [B, N, D]`` (D = 3 for molecules; any D works), ``t``: ``[]``,
    ``[B]``, ``[B, 1, 1]`` or per node ``[B, N]``; ``mask [B, N]`` bool; ``edge_attr
    [B, N, N, edge_dim]``. Returns ``h_out [B, N, out_node_dim]`` (invariant) and
    ``x_out [B, N, D]`` (equivariant). Masked nodes' outputs are zero.

    ``config`` holds the constructor kwargs (JSON-serializable).
    """

    def __init__(
        self,
        in_node_dim: int,
        hidden_dim: int = 64,
        out_node_dim: int | None = None,
        num_layers: int = 4,
        edge_dim: int = 0,
        act: str = "silu",
        aggregation: str = "sum",
        norm_constant: float = 1.0,
        attention: bool = False,
        coords_range: float | None = None,
        time_embedding: str | None = "identity",
        time_embed_dim: int = 16,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            in_node_dim=in_node_dim,
            hidden_dim=hidden_dim,
            out_node_dim=out_node_dim,
            num_layers=num_layers,
            edge_dim=edge_dim,
            act=act,
            aggregation=aggregation,
            norm_constant=norm_constant,
            attention=attention,
            coords_range=coords_range,
            time_embedding=time_embedding,
            time_embed_dim=time_embed_dim,
        )
        self.in_node_dim, self.edge_dim = in_node_dim, edge_dim
        self.time_embed: nn.Module | None
        if time_embedding is None:
            self.time_embed, t_dim = None, 0
        elif time_embedding == "identity":
            self.time_embed, t_dim = nn.Identity(), 1
        elif time_embedding == "sinusoidal":
            self.time_embed, t_dim = SinusoidalEmbedding(time_embed_dim), time_embed_dim
        elif time_embedding == "fourier":
            self.time_embed, t_dim = GaussianFourierEmbedding(time_embed_dim), time_embed_dim
        else:
            raise ValueError(
                f"time_embedding={time_embedding!r}; expected None, 'identity', 'sinusoidal' "
                "or 'fourier'"
            )
        self.embed_in = nn.Linear(in_node_dim + t_dim, hidden_dim)
        self.layers = nn.ModuleList(
            EGNNLayer(
                hidden_dim,
                hidden_dim,
                edge_dim=1 + edge_dim,
                act=act,
                aggregation=aggregation,
                norm_constant=norm_constant,
                attention=attention,
                coords_range=coords_range,
            )
            for _ in range(num_layers)
        )
        self.embed_out = nn.Linear(hidden_dim, out_node_dim or in_node_dim)

    def forward(
        self,
        h: Tensor,
        x: Tensor,
        t: Tensor | float | None = None,
        mask: Tensor | None = None,
        edge_attr: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        mask = _check_graph(h, x, mask)
        if h.shape[-1] != self.in_node_dim:
            raise ValueError(
                f"h has shape {tuple(h.shape)}; expected [B, N, in_node_dim={self.in_node_dim}]"
            )
        b, n = mask.shape
        node = mask.unsqueeze(-1)
        zero = torch.zeros((), dtype=h.dtype, device=h.device)
        h = torch.where(node, h, zero)
        x = torch.where(node, x, torch.zeros((), dtype=x.dtype, device=x.device))
        feats = [h]
        if self.time_embed is not None:
            if t is None:
                raise ValueError("t is required: the network was built with a time input")
            tt = normalize_time(t, b, n, owner="EGNN").to(device=h.device, dtype=h.dtype)
            tt = tt.unsqueeze(-1).expand(b, n) if tt.dim() == 1 else tt  # per node [B, N]
            emb = self.time_embed(tt)
            feats.append((emb.unsqueeze(-1) if emb.dim() == 2 else emb).to(h.dtype))
        elif t is not None:
            raise ValueError("t was given but the network was built with time_embedding=None")
        diff = x[:, :, None, :] - x[:, None, :, :]
        edges = [diff.pow(2).sum(-1, keepdim=True)]
        edges += _edge_attr(edge_attr, b, n, self.edge_dim, h.dtype, "network")
        edge_feats = torch.cat(edges, dim=-1)

        hh = self.embed_in(torch.cat(feats, dim=-1))
        xx = x
        for layer in self.layers:
            hh, xx = layer(hh, xx, mask, edge_feats)
        h_out = torch.where(node, self.embed_out(hh), zero)
        x_out = torch.where(node, xx, torch.zeros((), dtype=x.dtype, device=x.device))
        return h_out, x_out
