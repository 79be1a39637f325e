"""The sampling API: :class:`MoleculeGenerator` turns the joint model into RDKit molecules.

``MoleculeGenerator.from_pretrained()`` loads the shipped checkpoint (trained by
``pydiff molecules train``); ``.sample(n)`` draws molecule sizes from the training set's
atom-count histogram (or takes them from ``atoms``), starts from the priors (zero centre-of-mass
Gaussian positions, the categorical priors of atom types and charges) and runs one
:func:`pydiff.sample` call with :class:`pydiff.categorical.JointSolver` (any core solver on the
positions, ancestral steps on the types) and the :class:`pydiff.hooks.ZeroCenterOfMass`
projection; RDKit then builds each molecule (:func:`.chemistry.to_mol`: bonds by
``rdDetermineBonds``, invalid ones kept and marked). With ``reward=`` the run is steered by
:class:`pydiff.guidance.SVDD` (derivative-free: candidate steps resampled by an RDKit property of
the molecule built from x0-hat, :mod:`.rewards`), or with ``guidance="gradient"`` by
:class:`pydiff.guidance.JointGradientGuidance`: the gradient of a small trained QED regressor
(:mod:`.regressor`) on x0-hat and the atom-type probabilities, added to the positions' score.

Example:
    >>> from pydiff.domains.molecules import MoleculeGenerator
    >>> gen = MoleculeGenerator.from_pretrained()
    >>> mols = gen.sample(2, atoms=9, steps=5, seed=0)
    >>> [m.GetNumAtoms() for m in mols], mols[0].GetConformer().Is3D()
    ([9, 9], True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rdkit import Chem

import pydiff
from pydiff.categorical import JointDenoiser, JointSolver
from pydiff.errors import InputError
from pydiff.guidance import SVDD, JointGradientGuidance
from pydiff.pretrained import from_pretrained, load_config, save_pretrained

from .chemistry import to_mol
from .data import ATOM_TYPES, CHARGES
from .model import MoleculeNet, centre, make_model
from .regressor import PropertyRegressor

Tensor = torch.Tensor
PRETRAINED = Path(__file__).parent / "pretrained" / "model"
MIN_ATOMS, MAX_ATOMS = 2, 64
GUIDED_SOLVER = "ddpm"  # SVDD needs a stochastic position step (candidates must differ)
GUIDANCE = ("svdd", "gradient")
GRADIENT_REWARDS = ("qed",)  # the properties a shipped regressor predicts


class MoleculeGenerator:
    """A trained joint model plus what sampling needs from training (see the module docstring).

    Args:
        model: the :class:`pydiff.categorical.JointDenoiser` (from :func:`make_model`).
        metadata: ``atom_counts`` (``{count: molecules}`` of the training set), ``type_prior``,
            ``charge_prior`` and the training recipe.
    """

    def __init__(self, model: JointDenoiser, metadata: dict[str, Any]):
        self.model, self.metadata = model, dict(metadata)
        counts = {int(k): float(v) for k, v in metadata["atom_counts"].items()}
        self.sizes = torch.tensor(sorted(counts), dtype=torch.long)
        self.size_probs = torch.tensor([counts[k] for k in sorted(counts)], dtype=torch.float64)
        self.size_probs /= self.size_probs.sum()

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Weights and config (the statistics in its metadata) into folder ``path``."""
        return save_pretrained(self.model.net, path, metadata=self.metadata)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> MoleculeGenerator:
        """Load a folder written by :meth:`save_pretrained` (default: the shipped model)."""
        path = PRETRAINED if path is None else Path(path)
        metadata = load_config(path)["metadata"]
        for key in ("atom_counts", "type_prior", "charge_prior"):
            if key not in metadata:
                raise pydiff.pretrained.CheckpointError(
                    f"{path} is not a molecule checkpoint: its metadata lacks {key!r}")
        net = from_pretrained(path, device=device)
        if not isinstance(net, MoleculeNet):
            raise pydiff.pretrained.CheckpointError(
                f"{path} holds a {type(net).__name__}, not a MoleculeNet")
        model = make_model(net, type_prior=metadata["type_prior"],
                           charge_prior=metadata["charge_prior"])
        return cls(model, metadata)

    # -- sampling ------------------------------------------------------------------------------
    def atom_counts(self, n: int, atoms: int | Sequence[int] | None,
                    generator: torch.Generator) -> list[int]:
        """``n`` molecule sizes: drawn from the training histogram, or as given."""
        if atoms is None:
            idx = torch.multinomial(self.size_probs, n, replacement=True, generator=generator)
            return self.sizes[idx].tolist()
        sizes = [atoms] * n if isinstance(atoms, int) else list(atoms)
        if len(sizes) != n:
            raise InputError(f"atoms has {len(sizes)} sizes for n={n} molecules; give one "
                             "integer or one per molecule")
        for k in sizes:
            if isinstance(k, bool) or not isinstance(k, int) or not MIN_ATOMS <= k <= MAX_ATOMS:
                raise InputError(f"atoms={k!r}: a molecule needs {MIN_ATOMS} to {MAX_ATOMS} "
                                 "atoms (hydrogens included)")
        return sizes

    def sample_state(self, sizes: Sequence[int], *, steps: int = 50, solver: str = "dpmpp_2m",
                     generator: torch.Generator | None = None,
                     reward: Callable[[dict[str, Tensor]], Tensor] | None = None,
                     candidates: int = 8, objective: Callable | None = None,
                     scale: float = 1.0, progress: bool = False) -> dict[str, Tensor]:
        """The joint state after sampling molecules of ``sizes`` atoms: ``positions [B, N, 3]``,
        ``atom_types`` / ``charges [B, N]`` (indices), ``mask [B, N]``. ``reward`` steers by
        SVDD, ``objective(x0, t) -> [B]`` (of the clean estimate, differentiable) by gradient
        guidance with ``scale``."""
        b, n = len(sizes), max(sizes)
        mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
        procs = self.model.processes
        pos = pydiff.prior(self.model.schedule, (b, n, 3), generator=generator)
        x = {"positions": centre(pos, mask), "mask": mask,
             "atom_types": procs["atom_types"].prior((b, n), generator),
             "charges": procs["charges"].prior((b, n), generator)}
        hook = pydiff.hooks.ZeroCenterOfMass(key="positions", mask=mask)
        if reward is None:
            method: Any = JointSolver(solver)
        else:
            method = SVDD(JointSolver(solver), reward, candidates=candidates)
        model: Any = self.model
        if objective is not None:
            model = JointGradientGuidance(self.model, objective, scale=scale)
        with torch.no_grad():
            return pydiff.sample(model, x, method, steps=steps, generator=generator,
                                 hooks=[hook], progress=progress)

    def sample(self, n: int, atoms: int | Sequence[int] | None = None, *, steps: int = 50,
               solver: str | None = None, seed: int = 0, reward: str | Callable | None = None,
               guidance: str | None = None, candidates: int = 8, scale: float = 1.0,
               regressor: str | os.PathLike | None = None, batch_size: int = 250,
               progress: bool = False) -> list[Chem.Mol]:
        """``n`` molecules as ``Chem.Mol`` with hydrogens, a 3D conformer and bonds from
        ``rdDetermineBonds`` (property ``valid`` = "1"/"0"; invalid ones are kept).

        Args:
            n: number of molecules.
            atoms: atoms per molecule (hydrogens included): one integer, one per molecule, or
                None to draw sizes from the training distribution.
            steps: solver steps.
            solver: the core solver on the positions (default ``"dpmpp_2m"``; with a reward,
                ``"ddpm"``, since SVDD's candidates need a stochastic step).
            seed: seeds the sizes, the priors and every draw.
            reward: steer by this reward (a name of :data:`.rewards.REWARDS` or a callable
                ``reward(list of Chem.Mol) -> list of float``); None samples unguided.
            guidance: ``"svdd"`` (the default when ``reward`` is given: derivative-free) or
                ``"gradient"`` (the gradient of a trained regressor of the reward on x0-hat;
                ``reward="qed"`` only).
            candidates: SVDD's candidate next states per step.
            scale: gradient guidance's scale.
            regressor: gradient guidance's regressor folder (default: the shipped QED one).
            batch_size: molecules sampled together.
        """
        from .rewards import molecule_reward

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}")
        if guidance not in (None, *GUIDANCE):
            raise InputError(f"guidance={guidance!r} is not known; expected one of {GUIDANCE}")
        if guidance is not None and reward is None:
            raise InputError(f"guidance={guidance!r} needs a reward (e.g. reward='qed')")
        if guidance == "gradient" and reward not in GRADIENT_REWARDS:
            raise InputError(f"guidance='gradient' steers by a trained regressor, which exists "
                             f"for reward in {GRADIENT_REWARDS}, not {reward!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
            raise InputError(f"scale must be a number >= 0, got {scale!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise InputError(f"candidates must be an integer >= 1, got {candidates!r}")
        if solver is None:
            solver = "dpmpp_2m" if reward is None else GUIDED_SOLVER
        if solver not in pydiff.available_solvers():
            raise InputError(f"solver={solver!r} is not a pydiff solver; expected one of "
                             f"{pydiff.available_solvers()}")
        score = None if reward is None else molecule_reward(reward)
        objective = None
        if guidance == "gradient":
            objective = property_objective(PropertyRegressor.from_pretrained(regressor))
        g = torch.Generator().manual_seed(seed)
        sizes = self.atom_counts(n, atoms, g)
        mols: list[Chem.Mol] = []
        for start in range(0, n, batch_size):
            part = sizes[start:start + batch_size]
            fn = None
            if score is not None and objective is None:
                fn = lambda x0: torch.tensor(score(state_to_mols(x0)))  # noqa: E731
            state = self.sample_state(part, steps=steps, solver=solver, generator=g, reward=fn,
                                      candidates=candidates, objective=objective, scale=scale,
                                      progress=progress)
            built = state_to_mols(state)
            if score is not None:
                for mol, value in zip(built, score(built)):
                    mol.SetProp("reward", f"{value:.4f}")
            mols.extend(built)
        return mols


def property_objective(regressor: PropertyRegressor) -> Callable[[dict[str, Tensor], Tensor],
                                                                 Tensor]:
    """Gradient guidance's objective: the regressor's property of the clean estimate (x0-hat
    positions, the model's atom-type and charge probabilities), one value per molecule."""
    def objective(x0: dict[str, Tensor], t: Tensor) -> Tensor:
        pos = x0["positions"]
        return regressor({"positions": pos, "atom_types": x0["atom_types"].to(pos.dtype),
                          "charges": x0["charges"].to(pos.dtype), "mask": x0["mask"]})
    return objective


def state_to_mols(state: dict[str, Tensor]) -> list[Chem.Mol]:
    """RDKit molecules of a joint state (its real atoms only), by :func:`.chemistry.to_mol`."""
    mols = []
    pos, mask = state["positions"].double(), state["mask"].bool()
    for b in range(pos.shape[0]):
        m = mask[b]
        symbols = [ATOM_TYPES[i] for i in state["atom_types"][b][m].tolist()]
        charges = [CHARGES[i] for i in state["charges"][b][m].tolist()]
        mols.append(to_mol(symbols, charges, pos[b][m].numpy()))
    return mols


__all__ = ["MoleculeGenerator", "state_to_mols", "property_objective", "PRETRAINED",
           "MIN_ATOMS", "MAX_ATOMS", "GUIDANCE", "GRADIENT_REWARDS"]
