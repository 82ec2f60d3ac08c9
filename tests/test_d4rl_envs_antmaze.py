"""Tests of the AntMaze evaluation adapter of offline_data/d4rl_envs.py (CPU, no network, seconds). Expected values are
computed here from D4RL's definitions (d4rl/locomotion/maze_env.py, goal_reaching_env.py, ant.py), not taken from the
adapter."""

import os
import sys
import urllib.request

import gymnasium as gym
import h5py
import mujoco
import numpy as np
import pytest

import offline_data
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import replay_check as rc  # noqa: E402

make_antmaze_env = offline_data.d4rl_envs.make_antmaze_env

UMAZE, MEDIUM, LARGE = "antmaze-umaze-v2", "antmaze-medium-play-v2", "antmaze-large-diverse-v2"
# D4RL's U_MAZE, BIG_MAZE and HARDEST_MAZE walls (maze_env.py), 1 = wall; the start cell is (1, 1), scaling 4
WALLS = {
    UMAZE: ["11111", "10001", "11101", "10001", "11111"],
    MEDIUM: ["11111111", "10011001", "10010001", "11000111", "10010001", "10100101", "10001001", "11111111"],
    LARGE: [
        "111111111111",
        "100001000001",
        "101101010101",
        "100000010001",
        "101111011101",
        "100101000001",
        "110101010111",
        "100100010001",
        "111111111111",
    ],
}
GOAL_CELL = {UMAZE: (3, 1), MEDIUM: (6, 6), LARGE: (7, 9)}  # U_MAZE_TEST / BIG_MAZE_TEST / HARDEST_MAZE_TEST 'G'
# max_episode_steps of the v2 ids (locomotion/__init__.py)
EPISODE_STEPS = {UMAZE: 700, "antmaze-umaze-diverse-v2": 700, MEDIUM: 1000, LARGE: 1000}


def d4rl_xy(i, j):
    """maze_env.py _rowcol_to_xy: column j -> x, row i -> y, start cell (1, 1) at the origin."""
    return np.array([4.0 * j - 4.0, 4.0 * i - 4.0])


def make(env_id, seed=0):
    env = make_antmaze_env(env_id)
    obs, info = env.reset(seed=seed)
    return env, env.unwrapped, obs, info


def block_contacts(u, xy):
    """Put the torso (z 0.75, joints at 0) at D4RL-frame xy; names of maze blocks it touches."""
    qpos, qvel = np.zeros(15), np.zeros(14)
    qpos[:3], qpos[3] = (*xy, 0.75), 1.0
    u.set_state(qpos, qvel)
    m, d = u.ant.model, u.ant.data
    names = set()
    for c in d.contact[: d.ncon]:
        for g in (c.geom1, c.geom2):
            name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, g) or ""
            if name.startswith("block_"):
                names.add(name)
    return names


@pytest.mark.parametrize("env_id", [UMAZE, MEDIUM, LARGE])
def test_walls_in_d4rl_frame(env_id):
    """Every cell centre, in D4RL's frame, touches a wall block exactly when the D4RL map has a wall there."""
    env, u, _, _ = make(env_id)
    for i, row in enumerate(WALLS[env_id]):
        for j, c in enumerate(row):
            assert bool(block_contacts(u, d4rl_xy(i, j))) == (c == "1"), (i, j)
    env.close()


def test_observation_layout_and_frame():
    env, u, _, _ = make(MEDIUM)
    qpos = np.concatenate([[7.25, -1.5, 0.6], [0.9, 0.1, -0.1, 0.2], np.linspace(-0.5, 0.5, 8)])
    qvel = np.linspace(-1.0, 1.0, 14)
    u.set_state(qpos, qvel)
    obs = u._obs()
    assert obs.shape == (29,) and obs.dtype == np.float64
    np.testing.assert_allclose(obs, np.concatenate([qpos, qvel]), atol=1e-12)
    # the torso's world position is D4RL's xy shifted by the Gymnasium-Robotics offset (-10, -10) for medium
    np.testing.assert_allclose(u.ant.data.body("torso").xpos[:2], [7.25 - 10.0, -1.5 - 10.0], atol=1e-12)
    env.close()


