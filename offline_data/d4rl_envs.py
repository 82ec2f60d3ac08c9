"""D4RL's evaluation environments on today's MuJoCo bindings: gymnasium's MuJoCo envs, and D4RL's AntMaze, Kitchen
and Adroit (pen, door, hammer, relocate) envs rebuilt on Gymnasium-Robotics (D4RL's own need mujoco_py). Sources:
Farama-Foundation/D4RL."""

import contextlib
import functools
import io
import os
import sys
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable

import gymnasium as gym
import mujoco
import numpy as np

from offline_data.d4rl_files import domain_of
from offline_data.evaluation_envs import settotalmass_warning_dropped
from offline_data.source import UserError


def make_mujoco_env(gym_id: str) -> gym.Env:
    with warnings.catch_warnings(), settotalmass_warning_dropped():
        warnings.simplefilter("ignore")  # gymnasium flags the v4 envs as out of date; v4 is the closest to D4RL's v2
        return gym.make(gym_id)


def import_gymnasium_robotics():
    """gymnasium_robotics (ImportError where it is not installed), imported without the notice that its versions 1.2.1
    to 1.4.2 print to stderr in every process that imports it: their Adroit v1 dense reward changed (its PR #220). The
    Adroit envs here recompute D4RL's reward (D4RLAdroitReward) and the AntMaze and Kitchen envs never use it; anything
    else the import prints is printed."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            import gymnasium_robotics
    finally:  # a failed import's output too
        lines = printed.getvalue().splitlines(keepends=True)
        sys.stderr.write("".join(line for line in lines if "reward functions were updated in v1.2.1" not in line))
    return gymnasium_robotics


# AntMaze (d4rl/locomotion). The evaluation mazes, row i / column j as in maze_env.py (U_MAZE_TEST, BIG_MAZE_TEST,
# HARDEST_MAZE_TEST): '#' wall, 'r' start cell, 'g' the evaluation goal cell. Their walls equal those of the data
# mazes U_MAZE, BIG_MAZE and HARDEST_MAZE; 'play' and 'diverse' only differ in the data (locomotion/__init__.py).
ANTMAZE_MAZES = {
    "umaze": ("#####", "#r..#", "###.#", "#g..#", "#####"),
    "medium": ("########", "#r.##..#", "#..#...#", "##...###", "#..#...#", "#.#..#.#", "#...#.g#", "########"),
    "large": (
        "############",
        "#r...#.....#",
        "#.##.#.#.#.#",
        "#......#...#",
        "#.####.###.#",
        "#..#.#.....#",
        "##.#.#.#.###",
        "#..#...#.g.#",
        "############",
    ),
}
ANTMAZE_MAX_EPISODE_STEPS = {"umaze": 700, "medium": 1000, "large": 1000}  # locomotion/__init__.py, the v2 ids
ANTMAZE_SCALING = 4.0  # maze_size_scaling, locomotion/__init__.py
ANTMAZE_GOAL_RADIUS = 0.5  # goal_reaching_env.py GoalReachingEnv.step: reward 1 and done when |xy - goal| <= 0.5


def antmaze_maze_name(env_id: str) -> str:
    """'antmaze-medium-play-v2' -> 'medium', 'antmaze-umaze-diverse-v2' -> 'umaze'."""
    parts = env_id.split("-")
    if parts[0] != "antmaze" or parts[-1] != "v2" or parts[1] not in ANTMAZE_MAZES:
        raise UserError(f"{env_id!r} is not a D4RL antmaze-*-v2 id")
    return parts[1]


def d4rl_ant_xml(path: str) -> None:
    """Write D4RL's ant model (locomotion/assets/ant.xml) to `path`, made from gymnasium's ant.xml, whose bodies,
    joints, geoms, masses and friction are the same. Three physical differences are undone: D4RL integrates with
    timestep 0.02 (gymnasium 0.01); its default geom has solimp ".8 .8 .01" (gymnasium none: MuJoCo's .9 .95 .001),
    which every contact takes, the maze's blocks' too (they join this model); and its motors have gear 1 and
    ctrlrange [-30, 30] (gymnasium gear 150 on [-1, 1])."""
    from gymnasium.envs.mujoco import ant_v5

    tree = ET.parse(os.path.join(os.path.dirname(ant_v5.__file__), "assets", "ant.xml"))
    tree.getroot().find("option").set("timestep", "0.02")
    tree.getroot().find("default/geom").attrib.update(solref=".02 1", solimp=".8 .8 .01")
    for motor in tree.getroot().find("actuator"):
        motor.set("ctrlrange", "-30.0 30.0")
        motor.attrib.pop("gear", None)  # MuJoCo's default gear is 1
    tree.write(path)


class D4RLAntMazeEnv(gym.Env):
    """What D4RL's antmaze-*-v2 env gives the policy (ant.py AntMazeEnv with eval=True, expose_all_qpos=True,
    v2_resets=True, inside wrappers.py NormalizedBoxEnv), with Gymnasium-Robotics' AntMaze-v5 doing the physics.

    Frame: D4RL puts the origin at the centre of the start cell, cell (i, j) at (4j - 4, 4i - 4) for start cell (1, 1)
    (maze_env.py MazeEnv.__init__, _rowcol_to_xy); rows go towards +y. Gymnasium-Robotics centres the maze at the
    origin with row 0 at the top (+y) (maze_v4.py Maze.cell_rowcol_to_xy), the mirror image; it is given the rows in
    reverse order, which makes its world D4RL's shifted by `self.offset` (umaze (-4, -4), medium (-10, -10), large
    (-18, -12)).
    Observation (29,) float64: [qpos(15), qvel(14)] with qpos[:2] in D4RL's frame (ant.py AntEnv._get_obs with
    expose_all_qpos; goal_reaching_env.py _get_obs appends no goal when eval=True).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # dt = 0.1 s

    def __init__(self, maze: str):
        from gymnasium_robotics.envs.maze.ant_maze_v5 import AntMazeEnv

        rows = ANTMAZE_MAZES[maze]
        cells = {"#": 1, ".": 0, "r": "r", "g": "g"}  # Gymnasium-Robotics' map codes
        fd, xml_path = tempfile.mkstemp(suffix=".xml")
        os.close(fd)
        try:
            d4rl_ant_xml(xml_path)
            self.maze_env = AntMazeEnv(
                maze_map=[[cells[c] for c in row] for row in reversed(rows)],
                xml_file=xml_path,
                continuing_task=False,
                reset_target=False,
                include_cfrc_ext_in_observation=False,
            )
        finally:
            os.remove(xml_path)
        with contextlib.suppress(OSError):  # the maze model is loaded; Gymnasium-Robotics never deletes its file
            os.remove(self.maze_env.tmp_xml_file_path)
        self.ant = self.maze_env.ant_env  # gymnasium AntEnv-v5: frame_skip 5, so dt = 5 * 0.02 = 0.1 as in ant.py
        start = next((i, row.index("r")) for i, row in enumerate(rows) if "r" in row)
        goal_i, goal_j = next((i, row.index("g")) for i, row in enumerate(rows) if "g" in row)
        # world xy of the start cell's centre = D4RL's origin (maze_env.py _find_robot)
        self.offset = self.maze_env.maze.cell_rowcol_to_xy(np.array([len(rows) - 1 - start[0], start[1]]))
        self.goal_cell_xy = ANTMAZE_SCALING * np.array([goal_j - start[1], goal_i - start[0]], dtype=np.float64)
        self.max_episode_steps = ANTMAZE_MAX_EPISODE_STEPS[maze]
        self.goal = self.goal_cell_xy.copy()
        self.ctrl_low, self.ctrl_high = self.ant.model.actuator_ctrlrange.T.copy()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (29,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)  # wrappers.py NormalizedBoxEnv

    def sample_goal(self) -> np.ndarray:
        """maze_env.py MazeEnv.goal_sampler: the goal cell's centre + U(0, 0.25 s) + U(0, 0.5) * 0.25 s per axis
        (s = 4: an offset in [0, 1.5] m, never negative), floored at 0."""
        s = ANTMAZE_SCALING
        noise = self.np_random.uniform(0, 0.25 * s, 2) + self.np_random.uniform(0, 0.5, 2) * 0.25 * s
        return np.maximum(self.goal_cell_xy + noise, 0.0)

    def set_goal(self, goal_xy) -> None:
        self.goal = np.asarray(goal_xy, dtype=np.float64).copy()
        self.maze_env.goal = self.goal + self.offset  # Gymnasium-Robotics' goal: only drawn, never used here
        self.maze_env.update_target_site_pos()

    def set_state(self, qpos, qvel) -> None:
        """qpos (15,), qvel (14,) in D4RL's frame (like mujoco_env.MujocoEnv.set_state: qpos, qvel, then forward)."""
        qpos = np.array(qpos, dtype=np.float64)
        qpos[:2] += self.offset
        self.ant.set_state(qpos, np.array(qvel, dtype=np.float64))

    def get_state(self) -> tuple:
        qpos = self.ant.data.qpos.copy()
        qpos[:2] -= self.offset
        return qpos, self.ant.data.qvel.copy()

    def _obs(self) -> np.ndarray:
        return np.concatenate(self.get_state())

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """ant.py AntMazeEnv.reset with v2_resets: a new goal every episode, then AntEnv.reset_model: qpos0 (torso at
        the origin, z 0.75, joints 0) + U(-0.1, 0.1) on all 15 qpos, N(0, 0.1^2) on all 14 qvel."""
        super().reset(seed=seed)
        self.maze_env.reset(seed=seed)
        self.set_goal(self.sample_goal())
        qpos = self.ant.model.qpos0.copy()  # free joint: the torso's xml position (0, 0, 0.75), in D4RL's frame
        qpos += self.np_random.uniform(-0.1, 0.1, self.ant.model.nq)
        qvel = 0.1 * self.np_random.standard_normal(self.ant.model.nv)
        self.set_state(qpos, qvel)
        return self._obs(), {"goal": self.goal.copy()}

    def step(self, action):
        """wrappers.py NormalizedBoxEnv.step scales [-1, 1] to the motors' [-30, 30] and clips; ant.py AntEnv.step runs
        5 MuJoCo steps (its own reward and done are discarded by goal_reaching_env.py GoalReachingEnv.step, which pays
        1 within 0.5 m of the goal and, with eval=True, ends the episode there)."""
        action = np.asarray(action, dtype=np.float64)
        ctrl = np.clip(
            self.ctrl_low + (action + 1.0) * 0.5 * (self.ctrl_high - self.ctrl_low), self.ctrl_low, self.ctrl_high
        )
        self.maze_env.step(ctrl)
        obs = self._obs()
        success = bool(np.linalg.norm(obs[:2] - self.goal) <= ANTMAZE_GOAL_RADIUS)
        return obs, float(success), success, False, {"success": success, "goal": self.goal.copy()}

    def render(self):
        return self.ant.mujoco_renderer.render("rgb_array")

    def close(self):
        self.maze_env.close()


