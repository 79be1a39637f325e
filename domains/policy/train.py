"""Train a diffusion policy on scripted demonstrations with :class:`pydiff.training.Trainer`.

The recipe: expert demonstrations with fixed seeds (:func:`~.data.collect_demonstrations`),
min-max normalizers fitted on them, ``(To observations, Tp actions)`` windows, AdamW with a
cosine schedule, Diffusion Policy's EMA; the EMA weights are saved. The shipped checkpoints in
``pydiff/domains/policy/checkpoints/<env>`` were made by ``pydiff policy train --env <env>``
with the defaults of :data:`RECIPES`.

Example:
    >>> import tempfile
    >>> from pydiff.domains.policy.train import train_policy
    >>> with tempfile.TemporaryDirectory() as d:
    ...     policy = train_policy("pointmass", d, episodes=4, steps=2, batch_size=32,
    ...                           down_dims=(16, 32), progress=False)
    >>> policy.config.env
    'pointmass'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydiff.errors import InputError
from pydiff.files import check_output

from .data import MinMaxNormalizer, collect_demonstrations, policy_windows
from .envs import make_env
from .policy import DiffusionPolicy, DiffusionPolicyConfig

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"

# Per-env defaults of `pydiff policy train` (what the shipped checkpoints used).
RECIPES: dict[str, dict[str, Any]] = {
    "pendulum": {"episodes": 200, "demo_steps": 100, "steps": 3000, "batch_size": 128,
                 "lr": 2e-3, "down_dims": (32, 64), "time_embed_dim": 32,
                 "n_action_steps": 4},
    "pointmass": {"episodes": 100, "steps": 1500, "batch_size": 128, "lr": 2e-3,
                  "down_dims": (16, 32), "time_embed_dim": 32},
}


# Inference settings applied when a shipped checkpoint is loaded by env name (measured with
# benchmarks/policy_bench.py). Pendulum balances an unstable equilibrium: executing Ta = 8
# actions open loop fails on seeds where Ta = 4 succeeds (BENCHMARKS.md, Policy). The shipped
# pendulum checkpoint was trained before Ta = 4 entered its recipe (Ta does not affect training).
SHIPPED_INFERENCE: dict[str, dict[str, Any]] = {"pendulum": {"n_action_steps": 4}}


def checkpoint_path(env: str) -> Path:
    """Folder of the shipped checkpoint for ``env`` (``pendulum`` or ``pointmass``)."""
    path = CHECKPOINT_ROOT / env
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in CHECKPOINT_ROOT.iterdir()) if CHECKPOINT_ROOT.is_dir() \
            else []
        raise InputError(f"no shipped checkpoint for env={env!r}; shipped: {shipped}")
    return path


def train_policy(env: str, out_dir: str | os.PathLike | None, *, episodes: int = 100,
                 demo_steps: int | None = None, steps: int = 3000, batch_size: int = 256,
                 lr: float = 2e-3, seed: int = 0, progress: bool = True, **config: Any,
                 ) -> DiffusionPolicy:
    """Collect demonstrations, train, and save the EMA policy to ``out_dir`` (if given).

    Args:
        env: env short name (``pendulum``, ``pointmass``).
        out_dir: where ``save_pretrained`` writes (None: do not save).
        episodes: expert demonstrations (seeds ``seed ...``, modes alternating).
        demo_steps: shorten the demonstrations to this many steps (None: the env's length).
        steps, batch_size, lr, seed: optimization (AdamW, cosine schedule with warmup).
        **config: :class:`DiffusionPolicyConfig` fields (horizon, down_dims, prediction, ...).
    """
    from pydiff.training import BatchLoader, Trainer

    if out_dir is not None:
        check_output(out_dir, "out_dir", folder=True)  # before training, not after
    demos = collect_demonstrations(env, episodes, seed=seed, max_steps=demo_steps)
    probe = make_env(env)
    obs_dim = int(probe.observation_space.shape[0])
    low = [float(v) for v in probe.action_space.low]
    high = [float(v) for v in probe.action_space.high]
    probe.close()
    cfg = DiffusionPolicyConfig(obs_dim=obs_dim, action_dim=len(low), action_low=low,
                                action_high=high, env=env, **config)
    obs, act = policy_windows(demos, cfg.n_obs_steps, cfg.horizon)
    policy = DiffusionPolicy(cfg, MinMaxNormalizer.fit(obs), MinMaxNormalizer.fit(act))
    loader = BatchLoader({"observation": obs, "action": act}, min(batch_size, len(obs)),
                         seed=seed)
    trainer = Trainer(policy, loader, loss_fn=lambda model, batch, g: model(batch, g),
                      max_steps=steps, lr=lr, weight_decay=1e-6, lr_scheduler="cosine",
                      warmup_steps=min(200, steps // 10), ema=True, seed=seed,
                      progress=progress, log_every=100)
    trainer.fit()
    trained = trainer.ema_model()
    trained.eval()
    trained.reset()
    if out_dir is not None:
        trained.save_pretrained(out_dir)
    trained.training_history = trainer.history
    return trained


def load_policy(env_or_path: str | os.PathLike, **overrides: Any) -> DiffusionPolicy:
    """A shipped checkpoint by env name, or a saved folder, with config overrides.

    A ``Path``, or a string with a path separator, is always a folder (a missing one is an
    error naming it, never taken for an env name).
    """
    path = Path(env_or_path)
    text = os.fspath(env_or_path)
    is_path = isinstance(env_or_path, os.PathLike) or os.sep in text or (
        os.altsep is not None and os.altsep in text)
    if not is_path and not (path / "config.json").is_file():
        path = checkpoint_path(text)
        overrides = {**SHIPPED_INFERENCE.get(str(env_or_path), {}), **overrides}
    return DiffusionPolicy.from_pretrained(path, **overrides)


__all__ = ["train_policy", "load_policy", "checkpoint_path", "RECIPES", "CHECKPOINT_ROOT",
           "SHIPPED_INFERENCE"]