@pytest.mark.parametrize("env_id", [UMAZE, MEDIUM, LARGE])
def test_reset_start_and_goal_distribution(env_id):
    """Start: qpos0 + U(-0.1, 0.1), qvel N(0, 0.1) (ant.py reset_model). Goal: goal cell + U(0, 1) + U(0, 0.5)."""
    env = make_antmaze_env(env_id)
    starts, goals = [], []
    for seed in range(150):
        obs, info = env.reset(seed=seed)
        starts.append(obs)
        goals.append(info["goal"])
    starts, goals = np.array(starts), np.array(goals)
    qpos0 = np.array([0, 0, 0.75, 1, 0, 0, 0] + [0] * 8)
    dev = starts[:, :15] - qpos0
    assert np.abs(dev).max() <= 0.1 and (dev.min(0) < -0.08).all() and (dev.max(0) > 0.08).all()  # both sides
    np.testing.assert_allclose(dev.mean(0), 0.0, atol=0.02)  # centred: the mean's standard error is 0.005
    np.testing.assert_allclose(dev.std(0), 0.2 / np.sqrt(12), rtol=0.2)  # U(-0.1, 0.1) on each entry
    assert 0.08 < starts[:, 15:].std() < 0.12
    np.testing.assert_allclose(starts[:, 15:].mean(0), 0.0, atol=0.04)
    low = d4rl_xy(*GOAL_CELL[env_id])
    assert (goals >= low).all() and (goals <= low + 1.5).all()
    np.testing.assert_allclose(goals.mean(0), low + 0.75, atol=0.1)
    # each axis its own draws: std of U(0, 1) + U(0, 0.5) is 0.32, and x and y are uncorrelated
    assert ((0.27 < goals.std(0)) & (goals.std(0) < 0.38)).all(), goals.std(0)
    assert abs(np.corrcoef(goals[:, 0], goals[:, 1])[0, 1]) < 0.3
    assert not np.allclose(goals[0], goals[1])  # a new goal every episode (v2_resets)
    env.reset(seed=3)
    np.testing.assert_array_equal(env.unwrapped.goal, goals[3])  # seeded
    env.close()


def step_from(u, state, goal, action):
    u.set_state(*state)
    u.set_goal(goal)
    return u.step(action)


def test_sparse_reward_and_termination():
    env, u, obs, _ = make(MEDIUM)
    state, action = (obs[:15], obs[15:]), np.zeros(8)
    far = np.array([20.5, 20.5])
    next_obs, reward, terminated, truncated, _ = step_from(u, state, far, action)
    assert (reward, terminated, truncated) == (0.0, False, False)
    xy = next_obs[:2]
    for dist, expect in [(0.0, 1.0), (0.45, 1.0), (0.55, 0.0), (3.0, 0.0)]:
        o, reward, terminated, truncated, info = step_from(u, state, xy + [0.0, dist], action)
        np.testing.assert_allclose(o[:2], xy, atol=1e-6)  # the same step again
        assert reward == expect and terminated == bool(expect) and info["success"] == bool(expect)
        assert not truncated
    env.close()


@pytest.mark.parametrize("env_id", [UMAZE, MEDIUM, LARGE])
def test_episode_length_and_success_ends_episode(env_id):
    env, u, _, _ = make(env_id)
    for t in range(1, EPISODE_STEPS[env_id] + 1):
        _, reward, terminated, truncated, _ = env.step(np.zeros(8, np.float32))
        assert reward == 0.0 and not terminated
        assert truncated == (t == EPISODE_STEPS[env_id])
    obs, _ = env.reset(seed=1)
    u.set_goal(obs[:2])  # reachable at once: the first step succeeds and ends the episode with return 1
    _, reward, terminated, truncated, _ = env.step(np.zeros(8, np.float32))
    assert (reward, terminated, truncated) == (1.0, True, False)
    env.close()


def test_vectorised():
    envs = gym.vector.SyncVectorEnv([lambda: make_antmaze_env(LARGE) for _ in range(2)])
    obs, _ = envs.reset(seed=5)
    assert obs.shape == (2, 29) and not np.allclose(obs[0], obs[1])
    obs, rewards, terminated, truncated, _ = envs.step(np.zeros((2, 8), np.float32))
    assert obs.shape == (2, 29) and rewards.shape == (2,)
    envs.close()


def write_d4rl_file(path, env_id, after_step=True, episodes=3, steps=40, seed=0):
    """A D4RL-layout antmaze file from random-action rollouts of the adapter, keys and dtypes as in D4RL's
    generate_ant_maze_datasets.py (infos/qpos, infos/qvel: the state after the step when after_step). In the first
    episode the goal sits next to the start, so rows with reward 1 and terminals that do not end the episode occur
    (as in D4RL's data, whose episodes end only at timeouts)."""
    env = make_antmaze_env(env_id)
    u, rng = env.unwrapped, np.random.default_rng(seed)
    data = {
        k: []
        for k in [
            "observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "infos/goal",
            "infos/qpos",
            "infos/qvel",
        ]
    }
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        if episode == 0:
            u.set_goal(obs[:2] + [0.3, 0.0])
        for t in range(steps):
            action = rng.uniform(-1, 1, 8)
            before = u.get_state()
            next_obs, reward, terminated, _, _ = env.step(action)
            qpos, qvel = u.get_state() if after_step else before
            for k, v in zip(data, [obs, action, reward, terminated, t == steps - 1, u.goal, qpos, qvel]):
                data[k].append(v)
            obs = next_obs
    env.close()
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=np.array(v, dtype=bool if k in ("terminals", "timeouts") else np.float32))


