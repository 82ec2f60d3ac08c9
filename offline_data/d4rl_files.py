"""D4RL's datasets without the `d4rl` package (it needs mujoco_py): the same files, download cache, checks,
`qlearning_dataset` semantics and reference returns (the normalized score, Eq. 18) as d4rl."""

import contextlib
import glob
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from typing import NamedTuple

import h5py
import numpy as np
from tqdm import tqdm

from offline_data.source import DatasetError, transform_rewards

D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/"


class Domain(NamedTuple):
    ref_min: float  # D4RL reference returns (d4rl/infos.py) for the normalized score, Eq. 18
    ref_max: float
    obs_dim: int
    act_dim: int
    eval_env: str  # the evaluation environment (see eval_env_factory)


DOMAINS = {
    "halfcheetah": Domain(-280.178953, 12135.0, 17, 6, "HalfCheetah-v4"),
    "hopper": Domain(-20.272305, 3234.3, 11, 3, "Hopper-v4"),
    "walker2d": Domain(1.629008, 4592.3, 17, 6, "Walker2d-v4"),
    "antmaze": Domain(0.0, 1.0, 29, 8, "D4RL's antmaze-v2 env on Gymnasium-Robotics AntMaze-v5"),
    "kitchen": Domain(0.0, 4.0, 60, 9, "D4RL's kitchen-v0 env on Gymnasium-Robotics' Franka kitchen model"),
    "pen": Domain(96.262799, 3076.8331017826877, 45, 24, "D4RL's pen-v1 env on Gymnasium-Robotics AdroitHandPen-v1"),
    "door": Domain(
        -56.512833, 2880.5693087298737, 39, 28, "D4RL's door-v1 env on Gymnasium-Robotics AdroitHandDoor-v1"
    ),
    "hammer": Domain(
        -274.856578, 12794.134825156867, 46, 26, "D4RL's hammer-v1 env on Gymnasium-Robotics AdroitHandHammer-v1"
    ),
    "relocate": Domain(
        -6.425911, 4233.877797728884, 39, 30, "D4RL's relocate-v1 env on Gymnasium-Robotics AdroitHandRelocate-v1"
    ),
}


def _antmaze(maze: str, multistart: bool, multigoal: bool) -> str:
    return f"ant_maze_v2/Ant_maze_{maze}_noisy_multistart_{multistart}_multigoal_{multigoal}_sparse_fixed.hdf5"


