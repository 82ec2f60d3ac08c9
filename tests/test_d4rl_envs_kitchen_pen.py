"""Tests of the Kitchen and pen evaluation adapters of offline_data/d4rl_envs.py, CPU, no network.
Expected values are computed here from D4RL's numbers, not from the adapter's tables."""

import json
import os
import sys

import gymnasium as gym
import h5py
import mujoco
import numpy as np
import pytest

import offline_data
from conftest import ROOT, record_d4rl_file

sys.path.insert(0, os.path.join(ROOT, "tools"))
import replay_check as rc  # noqa: E402

# D4RL d4rl/kitchen/kitchen_envs.py, written out again: task -> (qpos indices, goal)
D4RL_KITCHEN = {
    "microwave": ([22], [-0.75]),
    "kettle": ([23, 24, 25, 26, 27, 28, 29], [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),
    "bottom burner": ([11, 12], [-0.88, -0.01]),
    "light switch": ([17, 18], [-0.69, -0.05]),
    "slide cabinet": ([19], [0.37]),
}
MIXED = ["microwave", "kettle", "bottom burner", "light switch"]
PARTIAL = ["microwave", "kettle", "light switch", "slide cabinet"]


def n_done(obs, tasks):
    return sum(np.linalg.norm(np.asarray(obs)[D4RL_KITCHEN[t][0]] - D4RL_KITCHEN[t][1]) < 0.3 for t in tasks)


@pytest.fixture(scope="module")
def kitchen():
    """A noise-free mixed kitchen (the model takes ~0.5 s to load, so it is shared)."""
    return offline_data.d4rl_envs.D4RLKitchenEnv(
        offline_data.d4rl_envs.KITCHEN_TASKS["kitchen-mixed-v0"], obs_noise=False
    )


@pytest.fixture(scope="module")
def noisy_kitchen():
    return offline_data.d4rl_envs.make_kitchen_env("kitchen-mixed-v0")


# ----------------------------------------------------------------------------------------------- kitchen
def test_kitchen_reset_state_and_layout(kitchen):
    obs, info = kitchen.reset(seed=0)
    assert obs.shape == (60,) and kitchen.observation_space.shape == (60,) and kitchen.action_space.shape == (9,)
    # D4RL KitchenV0.init_qpos (a few entries) and zero velocity
    np.testing.assert_allclose(
        obs[[0, 3, 7, 22, 23, 24, 25, 26]],
        [0.148388023, -2.4768576, 0.0479267505, 0.00108009684, -0.26939744, 0.350383255, 1.61944683, 1.00618764],
    )
    np.testing.assert_array_equal(kitchen.data.qvel, 0.0)
    np.testing.assert_allclose(obs[:30], kitchen.data.qpos[:30])  # no noise: obs[:30] is the qpos
    goal = np.zeros(30)
    for task in MIXED:
        goal[D4RL_KITCHEN[task][0]] = D4RL_KITCHEN[task][1]
    np.testing.assert_array_equal(obs[30:], goal)
    assert sorted(info["tasks_to_complete"]) == sorted(MIXED)
    # the joint order of Gymnasium-Robotics' model is D4RL's: the entries the tasks read are these joints
    names = [kitchen.model.joint(j).name for j in (11, 12, 17, 18, 19, 22, 23)]
    assert names == [
        "knob_Joint_2",
        "bottom_left_burner",
        "light_switch",
        "light_joint",
        "slide_cabinet",
        "microwave",
        "kettle",
    ]


def test_kitchen_partial_goal():
    env = offline_data.d4rl_envs.make_kitchen_env("kitchen-partial-v0")
    obs, _ = env.reset(seed=1)
    goal = np.zeros(30)
    for task in PARTIAL:
        goal[D4RL_KITCHEN[task][0]] = D4RL_KITCHEN[task][1]
    np.testing.assert_array_equal(obs[30:], goal)


def kitchen_noise_amplitudes():
    """robot_noise_ratio 0.1 x pos_noise_amp (franka_config.xml): 0.1 for robot, hinges, microwave, kettle qw qx qy."""
    amp = np.full(30, 0.1 * 0.005)
    amp[:9] = amp[20:23] = amp[26:29] = 0.1 * 0.1
    amp[11:17] = 0.1 * 0.0005
    return amp


def test_kitchen_observation_noise(noisy_kitchen):
    obs, _ = noisy_kitchen.reset(seed=3)
    noise = obs[:30] - noisy_kitchen.unwrapped.data.qpos[:30]
    assert np.all(np.abs(noise) <= kitchen_noise_amplitudes() + 1e-12)
    assert np.abs(noise[:9]).max() > 0.001  # there is noise
    np.testing.assert_array_equal(noisy_kitchen.reset(seed=3)[0], obs)  # seeded
    scaled = []  # amplitude x U(-1, 1) in every entry: both signs, centred
    for seed in range(40):
        obs, _ = noisy_kitchen.reset(seed=seed)
        scaled.append((obs[:30] - noisy_kitchen.unwrapped.data.qpos[:30]) / kitchen_noise_amplitudes())
    scaled = np.array(scaled)
    assert (scaled.min(0) < -0.3).all() and (scaled.max(0) > 0.3).all()  # each fails with 40 draws: p = 0.35^40
    np.testing.assert_allclose(scaled.mean(0), 0.0, atol=0.4)  # 4.4 standard errors


def test_kitchen_tasks_are_judged_on_the_noisy_observation():
    """D4RL's kitchen scores a task on the observation, noise included: with the microwave 0.298 from its goal (done
    by the true state), a step's reward is whether the observed entry is within 0.3; both outcomes occur."""
    env = offline_data.d4rl_envs.D4RLKitchenEnv(offline_data.d4rl_envs.KITCHEN_TASKS["kitchen-mixed-v0"])
    outcomes = set()
    for seed in range(30):
        env.reset(seed=seed)
        qpos = env.data.qpos.copy()
        qpos[22] = -0.75 + 0.298
        env.set_state(qpos, np.zeros(env.model.nv))
        obs, reward, *_ = env.step(np.zeros(9))
        observed_done = abs(obs[22] + 0.75) < 0.3
        assert reward == float(observed_done), (seed, obs[22], env.data.qpos[22])
        outcomes.add(observed_done)
    env.close()
    assert outcomes == {True, False}


def test_kitchen_velocity_controller(noisy_kitchen):
    """D4RL Robot_VelAct: target = last observed joints + clip(2 a) * 0.08 s, clipped to franka_config's bounds."""
    obs, _ = noisy_kitchen.reset(seed=4)
    action = np.array([0.5, -1.0, 2.0, 0.2, 0.0, -0.3, 1.0, 1.0, -1.0])  # 2.0 is clipped to 1
    noisy_kitchen.step(action)
    expected = obs[:9] + 2.0 * np.clip(action, -1, 1) * 40 * 0.002
    low = [-2.9, -1.8, -2.9, -3.1, -2.9, 0.0, -2.9, 0.0, 0.0]
    high = [2.9, 1.8, 2.9, 0.0, 2.9, 3.8, 2.9, 0.04, 0.04]
    np.testing.assert_allclose(noisy_kitchen.unwrapped.data.ctrl, np.clip(expected, low, high))


def test_kitchen_microwave_task(kitchen):
    kitchen.reset(seed=0)
    qpos = kitchen.data.qpos.copy()
    qpos[22] = -0.4  # |-0.4 + 0.75| = 0.35 > 0.3: not done
    kitchen.set_state(qpos, np.zeros(kitchen.model.nv))
    obs, reward, terminated, truncated, info = kitchen.step(np.zeros(9))
    assert reward == n_done(obs, MIXED) == 0 and "microwave" in info["tasks_to_complete"]
    qpos[22] = -0.8  # past the threshold
    kitchen.set_state(qpos, np.zeros(kitchen.model.nv))
    obs, reward, terminated, truncated, info = kitchen.step(np.zeros(9))
    assert reward == n_done(obs, MIXED) == 1.0
    assert info["step_task_completions"] == ["microwave"] and "microwave" not in info["tasks_to_complete"]
    assert not terminated and not truncated
    obs, reward, terminated, _, _ = kitchen.step(np.zeros(9))  # still open, but already counted: removed
    assert n_done(obs, MIXED) == 1 and reward == 0.0 and not terminated


def test_kitchen_all_tasks_terminate(kitchen):
    kitchen.reset(seed=0)
    qpos = kitchen.data.qpos.copy()
    qpos[22] = -0.8
    kitchen.set_state(qpos, np.zeros(kitchen.model.nv))
    assert kitchen.step(np.zeros(9))[1] == 1.0
    qpos = kitchen.data.qpos.copy()
    for task in ["kettle", "bottom burner", "light switch"]:
        qpos[D4RL_KITCHEN[task][0]] = D4RL_KITCHEN[task][1]
    kitchen.set_state(qpos, np.zeros(kitchen.model.nv))
    obs, reward, terminated, _, info = kitchen.step(np.zeros(9))
    assert reward == 3.0 and n_done(obs, MIXED) == 4 and terminated and info["tasks_to_complete"] == []


def test_kitchen_episode_length(noisy_kitchen):
    noisy_kitchen.reset(seed=0)
    for step in range(1, 300):  # noqa: B007 (read after the loop)
        _, _, terminated, truncated, _ = noisy_kitchen.step(np.zeros(9))
        if terminated or truncated:
            break
    assert step == 280 and truncated and not terminated


def test_kitchen_vectorised():
    envs = gym.vector.SyncVectorEnv([lambda: offline_data.d4rl_envs.make_kitchen_env("kitchen-mixed-v0")] * 2)
    obs, _ = envs.reset(seed=[0, 1])
    assert obs.shape == (2, 60) and not np.array_equal(obs[0], obs[1])  # different noise per seed
    obs, reward, terminated, truncated, _ = envs.step(np.zeros((2, 9), np.float32))
    assert obs.shape == (2, 60) and reward.shape == (2,)
    envs.close()


# ----------------------------------------------------------------------------------------------- pen
def pen_expected(u):
    """PenEnvV0's observation and dense reward, computed from the simulator."""
    d, m = u.data, u.model
    site = lambda name: d.site_xpos[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name)]  # noqa: E731
    pen = d.xpos[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "Object")]
    goal_pos = site("eps_ball")
    pen_dir = (site("object_top") - site("object_bottom")) / 0.13  # sites at +-0.065 on the pen's axis
    goal_dir = (site("target_top") - site("target_bottom")) / 0.13
    obs = np.concatenate([d.qpos[:24], pen, d.qvel[-6:], pen_dir, goal_dir, pen - goal_pos, pen_dir - goal_dir])
    dist, similarity = np.linalg.norm(pen - goal_pos), pen_dir @ goal_dir
    reward = -dist + similarity + 10 * (dist < 0.075 and similarity > 0.9) + 50 * (dist < 0.075 and similarity > 0.95)
    return obs, reward - 5 * (pen[2] < 0.075)