def make_antmaze_env(env_id: str) -> gym.Env:
    """The evaluation env of a D4RL antmaze-*-v2 id: episodes end on reaching the goal (return 1) or after
    max_episode_steps (return 0), so the D4RL normalized score (ref min 0, max 1, infos.py) is 100 * success."""
    import_gymnasium_robotics()
    env = D4RLAntMazeEnv(antmaze_maze_name(env_id))
    return gym.wrappers.TimeLimit(env, max_episode_steps=env.max_episode_steps)


# Kitchen: d4rl/kitchen/kitchen_envs.py (KitchenBase) on d4rl/kitchen/adept_envs/franka/kitchen_multitask_v0.py
# (KitchenV0) and .../franka/robot/franka_robot.py.
KITCHEN_TASKS = {  # TASK_ELEMENTS of the class each id is registered with (d4rl/kitchen/__init__.py)
    "kitchen-partial-v0": ("microwave", "kettle", "light switch", "slide cabinet"),
    "kitchen-mixed-v0": ("microwave", "kettle", "bottom burner", "light switch"),
}
# task: (its entries of obs[:30] = the 30 qpos, its goal); OBS_ELEMENT_INDICES / OBS_ELEMENT_GOALS of kitchen_envs.py
KITCHEN_ELEMENTS = {
    "bottom burner": ([11, 12], [-0.88, -0.01]),
    "light switch": ([17, 18], [-0.69, -0.05]),
    "slide cabinet": ([19], [0.37]),
    "microwave": ([22], [-0.75]),
    "kettle": ([23, 24, 25, 26, 27, 28, 29], [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),
}
KITCHEN_THRESHOLD = 0.3  # BONUS_THRESH: a task is done when ||obs[indices] - goal|| < 0.3
KITCHEN_MAX_STEPS = 280  # max_episode_steps of every kitchen id
# KitchenV0.init_qpos: the reset state (qvel = 0: its keyframe gives qpos only); the same numbers as Gymnasium-Robotics'
# KitchenEnv. Order: 9 robot joints, 4 x (burner knob, burner), light switch, light, slide cabinet, 2 hinge doors,
# microwave, kettle (x, y, z, qw, qx, qy, qz).
KITCHEN_INIT_QPOS = np.array(
    [
        1.48388023e-01,
        -1.76848573e00,
        1.84390296e00,
        -2.47685760e00,
        2.60252026e-01,
        7.12533105e-01,
        1.59515394e00,
        4.79267505e-02,
        3.71350919e-02,
        -2.66279850e-04,
        -5.18043486e-05,
        3.12877220e-05,
        -4.51199853e-05,
        -3.90842156e-06,
        -4.22629655e-05,
        6.28065475e-05,
        4.04984708e-05,
        4.62730939e-04,
        -2.26906415e-04,
        -4.65501369e-04,
        -6.44129196e-03,
        -1.77048263e-03,
        1.08009684e-03,
        -2.69397440e-01,
        3.50383255e-01,
        1.61944683e00,
        1.00618764e00,
        4.06395120e-03,
        -6.62095997e-03,
        -2.68278933e-04,
    ]
)
# Observation noise: uniform(-1, 1) * robot_noise_ratio (0.1 in KitchenV0) * pos_noise_amp of qpos0..qpos29 in
# franka_config.xml; franka_robot.py adds it to the robot AND the object positions.
KITCHEN_QPOS_NOISE = 0.1 * np.array(
    [0.1] * 9 + [0.005] * 2 + [0.0005] * 6 + [0.005] * 3 + [0.1] * 3 + [0.005] * 3 + [0.1] * 3 + [0.005]
)
KITCHEN_ACTION_SCALE = 2.0  # KitchenV0.act_amp (act_mid = 0): the action in [-1, 1] is a joint velocity in [-2, 2]
KITCHEN_MODEL = "../assets/kitchen_franka/kitchen_assets/kitchen_env_model.xml"  # FrankaKitchen-v1's model


def kitchen_goal(tasks) -> np.ndarray:
    """obs[30:60]: KitchenBase._get_task_goal, a 30-vector with each task's goal at its indices, zeros elsewhere."""
    goal = np.zeros(30)
    for task in tasks:
        indices, value = KITCHEN_ELEMENTS[task]
        goal[indices] = value
    return goal


def kitchen_completed(obs: np.ndarray, tasks) -> list[str]:
    """The tasks whose entries of the (noisy) observation are within KITCHEN_THRESHOLD of their goal."""
    return [
        task
        for task in tasks
        if np.linalg.norm(obs[KITCHEN_ELEMENTS[task][0]] - KITCHEN_ELEMENTS[task][1]) < KITCHEN_THRESHOLD
    ]


class D4RLKitchenEnv(gym.Env):
    """D4RL's kitchen env on Gymnasium-Robotics' Franka kitchen model (FrankaKitchen-v1's xml and FrankaRobot).

    Observation (60): the 30 qpos with D4RL's observation noise (9 robot joints, then the 21 object qpos), then the
    30-vector goal (kitchen_goal). No velocities. Action (9): joint velocities in [-1, 1], scaled by 2; D4RL's
    Robot_VelAct turns them into position targets from the last OBSERVED (noisy) robot joints, clipped to the joint
    bounds of franka_config.xml, then simulates 40 steps of 2 ms. Reward: the number of tasks completed at this step,
    judged on the noisy observation; a completed task is removed; terminated once all tasks are done.
    FrankaKitchen-v1 itself is not used: it differs from D4RL (dict observation with velocities, noise 10x smaller and
    misaligned, reward on the true state) and, with mujoco 4.0.0, its constructor fails an assertion.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12.5}  # dt = 40 x 2 ms

    def __init__(self, tasks, obs_noise: bool = True):
        from gymnasium_robotics.envs.franka_kitchen.franka_env import FrankaRobot

        self.robot = FrankaRobot(model_path=KITCHEN_MODEL)  # loads the model and the bounds of franka_config.xml
        self.model, self.data = self.robot.model, self.robot.data
        self.tasks = tuple(tasks)
        self.goal = kitchen_goal(self.tasks)
        self.noise = KITCHEN_QPOS_NOISE * float(obs_noise)
        self.remaining = set(self.tasks)
        self._robot_qpos_obs = self.data.qpos[:9].copy()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (60,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (9,), np.float32)

    def _observe(self) -> np.ndarray:
        qpos = self.data.qpos[:30] + self.noise * self.np_random.uniform(-1.0, 1.0, 30)
        self._robot_qpos_obs = qpos[:9].copy()  # franka_robot.py: the controller integrates from the last observation
        return np.concatenate([qpos, self.goal])

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, robot_qpos_obs=None) -> None:
        """Set the simulator state; `robot_qpos_obs`: the robot joints the controller starts from (D4RL: the last
        observation's obs[:9]; default: the true joints)."""
        self.data.qpos[:], self.data.qvel[:] = qpos, qvel
        mujoco.mj_forward(self.model, self.data)
        self._robot_qpos_obs = np.array(qpos[:9] if robot_qpos_obs is None else robot_qpos_obs, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.set_state(KITCHEN_INIT_QPOS, np.zeros(self.model.nv))  # KitchenV0.reset_model: deterministic state
        self.remaining = set(self.tasks)
        return self._observe(), {"tasks_to_complete": sorted(self.remaining)}

    def step(self, action):
        velocity = KITCHEN_ACTION_SCALE * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        velocity = np.clip(velocity, self.robot.robot_vel_bound[:9, 0], self.robot.robot_vel_bound[:9, 1])
        target = self._robot_qpos_obs + velocity * self.robot.dt  # dt = 40 x 0.002 s
        target = np.clip(target, self.robot.robot_pos_bound[:9, 0], self.robot.robot_pos_bound[:9, 1])
        self.robot.do_simulation(target, self.robot.frame_skip)
        obs = self._observe()
        completed = kitchen_completed(obs, self.remaining)  # REMOVE_TASKS_WHEN_COMPLETE = True
        self.remaining -= set(completed)
        info = {"tasks_to_complete": sorted(self.remaining), "step_task_completions": sorted(completed)}
        return obs, float(len(completed)), not self.remaining, False, info  # TERMINATE_ON_TASK_COMPLETE = True

    def render(self):
        return self.robot.mujoco_renderer.render("rgb_array")

    def close(self):
        self.robot.close()  # its renderer's GL context, when it rendered


def make_kitchen_env(env_id: str) -> gym.Env:
    """D4RL's evaluation env of kitchen-{partial,mixed}-v0: 280 steps, ends early once all 4 tasks are done."""
    if env_id not in KITCHEN_TASKS:
        raise UserError(f"unknown kitchen id {env_id!r}; supported: {', '.join(KITCHEN_TASKS)}")
    import_gymnasium_robotics()
    return gym.wrappers.TimeLimit(D4RLKitchenEnv(KITCHEN_TASKS[env_id]), KITCHEN_MAX_STEPS)


# Pen: d4rl/hand_manipulation_suite/pen_v0.py (PenEnvV0), registered in .../__init__.py.
PEN_IDS = ("pen-human-v1", "pen-cloned-v1")
PEN_MAX_STEPS = 100  # MAX_STEPS['pen'] of the v1 ids (Gymnasium-Robotics registers 200)
PEN_DROP_HEIGHT = 0.075  # PenEnvV0.step: -5 reward and done=True when the pen's z is below 0.075


class D4RLPenTermination(gym.Wrapper):
    """AdroitHandPen-v1 already has D4RL's observation, dense reward, actions, frame skip and reset; it never
    terminates. D4RL's PenEnvV0 ends the episode when the pen is dropped (obs[26] = the pen's z)."""

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        return obs, reward, bool(obs[26] < PEN_DROP_HEIGHT), truncated, info


def make_pen_env(env_id: str) -> gym.Env:
    """D4RL's evaluation env of pen-{human,cloned}-v1: 100 steps, ends early when the pen is dropped."""
    if env_id not in PEN_IDS:
        raise UserError(f"unknown pen id {env_id!r}; supported: {', '.join(PEN_IDS)}")
    import_gymnasium_robotics()  # registers AdroitHandPen-v1

    return D4RLPenTermination(gym.make("AdroitHandPen-v1", max_episode_steps=PEN_MAX_STEPS, reward_type="dense"))


# Door, hammer, relocate: d4rl/hand_manipulation_suite/{door,hammer,relocate}_v0.py ({Door,Hammer,Relocate}EnvV0),
# registered in .../__init__.py. Gymnasium-Robotics' AdroitHand{Door,Hammer,Relocate}-v1 compile to the same MuJoCo
# model as D4RL's DAPG_{door,hammer,relocate}.xml and have D4RL's observation, action scaling, actuator gains, frame
# skip, reset and success threshold; their dense reward does not (below).
ADROIT_ENVS = {"door": "AdroitHandDoor-v1", "hammer": "AdroitHandHammer-v1", "relocate": "AdroitHandRelocate-v1"}
ADROIT_IDS = ("door-cloned-v1", "hammer-cloned-v1", "relocate-cloned-v1")
ADROIT_MAX_STEPS = 200  # MAX_STEPS['door' | 'hammer' | 'relocate'] of the v1 ids; none of the three ever terminates


def _site(u, name: str) -> np.ndarray:
    return u.data.site_xpos[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SITE, name)]


def _body(u, name: str) -> np.ndarray:
    return u.data.xpos[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, name)]


def door_reward(u) -> float:
    """DoorEnvV0.step (ADD_BONUS_REWARDS): palm to handle, hinge angle to 1.57, velocity cost, bonuses at 0.2, 1, 1.35
    rad."""
    door = u.data.qpos[u.model.jnt_dofadr[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_JOINT, "door_hinge")]]
    reward = -0.1 * np.linalg.norm(_site(u, "S_grasp") - _site(u, "S_handle"))
    reward += -0.1 * (door - 1.57) * (door - 1.57) - 1e-5 * np.sum(u.data.qvel**2)
    return float(reward + 2 * (door > 0.2) + 8 * (door > 1.0) + 10 * (door > 1.35))


