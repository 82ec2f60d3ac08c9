"""Tests of the door, hammer and relocate evaluation adapters of offline_data/d4rl_envs.py and their D4RL files
(CPU, no network). Expected values are computed here from D4RL's definitions (d4rl/hand_manipulation_suite/
{door,hammer,relocate}_v0.py, __init__.py, d4rl/infos.py), written out again, not taken from the adapter."""

import os
import subprocess
import sys
import urllib.request

import h5py
import mujoco
import numpy as np
import pytest

import offline_data
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import replay_check as rc  # noqa: E402

pytest.importorskip("gymnasium_robotics")

DOOR, HAMMER, RELOCATE = "door-cloned-v1", "hammer-cloned-v1", "relocate-cloned-v1"
IDS = (DOOR, HAMMER, RELOCATE)
# (obs, action, nq) of D4RL's envs (and of tensorflow_datasets' d4rl_adroit_* builders)
SIZES = {DOOR: (39, 28, 30), HAMMER: (46, 26, 33), RELOCATE: (39, 30, 36)}
# d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE of the v1 ids (those of the -human-v0 ids)
REF = {
    DOOR: (-56.512833, 2880.5693087298737),
    HAMMER: (-274.856578, 12794.134825156867),
    RELOCATE: (-6.425911, 4233.877797728884),
}
# infos/* of the v1 files: get_env_state() of each env (scripts/generation/hand_dapg_*.py)
INFOS = {
    DOOR: ("qpos", "qvel", "door_body_pos"),
    HAMMER: ("qpos", "qvel", "board_pos", "target_pos"),
    RELOCATE: ("hand_qpos", "obj_pos", "target_pos", "palm_pos", "qpos", "qvel"),
}


def site(u, name):
    return u.data.site_xpos[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SITE, name)].copy()


def body(u, name):
    return u.data.xpos[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, name)].copy()


def joint_qpos(u, name):
    return u.model.jnt_qposadr[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_JOINT, name)]


def d4rl_euler(quat):
    """d4rl/utils/quatmath.py quat2euler = mat2euler(quat2mat(quat)), for a unit quaternion."""
    w, x, y, z = quat
    mat = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    cy = np.hypot(mat[2, 2], mat[1, 2])
    if cy > np.finfo(np.float64).eps * 4.0:
        return np.array(
            [-np.arctan2(mat[1, 2], mat[2, 2]), -np.arctan2(-mat[0, 2], cy), -np.arctan2(mat[0, 1], mat[0, 0])]
        )
    return np.array([0.0, -np.arctan2(-mat[0, 2], cy), -np.arctan2(-mat[1, 0], mat[1, 1])])


def d4rl_obs_and_reward(env_id, u):
    """get_obs() and the dense reward of step() (ADD_BONUS_REWARDS = True) of D4RL's env, from the simulator."""
    qp, qv = u.data.qpos.copy(), u.data.qvel.copy()
    if env_id == DOOR:
        door = qp[joint_qpos(u, "door_hinge")]
        palm, handle = site(u, "S_grasp"), site(u, "S_handle")
        obs = np.concatenate([qp[1:-2], [qp[-1]], [door], palm, handle, palm - handle, [1.0 if door > 1.0 else -1.0]])
        reward = -0.1 * np.linalg.norm(palm - handle) - 0.1 * (door - 1.57) ** 2 - 1e-5 * np.sum(qv**2)
        reward += 2 * (door > 0.2) + 8 * (door > 1.0) + 10 * (door > 1.35)
        return obs, reward, door >= 1.35
    if env_id == HAMMER:
        obj, palm, tool = body(u, "Object"), site(u, "S_grasp"), site(u, "tool")
        target, goal = site(u, "S_target"), site(u, "nail_goal")
        quat = u.data.xquat[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, "Object")]
        sensor = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SENSOR, "S_nail")
        nail = np.clip(u.data.sensordata[u.model.sensor_adr[sensor]], -1, 1)
        obs = np.concatenate([qp[:-6], np.clip(qv[-6:], -1, 1), palm, obj, d4rl_euler(quat), target, [nail]])
        d = np.linalg.norm(target - goal)
        reward = -0.1 * np.linalg.norm(palm - obj) - np.linalg.norm(tool - target) - 10 * d - 1e-2 * np.linalg.norm(qv)
        reward += 2 * (obj[2] > 0.04 and tool[2] > 0.04) + 25 * (d < 0.020) + 75 * (d < 0.010)
        return obs, reward, d < 0.010
    obj, palm, target = body(u, "Object"), site(u, "S_grasp"), site(u, "target")
    obs = np.concatenate([qp[:-6], palm - obj, palm - target, obj - target])
    reward = -0.1 * np.linalg.norm(palm - obj)
    if obj[2] > 0.04:
        reward += 1.0 - 0.5 * np.linalg.norm(palm - target) - 0.5 * np.linalg.norm(obj - target)
    d = np.linalg.norm(obj - target)
    return obs, reward + 10.0 * (d < 0.1) + 20.0 * (d < 0.05), d < 0.1


