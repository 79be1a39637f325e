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
from pydiff.files import check_input_file
from pydiff.guidance import SVDD, JointGradientGuidance, SuperDiff, Superposition
from pydiff.pretrained import from_pretrained, load_config, save_pretrained

from .chemistry import to_mol
from .data import ATOM_TYPES, CHARGES
from .model import MoleculeNet, centre, make_model
from .regressor import PropertyRegressor

Tensor = torch.Tensor
PRETRAINED = Path(__file__).parent / "pretrained" / "model"
# the shipped model fine-tuned on property-selected molecules (``train --init --select``), a
# pair to superpose: high QED (qed:0.5) and at least one ring (rings:0.3)
FINETUNES = {"qed": PRETRAINED.parent / "qed_finetune",
             "rings": PRETRAINED.parent / "rings_finetune"}
MIN_ATOMS, MAX_ATOMS = 2, 64
GUIDED_SOLVER = "ddpm"  # SVDD needs a stochastic position step (candidates must differ)
GUIDANCE = ("svdd", "gradient")
SUPERPOSE_MODES = ("and", "or")
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
                    generator: torch.Generator, above: int = 0) -> list[int]:
        """``n`` molecule sizes: drawn from the training histogram, or as given; all larger than
        ``above`` (a fixed fragment's atoms)."""
        if atoms is None:
            probs = torch.where(self.sizes > above, self.size_probs, 0.0)
            if not probs.sum() > 0:
                raise InputError(f"the fragment has {above} atoms, as many as the largest "
                                 f"training molecule ({int(self.sizes.max())}); pass atoms=")
            idx = torch.multinomial(probs, n, replacement=True, generator=generator)
            return self.sizes[idx].tolist()
        sizes = [atoms] * n if isinstance(atoms, int) else list(atoms)
        if len(sizes) != n:
            raise InputError(f"atoms has {len(sizes)} sizes for n={n} molecules; give one "
                             "integer or one per molecule")
        for k in sizes:
            if isinstance(k, bool) or not isinstance(k, int) or not MIN_ATOMS <= k <= MAX_ATOMS:
                raise InputError(f"atoms={k!r}: a molecule needs {MIN_ATOMS} to {MAX_ATOMS} "
                                 "atoms (hydrogens included)")
            if k <= above:
                raise InputError(f"atoms={k}: the fragment already has {above} atoms; a "
                                 "molecule needs at least one atom more")
        return sizes

    def sample_state(self, sizes: Sequence[int], *, steps: int = 50, solver: str = "dpmpp_2m",
                     generator: torch.Generator | None = None,
                     reward: Callable[[dict[str, Tensor]], Tensor] | None = None,
                     candidates: int = 8, objective: Callable | None = None,
                     scale: float = 1.0, fragment: Chem.Mol | None = None,
                     superpose: MoleculeGenerator | None = None, mode: str = "and",
                     kappa_range: tuple[float, float] | None = None,
                     progress: bool = False) -> dict[str, Tensor]:
        """The joint state after sampling molecules of ``sizes`` atoms: ``positions [B, N, 3]``,
        ``atom_types`` / ``charges [B, N]`` (indices), ``mask [B, N]``. ``reward`` steers by
        SVDD, ``objective(x0, t) -> [B]`` (of the clean estimate, differentiable) by gradient
        guidance with ``scale``; ``fragment`` (a ``Chem.Mol`` with a conformer, checked by
        :func:`load_fragment`) fixes the first atoms of every molecule (:func:`fragment_hooks`),
        and the returned positions put it at its own coordinates; ``superpose`` (another
        generator) samples the superposition of both models (:class:`pydiff.guidance.SuperDiff`,
        ``mode`` ``"and"`` or ``"or"``)."""
        b, n = len(sizes), max(sizes)
        mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
        procs = self.model.processes
        pos = pydiff.prior(self.model.schedule, (b, n, 3), generator=generator)
        x = {"positions": centre(pos, mask), "mask": mask,
             "atom_types": procs["atom_types"].prior((b, n), generator),
             "charges": procs["charges"].prior((b, n), generator)}
        hook = pydiff.hooks.ZeroCenterOfMass(key="positions", mask=mask)
        hooks: list[Any] = [hook]
        if fragment is not None:
            hooks = [*fragment_hooks(fragment, b, n, procs), hook]  # paste, then re-centre
        if reward is None:
            method: Any = JointSolver(solver)
        else:
            method = SVDD(JointSolver(solver), reward, candidates=candidates)
        model: Any = self.model
        if objective is not None:
            model = JointGradientGuidance(self.model, objective, scale=scale)
        if superpose is not None:
            model = Superposition(self.model, superpose.model)
            method = SuperDiff(method, mode, kappa_range=kappa_range)
        with torch.no_grad():
            out = pydiff.sample(model, x, method, steps=steps, generator=generator,
                                hooks=hooks, progress=progress)
        if fragment is not None:
            out = {**out, "positions": place_fragment(out["positions"], mask, fragment)}
        return out

    def sample(self, n: int, atoms: int | Sequence[int] | None = None, *, steps: int = 50,
               solver: str | None = None, seed: int = 0, reward: str | Callable | None = None,
               guidance: str | None = None, candidates: int = 8, scale: float = 1.0,
               regressor: str | os.PathLike | None = None,
               fragment: Chem.Mol | str | os.PathLike | None = None,
               superpose: MoleculeGenerator | str | os.PathLike | None = None,
               mode: str = "and", kappa_range: tuple[float, float] | None = None,
               batch_size: int = 250,
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
            fragment: a fragment to keep (a ``Chem.Mol`` with a conformer, or an SDF file whose
                first record is used, hydrogens as written): its atoms, charges and 3D
                coordinates are fixed as the first atoms of every molecule and the model
                generates the rest (``atoms`` counts the fragment's atoms too; sizes drawn from
                the training set are drawn among those larger than the fragment). The molecule
                carries the property ``fragment_atoms``.
            superpose: a second model (a generator or a model folder, e.g. one fine-tuned on
                other molecules by ``train --select``) to superpose with this one by
                :class:`pydiff.guidance.SuperDiff`: ``mode="and"`` samples where both models'
                densities are equal (molecules both models find likely), ``"or"`` their mixture.
                The weights come from the positions' densities; atom-type and charge
                probabilities are pooled with the same weights. Not with ``reward`` /
                ``guidance``; the solver defaults to ``"ddpm"``.
            mode: ``"and"`` or ``"or"`` (with ``superpose``).
            kappa_range: AND's weight clipped to ``(low, high)`` (see
                :class:`pydiff.guidance.SuperDiff`); None: the exact weight.
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
        if superpose is not None:
            if mode not in SUPERPOSE_MODES:
                raise InputError(f"mode={mode!r} is not known; expected one of "
                                 f"{SUPERPOSE_MODES}")
            if reward is not None:
                raise InputError("superpose= combines two models without a reward; steer "
                                 "(reward=) or superpose, not both")
            if not isinstance(superpose, MoleculeGenerator):
                superpose = MoleculeGenerator.from_pretrained(superpose)
            for key, proc in self.model.processes.items():
                other = superpose.model.processes[key]
                if other.kind != proc.kind or not torch.allclose(other.stationary,
                                                                 proc.stationary):
                    raise InputError(f"superpose: the two models' {key} processes differ "
                                     "(priors); superposed models need one corruption process "
                                     "(fine-tune both from one model: train --init --select)")
        if solver is None:
            solver = "dpmpp_2m" if reward is None and superpose is None else GUIDED_SOLVER
        if solver not in pydiff.available_solvers():
            raise InputError(f"solver={solver!r} is not a pydiff solver; expected one of "
                             f"{pydiff.available_solvers()}")
        score = None if reward is None else molecule_reward(reward)
        objective = None
        if guidance == "gradient":
            objective = property_objective(PropertyRegressor.from_pretrained(regressor))
        frag = None if fragment is None else load_fragment(fragment)
        g = torch.Generator().manual_seed(seed)
        sizes = self.atom_counts(n, atoms, g,
                                 above=0 if frag is None else frag.GetNumAtoms())
        mols: list[Chem.Mol] = []
        for start in range(0, n, batch_size):
            part = sizes[start:start + batch_size]
            fn = None
            if score is not None and objective is None:
                fn = lambda x0: torch.tensor(score(state_to_mols(x0)))  # noqa: E731
            state = self.sample_state(part, steps=steps, solver=solver, generator=g, reward=fn,
                                      candidates=candidates, objective=objective, scale=scale,
                                      fragment=frag, superpose=superpose, mode=mode,
                                      kappa_range=kappa_range, progress=progress)
            built = state_to_mols(state)
            if frag is not None:
                for mol in built:
                    mol.SetProp("fragment_atoms", str(frag.GetNumAtoms()))
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


