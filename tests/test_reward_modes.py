"""--reward-mode through offline_data.load: the presets' reward rules reach the data of every source kind, once.
The AntMaze rules move the rewards by a constant, so a rule never applied or applied twice shows in every row
(standardising twice changes almost nothing, so only the AntMaze rules are used to count applications)."""

import os

import h5py
import numpy as np
import pytest

import offline_data

pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered:UserWarning")  # ogbench's float64 bounds
ANTMAZE_D4RL = "antmaze-large-play-v2"
RULES = {  # what each mode must do to the raw rewards, written out here (not read from offline_data)
    "iql_antmaze": lambda r: r - 1.0,  # IQL's rule, as in FQL: {0, 1} -> {-1, 0}
    "cql_antmaze": lambda r: (r - 0.5) * 4.0,  # CQL's rule, as in DQL: {0, 1} -> {-2, 2}
}


def write_antmaze_file(path, n=120, seed=0):
    """A D4RL AntMaze-layout file (29-d observations, 8-d actions): sparse 0/1 rewards, a timeout every 40 rows."""
    rng = np.random.default_rng(seed)
    rewards = (rng.random(n) < 0.3).astype(np.float32)
    timeouts = np.arange(n) % 40 == 39
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 29)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        f["rewards"] = rewards
        f["terminals"] = rewards.astype(bool)
        f["timeouts"] = timeouts
    return str(path)


@pytest.fixture
def antmaze_file(tmp_path):
    return write_antmaze_file(tmp_path / "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse.hdf5")


def test_standardize_leaves_rewards_that_are_not_finite_to_the_value_check():
    """A NaN reward: not "all nan (std 0)", but the check every source's transitions pass names them."""
    rewards = np.array([np.nan, 1.0, 2.0], np.float32)
    transformed = offline_data.reward_transform(rewards, "standardize")(rewards)
    zeros = np.zeros((3, 2), np.float32)
    data = dict(observations=zeros, next_observations=zeros, actions=zeros, rewards=transformed)
    with pytest.raises(offline_data.DatasetError, match=r"rewards not finite in float32 \(rewards after --reward-mode"):
        offline_data.check_values(data, "data.hdf5", "standardize")
    with pytest.raises(offline_data.DatasetError, match=r"rewards are all 1.0 \(std 0\)"):
        offline_data.reward_transform(np.ones(3, np.float32), "standardize")


@pytest.mark.parametrize("mode", ["iql_antmaze", "cql_antmaze", "standardize"])
def test_each_reward_mode_is_applied_by_load(antmaze_file, mode):
    """load(..., reward_mode) against the raw load of the same file: the rewards are the rule's, every other array
    the raw one's."""
    raw = offline_data.load(ANTMAZE_D4RL, antmaze_file).data
    data = offline_data.load(ANTMAZE_D4RL, antmaze_file, mode).data
    assert set(np.unique(raw["rewards"])) == {0.0, 1.0}
    expected = {
        **RULES,
        "standardize": lambda r: (r - r.mean()) / r.std(ddof=1),  # DQL's "normalize" for Adroit
    }[mode](raw["rewards"])
    np.testing.assert_allclose(data["rewards"], expected, rtol=1e-6, atol=1e-6)
    if mode == "iql_antmaze":
        assert set(np.unique(data["rewards"])) == {-1.0, 0.0}
    if mode == "cql_antmaze":
        assert set(np.unique(data["rewards"])) == {-2.0, 2.0}
    if mode == "standardize":
        assert abs(data["rewards"].mean()) < 1e-5 and abs(data["rewards"].std(ddof=1) - 1) < 1e-5
    for key in ("observations", "actions", "next_observations", "terminals"):
        np.testing.assert_array_equal(data[key], raw[key])


def d4rl_source(tmp_path):
    return ANTMAZE_D4RL, write_antmaze_file(tmp_path / "antmaze.hdf5")


def minari_source(tmp_path, monkeypatch):
    pytest.importorskip("minari")
    import gymnasium as gym
    from test_minari_datasets import rollout, write_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = gym.make("Hopper-v5")
    write_dataset("mujoco/hopper/tiny-v0", env, [rollout(env, seed, max_steps=15) for seed in (0, 1)], ref_min=0.0)
    env.close()
    return "mujoco/hopper/tiny-v0", None


def ogbench_source(tmp_path):
    pytest.importorskip("ogbench")
    from test_ogbench_datasets import PUZZLE, record_ogbench, solve_puzzle

    # the 3x3 puzzle, its second trajectory starting solved: rewards of both signs after ogbench's relabelling
    return PUZZLE, os.path.dirname(record_ogbench(PUZZLE, tmp_path / "ogbench", steps=(8, 8), start=solve_puzzle))


@pytest.mark.parametrize("kind", ["d4rl", "minari", "ogbench"])
def test_the_antmaze_rules_are_applied_exactly_once_for_every_source_kind(tmp_path, monkeypatch, kind):
    """For each source kind, the rewards of load(..., mode) are the rule applied once to those of the raw load; a
    transform applied in the loader and again in load() (or twice in either) would move them twice as far."""
    env_id, path = {
        "d4rl": lambda: d4rl_source(tmp_path),
        "minari": lambda: minari_source(tmp_path, monkeypatch),
        "ogbench": lambda: ogbench_source(tmp_path),
    }[kind]()
    assert offline_data.source_kind(env_id) == kind
    raw = offline_data.load(env_id, path).data["rewards"]
    assert len(raw) > 0
    for mode, rule in RULES.items():
        np.testing.assert_array_equal(offline_data.load(env_id, path, mode).data["rewards"], rule(raw), err_msg=mode)