def make(env_id, seed=0):
    env = offline_data.eval_env_factory(env_id)()
    obs, _ = env.reset(seed=seed)
    return env, env.unwrapped, obs


@pytest.mark.parametrize("env_id", IDS)
def test_layout_reset_and_physics(env_id):
    """Sizes, D4RL's reset (the model's reference pose, zero velocity), observation layout, frame skip 5 of 2 ms,
    actuator gains (wrist 10, fingers 1) and the action scaling mid + a * half-range, clipped to [-1, 1]."""
    env, u, obs = make(env_id)
    n_obs, n_act, nq = SIZES[env_id]
    assert obs.shape == env.observation_space.shape == (n_obs,) and env.action_space.shape == (n_act,)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    assert u.model.nq == u.model.nv == nq and u.model.opt.timestep == 0.002 and u.frame_skip == 5
    np.testing.assert_array_equal(u.data.qpos, u.model.qpos0)
    np.testing.assert_array_equal(u.data.qvel, 0.0)
    np.testing.assert_allclose(obs, d4rl_obs_and_reward(env_id, u)[0], atol=1e-12)
    names = [u.model.actuator(i).name for i in range(u.model.nu)]
    wrist = slice(names.index("A_WRJ1"), names.index("A_WRJ0") + 1)
    fingers = slice(names.index("A_FFJ3"), names.index("A_THJ0") + 1)
    np.testing.assert_array_equal(u.model.actuator_gainprm[wrist, :3], [[10, 0, 0]] * 2)
    np.testing.assert_array_equal(u.model.actuator_biasprm[wrist, :3], [[0, -10, 0]] * 2)
    assert (u.model.actuator_gainprm[fingers, 0] == 1).all() and (u.model.actuator_biasprm[fingers, 1] == -1).all()
    low, high = u.model.actuator_ctrlrange.T
    action = np.random.default_rng(0).uniform(-1.5, 1.5, n_act).astype(np.float32)
    env.step(action)
    expected = (low + high) / 2 + np.clip(action, -1, 1) * (high - low) / 2
    np.testing.assert_allclose(u.data.ctrl, expected, rtol=1e-6, atol=1e-6)
    env.close()


def reset_randomisation(env_id, u):
    m, bid = u.model, lambda name: mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, name)
    if env_id == DOOR:
        return m.body_pos[bid("frame")].copy(), ([-0.3, 0.25, 0.252], [-0.2, 0.35, 0.35])
    if env_id == HAMMER:
        return m.body_pos[bid("nail_board")][2:].copy(), ([0.1], [0.25])
    target = m.site_pos[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "target")]
    return np.r_[m.body_pos[bid("Object")][:2], target], ([-0.15, -0.15, -0.2, -0.2, 0.15], [0.15, 0.3, 0.2, 0.2, 0.35])