def load_fragment(fragment: Chem.Mol | str | os.PathLike) -> Chem.Mol:
    """A fragment to keep, checked: a ``Chem.Mol`` as is, or the first record of an SDF file
    (hydrogens as written, not sanitized); it needs a conformer, elements among
    :data:`.data.ATOM_TYPES`, formal charges among :data:`.data.CHARGES` and fewer than
    :data:`MAX_ATOMS` atoms (an :class:`pydiff.InputError` names what is wrong)."""
    from .metrics import check_molecule, read_sdf

    if isinstance(fragment, Chem.Mol):
        mol, where = fragment, "fragment"
        check_molecule(mol, where, known_by="the model knows")
    else:
        path = check_input_file(fragment, "fragment")
        mol, where = read_sdf(path, known_by="the model knows")[0], f"fragment {path}"
    bad = sorted({a.GetFormalCharge() for a in mol.GetAtoms()} - set(CHARGES))
    if bad:
        raise InputError(f"{where} has formal charges {bad}; the model knows only "
                         f"{list(CHARGES)}")
    if not 1 <= mol.GetNumAtoms() < MAX_ATOMS:
        raise InputError(f"{where} has {mol.GetNumAtoms()} atoms; a fragment needs 1 to "
                         f"{MAX_ATOMS - 1}")
    return mol


