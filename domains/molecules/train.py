"""The molecule training recipe, on :mod:`pydiff.training` (no loop here).

The shipped molecules (:func:`pydiff.domains.molecules.load_molecules`, training split) become
one padded tensor batch; :class:`pydiff.training.Trainer` trains the joint model
(:func:`make_model`: positions by noise prediction with zero-centre-of-mass noise, atom types
and charges by marginal-prior categorical diffusion) with
:func:`pydiff.categorical.joint_diffusion_loss`. The atom-type and charge frequencies and the
distribution of atom counts of the training set are stored with the weights: the first are the
categorical priors, the last is where sampling draws molecule sizes from.

``time_budget`` bounds the wall clock (:meth:`pydiff.training.Trainer.fit` stops after the step
that crosses it) (the learning rate is constant after warmup, so stopping early leaves a
consistent model; the EMA weights are the ones saved, with the warmup schedule of
:class:`pydiff.training.EMA`: a constant decay would still hold much of the random
initialisation after the few hundred steps a CPU budget allows).

Example:
    >>> from pydiff.domains.molecules.train import TrainConfig, train
    >>> gen = train(TrainConfig(steps=2, hidden_dim=8, num_layers=1, batch_size=4,
    ...                         limit=16, progress=False))
    >>> sorted(gen.metadata["atom_counts"])[:1] != []
    True
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pydiff.categorical import joint_diffusion_loss
from pydiff.errors import InputError
from pydiff.files import check_output
from pydiff.training import BatchLoader, Trainer
from pydiff.training.time_samplers import LogitNormal, Uniform

from .data import ATOM_TYPES, CHARGES, load_molecules, to_tensors
from .generator import MoleculeGenerator
from .model import MoleculeNet, centre, make_model

Tensor = torch.Tensor


@dataclass
class TrainConfig:
    """Recipe knobs (the shipped checkpoint's recipe is stored in its metadata)."""

    steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    hidden_dim: int = 48
    num_layers: int = 3
    seed: int = 0
    threads: int = 1
    limit: int | None = None  # training molecules used (None: all)
    time_budget: float | None = None  # seconds of training (None: all steps)
    progress: bool = True
    init: str | None = None  # warm start: a checkpoint folder whose weights training starts from
    time_sampler: str = "uniform"  # "uniform" in [t_eps, t_max] or "low_noise" (see TIME_SAMPLERS)
    select: str | None = None  # "NAME:MIN": only molecules whose reward NAME is >= MIN (see select)


# Where the training times fall. Bond orders (hence stability and validity) are decided below
# t ~ 0.4 of the cosine schedule (sigma < 0.6 A: denoising held-out molecules from t = 0.2 gives
# 31% valid ones with a 20-minute model, from t = 0.1 78%), and the first models spent half
# their steps above t = 0.5; "low_noise" (logit-normal, median t = 0.18) puts 32% of them
# below t = 0.1 and 16% above 0.5 (uniform: 10% and 50%).
TIME_SAMPLERS = {"uniform": Uniform(), "low_noise": LogitNormal(mean=-1.5, std=1.5)}


class MoleculeLoss:
    """``loss_fn`` of the Trainer: the joint loss on a padded batch, cropped to its largest
    molecule (padding columns cost the EGNN quadratically and teach it nothing), at times drawn
    by ``time_sampler`` (a name of :data:`TIME_SAMPLERS`)."""

    def __init__(self, time_sampler: str = "uniform"):
        if time_sampler not in TIME_SAMPLERS:
            raise InputError(f"time_sampler={time_sampler!r} is not known; expected one of "
                             f"{sorted(TIME_SAMPLERS)}")
        self.sampler = TIME_SAMPLERS[time_sampler]

    def __call__(self, model: Any, batch: dict[str, Tensor],
                 generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        n = int(batch["mask"].sum(1).max())
        x0 = {k: v[:, :n] for k, v in batch.items()}
        t = self.sampler(model.schedule, x0["positions"].shape, generator)
        out = joint_diffusion_loss(model, x0, generator=generator, mask=x0["mask"],
                                   noise_projection=_centre_noise, t=t)
        return out.loss, {}


def _centre_noise(noise: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
    # the positions live on the zero centre-of-mass subspace: so does their noise
    return {**noise, "positions": centre(noise["positions"], mask)}


def statistics(batch: dict[str, Tensor]) -> dict[str, Any]:
    """Atom-type and charge frequencies (the categorical priors) and the atom-count histogram
    of a padded batch."""
    mask = batch["mask"]
    types = torch.bincount(batch["atom_types"][mask], minlength=len(ATOM_TYPES)).double()
    charges = torch.bincount(batch["charges"][mask], minlength=len(CHARGES)).double()
    counts = Counter(int(n) for n in mask.sum(1))
    return {"type_prior": (types / types.sum()).tolist(),
            "charge_prior": (charges / charges.sum()).tolist(),
            "atom_counts": {str(k): v for k, v in sorted(counts.items())}}


def parse_select(select: str) -> tuple[str, float]:
    """``"NAME:MIN"`` (a reward of :data:`.rewards.REWARDS` and its threshold) as a pair."""
    from .rewards import REWARDS

    name, sep, value = select.partition(":")
    try:
        threshold = float(value)
    except ValueError:
        threshold = float("nan")
    if not sep or name not in REWARDS or threshold != threshold:
        raise InputError(f"select={select!r} is not NAME:MIN with NAME one of {sorted(REWARDS)} "
                         "and MIN a number (e.g. 'qed:0.5', 'rings:0.3')")
    return name, threshold


def select_molecules(mols: list, select: str | None) -> list:
    """The molecules whose reward ``NAME`` is at least ``MIN`` (``select = "NAME:MIN"``): a
    property-selected training subset, e.g. to fine-tune one model per property for
    :class:`pydiff.guidance.SuperDiff`."""
    if select is None:
        return mols
    from .rewards import REWARDS

    name, threshold = parse_select(select)
    kept = [m for m in mols if REWARDS[name](m) >= threshold]
    if not kept:
        raise InputError(f"select={select!r} keeps none of the {len(mols)} training molecules")
    return kept


def _warm_start(net: MoleculeNet, path: str | Path) -> MoleculeNet:
    """``net``'s architecture must match the checkpoint's; its weights are the checkpoint's."""
    start = MoleculeGenerator.from_pretrained(path).model.net
    if start.config != net.config:
        raise InputError(f"init={str(path)!r} holds a network of {start.config}, not the "
                         f"requested {net.config}: pass the same hidden_dim and num_layers")
    return start


def train(config: TrainConfig | None = None, output: str | Path | None = None
          ) -> MoleculeGenerator:
    """Train the joint model on the shipped training molecules and return the generator
    (saved to ``output`` when given)."""
    config = config or TrainConfig()
    if output is not None:
        check_output(output, "output", folder=True)  # before training, not after
    if config.time_sampler not in TIME_SAMPLERS:
        raise InputError(f"time_sampler={config.time_sampler!r} is not known; expected one of "
                         f"{sorted(TIME_SAMPLERS)}")
    if config.select is not None:
        parse_select(config.select)
    if config.time_budget is not None and not config.time_budget > 0:
        raise InputError(f"time_budget must be > 0 seconds, got {config.time_budget}")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # initial weights
    started = time.time()
    batch = to_tensors(select_molecules(load_molecules("train", limit=config.limit),
                                        config.select))
    stats = statistics(batch)
    net = MoleculeNet(hidden_dim=config.hidden_dim, num_layers=config.num_layers)
    if config.init is not None:
        net = _warm_start(net, config.init)
        # the categorical corruption the network learned stays that of its first training:
        # a subset's type frequencies would change the process under the weights (and models
        # fine-tuned on different subsets could no longer be superposed)
        start = MoleculeGenerator.from_pretrained(config.init).metadata
        stats = {**stats, "type_prior": start["type_prior"],
                 "charge_prior": start["charge_prior"]}
    model = make_model(net, type_prior=stats["type_prior"], charge_prior=stats["charge_prior"])
    loader = BatchLoader(batch, min(config.batch_size, batch["mask"].shape[0]), seed=config.seed)
    trainer = Trainer(model, loader, loss_fn=MoleculeLoss(config.time_sampler),
                      max_steps=config.steps, lr=config.lr, lr_scheduler="constant",
                      warmup_steps=config.warmup_steps, ema=True, grad_clip=1.0,
                      seed=config.seed, progress=config.progress, log_every=50)
    budget = None if config.time_budget is None else config.time_budget - (time.time() - started)
    trainer.fit(time_budget=max(budget, 1e-3) if budget is not None else None)
    losses = [row["loss"] for row in trainer.history if "loss" in row]
    previous = _previous_steps(config.init)
    metadata = {**stats, "recipe": asdict(config), "steps_before": previous,
                "molecules": int(batch["mask"].shape[0]),
                "steps_done": trainer.step, "train_seconds": round(time.time() - started, 1),
                "final_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None}
    generator = MoleculeGenerator(trainer.ema_model(), metadata)
    if output is not None:
        generator.save_pretrained(output)
    return generator


def _previous_steps(init: str | Path | None) -> int:
    """Steps the warm start's weights had already trained (0 from scratch)."""
    if init is None:
        return 0
    meta = MoleculeGenerator.from_pretrained(init).metadata
    return int(meta.get("steps_done", 0)) + int(meta.get("steps_before", 0))


__all__ = ["TIME_SAMPLERS", "TrainConfig", "MoleculeLoss", "statistics", "train",
           "select_molecules", "parse_select"]
