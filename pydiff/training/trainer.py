"""The training loop: one :class:`Trainer` for every model in pydiff and its domains.

``Trainer(model, data, loss_fn=..., max_steps=...)`` trains ``model`` (a
:class:`pydiff.Denoiser` around an ``nn.Module``, or any ``nn.Module``) on an iterable of
batches with a user loss ``loss_fn(model, batch, generator) -> loss`` or ``(loss, info)``; the
default is :class:`pydiff.training.DiffusionLoss`. It brings:

- AdamW (or any optimizer), an LR schedule (``"cosine"``/``"constant"`` with warmup, or any
  ``LRScheduler``), gradient clipping, EMA (:class:`pydiff.training.EMA`);
- mixed precision: ``precision="bf16"`` runs the forward pass under ``torch.autocast`` in
  bfloat16 (CPU or CUDA) while weights, gradients and optimizer state stay float32;
- data parallelism under ``torchrun``: parameters are broadcast from rank 0, gradients averaged
  with bucketed all-reduces, each rank reads its shard (use :class:`BatchLoader`), rank 0 logs
  and writes checkpoints;
- a tqdm progress bar, a ``history`` of logged values, and callbacks (:class:`Every` runs an
  evaluation function every ``n`` steps);
- stateful losses: a ``loss_fn`` with ``after_step(trainer)`` is called after each optimizer
  step, and one with ``state_dict``/``load_state_dict`` is checkpointed (the distillation
  recipes of :mod:`pydiff.training.distill` keep their target networks this way);
- checkpoints that resume exactly: model, EMA, optimizer, LR schedule, step, the noise
  generator, the global RNGs (torch, CUDA, Python, NumPy) and the data position (for data
  sources with ``state_dict``; other iterables are replayed by skipping the consumed batches).

Randomness: the loss draws from ``trainer.generator`` (seeded by ``seed`` and the rank).

Example:
    >>> import torch, pydiff
    >>> from pydiff.testing import GaussianMixture
    >>> from pydiff.training import Trainer, SampledBatches
    >>> from pydiff.training.toy import ToyMLP
    >>> ring = GaussianMixture.ring()
    >>> model = pydiff.Denoiser(ToyMLP(hidden=32), pydiff.VPSchedule(), prediction="eps")
    >>> data = SampledBatches(lambda n, g: ring.sample(n, g).float(), 64)
    >>> trainer = Trainer(model, data, max_steps=20, lr=1e-3, ema=0.9, progress=False)
    >>> trainer.fit().step
    20
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..denoiser import Denoiser
from ..files import atomic_output, check_output, write_text
from ..model import Model
from .distributed import (
    all_reduce_gradients,
    all_reduce_mean,
    barrier,
    broadcast_module,
    dist_info,
)
from .ema import EMA
from .losses import DiffusionLoss
from .lr import WarmupCosine, constant_with_warmup, cosine_with_warmup

Tensor = torch.Tensor
LossFn = Callable[[Any, Any, torch.Generator], Any]
CHECKPOINT_FORMAT = "pydiff-trainer"
CHECKPOINT_VERSION = 1
PRECISIONS = ("fp32", "bf16")


class Callback:
    """Hooks into :meth:`Trainer.fit`; override what you need.

    ``on_step_end`` may return a dict of values to log (they go to ``trainer.history``).
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> dict[str, Any] | None:
        return None

    def on_fit_end(self, trainer: Trainer) -> None:
        pass


class Every(Callback):
    """Run ``fn(trainer) -> dict | None`` every ``n`` steps (and at the last step if ``final``).

    Under torchrun it runs on every rank (check ``trainer.info.rank`` to evaluate on one).

    Example: ``Every(500, lambda tr: {"energy": evaluate(tr.ema_model())})``.
    """

    def __init__(self, n: int, fn: Callable[[Trainer], dict[str, Any] | None],
                 final: bool = True):
        if n < 1:
            raise ValueError(f"Every(n={n}): n must be >= 1")
        self.n, self.fn, self.final = n, fn, final

    def on_step_end(self, trainer, logs):
        if trainer.step % self.n == 0 or (self.final and trainer.step == trainer.max_steps):
            return self.fn(trainer)
        return None


