"""Tests of pydiff.domains.policy: envs, experts, data, the policy interface, inference modes,
validation, the control loop, the planner, and the shipped checkpoints."""

from __future__ import annotations

import time

import numpy as np
import pydiff.domains.policy as policy_domain
import pytest
import torch
from pydiff.domains.policy import (
    DiffusionPolicy,
    DiffusionPolicyConfig,
    evaluate,
    load,
    make_env,
    run_episode,
    train,
)
from pydiff.domains.policy.control import ExpertPolicy
from pydiff.domains.policy.data import (
    MinMaxNormalizer,
    collect_demonstrations,
    policy_windows,
    rollout_expert,
    trajectory_windows,
)
from pydiff.domains.policy.experts import PendulumExpert, PointMassExpert
from pydiff.domains.policy.train import checkpoint_path
from pydiff.domains.policy.validation import ActionClipper, ObservationError

import pydiff
from pydiff.errors import InputError

torch.set_num_threads(1)


def tiny_policy(mode: str = "full", **kw) -> DiffusionPolicy:
    cfg = DiffusionPolicyConfig(obs_dim=3, action_dim=1, action_low=[-2.0], action_high=[2.0],
                                down_dims=(8, 16), time_embed_dim=16, n_groups=4, mode=mode,
                                steps=3, **kw)
    return DiffusionPolicy(cfg).eval()


# -- environments and experts ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pendulum", "pointmass"])
def test_env_is_deterministic_per_seed(name):
    def roll(seed):
        env = make_env(name)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for k in range(20):
            out.append(env.step(np.full(env.action_space.shape, 0.3 * (-1) ** k,
                                        dtype=np.float32))[0])
        return np.stack(out)

    np.testing.assert_array_equal(roll(3), roll(3))
    assert not np.array_equal(roll(3), roll(4))


def test_pointmass_obstacle_collision_and_side():
    env = make_env("pointmass")
    env.reset(seed=0)
    info = {}
    for _ in range(30):  # straight up into the obstacle
        _, _, term, _, info = env.step(np.array([0.0, 1.0], dtype=np.float32))
    assert info["collisions"] > 0 and not info["is_success"]
    pos = env.unwrapped.pos
    assert np.linalg.norm(pos) >= 0.3 - 1e-9  # never inside the disc


@pytest.mark.parametrize("mode", [1, -1])
def test_experts_succeed_both_modes(mode):
    for seed in range(3):
        assert rollout_expert("pendulum", seed, mode=mode).success
        ep = rollout_expert("pointmass", seed, mode=mode)
        assert ep.success and ep.infos[-1]["side"] == mode


def test_pendulum_expert_kicks_in_its_direction():
    hanging = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
    assert PendulumExpert(direction=1)(hanging)[0] == 2.0
    assert PendulumExpert(direction=-1)(hanging)[0] == -2.0
    with pytest.raises(ValueError, match="direction"):
        PendulumExpert(direction=0)
    with pytest.raises(ValueError, match="side"):
        PointMassExpert(side=2)


# -- data ------------------------------------------------------------------------------------
def test_demonstrations_are_reproducible_and_windows_pad():
    a = collect_demonstrations("pointmass", episodes=2, seed=5)
    b = collect_demonstrations("pointmass", episodes=2, seed=5)
    np.testing.assert_array_equal(a[0].observations, b[0].observations)
    assert [e.mode for e in a] == [1, -1]
    obs, act = policy_windows(a, n_obs_steps=2, horizon=16)
    assert obs.shape[1:] == (2, 4) and act.shape[1:] == (16, 2)
    assert len(obs) == sum(len(e.actions) for e in a)
    # the first window repeats the first observation; the last repeats the last action
    np.testing.assert_array_equal(obs[0, 0], obs[0, 1])
    steps = len(a[0].actions)
    np.testing.assert_array_equal(act[steps - 1, -1], a[0].actions[-1])
    traj = trajectory_windows(a, horizon=64)
    assert traj.shape[1:] == (64, 6)
    assert torch.all(traj[0, -1, 4:] == 0)  # padded past the end: resting, zero action