@pytest.mark.parametrize("env_id", IDS)
def test_reset_distribution(env_id):
    """reset_model: door frame position U([-0.3, 0.25, 0.252], [-0.2, 0.35, 0.35]); hammer board height U(0.1, 0.25);
    relocate ball x-y U([-0.15, -0.15], [0.15, 0.3]) and target U([-0.2, -0.2, 0.15], [0.2, 0.2, 0.35]); seeded."""
    env, u, _ = make(env_id)
    draws = []
    for seed in range(40):
        env.reset(seed=seed)
        value, (low, high) = reset_randomisation(env_id, u)
        draws.append(value)
        assert (value >= low).all() and (value <= high).all()
    draws = np.array(draws)
    assert (draws.max(0) - draws.min(0) > 0.6 * (np.array(high) - low)).all()  # spread over the whole range
    env.reset(seed=7)
    np.testing.assert_array_equal(reset_randomisation(env_id, u)[0], draws[7])
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_dense_reward_and_observation_after_steps(env_id):
    """Each step's observation, reward and success are D4RL's, computed from the simulator after the step."""
    env, u, _ = make(env_id, seed=3)
    rng = np.random.default_rng(1)
    for _ in range(15):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        expected_obs, expected_reward, success = d4rl_obs_and_reward(env_id, u)
        np.testing.assert_allclose(obs, expected_obs, atol=1e-12)
        assert reward == pytest.approx(expected_reward, abs=1e-12) and bool(info["success"]) == success
        assert not terminated and not truncated
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_the_palm_distance_term_has_d4rls_sign(env_id):
    """-0.1 x the palm's distance to the handle / hammer / ball (Gymnasium-Robotics 1.4.2's v1 dense reward has
    +0.1): with everything else fixed (zero velocity), moving the arm changes the reward by -0.1 x the change."""
    env, u, _ = make(env_id, seed=0)
    reward = offline_data.d4rl_envs.ADROIT_REWARDS[env_id.split("-")[0]]
    other = {DOOR: "S_handle", HAMMER: "Object", RELOCATE: "Object"}[env_id]
    arm = "ARTz" if env_id != HAMMER else "ARRx"  # a joint that moves the palm and nothing else
    values = []
    for q in (0.0, 0.1):
        qpos = u.model.qpos0.copy()
        qpos[joint_qpos(u, arm)] = q
        u.set_state(qpos, np.zeros(u.model.nv))
        target = site(u, other) if other.startswith("S_") else body(u, other)
        values.append((np.linalg.norm(site(u, "S_grasp") - target), reward(u)))
    (d0, r0), (d1, r1) = values
    assert abs(d1 - d0) > 0.01 and (r1 - r0) == pytest.approx(-0.1 * (d1 - d0), abs=1e-12)
    env.close()


def place_at_goal(env_id, u):
    """A state where D4RL's goal is achieved: door hinge at 1.4 rad; nail driven in (slide 0.09 of its 0.091 m to
    the goal); ball on the target."""
    qpos = u.data.qpos.copy()
    if env_id == DOOR:
        qpos[joint_qpos(u, "door_hinge")] = 1.4
    elif env_id == HAMMER:
        qpos[joint_qpos(u, "nail_dir")] = 0.09
    else:
        target = u.model.site_pos[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SITE, "target")]
        u.model.body_pos[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, "Object")] = target
    u.set_state(qpos, np.zeros(u.model.nv))


@pytest.mark.parametrize("env_id", IDS)
def test_success_and_bonuses(env_id):
    env, u, _ = make(env_id, seed=2)
    place_at_goal(env_id, u)
    obs, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    expected_obs, expected_reward, success = d4rl_obs_and_reward(env_id, u)
    assert success and info["success"] and not terminated  # D4RL's Adroit envs never end an episode early
    assert reward == pytest.approx(expected_reward, abs=1e-12)
    assert reward > {DOOR: 19, HAMMER: 99, RELOCATE: 29}[env_id]  # the bonuses: 2 + 8 + 10; 25 + 75; 10 + 20
    env.close()


# states between the bonus thresholds, (joint: value) from the model's qpos0; relocate's "target": the target site
# moved to the ball + that offset
BETWEEN_THRESHOLDS = {
    DOOR: [{"door_hinge": 0.5}, {"door_hinge": 1.2}],  # +2 only; +2 and +8
    HAMMER: [
        {"nail_dir": 0.091 - 0.015},  # the nail 0.015 from its goal: +25 only
        {"OBJRz": -0.3},  # the head up (tool z 0.094), the hammer's origin on the table (z 0.035): no lift bonus
        {"OBJTy": 0.05},  # the whole hammer 5 cm up: the lift bonus
    ],
    RELOCATE: [
        {"OBJTz": 0.05, "target": [0.07, 0.0, 0.0]},  # lifted, 7 cm from the target: the lifted terms and +10 only
        {"OBJTz": 0.02, "target": [0.3, 0.0, 0.0]},  # z 0.055: the lifted terms, no bonus
        {"target": [0.03, 0.0, 0.0]},  # on the table, 3 cm from the target: +10 and +20, no lifted terms
    ],
}