def test_pen_reset_and_layout():
    env = offline_data.d4rl_envs.make_pen_env("pen-human-v1")
    obs, _ = env.reset(seed=0)
    u = env.unwrapped
    assert obs.shape == (45,) and env.action_space.shape == (24,)
    np.testing.assert_allclose(obs, pen_expected(u)[0], atol=1e-9)
    np.testing.assert_array_equal(u.data.qpos, 0.0)  # hand and pen at the model's reference pose
    np.testing.assert_array_equal(u.data.qvel, 0.0)
    assert abs(np.linalg.norm(obs[36:39]) - 1) < 1e-6 and abs(obs[38]) < 1  # unit goal axis
    goals = {tuple(np.round(env.reset(seed=s)[0][36:39], 6)) for s in range(5)}
    assert len(goals) == 5  # random goal per episode
    np.testing.assert_array_equal(env.reset(seed=0)[0], obs)


def test_pen_reward_at_goal_orientation():
    env = offline_data.d4rl_envs.make_pen_env("pen-human-v1")
    env.reset(seed=0)
    u = env.unwrapped
    pen_id = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, "Object")
    target_id = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, "target")
    u.model.body_quat[target_id] = u.data.xquat[pen_id]  # the goal orientation := the pen's orientation
    mujoco.mj_forward(u.model, u.data)
    obs, reward, terminated, _, _ = env.step(np.zeros(24, np.float32))
    expected_obs, expected_reward = pen_expected(u)
    np.testing.assert_allclose(obs, expected_obs, atol=1e-9)
    assert reward == pytest.approx(expected_reward, abs=1e-9) and reward > 60.9  # -dist + ~1 + 10 + 50
    assert not terminated


