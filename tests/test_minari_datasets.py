"""offline_data/minari_datasets.py: tiny Minari datasets written with minari's own writer under a temporary
MINARI_DATASETS_PATH, from short random-action rollouts of the real environments. CPU only, no network.
"""

import copy
import glob
import os
import subprocess
import sys
import tempfile
import warnings

import gymnasium as gym
import gymnasium_robotics
import h5py
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

import offline_data
import ofql
from conftest import ROOT
from offline_data.evaluation_envs import remove_model_file


class Info:
    """The fields the checks below read, taken from offline_data's DataSource (plus the eval env's episode length)."""

    def __init__(self, source):
        self.source, self.obs_dim, self.act_dim, self.make_env = source, source.obs_dim, source.act_dim, source.make_env
        self.eval_env_id, self.ref_min_score, self.ref_max_score = source.eval_env_id, source.ref_min, source.ref_max
        env = source.make_env()
        self.max_episode_steps = env.spec.max_episode_steps
        env.close()


def load(dataset_id):
    source = offline_data.minari_datasets.load_minari(dataset_id)
    return source.data, Info(source)


def score(info, returns):
    return info.source.normalized_score(np.asarray(returns, dtype=np.float64))


def observation_layout(space, prefix=""):
    """(name, size) of each block of gymnasium's flattening, in order (an independent reading of the space)."""
    if isinstance(space, gym.spaces.Dict):
        return [part for k in sorted(space.keys()) for part in observation_layout(space[k], f"{prefix}{k}/")]
    return [(prefix.rstrip("/") or "observation", int(np.prod(space.shape)))]


gym.register_envs(gymnasium_robotics)
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # AntMaze-v4 and friends are "out of date"
    pytest.mark.filterwarnings("ignore:.*share an object:UserWarning"),  # FrankaKitchen reuses its goal arrays
]