def hammer_reward(u) -> float:
    """HammerEnvV0.step (ADD_BONUS_REWARDS): palm to hammer, head to nail, nail to its goal, velocity penalty, bonuses
    for a lifted hammer and a nail within 0.02 / 0.01 of its goal."""
    obj, palm, tool = _body(u, "Object"), _site(u, "S_grasp"), _site(u, "tool")
    target, goal = _site(u, "S_target"), _site(u, "nail_goal")
    nail = np.linalg.norm(target - goal)
    reward = -0.1 * np.linalg.norm(palm - obj) - np.linalg.norm(tool - target) - 10 * nail
    reward -= 1e-2 * np.linalg.norm(u.data.qvel)
    return float(reward + 2 * (obj[2] > 0.04 and tool[2] > 0.04) + 25 * (nail < 0.020) + 75 * (nail < 0.010))


def relocate_reward(u) -> float:
    """RelocateEnvV0.step (ADD_BONUS_REWARDS): palm to ball; once the ball is off the table (z > 0.04) +1 and palm and
    ball to the target; bonuses for a ball within 0.1 / 0.05 of the target."""
    obj, palm, target = _body(u, "Object"), _site(u, "S_grasp"), _site(u, "target")
    reward = -0.1 * np.linalg.norm(palm - obj)
    if obj[2] > 0.04:
        reward += 1.0 - 0.5 * np.linalg.norm(palm - target) - 0.5 * np.linalg.norm(obj - target)
    distance = np.linalg.norm(obj - target)
    return float(reward + 10.0 * (distance < 0.1) + 20.0 * (distance < 0.05))