def test_pen_drop_terminates():
    env = offline_data.d4rl_envs.make_pen_env("pen-cloned-v1")
    env.reset(seed=0)
    u = env.unwrapped
    slides = [mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ("OBJTx", "OBJTy", "OBJTz")]
    vertical = max(slides, key=lambda j: abs(u.data.xaxis[j][2]))  # the pen's slide joint along world z
    qpos = u.data.qpos.copy()
    qpos[u.model.jnt_qposadr[vertical]] = -0.2 * np.sign(u.data.xaxis[vertical][2])  # z: 0.25 -> 0.05
    u.set_state(qpos, u.data.qvel.copy())
    obs, reward, terminated, _, _ = env.step(np.zeros(24, np.float32))
    assert obs[26] < 0.075 and terminated
    assert reward == pytest.approx(pen_expected(u)[1], abs=1e-9) and reward < -4


def test_pen_episode_length():
    env = offline_data.d4rl_envs.make_pen_env("pen-cloned-v1")
    env.reset(seed=0)
    env.unwrapped.model.opt.gravity[:] = 0  # keep the pen in the hand
    for step in range(1, 150):  # noqa: B007 (read after the loop)
        _, _, terminated, truncated, _ = env.step(np.zeros(24, np.float32))
        if terminated or truncated:
            break
    assert step == 100 and truncated and not terminated