class BudgetSchedule(Callback):
    """End a cosine learning-rate schedule when a wall-clock budget ends, whatever the pace.

    A budgeted run on a shared machine plans its steps from an early pace; when the load then
    rises, ``fit(time_budget=)`` stops the run long before the planned last step, with the
    learning rate still high (and when the load falls, the schedule ends early and the rest
    of the budget trains at the floor). Every ``every`` steps this re-plans the cosine's last
    step (the trainer's :class:`~pydiff.training.lr.WarmupCosine` factor) as the current step
    plus the steps that the remaining budget holds at the pace of the last ``every`` steps,
    capped at ``max_steps``. Pass the same ``seconds`` to ``fit(time_budget=)`` and give the
    trainer ``max_steps`` as a ceiling (the run can then be longer than the first plan).

    Example:
        >>> import torch
        >>> from pydiff.training import BudgetSchedule, Trainer
        >>> net = torch.nn.Linear(2, 1)
        >>> data = [torch.randn(8, 2)] * 4
        >>> trainer = Trainer(net, data, loss_fn=lambda m, x, g: m(x).pow(2).mean(),
        ...                   max_steps=10_000, lr_scheduler="cosine", progress=False,
        ...                   callbacks=[BudgetSchedule(0.2, every=5)])
        >>> trainer.fit(time_budget=0.2).step < 10_000
        True
    """

    def __init__(self, seconds: float, every: int = 50):
        if not seconds > 0:
            raise ValueError(f"BudgetSchedule(seconds={seconds}): must be > 0")
        if every < 1:
            raise ValueError(f"BudgetSchedule(every={every}): must be >= 1")
        self.seconds, self.every = float(seconds), int(every)

    def _factor(self, trainer: Trainer) -> WarmupCosine:
        lambdas = getattr(trainer.lr_scheduler, "lr_lambdas", [None])
        if not all(isinstance(f, WarmupCosine) for f in lambdas):
            raise ValueError("BudgetSchedule needs the trainer's lr_scheduler='cosine'")
        return lambdas[0]

    def on_fit_start(self, trainer: Trainer) -> None:
        self._factor(trainer)  # refuse another schedule before any step
        self.started = self._mark = time.perf_counter()
        self._mark_step = trainer.step

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> dict[str, Any] | None:
        if trainer.step - self._mark_step < self.every:
            return None
        now = time.perf_counter()
        pace = (now - self._mark) / (trainer.step - self._mark_step)
        self._mark, self._mark_step = now, trainer.step
        left = max(0.0, self.seconds - (now - self.started))
        last = min(trainer.max_steps, trainer.step + max(1, int(left / pace)))
        factors = self._factor(trainer), *trainer.lr_scheduler.lr_lambdas[1:]
        for factor in factors:
            factor.total_steps = max(last, factor.warmup_steps + 1)
        return {"planned_steps": last}