ADROIT_REWARDS = {"door": door_reward, "hammer": hammer_reward, "relocate": relocate_reward}


class D4RLAdroitReward(gym.Wrapper):
    """D4RL's dense reward, computed from the simulator after the step. Gymnasium-Robotics' v1 dense reward (1.2.1 to
    1.4.2) flips the sign of its first term, the palm's distance to the handle, hammer or ball (+0.1 d instead of
    D4RL's -0.1 d; Gymnasium-Robotics PR #220, fixed in its v2 envs); D4RL's reward is recomputed here whatever the
    installed version does. info['success'] is D4RL's goal_achieved (door >= 1.35 rad, nail within 0.01, ball within
    0.1 of the target), as Gymnasium-Robotics computes it."""

    def __init__(self, env: gym.Env, task: str):
        super().__init__(env)
        self.d4rl_reward = ADROIT_REWARDS[task]

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, self.d4rl_reward(self.env.unwrapped), terminated, truncated, info


def make_adroit_env(env_id: str) -> gym.Env:
    """D4RL's evaluation env of {door,hammer,relocate}-cloned-v1: 200 steps, D4RL's dense reward, never terminated."""
    if env_id not in ADROIT_IDS:
        raise UserError(f"unknown Adroit id {env_id!r}; supported: {', '.join(ADROIT_IDS)}")
    import_gymnasium_robotics()  # registers AdroitHand*-v1

    task = env_id.split("-")[0]
    env = gym.make(ADROIT_ENVS[task], max_episode_steps=ADROIT_MAX_STEPS, reward_type="dense")
    return D4RLAdroitReward(env, task)


