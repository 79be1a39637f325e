"""The molecules domain: the local QM9-like data set."""

import torch
from pydiff.domains.molecules import data
from rdkit import Chem


def test_filter_follows_qm9_composition():
    ok = ["CCO", "C[N+](=O)[O-]", "FC(F)F", "c1ccccc1O"]
    bad = ["CCCl", "CCCCCCCCCC", "[NH4+]", "CC.O", "C[CH2]", "[O-]C"]
    assert all(data.passes_filter(Chem.MolFromSmiles(s)) for s in ok)
    assert not any(data.passes_filter(Chem.MolFromSmiles(s)) for s in bad)


def test_enlarge_adds_valid_neighbours_deterministically():
    out = data.enlarge(["CO", "CC=O"])
    assert out == data.enlarge(["CC=O", "CO"]) and {"CO", "CC=O"} <= set(out)
    assert len(out) > 10
    for s in out:
        mol = Chem.MolFromSmiles(s)
        assert data.passes_filter(mol) and Chem.MolToSmiles(mol) == s


def test_embed_gives_a_3d_conformer_with_hydrogens_at_a_fixed_seed():
    a, b = data.embed("CCO", seed=0), data.embed("CCO", seed=0)
    assert a.GetNumAtoms() == 9 and a.GetConformer().Is3D()
    assert (a.GetConformer().GetPositions() == b.GetConformer().GetPositions()).all()


def test_shipped_set_is_large_unique_and_split():
    train, test = data.load_molecules("train"), data.load_molecules("test")
    smiles = [m.GetProp("smiles") for m in train + test]
    assert len(smiles) >= 3000 and len(set(smiles)) == len(smiles)
    assert 0.05 < len(test) / len(smiles) < 0.15
    assert not {m.GetProp("smiles") for m in train} & {m.GetProp("smiles") for m in test}
    assert len(set(data.nci_molecules()) & set(smiles)) > 100  # the NCI seeds are in it
    for mol in test[:50]:
        assert data.passes_filter(Chem.RemoveHs(mol)) and mol.GetConformer().Is3D()
        # (the SDF reader assigns stereo from 3D; the stored SMILES has none)
        flat = Chem.MolFromSmiles(mol.GetProp("smiles"))
        assert (Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
                == Chem.MolToSmiles(flat, isomericSmiles=False))


def test_to_tensors_pads_and_centres():
    mols = data.load_molecules("test", limit=5)
    batch = data.to_tensors(mols, max_atoms=30)
    sizes = [m.GetNumAtoms() for m in mols]
    assert batch["positions"].shape == (5, 30, 3)
    assert batch["mask"].sum(1).tolist() == sizes
    m = batch["mask"][..., None].float()
    com = (batch["positions"] * m).sum(1) / m.sum(1)
    assert com.abs().max() < 1e-5 and (batch["positions"] * (1 - m)).abs().max() == 0
    h = data.ATOM_TYPES.index("H")
    assert batch["atom_types"][0, :sizes[0]].eq(h).sum() == sum(
        a.GetSymbol() == "H" for a in mols[0].GetAtoms())
    assert torch.equal(batch["charges"][~batch["mask"]],
                       torch.full_like(batch["charges"][~batch["mask"]], data.CHARGES.index(0)))
