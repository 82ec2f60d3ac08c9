"""Diffusion Q-Learning (DQL) (Wang, Hunt & Zhou, ICLR 2023): a T = 5 step DDPM policy trained with behaviour
cloning plus a Q term back-propagated through the whole denoising chain. The baseline of OFQL (arXiv 2508.13904);
this file is ofql.py with the policy swapped (`diff dql.py ofql.py`). Equation numbers (Eq. N) refer to the
OFQL paper, which restates DQL in its Section 3. Docs and results: README.md.
"""
import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Optional

import gymnasium as gym
import h5py
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    env_id: str = "halfcheetah-medium-v2"
    """the D4RL dataset id, or a Minari id (mujoco/hopper/medium-v0, ...); it selects the data, the evaluation
    environment and the presets below"""
    dataset_path: Optional[str] = None
    """a local hdf5 file in the D4RL layout to use instead of the (downloaded) D4RL file"""
    seed: int = 0
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    cuda_graph: bool = True
    """if toggled, on CUDA the whole training iteration is captured once as a CUDA graph and replayed (the fast
    path); --no-cuda-graph runs it eagerly, as on the CPU"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "ofql"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """if toggled, a checkpoint is written to runs/<run_name>/checkpoint.pt at every evaluation"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to continue from (run it with the same flags as the original run)"""

    # Algorithm specific arguments (the defaults shown by --help are the presets of --env-id)
    total_steps: int = 2_000_000
    """total number of gradient steps (preset)"""
    batch_size: int = 256
    """the batch size of sample from the dataset"""
    actor_lr: float = 3e-4
    """the learning rate of the policy optimizer (preset)"""
    critic_lr: float = 3e-4
    """the learning rate of the Q-network optimizer"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """the Polyak rate of the target Q-networks, applied every step"""
    ema_decay: float = 0.995
    """the decay of the EMA (target) policy that generates the critic's next actions"""
    ema_every: int = 5
    """the EMA policy is updated every this many steps"""
    ema_start: int = 1000
    """the EMA policy starts moving at this step; before it, it is the initial network (as in DQL's code)"""
    eta: float = 1.0
    """the weight of the normalised Q term in the actor loss (DQL's alpha) (preset)"""
    diffusion_steps: int = 5
    """T, the number of DDPM denoising steps (DQL uses 5 with its VP noise schedule)"""
    max_q_backup: bool = False
    """if toggled, the critic target takes the max over `num_backup_actions` next actions per head (preset)"""
    num_backup_actions: int = 10
    """the number of next actions of the max-Q backup"""
    reward_mode: Literal["raw", "cql_antmaze", "iql_antmaze", "standardize"] = "raw"
    """reward transform: raw, (r - 0.5) * 4 (CQL's AntMaze rule), r - 1 (IQL's), or (r - mean) / std (preset)"""
    grad_norm: float = 9.0
    """the max gradient norm of the actor and of the critic; 0 disables clipping (preset)"""

    # Evaluation and logging
    eval_every: int = 50_000
    """evaluate (and checkpoint) every this many gradient steps, and at the last step"""
    eval_episodes: int = 10
    """the number of evaluation episodes, run in parallel in a vector env (preset)"""
    num_candidates: int = 50
    """candidate actions per state at evaluation, one picked by softmax(Q) as in DQL; 1 = the policy's own sample
    (preset); with more, the policy's own sample is evaluated too (eval/policy_score)"""
    log_every: int = 1000
    """print and record the mean training metrics every this many steps"""


@dataclass(frozen=True)
class Preset:
    """Per-dataset values that override the Args defaults (every one can still be set by its flag)."""

    eta: float
    grad_norm: float
    total_steps: int = 2_000_000
    actor_lr: float = 3e-4
    max_q_backup: bool = False
    reward_mode: str = "raw"
    eval_episodes: int = 10
    num_candidates: int = 50


# DQL's official per-dataset table (main.py): eta, lr, max-Q backup, reward handling, grad_norm, epochs x 1000
# steps, 10 evaluation episodes for -v2 locomotion and 100 otherwise. Its AntMaze rows are for the -v0 files.
_LONG = dict(total_steps=1_000_000, eval_episodes=100)
PRESETS = {
    "halfcheetah-medium-v2": Preset(eta=1.0, grad_norm=9.0),
    "halfcheetah-medium-replay-v2": Preset(eta=1.0, grad_norm=2.0),
    "halfcheetah-medium-expert-v2": Preset(eta=1.0, grad_norm=7.0),
    "hopper-medium-v2": Preset(eta=1.0, grad_norm=9.0),
    "hopper-medium-replay-v2": Preset(eta=1.0, grad_norm=4.0),
    "hopper-medium-expert-v2": Preset(eta=1.0, grad_norm=5.0),
    "walker2d-medium-v2": Preset(eta=1.0, grad_norm=1.0),
    "walker2d-medium-replay-v2": Preset(eta=1.0, grad_norm=4.0),
    "walker2d-medium-expert-v2": Preset(eta=1.0, grad_norm=5.0),
    "antmaze-medium-play-v2": Preset(eta=2.0, grad_norm=2.0, actor_lr=1e-3, max_q_backup=True, reward_mode="cql_antmaze", **_LONG),
    "antmaze-medium-diverse-v2": Preset(eta=3.0, grad_norm=1.0, max_q_backup=True, reward_mode="cql_antmaze", **_LONG),
    "antmaze-large-play-v2": Preset(eta=4.5, grad_norm=10.0, max_q_backup=True, reward_mode="cql_antmaze", **_LONG),
    "antmaze-large-diverse-v2": Preset(eta=3.5, grad_norm=7.0, max_q_backup=True, reward_mode="cql_antmaze", **_LONG),
    "kitchen-mixed-v0": Preset(eta=0.005, grad_norm=10.0, **_LONG),
    "kitchen-partial-v0": Preset(eta=0.005, grad_norm=10.0, **_LONG),
    "pen-human-v1": Preset(eta=0.15, grad_norm=7.0, actor_lr=3e-5, reward_mode="standardize", **_LONG),
    "pen-cloned-v1": Preset(eta=0.1, grad_norm=8.0, actor_lr=3e-5, reward_mode="standardize", **_LONG),
}


class UserError(Exception):
    """A problem with the command line or the data: reported as one line, exit code 2."""