@pytest.mark.parametrize("env_id, state", [(e, s) for e, states in BETWEEN_THRESHOLDS.items() for s in states])
def test_the_dense_reward_between_the_bonus_thresholds(env_id, state):
    """At reset every bonus is off and at the goal every one is on: here each threshold is crossed on its own."""
    env, u, _ = make(env_id)
    qpos = u.model.qpos0.copy()
    for joint, value in state.items():
        if joint != "target":
            qpos[joint_qpos(u, joint)] = value
    u.set_state(qpos, np.zeros(u.model.nv))
    if "target" in state:
        target = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SITE, "target")
        u.model.site_pos[target] = body(u, "Object") + state["target"]
        mujoco.mj_forward(u.model, u.data)
    reward = offline_data.d4rl_envs.ADROIT_REWARDS[env_id.split("-")[0]](u)
    assert reward == pytest.approx(d4rl_obs_and_reward(env_id, u)[1], abs=1e-12)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_episode_length_200_and_never_terminated(env_id):
    env, _, _ = make(env_id)
    for step in range(1, 260):  # noqa: B007 (read after the loop)
        _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
        assert not terminated
        if truncated:
            break
    assert step == 200
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_normalized_score_uses_d4rls_reference_returns(env_id):
    low, high = REF[env_id]
    assert offline_data.normalized_score(env_id, low) == pytest.approx(0.0, abs=1e-9)
    assert offline_data.normalized_score(env_id, high) == pytest.approx(100.0)
    assert offline_data.normalized_score(env_id, (low + high) / 2) == pytest.approx(50.0)
    with pytest.raises(offline_data.UserError):
        offline_data.d4rl_envs.make_adroit_env(env_id.replace("cloned", "expert"))


def write_adroit_file(path, env_id, episodes=3, steps=30, seed=0):
    """A D4RL-layout {door,hammer,relocate}-cloned-v1 file recorded with the adapter, as D4RL's hand_dapg scripts
    write them: float32 arrays, the reward of step i on row i, terminals always False, timeouts on each episode's last
    row, infos/<key> the env's get_env_state() before the step, and the cloned files' metadata/* (policy weights).
    relocate's first episode starts with the ball moved by its slide joints (lifted, as in the demonstrations), so
    that infos/obj_pos (the ball's world position) differs from the body's model position."""
    env, u, _ = make(env_id)
    rng = np.random.default_rng(seed)
    keys = ("observations", "actions", "rewards", "terminals", "timeouts")
    rows = {k: [] for k in keys + tuple(f"infos/{k}" for k in INFOS[env_id])}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        if env_id == RELOCATE and episode == 0:
            qpos = u.data.qpos.copy()
            qpos[30:33] = [0.03, -0.02, 0.12]  # OBJTx, OBJTy, OBJTz
            u.set_state(qpos, u.data.qvel.copy())
            obs = u._get_obs()
        for t in range(steps):
            state = {k: np.asarray(v, np.float64).copy() for k, v in u.get_env_state().items()}
            action = rng.uniform(-1, 1, env.action_space.shape)
            next_obs, reward, terminated, _, _ = env.step(action)
            for key, value in zip(keys, (obs, action, reward, terminated, t == steps - 1)):
                rows[key].append(value)
            for key in INFOS[env_id]:
                rows[f"infos/{key}"].append(state[key])
            obs = next_obs
    env.close()
    n_obs, n_act, _ = SIZES[env_id]
    with h5py.File(path, "w") as f:
        for key, value in rows.items():
            f.create_dataset(key, data=np.array(value, bool if key in ("terminals", "timeouts") else np.float32))
        f["metadata/algorithm"] = np.bytes_("DAPG")
        f["metadata/policy/nonlinearity"] = np.bytes_("tanh")
        f["metadata/policy/fc0/weight"] = np.zeros((n_obs, 32), np.float32)
        f["metadata/policy/last_fc/weight"] = np.zeros((32, n_act), np.float32)
    return rows


