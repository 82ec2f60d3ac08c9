"""Diffusion Q-Learning (DQL) (Wang, Hunt & Zhou, ICLR 2023): a T = 5 step DDPM policy trained with behaviour
cloning plus a Q term back-propagated through the whole denoising chain. The baseline of OFQL (arXiv 2508.13904);
this file is ofql.py with the policy swapped (`diff dql.py ofql.py`). Equation numbers (Eq. N) refer to the
OFQL paper, which restates DQL in its Section 3. Docs and results: README.md.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import gymnasium as gym
import h5py
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
    """the D4RL dataset id; it selects the data, the evaluation environment and the presets below"""
    dataset_path: Optional[str] = None
    """a local hdf5 file in the D4RL layout to use instead of the (downloaded) D4RL file"""
    seed: int = 0
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
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
    """candidate actions per state at evaluation, one picked by softmax(Q) as in DQL; 1 = the policy's own sample (preset)"""
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
    if env_id not in PRESETS:
        raise UserError(f"unknown --env-id {env_id!r}; supported: {', '.join(PRESETS)}")
    defaults = dataclasses.replace(Args(), env_id=env_id, **dataclasses.asdict(PRESETS[env_id]))
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
    gym_id: Optional[str]  # gymnasium evaluation environment; None: not available yet


DOMAINS = {
    "halfcheetah": Domain(-280.178953, 12135.0, 17, 6, "HalfCheetah-v4"),
    "hopper": Domain(-20.272305, 3234.3, 11, 3, "Hopper-v4"),
    "walker2d": Domain(1.629008, 4592.3, 17, 6, "Walker2d-v4"),
    "antmaze": Domain(0.0, 1.0, 29, 8, None),
    "kitchen": Domain(0.0, 4.0, 60, 9, None),
    "pen": Domain(96.262799, 3076.8331017826877, 45, 24, None),
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
        return self.net(torch.cat([a_t, self.t_emb(t), obs], dim=-1))


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
    eps_hat = actor(a_i, torch.full((len(obs), 1), float(i), device=obs.device), obs)
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
    """L_DBC - eta * Q(s, a_pi) / E|Q| (Eq. 7); the normaliser is a constant. As in DQL, a coin flip
    picks which head is maximised and which one normalises."""
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
def update_targets(agent: Agent, args: Args, step: int) -> None:
    for p_target, p in zip(agent.critic_target.parameters(), agent.critic.parameters()):
        p_target.lerp_(p, args.tau)
    if step % args.ema_every == 0 and step >= args.ema_start:  # until then DQL keeps the initial network
        for p_ema, p in zip(agent.actor_ema.parameters(), agent.actor.parameters()):
            p_ema.lerp_(p, 1.0 - args.ema_decay)


def update(agent: Agent, batch: Batch, args: Args, step: int) -> dict[str, torch.Tensor]:
    """One DQL iteration: critic step, actor step, target networks. Returns detached metrics."""
    critic_loss, metrics = critic_loss_fn(agent, batch, args)
    metrics["critic_grad_norm"] = optimizer_step(agent.critic_optimizer, agent.critic, critic_loss, args.grad_norm)
    actor_loss, actor_metrics = actor_loss_fn(agent, batch, args)
    metrics["actor_grad_norm"] = optimizer_step(agent.actor_optimizer, agent.actor, actor_loss, args.grad_norm)
    update_targets(agent, args, step)
    return {k: v.detach() for k, v in {**metrics, **actor_metrics}.items()}


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
    idx = torch.multinomial(F.softmax(q, dim=-1), 1).squeeze(-1)
    return actions[torch.arange(len(obs), device=obs.device), idx]


def make_eval_envs(env_id: str, num_envs: int) -> Optional[gym.vector.VectorEnv]:
    gym_id = domain_of(env_id).gym_id
    if gym_id is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium flags the v4 envs as out of date; v4 is the closest to D4RL's v2
        return gym.make_vec(gym_id, num_envs=num_envs, vectorization_mode="sync")


def evaluate(agent: Agent, envs: gym.vector.VectorEnv, args: Args, device: torch.device) -> dict:
    """One episode per sub-environment, all in parallel. Returns the normalized scores and the policy's
    decision rate (action batches per second, policy time only)."""
    obs, _ = envs.reset(seed=args.seed + 100)
    returns, finished = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=bool)
    policy_time, decisions = 0.0, 0
    while not finished.all():
        start = time.perf_counter()
        actions = select_action(agent, torch.as_tensor(obs, dtype=torch.float32, device=device), args.num_candidates)
        actions = actions.cpu().numpy()
        policy_time, decisions = policy_time + time.perf_counter() - start, decisions + 1
        obs, rewards, terminations, truncations, _ = envs.step(actions)
        returns += np.where(finished, 0.0, rewards)
        finished |= terminations | truncations
    scores = normalized_score(args.env_id, returns)
    return {"score": float(scores.mean()), "score_std": float(scores.std()), "return": float(returns.mean()),
            "decision_rate": decisions / policy_time}


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
# Training loop
# ---------------------------------------------------------------------------------------------------------------
def train(args: Args) -> str:
    """Train, evaluate and log one run; returns the path of its summary.json."""
    domain = domain_of(args.env_id)
    data = load_dataset(args.env_id, args.dataset_path, args.reward_mode)
    if args.resume:
        run_dir = os.path.dirname(args.resume) or "."
    else:
        run_dir = os.path.join("runs", f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    os.makedirs(run_dir, exist_ok=True)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    buffer = OfflineBuffer(data, device)
    agent = make_agent(domain.obs_dim, domain.act_dim, args, device)
    envs = make_eval_envs(args.env_id, args.eval_episodes)
    if envs is None:
        print(f"NOTE: no evaluation environment for {args.env_id} yet (AntMaze, Kitchen and Adroit evaluation is a "
              "separate issue): this run trains and checkpoints, and reports no score.")

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
    config = {**vars(args), "device": str(device), "transitions": buffer.size, "torch": torch.__version__}
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
        metrics = update(agent, buffer.sample(args.batch_size), args, step)
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
            evals.append({"step": step, **evaluate(agent, envs, args, device)})
            record.update({f"eval/{k}": v for k, v in evals[-1].items() if k != "step"})
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        log(record)
        if args.save_model and eval_step:
            save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), agent, step, evals, elapsed + time.time() - session_start)
        metric_sum, window_steps, window_start = 0.0, 0, time.perf_counter()

    wall_clock = elapsed + time.time() - session_start
    best = max(evals, key=lambda e: e["score"]) if evals else None
    summary = {
        "algorithm": os.path.basename(__file__)[: -len(".py")], "env_id": args.env_id, "dataset": args.dataset_path or dataset_cache_path(args.env_id),
        "eval_env": domain.gym_id, "seed": args.seed, "steps": args.total_steps, "wall_clock_sec": wall_clock,
        "train_steps_per_sec": (args.total_steps - start_step + 1) / train_time if train_time else None,
        "num_candidates": args.num_candidates, "eval_episodes": args.eval_episodes,
        "final_score": evals[-1]["score"] if evals else None, "final_score_std": evals[-1]["score_std"] if evals else None,
        "best_score": best["score"] if best else None, "best_score_std": best["score_std"] if best else None,
        "best_step": best["step"] if best else None,
        "decision_rate": evals[-1]["decision_rate"] if evals else None, "evaluations": evals,
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
