"""Your own data: a D4RL-layout file for an env of gymnasium's registry (offline_data/own_data.py), and the value
checks every source's transitions pass (offline_data.check_values)."""

import dataclasses
import json
import os
import sys

import h5py
import numpy as np
import pytest

import offline_data
import ofql
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


def test_the_envs_actions_are_rescaled_to_those_of_the_policies():
    env = offline_data.make_gymnasium_env("InvertedPendulum-v5")  # its own bounds: [-3, 3]
    assert (env.action_space.low, env.action_space.high) == (-1, 1)
    np.testing.assert_allclose(env.action(np.float32([0.5, -1.0])), [1.5, -3.0])
    assert offline_data.make_gymnasium_env("MountainCarContinuous-v0").action_space.high == 1  # [-1, 1]: as it is


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
    with pytest.raises(offline_data.DatasetError, match=message):
        offline_data.load("hopper-medium-v2", hopper_file, mode)
    data = {k: np.zeros((2, 3), np.float32) for k in ("observations", "actions", "next_observations", "rewards")}
    offline_data.check_values({**data, "actions": np.float32([[1.4, -1.4, 0]] * 2)}, "x", "raw")  # overshoots pass
    with pytest.raises(offline_data.DatasetError, match=r"^minari: rewards not finite"):  # a Minari source's, say
        offline_data.check_values({**data, "rewards": np.float32([0, np.nan])}, "minari", "raw")