@pytest.mark.parametrize("after_step", [True, False])
def test_replay_check_on_own_rollouts(tmp_path, after_step):
    path = str(tmp_path / "tiny.hdf5")
    write_d4rl_file(path, LARGE, after_step=after_step)
    report = rc.antmaze_replay_check(LARGE, path)
    with h5py.File(path, "r") as f:
        assert f["rewards"][()].sum() >= 3  # the reward check is exercised
    assert report["state_alignment"] == ("after_step" if after_step else "before_step")
    assert report["transitions"] == 3 * (38 if after_step else 39)
    assert report["obs_max_abs_err"] < 1e-3 and report["reward_mismatch_rate"] == 0.0

    with h5py.File(path, "a") as f:  # corrupt: each row gets another row's action, rewards are flipped
        f["actions"][...] = f["actions"][()][::-1]
        f["rewards"][...] = 1.0 - f["rewards"][()]
    bad = rc.antmaze_replay_check(LARGE, path)
    assert bad["transitions"] == report["transitions"]
    assert bad["obs_max_abs_err"] > 0.5 and bad["obs_mean_abs_err"] > 100 * report["obs_mean_abs_err"]
    assert bad["reward_mismatch_rate"] > 0.9


def test_umaze_files_load_with_d4rls_names_and_replay(tmp_path, monkeypatch):
    """antmaze-umaze-v2 and -umaze-diverse-v2: D4RL's file names (infos.py), the cached file loads without network with
    qlearning_dataset's semantics, 'diverse' evaluates in the same maze as 'umaze', and the replay check passes on
    the file and flags a corrupted copy."""
    assert offline_data.DATASETS[UMAZE][0] == (
        "ant_maze_v2/Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5"
    )
    diverse = "antmaze-umaze-diverse-v2"
    assert offline_data.DATASETS[diverse][0] == (
        "ant_maze_v2/Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5"
    )
    u, v = make_antmaze_env(UMAZE).unwrapped, make_antmaze_env(diverse).unwrapped
    np.testing.assert_array_equal(u.offset, v.offset)
    np.testing.assert_array_equal(u.goal_cell_xy, d4rl_xy(*GOAL_CELL[UMAZE]))
    np.testing.assert_array_equal(v.goal_cell_xy, d4rl_xy(*GOAL_CELL[UMAZE]))
    assert u.max_episode_steps == v.max_episode_steps == EPISODE_STEPS[diverse]

    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    path = offline_data.d4rl_files.dataset_cache_path(diverse)
    write_d4rl_file(path, diverse)

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    source = offline_data.load(diverse)
    with h5py.File(path, "r") as f:
        raw = {k: f[k][()] for k in ("observations", "rewards", "terminals", "timeouts")}
    keep = ~raw["timeouts"][:-1]
    np.testing.assert_array_equal(source.data["observations"], raw["observations"][:-1][keep])
    np.testing.assert_array_equal(source.data["next_observations"], raw["observations"][1:][keep])
    np.testing.assert_array_equal(source.data["terminals"], raw["terminals"][:-1][keep])
    assert source.data["terminals"].any() and (source.ref_min, source.ref_max) == (0.0, 1.0)
    assert offline_data.normalized_score(diverse, 1.0) == 100.0 and offline_data.normalized_score(UMAZE, 0.0) == 0.0

    report = rc.main(rc.Args(env_id=diverse, dataset_path=path))
    assert report["transitions"] == 3 * 38 and report["obs_max_abs_err"] < 1e-3
    assert report["reward_mismatch_rate"] == 0.0
    with h5py.File(path, "a") as f:
        f["actions"][...] = f["actions"][()][::-1]
    assert rc.antmaze_replay_check(diverse, path)["obs_max_abs_err"] > 0.5


def test_physics_matches_d4rl_ant_xml():
    """D4RL locomotion/assets/ant.xml: timestep 0.02, RK4; every geom's contact solref .02 1 and solimp .8 .8 .01 (its
    default class; the maze's blocks join that model); motors gear 1, ctrlrange [-30, 30]; ant.py: frame_skip 5;
    wrappers.py NormalizedBoxEnv: action a in [-1, 1] -> ctrl 30 a."""
    env, u, _, _ = make(MEDIUM)
    m = u.ant.model
    assert m.opt.timestep == 0.02 and m.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    np.testing.assert_allclose(m.geom_solref, np.tile([0.02, 1.0], (m.ngeom, 1)))
    np.testing.assert_allclose(m.geom_solimp[:, :3], np.tile([0.8, 0.8, 0.01], (m.ngeom, 1)))
    assert u.ant.frame_skip == 5 and np.isclose(u.ant.dt, 0.1)
    assert (m.actuator_gear[:, 0] == 1.0).all() and (m.actuator_ctrlrange == [-30.0, 30.0]).all()
    assert (m.dof_armature[6:] == 1.0).all() and (m.dof_damping[6:] == 1.0).all() and m.nq == 15 and m.nv == 14
    action = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, -2.0], np.float32)
    env.step(action)
    np.testing.assert_allclose(u.ant.data.ctrl, 30.0 * np.clip(action, -1, 1), atol=1e-5)
    env.close()
