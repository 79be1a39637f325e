"""Train any policy type on scripted demonstrations, and load trained ones.

One training path for every policy type (the diffusion policy, the trajectory planner): expert
demonstrations with fixed seeds (:func:`~.data.collect_demonstrations`), the model type's
``for_demonstrations`` (normalizers fitted on the data, training windows), then
:class:`pydiff.training.Trainer` (AdamW with a cosine schedule and warm-up, EMA) on the model's
own ``forward(batch) -> (loss, info)``; the EMA weights are saved. The shipped checkpoints in
``pydiff/domains/policy/checkpoints/`` were made by ``pydiff policy train`` with the defaults
of :data:`RECIPES`.

Example:
    >>> import tempfile
    >>> from pydiff.domains.policy import train
    >>> with tempfile.TemporaryDirectory() as d:
    ...     policy, history = train("pointmass", d, episodes=4, steps=2, batch_size=32,
    ...                             down_dims=(16, 32), progress=False)
    >>> policy.config.env, len(history) > 0
    ('pointmass', True)
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from torch import nn

from pydiff.errors import InputError
from pydiff.files import check_output

from .data import collect_demonstrations
from .distill import CONSISTENCY_PRESETS, check_student, distill_consistency
from .envs import env_spec, resolve_env_id
from .planner import TrajectoryPlanner
from .policy import PRESETS, DiffusionPolicy

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"
MODEL_TYPES: dict[str, type] = {"policy": DiffusionPolicy, "planner": TrajectoryPlanner,
                                 "consistency": DiffusionPolicy}

# Per model type and env, the defaults of `pydiff policy train` (what the shipped checkpoints
# used). Keys other than the optimization's (OPTIMIZATION) are config fields of the model.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "policy": {
        "pendulum": {"episodes": 200, "demo_steps": 100, "steps": 3000, "batch_size": 128,
                     "lr": 2e-3, "down_dims": (32, 64), "time_embed_dim": 32,
                     "n_action_steps": 4},
        "pointmass": {"episodes": 100, "steps": 1500, "batch_size": 128, "lr": 2e-3,
                      "down_dims": (16, 32), "time_embed_dim": 32},
        # Diffusion Policy's Push-T chunking (To = 2, Tp = 16, Ta = 8) and keypoint
        # observations on the planning expert's demonstrations. On a shared 2-core CPU the
        # optimizer steps are the scarce thing: a small net at batch 64 takes ~10x more steps
        # in the budget than (64, 128) at batch 256 did; no streaming ramps (the budget goes
        # to the full-chunk levels that ddim10/ddpm100/rti use).
        "pusht": {"episodes": 200, "steps": 100000, "batch_size": 64, "lr": 1e-3,
                  "minutes": 35.0, "down_dims": (32, 64), "time_embed_dim": 32,
                  "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8,
                  "obs_features": "pusht_keypoints", "stream_fraction": 0.0},
    },
    "planner": {
        "pointmass": {"episodes": 100, "steps": 2000, "batch_size": 64, "lr": 2e-3,
                      "horizon": 48, "down_dims": (32, 64)},
    },
    # consistency students of the shipped policies, on the teachers' own demonstrations
    # (`pydiff policy distill`; distill.py): each level's target is the teacher's DDIM solve
    # to clean data; the pendulum's levels are 1 and 0.505 only (2 intervals), where cp1 and
    # cp2 sample
    "consistency": {
        "pendulum": {"episodes": 200, "demo_steps": 100, "steps": 3000, "batch_size": 128,
                     "lr": 1e-3, "consistency_steps": 2, "solver_steps": 5, "minutes": 18.0},
        "pointmass": {"episodes": 100, "steps": 3000, "batch_size": 128, "lr": 2e-3,
                      "consistency_steps": 4, "solver_steps": 10, "minutes": 14.0},
        "pusht": {"episodes": 200, "steps": 3000, "batch_size": 64, "lr": 1e-3,
                  "consistency_steps": 2, "solver_steps": 10, "minutes": 15.0},
    },
}
OPTIMIZATION = ("episodes", "demo_steps", "steps", "batch_size", "lr")
DISTILLATION = ("teacher", "consistency_steps", "minutes", "target", "solver_steps",
                "target_decay")
# optimizer steps timed one by one to plan a policy's ``minutes`` (the warm-up; the median
# step, since the first steps allocate and a shared CPU's load comes in bursts)
_PACE_STEPS = 20

# Inference settings applied when a shipped checkpoint is loaded by env name (measured with
# benchmarks/policy_bench.py). Pendulum balances an unstable equilibrium: executing Ta = 8
# actions open loop fails on seeds where Ta = 4 succeeds (BENCHMARKS.md, Policy). The shipped
# pendulum checkpoint was trained before Ta = 4 entered its recipe (Ta does not affect training).
SHIPPED_INFERENCE: dict[str, dict[str, Any]] = {"pendulum": {"n_action_steps": 4}}


def _recipe(model: str, env: str) -> dict[str, Any]:
    if model not in MODEL_TYPES:
        raise InputError(f"model={model!r}; expected one of {sorted(MODEL_TYPES)}")
    env_spec(env)  # an unknown env fails here, naming the known ones
    recipes = RECIPES[model]
    short = next((k for k in recipes if resolve_env_id(k) == resolve_env_id(env)), None)
    if short is None:
        raise InputError(f"env={env!r} has no {model} training recipe; expected one of "
                         f"{sorted(recipes)}")
    return dict(recipes[short])


def train(env: str, out_dir: str | os.PathLike | None = None, *, model: str = "policy",
          seed: int = 0, progress: bool = True, demos: str | os.PathLike | None = None,
          init: str | os.PathLike | None = None, **settings: Any,
          ) -> tuple[nn.Module, list[dict[str, float]]]:
    """Collect demonstrations, train a ``model`` on them, and save the EMA weights to
    ``out_dir`` (if given).

    Args:
        env: env short name (``pendulum``, ``pointmass``, ``pusht``).
        out_dir: where ``save_pretrained`` writes (None: do not save); checked before training.
        model: ``"policy"``, ``"planner"``, or ``"consistency"`` (a one/two-step student of a
            trained policy, distilled on the teacher's demonstrations: presets ``cp1``,
            ``cp2``; see :mod:`.distill`).
        seed: demonstrations (seeds ``seed ...``, modes alternating) and optimization.
        demos: a LeRobot dataset folder (``pydiff policy demos``) to train on, all its
            episodes, instead of recording ``episodes`` demonstrations here (Push-T's expert
            plans every push in a simulator: recording once and training many times saves
            most of a run's CPU).
        init: warm start: a folder saved by :func:`train` (a policy or planner of this
            ``model`` type and env) whose architecture, normalizers and weights training
            continues from; the weights (the saved EMA weights) start both the trained network
            and its EMA. A ``save_pretrained`` folder holds no optimizer state, so AdamW's
            moments and the cosine schedule (with its warm-up) start afresh over ``steps`` or
            ``minutes``. Config settings that differ from the folder's are refused.
        **settings: override the env's :data:`RECIPES` entry: ``episodes``, ``demo_steps``
            (shorten the demonstrations), ``steps``, ``batch_size``, ``lr``, ``minutes`` (a time
            budget: fewer steps if ``steps`` would not fit), or any config field of the model
            (``horizon``, ``down_dims``, ``prediction``, ...); for
            ``"consistency"``: ``teacher`` (a policy, a shipped name or a folder; default the
            env's shipped policy), ``minutes`` (time budget), ``consistency_steps``,
            ``target``, ``solver_steps``, ``target_decay`` (see :func:`.distill_consistency`).

    Returns:
        The trained model (eval mode) and the trainer's history (one dict per logged step).
    """
    from pydiff.training import BatchLoader, BudgetSchedule, Trainer

    recipe = {**_recipe(model, env), **settings}
    if out_dir is not None:
        check_output(out_dir, "out_dir", folder=True)  # before training, not after
    opt = {k: recipe.pop(k) for k in OPTIMIZATION if k in recipe}
    steps = opt.get("steps", 2000)
    start = None if init is None else _load_init(init, model, env, settings)
    if demos is not None:
        from .lerobot import read_lerobot

        demos = read_lerobot(demos)
    else:
        demos = collect_demonstrations(env, opt.get("episodes", 100), seed=seed,
                                       max_steps=opt.get("demo_steps"))
    if model == "consistency":
        return _distill(env, out_dir, demos, opt, recipe, seed, progress)
    minutes = recipe.pop("minutes", None)
    if start is not None:
        net, data = start.train(), _windows_for(start, demos, env)
    else:
        net, data = MODEL_TYPES[model].for_demonstrations(demos, env_spec(env), env=env,
                                                          **recipe)
    batch_size = min(opt.get("batch_size", 128), len(next(iter(data.values()))))
    initial = copy.deepcopy(net.state_dict())

    def trainer_for(max_steps: int, show: bool = progress, planned: int | None = None,
                    callbacks: tuple = ()) -> Trainer:
        net.load_state_dict(initial)
        return Trainer(net, BatchLoader(data, batch_size, seed=seed),
                       loss_fn=lambda m, batch, g: m(batch, g), max_steps=max_steps,
                       lr=opt.get("lr", 2e-3), weight_decay=1e-6, lr_scheduler="cosine",
                       warmup_steps=min(200, (planned or max_steps) // 10), ema=True,
                       seed=seed, progress=show, log_every=100, callbacks=callbacks)

    budget = None
    if minutes is not None and steps > _PACE_STEPS:
        if not minutes > 0:
            raise InputError(f"minutes must be > 0, got {minutes}")
        # time steps one by one to plan the run (its warm-up), then restart: ``steps`` is a
        # ceiling, the budget stops the run, and BudgetSchedule re-plans the cosine's last step
        # from the pace as it goes, so the learning rate reaches its floor where the budget
        # ends however the shared machine's load moves
        start = time.perf_counter()
        timer, times = trainer_for(steps, show=False), []
        for _ in range(_PACE_STEPS):
            tick = time.perf_counter()
            timer.fit(1)
            times.append(time.perf_counter() - tick)
        pace = sorted(times)[len(times) // 2]
        budget = 60.0 * minutes - (time.perf_counter() - start)
        if budget > 0:
            planned = max(min(steps, int(budget / pace)), _PACE_STEPS)
            trainer = trainer_for(steps, planned=planned,
                                  callbacks=(BudgetSchedule(budget, every=50),))
    if budget is None or budget <= 0:
        trainer = trainer_for(steps)
    trainer.fit(time_budget=budget if budget is not None and budget > 0 else None)
    trained = trainer.ema_model().eval()
    if isinstance(trained, DiffusionPolicy):
        trained.reset()
    if out_dir is not None:
        trained.save_pretrained(out_dir)
    return trained, trainer.history


def _load_init(init: str | os.PathLike, model: str, env: str, settings: dict[str, Any]
               ) -> nn.Module:
    """``train(init=...)``: the saved model (its config, normalizers and weights), refused if
    it is not a ``model`` of ``env`` or disagrees with a setting given explicitly."""
    if model == "consistency":
        raise InputError("init= warm-starts a policy or planner; a consistency student "
                         "starts from its teacher (teacher=)")
    start = load(Path(init))  # a Path is always a folder, never a shipped name
    if type(start) is not MODEL_TYPES[model] or getattr(start.config, "consistency", False):
        raise InputError(f"init={os.fspath(init)!r} holds a {type(start).__name__}"
                         f"{' (a consistency student)' if model == 'policy' else ''}, not a "
                         f"{model}")
    cfg = start.config
    if cfg.env is None or resolve_env_id(cfg.env) != resolve_env_id(env):
        raise InputError(f"init={os.fspath(init)!r} was trained for env {cfg.env!r}, not "
                         f"{env!r}")
    # settings given explicitly must agree with the saved config; the recipe's own defaults
    # give way to the folder's
    clash = sorted(k for k, v in settings.items()
                   if k not in OPTIMIZATION and k != "minutes" and hasattr(cfg, k)
                   and _comparable(getattr(cfg, k)) != _comparable(v))
    if clash:
        raise InputError(f"init={os.fspath(init)!r} holds a network with "
                         + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in clash)
                         + f"; got {', '.join(f'{k}={settings[k]!r}' for k in clash)}")
    return start


def _windows_for(start: nn.Module, demos: list, env: str) -> dict:
    """Training windows cut from ``demos`` for a warm start's config (its normalizers stay)."""
    fields = {k: v for k, v in start.config.to_dict().items()
              if k not in ("obs_dim", "action_dim", "action_low", "action_high")}
    return type(start).for_demonstrations(demos, env_spec(env), **fields)[1]


def _comparable(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _distill(env: str, out_dir: Any, demos: list, opt: dict[str, Any], recipe: dict[str, Any],
             seed: int, progress: bool) -> tuple[nn.Module, list[dict[str, float]]]:
    """``train(model="consistency")``: the teacher's windows, then :func:`distill_consistency`."""
    unknown = sorted(set(recipe) - set(DISTILLATION))
    if unknown:
        raise InputError(f"unknown consistency distillation settings {unknown}; expected "
                         f"{sorted(OPTIMIZATION + DISTILLATION)}")
    teacher = recipe.pop("teacher", None) or env
    if not isinstance(teacher, DiffusionPolicy):
        teacher = load(teacher)
        if not isinstance(teacher, DiffusionPolicy) or teacher.config.consistency:
            raise InputError(f"teacher={recipe.get('teacher', env)!r} is not a diffusion policy")
    cfg = teacher.config
    _, windows = DiffusionPolicy.for_demonstrations(
        demos, env_spec(env), n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon,
        down_dims=cfg.down_dims)
    student, history = distill_consistency(
        teacher, windows, steps=opt.get("steps", 1500), batch_size=opt.get("batch_size", 128),
        lr=opt.get("lr", 1e-3), seed=seed, progress=progress, **recipe)
    if out_dir is not None:
        student.save_pretrained(out_dir)
    return student, history


def checkpoint_path(name: str) -> Path:
    """Folder of a shipped checkpoint (``pendulum``, ``pointmass``, ``pointmass_planner``)."""
    path = CHECKPOINT_ROOT / name
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in CHECKPOINT_ROOT.iterdir()) if CHECKPOINT_ROOT.is_dir() \
            else []
        raise InputError(f"no shipped checkpoint {name!r}; shipped: {shipped}")
    return path


def load(name_or_path: str | os.PathLike, *, preset: str | None = None, **overrides: Any
         ) -> nn.Module:
    """A trained policy or planner: a shipped checkpoint by name, or a saved folder.

    Args:
        name_or_path: ``"pendulum"``, ``"pointmass"``, ``"pointmass_planner"`` (shipped), or a
            folder written by :func:`train` / ``save_pretrained``. A ``Path``, or a string
            with a path separator, is always a folder (a missing one is an error naming it).
        preset: a :data:`~.policy.PRESETS` name (``"rti"``, ``"ddim10"``, ...) applied first;
            ``"cp1"`` / ``"cp2"`` of a shipped env load its consistency student.
        **overrides: config fields (inference settings such as ``mode`` or ``steps``).

    Example:
        >>> from pydiff.domains.policy import load
        >>> load("pointmass", preset="rti").config.mode
        'rti'
    """
    from pydiff.pretrained import load_config

    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"preset={preset!r}; expected one of {sorted(PRESETS)}")
        overrides = {**PRESETS[preset], **overrides}
    path = Path(name_or_path)
    text = os.fspath(name_or_path)
    is_path = isinstance(name_or_path, os.PathLike) or os.sep in text or (
        os.altsep is not None and os.altsep in text)
    if not is_path and not (path / "config.json").is_file():
        # a consistency preset of a shipped env loads that env's shipped student
        student = preset in CONSISTENCY_PRESETS and (CHECKPOINT_ROOT / text).is_dir()
        path = checkpoint_path(f"{text}_consistency" if student else text)
        overrides = {**SHIPPED_INFERENCE.get(text, {}), **overrides}
    kind = load_config(path).get("net", {}).get("class", "")
    cls = TrajectoryPlanner if kind.endswith(":TrajectoryPlanner") else DiffusionPolicy
    model = cls.from_pretrained(path, **overrides)
    if preset is not None:
        check_student(model, preset, os.fspath(name_or_path))
    return model


__all__ = ["train", "load", "checkpoint_path", "RECIPES", "CHECKPOINT_ROOT", "MODEL_TYPES"]
