"""A Push-T expert that plans pushes on copies of the real gym-pusht simulator.

gym-pusht's block is quasi-static (the space's damping is 0, so the T stops the moment nothing
pushes it) and the agent is a kinematic disc that follows its target position with a critically
damped PD law. So Push-T reduces to a sequence of pushes, each one: move around the T to a
start point beside an edge without touching it, then push straight through for a few steps.
:class:`PushTExpert` picks each push by simulating every candidate (contact points along the
T's exposed edges, three push directions, three lengths) in its own gym-pusht ``PushTEnv`` set
to the observed state, scoring where the T ends up (the mean distance of the T's eight corners
to their goal positions, plus a little for the way there), then walks a shortest path around
the T to the start point (a visibility graph around the T grown by the agent's radius) and
executes the push it simulated. It re-plans after every push, and earlier when the T moved
during the walk.

The expert reads only state observations ``[agent_x, agent_y, block_x, block_y, block_angle]``;
the agent's velocity, which the observation lacks, it integrates from its own actions with the
env's PD law (the agent starts at rest after ``reset``).

Example:
    >>> from pydiff.domains.policy.envs import make_env
    >>> env = make_env("pusht")
    >>> expert = PushTExpert()
    >>> obs, info = env.reset(seed=0)
    >>> for _ in range(40):
    ...     obs, reward, terminated, truncated, info = env.step(expert(obs))
    >>> bool(info["coverage"] > 0.0)
    True
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
AGENT_RADIUS = 15.0
# the T's outline in its body frame (gym-pusht's add_tee with scale 30), counter-clockwise
T_OUTLINE = np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [15.0, 30.0], [15.0, 120.0],
                      [-15.0, 120.0], [-15.0, 30.0], [-60.0, 30.0]])
# the corners the cost compares with their goal positions
T_KEYPOINTS = T_OUTLINE
# The env steps the PD law 10 times per action with dt = 0.01 (gym-pusht PushTEnv.step)
_SUBSTEPS, _DT, _KP, _KV = 10, 0.01, 100.0, 20.0


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def t_corners(pose: np.ndarray) -> np.ndarray:
    """The T's outline ``[8, 2]`` in world coordinates for a block pose ``(x, y, angle)``."""
    return T_OUTLINE @ _rotation(pose[2]).T + pose[:2]


def keypoint_features(obs: Any) -> Any:
    """Push-T state observations ``[..., 5]`` as ``[..., 18]``: the agent's position and the
    T's eight outline corners in world coordinates (a torch tensor in, a tensor out).

    The raw block angle wraps at ``2 pi`` (gym-pusht reports ``angle % 2 pi``), so two nearly
    equal poses can differ by ``2 pi`` in the observation; the corners move continuously with
    the pose and say directly which edge faces the agent (Diffusion Policy's low-dimensional
    Push-T conditions on keypoints for the same reason).

    Example:
        >>> import torch
        >>> keypoint_features(torch.tensor([[10.0, 20.0, 256.0, 256.0, 0.0]])).shape
        torch.Size([1, 18])
    """
    import torch

    obs = torch.as_tensor(obs, dtype=torch.float32)
    outline = torch.as_tensor(T_KEYPOINTS, dtype=obs.dtype, device=obs.device)
    cos, sin = torch.cos(obs[..., 4:5]), torch.sin(obs[..., 4:5])
    x = outline[:, 0] * cos - outline[:, 1] * sin + obs[..., 2:3]
    y = outline[:, 0] * sin + outline[:, 1] * cos + obs[..., 3:4]
    corners = torch.stack([x, y], dim=-1).flatten(-2)
    return torch.cat([obs[..., :2], corners], dim=-1)


def pose_error(pose: np.ndarray, goal: np.ndarray = GOAL_POSE) -> float:
    """Mean distance (pixels) of the T's corners from where they are at the goal pose."""
    return float(np.linalg.norm(t_corners(pose) - t_corners(goal), axis=1).mean())


