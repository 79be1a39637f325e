"""Action-chunk diffusion policy (Chi et al., Diffusion Policy) with LeRobot's interface.

The policy sees the last ``To`` observations (min-max normalized, flattened into FiLM's global
condition of :class:`pydiff.nn.UNet1D`) and denoises a chunk of ``Tp`` future actions
(normalized to ``[-1, 1]``; the diffusion state is channel-first ``[B, action_dim, Tp]``) with a
100-level DDPM table; it executes the first ``Ta`` of them. Five methods, as in LeRobot:
``reset()``, ``select_action(obs)`` (internal action queue), ``predict_action_chunk(obs)``,
``forward(batch) -> (loss, info)``, ``save_pretrained`` / ``from_pretrained``.

Inference modes (``config.mode``; any pydiff solver):

- ``"full"``: ``steps`` steps of ``solver`` from pure noise for every chunk.
- ``"rti"`` (real-time iteration): warm start from the previous chunk shifted by the ``Ta``
  executed steps (its last action repeated at the tail), noised to ``rti_t_start`` and denoised
  in ``rti_steps`` steps (``pydiff.timesteps(..., t_start=...)`` through ``pydiff.sample``).
  The first chunk of an episode is a full one.
- ``"stream"`` (Streaming Diffusion Policy): a persistent buffer of ``Tp`` actions whose noise
  level rises along the horizon, position ``j`` at ``t = (j + 1) / Tp``. Every control step
  denoises the whole buffer by ``1 / Tp`` (``stream_steps`` solver steps on a per-position
  grid), which makes its head clean; the head is executed and popped and a fresh noisy action
  (at ``t = 1``, around the last one) is appended. The first buffer comes from a full chunk
  noised to the ramp. Training mixes one-level-per-sample noise with rising per-position ramps
  (``stream_fraction`` of the batch) so one network serves all three modes.

Example:
    >>> import torch
    >>> from pydiff.domains.policy import DiffusionPolicy, DiffusionPolicyConfig
    >>> cfg = DiffusionPolicyConfig(obs_dim=3, action_dim=1, action_low=[-2.0],
    ...                             action_high=[2.0], down_dims=(16, 32), steps=3)
    >>> policy = DiffusionPolicy(cfg)
    >>> policy.reset()
    >>> policy.select_action(torch.zeros(3)).shape
    torch.Size([1])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pydiff
from pydiff.errors import InputError
from pydiff.guidance import ClipX0
from pydiff.nn import UNet1D

from .chunking import ChunkedPolicy
from .data import Episode, MinMaxNormalizer, policy_windows
from .envs import EnvSpec
from .features import check_features, feature_dim, obs_features

Tensor = torch.Tensor
MODES = ("full", "rti", "stream")
# "v" is the consistency students' parameterization (see distill.py): its x0 at the noisiest
# level is the network output itself, where eps's x0 divides by alpha ~ 5e-4
PREDICTIONS = ("eps", "x0", "v")

# Named inference settings (config overrides) used by the CLI and the benchmarks.
PRESETS: dict[str, dict[str, Any]] = {
    "ddpm100": {"mode": "full", "solver": "ddpm", "steps": 100},
    "ddim10": {"mode": "full", "solver": "ddim", "steps": 10},
    "dpmpp2m5": {"mode": "full", "solver": "dpmpp_2m", "steps": 5},
    "rti": {"mode": "rti", "solver": "ddim", "steps": 10, "rti_steps": 1, "rti_t_start": 0.3},
    "rti2": {"mode": "rti", "solver": "ddim", "steps": 10, "rti_steps": 2, "rti_t_start": 0.3},
    "stream": {"mode": "stream", "solver": "ddim", "steps": 10, "stream_steps": 1},
    # consistency students only (`pydiff policy distill`; load() picks <env>_consistency)
    "cp1": {"mode": "full", "solver": "consistency", "steps": 1},
    "cp2": {"mode": "full", "solver": "consistency", "steps": 2},
}


@dataclass
class DiffusionPolicyConfig:
    """Architecture, training and inference settings (all JSON-serializable).

    Attributes:
        obs_dim, action_dim: sizes of one observation and one action.
        n_obs_steps (To), horizon (Tp), n_action_steps (Ta): observation history, predicted
            chunk, executed actions per chunk.
        down_dims, time_embed_dim, kernel_size, n_groups: the :class:`pydiff.nn.UNet1D`.
        prediction: ``"eps"``, ``"x0"`` (sample prediction) or ``"v"`` (consistency students).
        num_train_timesteps, beta_schedule: the DDPM table (``"cosine"`` is diffusers'
            ``squaredcos_cap_v2``, Diffusion Policy's choice; or ``"linear"``).
        stream_fraction: share of training samples with rising per-position noise levels.
        clip_sample: clamp x0-hat to ``[-1, 1]`` at inference (see :meth:`inference_model`).
        mode, solver, steps: inference (see the module docstring).
        rti_steps, rti_t_start: real-time iteration's steps and warm-start noise level.
        stream_steps: solver steps per control step in streaming mode.
        action_low, action_high: the action space (actions are clipped to it).
        env: the env the policy was trained on (informational).
        consistency: a consistency student (:mod:`.distill`; presets ``cp1``, ``cp2``).
        obs_features: a named map of the observations to the features the network is
            conditioned on (:mod:`.features`, e.g. ``"pusht_keypoints"``); None: the raw ones.
    """

    obs_dim: int
    action_dim: int
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    down_dims: tuple[int, ...] = (32, 64)
    time_embed_dim: int = 64
    kernel_size: int = 5
    n_groups: int = 8
    prediction: str = "eps"
    num_train_timesteps: int = 100
    beta_schedule: str = "cosine"
    stream_fraction: float = 0.5
    clip_sample: bool = True
    mode: str = "full"
    solver: str = "ddim"
    steps: int = 10
    rti_steps: int = 1
    rti_t_start: float = 0.3
    stream_steps: int = 1
    action_low: list[float] = field(default_factory=list)
    action_high: list[float] = field(default_factory=list)
    env: str | None = None
    consistency: bool = False
    obs_features: str | None = None

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        for name in ("obs_dim", "action_dim", "n_obs_steps", "horizon", "n_action_steps",
                     "steps", "rti_steps", "stream_steps", "num_train_timesteps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_action_steps > self.horizon:
            raise InputError(f"n_action_steps={self.n_action_steps} must be <= horizon="
                             f"{self.horizon} (only predicted actions can be executed)")
        if self.prediction not in PREDICTIONS:
            raise InputError(f"prediction={self.prediction!r}; expected one of {PREDICTIONS}")
        if self.beta_schedule not in ("cosine", "linear"):
            raise InputError(f"beta_schedule={self.beta_schedule!r}; expected 'cosine' or "
                             "'linear'")
        if self.mode not in MODES:
            raise InputError(f"mode={self.mode!r}; expected one of {MODES}")
        if not 0.0 < self.rti_t_start <= 1.0:
            raise InputError(f"rti_t_start={self.rti_t_start} must lie in (0, 1]")
        if not 0.0 <= self.stream_fraction <= 1.0:
            raise InputError(f"stream_fraction={self.stream_fraction} must lie in [0, 1]")
        check_features(self.obs_features, self.obs_dim)
        if self.solver not in pydiff.available_solvers():
            raise InputError(f"solver={self.solver!r}; expected one of "
                             f"{pydiff.available_solvers()}")
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise InputError(f"action_low/action_high must hold action_dim={self.action_dim} "
                             f"values, got {self.action_low} and {self.action_high}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["down_dims"] = list(self.down_dims)
        return d


class DiffusionPolicy(nn.Module, ChunkedPolicy):
    """Diffusion Policy with full, real-time-iteration and streaming inference.

    Args:
        config: a :class:`DiffusionPolicyConfig`.
        obs_normalizer, action_normalizer: fitted :class:`MinMaxNormalizer` (identity maps of
            ``[-1, 1]`` when omitted; :func:`~.train.train_policy` fits them on the data).
    """

    def __init__(self, config: DiffusionPolicyConfig,
                 obs_normalizer: MinMaxNormalizer | None = None,
                 action_normalizer: MinMaxNormalizer | None = None):
        super().__init__()
        self.config = config
        cond_dim = feature_dim(config.obs_features, config.obs_dim)
        self.obs_normalizer = obs_normalizer or MinMaxNormalizer(cond_dim)
        self.action_normalizer = action_normalizer or MinMaxNormalizer(config.action_dim)
        self.net = UNet1D(
            in_channels=config.action_dim,
            global_cond_dim=cond_dim * config.n_obs_steps,
            time_embed_dim=config.time_embed_dim,
            down_dims=config.down_dims,
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
        )
        table = {"cosine": pydiff.DiscreteSchedule.cosine,
                 "linear": pydiff.DiscreteSchedule.linear}[config.beta_schedule]
        self.schedule = table(num_train_timesteps=config.num_train_timesteps)
        self.denoiser = pydiff.Denoiser(self.net, self.schedule, prediction=config.prediction,
                                        time_input="index")
        ChunkedPolicy.__init__(self, obs_dim=config.obs_dim, n_obs_steps=config.n_obs_steps,
                               action_low=config.action_low, action_high=config.action_high)

    # -- episode state --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the observation history, the action queue and the warm-start state."""
        ChunkedPolicy.reset(self)
        self._previous_chunk: Tensor | None = None  # normalized [B, A, Tp], for RTI
        self._buffer: Tensor | None = None  # normalized noisy [B, A, Tp], for streaming

    def configure(self, **overrides: Any) -> DiffusionPolicy:
        """Change inference settings (validated like the config), e.g. ``configure(**PRESETS[
        "rti"])``; resets the episode state. Architecture fields cannot change."""
        fixed = ("obs_dim", "action_dim", "n_obs_steps", "horizon", "down_dims",
                 "time_embed_dim", "kernel_size", "n_groups", "prediction",
                 "num_train_timesteps", "beta_schedule", "consistency", "obs_features")
        changed = [k for k in overrides if k in fixed and overrides[k] != getattr(self.config, k)]
        if changed:
            raise InputError(f"cannot change architecture fields {changed} of a built policy")
        self.config = dataclasses.replace(self.config, **overrides)
        self.reset()
        return self

    # -- conditioning ---------------------------------------------------------------------
    def _condition(self, obs_history: Tensor) -> Tensor:
        cfg = self.config
        if obs_history.dim() != 3 or obs_history.shape[1:] != (cfg.n_obs_steps, cfg.obs_dim):
            raise InputError(f"obs_history has shape {tuple(obs_history.shape)}; expected "
                             f"[B, n_obs_steps={cfg.n_obs_steps}, obs_dim={cfg.obs_dim}]")
        features = obs_features(cfg.obs_features, obs_history)
        return self.obs_normalizer.normalize(features).flatten(1)

    def _generators(self, batch: int, generator: torch.Generator | list | None):
        if generator is None or isinstance(generator, torch.Generator) or len(generator) == batch:
            return generator
        raise InputError(f"generator must be one torch.Generator or a list of {batch}, got a "
                         f"list of {len(generator)}")

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action_chunk(self, obs_history: Tensor, *, mode: str | None = None,
                             generator: torch.Generator | list | None = None,
                             executed: int | None = None) -> Tensor:
        """Actions ``[B, Tp, action_dim]`` (unnormalized, not clipped) for ``[B, To, obs_dim]``.

        ``mode`` overrides ``config.mode``. In ``"rti"`` mode the previous chunk (if any) is
        shifted by ``executed`` steps (default ``Ta``) and warm-starts this one. In
        ``"stream"`` mode this advances the buffer by one control step and returns the buffer
        after the step: its first action is clean (the one to execute), later ones are still
        partly noisy (levels ``j / Tp``).
        """
        mode = mode or self.config.mode
        if mode not in MODES:
            raise InputError(f"mode={mode!r}; expected one of {MODES}")
        obs_history = torch.as_tensor(obs_history, dtype=torch.float32)
        cond = self._condition(obs_history)
        model = self.inference_model().bind(global_cond=cond)
        generator = self._generators(cond.shape[0], generator)
        if mode == "full" or (mode == "rti" and self._previous_chunk is None):
            chunk = self._full(model, cond.shape[0], generator)
        elif mode == "rti":
            chunk = self._rti(model, generator, self.config.n_action_steps
                              if executed is None else executed)
        else:
            chunk = self._stream(model, cond.shape[0], generator)
        self._previous_chunk = chunk
        return self.action_normalizer.unnormalize(chunk.transpose(1, 2))

    def inference_model(self) -> pydiff.Denoiser:
        """The denoiser used for sampling: with ``clip_sample``, x0-hat is clamped to the
        normalized action range ``[-1, 1]`` (:class:`pydiff.guidance.ClipX0`), as Diffusion
        Policy's scheduler does. The cosine table ends at ``alpha = 5e-4``, so without it the
        first steps' x0-hat amplifies the noise prediction's error ~2000-fold."""
        if self.config.clip_sample:
            return ClipX0(self.denoiser, bound=1.0)
        return self.denoiser

    def _shape(self, batch: int) -> tuple[int, int, int]:
        return (batch, self.config.action_dim, self.config.horizon)

    def _full(self, model: pydiff.Denoiser, batch: int, generator) -> Tensor:
        cfg = self.config
        x_t = pydiff.prior(self.schedule, self._shape(batch), generator=generator)
        return pydiff.sample(model, x_t, solver=cfg.solver, steps=cfg.steps, generator=generator)

    def _shifted(self, chunk: Tensor, executed: int) -> Tensor:
        """The previous chunk advanced by ``executed`` steps, last action held at the tail."""
        if executed <= 0:
            return chunk
        executed = min(executed, chunk.shape[-1])
        tail = chunk[..., -1:].expand(-1, -1, executed)
        return torch.cat([chunk[..., executed:], tail], dim=-1)

    def _rti(self, model: pydiff.Denoiser, generator, executed: int) -> Tensor:
        cfg = self.config
        guess = self._shifted(self._previous_chunk, executed)
        x_t = pydiff.prior(self.schedule, guess.shape, generator=generator,
                           t=cfg.rti_t_start, mean=guess)
        return pydiff.sample(model, x_t, solver=cfg.solver, steps=cfg.rti_steps,
                             t_start=cfg.rti_t_start, generator=generator)

    def stream_levels(self, offset: float = 1.0) -> Tensor:
        """Noise levels ``(j + offset) / Tp`` of the buffer positions (float64 ``[Tp]``)."""
        tp = self.config.horizon
        return (torch.arange(tp, dtype=torch.float64) + offset) / tp

    def stream_grid(self) -> Tensor:
        """One control step's per-position grid ``[stream_steps + 1, 1, 1, Tp]``: each position
        goes from ``(j + 1) / Tp`` to ``j / Tp`` (the head reaches clean data)."""
        s = self.config.stream_steps
        key = (s, self.config.horizon)
        # one tensor per setting: the Denoiser keeps its levels with the grid it was given
        cached = self.__dict__.get("_stream_grid")
        if (cached is None or cached[0] != key or cached[1].is_inference()
                or cached[1]._version != cached[2]):
            frac = torch.linspace(1.0, 0.0, s + 1, dtype=torch.float64).reshape(-1, 1)
            grid = self.stream_levels(frac).reshape(s + 1, 1, 1, -1)
            if grid.is_inference():  # made under inference mode: no version counter to keep
                return grid
            cached = self.__dict__["_stream_grid"] = (key, grid, grid._version)
        return cached[1]

    def _stream(self, model: pydiff.Denoiser, batch: int, generator) -> Tensor:
        cfg = self.config
        levels = self.stream_levels().reshape(1, 1, -1)
        if self._buffer is None or self._buffer.shape[0] != batch:
            # first buffer: a full chunk, noised to the rising ramp
            self._buffer = pydiff.prior(self.schedule, self._shape(batch), generator=generator,
                                        t=levels, mean=self._full(model, batch, generator))
        x = pydiff.sample(model, self._buffer, solver=cfg.solver, grid=self.stream_grid(),
                          generator=generator)
        # pop the (now clean) head; append a fresh action at t = 1 around the last position
        fresh = pydiff.prior(self.schedule, self._shape(batch)[:2] + (1,), generator=generator,
                             t=1.0, mean=x[..., -1:])
        self._buffer = torch.cat([x[..., 1:], fresh], dim=-1)
        return x

    def _chunk_due(self) -> bool:
        return self.config.mode == "stream" or not self._queue

    def _next_chunk(self, history: Tensor, obs: Tensor, generator: Any) -> list[Tensor]:
        # streaming executes the head of every advanced buffer; the others Ta actions a chunk
        chunk = self.predict_action_chunk(history, generator=generator)
        self.last_chunk = chunk
        keep = 1 if self.config.mode == "stream" else self.config.n_action_steps
        return [chunk[:, k] for k in range(keep)]

    # -- training ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        """Denoising loss on ``batch = {"observation": [B, To, obs_dim], "action": [B, Tp, A]}``.

        A ``stream_fraction`` share of the samples gets a rising per-position ramp of noise
        levels (``pydiff.training.PerPosition(mode="ramp")``), the rest one of the 100 table
        levels per sample. Returns ``(loss, {"loss": ..., "loss_ramp": ...})``.
        """
        from pydiff.training import diffusion_loss
        from pydiff.training.time_samplers import DiscreteUniform, PerPosition, Uniform

        cond = self._condition(batch["observation"].float())
        x0 = self.action_normalizer.normalize(batch["action"].float()).transpose(1, 2)
        b, _, tp = x0.shape
        t_level = DiscreteUniform()(self.schedule, x0.shape, generator).reshape(b, 1, 1)
        t = t_level.expand(b, 1, tp)
        n_ramp = int(round(self.config.stream_fraction * b))
        if n_ramp:
            ramp = PerPosition(Uniform(), mode="ramp")(self.schedule, (n_ramp, 1, tp), generator)
            t = torch.cat([ramp, t[n_ramp:]], dim=0)
        out = diffusion_loss(self.denoiser, x0, generator=generator, t=t,
                             cond={"global_cond": cond})
        info = {"loss": float(out.loss.detach())}
        if n_ramp:
            info["loss_ramp"] = float(out.per_sample[:n_ramp].detach().mean())
        return out.loss, info

    @classmethod
    def for_demonstrations(cls, demos: list[Episode], spec: EnvSpec, **config: Any
                           ) -> tuple[DiffusionPolicy, dict[str, Tensor]]:
        """An untrained policy for ``spec``'s env with normalizers fitted on ``demos``, and its
        training tensors ``{"observation": [N, To, obs_dim], "action": [N, Tp, A]}``."""
        cfg = DiffusionPolicyConfig(obs_dim=spec.obs_dim, action_dim=len(spec.action_low),
                                    action_low=list(spec.action_low),
                                    action_high=list(spec.action_high), **config)
        obs, act = policy_windows(demos, cfg.n_obs_steps, cfg.horizon)
        policy = cls(cfg, MinMaxNormalizer.fit(obs_features(cfg.obs_features, obs)),
                     MinMaxNormalizer.fit(act))
        return policy, {"observation": obs, "action": act}

    # -- persistence ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and normalizers).

        Uses :func:`pydiff.training.save_pretrained`; the config is this policy's
        :class:`DiffusionPolicyConfig` (the current inference settings included).
        """
        from pydiff.training import save_pretrained

        return save_pretrained(self, directory, net_config=self.config.to_dict(),
                               metadata={"kind": "diffusion_policy", "env": self.config.env})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> DiffusionPolicy:
        """Load a saved policy; ``overrides`` change config fields (e.g. ``mode="rti"``).

        Example:
            >>> from pydiff.domains.policy import DiffusionPolicy
            >>> from pydiff.domains.policy.train import checkpoint_path
            >>> policy = DiffusionPolicy.from_pretrained(checkpoint_path("pointmass"),
            ...                                          mode="rti")
            >>> policy.config.mode
            'rti'
        """
        from pydiff.training import from_pretrained

        def build(class_path: str, config: dict[str, Any]) -> DiffusionPolicy:
            return cls(DiffusionPolicyConfig(**{**config, **overrides}))

        policy = from_pretrained(directory, factory=build)
        if not isinstance(policy, cls):
            raise TypeError(f"{directory} holds a {type(policy).__name__}, not a {cls.__name__}")
        return policy.eval()


__all__ = ["DiffusionPolicy", "DiffusionPolicyConfig", "MODES", "PRESETS"]
