"""The molecules domain: the local QM9-like data set."""

import pytest
import torch
from pydiff.domains.molecules import data
from rdkit import Chem

import pydiff


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


def _random_state(b=3, n=7, seed=0):
    from pydiff.domains.molecules.model import centre

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 3:] = False
    types = torch.nn.functional.one_hot(torch.randint(0, 5, (b, n), generator=g), 5)
    charges = torch.nn.functional.one_hot(torch.randint(0, 3, (b, n), generator=g), 3)
    pos = centre(torch.randn(b, n, 3, generator=g, dtype=torch.float64), mask)
    return {"positions": pos, "atom_types": types.double(), "charges": charges.double(),
            "mask": mask}


def _net():
    from pydiff.domains.molecules.model import MoleculeNet

    torch.manual_seed(0)
    net = MoleculeNet(hidden_dim=16, num_layers=3).double()
    for p in net.parameters():  # larger weights than the init, so the test is not trivial
        p.data.normal_(0, 0.3)
    return net


def test_network_is_e3_equivariant_in_float64():
    net, x, t = _net(), _random_state(), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    out = net(x, t)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    for rot in (q, q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))):
        shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
        moved = {**x, "positions": (x["positions"] @ rot.T + shift) * x["mask"][..., None]}
        out2 = net(moved, t)
        assert torch.allclose(out2["positions"], out["positions"] @ rot.T, atol=1e-5)
        for k in ("atom_types", "charges"):
            assert torch.allclose(out2[k], out[k], atol=1e-5)
    assert out["positions"].abs().max() > 1e-3  # not trivially zero
    m = x["mask"][..., None].double()
    assert ((out["positions"] * m).sum(1).abs() < 1e-10).all()  # zero centre of mass
    assert (out["positions"][~x["mask"]] == 0).all()


def test_network_is_permutation_equivariant_and_ignores_padding():
    net, x, t = _net(), _random_state(), torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    out = net(x, t)
    permuted = {k: v[:, perm] for k, v in x.items()}
    out_p = net(permuted, t)
    for k in out:
        assert torch.allclose(out_p[k], out[k][:, perm], atol=1e-10)
    # whatever the padding holds, the real atoms' outputs do not change
    noisy = {**x, "positions": x["positions"] + 5.0 * (~x["mask"])[..., None]}
    assert torch.allclose(net(noisy, t)["positions"][x["mask"]], out["positions"][x["mask"]],
                          atol=1e-10)


def test_joint_model_samples_molecule_batches_of_mixed_sizes():
    from pydiff.domains.molecules.model import make_model

    from pydiff.categorical import JointSolver

    model = make_model(_net().float(), type_prior=[0.5, 0.35, 0.07, 0.07, 0.01])
    g = torch.Generator().manual_seed(2)
    x = _random_state()
    state = {"positions": x["positions"].float(), "mask": x["mask"],
             "atom_types": model.processes["atom_types"].prior((3, 7), g),
             "charges": model.processes["charges"].prior((3, 7), g)}
    hook = pydiff.hooks.ZeroCenterOfMass(key="positions", mask=x["mask"])
    out = pydiff.sample(model, state, JointSolver("dpmpp_2m"), steps=4, generator=g,
                        hooks=[hook])
    assert out["positions"].shape == (3, 7, 3) and torch.equal(out["mask"], x["mask"])
    assert (out["positions"][~x["mask"]] == 0).all()
    assert out["atom_types"].max() < 5 and out["charges"].max() < 3


