"""Check an evaluation env of offline_data/d4rl_envs.py (those of ofql.py, dql.py and fql.py) against a real
D4RL file: put the env in the states stored in the file, step the stored actions, and report how far the env's next
observations and rewards are from the file's next rows.

    python tools/replay_check.py --env-id antmaze-medium-play-v2          # the cached D4RL file (downloaded if missing)
    python tools/replay_check.py --env-id pen-human-v1 --dataset-path pen-human-v1.hdf5 --num-transitions 5000
    python tools/replay_check.py --env-id door-cloned-v1                  # also hammer-cloned-v1, relocate-cloned-v1

Without the real files (they cannot be downloaded where this was written), tests/test_d4rl_envs_antmaze.py,
tests/test_d4rl_envs_kitchen_pen.py and tests/test_d4rl_envs_adroit.py run the same checks on files recorded with the
adapters themselves, where the error is ~0 and a corrupted copy is flagged.
"""

import json
import os
import sys
from dataclasses import dataclass

import h5py
import mujoco
import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import offline_data  # noqa: E402


@dataclass
class Args:
    env_id: str = "antmaze-medium-play-v2"
    """a D4RL id of the AntMaze, Kitchen or Adroit (pen, door, hammer, relocate) datasets"""
    dataset_path: str | None = None
    """the D4RL file; default: the cached one ($D4RL_DATASET_DIR), downloaded if missing"""
    num_transitions: int = 1000
    """how many transitions to replay"""


def antmaze_replay_check(env_id: str, hdf5_path: str, num_transitions: int = 1000) -> dict:
    """Replay a D4RL-layout antmaze file in the env: for each checked row i, set the state the row starts from
    (from infos/qpos, infos/qvel) and the goal infos/goal[i], step actions[i], and compare with observations[i + 1]
    and rewards[i]. D4RL's generator (scripts/generation/generate_ant_maze_datasets.py append_data) stores the
    qpos/qvel *after* the row's step (D4RL issue #200), so the start state of row i is then infos row i - 1; the
    alignment is detected from the data. Rows at episode ends (timeouts, or terminals followed by a jump of > 5 m as
    in scripts/check_antmaze_datasets.py) and rows without a stored start state are skipped."""
    with h5py.File(hdf5_path, "r") as f:
        n = min(len(f["observations"]), num_transitions + 2)
        obs, actions, rewards = f["observations"][:n], f["actions"][:n], f["rewards"][:n].reshape(-1)
        qpos, qvel, goals = f["infos/qpos"][:n], f["infos/qvel"][:n], f["infos/goal"][:n]
        terminals = f["terminals"][:n].reshape(-1).astype(bool)
        timeouts = f["timeouts"][:n].reshape(-1).astype(bool) if "timeouts" in f else np.zeros(n, bool)
    state = np.concatenate([qpos, qvel], 1)
    after_step = np.abs(state[:-1] - obs[1:]).mean() < np.abs(state - obs).mean()
    jump = np.linalg.norm(obs[1:, :2] - obs[:-1, :2], axis=1) > 5.0
    continues = ~(timeouts[:-1] | (terminals[:-1] & jump))  # row i + 1 follows row i in the same episode
    rows = np.flatnonzero(continues[1:] & continues[:-1]) + 1 if after_step else np.flatnonzero(continues)
    rows = rows[:num_transitions]
    env = offline_data.d4rl_envs.D4RLAntMazeEnv(offline_data.d4rl_envs.antmaze_maze_name(env_id))
    env.reset(seed=0)
    errors, mismatches = [], 0
    for i in rows:
        j = i - 1 if after_step else i
        env.set_state(qpos[j], qvel[j])
        env.set_goal(goals[i])
        next_obs, reward, *_ = env.step(actions[i])
        errors.append(np.abs(next_obs - obs[i + 1]))
        mismatches += reward != rewards[i]
    env.close()
    errors = np.array(errors).reshape(-1, obs.shape[1])
    return {
        "transitions": len(rows),
        "state_alignment": "after_step" if after_step else "before_step",
        "obs_max_abs_err": float(errors.max()) if len(rows) else float("nan"),
        "obs_mean_abs_err": float(errors.mean()) if len(rows) else float("nan"),
        "xy_max_abs_err": float(errors[:, :2].max()) if len(rows) else float("nan"),
        "reward_mismatch_rate": float(mismatches / len(rows)) if len(rows) else float("nan"),
    }


def _read_replay_keys(path: str, keys) -> dict[str, np.ndarray]:
    data = {}
    with h5py.File(path, "r") as f:
        for key in keys:
            try:
                data[key] = f[key][()]
            except (KeyError, TypeError):  # missing, or a parent is a dataset (kitchen files keep `infos` as one)
                pass
    for key in ("rewards", "terminals", "timeouts"):
        if key in data:
            data[key] = data[key].reshape(-1)
    return data