# id: (path under D4RL_URL, size in bytes, sha256), size and sha256 from tensorflow_datasets' D4RL checksums.tsv
# files (none are published there for antmaze-medium-play-v2 and Kitchen, and none could be read for
# relocate-cloned-v1: those downloads are checked against the server's Content-Length only); paths from d4rl/infos.py
DATASETS = {
    "halfcheetah-medium-v2": (
        "gym_mujoco_v2/halfcheetah_medium-v2.hdf5",
        237727262,
        "41324e8487a9556d8cfa4538827f8937f4d63dae3030825ebc9f3a726ed08ca0",
    ),
    "halfcheetah-medium-replay-v2": (
        "gym_mujoco_v2/halfcheetah_medium_replay-v2.hdf5",
        59448533,
        "48d494a4770c11f48260736dec090b78bdca8375647ed4d24bfa5b6610c7f683",
    ),
    "halfcheetah-medium-expert-v2": (
        "gym_mujoco_v2/halfcheetah_medium_expert-v2.hdf5",
        474567252,
        "015db75dae5bbe8e94029b71fa0bafc2073365df0c94744e71031189f3f79c06",
    ),
    "hopper-medium-v2": (
        "gym_mujoco_v2/hopper_medium-v2.hdf5",
        152756557,
        "5bdf1bc4a713c82941de44633df669b36c89850b652a25985166796d25cf71a0",
    ),
    "hopper-medium-replay-v2": (
        "gym_mujoco_v2/hopper_medium_replay-v2.hdf5",
        75854457,
        "e121c5f7c9857a307baa9edc6a2c3b48e85fedb9ac316ecddd0f48ca7ef4e39b",
    ),
    "hopper-medium-expert-v2": (
        "gym_mujoco_v2/hopper_medium_expert-v2.hdf5",
        304537315,
        "9d51ad87f8c905be3880d84c6140bcdb7fbf39a19e046a237f238ba34fec9e26",
    ),
    "walker2d-medium-v2": (
        "gym_mujoco_v2/walker2d_medium-v2.hdf5",
        232254996,
        "cf00f43add04c17fdfc2958dd581dea0851b2e5bedbe6fda073758a8f841aeda",
    ),
    "walker2d-medium-replay-v2": (
        "gym_mujoco_v2/walker2d_medium_replay-v2.hdf5",
        86323963,
        "e75de96a4f77acf7d4e0d6fdf0d7ccb177c26c44bb4388e4fd99f543ccfa18db",
    ),
    "walker2d-medium-expert-v2": (
        "gym_mujoco_v2/walker2d_medium_expert-v2.hdf5",
        462197079,
        "6b8d7f868c45bbaedf460be797fb7271b46dee6ebe45fe7a64319f2005b59a04",
    ),
    "antmaze-umaze-v2": (
        _antmaze("u-maze", False, False),
        232532949,
        "5ef15257771c50ef4d23c7de001750e96c8bb5d9b6a5e4a821dcfb3065fbd130",
    ),
    "antmaze-umaze-diverse-v2": (
        _antmaze("u-maze", True, True),
        230854272,
        "c771dd63963cd7d9f55f24a6d809064f6b82250a6aeac4c9d13f9a1d06e8c932",
    ),
    "antmaze-medium-play-v2": (_antmaze("big-maze", True, False), None, None),
    "antmaze-medium-diverse-v2": (
        _antmaze("big-maze", True, True),
        231095166,
        "ad9dcbac05d1f8744a7a216083f513662f43f64f28a4a5eb225e9811902dfae7",
    ),
    "antmaze-large-play-v2": (
        _antmaze("hardest-maze", True, False),
        230880653,
        "6d353df2457829925d7f9d4b0215587469908bd57478ea76f16417cfa944f471",
    ),
    "antmaze-large-diverse-v2": (
        _antmaze("hardest-maze", True, True),
        231183710,
        "84f775eb7956ea9cc766704710dc520a8ab357adc7522ade47f556f0e335e284",
    ),
    "kitchen-mixed-v0": ("kitchen/kitchen_microwave_kettle_bottomburner_light-v0.hdf5", None, None),
    "kitchen-partial-v0": ("kitchen/kitchen_microwave_kettle_light_slider-v0.hdf5", None, None),
    "pen-human-v1": (
        "hand_dapg_v1/pen-human-v1.hdf5",
        2040573,
        "209e345b2150b633f30a11612612c60f49e941f127ce6c4dc0cd790501c46f9f",
    ),
    "pen-cloned-v1": (
        "hand_dapg_v1/pen-cloned-v1.hdf5",
        155074191,
        "6d1a982cee1950501bedebbddedbcbb377e6284d379986c83abac8a6c0be0c22",
    ),
    "door-cloned-v1": (
        "hand_dapg_v1/door-cloned-v1.hdf5",
        294356136,
        "1f6a60ecc4d2a2e5c02f41dd3412be61bb265a33dcf120ceee9e9682d4fe4d48",
    ),
    "hammer-cloned-v1": (
        "hand_dapg_v1/hammer-cloned-v1.hdf5",
        446616879,
        "e48d75b159bdd72f51d3f01448d3eca4d38275714e11e995c14a36f6cf159db3",
    ),
    "relocate-cloned-v1": ("hand_dapg_v1/relocate-cloned-v1.hdf5", None, None),
}
# max_episode_steps of D4RL's registration of the ids (locomotion/__init__.py: antmaze umaze 700, medium and large
# 1000; hand_manipulation_suite/__init__.py MAX_STEPS; kitchen/__init__.py): only used by files without `timeouts`
MAX_EPISODE_STEPS = {"antmaze": 1000, "kitchen": 280, "pen": 100, "door": 200, "hammer": 200, "relocate": 200}
MAX_EPISODE_STEPS_OF_ID = {"antmaze-umaze-v2": 700, "antmaze-umaze-diverse-v2": 700}


def max_episode_steps(env_id: str) -> int:
    return MAX_EPISODE_STEPS_OF_ID.get(env_id, MAX_EPISODE_STEPS.get(env_id.split("-")[0], 1000))


def domain_of(env_id: str) -> Domain:
    return DOMAINS[env_id.split("-")[0]]