def test_chemistry_rebuilds_real_molecules_and_marks_broken_ones(tmp_path):
    import numpy as np
    from pydiff.domains.molecules import chemistry, metrics

    mols = data.load_molecules("test", limit=20)
    rebuilt = 0
    for mol in mols:
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
        built = chemistry.to_mol(symbols, charges, mol.GetConformer().GetPositions())
        flat = Chem.MolToSmiles(Chem.MolFromSmiles(mol.GetProp("smiles")), isomericSmiles=False)
        rebuilt += built.GetProp("valid") == "1" and built.GetProp("smiles") == flat
    assert rebuilt >= 18
    broken = chemistry.to_mol(["C", "C", "O"], [0, 0, 0], np.zeros((3, 3)) + np.eye(3) * 4)
    assert broken.GetProp("valid") == "0" and broken.GetNumConformers() == 1
    path = tmp_path / "out.sdf"
    chemistry.write_sdf([*mols[:3], broken], path)
    back = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
    assert len(back) == 4 and back[-1].GetProp("valid") == "0"
    scores = metrics.evaluate(mols, training_smiles=[m.GetProp("smiles") for m in mols[:10]])
    assert scores["validity"] >= 0.9 and scores["atom_stability"] >= 0.9
    assert abs(scores["novelty"] - 0.5) < 0.1  # half of them are "in the training set"
    assert chemistry.edm_bond_order("C", "C", 1.54) == 1
    assert chemistry.edm_bond_order("C", "O", 1.20) == 2
    assert chemistry.edm_bond_order("C", "N", 1.16) == 3
    assert chemistry.edm_bond_order("C", "C", 2.5) == 0


def test_generator_samples_rdkit_molecules_reproducibly(tmp_path):
    from pydiff.domains.molecules import MoleculeGenerator, write_sdf
    from pydiff.domains.molecules.metrics import evaluate_file

    gen = MoleculeGenerator.from_pretrained()
    mols = gen.sample(6, steps=4, seed=3)
    sizes = [m.GetNumAtoms() for m in mols]
    assert all(str(k) in gen.metadata["atom_counts"] for k in sizes)  # training sizes
    for mol in mols:
        assert mol.GetNumConformers() == 1 and mol.GetConformer().Is3D()
        assert mol.GetProp("valid") in ("0", "1")
        pos = mol.GetConformer().GetPositions()
        assert abs(pos.mean(0)).max() < 1e-4  # zero centre of mass
    again = gen.sample(6, steps=4, seed=3)
    assert all((a.GetConformer().GetPositions() == b.GetConformer().GetPositions()).all()
               for a, b in zip(mols, again))
    assert [m.GetNumAtoms() for m in gen.sample(3, atoms=[9, 12, 7], steps=2)] == [9, 12, 7]
    path = tmp_path / "out.sdf"
    write_sdf(mols, path)
    back = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
    assert len(back) == 6 and all(m.GetNumConformers() == 1 for m in back)
    scores = evaluate_file(path)
    assert scores["molecules"] == 6 and 0 <= scores["validity"] <= 1
    assert 0 <= scores["close_pairs"] <= 1


def fragment_of(mol, keep):
    """The atoms ``keep`` of a molecule, with their coordinates (no sanitization)."""
    em = Chem.RWMol(mol)
    for i in sorted(set(range(mol.GetNumAtoms())) - set(keep), reverse=True):
        em.RemoveAtom(i)
    out = em.GetMol()
    out.UpdatePropertyCache(strict=False)
    return out