def test_minmax_normalizer_roundtrip_and_constant_dims():
    data = torch.tensor([[0.0, 3.0, 1.0], [4.0, 3.0, -1.0]])
    norm = MinMaxNormalizer.fit(data)
    y = norm.normalize(data)
    assert torch.allclose(y[:, [0, 2]].abs(), torch.ones(2, 2))
    assert torch.isfinite(y).all()
    assert torch.allclose(norm.unnormalize(y), data)


# -- the policy interface -------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_policy_interface_shapes_and_queue(prediction):
    policy = tiny_policy(prediction=prediction)
    policy.reset()
    g = torch.Generator().manual_seed(0)
    actions = [policy.select_action(np.zeros(3, dtype=np.float32), generator=g)
               for _ in range(10)]
    assert all(a.shape == (1,) for a in actions)
    assert policy.chunk_count == 2  # Ta = 8: a new chunk at steps 0 and 8
    chunk = policy.predict_action_chunk(torch.zeros(4, 2, 3), generator=g)
    assert chunk.shape == (4, 16, 1)
    batch = {"observation": torch.randn(6, 2, 3), "action": torch.randn(6, 16, 1)}
    loss, info = policy(batch, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and loss.requires_grad and "loss_ramp" in info


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_action_steps"):
        DiffusionPolicyConfig(obs_dim=3, action_dim=1, action_low=[-1.0], action_high=[1.0],
                              n_action_steps=20)
    with pytest.raises(ValueError, match="mode"):
        DiffusionPolicyConfig(obs_dim=3, action_dim=1, action_low=[-1.0], action_high=[1.0],
                              mode="turbo")
    with pytest.raises(ValueError, match="action_low"):
        DiffusionPolicyConfig(obs_dim=3, action_dim=2, action_low=[-1.0], action_high=[1.0])
    with pytest.raises(ValueError, match="architecture"):
        tiny_policy().configure(horizon=32)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(4, dtype=np.float32), "shape"),
    (np.zeros((2, 2, 3), dtype=np.float32), "shape"),
    (np.array([0.0, np.nan, 0.0], dtype=np.float32), "NaN"),
    (np.array([0.0, np.inf, 0.0], dtype=np.float32), "NaN/inf"),
    ("abc", "observation"),
])
def test_bad_observations_raise(bad, match):
    policy = tiny_policy()
    with pytest.raises(ObservationError, match=match):
        policy.select_action(bad)
    assert policy.clipper.total_actions == 0  # nothing reached the motors


def test_actions_are_clipped_and_counted():
    # normalizer range [-10, 10] while the action space is [-2, 2]: an untrained net's
    # outputs of order 1 in normalized units map far outside and must be clipped
    policy = tiny_policy()
    policy.action_normalizer.low.fill_(-10.0)
    policy.action_normalizer.high.fill_(10.0)
    policy.reset()
    g = torch.Generator().manual_seed(1)
    acts = torch.stack([policy.select_action(torch.zeros(5, 3), generator=g) for _ in range(8)])
    assert acts.abs().max() <= 2.0
    assert policy.clipper.clipped_actions > 0
    assert policy.clipper.total_actions == 40
    clip = ActionClipper([-1.0, -1.0], [1.0, 1.0])
    clip(torch.tensor([[2.0, 0.0], [0.5, -3.0], [0.1, 0.1]]))
    assert (clip.clipped_entries, clip.clipped_actions) == (2, 2)
    with pytest.raises(FloatingPointError):
        clip(torch.tensor([[float("nan"), 0.0]]))