KITCHEN_TASKS = ["microwave", "kettle", "bottom burner", "light switch"]  # D4RL/kitchen/mixed-v2's tasks
MEDIUM_EVAL_MAP = [  # a medium maze with one reset cell and one goal cell, as the datasets' evaluation envs have
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, "r", 0, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 0, 0, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 0, 0, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, "g", 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def stack(observations: list):
    """A list of (possibly nested dict) observations -> the same structure of stacked arrays."""
    if isinstance(observations[0], dict):
        return {k: stack([o[k] for o in observations]) for k in observations[0]}
    return np.stack(observations)


def rollout(env: gym.Env, seed: int, max_steps: int) -> EpisodeBuffer:
    """One random-action episode, truncated after max_steps unless the env ends it first."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    for t in range(max_steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        truncated = truncated or (t == max_steps - 1 and not terminated)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terminations.append(bool(terminated))
        truncations.append(bool(truncated))
        if terminated or truncated:
            break
    return EpisodeBuffer(
        seed=seed,
        observations=stack(observations),
        actions=np.stack(actions),
        rewards=rewards,
        terminations=terminations,
        truncations=truncations,
    )


def write_dataset(dataset_id, env, episodes, eval_env=None, ref_min=None, ref_max=None):
    """minari.create_dataset_from_buffers; the maze model file that minari's own instance of `eval_env` writes to
    the temporary folder is deleted."""
    maze_models = set(glob.glob(os.path.join(tempfile.gettempdir(), "ant_maze*.xml")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = minari.create_dataset_from_buffers(
            dataset_id,
            episodes,
            env=env,
            eval_env=eval_env,
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            algorithm_name="random",
            author="test",
            author_email="test@example.com",
            code_permalink="https://example.com",
            description="tiny test dataset",
            data_format="hdf5",
        )
    for path in set(glob.glob(os.path.join(tempfile.gettempdir(), "ant_maze*.xml"))) - maze_models:
        os.remove(path)
    return dataset


def check_transitions(data, dataset, obs_dim, act_dim):
    """Shapes, dtypes, and every row against the raw episodes read back independently through minari."""
    n = dataset.total_steps
    assert set(data) == {"observations", "actions", "next_observations", "rewards", "terminals"}
    for key, shape, dtype in [
        ("observations", (n, obs_dim), np.float32),
        ("next_observations", (n, obs_dim), np.float32),
        ("actions", (n, act_dim), np.float32),
        ("rewards", (n,), np.float32),
        ("terminals", (n,), bool),
    ]:
        assert data[key].shape == shape and data[key].dtype == dtype, key
    row = 0
    for ep in minari.load_dataset(dataset.id).iterate_episodes():
        flat = gym.spaces.flatten  # gymnasium's own flattening, as the independent reference
        raw = [flat(dataset.observation_space, step_of(ep.observations, t)) for t in range(len(ep.rewards) + 1)]
        for t in range(len(ep.rewards)):
            np.testing.assert_array_equal(data["observations"][row], np.float32(raw[t]))
            np.testing.assert_array_equal(data["next_observations"][row], np.float32(raw[t + 1]))
            np.testing.assert_array_equal(data["actions"][row], np.float32(ep.actions[t]))
            assert data["rewards"][row] == np.float32(ep.rewards[t])
            assert data["terminals"][row] == bool(ep.terminations[t])
            row += 1
        assert ep.terminations[-1] or ep.truncations[-1]
    assert row == n


def step_of(obs, t):
    """Step t of a (nested dict of) stacked arrays."""
    return {k: step_of(v, t) for k, v in obs.items()} if isinstance(obs, dict) else obs[t]


def check_env(info, dataset, seed=3):
    """The flattened eval env: dimension, order (against the raw env reset with the same seed), action size."""
    env, raw_env = info.make_env(), remove_model_file(dataset.recover_environment(eval_env=True))
    obs, _ = env.reset(seed=seed)
    raw, _ = raw_env.reset(seed=seed)
    assert obs.shape == (info.obs_dim,) and obs.dtype == np.float32
    assert env.observation_space.shape == (info.obs_dim,)
    np.testing.assert_array_equal(obs, np.float32(gym.spaces.flatten(dataset.observation_space, raw)))
    assert env.action_space.shape == (info.act_dim,)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (info.obs_dim,)
    env.close()
    raw_env.close()
    return raw


def test_ids_and_presets():
    assert offline_data.is_minari_id("mujoco/hopper/medium-v0") and not offline_data.is_minari_id("hopper-medium-v2")
    assert offline_data.MINARI_PRESET_KEYS["mujoco/hopper/medium-v0"] == "hopper-medium-v2"
    assert offline_data.MINARI_PRESET_KEYS["mujoco/halfcheetah/medium-replay-v0"] == "halfcheetah-medium-replay-v2"
    assert offline_data.MINARI_PRESET_KEYS["mujoco/walker2d/medium-expert-v0"] == "walker2d-medium-expert-v2"
    assert offline_data.MINARI_PRESET_KEYS["D4RL/antmaze/large-play-v1"] == "antmaze-large-play-v2"
    assert offline_data.MINARI_PRESET_KEYS["D4RL/antmaze/medium-diverse-v1"] == "antmaze-medium-diverse-v2"
    assert offline_data.MINARI_PRESET_KEYS["D4RL/kitchen/mixed-v2"] == "kitchen-mixed-v0"
    assert offline_data.MINARI_PRESET_KEYS["D4RL/kitchen/partial-v2"] == "kitchen-partial-v0"
    assert offline_data.MINARI_PRESET_KEYS["D4RL/pen/human-v2"] == "pen-human-v1"
    assert offline_data.MINARI_PRESET_KEYS["D4RL/pen/cloned-v2"] == "pen-cloned-v1"
    assert len(offline_data.MINARI_PRESET_KEYS) == 17
    eta = ofql.PRESETS["antmaze-large-play-v2"]["eta"]
    assert ofql.parse_args(["--env-id", "D4RL/antmaze/large-play-v1"]).eta == eta
    for bad in ("mujoco/hopper/expert-v0", "D4RL/antmaze/medium-play-v0", "D4RL/door/human-v2"):
        with pytest.raises(offline_data.UserError, match="unknown --env-id"):
            ofql.parse_args(["--env-id", bad])


def test_flatten_observation_order_and_batches():
    space = gym.spaces.Dict(
        {
            "observation": gym.spaces.Box(-1, 1, (3,)),
            "desired_goal": gym.spaces.Dict(
                {"kettle": gym.spaces.Box(-1, 1, (2,)), "bottom burner": gym.spaces.Box(-1, 1, (1,))}
            ),
            "achieved_goal": gym.spaces.Box(-1, 1, (2,)),
        }
    )
    obs = {
        "observation": np.array([6.0, 7, 8]),
        "achieved_goal": np.array([1.0, 2]),
        "desired_goal": {"kettle": np.array([4.0, 5]), "bottom burner": np.array([3.0])},
    }
    np.testing.assert_array_equal(
        offline_data.minari_datasets.flatten_observation(space, obs), np.arange(1, 9, dtype=np.float32)
    )
    np.testing.assert_array_equal(
        offline_data.minari_datasets.flatten_observation(space, obs), gym.spaces.flatten(space, obs)
    )
    assert observation_layout(space) == [
        ("achieved_goal", 2),
        ("desired_goal/bottom burner", 1),
        ("desired_goal/kettle", 2),
        ("observation", 3),
    ]
    batch = {
        k: (np.stack([v, v + 10]) if not isinstance(v, dict) else {j: np.stack([w, w + 10]) for j, w in v.items()})
        for k, v in obs.items()
    }
    flat = offline_data.minari_datasets.flatten_observation(space, batch)
    assert flat.shape == (2, 8) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[1], np.arange(1, 9) + 10)
    with pytest.raises(offline_data.DatasetError):
        offline_data.minari_datasets.flatten_observation(gym.spaces.Box(-1, 1, (3,)), np.zeros(4))
    with pytest.raises(offline_data.DatasetError):
        offline_data.minari_datasets.flatten_observation(gym.spaces.Discrete(3), 1)


def test_mujoco_hopper():
    env = gym.make("Hopper-v5")
    episodes = [rollout(env, seed, max_steps=20) for seed in (0, 1, 4)]  # seed 1 falls at step 13; 0 and 4 time out
    assert episodes[1].terminations[-1] and episodes[0].truncations[-1] and not episodes[0].terminations[-1]
    dataset = write_dataset("mujoco/hopper/tiny-v0", env, episodes, ref_min=-20.0, ref_max=3000.0)
    data, info = load("mujoco/hopper/tiny-v0")
    assert (info.obs_dim, info.act_dim, info.max_episode_steps, info.eval_env_id) == (11, 3, 1000, "Hopper-v5")
    assert len(data["rewards"]) == 20 + 13 + 20  # no transition lost at the two timeouts
    check_transitions(data, dataset, 11, 3)
    np.testing.assert_array_equal(np.flatnonzero(data["terminals"]), [20 + 12])  # only the fall
    # the timed-out last step keeps its true next observation (not the next episode's first one)
    np.testing.assert_array_equal(data["next_observations"][19], np.float32(episodes[0].observations[20]))
    assert not np.array_equal(data["next_observations"][19], data["observations"][20])
    check_env(info, dataset)
    returns = np.array([-20.0, 3000.0, 1490.0])
    np.testing.assert_allclose(score(info, returns), [0.0, 100.0, 50.0])
    np.testing.assert_allclose(score(info, returns), 100 * minari.get_normalized_score(dataset, returns))


def test_a_halfcheetah_dataset_s_env_is_made_without_mujocos_settotalmass_warning(tmp_path, monkeypatch, capfd):
    """MuJoCo 4 warns at each compile of gymnasium's half_cheetah.xml (settotalmass is deprecated), on stderr and in a
    MUJOCO_LOG.TXT in the working folder: loading a HalfCheetah dataset and making its env do without it."""
    monkeypatch.chdir(tmp_path)
    env = gym.make("HalfCheetah-v5")
    write_dataset("mujoco/halfcheetah/tiny-v0", env, [rollout(env, 0, max_steps=5)])
    (tmp_path / "MUJOCO_LOG.TXT").unlink(missing_ok=True)
    capfd.readouterr()
    source = offline_data.minari_datasets.load_minari("mujoco/halfcheetah/tiny-v0")  # makes its env once
    source.make_env().close()
    assert "settotalmass" not in capfd.readouterr().err and not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_antmaze_dict_observations_and_eval_env():
    env = remove_model_file(gym.make("AntMaze_Medium_Diverse_GR-v4", continuing_task=True, reset_target=False))
    eval_spec = copy.deepcopy(env.spec)
    eval_spec.kwargs["maze_map"], eval_spec.max_episode_steps = MEDIUM_EVAL_MAP, 700
    episodes = [rollout(env, seed, max_steps=6) for seed in (0, 1)]
    dataset = write_dataset("D4RL/antmaze/tiny-v1", env, episodes, eval_env=eval_spec, ref_min=0.0, ref_max=350.0)
    data, info = load("D4RL/antmaze/tiny-v1")
    assert (info.obs_dim, info.act_dim) == (31, 8)
    assert info.max_episode_steps == 700 and info.eval_env_id == "AntMaze_Medium_Diverse_GR-v4"  # the eval spec
    assert observation_layout(dataset.observation_space) == [
        ("achieved_goal", 2),
        ("desired_goal", 2),
        ("observation", 27),
    ]
    check_transitions(data, dataset, 31, 8)
    assert not data["terminals"].any()  # a continuing task never terminates
    first = episodes[0].observations
    np.testing.assert_array_equal(
        data["observations"][0],
        np.float32(np.concatenate([first["achieved_goal"][0], first["desired_goal"][0], first["observation"][0]])),
    )
    raw = check_env(info, dataset)
    eval_env = info.make_env()
    env_obs, _ = eval_env.reset(seed=3)
    eval_env.close()
    np.testing.assert_array_equal(env_obs[:2], np.float32(raw["achieved_goal"]))
    np.testing.assert_array_equal(env_obs[2:4], np.float32(raw["desired_goal"]))
    np.testing.assert_array_equal(env_obs[4:], np.float32(raw["observation"]))
    np.testing.assert_allclose(score(info, [0.0, 175.0]), [0.0, 50.0])


def test_kitchen_nested_dict_observations():
    offline_data.d4rl_envs.fix_gymnasium_robotics_joints()  # without it FrankaKitchen-v1 fails under mujoco 4.0
    env = gym.make(
        "FrankaKitchen-v1",
        tasks_to_complete=KITCHEN_TASKS,
        remove_task_when_completed=False,
        terminate_on_tasks_completed=False,
        max_episode_steps=450,
    )
    episodes = [rollout(env, seed, max_steps=4) for seed in (0, 1)]
    dataset = write_dataset("D4RL/kitchen/tiny-v2", env, episodes)  # no reference scores
    data, info = load("D4RL/kitchen/tiny-v2")
    assert (info.obs_dim, info.act_dim, info.max_episode_steps) == (83, 9, 450)
    assert observation_layout(dataset.observation_space) == [
        ("achieved_goal/bottom burner", 2),
        ("achieved_goal/kettle", 7),
        ("achieved_goal/light switch", 2),
        ("achieved_goal/microwave", 1),
        ("desired_goal/bottom burner", 2),
        ("desired_goal/kettle", 7),
        ("desired_goal/light switch", 2),
        ("desired_goal/microwave", 1),
        ("observation", 59),
    ]
    check_transitions(data, dataset, 83, 9)
    check_env(info, dataset)
    assert info.ref_min_score is None and info.ref_max_score is None
    assert score(info, [1.0]) is None
    envs = offline_data.evaluation_envs(info.make_env, 2, workers=2)  # a worker imports gymnasium-robotics unpatched
    assert envs.reset(seed=0)[0].shape == (2, 83)
    envs.close()


def test_pen_box_observations():
    env = gym.make("AdroitHandPen-v1")
    episodes = [rollout(env, seed, max_steps=5) for seed in (0, 1)]
    dataset = write_dataset("D4RL/pen/tiny-v2", env, episodes, ref_min=96.262799, ref_max=3076.8331017826877)
    data, info = load("D4RL/pen/tiny-v2")
    assert (info.obs_dim, info.act_dim, info.max_episode_steps) == (45, 24, 200)
    check_transitions(data, dataset, 45, 24)
    check_env(info, dataset)
    assert (info.ref_min_score, info.ref_max_score) == (96.262799, 3076.8331017826877)
    np.testing.assert_allclose(score(info, [96.262799, 3076.8331017826877]), [0.0, 100.0])


def test_missing_dataset_offline(monkeypatch, minari_root):
    def no_network(dataset_id, force_download=False):
        raise ConnectionError("[Errno -2] Name or service not known\nmore detail")

    monkeypatch.setattr(minari, "download_dataset", no_network)
    with pytest.raises(offline_data.DatasetError) as caught:
        load("D4RL/pen/human-v2")
    message = str(caught.value)
    assert isinstance(caught.value, offline_data.DatasetError) and "\n" not in message
    assert "minari download D4RL/pen/human-v2" in message and "MINARI_DATASETS_PATH" in message
    assert str(minari_root) in message and "ConnectionError" in message


def test_a_damaged_local_dataset_is_one_line(minari_root):
    """A copy whose data/ folder exists but cannot be read (a half-finished download): one line naming the folder."""
    folder = minari_root / "D4RL" / "pen" / "human-v2"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "main_data.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(offline_data.DatasetError) as caught:
        load("D4RL/pen/human-v2")
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message and "delete that folder" in message


def test_damage_inside_a_datasets_episodes_is_one_line(minari_root, monkeypatch, tmp_path):
    """minari opens a dataset's file lazily: an episode without its rewards, or a file cut short, shows only when the
    episodes are read, which open_minari does inside its check. A MINARI_DATASETS_PATH that is a file: one line too."""
    env = gym.make("Hopper-v5")
    folder = minari_root / "mujoco" / "hopper" / "damaged-v0"
    for damage in ("no rewards", "cut short"):
        write_dataset("mujoco/hopper/damaged-v0", env, [rollout(env, seed, max_steps=5) for seed in (0, 1)])
        main = folder / "data" / "main_data.hdf5"
        if damage == "no rewards":
            with h5py.File(main, "a") as f:
                del f["episode_1/rewards"]
        else:
            main.write_bytes(main.read_bytes()[: main.stat().st_size // 2])
        with pytest.raises(offline_data.DatasetError) as caught:
            load("mujoco/hopper/damaged-v0")
        message = str(caught.value)
        assert "\n" not in message and str(folder) in message and "delete that folder" in message, damage
        minari.delete_dataset("mujoco/hopper/damaged-v0")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "a_file"))
    with pytest.raises(offline_data.DatasetError, match="Minari's dataset folder cannot be used"):
        load("mujoco/hopper/damaged-v0")


def test_missing_download_client_is_named_exactly(monkeypatch, minari_root):
    """minari.download_dataset imports huggingface_hub (the extra minari[hf]); without it the one-line error names
    that package and the pip command, and does not blame the network. Mocked: no test touches the network."""

    def without_hf(dataset_id, force_download=False):  # what minari 0.5.4 raises when huggingface_hub is absent
        raise ImportError('huggingface_hub is not installed. Please install it using `pip install "minari[hf]"`')

    monkeypatch.setattr(minari, "download_dataset", without_hf)
    with pytest.raises(offline_data.DatasetError) as caught:
        load("mujoco/hopper/medium-v0")
    message = str(caught.value)
    assert "huggingface_hub" in message and "pip install 'minari[hf]==0.5.4'" in message and "\n" not in message
    assert "network" not in message


def test_requirements_install_minaris_download_client():
    """requirements.txt pins minari with the [hf] extra, whose huggingface_hub minari.download_dataset imports."""
    lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    assert "minari[hf]==0.5.4" in lines and any(line.startswith("huggingface_hub==") for line in lines)
    assert offline_data.minari_datasets.MINARI_DOWNLOAD_PACKAGE == "huggingface_hub"


def test_kitchen_needs_the_joint_fix_under_mujoco4():
    """Documents why fix_gymnasium_robotics_joints exists, and that its readers agree with qpos/qvel addresses."""
    code = (
        "import gymnasium as gym, gymnasium_robotics; gym.register_envs(gymnasium_robotics)\n"
        "try:\n    gym.make('FrankaKitchen-v1')\n    print('builds')\nexcept AssertionError:\n    print('assert')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    import mujoco

    assert out.strip().splitlines()[-1] == ("assert" if mujoco.__version__.startswith("4.") else "builds")
    offline_data.d4rl_envs.fix_gymnasium_robotics_joints()
    from gymnasium_robotics.utils import mujoco_utils

    env = gym.make("FrankaKitchen-v1")
    env.reset(seed=0)
    model, data = env.unwrapped.robot_env.model, env.unwrapped.robot_env.data
    for j in range(model.njnt):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
        width = {0: 7, 1: 4}.get(int(model.jnt_type[j]), 1)  # mjJNT_FREE = 0, mjJNT_BALL = 1
        np.testing.assert_array_equal(
            mujoco_utils.get_joint_qpos(model, data, name),
            data.qpos[model.jnt_qposadr[j] : model.jnt_qposadr[j] + width],
        )


def test_a_dataset_path_with_a_minari_id_is_refused():
    with pytest.raises(offline_data.UserError, match="--dataset-path is not for Minari ids"):
        offline_data.load("D4RL/pen/human-v2", "pen.hdf5", "raw")


def test_a_dataset_whose_action_space_is_not_minus_one_one_is_refused():
    """Pendulum's torque is in [-2, 2]: data whose actions all lie in [-1, 1] pass the value check, and the policy
    trained on them would act at half the scale the env reads (the policies act in [-1, 1])."""
    env = gym.make("Pendulum-v1", max_episode_steps=10)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    observations, actions, rewards = [obs], [], []
    for _ in range(10):
        actions.append(rng.uniform(-1, 1, 1).astype(np.float32))
        obs, reward, *_ = env.step(actions[-1])
        observations.append(obs)
        rewards.append(float(reward))
    episode = EpisodeBuffer(
        seed=0,
        observations=np.stack(observations),
        actions=np.stack(actions),
        rewards=rewards,
        terminations=[False] * 10,
        truncations=[False] * 9 + [True],
    )
    write_dataset("test/pendulum/tiny-v0", env, [episode])
    with pytest.raises(offline_data.DatasetError, match=r"the policies act in \[-1, 1\]; the dataset's action space"):
        load("test/pendulum/tiny-v0")


def test_an_action_space_of_zero_one_and_a_dataset_without_episodes_are_refused(monkeypatch):
    """A dataset whose actions lie in [0, 1] (its high bound 1, its low one not -1) is refused as [-2, 2] is; one
    without episodes is one DatasetError line, not numpy's error about nothing to concatenate."""
    box = lambda low: gym.spaces.Box(low, 1.0, (1,), np.float32)  # noqa: E731
    cases = ((0.0, [None], r"act in \[-1, 1\]; the dataset's action space"), (-1.0, [], "has no episodes"))
    for low, episodes, message in cases:
        dataset = type("Dataset", (), {"observation_space": box(-1.0), "action_space": box(low)})
        monkeypatch.setattr(offline_data.minari_datasets, "open_minari", lambda i, d=dataset, e=episodes: (d, e, i))
        with pytest.raises(offline_data.DatasetError, match=message):
            offline_data.minari_datasets.load_minari("test/pendulum/tiny-v0")


def test_running_out_of_memory_reading_a_dataset_is_not_blamed_on_its_files(monkeypatch, minari_root):
    """A MemoryError while the episodes are read is raised as it is: the damaged-copy line would tell the user to
    delete a good dataset."""
    (minari_root / "D4RL" / "pen" / "human-v2" / "data").mkdir(parents=True)

    def out_of_memory(dataset_id):
        raise MemoryError

    monkeypatch.setattr(minari, "load_dataset", out_of_memory)
    with pytest.raises(MemoryError):
        load("D4RL/pen/human-v2")
