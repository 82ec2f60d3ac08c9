"""Diffusion Q-Learning (DQL) (Wang, Hunt & Zhou, ICLR 2023): a T = 5 step DDPM policy trained with behaviour cloning
plus a Q term back-propagated through the whole denoising chain; the baseline of OFQL (arXiv 2508.13904), as ofql.py
with the policy swapped (`diff dql.py ofql.py`). Eq. N: the OFQL paper, which restates DQL (Section 3). See README.md.
"""

import collections
import dataclasses
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

import bookkeeping
import offline_data
from offline_data import UserError  # reported as one line, exit code 2


# ---------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    env_id: str = "halfcheetah-medium-v2"
    """a D4RL, Minari or OGBench single-task id, or with --dataset-path a gymnasium id: data, eval env, presets"""
    dataset_path: str | None = None
    """a local copy, or your own data: a D4RL-layout hdf5; OGBench: its folder or train .npz (-val.npz beside)"""
    seed: int = 0
    """seed of the experiment"""
    torch_deterministic: bool = True
    """CleanRL's flag: torch.backends.cudnn.deterministic (these MLPs call no cuDNN kernel: no effect here)"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    cuda_graph: bool = True
    """if toggled, on CUDA each training iteration and action choice is one replay of a CUDA graph; else eager"""
    compile: bool = False
    """if toggled, torch.compile the training iteration (fused kernels; the first window's time includes compiling)"""
    matmul_precision: Literal["highest", "high"] = "highest"
    """float32 matmuls: highest (float32) or high (TF32 on NVIDIA GPUs, JAX's default; no change seen on a CPU)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "ofql"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """if toggled, a checkpoint is written to runs/<run_name>/checkpoint.pt at every evaluation and on SIGINT/SIGTERM"""
    resume: str | None = None
    """a checkpoint.pt to continue from; flags left out keep the run's values (may change: bookkeeping.RESUMABLE)"""
    capture_video: bool = False
    """if toggled, the first episode of each evaluation is recorded to runs/<run_name>/videos (and sent with --track)"""

    # Algorithm specific arguments (the defaults shown by --help are the presets of --env-id)
    total_steps: int = 2_000_000
    """the number of gradient steps on the dataset, the offline phase"""
    online_steps: int = 0
    """then this many env steps, one update after each (FQL's offline-to-online protocol)"""
    online_candidates: int = 1
    """candidate actions per state when acting online: 1 is the policy's own sample (FQL's rule); more, softmax(Q)"""
    balanced_sampling: bool = False
    """if toggled, online batches are half dataset, half online transitions (FQL's flag); else uniform over both"""
    batch_size: int = 256
    """the transitions drawn from the data for each gradient step (each member's, in a sweep)"""
    actor_lr: float = 3e-4
    """the learning rate of the policy optimizer"""
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
    """the EMA policy starts moving after this many steps; before, it is the initial network (as in DQL's code)"""
    eta: float = 1.0
    """the normalised Q term's weight in the actor loss (Eq. 7; DQL's eta); not published for OGBench: our rule"""
    diffusion_steps: int = 5
    """T, the number of DDPM denoising steps (DQL uses 5 with its VP noise schedule)"""
    max_q_backup: bool = False
    """if toggled, the critic target takes the max over --num-backup-actions next actions per head"""
    num_backup_actions: int = 10
    """the number of next actions of the max-Q backup"""
    reward_mode: Literal["raw", "cql_antmaze", "iql_antmaze", "standardize"] = "raw"
    """reward transform: raw, (r - 0.5) * 4 (CQL's AntMaze rule), r - 1 (IQL's), or (r - mean) / std"""
    grad_norm: float = 9.0
    """the max gradient norm of the actor and of the critic; 0 disables clipping"""

    # Evaluation and logging
    eval_every: int = 50_000
    """evaluate (and with --save-model checkpoint) every this many gradient steps, and at the last step of each phase"""
    eval_episodes: int = 10
    """the number of evaluation episodes, run in parallel in a vector env"""
    num_candidates: int = 50
    """candidates per state at evaluation, one picked by softmax(Q) (DQL); above 1, the policy's own is scored too"""
    log_every: int = 1000
    """print and record the mean training metrics every this many steps"""


SWEEP_WEIGHT = "eta"  # the flag whose grid of values sweep.py trains in one process (python sweep.py --help)

# DQL's official per-dataset table (main.py): eta, lr, max-Q backup, reward handling, grad_norm, epochs x 1000 steps,
# 10 evaluation episodes for -v2 locomotion and 100 otherwise. Its AntMaze rows are for the -v0 files; door, hammer
# and relocate, not in it, take pen-cloned's row (our rule).
_1000_EPOCHS = dict(total_steps=1_000_000, eval_episodes=100)  # and DQL's 100 evaluation episodes
_ANTMAZE = dict(max_q_backup=True, reward_mode="cql_antmaze", **_1000_EPOCHS)
_OGBENCH = dict(total_steps=1_000_000, eval_every=100_000, eval_episodes=50)
PRESETS = {
    "halfcheetah-medium-v2": dict(eta=1.0, grad_norm=9.0),
    "halfcheetah-medium-replay-v2": dict(eta=1.0, grad_norm=2.0),
    "halfcheetah-medium-expert-v2": dict(eta=1.0, grad_norm=7.0),
    "hopper-medium-v2": dict(eta=1.0, grad_norm=9.0),
    "hopper-medium-replay-v2": dict(eta=1.0, grad_norm=4.0),
    "hopper-medium-expert-v2": dict(eta=1.0, grad_norm=5.0),
    "walker2d-medium-v2": dict(eta=1.0, grad_norm=1.0),
    "walker2d-medium-replay-v2": dict(eta=1.0, grad_norm=4.0),
    "walker2d-medium-expert-v2": dict(eta=1.0, grad_norm=5.0),
    "antmaze-medium-play-v2": dict(eta=2.0, grad_norm=2.0, actor_lr=1e-3, **_ANTMAZE),
    "antmaze-medium-diverse-v2": dict(eta=3.0, grad_norm=1.0, **_ANTMAZE),
    "antmaze-large-play-v2": dict(eta=4.5, grad_norm=10.0, **_ANTMAZE),
    "antmaze-large-diverse-v2": dict(eta=3.5, grad_norm=7.0, **_ANTMAZE),
    "kitchen-mixed-v0": dict(eta=0.005, grad_norm=10.0, **_1000_EPOCHS),
    "kitchen-partial-v0": dict(eta=0.005, grad_norm=10.0, **_1000_EPOCHS),
    "pen-human-v1": dict(eta=0.15, grad_norm=7.0, actor_lr=3e-5, reward_mode="standardize", **_1000_EPOCHS),
    "pen-cloned-v1": dict(eta=0.1, grad_norm=8.0, actor_lr=3e-5, reward_mode="standardize", **_1000_EPOCHS),
    "antmaze-umaze-v2": dict(eta=0.5, grad_norm=2.0, max_q_backup=False, reward_mode="cql_antmaze", **_1000_EPOCHS),
    "antmaze-umaze-diverse-v2": dict(eta=2.0, grad_norm=3.0, **_ANTMAZE),
    "door-cloned-v1": dict(eta=0.1, grad_norm=8.0, actor_lr=3e-5, reward_mode="standardize", **_1000_EPOCHS),
    "hammer-cloned-v1": dict(eta=0.1, grad_norm=8.0, actor_lr=3e-5, reward_mode="standardize", **_1000_EPOCHS),
    "relocate-cloned-v1": dict(eta=0.1, grad_norm=8.0, actor_lr=3e-5, reward_mode="standardize", **_1000_EPOCHS),
    # OGBench, FQL's families: FQL's protocol and discount; eta is not published: our rule, the value of DQL's table
    # nearest n / ((1 - gamma) alpha) for FQL's alpha and the task's n sub-goals (docs/presets.md)
    "antmaze-large-navigate-singletask-v0": dict(eta=4.5, **_OGBENCH),
    "antmaze-giant-navigate-singletask-v0": dict(eta=4.5, gamma=0.995, **_OGBENCH),
    "humanoidmaze-medium-navigate-singletask-v0": dict(eta=4.5, gamma=0.995, **_OGBENCH),
    "humanoidmaze-large-navigate-singletask-v0": dict(eta=4.5, gamma=0.995, **_OGBENCH),
    "antsoccer-arena-navigate-singletask-v0": dict(eta=4.5, gamma=0.995, **_OGBENCH),
    "cube-single-play-singletask-v0": dict(eta=0.5, **_OGBENCH),
    "cube-double-play-singletask-v0": dict(eta=0.5, **_OGBENCH),
    "scene-play-singletask-v0": dict(eta=2.0, **_OGBENCH),
    "puzzle-3x3-play-singletask-v0": dict(eta=1.0, **_OGBENCH),
    "puzzle-4x4-play-singletask-v0": dict(eta=2.0, **_OGBENCH),
}


def parse_args(argv: list[str] | None = None) -> Args:
    """Two passes: read --env-id (and --resume), then parse every flag with that dataset's presets (and the resumed
    run's flags: a flag left out keeps the run's value) as the defaults."""
    given_env_id, run = bookkeeping.peek(argv, Args)  # run: with --resume, the flags its run had at the checkpoint
    env_id = given_env_id or run.get("env_id", Args.env_id)
    preset = offline_data.preset_key(env_id)  # its PRESETS key (a gymnasium id, your own data: itself, no row)
    if preset is None:
        raise offline_data.unknown_id(env_id, PRESETS)  # the nearest supported ids, then all of them
    defaults = dataclasses.replace(Args(), **{**PRESETS.get(preset, {}), **run, "env_id": env_id})
    description = f"{__doc__}Defaults below: the script's, with {env_id}'s presets if any (--resume: the run's)."
    return tyro.cli(Args, args=argv, default=defaults, description=description)


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: networks
# ---------------------------------------------------------------------------------------------------------------
class SinusoidalPosEmb(nn.Module):
    """DQL's sinusoidal embedding of a (B, 1) time; frequencies from 1 down to 1e-4."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.arange(half) * (-np.log(10000.0) / (half - 1))), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.freqs
        return torch.cat([x.sin(), x.cos()], dim=-1)


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
    """DDPM noise predictor eps_theta(a_i, i; s): DQL's MLP on [a_i, emb(i), s]; the noise schedule as buffers."""

    def __init__(self, obs_dim: int, act_dim: int, diffusion_steps: int = 5, time_dim: int = 16):
        super().__init__()
        self.act_dim, self.diffusion_steps = act_dim, diffusion_steps
        self.t_emb = time_mlp(time_dim)
        self.net = mlp(act_dim + time_dim + obs_dim, act_dim)
        for name, value in ddpm_schedule(vp_beta_schedule(diffusion_steps)).items():
            self.register_buffer(name, value.float(), persistent=False)

    def forward(self, a_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """eps_theta(a_t, t; s) of B rows: t the step index i (0..T-1), of shape (B, 1), or (1, 1) in every row."""
        return self.net(torch.cat([a_t, self.t_emb(t).expand(len(a_t), -1), obs], dim=-1))


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
    """L_DBC (Eq. 4 averaged over the action's dimensions, as DQL's code), DDPM's simple loss: i ~ U{0..T-1} (DQL's
    0-based step: Eq. 4's k = i + 1), a_i = sqrt(abar_i) a + sqrt(1 - abar_i) eps, eps_theta(a_i, i; s) fit to eps."""
    i = torch.randint(actor.diffusion_steps, (len(obs), 1), device=obs.device)
    eps = torch.randn_like(actions)
    a_i = actor.sqrt_alphas_cumprod[i] * actions + actor.sqrt_one_minus_alphas_cumprod[i] * eps
    return F.mse_loss(actor(a_i, i.float(), obs), eps)


def denoise_step(actor: Actor, a_i: torch.Tensor, i: int, obs: torch.Tensor) -> torch.Tensor:
    """One ancestral step from level i to i - 1, the action at i = 0 (Eq. 5 with k = i + 1, as DQL's code: the predicted
    action clipped to the action range, then the posterior mean and the posterior noise, none at i = 0)."""
    eps_hat = actor(a_i, torch.full((1, 1), float(i), device=obs.device), obs)
    a_0 = (actor.sqrt_recip_alphas_cumprod[i] * a_i - actor.sqrt_recipm1_alphas_cumprod[i] * eps_hat).clamp(-1.0, 1.0)
    mean = actor.posterior_mean_coef1[i] * a_0 + actor.posterior_mean_coef2[i] * a_i
    return mean if i == 0 else mean + (0.5 * actor.posterior_log_variance_clipped[i]).exp() * torch.randn_like(a_i)


def sample_actions(actor: Actor, obs: torch.Tensor) -> torch.Tensor:
    """T network calls from noise (level T - 1), differentiable end to end (the Q term back-propagates through all)."""
    a = torch.randn(len(obs), actor.act_dim, device=obs.device)
    for i in reversed(range(actor.diffusion_steps)):
        a = denoise_step(actor, a, i, obs)
    return a.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: twin-Q critic (Eq. 6 and 17)
# ---------------------------------------------------------------------------------------------------------------
class Critic(nn.Module):
    """Twin Q-networks, DQL's 3x256 Mish MLPs on [s, a]."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, actions], dim=-1)
        return self.q1(x), self.q2(x)


def critic_loss_fn(agent: "Agent", batch: "Batch", args: Args) -> tuple[torch.Tensor, dict]:
    """Clipped double-Q TD loss (Eq. 6 and 17) with next actions from the EMA policy; max-Q backup if asked."""
    k = args.num_backup_actions if args.max_q_backup else 1
    with torch.no_grad():
        next_obs = batch.next_obs.repeat_interleave(k, dim=0)
        next_q1, next_q2 = agent.critic_target(next_obs, sample_actions(agent.actor_ema, next_obs))
        next_q1, next_q2 = (q.view(-1, k).max(dim=1, keepdim=True).values for q in (next_q1, next_q2))
        next_q = torch.min(next_q1, next_q2)
        target_q = batch.rewards + args.gamma * (1.0 - batch.dones) * next_q
    q1, q2 = agent.critic(batch.obs, batch.actions)
    loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
    return loss, {"critic_loss": loss, "q_data": q1.mean(), "q_target": target_q.mean()}


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
    actor_ema = Actor(obs_dim, act_dim, args.diffusion_steps).to(device)
    critic_target = Critic(obs_dim, act_dim).to(device)
    for target, net in ((actor_ema, actor), (critic_target, critic)):
        target.load_state_dict(net.state_dict())
        target.requires_grad_(False)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, fused=True)
    return Agent(actor, actor_ema, critic, critic_target, actor_optimizer, critic_optimizer)


def actor_loss_fn(agent: Agent, batch: "Batch", args: Args) -> tuple[torch.Tensor, dict]:
    """L_DBC - eta * Q(s, a_pi) / E|Q| (Eq. 7); the normaliser is a constant. The paper writes E|Q| over dataset
    actions; the code, as DQL's and the OFQL author's, takes it at the policy's actions, from the other head of a
    coin flip between the twin heads (one head is maximised, the other normalises)."""
    bc_loss = behavior_cloning_loss(agent.actor, batch.obs, batch.actions)
    q1, q2 = agent.critic(batch.obs, sample_actions(agent.actor, batch.obs))
    flip = torch.rand((), device=q1.device) < 0.5
    q_loss = -torch.where(flip, q1.mean() / q2.abs().mean().detach(), q2.mean() / q1.abs().mean().detach())
    loss = bc_loss + args.eta * q_loss
    return loss, {"actor_loss": loss, "bc_loss": bc_loss, "q_loss": q_loss, "q_policy": (q1 + q2).mean() / 2}


def optimizer_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, max_norm: float):
    """Back-propagate `loss`, clip the gradient of `module` to norm `max_norm` (0: no clipping), step; returns the
    norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(module.parameters(), max_norm if max_norm > 0 else float("inf"))
    optimizer.step()
    return grad_norm


@torch.no_grad()
def update_targets(agent: Agent, args: Args, step: torch.Tensor) -> None:
    """Polyak-average the target critic every step, and the EMA policy every `ema_every` steps after `ema_start` (DQL
    counts from 0: steps 1001, 1006, ...), at a tensor rate, 0 off schedule: the step count never leaves the device."""
    torch._foreach_lerp_(list(agent.critic_target.parameters()), list(agent.critic.parameters()), args.tau)
    rate = (1.0 - args.ema_decay) * ((step > args.ema_start) & ((step - 1) % args.ema_every == 0))
    ema = list(agent.actor_ema.parameters())
    torch._foreach_lerp_(ema, list(agent.actor.parameters()), [rate] * len(ema))


# sweep.py runs update() on N stacked members with these rebound to all-member versions (docs/sweep.md): there the
# losses get each member's SWEEP_WEIGHT and gamma as tensors (arithmetic on them, no `if`)
SWEEP_REPLACES = ("critic_loss_fn", "actor_loss_fn", "optimizer_step")


def update(agent: Agent, batch: "Batch", args: Args, step: torch.Tensor) -> dict[str, torch.Tensor]:
    """One iteration (Algorithm 1): critic step, actor step, target networks (`step`: its number, on the device).
    Returns detached metrics; nothing here reads a value back to the host."""
    critic_loss, metrics = critic_loss_fn(agent, batch, args)
    metrics["critic_grad_norm"] = optimizer_step(agent.critic_optimizer, agent.critic, critic_loss, args.grad_norm)
    agent.critic.requires_grad_(False)  # the actor's backward skips the critic's weights (no use for their grads)
    actor_loss, actor_metrics = actor_loss_fn(agent, batch, args)
    agent.critic.requires_grad_(True)
    metrics["actor_grad_norm"] = optimizer_step(agent.actor_optimizer, agent.actor, actor_loss, args.grad_norm)
    update_targets(agent, args, step)
    return {k: v.detach() for k, v in {**metrics, **actor_metrics}.items()}


# ---------------------------------------------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------------------------------------------
Batch = collections.namedtuple("Batch", "obs actions rewards next_obs dones")  # tensors with one row per transition


class OfflineBuffer:
    """The dataset on the training device, batches drawn there uniformly with replacement, and room after it for
    `online_steps` transitions of each of `num_online_envs` envs (env e's j-th: row size + j * num_online_envs + e).
    Online, env e's batches come from the dataset and its transitions so far: uniformly, or half each."""

    def __init__(self, data: dict, device: torch.device, online_steps=0, num_online_envs=1, balanced=False):
        self.size, self.device, self.balanced = len(data["rewards"]), device, balanced
        self.num_online_envs = num_online_envs  # a sweep's members, each acting in its own env
        self.added = 0  # online transitions stored, per env
        self.count = torch.zeros((), dtype=torch.long, device=device)  # = added, on the device (read by sample)
        for name, key in zip(Batch._fields, ("observations", "actions", "rewards", "next_observations", "terminals")):
            x = torch.as_tensor(data[key], dtype=torch.float32, device=device).reshape(self.size, -1)
            setattr(self, name, torch.cat([x, x.new_zeros(online_steps * num_online_envs, x.shape[1])]))

    def sample(self, batch_size: int, env=0, online: bool = False) -> Batch:
        # draw % n is a uniform row of n, whatever n: a domain sweep's members share one draw, each taking it modulo
        # its own dataset's size (sweep.DomainBuffer)
        draw = torch.randint(1 << 62, (batch_size,), device=self.device)
        j = draw % (self.size + self.count) if online else draw % self.size  # j >= size: env `env`'s (j - size)-th
        if online and self.balanced:  # half dataset rows, half the env's transitions
            j = torch.cat([draw[: batch_size // 2] % self.size, self.size + draw[batch_size // 2 :] % self.count])
        idx = torch.where(j < self.size, j, self.size + (j - self.size) * self.num_online_envs + env) if online else j
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx])

    def add(self, *transition: np.ndarray) -> None:
        """Store a transition of each env (Batch's fields, one row per env) in the next rows; only they are copied."""
        for name, x in zip(Batch._fields, transition):
            rows = getattr(self, name)[self.size + self.added * self.num_online_envs :][: self.num_online_envs]
            rows.copy_(torch.as_tensor(x, dtype=torch.float32).reshape(self.num_online_envs, -1))
        self.added += 1
        self.count.fill_(self.added)  # in place: a captured training step reads it


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: choosing actions, running the episodes
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def select_action(agent: Agent, obs: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """DQL's rule: sample `num_candidates` actions per state and pick one with probability softmax(Q_min)
    of the target critic; with 1 candidate this is the policy's own sample."""
    obs_rep = obs.repeat_interleave(num_candidates, dim=0)
    actions = sample_actions(agent.actor, obs_rep).view(len(obs), num_candidates, -1)
    if num_candidates == 1:
        return actions[:, 0]
    q = torch.min(*agent.critic_target(obs_rep, actions.flatten(0, 1))).view(len(obs), num_candidates)
    # softmax(q) drawn as argmax(q - log E), E ~ Exp(1): the distribution of torch.multinomial, no host sync
    idx = (q - torch.empty_like(q).exponential_().log()).argmax(dim=-1)
    return actions[torch.arange(len(obs), device=obs.device), idx]


def make_policy(agent: Agent, num_candidates: int, num_envs: int, obs_dim: int, device, use_graph: bool) -> Callable:
    """select_action for `num_envs` states at a time; with `use_graph` one replay of a CUDA graph (cuda_graph, below)
    that reads the networks in place, so it follows them as they train (the next call overwrites the actions)."""
    if not use_graph:
        return lambda obs: select_action(agent, obs, num_candidates)
    obs_in = torch.zeros(num_envs, obs_dim, device=device)
    replay = cuda_graph(lambda: select_action(agent, obs_in, num_candidates), warmup=1, what="the policy")
    with torch.random.fork_rng(devices=[device]):  # the warm-up (then the capture) leaves training's noise as it was
        replay()

    def policy(obs: torch.Tensor) -> torch.Tensor:
        obs_in.copy_(obs)
        return replay()

    return policy


def evaluate(policies: list, envs: gym.vector.VectorEnv, source, members: list[Args], device) -> list[dict]:
    """One episode per env for each policy: the protocol's, then (where it differs) the policy's own sample, logged as
    policy_*. Returns each member's episode_stats and the protocol policy's decision_rate (action batches per second);
    a sweep's envs are member-major, env i of a member seeded its seed + 100 + 10^6 i (runs of neighbouring seeds
    never share a start). The policies' noise comes from a forked generator seeded seed + 100: evaluating never
    changes the training's numbers."""
    episodes = envs.num_envs // len(members)
    results, seeds = [{} for _ in members], [a.seed + 100 + 10**6 * i for a in members for i in range(episodes)]
    for prefix, policy in zip(("", "policy_"), policies):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(members[0].seed + 100)  # in a sweep, member m's noise is slice m of each draw
            returns, successes, decision_rate = offline_data.run_episodes(policy, envs, seeds, device)
        for m, (r, s) in enumerate(zip(returns.reshape(len(members), -1), successes.reshape(len(members), -1))):
            results[m].update(source.member(m).episode_stats(r, s, prefix))  # a domain sweep: each member's dataset
            results[m].setdefault("decision_rate", decision_rate)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Training step on CUDA: a CUDA graph replay per iteration and per action choice (--no-cuda-graph: eager, as on CPU)
# ---------------------------------------------------------------------------------------------------------------
def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Adam's capturable mode, which capturing a CUDA graph needs (set after a resume: loading a checkpoint restores
    the saved run's mode). Fused Adam keeps its step counts on the parameters' device in either mode."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable


def cuda_graph(fn: Callable[[], Any], warmup: int, what: str) -> Callable[[], Any]:
    """Serve fn() (no arguments: it reads and writes fixed tensors) from a CUDA graph. The first `warmup` calls run fn
    eagerly on a side stream (they create Adam's state and CUDA's lazy handles), then fn is captured; every later call
    replays its kernels on the same tensors, returning the captured outputs, overwritten in place (fresh noise each)."""
    stream, graph, captured = torch.cuda.Stream(), torch.cuda.CUDAGraph(), []

    def call() -> Any:
        nonlocal warmup  # the warm-up calls left
        if captured:
            graph.replay()
            return captured[0]
        warmup -= 1
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This instance was constructed with capturable=True")  # until capture
            out = fn()
        torch.cuda.current_stream().wait_stream(stream)
        if warmup == 0:
            try:
                with torch.cuda.graph(graph):
                    captured.append(fn())
            except RuntimeError as e:
                raise UserError(f"capturing {what} as a CUDA graph failed ({e}); run with --no-cuda-graph") from e
        return out

    return call


# ---------------------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------------------
# sweep.py runs train() with these rebound to versions for N stacked members, each with its own seed and batches
SWEEP_TRAIN_REPLACES = ("make_agent", "OfflineBuffer", "update", "make_policy")


def train(args: Args, runs: bookkeeping.Runs | None = None, source=None) -> str:
    """Train, evaluate and log one run (sweep.py: its members' Runs and, for several datasets, their MemberSources;
    args the first member's; SWEEP_TRAIN_REPLACES rebound)."""
    runs = runs or bookkeeping.Runs(__file__, [args])  # checks the flags, then makes the run folder
    num_envs = runs.size * args.eval_episodes  # in a sweep, member-major
    with runs.removed_on_failure():  # made before the data are loaded and the envs made
        source = source or offline_data.load(args.env_id, args.dataset_path, args.reward_mode)
        envs = offline_data.evaluation_envs(source.make_env, num_envs, runs.video_folder)  # None: data without env
        online_envs = offline_data.OnlineEnvs(source, runs.size) if args.online_steps else None  # one per member

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    torch.set_float32_matmul_precision(args.matmul_precision)

    buffer = OfflineBuffer(source.data, device, args.online_steps, runs.size, args.balanced_sampling)
    agent = make_agent(source.obs_dim, source.act_dim, args, device)
    if source.limitation:
        print(f"NOTE: {args.env_id}: {source.limitation}")
    use_graph = args.cuda_graph and device.type == "cuda"
    training_step = "cuda_graph" if use_graph else "eager"
    start_step = runs.start(agent, buffer, device=str(device), training_step=training_step)
    if online_envs:  # seed + 200 + the online steps done: a run resumed online does not replay its first episodes
        online_envs.reset([a.seed + 200 + max(0, start_step - 1 - args.total_steps) for a in runs.members], device)
    for optimizer in (agent.actor_optimizer, agent.critic_optimizer):
        set_capturable(optimizer, use_graph)  # after the resume, which restores the saved run's mode
    last_step = torch.tensor(start_step - 1, device=device)  # on the device: no iteration reads it back

    def iteration(online: bool) -> dict[str, torch.Tensor]:  # online: batches of the data and the envs' transitions
        last_step.add_(1)
        return update(agent, buffer.sample(args.batch_size, online=online), args, last_step)

    def fast(fn: Callable) -> Callable:  # --compile: fused kernels (LeanRL's); CUDA: from the 4th call, a graph replay
        fn = torch.compile(fn) if args.compile else fn
        return cuda_graph(fn, warmup=3, what="the training step") if use_graph else fn

    offline_iteration, online_iteration = fast(lambda: iteration(False)), fast(lambda: iteration(True))
    # with candidates the policy's own sample too: a low score with candidates only is a critic that cannot rank them
    candidates = [args.num_candidates, 1] if args.num_candidates > 1 else [1]
    policies = [make_policy(agent, k, num_envs, source.obs_dim, device, use_graph) for k in candidates]
    if args.online_steps:  # the online phase's policy, acting in one env per member
        act = make_policy(agent, args.online_candidates, runs.size, source.obs_dim, device, use_graph)
    print(f"training on {device}: " + ("CUDA graphs" if use_graph else "eager") + ", torch.compile" * args.compile)

    total = args.total_steps + args.online_steps  # the offline phase, then the online one
    metric_sum, window_steps, first_bad, stopping, window_start = 0.0, 0, -1, False, time.perf_counter()
    progress = dict(initial=start_step - 1, total=total, desc=args.env_id, unit="step", mininterval=2)
    with runs.stop_signals() as stop_signal:  # SIGINT, SIGTERM: stop after this step, saved
        for step in tqdm(range(start_step, total + 1), **progress):
            if step > args.total_steps:  # online: each member's env takes a step of its policy, stored, then an update
                transitions, episodes = online_envs.step(act)
                buffer.add(*transitions)
                runs.log_episodes(step, episodes)  # those that ended
            metrics = online_iteration() if step > args.total_steps else offline_iteration()
            values = torch.stack(list(metrics.values()), dim=-1)  # (metrics,); in a sweep (members, metrics)
            metric_sum, window_steps, stopping = metric_sum + values, window_steps + 1, bool(stop_signal)
            # the first step at which each metric became non-finite, kept on the device: no sync per step
            first_bad = torch.where(~torch.isfinite(values) & (first_bad < 0), step, first_bad)
            eval_step = step % args.eval_every == 0 or step in (args.total_steps, total)
            if step % args.log_every != 0 and not eval_step and not stopping:
                continue

            means = (metric_sum / window_steps).view(runs.size, -1).tolist()  # the one host sync per offline window
            window_time = time.perf_counter() - window_start
            runs.check_finite(list(metrics), first_bad.view(runs.size, -1).tolist(), source)  # those with a NaN stop
            results = None
            if envs is not None and eval_step:
                runs.record_video(envs, step)  # --capture-video: the evaluation's first episode
                results = evaluate(policies, envs, source, runs.members, device)
                stopping = bool(stop_signal)  # one that came during the episodes stops here too, saved once
            runs.log(step, list(metrics), means, window_steps, window_time, results)
            if args.save_model and (eval_step or stopping):
                runs.save(agent, step)
            metric_sum, window_steps, window_start = 0.0, 0, time.perf_counter()
            if stopping:
                break
    if stopping and step < total:  # a stop in the last step: it finishes
        raise runs.interrupted(step, stop_signal[0])
    for opened in filter(None, (envs, online_envs)):  # the evaluation's envs, the online phase's
        opened.close()
    return runs.finish(source)


if __name__ == "__main__":
    bookkeeping.main(__file__, lambda: train(parse_args()))  # any stop in one line: exit code 2, or 130/143 (signals)
