"""Demonstrations in LeRobot's dataset layout (``LeRobotDataset`` v2.0), and back.

The layout LeRobot v2 writes, without depending on ``lerobot`` (which pulls in torchvision):

- ``data/chunk-000/episode_000000.parquet``: one row per step with ``observation.state``,
  ``action`` (float32 lists), ``episode_index``, ``frame_index``, ``timestamp`` (seconds,
  ``frame_index / fps``), ``next.reward``, ``next.done``, ``next.success``, ``index`` (the
  frame's index in the whole data set) and ``task_index``; at most ``chunks_size`` = 1000
  episodes per chunk folder.
- ``meta/info.json``: ``codebase_version`` "v2.0", ``fps``, the totals, ``splits``,
  ``data_path`` / ``video_path`` templates and every column's ``features`` entry (dtype, shape,
  names).
- ``meta/episodes.jsonl`` (index, tasks, length per episode), ``meta/tasks.jsonl`` and
  ``meta/stats.json`` (mean, std, min, max of each numeric feature).

Row ``t`` holds the observation the action was taken from and the reward, ``done`` and success
the env returned for it, as LeRobot's Push-T data does. Only parquet is written (no videos:
the observations are states). :func:`read_lerobot` reads such a folder back into
:class:`~.data.Episode` objects (the final observation after the last action is not stored in
the layout, so it comes back as the last stored one).

Example:
    >>> import tempfile
    >>> from pydiff.domains.policy.data import collect_demonstrations
    >>> demos = collect_demonstrations("pointmass", episodes=2, seed=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     info = export_lerobot(demos, d + "/pm", env="pointmass")
    ...     back = read_lerobot(d + "/pm")
    >>> info["total_episodes"], len(back), back[0].actions.shape == demos[0].actions.shape
    (2, 2, True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pydiff.errors import InputError
from pydiff.files import atomic_output_dir, check_input_dir, check_input_file

from .data import Episode
from .envs import env_spec, resolve_env_id

CODEBASE_VERSION = "v2.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
# what each env's episodes are asked to do (LeRobot stores a task string per episode)
TASKS = {
    "gym_pusht/PushT-v0": "Push the T-shaped block onto the T-shaped target.",
    "Pendulum-v1": "Swing the pendulum up and balance it upright.",
}
FPS = {"gym_pusht/PushT-v0": 10, "Pendulum-v1": 20}


def _features(obs_dim: int, act_dim: int) -> dict[str, dict[str, Any]]:
    def scalar(dtype: str) -> dict[str, Any]:
        return {"dtype": dtype, "shape": [1], "names": None}

    return {
        "observation.state": {"dtype": "float32", "shape": [obs_dim],
                              "names": {"motors": [f"motor_{i}" for i in range(obs_dim)]}},
        "action": {"dtype": "float32", "shape": [act_dim],
                   "names": {"motors": [f"motor_{i}" for i in range(act_dim)]}},
        "episode_index": scalar("int64"), "frame_index": scalar("int64"),
        "timestamp": scalar("float32"), "next.reward": scalar("float32"),
        "next.done": scalar("bool"), "next.success": scalar("bool"),
        "index": scalar("int64"), "task_index": scalar("int64"),
    }


def _stats(values: np.ndarray) -> dict[str, list[float]]:
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(),
            "min": values.min(0).tolist(), "max": values.max(0).tolist()}


def export_lerobot(episodes: list[Episode], out_dir: str | os.PathLike, *, env: str,
                   fps: int | None = None, task: str | None = None) -> dict[str, Any]:
    """Write ``episodes`` to ``out_dir`` in LeRobot's v2.0 layout; returns ``info.json``.

    Args:
        episodes: demonstrations (:func:`~.data.collect_demonstrations`).
        out_dir: the dataset folder (written atomically; entries of an existing folder with
            the same names are replaced).
        env: the env they come from (sets the default ``fps`` and ``task``).
        fps: control rate (Push-T: 10, gym-pusht's ``render_fps``).
        task: the task string of every episode.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not episodes:
        raise InputError("episodes must hold at least one episode to export")
    env_id = resolve_env_id(env)
    spec = env_spec(env)
    fps = fps or FPS.get(env_id, 10)
    if not fps > 0:
        raise InputError(f"fps must be > 0, got {fps}")
    task = task or TASKS.get(env_id, f"Solve {env_id}.")
    act_dim = len(spec.action_low)
    frames = 0
    stats_rows: dict[str, list[np.ndarray]] = {"observation.state": [], "action": [],
                                               "next.reward": []}
    with atomic_output_dir(out_dir, "out_dir") as tmp:
        for e, ep in enumerate(episodes):
            steps = len(ep.actions)
            obs = np.asarray(ep.observations[:steps], dtype=np.float32)
            act = np.asarray(ep.actions, dtype=np.float32)
            if obs.shape[1] != spec.obs_dim or act.shape[1] != act_dim:
                raise InputError(f"episode {e} has observations {obs.shape[1:]} and actions "
                                 f"{act.shape[1:]}; env {env!r} has {spec.obs_dim} and {act_dim}")
            done = np.zeros(steps, dtype=bool)
            done[-1] = True
            success = np.array([bool(i.get("is_success", False)) for i in ep.infos]
                               if len(ep.infos) == steps else [False] * (steps - 1) + [ep.success])
            table = pa.table({
                "observation.state": pa.array(list(obs), type=pa.list_(pa.float32())),
                "action": pa.array(list(act), type=pa.list_(pa.float32())),
                "episode_index": pa.array(np.full(steps, e, dtype=np.int64)),
                "frame_index": pa.array(np.arange(steps, dtype=np.int64)),
                "timestamp": pa.array(np.arange(steps, dtype=np.float32) / np.float32(fps)),
                "next.reward": pa.array(np.asarray(ep.rewards, dtype=np.float32)),
                "next.done": pa.array(done),
                "next.success": pa.array(success),
                "index": pa.array(np.arange(frames, frames + steps, dtype=np.int64)),
                "task_index": pa.array(np.zeros(steps, dtype=np.int64)),
            })
            path = tmp / DATA_PATH.format(episode_chunk=e // CHUNKS_SIZE, episode_index=e)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            frames += steps
            stats_rows["observation.state"].append(obs)
            stats_rows["action"].append(act)
            stats_rows["next.reward"].append(np.asarray(ep.rewards, dtype=np.float32))
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": "unknown",
            "total_episodes": len(episodes), "total_frames": frames, "total_tasks": 1,
            "total_videos": 0, "total_chunks": (len(episodes) - 1) // CHUNKS_SIZE + 1,
            "chunks_size": CHUNKS_SIZE, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH, "video_path": None,
            "features": _features(spec.obs_dim, act_dim),
        }
        meta = tmp / "meta"
        meta.mkdir()
        (meta / "info.json").write_text(json.dumps(info, indent=4) + "\n")
        (meta / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": task}) + "\n")
        (meta / "episodes.jsonl").write_text("".join(
            json.dumps({"episode_index": e, "tasks": [task], "length": len(ep.actions)}) + "\n"
            for e, ep in enumerate(episodes)))
        stats = {k: _stats(np.concatenate(v)) for k, v in stats_rows.items()}
        (meta / "stats.json").write_text(json.dumps(stats, indent=4) + "\n")
    return info


def read_lerobot(folder: str | os.PathLike) -> list[Episode]:
    """Episodes from a LeRobot v2.x folder with state observations (:func:`export_lerobot`).

    ``seed`` and ``mode`` are not part of the layout: they come back as the episode index and
    0; ``success`` is whether any step's ``next.success`` is set.
    """
    import pyarrow.parquet as pq

    root = check_input_dir(folder, "dataset folder")
    info_path = check_input_file(root / "meta" / "info.json", "dataset info")
    try:
        info = json.loads(info_path.read_text())
        template, total = info["data_path"], int(info["total_episodes"])
        chunks_size = int(info.get("chunks_size", CHUNKS_SIZE))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"dataset info {os.fspath(info_path)!r} is not LeRobot's info.json: "
                         f"{err}") from None
    out = []
    for e in range(total):
        path = Path(root) / template.format(episode_chunk=e // chunks_size, episode_index=e)
        table = pq.read_table(check_input_file(path, "episode file")).to_pydict()
        obs = np.asarray(table["observation.state"], dtype=np.float32)
        act = np.asarray(table["action"], dtype=np.float32)
        success = np.asarray(table["next.success"], dtype=bool)
        out.append(Episode(
            observations=np.concatenate([obs, obs[-1:]]), actions=act,
            rewards=np.asarray(table["next.reward"], dtype=np.float64), seed=e, mode=0,
            success=bool(success.any()),
            infos=[{"is_success": bool(s)} for s in success]))
    return out


__all__ = ["export_lerobot", "read_lerobot", "CODEBASE_VERSION"]
