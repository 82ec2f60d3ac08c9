"""The maze envs the package makes leave no file in the temp folder: Gymnasium-Robotics' maze (Minari's AntMaze, and
D4RL's AntMaze rebuilt on it) writes <temp folder>/ant_maze<time>.xml for each env and OGBench's maze and soccer envs a
tempfile.mkstemp <temp folder>/tmp*.xml, and neither deletes it; the package does, once the model is loaded. The temp
folder is a fresh one for each test (tempfile.tempdir), so the count is exact whatever else runs on the machine."""

import copy
import os
import tempfile
import warnings

import gymnasium as gym
import pytest

import offline_data
from offline_data.evaluation_envs import remove_model_file

ANTMAZE_OGBENCH = "antmaze-large-navigate-singletask-task1-v0"


@pytest.fixture
def temp_folder(tmp_path, monkeypatch):
    """tempfile's folder, empty at the start of the test (what the envs write there is what the test counts)."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def made_and_closed(make_env, count: int = 2) -> None:
    """Make `count` envs, as a run makes its evaluation envs, step each once and close them."""
    envs = [make_env() for _ in range(count)]
    for env in envs:
        env.reset(seed=0)
        env.step(env.action_space.sample())
        env.close()


def test_d4rl_antmaze_envs_leave_no_file(temp_folder):
    pytest.importorskip("gymnasium_robotics")
    made_and_closed(offline_data.eval_env_factory("antmaze-medium-play-v2"))
    assert os.listdir(temp_folder) == []


def test_minari_antmaze_load_and_envs_leave_no_file(tmp_path, temp_folder, monkeypatch):
    """The env that load() builds to check the data, and each evaluation env of the source."""
    pytest.importorskip("minari")
    gymnasium_robotics = pytest.importorskip("gymnasium_robotics")
    from test_minari_datasets import MEDIUM_EVAL_MAP, rollout, write_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    gym.register_envs(gymnasium_robotics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AntMaze-v4 is "out of date"
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the recording env's own file: not counted
        env = gym.make("AntMaze_Medium_Diverse_GR-v4", continuing_task=True, reset_target=False)
        eval_spec = copy.deepcopy(env.spec)
        eval_spec.kwargs["maze_map"], eval_spec.max_episode_steps = MEDIUM_EVAL_MAP, 700
        write_dataset("D4RL/antmaze/tiny-v1", env, [rollout(env, seed, max_steps=3) for seed in (0, 1)], eval_spec)
        env.close()
        monkeypatch.setattr(tempfile, "tempdir", str(temp_folder))
        source = offline_data.load("D4RL/antmaze/tiny-v1")
        assert os.listdir(temp_folder) == []
        made_and_closed(source.make_env)
    assert os.listdir(temp_folder) == []


@pytest.mark.parametrize(
    "env_id",
    [
        ANTMAZE_OGBENCH,
        "humanoidmaze-medium-navigate-singletask-task1-v0",
        "antsoccer-arena-navigate-singletask-task4-v0",
    ],
)
def test_ogbench_maze_envs_leave_no_file(temp_folder, env_id):
    pytest.importorskip("ogbench")
    made_and_closed(lambda: offline_data.ogbench_datasets.make_ogbench_env(env_id))
    assert os.listdir(temp_folder) == []


def test_ogbench_antmaze_load_and_envs_leave_no_file(tmp_path, temp_folder, monkeypatch):
    """load() of OGBench's AntMaze (its own env, for ogbench's relabelling) and the source's evaluation envs."""
    pytest.importorskip("ogbench")
    from test_ogbench_datasets import record_ogbench

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the recording env's own file: not counted
    train_file = record_ogbench(ANTMAZE_OGBENCH, tmp_path / "ogbench", steps=(5, 5))
    monkeypatch.setattr(tempfile, "tempdir", str(temp_folder))
    source = offline_data.load(ANTMAZE_OGBENCH, os.path.dirname(train_file))
    assert os.listdir(temp_folder) == []
    made_and_closed(source.make_env)
    assert os.listdir(temp_folder) == []


def test_only_the_mazes_own_model_files_are_removed(temp_folder):
    """A MuJoCo env of your own built from a model file in the temp folder (gymnasium's MujocoEnv keeps its path as
    `fullpath`, where OGBench's envs keep their mkstemp tmp*.xml) keeps it: only files named as the mazes name theirs,
    ant_maze*.xml and tmp*.xml directly in the temp folder, are deleted."""
    mine, maze, theirs = (temp_folder / name for name in ("my_hopper.xml", "ant_maze123.xml", "tmpab12.xml"))
    for path in (mine, maze, theirs):
        path.write_text("<mujoco/>")
    env = gym.Env()
    env.fullpath = str(mine)
    remove_model_file(env)
    assert mine.exists()
    env.fullpath, env.tmp_xml_file_path = str(theirs), str(maze)
    remove_model_file(env)
    assert os.listdir(temp_folder) == ["my_hopper.xml"]