class Trainer:
    """Train a model on an iterable of batches (see the module docstring).

    Args:
        model: a :class:`pydiff.Denoiser` whose ``net`` is an ``nn.Module``, or an ``nn.Module``.
        data: an iterable of batches (endless, or re-iterated per epoch);
            :class:`BatchLoader` / :class:`SampledBatches` resume their position exactly.
        loss_fn: ``loss_fn(model, batch, generator) -> loss | (loss, info)``; default
            :class:`DiffusionLoss` (Denoisers only).
        max_steps: optimizer steps of :meth:`fit`.
        optimizer: an optimizer over the module's parameters (default AdamW with ``lr`` and
            ``weight_decay``).
        lr_scheduler: ``"constant"``, ``"cosine"`` (both with ``warmup_steps``), an
            ``LRScheduler`` on ``optimizer``, or None.
        ema: an :class:`EMA`, a constant decay (float), True (Diffusion Policy's warmup
            schedule) or None.
        grad_clip: max gradient norm (None: no clipping).
        accumulate: micro-batches per optimizer step (gradient accumulation).
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        seed: seeds the noise generator (plus the rank).
        callbacks: :class:`Callback` objects.
        checkpoint_dir, checkpoint_every, keep_checkpoints: periodic checkpoints
            ``checkpoint_dir/step_XXXXXXXX`` (the last ``keep_checkpoints`` are kept).
        resume: ``"latest"`` (resume from ``checkpoint_dir`` if it holds a checkpoint), a
            checkpoint folder, or False.
        progress: show a progress bar (rank 0 only); ``log_every`` steps between log entries.
        device: where the module and batches live (default: the module's device).
    """

    def __init__(
        self,
        model: Denoiser | nn.Module,
        data: Iterable[Any],
        *,
        loss_fn: LossFn | None = None,
        max_steps: int = 1000,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_scheduler: str | torch.optim.lr_scheduler.LRScheduler | None = None,
        warmup_steps: int = 0,
        ema: EMA | float | bool | None = None,
        grad_clip: float | None = None,
        accumulate: int = 1,
        precision: str = "fp32",
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 2,
        resume: bool | str | os.PathLike = False,
        progress: bool = True,
        log_every: int = 10,
        device: torch.device | str | None = None,
    ):
        # a Denoiser, or a model of the same shape (pydiff.categorical.JointDenoiser) around a net
        wraps = isinstance(model, Model) and isinstance(getattr(model, "net", None), nn.Module)
        module = model.net if wraps else model
        if not isinstance(module, nn.Module):
            raise TypeError(f"model must be an nn.Module or a Denoiser around one, got "
                            f"{type(module).__name__}")
        if loss_fn is None:
            if not isinstance(model, Denoiser):
                raise ValueError("loss_fn is required for models that are not a pydiff.Denoiser")
            loss_fn = DiffusionLoss()
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
        if max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {max_steps}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir")
        self.info = dist_info()
        nccl = self.info.world_size > 1 and torch.distributed.get_backend() == "nccl"
        if device is None and nccl:
            device = f"cuda:{self.info.local_rank}"  # one GPU per rank
        self.device = torch.device(device) if device is not None else _module_device(module)
        module.to(self.device)
        broadcast_module(module)  # every rank starts from rank 0's weights
        self.model, self.module, self.data, self.loss_fn = model, module, data, loss_fn
        self.max_steps, self.grad_clip, self.precision = max_steps, grad_clip, precision
        self.accumulate = int(accumulate)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.AdamW(self.params, lr=lr,
                                                        weight_decay=weight_decay)
        self.lr_scheduler = _make_scheduler(lr_scheduler, self.optimizer, warmup_steps, max_steps)
        if ema is True:
            ema = EMA(module)
        elif isinstance(ema, float):
            ema = EMA(module, decay=ema)
        elif ema is False:
            ema = None
        self.ema: EMA | None = ema
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        self.seed = seed
        self.generator = torch.Generator(gen_device).manual_seed(seed + 7919 * self.info.rank)
        self.callbacks = list(callbacks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.checkpoint_dir is not None:
            check_output(self.checkpoint_dir, "checkpoint_dir", folder=True)  # before training
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.progress, self.log_every = progress, max(1, int(log_every))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._iterator = None
        self._replay = 0  # batches of a stateless iterable to skip after resuming
        if resume:
            path = self.latest_checkpoint() if resume in (True, "latest") else Path(resume)
            if path is not None:
                self.load_checkpoint(path)
            elif resume not in (True, "latest"):
                raise FileNotFoundError(f"resume={resume!r}: no such checkpoint")

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, steps: int | None = None, *, time_budget: float | None = None) -> Trainer:
        """Train until ``max_steps`` (or ``steps`` more steps); returns the trainer.

        ``time_budget``: seconds of wall clock; training stops after the step that crosses it
        (a budgeted run on a shared or slow machine; ``trainer.step`` says how far it got).
        """
        if time_budget is not None and not time_budget > 0:
            raise ValueError(f"time_budget must be > 0 seconds, got {time_budget}")
        started = time.perf_counter()
        end = self.max_steps if steps is None else self.step + int(steps)
        bar = None
        if self.progress and self.info.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc="train", dynamic_ncols=True)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        running: Tensor | None = None
        count = 0
        while self.step < end:
            logs = self.train_step(*(self._next_batch() for _ in range(self.accumulate)))
            loss = logs.pop("loss_tensor")
            running = loss if running is None else running + loss
            count += 1
            if self.step % self.log_every == 0 or self.step == end:
                logs["loss"] = float(all_reduce_mean(running / count))
                running, count = None, 0
                self._log(logs, bar)
            extra: dict[str, Any] = {}
            for cb in self.callbacks:
                out = cb.on_step_end(self, logs)
                if out:
                    extra.update(out)
            if extra:
                self._log({"step": self.step, **extra}, bar)
            if bar is not None:
                bar.update(1)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save_checkpoint()
            if time_budget is not None and time.perf_counter() - started > time_budget:
                if count:  # the run's last loss (this rank's: ranks may stop at different steps)
                    self._log({"step": self.step, "loss": float(running / count)}, bar)
                break
        if bar is not None:
            bar.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self

    def train_step(self, batch: Any, *more_batches: Any) -> dict[str, Any]:
        """One optimizer step on ``batch`` (gradients accumulated over ``more_batches`` too).

        Each micro-batch's loss is divided by their number, so the step equals one on the
        concatenated batch for losses that are means over samples. Returns the step's logs.
        """
        self.module.train()
        micro = (batch, *more_batches)
        self.optimizer.zero_grad(set_to_none=True)
        total: Tensor | None = None
        info: dict[str, Any] = {}
        for mb in micro:
            mb = _to_device(mb, self.device)
            autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                        if self.precision == "bf16" else contextlib.nullcontext())
            with autocast:
                out = self.loss_fn(self.model, mb, self.generator)
            loss, info = out if isinstance(out, tuple) else (out, {})
            if not torch.is_tensor(loss) or loss.dim() != 0:
                raise ValueError("loss_fn must return a scalar tensor (or (scalar, info)), got "
                                 f"{type(loss).__name__} {getattr(loss, 'shape', '')}")
            (loss / len(micro)).backward()
            total = loss.detach() if total is None else total + loss.detach()
        all_reduce_gradients(self.params)
        logs: dict[str, Any] = {"step": self.step + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.grad_clip is not None:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module)
        self.step += 1
        after_step = getattr(self.loss_fn, "after_step", None)
        if after_step is not None:  # e.g. a distillation recipe's target network follows
            after_step(self)
        logs["loss_tensor"] = total / len(micro)
        logs.update(dict(info))  # the last micro-batch's info
        return logs

    def _next_batch(self) -> Any:
        while self._replay > 0:  # a resumed stateless iterable: skip what was consumed
            self._replay -= 1
            self._fetch()
        return self._fetch()

    def _fetch(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self.data)
        try:
            return next(self._iterator)
        except StopIteration:  # a finite iterable: start the next epoch
            self._iterator = iter(self.data)
            try:
                return next(self._iterator)
            except StopIteration:
                raise ValueError("data yielded no batches") from None

    def _log(self, logs: dict[str, Any], bar: Any) -> None:
        row = {k: float(v) if torch.is_tensor(v) else v for k, v in logs.items()}
        self.history.append(row)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                             if k != "step" and isinstance(v, float)}, refresh=False)

    # -- models to evaluate and save -----------------------------------------------------------
    def ema_model(self) -> Denoiser | nn.Module:
        """The model with EMA weights (a Denoiser sharing the schedule), or the model itself."""
        if self.ema is None:
            return self.model
        if isinstance(self.model, Model):
            new = object.__new__(type(self.model))
            new.__dict__.update(self.model.__dict__)
            new.net = self.ema.module
            return new
        return self.ema.module

    def save_pretrained(self, path: str | os.PathLike, *, use_ema: bool = True,
                        **kwargs: Any) -> Path | None:
        """:func:`pydiff.pretrained.save_pretrained` of the (EMA) model, on rank 0."""
        from ..pretrained import save_pretrained
        if self.info.rank != 0:
            return None
        return save_pretrained(self.ema_model() if use_ema else self.model, path, **kwargs)

    # -- checkpoints ---------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint in ``checkpoint_dir`` (None if there is none)."""
        if self.checkpoint_dir is None:
            raise ValueError("resume='latest' needs checkpoint_dir")
        pointer = self.checkpoint_dir / "latest"
        if not pointer.is_file():
            return None
        return self.checkpoint_dir / pointer.read_text().strip()

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write everything exact resumption needs to ``path`` (default: the next step folder).

        Rank 0 writes the shared state; every rank writes its own RNG and data position.
        """
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("save_checkpoint needs a path or the trainer's checkpoint_dir")
            path = self.checkpoint_dir / f"step_{self.step:08d}"
        path = Path(path)
        rank = self.info.rank
        check_output(path, "checkpoint", folder=True)
        path.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            state = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
                "world_size": self.info.world_size, "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": (None if self.lr_scheduler is None
                                 else self.lr_scheduler.state_dict()),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "loss_fn": (self.loss_fn.state_dict() if hasattr(self.loss_fn, "state_dict")
                            else None),
                "history": self.history,
            }
            _atomic_save(state, path / "trainer.pt")
        local = {"generator": self.generator.get_state(), "rng": _rng_state(),
                 "data": self.data.state_dict() if hasattr(self.data, "state_dict") else None,
                 "step": self.step}
        _atomic_save(local, path / f"rank{rank}.pt")
        barrier()
        if rank == 0 and self.checkpoint_dir is not None and path.parent == self.checkpoint_dir:
            _atomic_write(self.checkpoint_dir / "latest", path.name)
            self._prune()
        barrier()
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore the state :meth:`save_checkpoint` wrote (same world size)."""
        path = Path(path)
        if not (path / "trainer.pt").is_file():
            raise FileNotFoundError(f"{path} is not a trainer checkpoint (no trainer.pt)")
        state = torch.load(path / "trainer.pt", map_location=self.device, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}/trainer.pt is not a pydiff trainer checkpoint")
        if state["version"] > CHECKPOINT_VERSION:
            raise ValueError(f"{path} has trainer checkpoint version {state['version']}, newer "
                             f"than the {CHECKPOINT_VERSION} this pydiff reads: upgrade pydiff")
        if state["world_size"] != self.info.world_size:
            raise ValueError(f"{path} was written by {state['world_size']} processes; resume "
                             f"with the same world size (got {self.info.world_size})")
        local_file = path / f"rank{self.info.rank}.pt"
        local = torch.load(local_file, map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["lr_scheduler"] is None) != (self.lr_scheduler is None):
            raise ValueError("the checkpoint and this trainer disagree on having an LR scheduler")
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if (state["ema"] is None) != (self.ema is None):
            raise ValueError("the checkpoint and this trainer disagree on having an EMA")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("loss_fn") is not None:
            if not hasattr(self.loss_fn, "load_state_dict"):
                raise ValueError(f"{path} holds the state of a stateful loss_fn (a distillation "
                                 f"recipe's target network); this trainer's loss_fn "
                                 f"{type(self.loss_fn).__name__} cannot load it")
            self.loss_fn.load_state_dict(state["loss_fn"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.generator.set_state(local["generator"])
        _set_rng_state(local["rng"])
        self._iterator = None
        if local["data"] is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(local["data"])
            self._replay = 0
        else:
            self._replay = self.step * self.accumulate

    def _prune(self) -> None:
        steps = sorted(p for p in self.checkpoint_dir.glob("step_*") if p.is_dir())
        for old in steps[:-self.keep_checkpoints] if self.keep_checkpoints > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    def __repr__(self) -> str:
        return (f"Trainer(step={self.step}/{self.max_steps}, module={type(self.module).__name__}, "
                f"precision={self.precision!r}, world_size={self.info.world_size})")


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _make_scheduler(kind, optimizer, warmup_steps, max_steps):
    if kind is None:
        return constant_with_warmup(optimizer, warmup_steps) if warmup_steps else None
    if kind == "constant":
        return constant_with_warmup(optimizer, warmup_steps)
    if kind == "cosine":
        return cosine_with_warmup(optimizer, warmup_steps, max(max_steps, warmup_steps + 1))
    if isinstance(kind, torch.optim.lr_scheduler.LRScheduler):
        return kind
    raise ValueError(f"lr_scheduler={kind!r}; expected 'constant', 'cosine', an LRScheduler or "
                     "None")


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 (user code may use the legacy global RNG)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # as plain lists: torch.load(weights_only=True) refuses numpy arrays
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    legacy = (np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:])
    np.random.set_state(legacy)  # noqa: NPY002


def _atomic_save(obj: Any, file: Path) -> None:
    with atomic_output(file, "checkpoint") as tmp:
        torch.save(obj, tmp)


def _atomic_write(file: Path, text: str) -> None:
    write_text(file, text, "checkpoint pointer")


__all__ = ["Trainer", "Callback", "Every", "BudgetSchedule"]