def _pd_step(pos: np.ndarray, vel: np.ndarray, target: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """One env step of the agent (10 PD substeps), as gym-pusht integrates it."""
    for _ in range(_SUBSTEPS):
        vel = vel + (_KP * (target - pos) - _KV * vel) * _DT
        pos = pos + vel * _DT
    return pos, vel


def _edge_candidates(spacing: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contact points on the T's edges and their outward normals, in the body frame."""
    out = []
    n = len(T_OUTLINE)
    for i in range(n):
        a, b = T_OUTLINE[i], T_OUTLINE[(i + 1) % n]
        edge = b - a
        length = float(np.linalg.norm(edge))
        normal = np.array([edge[1], -edge[0]]) / length  # outward for a CCW outline
        count = max(int(length // spacing), 1)
        for k in range(count):
            out.append((a + edge * (k + 0.5) / count, normal))
    return out


class _Obstacle:
    """The T grown by the agent's radius plus a margin, and a shortest path around it."""

    def __init__(self, pose: np.ndarray, margin: float):
        from shapely.geometry import LineString, Point, Polygon

        self._line, self._point = LineString, Point
        outline = Polygon(t_corners(pose))
        self.body = outline.buffer(AGENT_RADIUS + margin)
        # waypoints: a mitred outline a little further out, so paths along it stay clear
        ring = outline.buffer(AGENT_RADIUS + margin + 4.0, join_style=2)
        self.nodes = [np.array(p) for p in list(ring.exterior.coords)[:-1]]

    def clear(self, a: np.ndarray, b: np.ndarray) -> bool:
        return not self.body.intersects(self._line([tuple(a), tuple(b)]))

    def path(self, start: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        """Waypoints from ``start`` to ``goal`` avoiding the grown T (Dijkstra, visibility)."""
        lead: list[np.ndarray] = []
        if self.body.contains(self._point(tuple(start))):
            # touching the T (after a push): back off to the nearest waypoint first
            start = min(self.nodes, key=lambda p: float(np.linalg.norm(p - start)))
            lead = [start]
        if self.clear(start, goal):
            return [*lead, goal]
        points = [start, goal, *self.nodes]
        dist = {0: 0.0}
        previous: dict[int, int] = {}
        heap = [(0.0, 0)]
        done = set()
        while heap:
            d, i = heapq.heappop(heap)
            if i in done:
                continue
            done.add(i)
            if i == 1:
                break
            for j in range(1, len(points)):
                if j in done or not self.clear(points[i], points[j]):
                    continue
                nd = d + float(np.linalg.norm(points[j] - points[i]))
                if nd < dist.get(j, np.inf):
                    dist[j], previous[j] = nd, i
                    heapq.heappush(heap, (nd, j))
        if 1 not in previous:
            return [*lead, goal]  # goal inside the grown T: go straight and let it push
        path, i = [], 1
        while i != 0:
            path.append(points[i])
            i = previous[i]
        return [*lead, *path[::-1]]

    def reachable(self, point: np.ndarray) -> bool:
        """Whether the agent can stand at ``point`` without touching the T."""
        return not self.body.contains(self._point(tuple(point)))


class PushTExpert:
    """Push-T by pushes planned on a copy of the real simulator (module docstring).

    Args:
        mode: +1 or -1; kept for the expert protocol (modes alternate over demonstration
            seeds). Push-T's expert has one mode.
        spacing: pixels between candidate contact points along the T's edges.
        push_lengths: candidate push lengths (pixels).
        push_angles: push directions relative to the edge's inward normal (radians).
        push_speed: pixels the push target advances per step.
        transit_weight: cost per pixel of the way to a push's start point.
        margin: clearance (pixels) kept from the T while walking around it.

    Example:
        >>> expert = PushTExpert()
        >>> expert.reset()
        >>> expert(np.array([100.0, 100.0, 300.0, 300.0, 0.0])).shape
        (2,)
    """

    def __init__(self, mode: int = 1, spacing: float = 15.0,
                 push_lengths: tuple[float, ...] = (3.0, 10.0, 30.0, 80.0),
                 push_angles: tuple[float, ...] = (-0.5, 0.0, 0.5), push_speed: float = 20.0,
                 transit_weight: float = 0.02, margin: float = 6.0,
                 refine_angles: tuple[float, ...] = (-0.6, -0.3, -0.1, 0.0, 0.1, 0.3, 0.6),
                 refine_lengths: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
                                                      100.0),
                 fine_below: float = 10.0, fine_spacing: float = 6.0,
                 fine_angles: tuple[float, ...] = (-0.6, -0.3, 0.0, 0.3, 0.6),
                 fine_lengths: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0)):
        self.mode = mode
        self.candidates = _edge_candidates(spacing)
        self.push_lengths, self.push_angles = push_lengths, push_angles
        self.push_speed, self.transit_weight, self.margin = push_speed, transit_weight, margin
        self.refine_angles, self.refine_lengths = refine_angles, refine_lengths
        self.fine_below, self.fine_candidates = fine_below, _edge_candidates(fine_spacing)
        self.fine_angles, self.fine_lengths = fine_angles, fine_lengths
        self._sim: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget the plan and the agent's velocity (the env resets the agent at rest)."""
        self._vel = np.zeros(2)
        self._plan: list[np.ndarray] = []
        self._pushing = False
        self._direction = np.zeros(2)
        self._planned_pose: np.ndarray | None = None

    def __deepcopy__(self, memo: dict) -> PushTExpert:
        # the simulator copy holds C objects: a copy makes its own on first use
        clone = PushTExpert.__new__(PushTExpert)
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_sim"})
        clone._sim = None
        clone.reset()
        return clone

    # -- simulation -------------------------------------------------------------------------

    def _simulator(self) -> Any:
        if self._sim is None:
            from .envs import make_env

            env = make_env("pusht")
            self._sim = env.unwrapped
            self._sim.reset(seed=0)
        return self._sim

    def _simulate_push(self, pose: np.ndarray, start: np.ndarray, actions: list[np.ndarray],
                       velocity: np.ndarray | None = None) -> np.ndarray:
        """The block pose after the agent, at ``start`` (at rest, or moving at ``velocity``),
        follows ``actions``."""
        sim = self._simulator()
        sim.agent.position = (float(start[0]), float(start[1]))
        vel = (0.0, 0.0) if velocity is None else (float(velocity[0]), float(velocity[1]))
        sim.agent.velocity = vel
        # angle first: pymunk turns the body about its centre of gravity, which moves the
        # position the observation reports
        sim.block.angle = float(pose[2])
        sim.block.position = (float(pose[0]), float(pose[1]))
        sim.block.velocity = (0.0, 0.0)
        sim.block.angular_velocity = 0.0
        for action in actions:
            self._sim_step(sim, action)
        return np.array([sim.block.position[0], sim.block.position[1], sim.block.angle])

    @staticmethod
    def _sim_step(sim: Any, action: np.ndarray) -> None:
        # PushTEnv.step without its coverage and observation (the planner reads the pose)
        for _ in range(_SUBSTEPS):
            vx, vy = sim.agent.velocity
            px, py = sim.agent.position
            sim.agent.velocity = (vx + (_KP * (action[0] - px) - _KV * vx) * _DT,
                                  vy + (_KP * (action[1] - py) - _KV * vy) * _DT)
            sim.space.step(_DT)

    def _push_actions(self, start: np.ndarray, direction: np.ndarray, length: float
                      ) -> list[np.ndarray]:
        steps = int(np.ceil(length / self.push_speed))
        # the target holds at the end for two steps so the agent (PD lag) gets there
        return [start + direction * min((k + 1) * self.push_speed, length)
                for k in range(steps)] + [start + direction * length] * 2

    def _plan_push(self, agent: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, list] | None:
        """The best push (start point, actions) from this state, or None if none helps."""
        rotation = _rotation(pose[2])
        obstacle = _Obstacle(pose, self.margin - 2.0)
        error = pose_error(pose)
        best, best_cost = None, error
        fine = error < self.fine_below
        candidates = self.fine_candidates if fine else self.candidates
        angles = self.fine_angles if fine else self.push_angles
        lengths = self.fine_lengths if fine else self.push_lengths
        # near the goal, gains are a few pixels: the way there must not outweigh them
        transit_weight = self.transit_weight * min(1.0, error / 30.0)
        for point, normal in candidates:
            contact = rotation @ point + pose[:2]
            outward = rotation @ normal
            start = contact + outward * (AGENT_RADIUS + self.margin)
            if np.any(start < 20.0) or np.any(start > 492.0) or not obstacle.reachable(start):
                continue
            transit = transit_weight * float(np.linalg.norm(start - agent))
            for angle in angles:
                direction = _rotation(angle) @ -outward
                for length in lengths:
                    actions = self._push_actions(start, direction, length + self.margin)
                    after = self._simulate_push(pose, start, actions)
                    cost = pose_error(after) + transit
                    if cost < best_cost:
                        best, best_cost = (start, direction, after), cost
        return best

    def _refine_push(self, agent: np.ndarray, pose: np.ndarray, direction: np.ndarray
                     ) -> list[np.ndarray]:
        """At the start point: the best push near ``direction`` simulated from the agent's
        actual position and velocity (the walk there ends a pixel or so off), or none."""
        best, best_cost = [], pose_error(pose)
        for angle in self.refine_angles:
            turned = _rotation(angle) @ direction
            for length in self.refine_lengths:
                actions = self._push_actions(agent, turned, length + self.margin)
                after = self._simulate_push(pose, agent, actions, self._vel)
                cost = pose_error(after)
                if cost < best_cost:
                    best, best_cost = actions, cost
        return best

    # -- control ----------------------------------------------------------------------------

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        agent, pose = obs[:2], obs[2:5]
        moved = (self._planned_pose is not None and not self._pushing
                 and pose_error(pose, self._planned_pose) > 2.0)
        if not self._plan or moved:
            self._replan(agent, pose)
        if not self._pushing and self._plan:
            target = self._plan[0]
            # next waypoint once close; the push starts once at the start point and slow
            close = np.linalg.norm(target - agent) < (1.0 if len(self._plan) == 1 else 10.0)
            if close and (len(self._plan) > 1 or np.linalg.norm(self._vel) < 5.0):
                self._plan.pop(0)
                if not self._plan:
                    self._plan = self._refine_push(agent, pose, self._direction)
                    self._pushing = bool(self._plan)
        if self._plan:
            action = self._plan.pop(0) if self._pushing else self._plan[0]
        else:
            action = agent
        if self._pushing and not self._plan:
            self._pushing = False  # the push is done: plan the next one on the next call
        action = np.clip(action, 0.0, 512.0)
        _, self._vel = _pd_step(agent, self._vel, action)
        return action.astype(np.float32)

    def _replan(self, agent: np.ndarray, pose: np.ndarray) -> None:
        self._pushing = False
        self._planned_pose = pose.copy()
        best = self._plan_push(agent, pose)
        if best is None:
            # no push helps from here: hold still a few steps, then look again
            self._plan = [agent.copy()] * 5
            self._pushing = True
            return
        start, self._direction, _ = best
        self._plan = _Obstacle(pose, self.margin - 2.0).path(agent, start)


def expert_from_state(observations: np.ndarray, actions: np.ndarray, k: int,
                      max_steps: int = 150) -> Any:
    """The expert continuing an episode from its step ``k`` (DAgger's correction).

    ``observations [T + 1, 5]`` and ``actions [T, 2]`` are an episode of any policy from
    ``env.reset``. A fresh gym-pusht env is set to step ``k``'s state (the block's pose, the
    agent's position, and the agent's velocity, which the observations lack: the env's PD law
    integrated over the executed actions from rest, as the expert itself integrates it; the
    agent is kinematic, so contacts never change it) and a fresh :class:`PushTExpert` runs from
    there for at most ``max_steps`` steps or until the env reports success.

    Returns:
        An :class:`~.data.Episode` whose first observation and action are step ``k - 1``'s
        (the policy's, so the first window's history holds the agent's motion) and the rest the
        expert's, or None if ``k < 1``.

    Example:
        >>> from pydiff.domains.policy.data import rollout_expert
        >>> ep = rollout_expert("pusht", seed=0, max_steps=12)
        >>> fix = expert_from_state(ep.observations, ep.actions, k=6, max_steps=3)
        >>> fix.observations.shape, fix.actions.shape
        ((5, 5), (4, 2))
    """
    from .data import Episode
    from .envs import make_env

    if not 1 <= k <= len(actions):
        return None
    pos, vel = np.asarray(observations[0, :2], dtype=np.float64), np.zeros(2)
    for action in actions[:k]:
        pos, vel = _pd_step(pos, vel, np.asarray(action, dtype=np.float64))
    env = make_env("pusht")
    env.reset(seed=0)
    sim = env.unwrapped
    obs = np.asarray(observations[k], dtype=np.float64)
    sim.agent.position = (float(obs[0]), float(obs[1]))
    sim.agent.velocity = (float(vel[0]), float(vel[1]))
    sim.block.angle = float(obs[4])  # angle first (module docstring of PushTExpert's sim)
    sim.block.position = (float(obs[2]), float(obs[3]))
    sim.block.velocity, sim.block.angular_velocity = (0.0, 0.0), 0.0
    expert = PushTExpert()
    expert._vel = vel.copy()
    obs = sim.get_obs()
    observations_out = [np.asarray(observations[k - 1], dtype=np.float32), obs]
    actions_out = [np.asarray(actions[k - 1], dtype=np.float32)]
    rewards, infos = [0.0], [{}]
    success = False
    for _ in range(max_steps):
        action = expert(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        observations_out.append(obs)
        actions_out.append(action)
        rewards.append(float(reward))
        infos.append(info)
        success = bool(info.get("is_success", False))
        if terminated or truncated:
            break
    env.close()
    return Episode(np.asarray(observations_out, dtype=np.float32),
                   np.asarray(actions_out, dtype=np.float32), np.asarray(rewards), seed=-1,
                   mode=1, success=success, infos=infos)


def collect_corrections(policy: Any, seeds: list[int], every: int = 48, max_steps: int = 150,
                        only_success: bool = True) -> list[Any]:
    """DAgger for Push-T: roll ``policy`` out on ``seeds`` (lockstep, :func:`~.control.evaluate`)
    and let the expert continue from every ``every``-th step of each episode
    (:func:`expert_from_state`).

    A policy trained on the expert's demonstrations drifts into states the expert never
    visits (near the goal it dithers, then knocks the T away); the corrections are expert
    episodes from exactly those states, to train on beside the demonstrations.

    Returns:
        The corrections as :class:`~.data.Episode` objects (with ``only_success``, those in
        which the expert reached the goal), ``seed`` set to the rollout's seed.
    """
    from .control import evaluate

    out = []
    for episode in evaluate(policy, "pusht", list(seeds)).episodes:
        for k in range(every, episode.steps, every):
            fix = expert_from_state(episode.observations, episode.actions, k, max_steps)
            if fix is not None and (fix.success or not only_success):
                fix.seed = episode.seed
                out.append(fix)
    return out


__all__ = ["PushTExpert", "expert_from_state", "collect_corrections", "keypoint_features",
           "pose_error", "t_corners", "GOAL_POSE", "T_OUTLINE"]