def _episode_ends(data) -> np.ndarray:
    """Row i ends its episode (row i + 1 belongs to another one): terminals or timeouts, and the last row."""
    n = len(data["observations"])
    ends = data["terminals"].astype(bool) | data.get("timeouts", np.zeros(n)).astype(bool)
    ends[-1] = True
    return ends


def _spread(indices: np.ndarray, num: int) -> np.ndarray:
    """At most `num` of `indices`, evenly spread over the file."""
    if len(indices) <= num:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, num).round().astype(int))]


def _err_stats(prefix: str, err: np.ndarray) -> dict[str, float]:
    """err: (transitions, dims) absolute errors."""
    if err.size == 0:
        return {}
    per_row = err.max(axis=1)
    return {
        f"{prefix}_mean": float(err.mean()),
        f"{prefix}_p90": float(np.percentile(per_row, 90)),
        f"{prefix}_max": float(per_row.max()),
    }


def kitchen_dataset_reward(obs: np.ndarray, tasks) -> float:
    """The reward stored in D4RL's kitchen files: the number of tasks done IN THAT ROW's observation (D4RL's
    scripts/generation/generate_kitchen_datasets.py relabels with REMOVE_TASKS_WHEN_COMPLETE = False)."""
    return float(len(offline_data.d4rl_envs.kitchen_completed(obs, tasks)))


def kitchen_replay_check(env_id: str, hdf5_path: str, num_transitions: int = 1000) -> dict:
    """Replay up to `num_transitions` within-episode transitions of a D4RL-layout kitchen file.

    State: infos/qpos and infos/qvel when the file has them, else qpos = obs[i][:30] (noisy, kettle quaternion
    renormalised) and qvel = finite difference with the previous row (0 on an episode's first row). The controller
    starts from obs[i][:9], as in D4RL. The env's NOISE-FREE next observation is compared with obs[i + 1], so on real
    data the error includes D4RL's observation noise (up to 0.01 per joint). Rewards follow the files' convention:
    rewards[j] = number of tasks done in obs[j], so the env's next observation is scored against rewards[i + 1].
    Also reported: the largest deviation of the files' goal part from kitchen_goal (checks the task set) and the
    number of rows whose reward differs from kitchen_dataset_reward(obs[j]) (checks goals and thresholds).
    """
    data = _read_replay_keys(
        hdf5_path, ("observations", "actions", "rewards", "terminals", "timeouts", "infos/qpos", "infos/qvel")
    )
    tasks, obs = offline_data.d4rl_envs.KITCHEN_TASKS[env_id], data["observations"].astype(np.float64)
    env = offline_data.d4rl_envs.D4RLKitchenEnv(tasks, obs_noise=False)
    env.reset(seed=0)
    has_state = "infos/qpos" in data and "infos/qvel" in data
    ends = _episode_ends(data)
    rows = _spread(np.flatnonzero(~ends), num_transitions)
    obs_err, reward_err = [], []
    for i in rows:
        if has_state:
            qpos, qvel = data["infos/qpos"][i].astype(np.float64), data["infos/qvel"][i].astype(np.float64)
        else:
            qpos, qvel = _unit_kettle(obs[i, :30]), np.zeros(env.model.nv)
            if i > 0 and not ends[i - 1]:
                mujoco.mj_differentiatePos(env.model, qvel, env.robot.dt, _unit_kettle(obs[i - 1, :30]), qpos)
        env.set_state(qpos, qvel, robot_qpos_obs=obs[i, :9])
        next_obs = env.step(data["actions"][i])[0]
        obs_err.append(np.abs(next_obs[:30] - obs[i + 1, :30]))
        reward_err.append(abs(kitchen_dataset_reward(next_obs, tasks) - data["rewards"][i + 1]))
    obs_err, reward_err = np.array(obs_err).reshape(-1, 30), np.array(reward_err)
    labels = np.array([kitchen_dataset_reward(o, tasks) for o in obs])
    return {
        "env_id": env_id,
        "transitions": len(rows),
        "state_from": "infos/qpos, infos/qvel" if has_state else "observations (qvel: finite differences)",
        **_err_stats("next_obs_err", obs_err),
        **_err_stats("next_robot_qpos_err", obs_err[:, :9]),
        **_err_stats("next_object_qpos_err", obs_err[:, 9:]),
        "reward_err_max": float(reward_err.max(initial=0.0)),
        "reward_mismatch_frac": float((reward_err > 0.5).mean()) if len(reward_err) else 0.0,
        "goal_err_max": float(np.abs(obs[:, 30:] - env.goal).max()),
        "reward_label_mismatches": int((np.abs(labels - data["rewards"]) > 0.5).sum()),
    }


