"""Figures of rollouts: trajectories, action chunks, and GIFs of rendered episodes.

Matplotlib (Agg backend, files only) and Pillow; nothing is shown on screen.

Example:
    >>> import tempfile, os
    >>> from pydiff.domains.policy.control import ExpertPolicy, run_episode
    >>> from pydiff.domains.policy.experts import PointMassExpert
    >>> r = run_episode(ExpertPolicy(PointMassExpert(side=-1)), "pointmass", seed=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = plot_trajectories([r], "pointmass", os.path.join(d, "traj.png"))
    ...     os.path.getsize(path) > 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pydiff.errors import InputError
from pydiff.files import atomic_output

from .control import EpisodeResult
from .envs import pendulum_angle, resolve_env_id


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trajectories(results: Sequence[EpisodeResult], env: str, path: str,
                      title: str = "") -> str:
    """Point mass: x-y paths around the obstacle (colour = side); Pendulum: angle over time;
    Push-T: the block's and the agent's paths and the final T beside the goal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    env_id = resolve_env_id(env)
    if env_id == "Pendulum-v1":
        for r in results:
            angle = np.unwrap(pendulum_angle(r.observations))
            ax.plot(np.arange(len(angle)) * 0.05, angle, lw=1,
                    color="tab:green" if r.success else "tab:red", alpha=0.7)
        ax.set_xlabel("time [s]")
        ax.set_ylabel("angle [rad] (0 = upright)")
    elif env_id == "gym_pusht/PushT-v0":
        from matplotlib.patches import Polygon

        from .pusht import GOAL_POSE, t_corners

        ax.add_patch(Polygon(t_corners(GOAL_POSE), color="tab:green", alpha=0.3))
        for r in results:
            colour = "tab:green" if r.success else "tab:red"
            ax.plot(r.observations[:, 0], r.observations[:, 1], lw=0.5, color="0.5", alpha=0.5)
            ax.plot(r.observations[:, 2], r.observations[:, 3], lw=1.5, color=colour, alpha=0.8)
            ax.add_patch(Polygon(t_corners(r.observations[-1, 2:5]), fill=False, color=colour,
                                 lw=0.8))
        ax.set_xlim(0, 512)
        ax.set_ylim(0, 512)
        ax.set_aspect("equal")
        ax.set_xlabel("block path (green: success), agent path grey, final T outlined")
    else:
        from matplotlib.patches import Circle

        ax.add_patch(Circle((0, 0), 0.3, color="0.6"))
        ax.add_patch(Circle((0, 0.75), 0.08, color="tab:green", alpha=0.5))
        colours = {-1: "tab:blue", 1: "tab:orange", 0: "tab:gray"}
        for r in results:
            ax.plot(r.observations[:, 0], r.observations[:, 1], lw=1, color=colours[r.side],
                    alpha=0.8)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("x (blue: left, orange: right)")
    ax.set_title(title or f"{env}: {len(results)} episodes")
    fig.tight_layout()
    with atomic_output(path, "plot") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def plot_action_chunks(result: EpisodeResult, path: str, title: str = "") -> str:
    """Executed actions over time with every predicted chunk overlaid (first action dim)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(len(result.actions)), result.actions[:, 0], color="k", lw=2,
            label="executed")
    for k, (step, chunk) in enumerate(result.chunks):
        ax.plot(np.arange(step, step + len(chunk)), chunk[:, 0], lw=1, alpha=0.6,
                label="predicted chunks" if k == 0 else None)
    ax.set_xlabel("control step")
    ax.set_ylabel("action[0]")
    ax.legend(loc="best")
    ax.set_title(title or "action chunks")
    fig.tight_layout()
    with atomic_output(path, "plot") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def save_gif(frames: Sequence[np.ndarray], path: str, fps: int = 20) -> str:
    """Write RGB frames ``[H, W, 3]`` (uint8) as an animated GIF."""
    if not frames:
        raise InputError("save_gif needs at least one frame (run the episode with render=True)")
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    with atomic_output(path, "GIF") as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)
    return path


__all__ = ["plot_trajectories", "plot_action_chunks", "save_gif"]
