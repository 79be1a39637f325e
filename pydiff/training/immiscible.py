"""Immiscible noise assignment (Li et al. 2024, "Immiscible Diffusion: Accelerating Diffusion
Training with Noise Assignment").

Plain training pairs each data sample with an independent noise sample, so every data point is
noised towards every region of noise space and the network learns to undo a thoroughly mixed
map. Immiscible diffusion draws the batch's noise as usual and then permutes it across the batch
by a linear assignment that minimises the total distance between each data sample and its noise
(``scipy.optimize.linear_sum_assignment`` on the ``B x B`` distance matrix): each noise sample
stays Gaussian marginally, but nearby data goes to nearby noise. The assignment is a host-side
step of ``O(B^3)``: fine for the usual batch sizes.

Example:
    >>> import torch
    >>> x0 = torch.tensor([[5.0], [-5.0]])
    >>> immiscible_noise(x0, torch.tensor([[-1.0], [1.0]])).flatten().tolist()
    [1.0, -1.0]
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from ..tree import State, batch_size, leaves, tree_map

Tensor = torch.Tensor


def immiscible_noise(x0: State, noise: State) -> State:
    """``noise`` permuted across the batch so that the summed L2 distance to ``x0`` is minimal.

    Dict states are matched on all leaves together (one permutation for the whole sample).
    """
    bsz = batch_size(x0)
    if batch_size(noise) != bsz:
        raise ValueError(f"noise has batch size {batch_size(noise)} but x0 has {bsz}")
    if bsz < 2:
        return noise

    def flat(s: State) -> Tensor:
        return torch.cat([v.detach().reshape(bsz, -1).double() for v in leaves(s)], 1)

    cost = torch.cdist(flat(x0), flat(noise)).cpu().numpy()
    _, cols = linear_sum_assignment(cost)
    order = torch.as_tensor(cols, device=leaves(noise)[0].device)
    return tree_map(lambda z: z.index_select(0, order), noise)


__all__ = ["immiscible_noise"]
