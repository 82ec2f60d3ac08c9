"""OGBench's single-task datasets and environments, from the `ogbench` package itself (`make_env_and_datasets`: its
cache ~/.ogbench/data, its loader and its single-task relabelling; its files downloaded from its URL as D4RL's are),
evaluated as FQL evaluates them: the success rate, from the final step's info['success'] of each episode."""

import contextlib
import functools
import http.client
import os
import urllib.error
import warnings
import zipfile

import gymnasium as gym
import numpy as np

from offline_data.d4rl_files import fetch, remove_stale_downloads
from offline_data.evaluation_envs import remove_model_file
from offline_data.source import DatasetError, DataSource

# The state-based families FQL reports (its README's offline RL commands), each with its default task (the task of
# the id without a task suffix). Every family has five tasks.
OGBENCH_FAMILIES = {
    "antmaze-large-navigate": 1,
    "antmaze-giant-navigate": 1,
    "humanoidmaze-medium-navigate": 1,
    "humanoidmaze-large-navigate": 1,
    "antsoccer-arena-navigate": 4,
    "cube-single-play": 2,
    "cube-double-play": 2,
    "scene-play": 2,
    "puzzle-3x3-play": 4,
    "puzzle-4x4-play": 4,
}
OGBENCH_IDS = {  # every supported id -> the id whose presets it uses (its family's default id)
    f"{family}-singletask{task}-v0": f"{family}-singletask-v0"
    for family in OGBENCH_FAMILIES
    for task in ("", *(f"-task{i}" for i in range(1, 6)))
}
# ogbench >= 1.2 computes a single-task step's success, reward and termination on the state before the action
# ('pre'); 'post', on the state after it, is ogbench 1.1.0's behaviour, under which FQL's published numbers were made.
SUCCESS_TIMING = "post"
OGBENCH_PACKAGE = "ogbench==1.2.2"  # as in requirements.txt


def is_ogbench_id(env_id: str) -> bool:
    return "singletask" in env_id.split("-")  # 'cube-double-play-singletask-task2-v0'


def import_ogbench():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dm_control's GLFW import without a display (rendering is not used)
            import ogbench
    except ImportError:
        raise DatasetError(f"OGBench ids need the ogbench package: pip install {OGBENCH_PACKAGE}") from None
    return ogbench


@contextlib.contextmanager
def float32_cast_warning_ignored():
    """Without gymnasium's warning that a Box's float64 bounds are cast to float32: ogbench's cube, scene and puzzle
    envs build their action space so at each read (their resets and its relabelling read it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*precision lowered by casting to float32")
        yield


class SeededStarts(gym.Wrapper):
    """The mazes and antsoccer draw their start's noise from numpy's global generator: each reset seeds it for the
    reset alone (its state then restored), with the reset's seed, or without one with a draw of the env's own
    generator, so that, as elsewhere, the env's seed decides its starts, in whatever process the env runs. The
    action space is read once (float32_cast_warning_ignored), and the resets go without that warning."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        with float32_cast_warning_ignored():
            self.action_space = env.action_space

    def reset(self, *, seed=None, options=None):
        state = np.random.get_state()
        np.random.seed(seed % 2**32 if seed is not None else int(self.env.unwrapped.np_random.integers(1 << 31)))
        try:
            with float32_cast_warning_ignored():
                return self.env.reset(seed=seed, options=options)
        finally:
            np.random.set_state(state)


def make_ogbench_env(env_id: str) -> gym.Env:
    """The single-task evaluation env of `env_id`, ogbench's own, with FQL's success timing (its maze file deleted)."""
    ogbench = import_ogbench()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float64 bounds cast to float32; the manipulation envs' GLFW: no display
        env = ogbench.make_env_and_datasets(env_id, env_only=True, success_timing=SUCCESS_TIMING)
    base = env.unwrapped
    if not base.metadata.get("render_modes"):  # the manipulation envs list none, yet render rgb frames in any mode
        base.metadata = {**base.metadata, "render_modes": ["rgb_array"]}
    return SeededStarts(remove_model_file(env))


def dataset_name(env_id: str) -> str:
    """ogbench's file name of the data of a single-task id: its family's dataset ('cube-double-play-v0')."""
    return env_id.split("-singletask")[0] + "-v0"