def test_generator_keeps_a_fragment_and_the_cli_reads_it(tmp_path):
    import numpy as np
    from pydiff.apps.cli import main
    from pydiff.domains.molecules import MoleculeGenerator
    from pydiff.domains.molecules.generator import load_fragment

    mol = data.load_molecules("test", limit=1)[0]
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() != "H"]
    frag = fragment_of(mol, heavy)
    k = frag.GetNumAtoms()
    given = frag.GetConformer().GetPositions()
    gen = MoleculeGenerator.from_pretrained()
    mols = gen.sample(3, steps=3, seed=0, fragment=frag)
    mols += gen.sample(2, atoms=k + 4, steps=3, seed=1, reward="qed", candidates=2,
                       fragment=frag)  # with SVDD: every candidate keeps it
    for m in mols:
        assert m.GetNumAtoms() > k and m.GetProp("fragment_atoms") == str(k)
        assert [a.GetSymbol() for a in m.GetAtoms()][:k] == [a.GetSymbol()
                                                            for a in frag.GetAtoms()]
        assert np.abs(m.GetConformer().GetPositions()[:k] - given).max() < 1e-4
    rest = [m.GetConformer().GetPositions()[k:k + 1] for m in mols[:3]]
    assert not np.allclose(rest[0], rest[1], atol=1e-2)  # the rest is generated
    with pytest.raises(pydiff.InputError, match="already has"):
        gen.sample(1, atoms=k, steps=1, fragment=frag)
    chlorine = Chem.AddHs(Chem.MolFromSmiles("CCl"))
    from rdkit.Chem import AllChem

    AllChem.EmbedMolecule(chlorine, randomSeed=0)
    with pytest.raises(pydiff.InputError, match="Cl"):
        load_fragment(chlorine)
    with pytest.raises(pydiff.InputError, match="conformer"):
        load_fragment(Chem.MolFromSmiles("CO"))
    path = tmp_path / "frag.sdf"
    Chem.MolToMolFile(frag, str(path), kekulize=False)
    out = tmp_path / "out.sdf"
    assert main(["molecules", "sample", "-n", "2", "--steps", "2", "--atoms", str(k + 3),
                 "--fragment", str(path), "-o", str(out)]) == 0
    back = list(Chem.SDMolSupplier(str(out), removeHs=False, sanitize=False))
    assert len(back) == 2 and all(m.GetNumAtoms() == k + 3 for m in back)
    assert all(np.abs(m.GetConformer().GetPositions()[:k] - given).max() < 1e-3 for m in back)


def test_superposing_a_model_with_itself_is_that_model():
    import numpy as np
    from pydiff.domains.molecules import MoleculeGenerator, make_model

    gen = MoleculeGenerator.from_pretrained()
    alone = gen.sample(3, atoms=[8, 11, 9], steps=4, seed=2, solver="ddpm")
    for mode in ("and", "or"):
        both = gen.sample(3, atoms=[8, 11, 9], steps=4, seed=2, superpose=gen, mode=mode)
        for x, y in zip(alone, both):  # equal densities at every step: the model itself
            assert [a.GetSymbol() for a in x.GetAtoms()] == [a.GetSymbol() for a in y.GetAtoms()]
            assert np.allclose(x.GetConformer().GetPositions(), y.GetConformer().GetPositions(),
                               atol=1e-4)
    other = MoleculeGenerator(make_model(gen.model.net, type_prior=[0.2] * 5,
                                         charge_prior=gen.metadata["charge_prior"]), gen.metadata)
    with pytest.raises(pydiff.InputError, match="atom_types processes differ"):
        gen.sample(1, atoms=5, steps=1, superpose=other)
    with pytest.raises(pydiff.InputError, match="mode"):
        gen.sample(1, atoms=5, steps=1, superpose=gen, mode="xor")
    with pytest.raises(pydiff.InputError, match="not both"):
        gen.sample(1, atoms=5, steps=1, superpose=gen, reward="qed")
    # the shipped fine-tunes superpose (one corruption process) and were trained on their
    # selections from the shipped model
    from pydiff.domains.molecules.generator import FINETUNES

    qed = MoleculeGenerator.from_pretrained(FINETUNES["qed"])
    assert qed.metadata["recipe"]["select"] == "qed:0.5" and qed.metadata["steps_before"] > 0
    assert len(qed.sample(2, atoms=9, steps=2, superpose=FINETUNES["rings"])) == 2


def test_close_pairs_count_collapsed_atoms():
    import numpy as np
    from pydiff.domains.molecules import chemistry
    from pydiff.domains.molecules.metrics import close_pair_fraction

    mols = data.load_molecules("test", limit=10)
    assert close_pair_fraction(mols) == 0.0  # MMFF geometries
    squashed = chemistry.to_mol(["C", "O", "H"], [0, 0, 0],
                                np.array([[0.0, 0, 0], [0.5, 0, 0], [3.0, 0, 0]]))
    assert close_pair_fraction([squashed]) == 1 / 3