def test_unknown_ids():
    with pytest.raises(offline_data.UserError):
        offline_data.d4rl_envs.make_kitchen_env("kitchen-foo-v0")
    with pytest.raises(offline_data.UserError):
        offline_data.d4rl_envs.make_pen_env("door-human-v1")


# ----------------------------------------------------------------------------------------------- replay
def write_kitchen_file(path, states=True, episodes=2, steps=25, seed=0):
    """A D4RL-layout kitchen file recorded with the (noise-free) adapter: rewards as D4RL's generator labels them
    (tasks done in the row's own observation), terminals on each episode's last row, `infos` as a plain dataset like
    D4RL's kitchen files, or the simulator states under infos/."""
    env, rng = offline_data.d4rl_envs.D4RLKitchenEnv(MIXED, obs_noise=False), np.random.default_rng(seed)
    rows = {k: [] for k in ("observations", "actions", "qpos", "qvel", "terminals")}
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        if episode == 0:  # open the microwave so that some rewards are 1
            qpos = env.data.qpos.copy()
            qpos[22] = -0.8
            env.set_state(qpos, np.zeros(env.model.nv))
            obs = env._observe()
        action = np.zeros(9)
        for t in range(steps):
            action = np.clip(action + rng.normal(0, 0.3, 9), -1, 1)
            for key, value in zip(rows, (obs, action, env.data.qpos.copy(), env.data.qvel.copy(), t == steps - 1)):
                rows[key].append(value)
            obs = env.step(action)[0]
    with h5py.File(path, "w") as f:
        f["observations"] = np.array(rows["observations"], np.float32)
        f["actions"] = np.array(rows["actions"], np.float32)
        f["rewards"] = np.array([n_done(o, MIXED) for o in f["observations"][()]], np.float32)
        f["terminals"] = np.array(rows["terminals"], np.float32)
        if states:
            f["infos/qpos"] = np.array(rows["qpos"], np.float32)
            f["infos/qvel"] = np.array(rows["qvel"], np.float32)
        else:
            f["infos"] = np.repeat(np.arange(episodes), steps)
    return path