def parse_args(argv: Optional[list[str]] = None) -> Args:
    """Two passes: read --env-id, then parse every flag with that dataset's presets as the defaults."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--env-id", "--env_id", default=Args.env_id)
    env_id = peek.parse_known_args(argv)[0].env_id
    preset = MINARI_PRESET_KEYS.get(env_id) if is_minari_id(env_id) else env_id
    if preset not in PRESETS:
        raise UserError(f"unknown --env-id {env_id!r}; supported: {', '.join(PRESETS)}, and the Minari datasets "
                        f"{', '.join(MINARI_PRESET_KEYS)}")
    defaults = dataclasses.replace(Args(), env_id=env_id, **dataclasses.asdict(PRESETS[preset]))
    return tyro.cli(Args, args=argv, default=defaults, description=f"{__doc__}Defaults below: the presets of {env_id}.")


# ---------------------------------------------------------------------------------------------------------------
# D4RL data, without the `d4rl` package (it needs mujoco_py). Same files, cache and semantics as d4rl.
# ---------------------------------------------------------------------------------------------------------------
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/"


class Domain(NamedTuple):
    ref_min: float  # D4RL reference returns (d4rl/infos.py) for the normalized score, Eq. 18
    ref_max: float
    obs_dim: int
    act_dim: int
    eval_env: str  # the evaluation environment (see d4rl_eval_env_factory)


DOMAINS = {
    "halfcheetah": Domain(-280.178953, 12135.0, 17, 6, "HalfCheetah-v4"),
    "hopper": Domain(-20.272305, 3234.3, 11, 3, "Hopper-v4"),
    "walker2d": Domain(1.629008, 4592.3, 17, 6, "Walker2d-v4"),
    "antmaze": Domain(0.0, 1.0, 29, 8, "D4RL's antmaze-v2 env on Gymnasium-Robotics AntMaze-v5"),
    "kitchen": Domain(0.0, 4.0, 60, 9, "D4RL's kitchen-v0 env on Gymnasium-Robotics' Franka kitchen model"),
    "pen": Domain(96.262799, 3076.8331017826877, 45, 24, "D4RL's pen-v1 env on Gymnasium-Robotics AdroitHandPen-v1"),
}


def _antmaze(maze: str, multistart: bool, multigoal: bool) -> str:
    return f"ant_maze_v2/Ant_maze_{maze}_noisy_multistart_{multistart}_multigoal_{multigoal}_sparse_fixed.hdf5"


# id: (path under D4RL_URL, size in bytes, sha256), size and sha256 from tensorflow_datasets' D4RL checksums.tsv
# files (none are published there for antmaze-medium-play-v2 and Kitchen: those downloads are not verified)
DATASETS = {
    "halfcheetah-medium-v2": ("gym_mujoco_v2/halfcheetah_medium-v2.hdf5", 237727262, "41324e8487a9556d8cfa4538827f8937f4d63dae3030825ebc9f3a726ed08ca0"),
    "halfcheetah-medium-replay-v2": ("gym_mujoco_v2/halfcheetah_medium_replay-v2.hdf5", 59448533, "48d494a4770c11f48260736dec090b78bdca8375647ed4d24bfa5b6610c7f683"),
    "halfcheetah-medium-expert-v2": ("gym_mujoco_v2/halfcheetah_medium_expert-v2.hdf5", 474567252, "015db75dae5bbe8e94029b71fa0bafc2073365df0c94744e71031189f3f79c06"),
    "hopper-medium-v2": ("gym_mujoco_v2/hopper_medium-v2.hdf5", 152756557, "5bdf1bc4a713c82941de44633df669b36c89850b652a25985166796d25cf71a0"),
    "hopper-medium-replay-v2": ("gym_mujoco_v2/hopper_medium_replay-v2.hdf5", 75854457, "e121c5f7c9857a307baa9edc6a2c3b48e85fedb9ac316ecddd0f48ca7ef4e39b"),
    "hopper-medium-expert-v2": ("gym_mujoco_v2/hopper_medium_expert-v2.hdf5", 304537315, "9d51ad87f8c905be3880d84c6140bcdb7fbf39a19e046a237f238ba34fec9e26"),
    "walker2d-medium-v2": ("gym_mujoco_v2/walker2d_medium-v2.hdf5", 232254996, "cf00f43add04c17fdfc2958dd581dea0851b2e5bedbe6fda073758a8f841aeda"),
    "walker2d-medium-replay-v2": ("gym_mujoco_v2/walker2d_medium_replay-v2.hdf5", 86323963, "e75de96a4f77acf7d4e0d6fdf0d7ccb177c26c44bb4388e4fd99f543ccfa18db"),
    "walker2d-medium-expert-v2": ("gym_mujoco_v2/walker2d_medium_expert-v2.hdf5", 462197079, "6b8d7f868c45bbaedf460be797fb7271b46dee6ebe45fe7a64319f2005b59a04"),
    "antmaze-medium-play-v2": (_antmaze("big-maze", True, False), None, None),
    "antmaze-medium-diverse-v2": (_antmaze("big-maze", True, True), 231095166, "ad9dcbac05d1f8744a7a216083f513662f43f64f28a4a5eb225e9811902dfae7"),
    "antmaze-large-play-v2": (_antmaze("hardest-maze", True, False), 230880653, "6d353df2457829925d7f9d4b0215587469908bd57478ea76f16417cfa944f471"),
    "antmaze-large-diverse-v2": (_antmaze("hardest-maze", True, True), 231183710, "84f775eb7956ea9cc766704710dc520a8ab357adc7522ade47f556f0e335e284"),
    "kitchen-mixed-v0": ("kitchen/kitchen_microwave_kettle_bottomburner_light-v0.hdf5", None, None),
    "kitchen-partial-v0": ("kitchen/kitchen_microwave_kettle_light_slider-v0.hdf5", None, None),
    "pen-human-v1": ("hand_dapg_v1/pen-human-v1.hdf5", 2040573, "209e345b2150b633f30a11612612c60f49e941f127ce6c4dc0cd790501c46f9f"),
    "pen-cloned-v1": ("hand_dapg_v1/pen-cloned-v1.hdf5", 155074191, "6d1a982cee1950501bedebbddedbcbb377e6284d379986c83abac8a6c0be0c22"),
}
MAX_EPISODE_STEPS = {"antmaze": 1000, "kitchen": 280, "pen": 100}  # only used by files without `timeouts`


class DatasetError(UserError):
    pass


def domain_of(env_id: str) -> Domain:
    return DOMAINS[env_id.split("-")[0]]


def normalized_score(env_id: str, episode_return):
    """D4RL normalized score (Eq. 18): 0 = random policy, 100 = D4RL's expert."""
    d = domain_of(env_id)
    return 100.0 * (episode_return - d.ref_min) / (d.ref_max - d.ref_min)


