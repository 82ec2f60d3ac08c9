"""Your own data: a D4RL-layout file for an env of gymnasium's registry (offline_data/own_data.py), and the value
checks every source's transitions pass (offline_data.check_values)."""

import dataclasses
import functools
import json
import os
import pickle
import re
import shutil
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest

import offline_data
import ofql
import sweep
from conftest import ROOT, record_d4rl_file

sys.path.insert(0, os.path.join(ROOT, "tools"))
import render_policy  # noqa: E402


@pytest.fixture
def pendulum_file(tmp_path):
    path = tmp_path / "my_pendulum.hdf5"
    record_d4rl_file(path, gym_id="InvertedPendulum-v5", episodes=6, max_steps=30)
    return str(path)


def test_a_gymnasium_env_with_your_own_file_trains_evaluates_and_says_what_it_is(tmp_path, pendulum_file, monkeypatch):
    """The script's defaults (no presets), the env's own sizes, raw returns (no reference returns to score by)."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "InvertedPendulum-v5", "--dataset-path", pendulum_file, "--total-steps", "10"]
    args = ofql.parse_args([*flags, "--eval-every", "10", "--eval-episodes", "2", "--num-candidates", "1"])
    assert dataclasses.replace(args, env_id=ofql.Args.env_id, dataset_path=None) == dataclasses.replace(
        ofql.Args(), total_steps=10, eval_every=10, eval_episodes=2, num_candidates=1
    )
    path = ofql.train(dataclasses.replace(args, save_model=True))
    summary = json.load(open(path))
    assert [summary[k] for k in ("source", "eval_env", "final_score")] == ["gymnasium", "InvertedPendulum-v5", None]
    assert summary["final_return"] > 0  # +1 per step the pole stays up
    checkpoint = os.path.join(os.path.dirname(path), "checkpoint.pt")  # rendered in its env, unscored
    frames, total, score = render_policy.render_episode(render_policy.Args(checkpoint, out="x.png", size=32))
    assert len(frames) > 2 and total > 0 and score is None
    monkeypatch.setitem(ofql.PRESETS, "InvertedPendulum-v5", dict(eta=0.5))  # a preset a user adds is used
    assert ofql.parse_args(flags).eta == 0.5


def test_a_sweep_of_your_own_data_shows_each_members_return(tmp_path, pendulum_file, monkeypatch, capsys):
    """No score to show: the console's line of the members' evaluations gives their returns."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "InvertedPendulum-v5", "--dataset-path", pendulum_file, "--total-steps", "4"]
    args = ofql.parse_args([*flags, "--eval-every", "4", "--eval-episodes", "1", "--num-candidates", "1"])
    sweep.train(ofql, [dataclasses.replace(args, seed=seed) for seed in (0, 1)], "own")
    assert re.search(r"step 4: members' eval/return: seed 0 \d+\.\d, seed 1 \d+\.\d$", capsys.readouterr().out, re.M)


def test_the_envs_actions_are_rescaled_to_those_of_the_policies():
    env = offline_data.make_gymnasium_env("InvertedPendulum-v5")  # its own bounds: [-3, 3]
    assert (env.action_space.low, env.action_space.high) == (-1, 1)
    np.testing.assert_allclose(env.action(np.float32([0.5, -1.0])), [1.5, -3.0])
    assert offline_data.make_gymnasium_env("MountainCarContinuous-v0").action_space.high == 1  # [-1, 1]: as it is


class BoxEnv(gym.Env):
    """An env of your own package: Box spaces of the given shapes and bounds."""

    def __init__(self, obs_shape=(4,), low=-1.0, high=2.0):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, obs_shape, np.float32)
        self.action_space = gym.spaces.Box(np.float32(low), np.float32(high), (1,), np.float32)

    def reset(self, seed=None, options=None):
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, np.float32), 0.0, False, False, {}


def register_box_env(monkeypatch, env_id: str, **spaces) -> None:
    spec = gym.envs.registration.EnvSpec(env_id, functools.partial(BoxEnv, **spaces), max_episode_steps=30)
    monkeypatch.setitem(gym.registry, env_id, spec)