def fragment_hooks(fragment: Chem.Mol, batch: int, atoms: int,
                   processes: dict[str, Any]) -> list[Any]:
    """The core's inpainting hooks that keep ``fragment`` as the first atoms of each of
    ``batch`` molecules padded to ``atoms``: its positions (:class:`pydiff.hooks.
    InpaintReplace`, fresh noise at each level) and its atom types and charges
    (:class:`pydiff.hooks.InpaintClasses`, corrupted to each level by their processes).

    The frame: the positions live on the zero centre-of-mass subspace of the whole molecule,
    and where the molecule's centre falls is not known before the rest is generated. So the
    fragment is pasted centred on its own centroid and the :class:`pydiff.hooks.
    ZeroCenterOfMass` hook that runs after these re-centres the whole molecule, which
    translates the fragment rigidly: its geometry is kept exactly at every step, and
    :func:`place_fragment` translates the result so that it sits at its given coordinates.
    """
    k = fragment.GetNumAtoms()
    given = torch.tensor(fragment.GetConformer().GetPositions(), dtype=torch.float32)
    pos = torch.zeros(batch, atoms, 3)
    pos[:, :k] = given - given.mean(0)
    fixed = torch.zeros(batch, atoms, dtype=torch.bool)
    fixed[:, :k] = True
    types = torch.zeros(batch, atoms, dtype=torch.long)
    types[:, :k] = torch.tensor([ATOM_TYPES.index(a.GetSymbol()) for a in fragment.GetAtoms()])
    charges = torch.full((batch, atoms), CHARGES.index(0), dtype=torch.long)
    charges[:, :k] = torch.tensor([CHARGES.index(a.GetFormalCharge())
                                   for a in fragment.GetAtoms()])
    return [pydiff.hooks.InpaintReplace(pos, fixed[..., None].float(), key="positions"),
            pydiff.hooks.InpaintClasses(types, fixed, "atom_types", processes["atom_types"]),
            pydiff.hooks.InpaintClasses(charges, fixed, "charges", processes["charges"])]


def place_fragment(positions: Tensor, mask: Tensor, fragment: Chem.Mol) -> Tensor:
    """Translate each molecule (its real atoms) so that its first atoms, the fragment's, sit at
    the fragment's given coordinates (see :func:`fragment_hooks`)."""
    k = fragment.GetNumAtoms()
    given = torch.tensor(fragment.GetConformer().GetPositions(), dtype=torch.float64)
    shift = (given - positions[:, :k].double()).mean(1, keepdim=True)
    return ((positions.double() + shift) * mask[..., None]).to(positions.dtype)


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


__all__ = ["MoleculeGenerator", "state_to_mols", "property_objective", "load_fragment",
           "fragment_hooks", "place_fragment", "PRETRAINED", "FINETUNES",
           "MIN_ATOMS", "MAX_ATOMS", "GUIDANCE", "GRADIENT_REWARDS", "SUPERPOSE_MODES"]