def _unit_kettle(qpos: np.ndarray) -> np.ndarray:
    qpos = np.array(qpos, dtype=np.float64)
    qpos[26:30] /= np.linalg.norm(qpos[26:30])
    return qpos


# Adroit: the simulator state each D4RL v1 file stores per row, `infos/<key>` (the keys of the env's get_env_state,
# scripts/generation/hand_dapg_demos.py and hand_dapg_policies.py; tensorflow_datasets' d4rl builder lists the same),
# and the observation entries that are functions of qpos and qvel alone (exact after setting the state)
ADROIT_STATE_KEYS = {
    "pen": ("qpos", "qvel", "desired_orien"),
    "door": ("qpos", "qvel", "door_body_pos"),
    "hammer": ("qpos", "qvel", "board_pos"),
    "relocate": ("qpos", "qvel", "obj_pos", "target_pos"),
}
ADROIT_STATE_OBS = {
    "pen": np.r_[0:24, 27:33],  # hand joints, pen velocity
    "door": np.r_[0:29],  # hand joints, latch, door hinge
    "hammer": np.r_[0:33],  # hand joints, hammer velocity
    "relocate": np.r_[0:30],  # hand joints
}


def _set_adroit_state(env, task: str, state: dict) -> None:
    """D4RL's set_env_state (model positions of the door frame, the nail board, the pen's goal, relocate's ball and
    target, then qpos and qvel). relocate: `state['ball_body_pos']` is the ball's model position (see
    _relocate_ball_body_pos); D4RL's own set_env_state would write infos/obj_pos, the ball's world position, there."""
    u = env.unwrapped
    if task == "relocate":
        u.model.body_pos[u.obj_body_id] = state["ball_body_pos"]
        u.model.site_pos[u.target_obj_site_id] = state["target_pos"]
        u.set_state(state["qpos"], state["qvel"])
    else:
        u.set_env_state({k: state[k] for k in ADROIT_STATE_KEYS[task]})


def _relocate_ball_body_pos(data: dict, ends: np.ndarray) -> np.ndarray:
    """The ball's model position for each row of a relocate file: RelocateEnvV0.get_env_state stores obj_pos =
    body_xpos, the world position, which MuJoCo's step leaves one substep old; on an episode's first row (written
    right after reset or set_env_state, which run the kinematics) it is exact, and the model position set there holds
    for the whole episode: obj_pos - qpos[30:33] of that row (the OBJT{x,y,z} slides move the ball along the world
    axes from its model position; its parent is the world and it has no rotation)."""
    starts = np.r_[0, np.flatnonzero(ends[:-1]) + 1]
    first = starts[np.searchsorted(starts, np.arange(len(ends)), side="right") - 1]
    return data["infos/obj_pos"][first].astype(np.float64) - data["infos/qpos"][first, 30:33].astype(np.float64)


def adroit_replay_check(env_id: str, hdf5_path: str, num_transitions: int = 1000) -> dict:
    """Replay up to `num_transitions` rows of a D4RL-layout Adroit v1 file (pen, door, hammer, relocate), which
    stores each row's simulator state under infos/ (ADROIT_STATE_KEYS).

    Per row i: set the stored state and compare the env's observation with obs[i] (checks the layout): the entries
    that depend on qpos and qvel alone (ADROIT_STATE_OBS) must match; positions and axes of bodies and sites come
    from MuJoCo's kinematics, which mj_step leaves one 2 ms substep old, so they match only for a scene at rest.
    Then step actions[i], compare the reward with rewards[i] and `terminated` with terminals[i] (D4RL writes the
    reward and done of step i on row i), and the next observation with obs[i + 1] when row i does not end its
    episode.
    """
    task = env_id.split("-")[0]
    state_keys = tuple(f"infos/{k}" for k in ADROIT_STATE_KEYS[task])
    keys = ("observations", "actions", "rewards", "terminals", "timeouts", *state_keys)
    data = _read_replay_keys(hdf5_path, keys)
    if missing := [k for k in keys if k != "timeouts" and k not in data]:
        raise ValueError(f"{hdf5_path} lacks {missing}; the {task} replay needs D4RL's stored simulator states")
    make = offline_data.d4rl_envs.make_pen_env if task == "pen" else offline_data.d4rl_envs.make_adroit_env
    env = make(env_id)
    env.reset(seed=0)
    obs, ends = data["observations"].astype(np.float64), _episode_ends(data)
    if task == "relocate":
        data["infos/ball_body_pos"] = _relocate_ball_body_pos(data, ends)
    set_keys = ADROIT_STATE_KEYS[task] + (("ball_body_pos",) if task == "relocate" else ())
    rows = _spread(np.arange(len(obs)), num_transitions)
    state_err, next_err, reward_err, terminal_wrong = [], [], [], 0
    for i in rows:
        _set_adroit_state(env, task, {k: data[f"infos/{k}"][i].astype(np.float64) for k in set_keys})
        state_err.append(np.abs(env.unwrapped._get_obs() - obs[i]))
        next_obs, reward, terminated, _, _ = env.step(data["actions"][i])
        reward_err.append(abs(reward - data["rewards"][i]))
        terminal_wrong += int(terminated != bool(data["terminals"][i]))
        if not ends[i]:
            next_err.append(np.abs(next_obs - obs[i + 1]))
    env.close()
    return {
        "env_id": env_id,
        "transitions": len(rows),
        "state_from": ", ".join(state_keys),
        **_err_stats("state_joint_obs_err", np.array(state_err)[:, ADROIT_STATE_OBS[task]]),
        **_err_stats("state_obs_err", np.array(state_err)),
        **_err_stats("next_obs_err", np.array(next_err)),
        "reward_err_mean": float(np.mean(reward_err)),
        "reward_err_max": float(np.max(reward_err)),
        "terminal_mismatches": terminal_wrong,
    }


