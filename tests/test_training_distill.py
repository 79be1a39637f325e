"""Distillation recipes: one-step quality on the 2D ring, exact resume of every recipe, the
consistency solver's CTM gamma-sampling, and the recipes' argument checks."""

from __future__ import annotations

import shutil

import pytest
import torch

import pydiff
from pydiff.testing import GaussianMixture, energy_distance
from pydiff.training import BatchLoader, SampledBatches, Trainer
from pydiff.training.distill import (
    ConsistencyDistillation,
    ConsistencyTraining,
    OneStepDistillation,
    ProgressiveDistillation,
    ReflowLoss,
    reflow_pairs,
    student_from,
)
from pydiff.training.toy import ToyMLP, ring_flow_teacher

torch.set_num_threads(1)
RING = GaussianMixture.ring()


@pytest.fixture(scope="module")
def teacher():
    return ring_flow_teacher()


def energy(model, solver, steps, n=1500, **kw):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x = pydiff.sample(model, pydiff.prior(model.schedule, (n, 2), generator=g), solver,
                          steps, generator=g, **kw)
    return energy_distance(x, RING.sample(n, torch.Generator().manual_seed(5)).float())


def test_one_step_student_is_within_twice_the_teachers_ten_step_distance(teacher):
    # reflow pairs from the teacher (heun, 10 steps), then one-step distillation on them
    pairs = reflow_pairs(teacher, 4096, (2,), solver="heun", steps=10,
                         generator=torch.Generator().manual_seed(3))
    trainer = Trainer(student_from(teacher), BatchLoader(pairs, 256, seed=0),
                      loss_fn=OneStepDistillation(), max_steps=300, lr=1e-3, ema=0.99,
                      lr_scheduler="cosine", progress=False).fit()
    student = trainer.ema_model()
    e_teacher10 = energy(teacher, "euler", 10)
    e_teacher1 = energy(teacher, "euler", 1)
    e_student1 = energy(student, "ddim", 1)
    assert e_student1 < 2 * e_teacher10, (e_student1, e_teacher10)
    assert e_student1 < e_teacher1 / 20, (e_student1, e_teacher1)  # the teacher can't in 1


