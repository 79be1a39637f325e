"""Observation features a policy conditions on, by name (``DiffusionPolicyConfig.obs_features``).

A policy keeps the env's raw observations in its history (``obs_dim`` is the env's) and maps
them to features only where it builds the network's condition, so the control loop, the
demonstrations and the LeRobot export stay in the env's own terms. The normalizer is fitted
on the features.

- ``"pusht_keypoints"``: Push-T's ``[agent_x, agent_y, block_x, block_y, block_angle]`` as the
  agent's position and the T's eight corners (:func:`~.pusht.keypoint_features`).

Example:
    >>> import torch
    >>> from pydiff.domains.policy.features import feature_dim, obs_features
    >>> feature_dim("pusht_keypoints", 5)
    18
    >>> obs_features("pusht_keypoints", torch.zeros(4, 2, 5)).shape
    torch.Size([4, 2, 18])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pydiff.errors import InputError

from .pusht import keypoint_features

Tensor = torch.Tensor

# name -> (map of [..., obs_dim] to [..., feature_dim], the obs_dim it expects, feature_dim)
FEATURES: dict[str, tuple[Callable[[Tensor], Tensor], int, int]] = {
    "pusht_keypoints": (keypoint_features, 5, 18),
}


def check_features(name: str | None, obs_dim: int) -> None:
    """Refuse an unknown feature map, or one made for observations of another size."""
    if name is None:
        return
    if name not in FEATURES:
        raise InputError(f"obs_features={name!r}; expected None or one of {sorted(FEATURES)}")
    if FEATURES[name][1] != obs_dim:
        raise InputError(f"obs_features={name!r} needs obs_dim={FEATURES[name][1]}, got "
                         f"{obs_dim}")


def feature_dim(name: str | None, obs_dim: int) -> int:
    """The size of one feature vector (``obs_dim`` itself without a feature map)."""
    return obs_dim if name is None else FEATURES[name][2]


def obs_features(name: str | None, obs: Tensor) -> Tensor:
    """``obs [..., obs_dim]`` mapped to ``[..., feature_dim]`` (unchanged without a map)."""
    if name is None:
        return obs
    return FEATURES[name][0](obs)


__all__ = ["FEATURES", "check_features", "feature_dim", "obs_features"]
