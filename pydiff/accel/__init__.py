"""Training-free acceleration of sampling.

- :class:`DeepCache` / :class:`DeepCacheState`: a UNet reuses its deep features between
  full calls every ``interval`` steps (Ma et al. 2024); the cache is an explicit per-run state
  bound as conditioning, so one network serves several concurrent samplers.
- :class:`StreamBatch`: many concurrent sampling streams at different noise levels advanced by
  one batched network call per tick, with a ``push`` / ``pop`` queue (StreamDiffusion).

See docs/accel.md for the measured speed-ups and when each pays.

Example:
    >>> import torch, pydiff
    >>> from pydiff.accel import DeepCache, DeepCacheState
    >>> from pydiff.nn import UNet1D
    >>> net = DeepCache(UNet1D(2, down_dims=(16, 32, 64), time_embed_dim=16))
    >>> model = pydiff.Denoiser(net, pydiff.DiscreteSchedule.cosine(), prediction="eps")
    >>> x_T = torch.randn(3, 2, 16)
    >>> with torch.no_grad():
    ...     a = pydiff.sample(model.bind(deep_cache=DeepCacheState(interval=1)), x_T, "ddim")
    ...     b = pydiff.sample(model, x_T, "ddim")     # no cache state: the plain network
    >>> torch.equal(a, b)
    True
"""

from .deepcache import DeepCache, DeepCacheState
from .streams import StreamBatch

__all__ = ["DeepCache", "DeepCacheState", "StreamBatch"]
