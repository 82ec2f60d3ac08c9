"""Does OFQL learn? A multi-modal offline bandit in the spirit of DQL's 2-D bandit.

One state, 2-D actions from four well-separated Gaussian modes, equally often; the top-right mode pays 1, the
others 0.5 (every transition is terminal). With eta = 0 (MeanFlow behaviour cloning alone) the one-step policy must
reproduce all four modes; with eta > 0 the Q term must move it onto the best mode. Trained with ofql.update itself.
"""
import dataclasses
import os

import pytest
import torch

import ofql

MODES = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
REWARDS = torch.tensor([1.0, 0.5, 0.5, 0.5])
SEED = int(os.environ.get("BANDIT_SEED", 0))


def train_bandit(eta: float, steps: int = 2000, seed: int = SEED) -> torch.Tensor:
    """Returns 2000 actions of the trained one-step policy."""
    torch.manual_seed(seed)
    mode = torch.randint(4, (4096,))
    actions = (MODES[mode] + 0.1 * torch.randn(4096, 2)).clamp(-1, 1)
    obs = torch.zeros(4096, 1)
    data = {"observations": obs.numpy(), "actions": actions.numpy(), "next_observations": obs.numpy(),
            "rewards": REWARDS[mode].numpy(), "terminals": torch.ones(4096).numpy()}
    args = dataclasses.replace(ofql.Args(), eta=eta, actor_lr=1e-3, critic_lr=1e-3, grad_norm=0.0, batch_size=128)
    buffer, agent = ofql.OfflineBuffer(data, torch.device("cpu")), ofql.make_agent(1, 2, args, torch.device("cpu"))
    train_step = ofql.TrainStep(agent, buffer, args, torch.device("cpu"), last_step=0)
    for _ in range(steps):
        train_step()
    with torch.no_grad():
        return ofql.sample_actions(agent.actor, torch.zeros(2000, 1))


def nearest_mode(actions):
    distance = torch.cdist(actions, MODES)
    return distance.argmin(dim=1), distance.min(dim=1).values


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_bandit(eta):
    mode, distance = nearest_mode(train_bandit(eta))
    share = torch.bincount(mode, minlength=4).float() / len(mode)
    print(f"eta={eta}: share of samples per mode {share.tolist()}, within 0.3 of a mode {(distance < 0.3).float().mean():.2f}")
    if eta == 0:  # behaviour cloning: every mode is reproduced, and the samples sit on the modes
        assert share.min() > 0.12, share
        assert (distance < 0.3).float().mean() > 0.5  # a uniform policy would give 0.28
    else:  # Q-guidance: the samples concentrate on the best mode
        assert share[0] > 0.95, share
        assert ((mode == 0) & (distance < 0.3)).float().mean() > 0.75