pen_replay_check = adroit_replay_check


CHECKS = {"antmaze": antmaze_replay_check, "kitchen": kitchen_replay_check} | dict.fromkeys(
    ADROIT_STATE_KEYS, adroit_replay_check
)
# the keys each check reads from the file (besides optional ones: timeouts, kitchen's infos/qpos and infos/qvel)
REPLAY_KEYS = {"antmaze": ("infos/qpos", "infos/qvel", "infos/goal"), "kitchen": ()} | {
    task: tuple(f"infos/{k}" for k in keys) for task, keys in ADROIT_STATE_KEYS.items()
}


def check_file(env_id: str, path: str) -> None:
    """A UserError naming what the file lacks for env_id's replay: a key its check reads, or the id's shapes."""
    if not os.path.isfile(path):
        raise offline_data.UserError(f"--dataset-path {path} does not exist")
    domain, task = offline_data.d4rl_files.domain_of(env_id), env_id.split("-")[0]
    keys = ("observations", "actions", "rewards", "terminals", *REPLAY_KEYS[task])
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            shapes = {k: f[k].shape[1:] for k in ("observations", "actions") if k in f}
    except OSError as e:
        raise offline_data.UserError(f"cannot read {path} as hdf5 ({e})") from None
    if missing:
        raise offline_data.UserError(f"{path} lacks {', '.join(missing)}: not a D4RL file of {env_id}")
    want = {"observations": (domain.obs_dim,), "actions": (domain.act_dim,)}
    if shapes != want:
        got, wanted = (" and ".join(f"{k} {v}" for k, v in d.items()) for d in (shapes, want))
        raise offline_data.UserError(f"{path} has {got} per row, {env_id} {wanted}: not a D4RL file of {env_id}")


def download(env_id: str, path: str) -> None:
    """The D4RL file of env_id to the cache; a failure is a UserError that names this tool's flag."""
    rel_path, size, sha256 = offline_data.DATASETS[env_id]
    try:
        offline_data.d4rl_files.download(offline_data.d4rl_files.D4RL_URL + rel_path, path, size, sha256)
    except offline_data.UserError as e:
        raise offline_data.UserError(str(e).replace(" (sweep.py --env-ids: --dataset-paths)", "")) from None


def main(args: Args) -> dict:
    domain = args.env_id.split("-")[0]
    if domain not in CHECKS or args.env_id not in offline_data.DATASETS:
        raise SystemExit(
            f"replay checks exist for {', '.join(i for i in offline_data.DATASETS if i.split('-')[0] in CHECKS)}"
        )
    if args.num_transitions < 1:
        raise offline_data.UserError("--num-transitions must be at least 1")
    path = args.dataset_path or offline_data.d4rl_files.dataset_cache_path(args.env_id)
    if args.dataset_path is None and not os.path.exists(path):
        download(args.env_id, path)
    check_file(args.env_id, path)
    offline_data.d4rl_envs.fix_gymnasium_robotics_joints()
    result = {"env_id": args.env_id, "dataset": path, **CHECKS[domain](args.env_id, path, args.num_transitions)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    try:
        main(tyro.cli(Args, description=__doc__))
    except offline_data.UserError as e:
        raise SystemExit(f"replay_check.py: error: {e}") from None