def test_asymmetric_bounds_are_rescaled_too(monkeypatch):
    register_box_env(monkeypatch, "Asymmetric-v0", low=-1.0, high=2.0)  # one bound already -1
    env = offline_data.make_gymnasium_env("Asymmetric-v0")
    assert env.action_space.high == 1 and np.isclose(env.action(np.float32([1.0])), 2.0)


@pytest.mark.parametrize("spaces", [dict(low=-np.inf, high=np.inf), dict(obs_shape=(4, 1))])
def test_unbounded_actions_and_observations_that_are_not_flat_are_refused(monkeypatch, pendulum_file, spaces):
    register_box_env(monkeypatch, "Odd-v0", **spaces)
    with pytest.raises(offline_data.UserError, match="flat Box observations and bounded Box actions"):
        offline_data.load("Odd-v0", pendulum_file)


def pendulum_rows(path: str, n: int, **arrays) -> str:
    """A D4RL-layout file of n rows for InvertedPendulum-v5 (observations 0, 1, 2, ... in the first column)."""
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"] = np.arange(4 * n, dtype=np.float32).reshape(n, 4), np.zeros((n, 1), np.float32)
        f["rewards"], f["terminals"] = np.zeros(n, np.float32), np.zeros(n, bool)
        for key, value in arrays.items():
            f[key] = value
    return path


def test_a_files_own_timeouts_end_its_episodes_and_one_row_is_no_transition(tmp_path):
    timeouts = np.arange(6) == 2  # the file's cut at row 2 (the env's limit, 1000 steps, never reached)
    source = offline_data.load("InvertedPendulum-v5", pendulum_rows(str(tmp_path / "a.hdf5"), 6, timeouts=timeouts))
    assert source.data["observations"][:, 0].tolist() == [0, 4, 12, 16]  # row 2 leads nowhere, row 5 is the last
    with pytest.raises(offline_data.DatasetError, match="has no usable transitions"):
        offline_data.load("InvertedPendulum-v5", pendulum_rows(str(tmp_path / "b.hdf5"), 1, timeouts=np.zeros(1, bool)))


@pytest.mark.parametrize(
    "env_id, path, message",
    [
        ("InvertedPendulum-v5", None, r"is a Gymnasium env: give your data for it with --dataset-path"),
        ("Hopper-v5", "pendulum", r"'observations' has shape \(\d+, 4\), Hopper-v5 needs \(\d+, 11\)"),
        ("CartPole-v1", "pendulum", r"flat Box observations and bounded Box actions, not Box.* and Discrete\(2\)"),
    ],
)
def test_what_your_own_data_cannot_be_is_one_line(pendulum_file, env_id, path, message):
    with pytest.raises(offline_data.UserError, match=message):
        offline_data.load(env_id, path and pendulum_file)


def test_an_id_of_no_source_names_the_gymnasium_route(monkeypatch):
    with pytest.raises(offline_data.UserError, match=r"unknown --env-id 'InvertedPendulum'; .*registry \(your own"):
        ofql.parse_args(["--env-id", "InvertedPendulum"])
    monkeypatch.setitem(ofql.PRESETS, "my-robot-v0", dict(eta=0.5))  # presets for an id no source knows
    with pytest.raises(offline_data.UserError, match=r"^'my-robot-v0' has presets but no data: the ids of D4RL"):
        ofql.parse_args(["--env-id", "my-robot-v0"])