def corrupt(path, out):
    with h5py.File(path, "r") as f, h5py.File(out, "w") as g:

        def copy(name, item):
            if isinstance(item, h5py.Dataset):
                g[name] = item[()]

        f.visititems(copy)
        g["actions"][...] = -g["actions"][()]  # replay opposite actions
    return out


def test_kitchen_replay(tmp_path):
    path = write_kitchen_file(str(tmp_path / "k.hdf5"))
    res = rc.kitchen_replay_check("kitchen-mixed-v0", path)
    assert res["transitions"] == 48 and res["state_from"].startswith("infos")
    assert res["next_obs_err_max"] < 1e-5 and res["reward_err_max"] == 0 and res["goal_err_max"] < 1e-6
    assert res["reward_label_mismatches"] == 0
    bad = rc.kitchen_replay_check("kitchen-mixed-v0", corrupt(path, str(tmp_path / "bad.hdf5")))
    assert bad["next_obs_err_max"] > 0.05
    with h5py.File(path, "a") as f:  # rewards of the eval convention (tasks newly done at step i) are not D4RL's
        f["rewards"][...] = np.r_[0.0, np.diff(f["rewards"][()])]
    relabelled = rc.kitchen_replay_check("kitchen-mixed-v0", path)
    assert relabelled["reward_label_mismatches"] > 0 and relabelled["reward_err_max"] == 1
    wrong_tasks = rc.kitchen_replay_check("kitchen-partial-v0", path, num_transitions=5)
    assert wrong_tasks["goal_err_max"] > 0.3 and wrong_tasks["transitions"] == 5


def test_kitchen_replay_from_observations(tmp_path):
    path = write_kitchen_file(str(tmp_path / "k.hdf5"), states=False)
    res = rc.kitchen_replay_check("kitchen-mixed-v0", path)
    assert res["state_from"].startswith("observations")
    assert res["next_obs_err_mean"] < 1e-3 and res["next_obs_err_max"] < 0.03 and res["reward_err_max"] == 0
    bad = rc.kitchen_replay_check("kitchen-mixed-v0", corrupt(path, str(tmp_path / "bad.hdf5")))
    assert bad["next_obs_err_max"] > 0.1 and bad["next_obs_err_mean"] > 10 * res["next_obs_err_mean"]


def write_pen_file(path, episodes=3, seed=0):
    """A D4RL-layout pen-v1 file recorded with the adapter (as D4RL's hand_dapg scripts write them: float32, the
    reward and done of step i on row i, timeouts on the last row of an episode that was not terminated)."""
    env, rng = offline_data.d4rl_envs.make_pen_env("pen-human-v1"), np.random.default_rng(seed)
    rows = {
        k: []
        for k in (
            "observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "infos/qpos",
            "infos/qvel",
            "infos/desired_orien",
        )
    }
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        for t in range(60):
            state = env.unwrapped.get_env_state()
            action = rng.uniform(-0.3, 0.3, 24)
            next_obs, reward, terminated, _, _ = env.step(action)
            timeout = t == 59 and not terminated
            for key, value in zip(
                rows, (obs, action, reward, terminated, timeout, state["qpos"], state["qvel"], state["desired_orien"])
            ):
                rows[key].append(value)
            obs = next_obs
            if terminated:
                break
    with h5py.File(path, "w") as f:
        for key, value in rows.items():
            f[key] = np.array(value, bool if key in ("terminals", "timeouts") else np.float32)
    return path