def dataset_cache_path(env_id: str) -> str:
    """Where d4rl keeps the file: $D4RL_DATASET_DIR (default ~/.d4rl/datasets) / the URL's file name."""
    cache_dir = os.path.expanduser(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets"))
    return os.path.join(cache_dir, os.path.basename(DATASETS[env_id][0]))


def download(url: str, path: str, size: int | None, sha256: str | None) -> None:
    """`fetch` into D4RL's cache, each failure one line that says what to do."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"cannot create the dataset folder {os.path.dirname(path)} ({e.strerror or e}); set D4RL_DATASET_DIR to "
            "a writable folder, or pass --dataset-path FILE (sweep.py --env-ids: --dataset-paths)"
        ) from None
    try:
        fetch(url, path, size, sha256)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # HTTPException: a cut-off response
        raise DatasetError(
            f"could not download {url} ({e}); download it by hand to {path}, or pass --dataset-path FILE (sweep.py "
            "--env-ids: --dataset-paths)"
        ) from None


def fetch(url: str, path: str, size: int | None, sha256: str | None) -> None:
    """Stream `url` to a file of this process next to `path`, check its size (the known one, else the server's
    Content-Length) and sha256, then rename it: no partial file is ever left under the final name, nor after a
    failure, and processes sharing a cache never write one file."""
    tmp, digest = f"{path}.part-{socket.gethostname()}-{os.getpid()}", hashlib.sha256()  # a shared cache: host too
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            length = response.headers.get("Content-Length")
            size = size or (int(length) if length and length.isdigit() else None)
            with tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = os.path.getsize(tmp)
        if size is not None and got != size:
            raise DatasetError(f"download of {url} is incomplete ({got} of {size} bytes); run again to retry")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DatasetError(f"sha256 of {url} is {digest.hexdigest()}, expected {sha256}; run again to retry")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_downloads(path: str) -> None:
    """Delete the `<path>.part-<host>-<pid>` files of this host's downloads whose process is gone (killed: its
    `finally` never ran); another host's (a cache on a shared file system) may be downloading."""
    prefix = f"{path}.part-{socket.gethostname()}-"
    for part in glob.glob(glob.escape(prefix) + "*"):
        pid = part[len(prefix) :]  # not a host whose name starts with this one's and a dash
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.remove(part)
            except OSError:
                pass  # it exists (another user's): still downloading


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_d4rl_hdf5(
    path: str, env_id: str, cached: bool = False, dims: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of a D4RL-layout hdf5 file, checked against the environment's sizes (`dims`: observation and action
    sizes, for an env D4RL does not know); a file that cannot be used is one DatasetError that says why (`cached`: a
    file of the download cache, which may be deleted and downloaded again; a --dataset-path file may be the user's
    only copy)."""
    if os.path.isdir(path):
        raise DatasetError(f"{path} is a directory; --dataset-path takes an hdf5 file in the D4RL layout")
    if not os.path.exists(path):
        raise DatasetError(f"dataset file {path} does not exist")
    try:
        with open(path, "rb") as f:
            signature = f.read(8)
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror or e})") from None
    keys, data = ("observations", "actions", "rewards", "terminals", "timeouts"), {}
    try:
        with h5py.File(path, "r") as f:
            for key in keys:
                if key in f and not isinstance(f[key], h5py.Dataset):
                    raise DatasetError(f"{path}: '{key}' is a {type(f[key]).__name__}, not an array")
                if key in f:
                    data[key] = np.asarray(f[key][()])
            stored = f.get("next_observations")  # unused but for check_episode_order, as d4rl leaves it unused
            if isinstance(stored, h5py.Dataset) and np.issubdtype(stored.dtype, np.floating):
                data["next_observations"] = np.asarray(stored[()])
    except DatasetError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError, ValueError, TypeError on damaged files
        what = "is truncated" if "truncated file" in str(e) else "is a damaged hdf5 file"
        what = (
            what if signature == HDF5_SIGNATURE or "file signature not found" not in str(e) else "is not an hdf5 file"
        )
        advice = "; delete it and download it again" if cached else ""
        raise DatasetError(f"{path} {what} ({type(e).__name__}: {e}){advice}".replace("\n", " ")) from None
    if missing := [k for k in keys[:4] if k not in data]:
        raise DatasetError(f"{path} lacks the D4RL key(s) {missing}")
    for key, x in data.items():
        if x.dtype != bool and not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise DatasetError(f"{path}: '{key}' holds {x.dtype} values, not numbers")
    obs_dim, act_dim = dims or (domain_of(env_id).obs_dim, domain_of(env_id).act_dim)
    n = len(data["observations"]) if data["observations"].ndim else 0
    for key, shape in {"observations": (n, obs_dim), "actions": (n, act_dim)}.items():
        if data[key].shape != shape:
            raise DatasetError(f"{path}: '{key}' has shape {data[key].shape}, {env_id} needs {shape}")
    for key in ("rewards", "terminals", "timeouts"):
        if key in data:
            if data[key].shape not in ((n,), (n, 1)):
                raise DatasetError(f"{path}: '{key}' has shape {data[key].shape}; {n} observations need ({n},)")
            data[key] = data[key].reshape(-1)  # d4rl squeezes (N, 1) to (N,)
    if not all(np.isfinite(data[k]).all() for k in ("observations", "actions", "rewards")):
        raise DatasetError(f"{path} contains NaN or infinite values")
    for key in ("terminals", "timeouts"):
        if key in data and not np.isin(data[key], (0, 1)).all():
            raise DatasetError(f"{path}: '{key}' must hold 0/1 flags (it has {np.unique(data[key])[:5]}...)")
    check_episode_order(path, data)
    return data  # the actions' scale is checked with every source's (offline_data.check_values)


def check_episode_order(path: str, data: dict[str, np.ndarray]) -> None:
    """The next observation is the following row (qlearning_dataset): where the file has its own next_observations
    (MuJoCo's do), most rows that go on to another in their episode (neither terminal nor timeout) must agree with
    it, or the rows are out of episode order (shuffled, say); the file's own are then dropped, as d4rl leaves them."""
    obs, next_obs = data["observations"], data.pop("next_observations", None)
    if next_obs is None or next_obs.shape != obs.shape or len(obs) < 2:
        return
    ends = data["terminals"].astype(bool) | (data["timeouts"].astype(bool) if "timeouts" in data else False)
    going_on = ~ends[:-1]
    same = np.isclose(next_obs[:-1][going_on], obs[1:][going_on], rtol=1e-5, atol=1e-6).all(axis=1)
    if going_on.any() and same.mean() < 0.5:
        raise DatasetError(
            f"{path}: its 'next_observations' differ from the following row's observation in {1 - same.mean():.0%} of "
            "the rows that go on: rows out of episode order, or altered? (the next observation is the following row's)"
        )


def timeouts_by_step_count(terminals: np.ndarray, max_episode_steps: int, restart: int = 1) -> np.ndarray:
    """d4rl's fallback for files without `timeouts`: an episode ends after max_episode_steps steps (counted
    exactly as d4rl counts them, including its restart at 1 after a terminal; `restart` 0 counts them right)."""
    timeouts, step = np.zeros(len(terminals), bool), 0
    for i, terminal in enumerate(terminals):
        timeouts[i] = step == max_episode_steps - 1
        step = 0 if timeouts[i] else (restart if terminal else step + 1)
    return timeouts


def qlearning_dataset(data: dict[str, np.ndarray], max_episode_steps: int = 1000) -> dict[str, np.ndarray]:
    """d4rl.qlearning_dataset, vectorised: next observation = observations[i + 1]; rows that end in a timeout
    and the last row are dropped; done = true terminals only."""
    n = len(data["observations"]) - 1
    timeouts = data["timeouts"] if "timeouts" in data else timeouts_by_step_count(data["terminals"], max_episode_steps)
    keep = ~timeouts[:n].astype(bool)
    return {
        "observations": data["observations"][:n][keep].astype(np.float32),
        "actions": data["actions"][:n][keep].astype(np.float32),
        "next_observations": data["observations"][1:][keep].astype(np.float32),
        "rewards": data["rewards"][:n][keep].astype(np.float32),
        "terminals": data["terminals"][:n][keep].astype(bool),
    }


def load_d4rl(env_id: str, dataset_path: str | None, reward_mode: str) -> dict[str, np.ndarray]:
    """qlearning_dataset of `dataset_path`, or of the D4RL file of `env_id` (downloaded if missing), rewards
    transformed."""
    if dataset_path is None:
        dataset_path = cache_path = dataset_cache_path(env_id)
        remove_stale_downloads(cache_path)
        if not os.path.exists(dataset_path):
            rel_path, size, sha256 = DATASETS[env_id]
            download(D4RL_URL + rel_path, dataset_path, size, sha256)
    else:
        cache_path = None
    data = read_d4rl_hdf5(dataset_path, env_id, cached=dataset_path == cache_path)
    data = qlearning_dataset(data, max_episode_steps(env_id))
    if len(data["rewards"]) == 0:
        raise DatasetError(f"{dataset_path} has no usable transitions")
    data["rewards"] = transform_rewards(data["rewards"], reward_mode)
    return data


def normalized_score(env_id: str, episode_return):
    """D4RL normalized score (Eq. 18) of a D4RL id: 0 = random policy, 100 = D4RL's expert."""
    d = domain_of(env_id)
    return 100.0 * (episode_return - d.ref_min) / (d.ref_max - d.ref_min)