def test_solve_target_is_the_teachers_ode_solution(teacher):
    # the loss at a level is the distance to the teacher's own solve from there to clean data
    recipe = ConsistencyDistillation(teacher, steps=4, solver="heun", solver_steps=3,
                                     target="solve")
    student = student_from(teacher)
    x0 = RING.sample(6, torch.Generator().manual_seed(0)).float()
    loss, _ = recipe(student, x0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # replay the recipe's draws: levels, then noise
    n = (torch.rand(6, generator=g, dtype=torch.float64) * 4).long().clamp(max=3)
    t = recipe.grid(teacher.schedule)[n]
    x_t = pydiff.add_noise(teacher.schedule, x0, t, torch.randn(6, 2, generator=g))
    grid = pydiff.timesteps(teacher.schedule, 3, "time", t_start=t)
    with torch.no_grad():
        solved = pydiff.sample(teacher, x_t, "heun", grid=grid)
        expected = (student.x0(x_t, t) - solved).pow(2).mean(1).mean()
    assert torch.allclose(loss, expected, rtol=1e-5), (loss, expected)
    assert recipe.target is None  # no target network


def test_two_step_student_of_the_solve_target_is_within_twice_the_teacher(teacher):
    # levels 1 and ~0.5 (the ones 1- and 2-step consistency sampling visit), 300 steps
    recipe = ConsistencyDistillation(teacher, steps=2, solver="heun", solver_steps=5,
                                     target="solve")
    data = SampledBatches(lambda n, g: RING.sample(n, g).float(), 256, seed=0)
    trainer = Trainer(student_from(teacher), data, loss_fn=recipe, max_steps=300, lr=1e-3,
                      ema=0.99, lr_scheduler="cosine", progress=False).fit()
    student = trainer.ema_model()
    e_teacher10 = energy(teacher, "euler", 10)
    e_student2 = energy(student, "consistency", 2)
    assert e_student2 < 2 * e_teacher10, (e_student2, e_teacher10)
    e_student1, e_teacher1 = energy(student, "consistency", 1), energy(teacher, "euler", 1)
    assert e_student1 < e_teacher1 / 10, (e_student1, e_teacher1)


def ring_data():
    return SampledBatches(lambda n, g: RING.sample(n, g).float(), 32, seed=0)


def jump_student(teacher):
    torch.manual_seed(0)
    return student_from(teacher, jump=True, net=ToyMLP(hidden=16, depth=1, target_time=True))


RECIPES = {
    "cd": lambda t: (student_from(t), ConsistencyDistillation(t, steps=6, solver="heun"), None),
    "cd-solve": lambda t: (student_from(t), ConsistencyDistillation(
        t, steps=4, solver="euler", solver_steps=2, target="solve"), None),
    "ct": lambda t: (student_from(t), ConsistencyTraining(steps=(2, 8), total_steps=10), None),
    "ctm": lambda t: (jump_student(t),
                      ConsistencyDistillation(t, steps=6, solver="dpmpp_2m", solver_steps=2,
                                              jump=True, dsm_weight=0.5), None),
    "pd": lambda t: (student_from(t), ProgressiveDistillation(t, 2, base_steps=8, solver="euler"),
                     None),
    "reflow": lambda t: (student_from(t), ReflowLoss(), "pairs"),
    "onestep": lambda t: (student_from(t), OneStepDistillation(distance="pseudo_huber"), "pairs"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_resumes_exactly(tmp_path, teacher, name):
    pairs = reflow_pairs(teacher, 96, (2,), steps=2, generator=torch.Generator().manual_seed(0))

    def make(folder, resume=False):
        student, recipe, source = RECIPES[name](teacher)
        data = BatchLoader(pairs, 32, seed=1) if source else ring_data()
        return Trainer(student, data, loss_fn=recipe, max_steps=10, lr=1e-3, ema=0.9,
                       checkpoint_dir=folder, checkpoint_every=4, resume=resume,
                       progress=False)

    full = make(tmp_path / "a").fit()
    shutil.copytree(tmp_path / "a" / "step_00000004", tmp_path / "b" / "step_00000004")
    (tmp_path / "b" / "latest").write_text("step_00000004")
    torch.manual_seed(123)
    resumed = make(tmp_path / "b", resume="latest")
    assert resumed.step == 4
    resumed.fit()
    for a, b in zip(full.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)
    if getattr(full.loss_fn, "target", None) is not None:  # the target network resumed too
        for a, b in zip(full.loss_fn.target.module.state_dict().values(),
                        resumed.loss_fn.target.module.state_dict().values()):
            assert torch.equal(a, b)
    # training moved the student (the comparison above can fail)
    untrained = RECIPES[name](teacher)[0].net
    assert not torch.equal(untrained.inp.weight, full.module.inp.weight)


def test_consistency_training_curriculum_doubles_the_steps():
    recipe = ConsistencyTraining(steps=(10, 40), total_steps=300)
    seen = []
    for _ in range(300):
        seen.append(recipe.current_steps())
        recipe.updates += 1
    assert sorted(set(seen)) == [10, 20, 40]


def test_progressive_grids_nest(teacher):
    recipe = ProgressiveDistillation(teacher, 2, base_steps=8)
    fine, coarse = recipe.teacher_grid(teacher.schedule), recipe.student_grid(teacher.schedule)
    assert fine.shape == (5,) and coarse.shape == (3,)
    assert torch.equal(fine[::2], coarse)
    assert torch.equal(coarse, recipe.base_grid(teacher.schedule)[::4])


def test_gamma_sampling_of_a_jump_model():
    # a jump model that returns the exact x0 of a point mass at 1: every gamma gives 1
    sched = pydiff.FlowSchedule()

    def net(x, t, s):  # velocity of a point mass at 1: (x - 1) / t... as eps - x0
        tt = t[:, None]
        return (x - 1) / tt.clamp(min=1e-3)

    model = pydiff.JumpDenoiser(net, sched, prediction="velocity")
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    for gamma in (0.0, 0.5, 1.0):
        out = pydiff.sample(model, x_T, "consistency", 3, gamma=gamma,
                            generator=torch.Generator().manual_seed(1))
        assert torch.allclose(out, torch.ones_like(out), atol=1e-5), gamma
    plain = pydiff.Denoiser(lambda x, t: x, sched, prediction="velocity")
    with pytest.raises(pydiff.InputError, match="JumpDenoiser"):
        pydiff.sample(plain, x_T, "consistency", 2, gamma=0.5)
    with pytest.raises(pydiff.InputError, match="gamma"):
        pydiff.get_solver("consistency", gamma=1.5)


def test_jump_is_the_identity_at_its_own_time():
    torch.manual_seed(0)
    model = pydiff.JumpDenoiser(ToyMLP(hidden=8, depth=1, target_time=True),
                                pydiff.VPSchedule(), prediction="eps")
    x = torch.randn(4, 2)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    assert torch.allclose(model.jump(x, t, t), x, atol=1e-5)


def test_recipes_reject_bad_arguments(teacher):
    with pytest.raises(pydiff.InputError, match="steps"):
        ConsistencyDistillation(teacher, steps=0)
    with pytest.raises(pydiff.InputError, match="total_steps"):
        ConsistencyTraining(steps=(10, 20))
    with pytest.raises(pydiff.InputError, match="distance"):
        ConsistencyDistillation(teacher, distance="l3")
    with pytest.raises(pydiff.InputError, match="jump=True"):
        ConsistencyDistillation(teacher, dsm_weight=1.0)
    with pytest.raises(pydiff.InputError, match="target_decay"):
        ConsistencyDistillation(teacher, target_decay=1.0)
    with pytest.raises(pydiff.InputError, match="target="):
        ConsistencyDistillation(teacher, target="ode")
    with pytest.raises(pydiff.InputError, match="needs a teacher"):
        ConsistencyDistillation(None, target="solve")
    with pytest.raises(pydiff.InputError, match="jump=False"):
        ConsistencyDistillation(teacher, target="solve", jump=True)
    with pytest.raises(pydiff.InputError, match="multiple"):
        ProgressiveDistillation(teacher, 4, base_steps=12)
    recipe = ConsistencyDistillation(teacher, jump=True)
    with pytest.raises(pydiff.InputError, match="JumpDenoiser"):
        recipe(student_from(teacher), torch.zeros(4, 2), torch.Generator())


def test_consistency_sampling_spends_no_evaluation_at_t_eps():
    # steps=2 on the uniform grid evaluates at 1 and 0.5 (not at 1 and t_eps, where the map
    # returns its input and the second evaluation would be wasted)
    seen = []

    def net(x, t):
        seen.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return torch.zeros_like(x)

    model = pydiff.Denoiser(net, pydiff.FlowSchedule(), prediction="velocity")
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    state = pydiff.sample(model, x_T, "consistency", 2, spacing="time", return_state=True,
                          generator=torch.Generator().manual_seed(1))
    assert state.nfe == 2
    assert seen == pytest.approx([1.0, 0.5], abs=1e-3)  # midway between 1 and t_eps
    seen.clear()
    pydiff.sample(model, x_T, "ddim", 2, spacing="time")  # other solvers keep the t_eps point
    assert seen == pytest.approx([1.0, model.schedule.t_eps])


def test_docs_examples_run():
    import pathlib
    import re

    docs = pathlib.Path(__file__).resolve().parents[1] / "docs" / "distillation.md"
    if docs.exists():  # the source tree's docs; absent when only the package is installed
        blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.S)
        assert len(blocks) == 4
        for block in blocks:
            exec(compile(block, str(docs), "exec"), {})


def test_demo_shows_the_distilled_students_beside_the_solvers(tmp_path, capsys):
    import json

    from pydiff.apps.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--train-steps", "3", "--samples", "64", "--steps", "2", "--solvers",
                 "ddim", "--distill-steps", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "demo.json").read_text())["rows"]
    models = {r["model"] for r in rows}
    assert {"trained", "exact", "flow", "cd", "cd-solve", "ct", "pd", "reflow",
            "reflow+1"} <= models
    assert min(r["nfe"] for r in rows if r["model"] in ("cd", "cd-solve", "pd", "reflow+1")) == 1
    assert "consistency" in capsys.readouterr().out