def dataset_cache_path(env_id: str) -> str:
    """Where d4rl keeps the file: $D4RL_DATASET_DIR (default ~/.d4rl/datasets) / the URL's file name."""
    cache_dir = os.path.expanduser(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets"))
    return os.path.join(cache_dir, os.path.basename(DATASETS[env_id][0]))


def download(url: str, path: str, size: Optional[int], sha256: Optional[str]) -> None:
    """Stream `url` to a temporary file next to `path`, check size and sha256, then rename: no partial file
    is ever left under the final name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp, digest = f"{path}.part{os.getpid()}", hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or size
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
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
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(
            f"could not download {url} ({e}); download it by hand to {path}, or pass --dataset-path FILE"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_d4rl_hdf5(path: str, env_id: str) -> dict[str, np.ndarray]:
    """The arrays of a D4RL-layout hdf5 file, checked against the environment's sizes."""
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file {path} does not exist")
    keys = ("observations", "actions", "rewards", "terminals", "timeouts")
    try:
        with h5py.File(path, "r") as f:
            data = {k: f[k][()] for k in keys if k in f}
    except OSError as e:
        raise DatasetError(f"{path} is not a readable hdf5 file ({e}); delete it and download it again") from None
    if missing := [k for k in keys[:4] if k not in data]:
        raise DatasetError(f"{path} lacks the D4RL key(s) {missing}")
    d, n = domain_of(env_id), len(data["observations"])
    for key, shape in {"observations": (n, d.obs_dim), "actions": (n, d.act_dim)}.items():
        if data[key].shape != shape:
            raise DatasetError(f"{path}: '{key}' has shape {data[key].shape}, {env_id} needs {shape}")
    for key in ("rewards", "terminals", "timeouts"):
        if key in data:
            data[key] = data[key].reshape(-1)  # d4rl squeezes (N, 1) to (N,)
            if len(data[key]) != n:
                raise DatasetError(f"{path}: '{key}' has {len(data[key])} rows, 'observations' has {n}")
    if not all(np.isfinite(data[k]).all() for k in ("observations", "actions", "rewards")):
        raise DatasetError(f"{path} contains NaN or infinite values")
    return data


def timeouts_by_step_count(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """d4rl's fallback for files without `timeouts`: an episode ends after max_episode_steps steps (counted
    exactly as d4rl counts them, including its restart at 1 after a terminal)."""
    timeouts, step = np.zeros(len(terminals), bool), 0
    for i, terminal in enumerate(terminals):
        timeouts[i] = step == max_episode_steps - 1
        step = 0 if timeouts[i] else (1 if terminal else step + 1)
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


def transform_rewards(rewards: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cql_antmaze":  # CQL's AntMaze rule, as in DQL: {0, 1} -> {-2, 2}
        return (rewards - 0.5) * 4.0
    if mode == "iql_antmaze":  # IQL's AntMaze rule, as in FQL: {0, 1} -> {-1, 0}
        return rewards - 1.0
    if mode == "standardize":  # DQL's "normalize" for Adroit
        return (rewards - rewards.mean()) / rewards.std()
    return rewards


def load_dataset(env_id: str, dataset_path: Optional[str], reward_mode: str) -> dict[str, np.ndarray]:
    if dataset_path is None:
        dataset_path = dataset_cache_path(env_id)
        if not os.path.exists(dataset_path):
            rel_path, size, sha256 = DATASETS[env_id]
            download(D4RL_URL + rel_path, dataset_path, size, sha256)
    domain = env_id.split("-")[0]
    data = qlearning_dataset(read_d4rl_hdf5(dataset_path, env_id), MAX_EPISODE_STEPS.get(domain, 1000))
    if len(data["rewards"]) == 0:
        raise DatasetError(f"{dataset_path} has no usable transitions")
    data["rewards"] = transform_rewards(data["rewards"], reward_mode)
    return data


# ---------------------------------------------------------------------------------------------------------------
# Minari datasets (optional: pip install minari gymnasium-robotics). Regenerated data with their own evaluation
# environments and reference returns: their scores are never comparable with D4RL scores.
# ---------------------------------------------------------------------------------------------------------------
# Minari id -> the D4RL id whose preset it uses (the same task family; not the same data)
MINARI_PRESET_KEYS = {
    **{f"mujoco/{env}/{ds}-v0": f"{env}-{ds}-v2"
       for env in ("halfcheetah", "hopper", "walker2d") for ds in ("medium", "medium-replay", "medium-expert")},
    **{f"D4RL/antmaze/{ds}-v1": f"antmaze-{ds}-v2" for ds in ("medium-play", "medium-diverse", "large-play", "large-diverse")},
    **{f"D4RL/kitchen/{ds}-v2": f"kitchen-{ds}-v0" for ds in ("mixed", "partial")},
    **{f"D4RL/pen/{ds}-v2": f"pen-{ds}-v1" for ds in ("human", "cloned")},
}


def is_minari_id(env_id: str) -> bool:
    return "/" in env_id  # 'mujoco/hopper/medium-v0'; D4RL ids have no '/'


def flatten_observation(space: gym.Space, obs) -> np.ndarray:
    """One float32 vector per observation, for the stored data and the environment alike: a Dict concatenates its
    entries in sorted key order, recursively (gymnasium.spaces.flatten's order), e.g. AntMaze [achieved_goal(2),
    desired_goal(2), observation(27)]. Leading batch axes are kept, so a whole episode flattens in one call."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_observation(space[k], obs[k]) for k in sorted(space.keys())], axis=-1)
    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(f"cannot flatten a {type(space).__name__} observation space (only Box and Dict)")
    x, batch = np.asarray(obs, dtype=np.float32), np.ndim(obs) - len(space.shape)
    if batch < 0 or x.shape[batch:] != space.shape:
        raise DatasetError(f"an observation of shape {x.shape} does not fit the space {space}")
    return x.reshape(x.shape[:batch] + (-1,))


def open_minari(dataset_id: str):
    """The local dataset under $MINARI_DATASETS_PATH (default ~/.minari/datasets), downloaded first if missing."""
    try:
        import minari
        from minari.storage import get_dataset_path
    except ImportError:
        raise DatasetError(f"{dataset_id} is a Minari dataset: pip install minari gymnasium-robotics") from None
    if not os.path.isdir(os.path.join(get_dataset_path(dataset_id), "data")):
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:  # no network, no huggingface_hub, unknown remote id
            raise DatasetError(f"Minari dataset {dataset_id} is not in {get_dataset_path()} and could not be downloaded "
                               f"({type(e).__name__}); run `minari download {dataset_id}` where there is network "
                               "access, and point MINARI_DATASETS_PATH at the folder that holds it") from None
    return minari.load_dataset(dataset_id), str(get_dataset_path(dataset_id))


def load_minari(dataset_id: str) -> "DataSource":
    """Every step of every episode (next observations from the episode's own T + 1 observations, so nothing is lost
    at timeouts; terminals = terminations), the dataset's evaluation env with observations flattened as the data,
    and its reference returns (None where the dataset stores none)."""
    dataset, path = open_minari(dataset_id)
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if not (isinstance(act_space, gym.spaces.Box) and (act_space.low == -1).all() and (act_space.high == 1).all()):
        raise DatasetError(f"{dataset_id}: the policies act in [-1, 1]; the dataset's action space is {act_space}")
    parts = {k: [] for k in ("observations", "actions", "next_observations", "rewards", "terminals")}
    for episode in dataset.iterate_episodes():
        obs, steps = flatten_observation(obs_space, episode.observations), len(episode.rewards)
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32).reshape(steps, -1))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32).reshape(steps))
        parts["terminals"].append(np.asarray(episode.terminations, dtype=bool).reshape(steps))
    if not parts["rewards"]:
        raise DatasetError(f"Minari dataset {dataset_id} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    flat_space = gym.spaces.Box(-np.inf, np.inf, data["observations"].shape[1:], np.float32)

    def make_env() -> gym.Env:
        env = dataset.recover_environment(eval_env=True)
        return gym.wrappers.TransformObservation(env, lambda o: flatten_observation(obs_space, o), flat_space)

    fix_gymnasium_robotics_joints()
    env = make_env()  # built once now, so that a missing package or a mismatch shows before training
    obs_shape, spec = env.reset(seed=0)[0].shape, env.spec
    env.close()
    if obs_shape != flat_space.shape:
        raise DatasetError(f"{dataset_id}: its evaluation env gives observations of shape {obs_shape}, the data {flat_space.shape}")
    meta = dataset.storage.metadata
    return DataSource(data, path, flat_space.shape[0], act_space.shape[0], make_env, spec.id,
                      meta.get("ref_min_score"), meta.get("ref_max_score"))


# ---------------------------------------------------------------------------------------------------------------
# Data sources and the replay buffer
# ---------------------------------------------------------------------------------------------------------------
class DataSource(NamedTuple):
    data: dict[str, np.ndarray]  # the keys of qlearning_dataset
    path: str
    obs_dim: int
    act_dim: int
    make_env: Optional[Callable[[], gym.Env]]  # one evaluation env, observations as in the data; None: not available
    eval_env_id: Optional[str]
    ref_min: Optional[float]  # the reference returns of the normalized score; None: raw returns only
    ref_max: Optional[float]


def load_source(env_id: str, dataset_path: Optional[str], reward_mode: str) -> DataSource:
    """A D4RL id (the D4RL file, or a local file in its layout) or a Minari id, rewards transformed."""
    if is_minari_id(env_id):
        if dataset_path is not None:
            raise UserError(f"--dataset-path is for D4RL-layout files; {env_id} is read from $MINARI_DATASETS_PATH")
        source = load_minari(env_id)
        source.data["rewards"] = transform_rewards(source.data["rewards"], reward_mode)
        return source
    d = domain_of(env_id)
    return DataSource(load_dataset(env_id, dataset_path, reward_mode), dataset_path or dataset_cache_path(env_id),
                      d.obs_dim, d.act_dim, d4rl_eval_env_factory(env_id), d.eval_env, d.ref_min, d.ref_max)


def normalized_scores(source: DataSource, episode_returns: np.ndarray) -> Optional[np.ndarray]:
    """100 (R - ref_min) / (ref_max - ref_min) (Eq. 18 for D4RL); None where the data have no reference returns."""
    if source.ref_min is None or source.ref_max is None:
        return None
    return 100.0 * (episode_returns - source.ref_min) / (source.ref_max - source.ref_min)


class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor


class OfflineBuffer:
    """The whole dataset on the training device; batches are drawn there, uniformly with replacement."""

    def __init__(self, data: dict[str, np.ndarray], device: torch.device):
        def to(x):
            return torch.as_tensor(x, dtype=torch.float32, device=device)

        self.obs, self.actions, self.next_obs = to(data["observations"]), to(data["actions"]), to(data["next_observations"])
        self.rewards, self.dones = to(data["rewards"]).unsqueeze(-1), to(data["terminals"]).unsqueeze(-1)
        self.size, self.device = len(self.obs), device

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(self.size, (batch_size,), device=self.device)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx])


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: networks
# ---------------------------------------------------------------------------------------------------------------
class SinusoidalPosEmb(nn.Module):
    """DQL's sinusoidal embedding of a (B, 1) time; frequencies from 1 down to 1e-4."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device, dtype=x.dtype) * (-np.log(10000.0) / (half - 1)))
        return torch.cat([torch.sin(x * freqs), torch.cos(x * freqs)], dim=-1)


def mlp(in_dim: int, out_dim: int, hidden_dim: int = 256, depth: int = 3) -> nn.Sequential:
    """DQL's MLP: `depth` hidden layers of `hidden_dim` units with Mish, then a linear output."""
    layers, dim = [], in_dim
    for _ in range(depth):
        layers += [nn.Linear(dim, hidden_dim), nn.Mish()]
        dim = hidden_dim
    return nn.Sequential(*layers, nn.Linear(dim, out_dim))


def time_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, 2 * dim), nn.Mish(), nn.Linear(2 * dim, dim))


class Actor(nn.Module):
    """Noise predictor eps_theta(a_i, i; s) of the DDPM policy: DQL's MLP on [a_i, emb(i), s], with the integer
    step i embedded in 16 dimensions. It carries its noise schedule as (non-trainable) buffers."""

    def __init__(self, obs_dim: int, act_dim: int, diffusion_steps: int = 5, time_dim: int = 16):
        super().__init__()
        self.act_dim, self.diffusion_steps = act_dim, diffusion_steps
        self.t_emb = time_mlp(time_dim)
        self.net = mlp(act_dim + time_dim + obs_dim, act_dim)
        for name, value in ddpm_schedule(vp_beta_schedule(diffusion_steps)).items():
            self.register_buffer(name, value.float(), persistent=False)

    def forward(self, a_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        # a t of shape (1, 1), the same step for every row (as in sampling), is embedded once
        return self.net(torch.cat([a_t, self.t_emb(t).expand(len(a_t), -1), obs], dim=-1))


class Critic(nn.Module):
    """Twin Q-networks, DQL's 3x256 Mish MLPs on [s, a]."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, actions], dim=-1)
        return self.q1(x), self.q2(x)

    def q_min(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.min(*self(obs, actions))


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: DDPM behaviour cloning (epsilon prediction) and the T-step sampler, as in DQL's official code
# ---------------------------------------------------------------------------------------------------------------
def vp_beta_schedule(steps: int) -> torch.Tensor:
    """DQL's discretised VP schedule: alpha_i = exp(-b_min/T - (b_max - b_min)(2i - 1)/(2T^2)), i = 1..T,
    b_min = 0.1, b_max = 10; beta_i = 1 - alpha_i. For T = 5: beta = 0.196, 0.459, 0.636, 0.755, 0.835."""
    i = torch.arange(1, steps + 1, dtype=torch.float64)
    return 1.0 - torch.exp(-0.1 / steps - 0.5 * (10.0 - 0.1) * (2 * i - 1) / steps**2)


def ddpm_schedule(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The coefficients of the forward process q(a_i | a) and of the posterior q(a_{i-1} | a_i, a) (Ho et al. 2020)."""
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return {
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
    }


def behavior_cloning_loss(actor: Actor, obs, actions) -> torch.Tensor:
    """L_DBC (Eq. 4), DDPM's simple loss: i ~ U{0..T-1}, a_i = sqrt(abar_i) a + sqrt(1 - abar_i) eps, regress eps_theta onto eps."""
    i = torch.randint(actor.diffusion_steps, (len(obs), 1), device=obs.device)
    eps = torch.randn_like(actions)
    a_i = actor.sqrt_alphas_cumprod[i] * actions + actor.sqrt_one_minus_alphas_cumprod[i] * eps
    return F.mse_loss(actor(a_i, i.float(), obs), eps)


def denoise_step(actor: Actor, a_i: torch.Tensor, i: int, obs: torch.Tensor) -> torch.Tensor:
    """One ancestral step a_i -> a_{i-1} (Eq. 5, with DQL's code: the prediction of a_0 clipped to the action
    range, then the posterior mean and the posterior noise, none at i = 0)."""
    eps_hat = actor(a_i, torch.full((1, 1), float(i), device=obs.device), obs)
    a_0 = (actor.sqrt_recip_alphas_cumprod[i] * a_i - actor.sqrt_recipm1_alphas_cumprod[i] * eps_hat).clamp(-1.0, 1.0)
    mean = actor.posterior_mean_coef1[i] * a_0 + actor.posterior_mean_coef2[i] * a_i
    if i == 0:
        return mean
    return mean + (0.5 * actor.posterior_log_variance_clipped[i]).exp() * torch.randn_like(a_i)


def sample_actions(actor: Actor, obs: torch.Tensor) -> torch.Tensor:
    """T network calls from a_T ~ N(0, I), differentiable end to end: the actor's Q term back-propagates
    through the whole chain (BPTT), which is the cost OFQL removes."""
    a = torch.randn(len(obs), actor.act_dim, device=obs.device)
    for i in reversed(range(actor.diffusion_steps)):
        a = denoise_step(actor, a, i, obs)
    return a.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: actor-critic update (Algorithm 1)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Agent:
    actor: Actor
    actor_ema: Actor  # pi_theta', generates the critic's next actions
    critic: Critic
    critic_target: Critic
    actor_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer


def make_agent(obs_dim: int, act_dim: int, args: Args, device: torch.device) -> Agent:
    actor, critic = Actor(obs_dim, act_dim, args.diffusion_steps).to(device), Critic(obs_dim, act_dim).to(device)
    actor_ema, critic_target = Actor(obs_dim, act_dim, args.diffusion_steps).to(device), Critic(obs_dim, act_dim).to(device)
    actor_ema.load_state_dict(actor.state_dict())
    critic_target.load_state_dict(critic.state_dict())
    actor_ema.requires_grad_(False)
    critic_target.requires_grad_(False)
    return Agent(
        actor, actor_ema, critic, critic_target,
        torch.optim.Adam(actor.parameters(), lr=args.actor_lr),
        torch.optim.Adam(critic.parameters(), lr=args.critic_lr),
    )


def critic_loss_fn(agent: Agent, batch: Batch, args: Args) -> tuple[torch.Tensor, dict]:
    """Clipped double-Q TD loss (Eq. 17) with next actions from the EMA policy; max-Q backup if asked."""
    k = args.num_backup_actions if args.max_q_backup else 1
    with torch.no_grad():
        next_obs = batch.next_obs.repeat_interleave(k, dim=0)
        next_q1, next_q2 = agent.critic_target(next_obs, sample_actions(agent.actor_ema, next_obs))
        next_q = torch.min(next_q1.view(-1, k).max(dim=1, keepdim=True).values, next_q2.view(-1, k).max(dim=1, keepdim=True).values)
        target_q = batch.rewards + args.gamma * (1.0 - batch.dones) * next_q
    q1, q2 = agent.critic(batch.obs, batch.actions)
    loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
    return loss, {"critic_loss": loss, "q_data": q1.mean(), "q_target": target_q.mean()}


def actor_loss_fn(agent: Agent, batch: Batch, args: Args) -> tuple[torch.Tensor, dict]:
    """L_DBC - eta * Q(s, a_pi) / E|Q| (Eq. 7); the normaliser is a constant. The paper writes E|Q| over dataset
    actions; the code, as DQL's and the OFQL author's, takes it at the policy's actions, from the other head of a
    coin flip between the twin heads (one head is maximised, the other normalises)."""
    bc_loss = behavior_cloning_loss(agent.actor, batch.obs, batch.actions)
    q1, q2 = agent.critic(batch.obs, sample_actions(agent.actor, batch.obs))
    flip = torch.rand((), device=q1.device) < 0.5
    q_loss = -torch.where(flip, q1.mean() / q2.abs().mean().detach(), q2.mean() / q1.abs().mean().detach())
    loss = bc_loss + args.eta * q_loss
    return loss, {"actor_loss": loss, "bc_loss": bc_loss, "q_loss": q_loss, "q_policy": q1.mean()}


def optimizer_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, max_norm: float) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(module.parameters(), max_norm if max_norm > 0 else float("inf"))
    optimizer.step()
    return grad_norm


@torch.no_grad()
def update_targets(agent: Agent, args: Args, step: torch.Tensor) -> None:
    """Polyak-average the target critic every step, and the EMA policy every `ema_every` steps from `ema_start` on
    (until then DQL keeps the initial network). The EMA rate is a tensor, 0 off schedule, so the step count never
    leaves the device."""
    for p_target, p in zip(agent.critic_target.parameters(), agent.critic.parameters()):
        p_target.lerp_(p, args.tau)
    rate = (1.0 - args.ema_decay) * ((step >= args.ema_start) & (step % args.ema_every == 0))
    for p_ema, p in zip(agent.actor_ema.parameters(), agent.actor.parameters()):
        p_ema.lerp_(p, rate)


def update(agent: Agent, batch: Batch, args: Args, step: torch.Tensor) -> dict[str, torch.Tensor]:
    """One DQL iteration: critic step, actor step, target networks; `step` (a device tensor) is this iteration's
    number. Returns detached metrics. Nothing here reads a value back to the host."""
    critic_loss, metrics = critic_loss_fn(agent, batch, args)
    metrics["critic_grad_norm"] = optimizer_step(agent.critic_optimizer, agent.critic, critic_loss, args.grad_norm)
    actor_loss, actor_metrics = actor_loss_fn(agent, batch, args)
    metrics["actor_grad_norm"] = optimizer_step(agent.actor_optimizer, agent.actor, actor_loss, args.grad_norm)
    update_targets(agent, args, step)
    return {k: v.detach() for k, v in {**metrics, **actor_metrics}.items()}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation environments: gymnasium's MuJoCo envs, and D4RL's AntMaze, Kitchen and Adroit envs rebuilt on
# Gymnasium-Robotics (pip install gymnasium-robotics; D4RL's own need mujoco_py). Sources: Farama-Foundation/D4RL.
# ---------------------------------------------------------------------------------------------------------------
def make_mujoco_env(gym_id: str) -> gym.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium flags the v4 envs as out of date; v4 is the closest to D4RL's v2
        return gym.make(gym_id)


# AntMaze (d4rl/locomotion). The evaluation mazes, row i / column j as in maze_env.py (BIG_MAZE_TEST,
# HARDEST_MAZE_TEST): '#' wall, 'r' start cell, 'g' the evaluation goal cell. Their walls equal those of the data
# mazes BIG_MAZE and HARDEST_MAZE; 'play' and 'diverse' only differ in the data (locomotion/__init__.py).
ANTMAZE_MAZES = {
    "medium": ("########",
               "#r.##..#",
               "#..#...#",
               "##...###",
               "#..#...#",
               "#.#..#.#",
               "#...#.g#",
               "########"),
    "large": ("############",
              "#r...#.....#",
              "#.##.#.#.#.#",
              "#......#...#",
              "#.####.###.#",
              "#..#.#.....#",
              "##.#.#.#.###",
              "#..#...#.g.#",
              "############"),
}
ANTMAZE_MAX_EPISODE_STEPS = 1000  # locomotion/__init__.py, the v2 medium and large ids
ANTMAZE_SCALING = 4.0  # maze_size_scaling, locomotion/__init__.py
ANTMAZE_GOAL_RADIUS = 0.5  # goal_reaching_env.py GoalReachingEnv.step: reward 1 and done when |xy - goal| <= 0.5


def antmaze_maze_name(env_id: str) -> str:
    """'antmaze-medium-play-v2' -> 'medium'."""
    parts = env_id.split("-")
    if parts[0] != "antmaze" or parts[-1] != "v2" or parts[1] not in ANTMAZE_MAZES:
        raise UserError(f"{env_id!r} is not a D4RL antmaze-*-v2 id")
    return parts[1]


def d4rl_ant_xml(path: str) -> None:
    """Write D4RL's ant model (locomotion/assets/ant.xml) to `path`, made from gymnasium's ant.xml, whose bodies,
    joints, geoms and contact parameters are the same. Two physical differences are undone: D4RL integrates with
    timestep 0.02 (gymnasium 0.01), and its motors have gear 1 and ctrlrange [-30, 30] (gymnasium gear 150 on
    [-1, 1])."""
    from gymnasium.envs.mujoco import ant_v5

    tree = ET.parse(os.path.join(os.path.dirname(ant_v5.__file__), "assets", "ant.xml"))
    tree.getroot().find("option").set("timestep", "0.02")
    for motor in tree.getroot().find("actuator"):
        motor.set("ctrlrange", "-30.0 30.0")
        motor.attrib.pop("gear", None)  # MuJoCo's default gear is 1
    tree.write(path)


class D4RLAntMazeEnv(gym.Env):
    """What D4RL's antmaze-*-v2 env gives the policy (ant.py AntMazeEnv with eval=True, expose_all_qpos=True,
    v2_resets=True, inside wrappers.py NormalizedBoxEnv), with Gymnasium-Robotics' AntMaze-v5 doing the physics.

    Frame: D4RL puts the origin at the centre of the start cell, cell (i, j) at (4j - 4, 4i - 4) for start cell (1, 1)
    (maze_env.py MazeEnv.__init__, _rowcol_to_xy); rows go towards +y. Gymnasium-Robotics centres the maze at the
    origin with row 0 at the top (+y) (maze_v4.py Maze.cell_rowcol_to_xy), the mirror image; it is given the rows in
    reverse order, which makes its world D4RL's shifted by `self.offset` (medium (-10, -10), large (-18, -12)).
    Observation (29,) float64: [qpos(15), qvel(14)] with qpos[:2] in D4RL's frame (ant.py AntEnv._get_obs with
    expose_all_qpos; goal_reaching_env.py _get_obs appends no goal when eval=True).
    """

    metadata = {"render_modes": []}

    def __init__(self, maze: str):
        from gymnasium_robotics.envs.maze.ant_maze_v5 import AntMazeEnv

        rows = ANTMAZE_MAZES[maze]
        cells = {"#": 1, ".": 0, "r": "r", "g": "g"}  # Gymnasium-Robotics' map codes
        fd, xml_path = tempfile.mkstemp(suffix=".xml")
        os.close(fd)
        try:
            d4rl_ant_xml(xml_path)
            self.maze_env = AntMazeEnv(maze_map=[[cells[c] for c in row] for row in reversed(rows)], xml_file=xml_path,
                                       continuing_task=False, reset_target=False, include_cfrc_ext_in_observation=False)
        finally:
            os.remove(xml_path)
        with contextlib.suppress(OSError):  # the maze model is loaded; Gymnasium-Robotics never deletes its file
            os.remove(self.maze_env.tmp_xml_file_path)
        self.ant = self.maze_env.ant_env  # gymnasium AntEnv-v5: frame_skip 5, so dt = 5 * 0.02 = 0.1 as in ant.py
        start = next((i, row.index("r")) for i, row in enumerate(rows) if "r" in row)
        goal_i, goal_j = next((i, row.index("g")) for i, row in enumerate(rows) if "g" in row)
        # world xy of the start cell's centre = D4RL's origin (maze_env.py _find_robot)
        self.offset = self.maze_env.maze.cell_rowcol_to_xy(np.array([len(rows) - 1 - start[0], start[1]]))
        self.goal_cell_xy = ANTMAZE_SCALING * np.array([goal_j - start[1], goal_i - start[0]], dtype=np.float64)
        self.max_episode_steps = ANTMAZE_MAX_EPISODE_STEPS
        self.goal = self.goal_cell_xy.copy()
        self.ctrl_low, self.ctrl_high = self.ant.model.actuator_ctrlrange.T.copy()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (29,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)  # wrappers.py NormalizedBoxEnv

    def sample_goal(self) -> np.ndarray:
        """maze_env.py MazeEnv.goal_sampler: the goal cell's centre + U(0, 0.25 s) + U(0, 0.5) * 0.25 s per axis
        (s = 4: an offset in [0, 1.5] m, never negative), floored at 0."""
        s = ANTMAZE_SCALING
        noise = self.np_random.uniform(0, 0.25 * s, 2) + self.np_random.uniform(0, 0.5, 2) * 0.25 * s
        return np.maximum(self.goal_cell_xy + noise, 0.0)

    def set_goal(self, goal_xy) -> None:
        self.goal = np.asarray(goal_xy, dtype=np.float64).copy()
        self.maze_env.goal = self.goal + self.offset  # Gymnasium-Robotics' goal: only drawn, never used here
        self.maze_env.update_target_site_pos()

    def set_state(self, qpos, qvel) -> None:
        """qpos (15,), qvel (14,) in D4RL's frame (like mujoco_env.MujocoEnv.set_state: qpos, qvel, then forward)."""
        qpos = np.array(qpos, dtype=np.float64)
        qpos[:2] += self.offset
        self.ant.set_state(qpos, np.array(qvel, dtype=np.float64))

    def get_state(self) -> tuple:
        qpos = self.ant.data.qpos.copy()
        qpos[:2] -= self.offset
        return qpos, self.ant.data.qvel.copy()

    def _obs(self) -> np.ndarray:
        return np.concatenate(self.get_state())

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """ant.py AntMazeEnv.reset with v2_resets: a new goal every episode, then AntEnv.reset_model: qpos0 (torso at
        the origin, z 0.75, joints 0) + U(-0.1, 0.1) on all 15 qpos, N(0, 0.1^2) on all 14 qvel."""
        super().reset(seed=seed)
        self.maze_env.reset(seed=seed)
        self.set_goal(self.sample_goal())
        qpos = self.ant.model.qpos0.copy()  # free joint: the torso's xml position (0, 0, 0.75), in D4RL's frame
        qpos += self.np_random.uniform(-0.1, 0.1, self.ant.model.nq)
        qvel = 0.1 * self.np_random.standard_normal(self.ant.model.nv)
        self.set_state(qpos, qvel)
        return self._obs(), {"goal": self.goal.copy()}

    def step(self, action):
        """wrappers.py NormalizedBoxEnv.step scales [-1, 1] to the motors' [-30, 30] and clips; ant.py AntEnv.step runs
        5 MuJoCo steps (its own reward and done are discarded by goal_reaching_env.py GoalReachingEnv.step, which pays
        1 within 0.5 m of the goal and, with eval=True, ends the episode there)."""
        action = np.asarray(action, dtype=np.float64)
        ctrl = np.clip(self.ctrl_low + (action + 1.0) * 0.5 * (self.ctrl_high - self.ctrl_low), self.ctrl_low,
                       self.ctrl_high)
        self.maze_env.step(ctrl)
        obs = self._obs()
        success = bool(np.linalg.norm(obs[:2] - self.goal) <= ANTMAZE_GOAL_RADIUS)
        return obs, float(success), success, False, {"success": success, "goal": self.goal.copy()}

    def close(self):
        self.maze_env.close()


def make_antmaze_env(env_id: str) -> gym.Env:
    """The evaluation env of a D4RL antmaze-*-v2 id: episodes end on reaching the goal (return 1) or after
    max_episode_steps (return 0), so the D4RL normalized score (ref min 0, max 1, infos.py) is 100 * success."""
    env = D4RLAntMazeEnv(antmaze_maze_name(env_id))
    return gym.wrappers.TimeLimit(env, max_episode_steps=env.max_episode_steps)


# Kitchen: d4rl/kitchen/kitchen_envs.py (KitchenBase) on d4rl/kitchen/adept_envs/franka/kitchen_multitask_v0.py
# (KitchenV0) and .../franka/robot/franka_robot.py.
KITCHEN_TASKS = {  # TASK_ELEMENTS of the class each id is registered with (d4rl/kitchen/__init__.py)
    "kitchen-partial-v0": ("microwave", "kettle", "light switch", "slide cabinet"),
    "kitchen-mixed-v0": ("microwave", "kettle", "bottom burner", "light switch"),
}
# task: (its entries of obs[:30] = the 30 qpos, its goal); OBS_ELEMENT_INDICES / OBS_ELEMENT_GOALS of kitchen_envs.py
KITCHEN_ELEMENTS = {
    "bottom burner": ([11, 12], [-0.88, -0.01]),
    "light switch": ([17, 18], [-0.69, -0.05]),
    "slide cabinet": ([19], [0.37]),
    "microwave": ([22], [-0.75]),
    "kettle": ([23, 24, 25, 26, 27, 28, 29], [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),
}
KITCHEN_THRESHOLD = 0.3  # BONUS_THRESH: a task is done when ||obs[indices] - goal|| < 0.3
KITCHEN_MAX_STEPS = 280  # max_episode_steps of every kitchen id
# KitchenV0.init_qpos: the reset state (qvel = 0, the model has no key_qvel); the same numbers as Gymnasium-Robotics'
# KitchenEnv. Order: 9 robot joints, 4 x (burner knob, burner), light switch, light, slide cabinet, 2 hinge doors,
# microwave, kettle (x, y, z, qw, qx, qy, qz).
KITCHEN_INIT_QPOS = np.array([
    1.48388023e-01, -1.76848573e00, 1.84390296e00, -2.47685760e00, 2.60252026e-01, 7.12533105e-01, 1.59515394e00,
    4.79267505e-02, 3.71350919e-02, -2.66279850e-04, -5.18043486e-05, 3.12877220e-05, -4.51199853e-05,
    -3.90842156e-06, -4.22629655e-05, 6.28065475e-05, 4.04984708e-05, 4.62730939e-04, -2.26906415e-04,
    -4.65501369e-04, -6.44129196e-03, -1.77048263e-03, 1.08009684e-03, -2.69397440e-01, 3.50383255e-01,
    1.61944683e00, 1.00618764e00, 4.06395120e-03, -6.62095997e-03, -2.68278933e-04])
# Observation noise: uniform(-1, 1) * robot_noise_ratio (0.1 in KitchenV0) * pos_noise_amp of qpos0..qpos29 in
# franka_config.xml; franka_robot.py adds it to the robot AND the object positions.
KITCHEN_QPOS_NOISE = 0.1 * np.array([0.1] * 9 + [0.005] * 2 + [0.0005] * 6 + [0.005] * 3 + [0.1] * 3 + [0.005] * 3
                                    + [0.1] * 3 + [0.005])
KITCHEN_ACTION_SCALE = 2.0  # KitchenV0.act_amp (act_mid = 0): the action in [-1, 1] is a joint velocity in [-2, 2]
KITCHEN_MODEL = "../assets/kitchen_franka/kitchen_assets/kitchen_env_model.xml"  # FrankaKitchen-v1's model


def kitchen_goal(tasks) -> np.ndarray:
    """obs[30:60]: KitchenBase._get_task_goal, a 30-vector with each task's goal at its indices, zeros elsewhere."""
    goal = np.zeros(30)
    for task in tasks:
        indices, value = KITCHEN_ELEMENTS[task]
        goal[indices] = value
    return goal


def kitchen_completed(obs: np.ndarray, tasks) -> list[str]:
    """The tasks whose entries of the (noisy) observation are within KITCHEN_THRESHOLD of their goal."""
    return [task for task in tasks
            if np.linalg.norm(obs[KITCHEN_ELEMENTS[task][0]] - KITCHEN_ELEMENTS[task][1]) < KITCHEN_THRESHOLD]


class D4RLKitchenEnv(gym.Env):
    """D4RL's kitchen env on Gymnasium-Robotics' Franka kitchen model (FrankaKitchen-v1's xml and FrankaRobot).

    Observation (60): the 30 qpos with D4RL's observation noise (9 robot joints, then the 21 object qpos), then the
    30-vector goal (kitchen_goal). No velocities. Action (9): joint velocities in [-1, 1], scaled by 2; D4RL's
    Robot_VelAct turns them into position targets from the last OBSERVED (noisy) robot joints, clipped to the joint
    bounds of franka_config.xml, then simulates 40 steps of 2 ms. Reward: the number of tasks completed at this step,
    judged on the noisy observation; a completed task is removed; terminated once all tasks are done.
    FrankaKitchen-v1 itself is not used: it differs from D4RL (dict observation with velocities, noise 10x smaller and
    misaligned, reward on the true state) and, with mujoco 4.0.0, its constructor fails an assertion.
    """
    metadata = {"render_modes": []}

    def __init__(self, tasks, obs_noise: bool = True):
        from gymnasium_robotics.envs.franka_kitchen.franka_env import FrankaRobot

        self.robot = FrankaRobot(model_path=KITCHEN_MODEL)  # loads the model and the bounds of franka_config.xml
        self.model, self.data = self.robot.model, self.robot.data
        self.tasks = tuple(tasks)
        self.goal = kitchen_goal(self.tasks)
        self.noise = KITCHEN_QPOS_NOISE * float(obs_noise)
        self.remaining = set(self.tasks)
        self._robot_qpos_obs = self.data.qpos[:9].copy()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (60,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (9,), np.float32)

    def _observe(self) -> np.ndarray:
        qpos = self.data.qpos[:30] + self.noise * self.np_random.uniform(-1.0, 1.0, 30)
        self._robot_qpos_obs = qpos[:9].copy()  # franka_robot.py: the controller integrates from the last observation
        return np.concatenate([qpos, self.goal])

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, robot_qpos_obs=None) -> None:
        """Set the simulator state; `robot_qpos_obs`: the robot joints the controller starts from (D4RL: the last
        observation's obs[:9]; default: the true joints)."""
        self.data.qpos[:], self.data.qvel[:] = qpos, qvel
        mujoco.mj_forward(self.model, self.data)
        self._robot_qpos_obs = np.array(qpos[:9] if robot_qpos_obs is None else robot_qpos_obs, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.set_state(KITCHEN_INIT_QPOS, np.zeros(self.model.nv))  # KitchenV0.reset_model: deterministic state
        self.remaining = set(self.tasks)
        return self._observe(), {"tasks_to_complete": sorted(self.remaining)}

    def step(self, action):
        velocity = KITCHEN_ACTION_SCALE * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        velocity = np.clip(velocity, self.robot.robot_vel_bound[:9, 0], self.robot.robot_vel_bound[:9, 1])
        target = self._robot_qpos_obs + velocity * self.robot.dt  # dt = 40 x 0.002 s
        target = np.clip(target, self.robot.robot_pos_bound[:9, 0], self.robot.robot_pos_bound[:9, 1])
        self.robot.do_simulation(target, self.robot.frame_skip)
        obs = self._observe()
        completed = kitchen_completed(obs, self.remaining)  # REMOVE_TASKS_WHEN_COMPLETE = True
        self.remaining -= set(completed)
        info = {"tasks_to_complete": sorted(self.remaining), "step_task_completions": sorted(completed)}
        return obs, float(len(completed)), not self.remaining, False, info  # TERMINATE_ON_TASK_COMPLETE = True


def make_kitchen_env(env_id: str) -> gym.Env:
    """D4RL's evaluation env of kitchen-{partial,mixed}-v0: 280 steps, ends early once all 4 tasks are done."""
    if env_id not in KITCHEN_TASKS:
        raise UserError(f"unknown kitchen id {env_id!r}; supported: {', '.join(KITCHEN_TASKS)}")
    return gym.wrappers.TimeLimit(D4RLKitchenEnv(KITCHEN_TASKS[env_id]), KITCHEN_MAX_STEPS)


# Pen: d4rl/hand_manipulation_suite/pen_v0.py (PenEnvV0), registered in .../__init__.py.
PEN_IDS = ("pen-human-v1", "pen-cloned-v1")
PEN_MAX_STEPS = 100  # MAX_STEPS['pen'] of the v1 ids (Gymnasium-Robotics registers 200)
PEN_DROP_HEIGHT = 0.075  # PenEnvV0.step: -5 reward and done=True when the pen's z is below 0.075


class D4RLPenTermination(gym.Wrapper):
    """AdroitHandPen-v1 already has D4RL's observation, dense reward, actions, frame skip and reset; it never
    terminates. D4RL's PenEnvV0 ends the episode when the pen is dropped (obs[26] = the pen's z)."""

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        return obs, reward, bool(obs[26] < PEN_DROP_HEIGHT), truncated, info


def make_pen_env(env_id: str) -> gym.Env:
    """D4RL's evaluation env of pen-{human,cloned}-v1: 100 steps, ends early when the pen is dropped."""
    if env_id not in PEN_IDS:
        raise UserError(f"unknown pen id {env_id!r}; supported: {', '.join(PEN_IDS)}")
    import gymnasium_robotics  # noqa: F401  (registers AdroitHandPen-v1)

    return D4RLPenTermination(gym.make("AdroitHandPen-v1", max_episode_steps=PEN_MAX_STEPS, reward_type="dense"))


def fix_gymnasium_robotics_joints() -> None:
    """gymnasium-robotics 1.4.2 reads joints with `assert model.jnt_type[j] in (mjtJoint.mjJNT_HINGE, ...)`; under
    mujoco 4.0 a numpy integer never equals a mjtJoint member that way, and FrankaKitchen-v1 (the env of Minari's
    Kitchen datasets) fails to build. Where that is so, swap its two joint readers for ones that compare plain ints."""
    try:
        from gymnasium_robotics.utils import mujoco_utils
    except ImportError:
        return
    if np.int32(int(mujoco.mjtJoint.mjJNT_HINGE)) in (mujoco.mjtJoint.mjJNT_HINGE,):
        return
    widths = {"qpos": {int(mujoco.mjtJoint.mjJNT_FREE): 7, int(mujoco.mjtJoint.mjJNT_BALL): 4},
              "qvel": {int(mujoco.mjtJoint.mjJNT_FREE): 6, int(mujoco.mjtJoint.mjJNT_BALL): 4}}

    def reader(field: str, address: str):
        def read(model, data, name):
            joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if joint == -1:
                raise ValueError(f"Joint with name '{name}' is not part of the model!")
            start = int(getattr(model, address)[joint])
            return getattr(data, field)[start: start + widths[field].get(int(model.jnt_type[joint]), 1)].copy()
        return read

    mujoco_utils.get_joint_qpos = reader("qpos", "jnt_qposadr")
    mujoco_utils.get_joint_qvel = reader("qvel", "jnt_dofadr")


def d4rl_eval_env_factory(env_id: str) -> Optional[Callable[[], gym.Env]]:
    """A zero-argument factory of the evaluation env of a D4RL id, giving what D4RL's env gave the policy."""
    domain, makers = env_id.split("-")[0], {"antmaze": make_antmaze_env, "kitchen": make_kitchen_env, "pen": make_pen_env}
    if domain in ("halfcheetah", "hopper", "walker2d"):
        return functools.partial(make_mujoco_env, domain_of(env_id).eval_env)
    try:
        import gymnasium_robotics  # noqa: F401
    except ImportError:
        return None
    return functools.partial(makers[domain], env_id) if domain in makers else None


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def select_action(agent: Agent, obs: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """DQL's rule: sample `num_candidates` actions per state and pick one with probability softmax(Q_min)
    of the target critic; with 1 candidate this is the policy's own sample."""
    obs_rep = obs.repeat_interleave(num_candidates, dim=0)
    actions = sample_actions(agent.actor, obs_rep).view(len(obs), num_candidates, -1)
    if num_candidates == 1:
        return actions[:, 0]
    q = agent.critic_target.q_min(obs_rep, actions.flatten(0, 1)).view(len(obs), num_candidates)
    # softmax(q) sampled as argmax(q - log E), E ~ Exp(1): torch.multinomial's own draw for one sample (the same
    # numbers), without its check of the probabilities on the host, which a CUDA graph cannot hold
    idx = (q - torch.empty_like(q).exponential_().log()).argmax(dim=-1)
    return actions[torch.arange(len(obs), device=obs.device), idx]


class ActionSelector:
    """select_action on batches of `batch_size` states. With `use_graph` (CUDA and --cuda-graph) it is captured once
    as a CUDA graph and each call is one replay: the observations are copied in, the actions come out in a tensor
    that the next call overwrites. The graph reads the networks in place, so it stays valid while they train."""

    def __init__(self, agent: Agent, num_candidates: int, batch_size: int, obs_dim: int, device: torch.device,
                 use_graph: bool):
        self.agent, self.num_candidates, self.graph = agent, num_candidates, None
        if use_graph:
            self.obs = torch.zeros(batch_size, obs_dim, device=device)
            stream = torch.cuda.Stream(device)  # warm-up on a side stream, then capture
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.random.fork_rng(devices=[device]):  # training's noise stays as it was
                select_action(agent, self.obs, num_candidates)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.actions = select_action(agent, self.obs, num_candidates)
            except RuntimeError as e:
                raise UserError(f"capturing the policy as a CUDA graph failed ({e}); run with --no-cuda-graph") from e

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return select_action(self.agent, obs, self.num_candidates)
        self.obs.copy_(obs)
        self.graph.replay()
        return self.actions


def make_eval_envs(source: DataSource, num_envs: int) -> Optional[gym.vector.VectorEnv]:
    return None if source.make_env is None else gym.vector.SyncVectorEnv([source.make_env] * num_envs)


def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], envs: gym.vector.VectorEnv, source: DataSource, args: Args,
             device: torch.device) -> dict:
    """One episode per sub-environment, all in parallel, with `policy` (an ActionSelector). Returns the returns, the
    normalized scores (None without reference returns) and the decision rate (action batches per second, policy
    time only)."""
    obs, _ = envs.reset(seed=args.seed + 100)
    returns, finished = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=bool)
    policy_time, decisions = 0.0, 0
    while not finished.all():
        start = time.perf_counter()
        actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        policy_time, decisions = policy_time + time.perf_counter() - start, decisions + 1
        obs, rewards, terminations, truncations, _ = envs.step(actions)
        returns += np.where(finished, 0.0, rewards)
        finished |= terminations | truncations
    scores = normalized_scores(source, returns)
    return {"score": None if scores is None else float(scores.mean()), "score_std": None if scores is None else float(scores.std()),
            "return": float(returns.mean()), "return_std": float(returns.std()), "decision_rate": decisions / policy_time}


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------
def save_checkpoint(path: str, agent: Agent, step: int, evals: list, elapsed: float) -> None:
    state = {name: getattr(agent, name).state_dict() for name in Agent.__dataclass_fields__}
    state.update(step=step, evals=evals, elapsed=elapsed, rng={
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    })
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, agent: Agent) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        for name in Agent.__dataclass_fields__:
            getattr(agent, name).load_state_dict(state[name])
    except (OSError, RuntimeError, KeyError) as e:
        raise UserError(f"cannot resume from {path}: {e}") from None
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