def test_generator_steers_by_an_rdkit_reward_with_a_floor_for_broken_molecules():
    from pydiff.domains.molecules import MoleculeGenerator
    from pydiff.domains.molecules.rewards import REWARDS, molecule_reward

    gen = MoleculeGenerator.from_pretrained()
    mols = gen.sample(2, atoms=10, steps=3, reward="qed", candidates=2, seed=1)
    assert all(m.HasProp("reward") for m in mols)
    assert [float(m.GetProp("reward")) for m in mols] == [
        round(v, 4) for v in molecule_reward("qed")(mols)]
    ok = data.load_molecules("test", limit=1)[0]
    ok.SetProp("valid", "1")
    broken = Chem.Mol(ok)
    broken.SetProp("valid", "0")
    for fn in REWARDS.values():  # the floor: 0 where RDKit cannot build the molecule
        assert fn(broken) == 0.0 and 0.0 <= fn(ok) <= 1.0


def test_train_recipe_saves_a_loadable_generator_and_warm_starts(tmp_path):
    from pydiff.domains.molecules import MoleculeGenerator
    from pydiff.domains.molecules.train import TrainConfig, train

    gen = train(TrainConfig(steps=2, hidden_dim=8, num_layers=1, batch_size=4, limit=16,
                            progress=False), tmp_path / "model")
    loaded = MoleculeGenerator.from_pretrained(tmp_path / "model")
    assert loaded.metadata["steps_done"] == 2
    assert abs(sum(loaded.metadata["type_prior"]) - 1) < 1e-9
    for k, v in gen.model.net.state_dict().items():
        assert torch.equal(v, loaded.model.net.state_dict()[k])
    assert len(loaded.sample(2, steps=2)) == 2
    # a warm start continues from those weights (lr 0: they stay exactly), at low-noise times
    warm = train(TrainConfig(steps=1, hidden_dim=8, num_layers=1, batch_size=4, limit=16,
                             lr=1e-12, progress=False, init=str(tmp_path / "model"),
                             time_sampler="low_noise"))
    assert warm.metadata["steps_before"] == 2
    for k, v in warm.model.net.state_dict().items():
        assert torch.allclose(v, loaded.model.net.state_dict()[k], atol=1e-9)
    with pytest.raises(pydiff.InputError, match="hidden_dim"):
        train(TrainConfig(steps=1, hidden_dim=16, num_layers=1, limit=16, progress=False,
                          init=str(tmp_path / "model")))
    # a property-selected fine-tune: only the selected molecules, the categorical priors of the
    # warm start (the process its weights learned)
    ringed = train(TrainConfig(steps=1, hidden_dim=8, num_layers=1, batch_size=4, limit=40,
                               progress=False, init=str(tmp_path / "model"),
                               select="rings:0.3"))
    from pydiff.domains.molecules.train import select_molecules

    chosen = select_molecules(data.load_molecules("train", limit=40), "rings:0.3")
    assert 0 < ringed.metadata["molecules"] == len(chosen) < 40
    assert all(m.GetRingInfo().NumRings() >= 1 for m in chosen)
    assert ringed.metadata["type_prior"] == loaded.metadata["type_prior"]
    with pytest.raises(pydiff.InputError, match="NAME:MIN"):
        train(TrainConfig(steps=1, limit=16, progress=False, select="size:3"))


