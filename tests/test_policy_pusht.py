"""Push-T in the policy domain: the real gym-pusht env through make_env, the planning expert,
demonstrations in LeRobot's layout, and the eval contract (``coverage`` in the JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydiff.domains.policy import evaluate, make_env
from pydiff.domains.policy.data import collect_demonstrations, rollout_expert
from pydiff.domains.policy.envs import env_spec
from pydiff.domains.policy.experts import make_expert
from pydiff.domains.policy.lerobot import export_lerobot, read_lerobot
from pydiff.domains.policy.pusht import PushTExpert, pose_error

import pydiff


def test_make_env_is_the_real_gym_pusht_with_state_observations():
    import gym_pusht.envs.pusht as real

    env = make_env("pusht")
    assert isinstance(env.unwrapped, real.PushTEnv) and env.unwrapped.obs_type == "state"
    obs, _ = env.reset(seed=3)
    assert obs.shape == (env_spec("pusht").obs_dim,)
    obs2, reward, terminated, truncated, info = env.step(obs[:2])
    assert 0.0 <= info["coverage"] <= 1.0 and reward == pytest.approx(
        min(info["coverage"] / 0.95, 1.0))
    env.close()


def test_the_expert_predicts_a_push_on_its_simulator_copy():
    # the expert plans on its own gym-pusht PushTEnv: a push it simulates must happen the
    # same way in the env the episode runs in
    env = make_env("pusht")
    env.reset(seed=0)
    sim = env.unwrapped
    pose = np.array([300.0, 250.0, 0.4])
    sim._set_state(np.array([300.0, 140.0, *pose]))
    pose = np.array([*sim.block.position, sim.block.angle])
    start = np.array(sim.agent.position)
    expert = PushTExpert()
    actions = expert._push_actions(start, np.array([0.0, 1.0]), 60.0)
    predicted = expert._simulate_push(pose, start, actions)
    for action in actions:
        env.step(action)
    actual = np.array([*sim.block.position, sim.block.angle])
    assert pose_error(predicted, pose) > 20.0  # the push moved the T ...
    # ... as predicted, to within the contact solver's warm start (another space's cache)
    np.testing.assert_allclose(predicted, actual, atol=0.02)
    env.close()


def test_expert_makes_coverage_progress_in_a_few_steps():
    expert = make_expert("pusht")
    expert.reset()
    env = make_env("pusht")
    obs, _ = env.reset(seed=1002)
    first_error, coverage = pose_error(obs[2:5]), []
    for _ in range(40):
        obs, _, terminated, _, info = env.step(expert(obs))
        coverage.append(info["coverage"])
        if terminated:
            break
    assert pose_error(obs[2:5]) < 0.2 * first_error
    assert max(coverage) > coverage[0] + 0.5
    env.close()


def test_expert_continues_from_a_visited_state_with_the_agents_velocity():
    # DAgger's correction: the env is set to step k of an episode, the agent's hidden velocity
    # comes from the PD law over the executed actions (exactly the env's), and the expert
    # finishes the task from there
    from pydiff.domains.policy.pusht import expert_from_state

    episode = rollout_expert("pusht", seed=1002)
    k = 20
    fix = expert_from_state(episode.observations, episode.actions, k)
    assert fix.success and fix.infos[-1]["coverage"] > 0.95
    # the first frame is the episode's step k - 1, the second its step k
    np.testing.assert_allclose(fix.observations[:2], episode.observations[k - 1:k + 1],
                               atol=1e-3)
    np.testing.assert_allclose(fix.actions[0], episode.actions[k - 1])
    # the first expert step leaves the agent where the same action leaves it in the episode,
    # which needs the velocity the observation lacks
    env = make_env("pusht")
    env.reset(seed=1002)
    for action in episode.actions[:k]:
        env.step(action)
    _, _, _, _, info = env.step(fix.actions[1])
    np.testing.assert_allclose(fix.infos[1]["pos_agent"], info["pos_agent"], atol=1e-3)
    assert np.linalg.norm(episode.infos[k - 1]["vel_agent"]) > 1.0  # moving: velocity matters
    assert expert_from_state(episode.observations, episode.actions, 0) is None
    env.close()


def test_expert_eval_reports_coverage_beside_success(tmp_path):
    from pydiff.apps.cli import main

    out = tmp_path / "eval.json"
    assert main(["policy", "eval", "--env", "pusht", "--seeds", "1", "--seed0", "1014",
                 "--presets", "expert", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    row = table["expert"]
    assert {"success", "return", "chunk_latency_ms", "coverage"} <= set(row)
    assert row["success"] == 1.0 and row["coverage"] > 0.95
    # envs without a coverage keep the schema as it was
    assert "coverage" not in evaluate("expert", "pointmass", [0]).summary


def test_shipped_pusht_policy_through_eval_keeps_the_contract(tmp_path):
    from pydiff.apps.cli import main
    from pydiff.domains.policy import load

    policy = load("pusht", preset="ddim10")
    assert policy.config.env == "pusht" and policy.config.obs_dim == 5
    out = tmp_path / "eval.json"
    assert main(["policy", "eval", "--env", "pusht", "--seeds", "1", "--seed0", "1002",
                 "--presets", "ddim10", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["ddim10"]
    assert {"success", "return", "chunk_latency_ms", "coverage"} <= set(row)
    assert {"p50", "p99"} <= set(row["chunk_latency_ms"]) and 0.0 <= row["coverage"] <= 1.0


def test_keypoint_features_are_the_t_corners_and_ignore_the_angle_wrap():
    import torch
    from pydiff.domains.policy.pusht import keypoint_features, t_corners

    pose = np.array([300.0, 200.0, 0.3])
    obs = torch.tensor([[10.0, 20.0, *pose]])
    features = keypoint_features(obs)[0].numpy()
    assert np.allclose(features[:2], [10.0, 20.0])
    assert np.allclose(features[2:].reshape(8, 2), t_corners(pose), atol=1e-3)
    # gym-pusht reports angle % 2 pi: angles just either side of the wrap are near poses
    near = keypoint_features(torch.tensor([[0.0, 0.0, 256.0, 256.0, 2 * np.pi - 1e-3],
                                           [0.0, 0.0, 256.0, 256.0, 1e-3]]))
    assert float((near[0] - near[1]).abs().max()) < 0.5


def test_policy_conditions_on_features_and_saves_the_choice(tmp_path):
    import torch
    from pydiff.domains.policy import DiffusionPolicy, DiffusionPolicyConfig

    demos = [rollout_expert("pusht", seed=0, max_steps=20)]
    policy, data = DiffusionPolicy.for_demonstrations(
        demos, env_spec("pusht"), down_dims=(16, 32), obs_features="pusht_keypoints")
    assert data["observation"].shape[-1] == 5  # the history keeps the env's observations
    assert policy.obs_normalizer.low.shape == (18,)
    loss, _ = policy(data)
    assert torch.isfinite(loss)
    policy.save_pretrained(tmp_path / "p")
    loaded = DiffusionPolicy.from_pretrained(tmp_path / "p")
    assert loaded.config.obs_features == "pusht_keypoints"
    obs = data["observation"][:3]
    gen = [torch.Generator().manual_seed(0) for _ in range(3)]
    same = [torch.Generator().manual_seed(0) for _ in range(3)]
    assert torch.allclose(policy.eval().predict_action_chunk(obs, generator=gen),
                          loaded.predict_action_chunk(obs, generator=same), atol=1e-4)
    with pytest.raises(pydiff.InputError, match="obs_features"):
        DiffusionPolicyConfig(obs_dim=4, action_dim=2, action_low=[0, 0], action_high=[1, 1],
                              obs_features="pusht_keypoints")
    with pytest.raises(pydiff.InputError, match="obs_features"):
        DiffusionPolicyConfig(obs_dim=5, action_dim=2, action_low=[0, 0], action_high=[1, 1],
                              obs_features="corners")


def test_train_from_a_lerobot_folder_stops_at_the_time_budget(tmp_path):
    import time

    from pydiff.domains.policy import train

    export_lerobot([rollout_expert("pusht", seed=0, max_steps=20)], tmp_path / "demos",
                   env="pusht")
    start = time.perf_counter()
    policy, history = train("pusht", tmp_path / "p", demos=tmp_path / "demos", steps=10**6,
                            minutes=0.05, batch_size=8, down_dims=(16, 32), progress=False)
    assert time.perf_counter() - start < 120  # a million steps would take hours
    assert policy.config.obs_features == "pusht_keypoints"  # the recipe's
    assert 0 < max(h.get("step", 0) for h in history) < 10**6
    assert (tmp_path / "p" / "config.json").is_file()


def test_demonstrations_round_trip_through_lerobot_layout(tmp_path):
    import pyarrow.parquet as pq

    episode = rollout_expert("pusht", seed=1014)
    assert episode.success
    info = export_lerobot([episode, episode], tmp_path / "pusht", env="pusht")
    meta = json.loads((tmp_path / "pusht" / "meta" / "info.json").read_text())
    assert meta == info and meta["codebase_version"] == "v2.0" and meta["fps"] == 10
    assert meta["total_episodes"] == 2 and meta["total_frames"] == 2 * len(episode.actions)
    assert meta["features"]["observation.state"]["shape"] == [5]
    table = pq.read_table(tmp_path / "pusht" / "data" / "chunk-000" / "episode_000001.parquet")
    assert table.column_names == ["observation.state", "action", "episode_index",
                                  "frame_index", "timestamp", "next.reward", "next.done",
                                  "next.success", "index", "task_index"]
    assert table["index"][0].as_py() == len(episode.actions)  # global frame index
    lines = (tmp_path / "pusht" / "meta" / "episodes.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"episode_index": 1, "tasks": [json.loads(
        (tmp_path / "pusht" / "meta" / "tasks.jsonl").read_text())["task"]],
        "length": len(episode.actions)}
    back = read_lerobot(tmp_path / "pusht")
    np.testing.assert_array_equal(back[1].actions, episode.actions)
    np.testing.assert_array_equal(back[1].observations[:-1], episode.observations[:-1])
    np.testing.assert_allclose(back[1].rewards, episode.rewards, rtol=1e-6)
    assert back[1].success


def test_lerobot_export_refuses_bad_input(tmp_path):
    episodes = collect_demonstrations("pointmass", episodes=1, seed=0)
    with pytest.raises(pydiff.InputError, match="episodes"):
        export_lerobot([], tmp_path / "x", env="pointmass")
    with pytest.raises(pydiff.InputError, match="episode 0"):
        export_lerobot(episodes, tmp_path / "x", env="pusht")
    (tmp_path / "file").write_text("x")
    with pytest.raises(pydiff.InputError, match="out_dir"):
        export_lerobot(episodes, tmp_path / "file", env="pointmass")
    with pytest.raises(pydiff.InputError, match="dataset folder"):
        read_lerobot(tmp_path / "missing")
    (tmp_path / "bad" / "meta").mkdir(parents=True)
    (tmp_path / "bad" / "meta" / "info.json").write_text("{}")
    with pytest.raises(pydiff.InputError, match="info.json"):
        read_lerobot(tmp_path / "bad")


def test_cli_demos_writes_a_lerobot_dataset(tmp_path, capsys):
    from pydiff.apps.cli import main

    assert main(["policy", "demos", "--env", "pointmass", "--episodes", "2",
                 "--out", str(tmp_path / "d")]) == 0
    assert "2 episodes" in capsys.readouterr().out
    assert len(read_lerobot(tmp_path / "d")) == 2


def test_docstring_examples_of_the_pusht_modules():
    import doctest
    import importlib

    for name in (".pusht", ".lerobot", ".features"):
        mod = importlib.import_module("pydiff.domains.policy" + name)
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0