def download_missing(files: list[str], url: str) -> None:
    """Each of ogbench's `files` that its folder lacks, from `url`, as D4RL's files: streamed to a file of this process,
    then renamed (ogbench's own download writes one `.tmp` file for all the processes that share the cache)."""
    os.makedirs(os.path.dirname(files[0]), exist_ok=True)
    for path in files:
        remove_stale_downloads(path)
    for path in (path for path in files if not os.path.exists(path)):
        fetch(f"{url}/{os.path.basename(path)}", path, None, None)


def load_ogbench(env_id: str, dataset_path: str | None) -> DataSource:
    """The training file of `env_id`, relabelled by ogbench for its task (rewards; masks = 0 at a full success, which
    the critic takes as its done flag), from ogbench's cache (downloaded if missing) or `dataset_path` (a folder
    holding ogbench's files, or a train file, which ogbench reads with its -val.npz beside it)."""
    ogbench = import_ogbench()
    if dataset_path is not None and not os.path.isdir(dataset_path):
        where = {"dataset_path": dataset_path}
    else:
        where = {"dataset_dir": dataset_path or os.path.expanduser(ogbench.utils.DEFAULT_DATASET_DIR)}
    env = make_ogbench_env(env_id)
    name = dataset_name(env_id)
    files = [where.get("dataset_path") or os.path.join(where["dataset_dir"], f"{name}.npz")]
    files.append(files[0].replace(".npz", "-val.npz"))
    try:
        if "dataset_dir" in where:  # what the folder lacks, from ogbench's URL: its own step, so a failure is named
            download_missing(files, ogbench.utils.DATASET_URL)
        with float32_cast_warning_ignored():
            train, _ = ogbench.make_env_and_datasets(env_id, dataset_only=True, cur_env=env, **where)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        if isinstance(e, FileNotFoundError) and "dataset_path" in where:
            beside = f" (ogbench reads it beside {os.path.basename(files[0])})" if e.filename == files[1] else ""
            raise DatasetError(f"{e.filename} does not exist{beside}") from None
        if "dataset_dir" in where and not all(map(os.path.exists, files)):  # no network, a cut download, no write
            raise DatasetError(
                f"{name} is not in {where['dataset_dir']} and could not be downloaded ({type(e).__name__}: {e}); "
                f"download {name}.npz and {name}-val.npz (ogbench.download_datasets) where there is network access, "
                "and pass their folder as --dataset-path (sweep.py --env-ids: --dataset-paths)"
            ) from None
        raise DatasetError(f"{' or '.join(files)}: not a usable OGBench npz file ({type(e).__name__}: {e})") from None
    except (zipfile.BadZipFile, ValueError, KeyError, IndexError, EOFError) as e:  # np.load, arrays missing or cut
        raise DatasetError(f"{' or '.join(files)}: not a usable OGBench npz file ({type(e).__name__}: {e})") from None
    finally:
        env.close()
    lengths = {k: len(train[k]) for k in ("observations", "actions", "next_observations", "rewards", "masks")}
    if len(set(lengths.values())) > 1:  # ogbench pairs rows with their successors within trajectories
        raise DatasetError(f"{files[0]}: arrays of unequal lengths {lengths} (a trajectory must end with terminals 1)")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    for key, dim in (("observations", obs_dim), ("actions", act_dim)):
        if train[key].ndim != 2 or train[key].shape[1] != dim:
            raise DatasetError(f"{files[0]}: '{key}' has shape {train[key].shape}, {env_id} needs (N, {dim})")
    if len(train["rewards"]) == 0:
        raise DatasetError(f"{files[0]} has no usable transitions")
    if not all(np.isfinite(train[k]).all() for k in ("observations", "actions")):
        raise DatasetError(f"{files[0]} contains NaN or infinite values")
    data = {k: train[k] for k in ("observations", "actions", "next_observations", "rewards")}
    data["terminals"] = 1.0 - train["masks"]  # done = 1 - mask: the end of the task, not of the trajectory
    make_env = functools.partial(make_ogbench_env, env_id)
    return DataSource(data, files[0], obs_dim, act_dim, make_env, env.spec.id, None, None, scored_by_success=True)
