"""A fourth training script of the form of ofql.py, as small as one can be: behaviour cloning of a deterministic MLP
policy, its actions' size penalised with the weight `beta`. tests/test_sweep.py trains it with sweep.py, which is not
edited for it: what a script states (SWEEP_WEIGHT, SWEEP_REPLACES, SWEEP_TRAIN_REPLACES, its Agent's fields) is all
that sweep.py relies on. Its names differ from the three scripts' on purpose (one network, its optimizer `opt`)."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import tyro

import bookkeeping
import offline_data
from ofql import OfflineBuffer, evaluate  # noqa: F401 (OfflineBuffer: a name sweep.py replaces in train())


@dataclass
class Args:
    exp_name: str = "minimal_script"
    env_id: str = "hopper-medium-v2"
    dataset_path: str | None = None
    seed: int = 0
    resume: str | None = None
    save_model: bool = False
    capture_video: bool = False
    track: bool = False
    total_steps: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    beta: float = 0.0
    eval_every: int = 10
    eval_episodes: int = 2
    num_candidates: int = 1
    log_every: int = 5
    reward_mode: str = "raw"


SWEEP_WEIGHT = "beta"


def parse_args(argv: list[str] | None = None) -> Args:
    return tyro.cli(Args, args=argv)


@dataclass
class Agent:
    policy: nn.Module
    opt: torch.optim.Optimizer


def make_agent(obs_dim: int, act_dim: int, args: Args, device: torch.device) -> Agent:
    policy = nn.Sequential(nn.Linear(obs_dim, 64), nn.ReLU(), nn.Linear(64, act_dim)).to(device)
    return Agent(policy, torch.optim.Adam(policy.parameters(), lr=args.lr))


def bc_loss_fn(agent: Agent, batch, args: Args) -> tuple[torch.Tensor, dict]:
    noisy_obs = batch.obs + 0.01 * torch.randn_like(batch.obs)  # some noise: each member must draw its own
    actions = agent.policy(noisy_obs)
    mse = (actions - batch.actions).pow(2).mean()
    loss = mse + args.beta * actions.pow(2).mean()
    return loss, {"loss": loss, "mse": mse}


def optimizer_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, max_norm: float):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(module.parameters(), float("inf"))
    optimizer.step()
    return grad_norm


SWEEP_REPLACES = ("bc_loss_fn", "optimizer_step")


def update(agent: Agent, batch, args: Args, step: torch.Tensor) -> dict[str, torch.Tensor]:
    loss, metrics = bc_loss_fn(agent, batch, args)
    metrics["grad_norm"] = optimizer_step(agent.opt, agent.policy, loss, 0.0)
    return {k: v.detach() for k, v in metrics.items()}


@torch.no_grad()
def select_action(agent: Agent, obs: torch.Tensor, num_candidates: int) -> torch.Tensor:
    return agent.policy(obs).clamp(-1.0, 1.0)


def make_policy(agent: Agent, num_candidates: int, num_envs: int, obs_dim: int, device, use_graph: bool):
    return lambda obs: select_action(agent, obs, num_candidates)


SWEEP_TRAIN_REPLACES = ("make_agent", "OfflineBuffer", "update", "make_policy")


def train(args: Args, runs: bookkeeping.Runs | None = None, source=None) -> str:
    runs = runs or bookkeeping.Runs(__file__, [args])
    with runs.removed_on_failure():
        source = source or offline_data.load(args.env_id, args.dataset_path, args.reward_mode)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    buffer = OfflineBuffer(source.data, device)
    agent = make_agent(source.obs_dim, source.act_dim, args, device)
    envs = offline_data.evaluation_envs(source.make_env, runs.size * args.eval_episodes)
    start_step = runs.start(agent, device=str(device))
    policy = make_policy(agent, 1, envs.num_envs, source.obs_dim, device, False)
    metric_sum, window_steps = 0.0, 0
    with runs.stop_signals():
        for step in range(start_step, args.total_steps + 1):
            metrics = update(agent, buffer.sample(args.batch_size), args, torch.tensor(step))
            metric_sum, window_steps = metric_sum + torch.stack(list(metrics.values()), dim=-1), window_steps + 1
            if step % args.log_every == 0:
                results = (
                    evaluate([policy], envs, source, runs.members, device) if step % args.eval_every == 0 else None
                )
                means = (metric_sum / window_steps).view(runs.size, -1).tolist()
                runs.log(step, list(metrics), means, window_steps, 1.0, results)
                if args.save_model:
                    runs.save(agent, step)
                metric_sum, window_steps = 0.0, 0
    envs.close()
    return runs.finish(source)