# ---------------------------------------------------------------------------------------------------------------
# Training step: eager, or captured once as a CUDA graph and replayed (the fast path)
# ---------------------------------------------------------------------------------------------------------------
def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Adam's capturable mode keeps its step counts on the parameters' device and never reads them back to the host,
    as capture requires. Set again after a resume: load_state_dict restores the mode of the run that saved it."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for p in group["params"]:
            if "step" in optimizer.state.get(p, {}):
                optimizer.state[p]["step"] = optimizer.state[p]["step"].to(p.device if capturable else "cpu")


class TrainStep:
    """Each call runs the next iteration of Algorithm 1 (update() on a fresh batch) and returns its metrics. The step
    count lives on the device, and neither sampling nor update() reads anything back to the host.

    Fast path (CUDA and --cuda-graph): the first `warmup` calls run eagerly on a side stream (they create Adam's
    state and CUDA's lazy handles); the next one captures a whole iteration (batch indices drawn on the GPU, both
    losses with the JVP, the backward passes, gradient clipping, both capturable Adam steps, the target networks) as
    one CUDA graph, and from then on each call is one replay of it instead of 500 to 850 kernel launches. A
    replay recomputes the same kernels on the same tensors in place, and PyTorch advances the random-number offset
    at each replay, so every replay is a new iteration with fresh batches and noise."""

    warmup = 3

    def __init__(self, agent: Agent, buffer: OfflineBuffer, args: Args, device: torch.device, last_step: int):
        self.agent, self.buffer, self.args = agent, buffer, args
        self.step = torch.tensor(last_step, device=device)  # the number of the last iteration run
        self.use_graph = args.cuda_graph and device.type == "cuda"
        for optimizer in (agent.actor_optimizer, agent.critic_optimizer):
            set_capturable(optimizer, self.use_graph)
        self.stream = torch.cuda.Stream(device) if self.use_graph else None
        self.eager_calls_left, self.graph, self.metrics = self.warmup, None, None

    def iteration(self) -> dict[str, torch.Tensor]:
        self.step += 1
        return update(self.agent, self.buffer.sample(self.args.batch_size), self.args, self.step)

    def __call__(self) -> dict[str, torch.Tensor]:
        if not self.use_graph:
            return self.iteration()
        if self.eager_calls_left > 0:  # warm-up iterations on a side stream (PyTorch's notes on CUDA graphs)
            self.eager_calls_left -= 1
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "This instance was constructed with capturable=True")  # until capture
                metrics = self.iteration()
            torch.cuda.current_stream().wait_stream(self.stream)
            return metrics
        if self.graph is None:  # capture only records the kernels: the replay below runs this iteration
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.metrics = self.iteration()
            except RuntimeError as e:
                raise UserError(f"capturing the training step as a CUDA graph failed ({e}); "
                                "run with --no-cuda-graph") from e
        self.graph.replay()
        return self.metrics