def test_pen_replay(tmp_path):
    path = write_pen_file(str(tmp_path / "p.hdf5"))
    res = rc.pen_replay_check("pen-human-v1", path)
    assert res["transitions"] > 100 and res["terminal_mismatches"] == 0
    assert res["next_obs_err_max"] < 1e-3 and res["reward_err_max"] < 1e-3
    assert res["state_joint_obs_err_max"] < 1e-5  # joints and pen velocity: exact up to float32
    bad = rc.pen_replay_check("pen-human-v1", corrupt(path, str(tmp_path / "bad.hdf5")))
    assert bad["next_obs_err_max"] > 0.1
    with h5py.File(path, "a") as f:
        del f["infos/qvel"]
    with pytest.raises(ValueError, match="infos/qvel"):
        rc.pen_replay_check("pen-human-v1", path)


def test_replay_check_command(tmp_path, capsys):
    """tools/replay_check.py as a user runs it on a file: prints the check's figures as JSON."""
    path = write_pen_file(str(tmp_path / "p.hdf5"))
    result = rc.main(rc.Args(env_id="pen-cloned-v1", dataset_path=path, num_transitions=20))
    printed = json.loads(capsys.readouterr().out)
    assert printed == result and result["transitions"] == 20 and result["dataset"] == path
    with pytest.raises(SystemExit, match="replay checks exist for antmaze-umaze-v2, .*antmaze-medium-play-v2") as e:
        rc.main(rc.Args(env_id="hopper-medium-v2", dataset_path=path))
    assert all(i in str(e.value) for i in ("pen-cloned-v1", "door-cloned-v1", "hammer-cloned-v1", "relocate-cloned-v1"))


def test_replay_check_bad_input_is_one_line(tmp_path, monkeypatch):
    """A missing file, a file of another dataset (no key the check reads, other shapes), --num-transitions 0 and a
    failed download: one UserError that says what is wrong (not an h5py, KeyError, broadcast or index traceback), and
    the download's names this tool's flag only (not sweep.py's)."""
    pen, hopper = write_pen_file(str(tmp_path / "pen.hdf5")), str(tmp_path / "hopper.hdf5")
    record_d4rl_file(hopper, episodes=1, max_steps=5)
    cases = [
        ("pen-human-v1", str(tmp_path / "nothing.hdf5"), 10, "--dataset-path .*nothing.hdf5 does not exist"),
        ("antmaze-umaze-v2", hopper, 10, "hopper.hdf5 lacks infos/goal: not a D4RL file of antmaze-umaze-v2"),
        ("kitchen-mixed-v0", hopper, 10, r"has observations \(11,\) and actions \(3,\) per row, kitchen-mixed-v0 obs"),
        ("door-cloned-v1", pen, 10, "pen.hdf5 lacks infos/door_body_pos: not a D4RL file of door-cloned-v1"),
        ("pen-human-v1", pen, 0, "--num-transitions must be at least 1"),
    ]
    for env_id, path, n, message in cases:
        with pytest.raises(offline_data.UserError, match=message):
            rc.main(rc.Args(env_id=env_id, dataset_path=path, num_transitions=n))

    def no_network(*args, **kwargs):
        raise offline_data.d4rl_files.urllib.error.URLError("no network")

    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(offline_data.d4rl_files.urllib.request, "urlopen", no_network)
    with pytest.raises(offline_data.UserError, match=r"could not download .*pass --dataset-path FILE$"):
        rc.main(rc.Args(env_id="pen-human-v1"))


def test_closing_the_kitchen_env_closes_its_robot_and_renderer():
    """The MuJoCo env inside (FrankaRobot) owns the renderer: closing the wrapped env must reach it."""
    env = offline_data.d4rl_envs.make_kitchen_env("kitchen-mixed-v0")
    closed = []
    robot_close = env.unwrapped.robot.close
    env.unwrapped.robot.close = lambda: closed.append(robot_close())
    env.close()
    assert closed == [None]