def fix_gymnasium_robotics_joints() -> None:
    """gymnasium-robotics 1.4.2 reads joints with `assert model.jnt_type[j] in (mjtJoint.mjJNT_HINGE, ...)`; under
    mujoco 4.0 a numpy integer never equals a mjtJoint member that way, and FrankaKitchen-v1 (the env of Minari's
    Kitchen datasets) fails to build. Where that is so, swap its two joint readers for ones that compare plain ints."""
    try:
        import_gymnasium_robotics()
    except ImportError:
        return
    from gymnasium_robotics.utils import mujoco_utils

    if np.int32(int(mujoco.mjtJoint.mjJNT_HINGE)) in (mujoco.mjtJoint.mjJNT_HINGE,):
        return
    widths = {
        "qpos": {int(mujoco.mjtJoint.mjJNT_FREE): 7, int(mujoco.mjtJoint.mjJNT_BALL): 4},
        "qvel": {int(mujoco.mjtJoint.mjJNT_FREE): 6, int(mujoco.mjtJoint.mjJNT_BALL): 4},
    }

    def reader(field: str, address: str):
        def read(model, data, name):
            joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if joint == -1:
                raise ValueError(f"Joint with name '{name}' is not part of the model!")
            start = int(getattr(model, address)[joint])
            return getattr(data, field)[start : start + widths[field].get(int(model.jnt_type[joint]), 1)].copy()

        return read

    mujoco_utils.get_joint_qpos = reader("qpos", "jnt_qposadr")
    mujoco_utils.get_joint_qvel = reader("qvel", "jnt_dofadr")


def eval_env_factory(env_id: str) -> Callable[[], gym.Env] | None:
    """A zero-argument factory of the evaluation env of a D4RL id, giving what D4RL's env gave the policy."""
    domain, makers = (
        env_id.split("-")[0],
        {"antmaze": make_antmaze_env, "kitchen": make_kitchen_env, "pen": make_pen_env}
        | dict.fromkeys(ADROIT_ENVS, make_adroit_env),
    )
    if domain in ("halfcheetah", "hopper", "walker2d"):
        return functools.partial(make_mujoco_env, domain_of(env_id).eval_env)
    try:
        import_gymnasium_robotics()
    except ImportError:
        return None
    return functools.partial(makers[domain], env_id) if domain in makers else None
