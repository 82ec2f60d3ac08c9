"""Shared test helpers: small files in the exact D4RL hdf5 layout, recorded in the real gymnasium envs; an agent of
one of the three scripts with a random batch."""

import os
import signal
import sys
import warnings

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["WANDB_MODE"] = "disabled"  # no test reaches wandb's servers, whatever the shell sets
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as tests send it, also where pytest started with it
# ignored (`nohup`, `cmd &` in a script)
torch.set_num_threads(1)  # tiny networks: one thread is fastest and avoids oversubscribing CI's 2 cores


def agent_and_random_batch(script, obs_dim=11, act_dim=3, batch_size=64):
    """A seeded agent of `script` (ofql, dql or fql) with its default Args, a random batch and those Args; the
    dones are 1 in about a fifth of the rows."""
    torch.manual_seed(0)
    args = script.Args()
    agent = script.make_agent(obs_dim, act_dim, args, torch.device("cpu"))
    obs, actions = torch.randn(batch_size, obs_dim), torch.rand(batch_size, act_dim) * 2 - 1
    rewards, next_obs = torch.randn(batch_size, 1), torch.randn(batch_size, obs_dim)
    dones = (torch.rand(batch_size, 1) < 0.2).float()
    return agent, script.Batch(obs, actions, rewards, next_obs, dones), args


def move_targets_apart(agent):
    """The target critic and, where there is one, the EMA policy moved away from the trained networks (they start
    equal to them), so that a test sees which of the two a computation uses."""
    with torch.no_grad():
        for p in (*getattr(agent, "actor_ema", torch.nn.Module()).parameters(), *agent.critic_target.parameters()):
            p.add_(0.1 * torch.randn_like(p))


def fail_at_window(window, member, monkeypatch, step=1):
    """Runs.check_finite told, at its `window`-th call, that member `member`'s first metric went non-finite at `step`
    (a loss that diverged in that logging window)."""
    import bookkeeping

    calls, check_finite = [], bookkeeping.Runs.check_finite

    def check(self, names, first_bad, source):
        calls.append(1)
        if len(calls) == window:
            first_bad = [list(row) for row in first_bad]
            first_bad[member][0] = step
        return check_finite(self, names, first_bad, source)

    monkeypatch.setattr(bookkeeping.Runs, "check_finite", check)


def check_coin_flipped_q_term(script, agent, batch, args, bc_draws):
    """OFQL's and DQL's actor loss: L_BC + eta * q_loss, q_loss = -Q_i / E|Q_j| at the policy's actions, (i, j) by a
    coin flip and E|Q_j| a constant: its value and the gradient it sends to the policy, on both sides of the coin.
    `bc_draws()` repeats the BC loss on the batch's (obs, actions), with its random draws (they come first)."""
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        loss, m = script.actor_loss_fn(agent, batch, args)
        torch.testing.assert_close(loss, m["bc_loss"] + args.eta * m["q_loss"])
        torch.manual_seed(seed)  # the same draws: the BC loss's, the actions' noise, then the coin
        bc = bc_draws()  # the BC term is the BC loss of the batch's states and actions
        torch.testing.assert_close(m["bc_loss"], bc[0] if isinstance(bc, tuple) else bc)
        q1, q2 = agent.critic(batch.obs, script.sample_actions(agent.actor, batch.obs))
        flip = bool(torch.rand(()) < 0.5)  # one head is maximised, the other one's mean |Q| normalises
        torch.testing.assert_close(m["q_policy"], (q1 + q2).mean() / 2)  # logged: both heads' mean, as fql.py's
        flips.add(flip)
        expected = -(q1.mean() / q2.abs().mean().item()) if flip else -(q2.mean() / q1.abs().mean().item())
        torch.testing.assert_close(m["q_loss"], expected)
        params = list(agent.actor.parameters())  # the normaliser passes no gradient: the maximised head's alone
        for got, want in zip(torch.autograd.grad(m["q_loss"], params), torch.autograd.grad(expected, params)):
            torch.testing.assert_close(got, want)
    assert flips == {True, False}


def record_d4rl_file(path, gym_id="Hopper-v4", episodes=3, max_steps=40, seed=0, timeouts=True):
    """Roll a seeded random policy in `gym_id` and write every key a D4RL v2 locomotion file has:
    float32 arrays, bool flags, `next_observations`, `infos/*` and scalar `metadata/*` entries.
    An episode ends in a real fall (`terminals`) or after `max_steps` steps (`timeouts`)."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(gym_id)
    rows = {
        k: []
        for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "qpos", "qvel")
    }
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        for t in range(max_steps):
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            rows["qpos"].append(env.unwrapped.data.qpos.copy())
            rows["qvel"].append(env.unwrapped.data.qvel.copy())
            next_obs, reward, terminated, _, _ = env.step(action)
            for key, value in zip(
                ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"),
                (obs, action, reward, next_obs, terminated, t == max_steps - 1 and not terminated),
            ):
                rows[key].append(value)
            obs = next_obs
            if terminated:
                break
    env.close()
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "next_observations"):
            f.create_dataset(key, data=np.asarray(rows[key], dtype=np.float32))
        f.create_dataset("terminals", data=np.asarray(rows["terminals"], dtype=bool))
        if timeouts:
            f.create_dataset("timeouts", data=np.asarray(rows["timeouts"], dtype=bool))
        f.create_dataset("infos/qpos", data=np.asarray(rows["qpos"], dtype=np.float32))
        f.create_dataset("infos/qvel", data=np.asarray(rows["qvel"], dtype=np.float32))
        f.create_dataset("infos/action_log_probs", data=np.zeros(len(rows["rewards"]), dtype=np.float32))
        f.create_dataset("metadata/algorithm", data="SAC")
        f.create_dataset("metadata/iteration", data=np.int64(7))
        f.create_dataset("metadata/policy/nonlinearity", data="relu")
    return {k: np.asarray(v) for k, v in rows.items()}


@pytest.fixture
def hopper_file(tmp_path):
    path = tmp_path / "hopper_medium-v2.hdf5"
    record_d4rl_file(path, episodes=4, max_steps=40)
    return str(path)
