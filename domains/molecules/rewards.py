"""Rewards for property steering: RDKit properties of molecules, no gradient needed.

Each reward maps a list of ``Chem.Mol`` (as :func:`.chemistry.to_mol` builds them) to floats,
higher is better, and gives the floor 0 to a molecule RDKit cannot build (property ``valid`` =
"0": no bond orders, or it does not sanitize, or several fragments), so steering never prefers
broken molecules:

- ``qed``: RDKit's quantitative estimate of drug-likeness (0..1);
- ``logp``: 1 inside the Crippen logP window ``[LOGP_WINDOW]``, falling linearly to 0 one log
  unit outside it;
- ``rings``: the number of rings (SSSR), divided by 3 and capped at 1.

Example:
    >>> from pydiff.domains.molecules import load_molecules
    >>> from pydiff.domains.molecules.rewards import molecule_reward
    >>> mols = load_molecules("test", limit=2)
    >>> [round(v, 3) for v in molecule_reward("qed")(mols)] == [
    ...     round(qed_reward(m), 3) for m in mols]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rdkit import Chem
from rdkit.Chem import QED, Crippen

from pydiff.errors import InputError

LOGP_WINDOW = (1.0, 2.0)


def _usable(mol: Chem.Mol) -> bool:
    return not mol.HasProp("valid") or mol.GetProp("valid") == "1"


def qed_reward(mol: Chem.Mol) -> float:
    """RDKit's QED (0 for molecules RDKit cannot build)."""
    return float(QED.qed(mol)) if _usable(mol) else 0.0


def logp_reward(mol: Chem.Mol, window: tuple[float, float] = LOGP_WINDOW) -> float:
    """1 inside the Crippen logP ``window``, linearly to 0 one unit outside (0 if invalid)."""
    if not _usable(mol):
        return 0.0
    logp = Crippen.MolLogP(mol)
    gap = max(window[0] - logp, logp - window[1], 0.0)
    return max(0.0, 1.0 - gap)


def ring_reward(mol: Chem.Mol) -> float:
    """Rings (SSSR) / 3, capped at 1 (0 if invalid)."""
    if not _usable(mol):
        return 0.0
    return min(1.0, mol.GetRingInfo().NumRings() / 3.0)


REWARDS: dict[str, Callable[[Chem.Mol], float]] = {"qed": qed_reward, "logp": logp_reward,
                                                    "rings": ring_reward}


def molecule_reward(reward: str | Callable) -> Callable[[Sequence[Chem.Mol]], list[float]]:
    """A reward by name (:data:`REWARDS`), or a callable ``reward(mols) -> floats`` as is."""
    if callable(reward):
        return reward
    if reward not in REWARDS:
        raise InputError(f"reward {reward!r} is not known; expected one of {sorted(REWARDS)}")
    one = REWARDS[reward]
    return lambda mols: [one(m) for m in mols]


__all__ = ["REWARDS", "LOGP_WINDOW", "qed_reward", "logp_reward", "ring_reward",
           "molecule_reward"]