# ---------------------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------------------
def train(args: Args) -> str:
    """Train, evaluate and log one run; returns the path of its summary.json."""
    source = load_source(args.env_id, args.dataset_path, args.reward_mode)
    if args.resume:
        run_dir = os.path.dirname(args.resume) or "."
    else:
        run_dir = os.path.join("runs", f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}")
    os.makedirs(run_dir, exist_ok=True)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    buffer = OfflineBuffer(source.data, device)
    agent = make_agent(source.obs_dim, source.act_dim, args, device)
    envs = make_eval_envs(source, args.eval_episodes)
    if envs is None:
        print(f"NOTE: no evaluation environment for {args.env_id}: this run trains and checkpoints, and reports no score.")
    elif source.ref_min is None:
        print(f"NOTE: {args.env_id} has no reference returns: evaluations report raw returns and no normalized score.")

    start_step, evals, elapsed = 1, [], 0.0
    if args.resume:
        state = load_checkpoint(args.resume, agent)
        start_step, evals, elapsed = state["step"] + 1, state["evals"], state["elapsed"]
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(metrics_path):  # drop what the original run logged after its checkpoint
            with open(metrics_path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= state["step"]]
            with open(metrics_path, "w") as f:
                f.writelines(kept)
    train_step = TrainStep(agent, buffer, args, device, last_step=start_step - 1)  # after the resume (Adam's mode)
    if envs is not None:
        policy = ActionSelector(agent, args.num_candidates, args.eval_episodes, source.obs_dim, device,
                                train_step.use_graph)
        # with candidates, the policy's own sample is evaluated too: a low score with both is a poor policy, a low
        # score with candidates only is a critic that cannot rank them yet (early in a run)
        own_policy = None if args.num_candidates == 1 else ActionSelector(
            agent, 1, args.eval_episodes, source.obs_dim, device, train_step.use_graph)
    print(f"training on {device}: " + ("one CUDA graph per iteration and one for the policy (--no-cuda-graph: eager)"
                                       if train_step.use_graph else "eager"))
    config = {**vars(args), "device": str(device), "training_step": "cuda_graph" if train_step.use_graph else "eager",
              "transitions": buffer.size, "torch": torch.__version__}
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=config,
                   name=os.path.basename(run_dir), id=os.path.basename(run_dir), save_code=True, resume="allow")
    metrics_file = open(os.path.join(run_dir, "metrics.jsonl"), "a")

    def log(record: dict) -> None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        if args.track:
            wandb.log(record, step=record["step"])

    metric_sum, window_steps, first_bad = 0.0, 0, -1
    session_start, train_time, window_start = time.time(), 0.0, time.perf_counter()
    for step in tqdm(range(start_step, args.total_steps + 1), initial=start_step - 1, total=args.total_steps,
                     desc=args.env_id, unit="step", mininterval=2.0):
        metrics = train_step()
        values = torch.stack(list(metrics.values()))
        metric_sum, window_steps = metric_sum + values, window_steps + 1
        # the first step at which each metric became non-finite, kept on the device: no sync per step
        first_bad = torch.where(~torch.isfinite(values) & (first_bad < 0), step, first_bad)
        eval_step = step % args.eval_every == 0 or step == args.total_steps
        if step % args.log_every != 0 and not eval_step:
            continue

        means = (metric_sum / window_steps).tolist()  # the only host sync of a logging window
        window_time = time.perf_counter() - window_start
        train_time += window_time
        if (first_bad >= 0).any():
            bad_step, index = min((s, i) for i, s in enumerate(first_bad.tolist()) if s >= 0)
            raise UserError(f"non-finite {list(metrics)[index]} at step {bad_step}; stopping (try a lower --eta or "
                            "learning rate, or a --grad-norm)")
        record = {"step": step, **dict(zip(metrics, means)), "steps_per_sec": window_steps / window_time}
        if envs is not None and eval_step:
            evals.append({"step": step, **evaluate(policy, envs, source, args, device)})
            if own_policy is not None:
                own = evaluate(own_policy, envs, source, args, device)
                evals[-1].update({f"policy_{k}": own[k] for k in ("score", "score_std", "return", "return_std")})
            record.update({f"eval/{k}": v for k, v in evals[-1].items() if k != "step" and v is not None})
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        log(record)
        if args.save_model and eval_step:
            save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), agent, step, evals, elapsed + time.time() - session_start)
        metric_sum, window_steps, window_start = 0.0, 0, time.perf_counter()

    wall_clock = elapsed + time.time() - session_start
    best = max(evals, key=lambda e: e["return"]) if evals else None  # the score increases with the return
    summary = {
        "algorithm": os.path.basename(__file__)[: -len(".py")], "env_id": args.env_id,
        "source": "minari" if is_minari_id(args.env_id) else "d4rl", "dataset": source.path,
        "eval_env": source.eval_env_id, "seed": args.seed, "steps": args.total_steps, "wall_clock_sec": wall_clock,
        "train_steps_per_sec": (args.total_steps - start_step + 1) / train_time if train_time else None,
        "num_candidates": args.num_candidates, "eval_episodes": args.eval_episodes,
        "final_score": evals[-1]["score"] if evals else None, "final_score_std": evals[-1]["score_std"] if evals else None,
        "best_score": best["score"] if best else None, "best_score_std": best["score_std"] if best else None,
        "best_step": best["step"] if best else None, "final_return": evals[-1]["return"] if evals else None,
        "best_return": best["return"] if best else None,
        "final_policy_score": evals[-1].get("policy_score") if evals else None, "decision_rate": evals[-1]["decision_rate"] if evals else None, "evaluations": evals,
    }
    summary_path = os.path.join(run_dir, "summary.json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    metrics_file.close()
    if envs is not None:
        envs.close()
    if args.track:
        wandb.summary.update({k: v for k, v in summary.items() if k != "evaluations"})
        wandb.finish()
    return summary_path


if __name__ == "__main__":
    try:
        print(f"summary: {train(parse_args())}")
    except UserError as e:
        print(f"{os.path.basename(__file__)}: error: {e}", file=sys.stderr)
        sys.exit(2)
