"""Wrap a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, ``SD3Transformer2DModel``,
...) as a pydiff network ``net(x, t, **cond)``.

diffusers models take ``model(sample, timestep=..., **kwargs)`` and return an output object whose
``.sample`` is the prediction (or a tuple with ``return_dict=False``). :class:`DiffusersNet`
calls the model that way and returns the tensor. The time convention is the Denoiser's business:
diffusers' ``timestep`` is the DDPM index (``time_input="index"``) for DDPM-family models and
``1000 sigma`` for flow-matching transformers (``time_input="scaled", time_scale=1000``);
:meth:`pydiff.interop.DiffusersScheduler.denoiser` sets both from the scheduler config.

Conditioning kwargs pass through under their diffusers names (``encoder_hidden_states``,
``class_labels``, ``added_cond_kwargs``, ``pooled_projections``, ...); ``rename`` maps pydiff
names onto them. Models that learn the variance (``variance_type="learned_range"``, DeepFloyd IF,
guided-diffusion) output twice the channels: ``learned_variance=True`` keeps the mean part.

Example:
    >>> import torch, pydiff
    >>> from diffusers import UNet2DModel
    >>> from pydiff.interop import DiffusersNet
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
    ...                    block_out_channels=(8, 16), norm_num_groups=4,
    ...                    down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> sched = pydiff.DiscreteSchedule.linear()
    >>> model = pydiff.Denoiser(DiffusersNet(unet), sched, prediction="eps", time_input="index")
    >>> with torch.no_grad():
    ...     x = pydiff.sample(model, torch.zeros(2, 1, 8, 8), "ddim", steps=3)
    >>> x.shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

from typing import Any

import torch

Tensor = torch.Tensor


class DiffusersNet(torch.nn.Module):
    """A diffusers model as ``net(x, t, **cond) -> Tensor``.

    Args:
        model: the diffusers model (any ``torch.nn.Module`` called as
            ``model(sample, timestep=t, **cond)``).
        rename: map from pydiff conditioning names to the model's keyword names.
        learned_variance: keep the first half of the output channels (models that also predict
            their variance).
        timestep_dtype: dtype of the timestep handed to the model (default: the sample's).
    """

    def __init__(self, model: torch.nn.Module, rename: dict[str, str] | None = None,
                 learned_variance: bool = False, timestep_dtype: torch.dtype | None = None):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a callable diffusers model, got {type(model).__name__}")
        self.model = model
        self.rename = dict(rename or {})
        self.learned_variance = bool(learned_variance)
        self.timestep_dtype = timestep_dtype

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        if t.dim() > 1:
            raise ValueError(f"diffusers models take one timestep per sample; got a time tensor "
                             f"of shape {tuple(t.shape)} (per-position times are not supported)")
        kwargs = {self.rename.get(k, k): v for k, v in cond.items()}
        timestep = t.to(self.timestep_dtype or x.dtype)
        out = self.model(x, timestep=timestep, **kwargs)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, tuple | list):
            out = out[0]
        if not torch.is_tensor(out):
            raise TypeError(f"the diffusers model returned {type(out).__name__}; expected an "
                            "output with .sample, a tuple, or a tensor")
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"learned_variance=True expects {2 * x.shape[1]} output "
                                 f"channels, got {out.shape[1]}")
            out = out[:, : x.shape[1]]
        return out

    @property
    def config(self) -> dict[str, Any]:
        """The wrapped model's config (diffusers models carry one)."""
        return dict(getattr(self.model, "config", {}))


__all__ = ["DiffusersNet"]