@pytest.mark.parametrize("env_id", IDS)
def test_loader_on_a_file_in_the_d4rl_layout(env_id, tmp_path, monkeypatch):
    """The cached file (the URL's file name in $D4RL_DATASET_DIR) loads without network, with d4rl's
    qlearning_dataset semantics: timeout rows and the last row dropped, next observation = the next row, done never."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    path = offline_data.d4rl_files.dataset_cache_path(env_id)
    assert path == str(tmp_path / f"{env_id}.hdf5")
    assert offline_data.DATASETS[env_id][0] == f"hand_dapg_v1/{env_id}.hdf5"
    rows = write_adroit_file(path, env_id)

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    source = offline_data.load(env_id)
    n_obs, n_act, _ = SIZES[env_id]
    assert (source.obs_dim, source.act_dim, (source.ref_min, source.ref_max)) == (n_obs, n_act, REF[env_id])
    keep = ~np.array(rows["timeouts"])[:-1]
    obs = np.array(rows["observations"], np.float32)
    np.testing.assert_array_equal(source.data["observations"], obs[:-1][keep])
    np.testing.assert_array_equal(source.data["next_observations"], obs[1:][keep])
    np.testing.assert_array_equal(source.data["rewards"], np.array(rows["rewards"], np.float32)[:-1][keep])
    assert len(source.data["rewards"]) == 3 * 29 and not source.data["terminals"].any()
    env = source.make_env()
    assert env.observation_space.shape == (n_obs,) and env.action_space.shape == (n_act,)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_replay_check_on_own_rollouts_and_a_corrupted_copy(env_id, tmp_path):
    path = str(tmp_path / "a.hdf5")
    write_adroit_file(path, env_id)
    res = rc.main(rc.Args(env_id=env_id, dataset_path=path))
    assert res["transitions"] == 90 and res["terminal_mismatches"] == 0
    assert res["state_joint_obs_err_max"] < 1e-5  # the qpos / qvel entries: exact up to float32
    assert res["next_obs_err_max"] < 1e-4 and res["reward_err_max"] < 1e-4
    with h5py.File(path, "a") as f:
        f["actions"][...] = -f["actions"][()]
    bad = rc.adroit_replay_check(env_id, path)
    assert bad["next_obs_err_max"] > 0.05 and bad["next_obs_err_mean"] > 10 * res["next_obs_err_mean"]
    with h5py.File(path, "a") as f:
        del f["infos/qvel"]
    with pytest.raises(ValueError, match="infos/qvel"):
        rc.adroit_replay_check(env_id, path)


NOTICE = "reward functions were updated in v1.2.1"  # gymnasium_robotics 1.2.1 to 1.4.2, at import (its PR #220)


def python_stderr(code: str, path: str = "") -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path, ROOT]))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_the_evaluation_envs_import_gymnasium_robotics_without_its_adroit_reward_notice():
    """The pinned gymnasium_robotics prints a notice at import that its Adroit v1 dense reward changed; these envs
    recompute D4RL's (AntMaze and Kitchen use none), so making them prints no such notice, in any process."""
    assert NOTICE in python_stderr("import gymnasium_robotics"), "the notice is gone: import_gymnasium_robotics can go"
    calls = [  # each the first import in its process (an env worker's too)
        "eval_env_factory('antmaze-umaze-v2')",
        "make_antmaze_env('antmaze-umaze-v2').close()",
        "make_kitchen_env('kitchen-mixed-v0').close()",
        "make_pen_env('pen-human-v1').close()",
        "make_adroit_env('door-cloned-v1').close()",
        "fix_gymnasium_robotics_joints()",  # Minari's AntMaze, Kitchen and Adroit envs
    ]
    for call in calls:
        assert NOTICE not in python_stderr(f"from offline_data.d4rl_envs import *; {call}"), call


def test_only_gymnasium_robotics_notice_is_dropped(tmp_path):
    """What else the import prints is printed (a stand-in package that prints the notice and another line)."""
    (tmp_path / "gymnasium_robotics").mkdir()
    (tmp_path / "gymnasium_robotics" / "__init__.py").write_text(
        f"import sys\nprint('Adroit... {NOTICE} without...', file=sys.stderr)\nprint('other news', file=sys.stderr)\n"
    )
    code = "from offline_data.d4rl_envs import import_gymnasium_robotics as i; print(i().__file__)"
    assert python_stderr(code, str(tmp_path)) == "other news\n"
    (tmp_path / "gymnasium_robotics" / "__init__.py").write_text("import sys\nprint('why', file=sys.stderr)\n1 / 0\n")
    code = "from offline_data.d4rl_envs import import_gymnasium_robotics as i\ntry: i()\nexcept ZeroDivisionError: pass"
    assert python_stderr(code, str(tmp_path)) == "why\n"  # a failed import's output is printed too