def test_geometry_distances_and_mmff_strain_see_distorted_molecules():
    import numpy as np
    from pydiff.domains.molecules import chemistry
    from pydiff.domains.molecules.metrics import geometry_distances, mmff_strain

    reference = data.load_molecules("train", limit=300)
    held_out = data.load_molecules("test", limit=12)
    rng = np.random.default_rng(0)
    shaken = []
    for mol in held_out:  # 0.04 A of noise: still the same bonds, visibly worse geometry
        pos = mol.GetConformer().GetPositions() + rng.normal(0, 0.04, (mol.GetNumAtoms(), 3))
        shaken.append(chemistry.to_mol([a.GetSymbol() for a in mol.GetAtoms()],
                                       [a.GetFormalCharge() for a in mol.GetAtoms()], pos))
    clean, noisy = geometry_distances(held_out, reference), geometry_distances(shaken, reference)
    assert clean["geometry_molecules"] == 12 and noisy["geometry_molecules"] >= 8
    assert clean["bond_length_w1"] < 0.01 and noisy["bond_length_w1"] > 2 * clean[
        "bond_length_w1"]
    assert noisy["bond_angle_w1"] > clean["bond_angle_w1"]
    assert "C-H:SINGLE" in clean["bond_length_w1_per_type"]
    relaxed, strained = mmff_strain(held_out), mmff_strain(shaken)
    assert relaxed["mmff_molecules"] == 12 and relaxed["mmff_strain_median"] < 0.5
    assert strained["mmff_strain_median"] > 5 * max(relaxed["mmff_strain_median"], 0.1)


def test_gradient_guidance_follows_the_shipped_qed_regressor():
    from pydiff.domains.molecules import MoleculeGenerator
    from pydiff.domains.molecules.regressor import PropertyRegressor, qed_targets

    reg = PropertyRegressor.from_pretrained()
    mols = data.load_molecules("test", limit=40)
    batch = data.to_tensors(mols)
    with torch.no_grad():
        pred = reg(batch)
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
        turned = reg({**batch, "positions": batch["positions"] @ q.T})
    assert torch.allclose(pred, turned, atol=1e-4)  # E(3)-invariant
    held_out = data.load_molecules("test")
    with torch.no_grad():
        err = (reg(data.to_tensors(held_out)) - qed_targets(held_out)).abs().mean()
    target = qed_targets(held_out)
    assert err < 0.85 * (target - target.mean()).abs().mean()  # better than the mean: learned
    gen = MoleculeGenerator.from_pretrained()
    plain = gen.sample(2, atoms=9, steps=3, solver="ddpm", seed=4)
    off = gen.sample(2, atoms=9, steps=3, seed=4, reward="qed", guidance="gradient", scale=0.0)
    on = gen.sample(2, atoms=9, steps=3, seed=4, reward="qed", guidance="gradient", scale=5.0)
    pos = [m.GetConformer().GetPositions() for m in (*plain, *off, *on)]
    import numpy as np

    # scale 0 is the unguided sampler (up to rounding); scale 5 moves the atoms
    assert np.allclose(pos[0], pos[2], atol=1e-4) and np.allclose(pos[1], pos[3], atol=1e-4)
    assert not np.allclose(pos[0], pos[4], atol=1e-2)
    assert all(m.HasProp("reward") for m in on)


def test_cli_sample_then_evaluate(tmp_path, capsys):
    import json

    from pydiff.apps.cli import main

    out = tmp_path / "out.sdf"
    assert main(["molecules", "sample", "-n", "3", "--steps", "2", "--atoms", "9", "-o",
                 str(out), "--reward", "rings", "--candidates", "2"]) == 0
    back = list(Chem.SDMolSupplier(str(out), removeHs=False, sanitize=False))
    assert len(back) == 3 and all(m.GetNumAtoms() == 9 and m.HasProp("valid") for m in back)
    capsys.readouterr()
    assert main(["molecules", "evaluate", str(out), "--json", str(tmp_path / "s.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "s.json").read_text())
    assert printed["molecules"] == 3 and "novelty" in printed and "reward_qed_mean" in printed


@pytest.mark.parametrize("module", ["generator", "rewards", "train", "metrics", "chemistry"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"pydiff.domains.molecules.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