def test_an_env_of_your_own_package_is_made_from_its_spec_and_episodes_are_cut_by_its_limit(tmp_path, monkeypatch):
    """An env registered by your own package (bounds [-2, 2]) without a time limit is refused, whether the file marks
    its episodes' ends or not (its evaluation episodes would never end); with the limit, episodes end every
    max_episode_steps counted from 0 after a fall too (d4rl counts from 1 there); the evaluation env is made from its
    spec, so a worker process without the registration makes it too."""
    spec = gym.envs.registration.EnvSpec("MyPendulum-v0", "gymnasium.envs.classic_control.pendulum:PendulumEnv")
    monkeypatch.setitem(gym.registry, spec.id, spec)
    path, n = str(tmp_path / "mine.hdf5"), 12
    terminals = np.zeros(n, bool)
    terminals[2] = True  # a fall at row 2: the next episode starts at row 3
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"] = np.arange(3 * n, dtype=np.float32).reshape(n, 3), np.zeros((n, 1), np.float32)
        f["rewards"], f["terminals"] = np.zeros(n, np.float32), terminals
    with pytest.raises(offline_data.UserError, match="^MyPendulum-v0 has no time limit: register it with max_episode"):
        offline_data.load(spec.id, path)
    shutil.copy(path, tmp_path / "marked.hdf5")
    with h5py.File(tmp_path / "marked.hdf5", "a") as f:
        f["timeouts"] = np.arange(n) % 4 == 3
    with pytest.raises(offline_data.UserError, match="^MyPendulum-v0 has no time limit"):
        offline_data.load(spec.id, str(tmp_path / "marked.hdf5"))
    monkeypatch.setitem(gym.registry, spec.id, dataclasses.replace(spec, max_episode_steps=4))
    source = offline_data.load(spec.id, path)
    assert source.data["observations"][:, 0].tolist() == [0, 3, 6, 9, 12, 15, 21, 24, 27]  # rows 6, 10 end theirs
    monkeypatch.delitem(gym.registry, spec.id)
    env = pickle.loads(pickle.dumps(source.make_env))()  # as a worker process gets it
    assert env.spec.id == spec.id and env.action(np.float32([1.0])) == 2.0


def test_a_namespaced_gymnasium_id_is_not_taken_for_a_minari_one():
    assert [offline_data.source_kind(i) for i in ("phys2d/Pendulum-v0", "mujoco/hopper/medium-v0")] == [
        "gymnasium",
        "minari",
    ]


def test_an_env_that_gym_cannot_make_is_one_line(pendulum_file, monkeypatch):
    spec = gym.envs.registration.EnvSpec("Missing-v0", "a_package_not_installed:Env")
    monkeypatch.setitem(gym.registry, spec.id, spec)
    with pytest.raises(offline_data.UserError, match=r"^Missing-v0: gym.make failed \(ModuleNotFoundError: No module"):
        offline_data.load(spec.id, pendulum_file)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy says where the values overflow
@pytest.mark.parametrize(
    "key, value, mode, message",
    [  # finite in the file, not as training reads it: float32, rewards transformed
        ("observations", 1e40, "raw", r"observations, next_observations not finite in float32"),
        ("rewards", 3e37, "standardize", r"rewards not finite in float32 \(rewards after --reward-mode standardize\)"),
        ("actions", -128, "raw", r"actions outside \[-1, 1\] \(max \|a\| = 128\)"),  # int8: abs(-128) is -128
    ],
)
def test_values_training_cannot_use_are_refused_for_every_source(hopper_file, key, value, mode, message):
    with h5py.File(hopper_file, "a") as f:
        column = f[key][()].astype(np.int8 if key == "actions" else np.float64)
        column[5:] = value
        del f[key]
        f[key] = column
        if key == "observations":  # the file's next observations alike: its rows stay in order
            following = f["next_observations"][()].astype(np.float64)
            following[4:] = value
            del f["next_observations"]
            f["next_observations"] = following
    with pytest.raises(offline_data.DatasetError, match=message):
        offline_data.load("hopper-medium-v2", hopper_file, mode)
    data = {k: np.zeros((2, 3), np.float32) for k in ("observations", "actions", "next_observations", "rewards")}
    offline_data.check_values({**data, "actions": np.float32([[1.4, -1.4, 0]] * 2)}, "x", "raw")  # overshoots pass
    with pytest.raises(offline_data.DatasetError, match=r"^minari: rewards not finite"):  # a Minari source's, say
        offline_data.check_values({**data, "rewards": np.float32([0, np.nan])}, "minari", "raw")