# -- inference modes ------------------------------------------------------------------------
class CountingNet(torch.nn.Module):
    """Wraps the policy's UNet and records the time input of every call."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.times = net, []

    def forward(self, x, t, **kw):
        self.times.append(t.detach().clone())
        return self.inner(x, t, **kw)


def _count_calls(policy: DiffusionPolicy) -> CountingNet:
    counter = CountingNet(policy.net)
    policy.denoiser = pydiff.Denoiser(counter, policy.schedule, prediction="eps",
                                      time_input="index")
    return counter


def test_rti_warm_start_shifts_previous_chunk_and_uses_few_low_noise_steps():
    policy = tiny_policy(mode="rti", rti_steps=2, rti_t_start=0.3)
    counter = _count_calls(policy)
    obs = torch.zeros(2, 2, 3)
    g = torch.Generator().manual_seed(0)
    policy.predict_action_chunk(obs, generator=g)  # first chunk: full (3 steps)
    assert len(counter.times) == 3
    prev = policy._previous_chunk.clone()
    shifted = policy._shifted(prev, 8)
    assert torch.equal(shifted[..., :8], prev[..., 8:])
    assert torch.equal(shifted[..., 8:], prev[..., -1:].expand(-1, -1, 8))
    counter.times.clear()
    policy.predict_action_chunk(obs, generator=g)
    assert len(counter.times) == 2  # rti_steps network calls only
    # the warm-start grid starts at t = 0.3: index 0.3 * 100 - 1 = 29
    assert torch.allclose(counter.times[0].double(), torch.full((2,), 29.0, dtype=torch.float64))
    grid = pydiff.timesteps(policy.schedule, 2, "time", t_start=0.3)
    assert float(grid[0]) == pytest.approx(0.3) and float(grid[-1]) == 0.0


def test_streaming_uses_per_position_levels_and_pops_a_clean_head():
    policy = tiny_policy(mode="stream")
    grid = policy.stream_grid()
    assert grid.shape == (2, 1, 1, 16)
    assert torch.allclose(grid[0, 0, 0], (torch.arange(16) + 1).double() / 16)
    assert torch.allclose(grid[1, 0, 0], torch.arange(16).double() / 16)  # head -> t = 0
    counter = _count_calls(policy)
    policy.reset()
    g = torch.Generator().manual_seed(0)
    policy.select_action(torch.zeros(3, 3), generator=g)
    counter.times.clear()
    a = policy.select_action(torch.zeros(3, 3), generator=g)
    assert a.shape == (3, 1) and policy._buffer.shape == (3, 1, 16)
    assert len(counter.times) == 1  # one network call per control step
    t_net = counter.times[0]
    assert t_net.shape[-1] == 16 and t_net.dim() == 3  # per-position time [B|1, 1, Tp]
    assert torch.all(t_net[..., 1:] > t_net[..., :-1])  # noise rises along the horizon
    assert policy.stream_grid() is policy.stream_grid()  # one tensor per setting
    fresh = tiny_policy(mode="stream")
    with torch.inference_mode():  # a robot loop under inference mode first, then a plain one
        fresh.select_action(torch.zeros(3, 3), generator=g)
        fresh.select_action(torch.zeros(3, 3), generator=g)
    fresh.select_action(torch.zeros(3, 3), generator=g)


@pytest.mark.parametrize("solver", ["ddim", "ddpm", "dpmpp_2m"])
def test_full_inference_with_any_solver(solver):
    policy = tiny_policy(solver=solver)
    chunk = policy.predict_action_chunk(torch.zeros(2, 2, 3),
                                        generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, 16, 1) and torch.isfinite(chunk).all()


def test_save_and_load_roundtrip(tmp_path):
    policy = tiny_policy()
    policy.action_normalizer.high.fill_(3.0)
    policy.save_pretrained(tmp_path / "p")
    loaded = DiffusionPolicy.from_pretrained(tmp_path / "p", mode="rti")
    assert loaded.config.mode == "rti" and loaded.config.down_dims == (8, 16)
    obs = torch.randn(2, 2, 3)
    a = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    b = loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


# -- the control loop ----------------------------------------------------------------------
class SlowExpert(ExpertPolicy):
    """The real point-mass expert, computing for ``delay`` seconds every ``every`` calls."""

    def __init__(self, delay: float, every: int):
        super().__init__(PointMassExpert(side=1), [-1.0, -1.0], [1.0, 1.0])
        self.delay, self.every, self.calls = delay, every, 0

    def select_action(self, obs, generator=None):
        self.calls += 1
        if self.calls % self.every == 0:
            time.sleep(self.delay)
        return super().select_action(obs, generator)


def test_realtime_loop_counts_missed_deadlines_and_holds():
    # 50 Hz = 20 ms per tick; every 5th call takes 45 ms: misses the deadline by 25 ms,
    # so the actuator holds its last command for 2 ticks each time
    result = run_episode(SlowExpert(0.045, 5), "pointmass", seed=0, hz=50, max_steps=20)
    assert result.held_steps >= 2
    # every miss holds the last command, except a late first tick (nothing to hold yet: under
    # load the first call can miss too)
    assert result.held_steps <= result.deadline_misses <= result.held_steps + 1
    assert result.steps == 20
    fast = run_episode(SlowExpert(0.0, 1000), "pointmass", seed=0, hz=10, max_steps=5)
    assert fast.held_steps == 0


def test_simulated_loop_matches_expert_and_summarizes():
    run = evaluate(ExpertPolicy(PointMassExpert(side=-1), [-1.0, -1.0], [1.0, 1.0]),
                   "pointmass", [0, 1, 2])
    s = run.summary
    assert s["success"] == 1.0 and s["sides"]["left"] == 1.0
    single = run_episode(ExpertPolicy(PointMassExpert(side=-1)), "pointmass", seed=1)
    np.testing.assert_allclose(single.observations, run.episodes[1].observations, atol=1e-6)
    # by name: one expert per mode, alternating over the seeds, episodes in seed order
    named = evaluate("expert", "pointmass", [0, 1, 2, 3])
    assert [r.seed for r in named.episodes] == [0, 1, 2, 3]
    assert [r.side for r in named.episodes] == [1, -1, 1, -1]
    # an expert computes no chunks: nothing to time as chunk inference
    assert named.summary["chunk_latency_ms"]["n"] == 0


def test_policy_in_the_control_loop_measures_latency_and_jumps():
    policy = tiny_policy(mode="rti")
    result = run_episode(policy, "pendulum", seed=0, hz=None, max_steps=20, record_chunks=True)
    assert result.steps == 20 and len(result.chunk_latency_ms) == 3
    assert len(result.chunk_cpu_ms) == 3 and min(result.chunk_cpu_ms) >= 0
    assert len(result.boundary_jumps) == 2 and len(result.chunks) == 3
    # the jump is measured by the loop: from the last executed action to the chunk's first
    step = result.chunks[1][0]
    expected = np.linalg.norm(result.actions[step] - result.actions[step - 1])
    assert result.boundary_jumps[0] == pytest.approx(expected, rel=1e-5)
    summary = result.summary()
    assert summary["chunk_latency_ms"]["p99"] >= summary["chunk_latency_ms"]["p50"] > 0
    assert not hasattr(policy, "chunk_latency_ms")  # latency lives in the loop, not the model
    # lockstep: one latency per batched chunk call, jumps per episode
    run = evaluate(policy, "pendulum", [0, 1], max_steps=20)
    assert run.summary["chunk_latency_ms"]["n"] == 3
    assert [len(r.boundary_jumps) for r in run.episodes] == [2, 2]


def test_the_public_face_is_small_and_self_sufficient():
    assert len(policy_domain.__all__) <= 10
    assert all(hasattr(policy_domain, name) for name in policy_domain.__all__)


def test_env_specs_match_the_envs_spaces():
    from pydiff.domains.policy.envs import env_spec

    for name in ("pendulum", "pointmass", "pusht"):
        env, spec = make_env(name), env_spec(name)
        assert env.observation_space.shape == (spec.obs_dim,)
        np.testing.assert_array_equal(env.action_space.low, spec.action_low)
        np.testing.assert_array_equal(env.action_space.high, spec.action_high)
        env.close()


@pytest.mark.parametrize("model", ["policy", "planner"])
def test_one_training_path_for_every_model_type(tmp_path, model):
    trained, history = train("pointmass", tmp_path / model, model=model, episodes=2, steps=2,
                             batch_size=8, down_dims=(8, 16), horizon=16, progress=False)
    assert history and "loss" in history[-1]
    assert not hasattr(trained, "training_history")
    loaded = load(tmp_path / model)
    assert type(loaded) is type(trained) and loaded.config.env == "pointmass"
    if model == "planner":  # the policy has a Push-T recipe (tests/test_policy_pusht.py)
        with pytest.raises(ValueError, match="recipe"):
            train("pusht", None, model=model, steps=1)


def test_training_warm_starts_from_a_saved_policy(tmp_path):
    start = checkpoint_path("pointmass")
    shipped = load("pointmass")
    # a tiny learning rate: the continued weights stay the folder's (a fresh start would be
    # random), and the folder's normalizers are kept though 2 demonstrations span less
    warm, _ = train("pointmass", tmp_path / "warm", init=start, episodes=2, steps=1,
                    batch_size=8, lr=1e-12, progress=False)
    for a, b in zip(shipped.net.parameters(), warm.net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(warm.obs_normalizer.low, shipped.obs_normalizer.low)
    assert load(tmp_path / "warm").config.down_dims == shipped.config.down_dims
    # and it does train: a real learning rate moves the weights
    moved, _ = train("pointmass", None, init=start, episodes=2, steps=2, batch_size=8,
                     lr=1e-2, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(shipped.net.parameters(),
                                                     moved.net.parameters()))


@pytest.mark.parametrize("init, settings, match", [
    ("pointmass", {"down_dims": (8, 16)}, "down_dims"),
    ("pendulum", {}, "env 'pendulum'"),
    ("pointmass_planner", {}, "TrajectoryPlanner"),
    ("pointmass_consistency", {}, "consistency"),
])
def test_warm_start_refuses_a_mismatched_folder(init, settings, match):
    with pytest.raises(InputError, match=match):
        train("pointmass", None, init=checkpoint_path(init), episodes=2, steps=1,
              progress=False, **settings)


# -- the planner ----------------------------------------------------------------------------
def test_planner_inpaints_start_and_goal_and_guides():
    from pydiff.domains.policy.planner import PlannerConfig, TrajectoryPlanner

    planner = TrajectoryPlanner(PlannerConfig(obs_dim=4, action_dim=2, horizon=16,
                                              down_dims=(8, 16), steps=3,
                                              action_low=[-1.0, -1.0], action_high=[1.0, 1.0]))
    start = torch.tensor([[0.1, -0.7, 0.0, 0.0]])
    plan = planner.plan(start, goal=torch.tensor([0.0, 0.75]),
                        generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plan[:, 0, :4], start, atol=1e-5)
    assert torch.allclose(plan[:, -1, :4], torch.tensor([[0.0, 0.75, 0.0, 0.0]]), atol=1e-5)


def test_shipped_planner_value_guidance_moves_plans_to_the_chosen_side():
    from pydiff.domains.policy.planner import side_value

    planner = load("pointmass_planner")
    start = torch.tensor([[0.0, -0.75, 0.0, 0.0]]).expand(16, 4)
    kw = dict(goal=torch.tensor([0.0, 0.75]), value=side_value(1))
    right = planner.plan(start, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                         **kw)
    left = planner.plan(start, guidance_scale=-2.0, generator=torch.Generator().manual_seed(0),
                        **kw)
    assert float(side_value(1)(right).mean()) > float(side_value(1)(left).mean()) + 0.1


# -- shipped checkpoints --------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["rti", "stream"])
def test_shipped_pointmass_policy_succeeds(preset):
    run = evaluate(preset, "pointmass", [1000, 1001, 1002, 1003])
    assert sum(r.success for r in run.episodes) >= 3


def test_shipped_pendulum_policy_swings_up():
    policy = load("pendulum", preset="rti")
    assert policy.config.n_action_steps == 4  # the shipped pendulum's inference setting
    run = evaluate(policy, "pendulum", [1000, 1001, 1002, 1003])
    assert sum(r.success for r in run.episodes) >= 3


@pytest.mark.parametrize("env", ["pointmass", "pendulum"])
def test_shipped_consistency_presets_load_and_run_an_episode(env):
    for preset, calls in (("cp1", 1), ("cp2", 2)):
        policy = load(env, preset=preset)
        assert policy.config.consistency and policy.config.prediction == "v"
        assert policy.config.steps == calls
        teacher = load(env)
        assert policy.config.n_action_steps == teacher.config.n_action_steps
        result = run_episode(policy, env, seed=1000, max_steps=24)
        assert result.steps == 24
        assert len(result.chunk_latency_ms) == -(-24 // policy.config.n_action_steps)


def test_consistency_distillation_runs_through_train(tmp_path):
    teacher = load("pointmass")
    student, history = train("pointmass", tmp_path / "cp", model="consistency", episodes=2,
                             steps=3, batch_size=16, progress=False)
    assert [h["step"] for h in history if "loss" in h][-1] == 3
    loaded = load(tmp_path / "cp", preset="cp2")
    assert loaded.config.consistency and loaded.config.steps == 2
    # the student started from the teacher's weights and moved
    moved = [not torch.equal(a, b) for a, b in zip(teacher.net.parameters(),
                                                   student.net.parameters())]
    assert any(moved)
    torch.testing.assert_close(loaded.action_normalizer.low, teacher.action_normalizer.low)


def test_shipped_planner_behind_the_policy_interface():
    run = evaluate("planner", "pointmass", [1000, 1001])
    assert run.summary["chunk_latency_ms"]["n"] >= 1 and run.summary["success"] >= 0.5
    with pytest.raises(ValueError, match="pointmass"):
        evaluate("planner", "pendulum", [0])


def test_cli_eval_runs(capsys):
    from pydiff.apps.cli import main

    assert main(["policy", "eval", "--env", "pointmass", "--seeds", "2",
                 "--presets", "expert,rti"]) == 0
    out = capsys.readouterr().out
    assert "expert" in out and "rti" in out
    assert main(["policy", "run", "--env", "pointmass", "--hz", "50", "--mode", "stream"]) == 0
    out = capsys.readouterr().out
    assert "deadline misses" in out and "p99" in out


def test_plots_and_gif_of_a_rendered_episode(tmp_path):
    from pydiff.domains.policy.control import Evaluation

    policy = tiny_policy(mode="rti")
    result = run_episode(policy, "pendulum", seed=0, max_steps=12, record_chunks=True,
                         render=True)
    assert len(result.frames) == 13 and result.frames[0].ndim == 3
    for path in (Evaluation("pendulum", [result]).plot(str(tmp_path / "t.png")),
                 result.plot_chunks(str(tmp_path / "c.png")),
                 result.save_gif(str(tmp_path / "e.gif"))):
        assert (tmp_path / path.split("/")[-1]).stat().st_size > 0
    result.frames = []
    with pytest.raises(ValueError, match="frame"):
        result.save_gif(str(tmp_path / "empty.gif"))


@pytest.mark.parametrize("module", ["", ".chunking", ".train", ".control", ".planner", ".policy",
                                    ".plots", ".validation", ".metrics", ".envs", ".distill"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module("pydiff.domains.policy" + module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_evaluate_draws_another_noise_stream_on_request():
    # noise_seed=0 is the eval's own stream (each episode's generator seeded with its env
    # seed); another stream changes the policy's noise, not the envs
    policy = load("pointmass", preset="cp1")
    seeds = [1000, 1001]
    base = evaluate(policy, "pointmass", seeds, max_steps=10)
    same = evaluate(policy, "pointmass", seeds, max_steps=10, noise_seed=0)
    other = evaluate(policy, "pointmass", seeds, max_steps=10, noise_seed=1)
    for a, b, c in zip(base.episodes, same.episodes, other.episodes):
        np.testing.assert_allclose(a.actions, b.actions, atol=1e-5)
        np.testing.assert_allclose(a.observations[0], c.observations[0])  # same env start
        assert not np.allclose(a.actions, c.actions, atol=1e-3)
    real_time = evaluate(policy, "pointmass", seeds[:1], max_steps=3, hz=1000, noise_seed=1)
    assert real_time.episodes[0].steps == 3
