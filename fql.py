"""Flow Q-Learning (FQL) (Park, Li & Levine, ICML 2025): a flow-matching BC policy integrated in 10 Euler steps,
distilled into a one-step policy mu(s, z) that is trained with the Q term. A baseline of OFQL (arXiv 2508.13904);
this file is ofql.py with FQL's policy, networks and update rule (`diff fql.py ofql.py`). Its `alpha` is FQL's
distillation weight, not the Q weight alpha of the OFQL paper's Eq. 7. Docs and results: README.md.
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
    alpha: float = 10.0
    """the weight of the distillation term in the actor loss (FQL's alpha; the Q term's weight is 1; docs/presets.md)"""
    flow_steps: int = 10
    """the Euler steps of the BC flow that produce the distillation target"""
    q_agg: Literal["mean", "min"] = "mean"
    """how the two target Q-heads are combined in the critic target: mean (FQL's default) or min (clipped double Q)"""
    normalize_q: bool = True
    """if toggled, the Q term is divided by E|Q| (FQL's normalize_q_loss; on in the MuJoCo and Kitchen presets)"""
    max_q_backup: bool = False
    """if toggled, the critic target takes the max over --num-backup-actions next actions per head"""
    num_backup_actions: int = 10
    """the number of next actions of the max-Q backup"""
    reward_mode: Literal["raw", "cql_antmaze", "iql_antmaze", "standardize"] = "raw"
    """reward transform: raw, (r - 0.5) * 4 (CQL's AntMaze rule), r - 1 (IQL's), or (r - mean) / std"""
    grad_norm: float = 0.0
    """the max gradient norm of the actor and of the critic; 0 disables clipping"""

    # Evaluation and logging
    eval_every: int = 50_000
    """evaluate (and with --save-model checkpoint) every this many gradient steps, and at the last step of each phase"""
    eval_episodes: int = 10
    """the number of evaluation episodes, run in parallel in a vector env"""
    num_candidates: int = 1
    """candidates per state at evaluation, one picked by softmax(Q) (DQL); above 1, the policy's own is scored too"""
    log_every: int = 1000
    """print and record the mean training metrics every this many steps"""


SWEEP_WEIGHT = "alpha"  # the flag whose grid of values sweep.py trains in one process (python sweep.py --help)

# AntMaze and Adroit: FQL's published flags (alpha, q_agg, 500k steps, IQL's AntMaze reward, raw Q term). MuJoCo and
# Kitchen, which FQL never ran: as the OFQL authors ran FQL there (Appendix N), the normalised Q term and alpha from
# the grid {0.03, 0.1, 0.3, 1, 3, 10}; our rule: the grid value nearest (log scale) to 1 / eta of ofql.py's preset,
# which is 10 for every one (eta <= 0.1), with OFQL's step budget. D4RL is evaluated by DQL's protocol (FQL's: 50
# episodes every 100k steps), so that the three scripts are scored alike. docs/presets.md has the sources.
_FQL = dict(normalize_q=False, total_steps=500_000, eval_episodes=100)
_OGBENCH = dict(normalize_q=False, total_steps=1_000_000, eval_every=100_000, eval_episodes=50)  # main.py's
PRESETS = {
    "halfcheetah-medium-v2": dict(alpha=10.0),
    "halfcheetah-medium-replay-v2": dict(alpha=10.0),
    "halfcheetah-medium-expert-v2": dict(alpha=10.0),
    "hopper-medium-v2": dict(alpha=10.0),
    "hopper-medium-replay-v2": dict(alpha=10.0),
    "hopper-medium-expert-v2": dict(alpha=10.0),
    "walker2d-medium-v2": dict(alpha=10.0),
    "walker2d-medium-replay-v2": dict(alpha=10.0),
    "walker2d-medium-expert-v2": dict(alpha=10.0),
    "antmaze-medium-play-v2": dict(alpha=10.0, reward_mode="iql_antmaze", **_FQL),
    "antmaze-medium-diverse-v2": dict(alpha=10.0, reward_mode="iql_antmaze", **_FQL),
    "antmaze-large-play-v2": dict(alpha=3.0, reward_mode="iql_antmaze", **_FQL),
    "antmaze-large-diverse-v2": dict(alpha=3.0, reward_mode="iql_antmaze", **_FQL),
    "kitchen-mixed-v0": dict(alpha=10.0, total_steps=1_000_000, eval_episodes=100),
    "kitchen-partial-v0": dict(alpha=10.0, total_steps=1_000_000, eval_episodes=100),
    "pen-human-v1": dict(alpha=10000.0, q_agg="min", **_FQL),
    "pen-cloned-v1": dict(alpha=10000.0, q_agg="min", **_FQL),
    "antmaze-umaze-v2": dict(alpha=10.0, reward_mode="iql_antmaze", **_FQL),
    "antmaze-umaze-diverse-v2": dict(alpha=10.0, reward_mode="iql_antmaze", **_FQL),
    "door-cloned-v1": dict(alpha=30000.0, q_agg="min", **_FQL),
    "hammer-cloned-v1": dict(alpha=10000.0, q_agg="min", **_FQL),
    "relocate-cloned-v1": dict(alpha=30000.0, q_agg="min", **_FQL),
    # OGBench: FQL's README commands (alpha, gamma 0.995, q_agg) and main.py's protocol, the raw Q term of its paper
    "antmaze-large-navigate-singletask-v0": dict(alpha=10.0, q_agg="min", **_OGBENCH),
    "antmaze-giant-navigate-singletask-v0": dict(alpha=10.0, q_agg="min", gamma=0.995, **_OGBENCH),
    "humanoidmaze-medium-navigate-singletask-v0": dict(alpha=30.0, gamma=0.995, **_OGBENCH),
    "humanoidmaze-large-navigate-singletask-v0": dict(alpha=30.0, gamma=0.995, **_OGBENCH),
    "antsoccer-arena-navigate-singletask-v0": dict(alpha=10.0, gamma=0.995, **_OGBENCH),
    "cube-single-play-singletask-v0": dict(alpha=300.0, **_OGBENCH),
    "cube-double-play-singletask-v0": dict(alpha=300.0, **_OGBENCH),
    "scene-play-singletask-v0": dict(alpha=300.0, **_OGBENCH),
    "puzzle-3x3-play-singletask-v0": dict(alpha=1000.0, **_OGBENCH),
    "puzzle-4x4-play-singletask-v0": dict(alpha=1000.0, **_OGBENCH),
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
def mlp(in_dim: int, out_dim: int, hidden_dim: int = 512, depth: int = 4, layer_norm: bool = False) -> nn.Sequential:
    """FQL's MLP: `depth` hidden layers of `hidden_dim` units, each Linear-GELU(-LayerNorm), then a linear output;
    Glorot-uniform weights and zero biases, and the tanh GELU, as Flax's defaults in FQL's code."""
    layers, dim = [], in_dim
    for _ in range(depth):
        layers += [nn.Linear(dim, hidden_dim), nn.GELU(approximate="tanh")]
        layers += [nn.LayerNorm(hidden_dim, eps=1e-6)] if layer_norm else []
        dim = hidden_dim
    net = nn.Sequential(*layers, nn.Linear(dim, out_dim))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


class Actor(nn.Module):
    """FQL's two policy networks: the BC flow's velocity v_theta(a_t, t; s) on the raw time t, and the one-step
    policy mu_omega(z; s) that acts (forward)."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.act_dim = act_dim
        self.flow = mlp(act_dim + 1 + obs_dim, act_dim)
        self.onestep = mlp(act_dim + obs_dim, act_dim)

    def velocity(self, a_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self.flow(torch.cat([a_t, t, obs], dim=-1))

    def forward(self, z: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self.onestep(torch.cat([z, obs], dim=-1))


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: flow-matching behaviour cloning, the Euler flow, and the one-step policy, as in FQL's code
# ---------------------------------------------------------------------------------------------------------------
def behavior_cloning_loss(actor: Actor, obs, actions) -> torch.Tensor:
    """Flow matching with FQL's convention (noise z at t = 0, data at t = 1): t ~ U[0, 1], a_t = (1 - t) z + t a,
    v_theta(a_t, t; s) regressed on the velocity a - z (a mean over the action's dimensions, as FQL's code)."""
    t = torch.rand(len(obs), 1, device=obs.device)
    z = torch.randn_like(actions)
    return F.mse_loss(actor.velocity((1 - t) * z + t * actions, t, obs), actions - z)


def euler_flow(velocity_fn, z: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """Integrate da/dt = v(a, t) from a = z at t = 0 to t = 1 in `flow_steps` Euler steps, then clip to [-1, 1]."""
    a = z
    for i in range(flow_steps):
        a = a + velocity_fn(a, torch.full((len(z), 1), i / flow_steps, device=z.device)) / flow_steps
    return a.clamp(-1.0, 1.0)


@torch.no_grad()
def distillation_target(actor: Actor, obs: torch.Tensor, z: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """The BC flow's action for the noise z: a fixed regression target for mu_omega(z; s) (no gradient)."""
    return euler_flow(lambda a_t, t: actor.velocity(a_t, t, obs), z, flow_steps)


def sample_actions(actor: Actor, obs: torch.Tensor) -> torch.Tensor:
    """One network call of the one-step policy, differentiable: a = clip(mu_omega(z; s), -1, 1), z ~ N(0, I)."""
    z = torch.randn(len(obs), actor.act_dim, device=obs.device)
    return actor(z, obs).clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: twin-Q critic, as in FQL's code
# ---------------------------------------------------------------------------------------------------------------
class Critic(nn.Module):
    """Twin Q-networks, FQL's 4x512 GELU MLPs with LayerNorm on [s, a]."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, layer_norm=True), mlp(obs_dim + act_dim, 1, layer_norm=True)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, actions], dim=-1)
        return self.q1(x), self.q2(x)


def critic_loss_fn(agent: "Agent", batch: "Batch", args: Args) -> tuple[torch.Tensor, dict]:
    """Twin-Q TD loss with next actions from the current one-step policy (FQL has no target policy); the two
    target heads are averaged or minimised (`q_agg`); max-Q backup if asked."""
    k = args.num_backup_actions if args.max_q_backup else 1
    with torch.no_grad():
        next_obs = batch.next_obs.repeat_interleave(k, dim=0)
        next_q1, next_q2 = agent.critic_target(next_obs, sample_actions(agent.actor, next_obs))
        next_q1, next_q2 = (q.view(-1, k).max(dim=1, keepdim=True).values for q in (next_q1, next_q2))
        next_q = (next_q1 + next_q2) / 2 if args.q_agg == "mean" else torch.min(next_q1, next_q2)
        target_q = batch.rewards + args.gamma * (1.0 - batch.dones) * next_q
    q1, q2 = agent.critic(batch.obs, batch.actions)
    loss = (F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)) / 2  # FQL averages over the two heads
    return loss, {"critic_loss": loss, "q_data": q1.mean(), "q_target": target_q.mean()}


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: actor-critic update (FQL's agents/fql.py)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Agent:
    actor: Actor
    critic: Critic
    critic_target: Critic
    actor_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer


def make_agent(obs_dim: int, act_dim: int, args: Args, device: torch.device) -> Agent:
    actor, critic = Actor(obs_dim, act_dim).to(device), Critic(obs_dim, act_dim).to(device)
    critic_target = Critic(obs_dim, act_dim).to(device)
    critic_target.load_state_dict(critic.state_dict())
    critic_target.requires_grad_(False)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, fused=True)
    return Agent(actor, critic, critic_target, actor_optimizer, critic_optimizer)


def actor_loss_fn(agent: Agent, batch: "Batch", args: Args) -> tuple[torch.Tensor, dict]:
    """FQL's actor loss: L_flow + alpha * |mu_omega(z; s) - flow(z; s)|^2 - Q(s, clip(mu_omega(z; s))), the
    same z for both terms, Q the mean of the two heads, optionally divided by the constant E|Q|."""
    bc_loss = behavior_cloning_loss(agent.actor, batch.obs, batch.actions)
    z = torch.randn_like(batch.actions)
    actions = agent.actor(z, batch.obs)
    distill_loss = F.mse_loss(actions, distillation_target(agent.actor, batch.obs, z, args.flow_steps))
    q1, q2 = agent.critic(batch.obs, actions.clamp(-1.0, 1.0))
    q = (q1 + q2) / 2
    q_loss = -q.mean() / (q.abs().mean().detach() if args.normalize_q else 1.0)
    loss = bc_loss + args.alpha * distill_loss + q_loss
    return loss, {
        "actor_loss": loss,
        "bc_loss": bc_loss,
        "distill_loss": distill_loss,
        "q_loss": q_loss,
        "q_policy": q.mean(),
    }


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
    """Polyak-average the target critic every step (FQL has no target policy; `step`: the siblings' signature)."""
    torch._foreach_lerp_(list(agent.critic_target.parameters()), list(agent.critic.parameters()), args.tau)


# sweep.py runs update() on N stacked members with these rebound to all-member versions (docs/sweep.md): there the
# losses get each member's SWEEP_WEIGHT and gamma as tensors (arithmetic on them, no `if`)
SWEEP_REPLACES = ("critic_loss_fn", "actor_loss_fn", "optimizer_step")


def update(agent: Agent, batch: "Batch", args: Args, step: torch.Tensor) -> dict[str, torch.Tensor]:
    """One FQL iteration: both losses from the same parameters (FQL takes one Adam step on their sum, which is two
    Adam steps on the disjoint parameters given one learning rate and no clipping, as in every preset); the target
    critic moves toward those parameters, the critic before its step, as FQL's `target_update` does. `step` (a device
    tensor): this iteration's number. Returns detached metrics. Nothing here reads a value back to the host."""
    # FQL's loaders clip the data's actions (built anew: torch 2.11's dynamo cannot trace batch._replace here)
    batch = Batch(batch.obs, batch.actions.clamp(-1 + 1e-5, 1 - 1e-5), batch.rewards, batch.next_obs, batch.dones)
    critic_loss, metrics = critic_loss_fn(agent, batch, args)
    agent.critic.requires_grad_(False)  # the actor's backward skips the critic's weights (no use for their grads)
    actor_loss, actor_metrics = actor_loss_fn(agent, batch, args)
    agent.critic.requires_grad_(True)
    update_targets(agent, args, step)  # the losses' critic (FQL's; DQL's code moves toward the stepped one)
    metrics["actor_grad_norm"] = optimizer_step(agent.actor_optimizer, agent.actor, actor_loss, args.grad_norm)
    metrics["critic_grad_norm"] = optimizer_step(agent.critic_optimizer, agent.critic, critic_loss, args.grad_norm)
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
