"""dql.py: the VP schedule and the DDPM posterior against their definitions, the T-step sampler against the exact
reverse process for data whose noise predictor is known in closed form, BPTT through the chain, shapes and losses."""

import dataclasses

import numpy as np
import pytest
import torch

import dql
import fql
import offline_data
import ofql
from conftest import agent_and_random_batch, check_coin_flipped_q_term, move_targets_apart

OBS, ACT, B = 11, 3, 64


@pytest.fixture
def agent_and_batch():
    return agent_and_random_batch(dql, OBS, ACT, B)


def test_vp_schedule_matches_dqls_published_values():
    betas = dql.vp_beta_schedule(5)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    np.testing.assert_allclose(betas, [0.1959, 0.4588, 0.6358, 0.7549, 0.8350], atol=1e-4)
    np.testing.assert_allclose(alphas_cumprod, [0.8041, 0.4352, 0.1585, 0.0389, 0.0064], atol=1e-4)
    # the discretisation of the VP SDE beta(s) = b_min + (b_max - b_min) s: log alpha_i = -int over step i of beta / T
    for steps in (5, 50):
        s = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        integral = 0.1 * (s[1:] - s[:-1]) + 0.5 * 9.9 * (s[1:] ** 2 - s[:-1] ** 2)
        torch.testing.assert_close(torch.log(1 - dql.vp_beta_schedule(steps)), -integral)


def test_posterior_coefficients_are_the_gaussian_posterior():
    """q(a_{i-1} | a_i, a_0) by Bayes' rule from its two Gaussian factors, computed here independently:
    a_{i-1} ~ N(sqrt(abar_{i-1}) a_0, 1 - abar_{i-1}) and a_i | a_{i-1} ~ N(sqrt(alpha_i) a_{i-1}, beta_i)."""
    betas = dql.vp_beta_schedule(5)
    c = dql.ddpm_schedule(betas)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    for i in range(1, 5):
        precision = 1 / (1 - abar_prev[i]) + (1 - betas[i]) / betas[i]
        var = 1 / precision
        coef_a0, coef_ai = var * abar_prev[i].sqrt() / (1 - abar_prev[i]), var * (1 - betas[i]).sqrt() / betas[i]
        torch.testing.assert_close(c["posterior_mean_coef1"][i], coef_a0)
        torch.testing.assert_close(c["posterior_mean_coef2"][i], coef_ai)
        torch.testing.assert_close(c["posterior_log_variance_clipped"][i], var.log())
    # at i = 0 the posterior is the point a_0 (zero variance, clipped in the log)
    assert c["posterior_mean_coef1"][0] == 1 and c["posterior_mean_coef2"][0] == 0
    assert c["posterior_log_variance_clipped"][0] == pytest.approx(np.log(1e-20))
    torch.testing.assert_close(
        c["sqrt_recip_alphas_cumprod"] * c["sqrt_alphas_cumprod"], torch.ones(5, dtype=abar.dtype)
    )
    torch.testing.assert_close(c["sqrt_recipm1_alphas_cumprod"] ** 2, 1 / abar - 1)


class GaussianDataActor(dql.Actor):
    """The exact noise predictor E[eps | a_i] for data a ~ N(mu, sigma^2) in every dimension (no network):
    a_i = sqrt(abar) a + sqrt(1 - abar) eps is jointly Gaussian with eps."""

    def __init__(self, steps, mu, sigma):
        super().__init__(OBS, ACT, steps)
        self.mu, self.sigma = mu, sigma

    def forward(self, a_t, t, obs):
        abar = self.sqrt_alphas_cumprod[t.long().squeeze(-1)].unsqueeze(-1) ** 2
        return (1 - abar).sqrt() * (a_t - abar.sqrt() * self.mu) / (abar * self.sigma**2 + 1 - abar)


def test_sampler_recovers_a_point_mass_exactly():
    """For data at a single point a*, the exact predictor makes every clipped a_0 prediction equal a*, and the last
    step (posterior coefficient 1 on a_0, 0 on a_1) returns it exactly, whatever the noise."""
    torch.manual_seed(0)
    actor = GaussianDataActor(5, mu=0.37, sigma=0.0)
    a = dql.sample_actions(actor, torch.zeros(1000, OBS))
    torch.testing.assert_close(a, torch.full_like(a, 0.37))


def reverse_chain_moments(steps, mu, sigma):
    """Mean and variance of DQL's sampler output for Gaussian data, by propagating the moments through each
    (linear) step in float64: a_0-hat = k a_i + m, a_{i-1} = c1 a_0-hat + c2 a_i + std_i z."""
    betas = dql.vp_beta_schedule(steps)
    c = dql.ddpm_schedule(betas)
    abar = torch.cumprod(1 - betas, 0)
    mean, var = 0.0, 1.0
    for i in reversed(range(steps)):
        gain = 1 / (abar[i] * sigma**2 + 1 - abar[i])  # E[eps | a_i] = sqrt(1 - abar) gain (a_i - sqrt(abar) mu)
        shrink = c["sqrt_recipm1_alphas_cumprod"][i] * (1 - abar[i]).sqrt() * gain
        k, m = c["sqrt_recip_alphas_cumprod"][i] - shrink, shrink * abar[i].sqrt() * mu
        slope, offset = (
            c["posterior_mean_coef1"][i] * k + c["posterior_mean_coef2"][i],
            c["posterior_mean_coef1"][i] * m,
        )
        noise_var = 0.0 if i == 0 else c["posterior_log_variance_clipped"][i].exp()
        mean, var = slope * mean + offset, slope**2 * var + noise_var
    return float(mean), float(var)


@pytest.mark.parametrize("steps", [5, 1000])
def test_sampler_matches_the_reverse_process_for_gaussian_data(steps):
    """Data N(0.2, 0.25^2) stays inside [-1, 1] (the x0 clip never binds in practice), so the sampler is linear and
    its output distribution is known: it must match the moment recursion; with 1000 steps DDPM's reverse process
    is close to exact and returns the data distribution itself."""
    torch.manual_seed(0)
    mu, sigma = 0.2, 0.25
    a = dql.sample_actions(GaussianDataActor(steps, mu, sigma), torch.zeros(100_000, OBS)).double()
    mean, var = reverse_chain_moments(steps, mu, sigma)
    assert a.mean().item() == pytest.approx(mean, abs=3e-3)
    assert a.var().item() == pytest.approx(var, rel=2e-2)
    assert mean == pytest.approx(mu, abs=1e-3)  # exact but for the start: N(0, I) instead of q(a_T)
    if steps == 1000:
        assert var == pytest.approx(sigma**2, rel=3e-2)
        assert a.std().item() == pytest.approx(sigma, rel=2e-2)
    else:  # T = 5 under-disperses (var 0.011 against 0.0625): the posterior variance ignores the uncertainty
        assert var < 0.25 * sigma**2  # of the a_0 prediction, an error that vanishes only as T grows


def test_bc_loss_is_zero_mean_noise_regression(agent_and_batch):
    """The loss is the mean squared error to the noise used to corrupt the actions; for the exact predictor of
    point-mass data it is zero."""
    agent, batch, _ = agent_and_batch
    loss = dql.behavior_cloning_loss(agent.actor, batch.obs, batch.actions)
    grads = torch.autograd.grad(loss, list(agent.actor.parameters()))
    assert loss.shape == () and all(g.abs().sum() > 0 for g in grads)
    exact = GaussianDataActor(5, mu=0.5, sigma=0.0)
    assert dql.behavior_cloning_loss(exact, batch.obs, torch.full((B, ACT), 0.5)).item() < 1e-10


def test_bc_loss_draws_every_step_uniformly_and_the_network_sees_it(agent_and_batch):
    """i ~ U{0, ..., T-1} per row, each a_i built with abar_i of its own row's step; the step reaches the network
    (another step, another output)."""
    agent, batch, _ = agent_and_batch
    seen = []
    handle = agent.actor.register_forward_hook(lambda module, args, out: seen.append((args[0], args[1])))
    obs, actions = batch.obs.repeat(200, 1), batch.actions.repeat(200, 1)  # 12,800 rows
    dql.behavior_cloning_loss(agent.actor, obs, actions)
    handle.remove()
    ((a_i, steps),) = seen
    counts = torch.bincount(steps.long().flatten(), minlength=5)
    assert len(counts) == 5 and counts.min() > 0.9 * len(obs) / 5 and counts.max() < 1.1 * len(obs) / 5
    # at the last step a_i is mostly noise, at the first mostly the action: their correlation with it falls with i
    corr = [
        torch.corrcoef(torch.stack([a_i[steps[:, 0] == i, 0], actions[steps[:, 0] == i, 0]]))[0, 1] for i in range(5)
    ]
    assert all(a > b for a, b in zip(corr, corr[1:]))
    a = torch.randn(4, ACT)
    outputs = [agent.actor(a, torch.full((1, 1), float(i)), batch.obs[:4]) for i in range(5)]
    assert all(not torch.allclose(outputs[0], out) for out in outputs[1:])


def test_sampling_calls_the_network_once_per_step_and_backpropagates_through_all(agent_and_batch):
    agent, batch, _ = agent_and_batch
    seen_steps, outputs = [], []

    def hook(module, args, eps_hat):
        seen_steps.append(int(args[1][0].item()))
        eps_hat.retain_grad()
        outputs.append(eps_hat)

    handle = agent.actor.register_forward_hook(hook)
    actions = dql.sample_actions(agent.actor, batch.obs)
    handle.remove()
    assert seen_steps == [4, 3, 2, 1, 0] and actions.shape == (B, ACT)
    assert actions.abs().max() <= 1
    agent.critic.q1(torch.cat([batch.obs, actions], -1)).mean().backward()
    # BPTT: the Q term's gradient reaches the output of every one of the T network calls, the first one included
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in outputs)


def test_schedule_lives_on_the_actor_and_is_not_trained(agent_and_batch):
    agent, _, _ = agent_and_batch
    names = {n for n, _ in agent.actor.named_parameters()}
    assert not any("alphas" in n or "posterior" in n for n in names)
    assert agent.actor.sqrt_alphas_cumprod.dtype == torch.float32 and len(agent.actor.sqrt_alphas_cumprod) == 5
    assert "sqrt_alphas_cumprod" not in agent.actor.state_dict()  # rebuilt from the arguments, not checkpointed
    assert dql.Actor(OBS, ACT, diffusion_steps=7).posterior_mean_coef1.shape == (7,)


def test_update_runs_the_dql_step(agent_and_batch):
    agent, batch, args = agent_and_batch
    before = [p.clone() for p in agent.actor.parameters()]
    metrics = dql.update(agent, batch, args, step=torch.tensor(1))
    assert set(metrics) == {
        "critic_loss",
        "q_data",
        "q_target",
        "critic_grad_norm",
        "actor_loss",
        "bc_loss",
        "q_loss",
        "q_policy",
        "actor_grad_norm",
    }
    assert all(torch.isfinite(v) for v in metrics.values())
    assert metrics["actor_loss"].item() == pytest.approx(
        metrics["bc_loss"].item() + args.eta * metrics["q_loss"].item(), rel=1e-5
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))


def test_the_q_term_is_a_coin_flipped_head_over_the_other_heads_constant_mean_abs_q(agent_and_batch):
    """DQL's actor loss: L_DBC - eta * Q_i / E|Q_j| at the chain's actions, (i, j) by a coin flip, E|Q_j| a constant:
    its value and the gradient it sends to the policy."""
    agent, batch, args = agent_and_batch
    args = dataclasses.replace(args, eta=0.3)
    check_coin_flipped_q_term(
        dql, agent, batch, args, lambda: dql.behavior_cloning_loss(agent.actor, batch.obs, batch.actions)
    )


def test_presets_are_dqls_table():
    args = dql.parse_args(["--env-id", "antmaze-medium-play-v2"])
    assert (args.eta, args.actor_lr, args.max_q_backup, args.reward_mode, args.grad_norm, args.total_steps) == (
        2.0,
        1e-3,
        True,
        "cql_antmaze",
        2.0,
        1_000_000,
    )
    args = dql.parse_args(["--env-id", "pen-human-v1", "--eta", "0.3", "--diffusion-steps", "10"])
    assert (args.eta, args.actor_lr, args.reward_mode, args.diffusion_steps) == (0.3, 3e-5, "standardize", 10)
    assert dql.parse_args(["--env-id", "walker2d-medium-v2"]).grad_norm == 1.0


# DQL's main.py, row by row (../shared/reference/reference-impls.md, 2.4): lr, eta, max-Q backup, reward_tune
# ('no' is raw, 'normalize' a z-score), epochs of 1000 steps, gradient norm; its AntMaze rows are for the -v0 files
DQL_MAIN_PY = {
    "halfcheetah-medium-v2": (3e-4, 1.0, False, "raw", 2000, 9.0),
    "hopper-medium-v2": (3e-4, 1.0, False, "raw", 2000, 9.0),
    "walker2d-medium-v2": (3e-4, 1.0, False, "raw", 2000, 1.0),
    "halfcheetah-medium-replay-v2": (3e-4, 1.0, False, "raw", 2000, 2.0),
    "hopper-medium-replay-v2": (3e-4, 1.0, False, "raw", 2000, 4.0),
    "walker2d-medium-replay-v2": (3e-4, 1.0, False, "raw", 2000, 4.0),
    "halfcheetah-medium-expert-v2": (3e-4, 1.0, False, "raw", 2000, 7.0),
    "hopper-medium-expert-v2": (3e-4, 1.0, False, "raw", 2000, 5.0),
    "walker2d-medium-expert-v2": (3e-4, 1.0, False, "raw", 2000, 5.0),
    "antmaze-umaze-v2": (3e-4, 0.5, False, "cql_antmaze", 1000, 2.0),
    "antmaze-umaze-diverse-v2": (3e-4, 2.0, True, "cql_antmaze", 1000, 3.0),
    "antmaze-medium-play-v2": (1e-3, 2.0, True, "cql_antmaze", 1000, 2.0),
    "antmaze-medium-diverse-v2": (3e-4, 3.0, True, "cql_antmaze", 1000, 1.0),
    "antmaze-large-play-v2": (3e-4, 4.5, True, "cql_antmaze", 1000, 10.0),
    "antmaze-large-diverse-v2": (3e-4, 3.5, True, "cql_antmaze", 1000, 7.0),
    "pen-human-v1": (3e-5, 0.15, False, "standardize", 1000, 7.0),
    "pen-cloned-v1": (3e-5, 0.1, False, "standardize", 1000, 8.0),
    "kitchen-partial-v0": (3e-4, 0.005, False, "raw", 1000, 10.0),
    "kitchen-mixed-v0": (3e-4, 0.005, False, "raw", 1000, 10.0),
}


@pytest.mark.parametrize("env_id", DQL_MAIN_PY)
def test_every_preset_of_a_dataset_in_dqls_table_is_its_row(env_id):
    """DQL's presets are its main.py's rows; OFQL's ("other hyperparameters as in DQL", Appendix B) share their
    gradient norm, max-Q backup, reward rule and steps, with Adam's 3e-4 everywhere and OFQL's own eta."""
    lr, eta, max_q, reward_mode, epochs, grad_norm = DQL_MAIN_PY[env_id]
    args = dql.parse_args(["--env-id", env_id])
    got = (args.actor_lr, args.eta, args.max_q_backup, args.reward_mode, args.total_steps, args.grad_norm)
    assert got == (lr, eta, max_q, reward_mode, epochs * 1000, grad_norm)
    assert args.eval_episodes == (10 if env_id.startswith(("halfcheetah", "hopper", "walker2d")) else 100)
    o = ofql.parse_args(["--env-id", env_id])
    assert (o.max_q_backup, o.reward_mode, o.total_steps, o.grad_norm, o.actor_lr) == (*got[2:], 3e-4)


# OGBench's sub-goals per task (its relabelled rewards run from -n to 0): docs/presets.md's rule for eta
OGBENCH_SUBGOALS = {"antmaze": 1, "humanoidmaze": 1, "antsoccer": 1, "cube-single": 1, "cube-double": 2, "scene": 5}
OGBENCH_SUBGOALS |= {"puzzle-3x3": 9, "puzzle-4x4": 16}


@pytest.mark.parametrize("env_id", sorted(set(offline_data.OGBENCH_IDS.values())))
def test_ogbench_eta_is_the_grid_value_nearest_fqls_q_weight(env_id):
    """eta* = n / ((1 - gamma) alpha) for FQL's alpha and gamma and the task's n sub-goals, taken to the nearest value
    on a log scale: of the OFQL paper's grid for ofql.py, of the etas in DQL's table for dql.py."""
    f = fql.parse_args(["--env-id", env_id])
    n = next(v for k, v in OGBENCH_SUBGOALS.items() if env_id.startswith(k))
    target = n / ((1 - f.gamma) * f.alpha)
    for script, grid in ((ofql, (0.001, 0.01, 0.1, 0.3, 0.5)), (dql, {row[1] for row in DQL_MAIN_PY.values()})):
        nearest = min(grid, key=lambda eta: abs(np.log(eta / target)))
        assert script.parse_args(["--env-id", env_id]).eta == nearest, script.__name__


def test_max_q_backup_takes_the_max_over_several_next_actions_of_the_ema_policy(agent_and_batch):
    """With --max-q-backup each head takes the max over num_backup_actions next actions (of the EMA policy), then the
    min of the heads; without it, one next action. The target networks differ from the trained ones here."""
    agent, batch, args = agent_and_batch
    move_targets_apart(agent)
    for max_q in (False, True):
        a = dataclasses.replace(args, max_q_backup=max_q, num_backup_actions=4)
        torch.manual_seed(5)
        _, metrics = dql.critic_loss_fn(agent, batch, a)
        torch.manual_seed(5)
        k = 4 if max_q else 1
        next_obs = batch.next_obs.repeat_interleave(k, 0)
        with torch.no_grad():
            q1, q2 = agent.critic_target(next_obs, dql.sample_actions(agent.actor_ema, next_obs))
        next_q = torch.min(q1.view(B, k).amax(1), q2.view(B, k).amax(1)).unsqueeze(1)
        expected = batch.rewards + 0.99 * (1 - batch.dones) * next_q
        torch.testing.assert_close(metrics["q_target"], expected.mean())
        q1_data, q2_data = agent.critic(batch.obs, batch.actions)  # the loss: both heads' squared errors, summed
        loss = ((q1_data - expected) ** 2).mean() + ((q2_data - expected) ** 2).mean()
        torch.testing.assert_close(metrics["critic_loss"], loss)
        if max_q:  # the max over the next actions matters here: their min gives another target
            low = torch.min(q1.view(B, k).amin(1), q2.view(B, k).amin(1)).unsqueeze(1)
            assert (metrics["q_target"] - (batch.rewards + 0.99 * (1 - batch.dones) * low).mean()).abs() > 1e-3


class RecordingActor(GaussianDataActor):
    """The exact predictor of a point mass, recording the a_i it is called on."""

    def __init__(self, mu):
        super().__init__(5, mu, 0.0)
        self.inputs = []

    def forward(self, a_t, t, obs):
        self.inputs.append(a_t.clone())
        return super().forward(a_t, t, obs)


def test_the_a0_prediction_is_clipped_to_the_action_range_at_every_step():
    """Data at a* = 3, outside [-1, 1]: every a_0 prediction is 3, clipped to 1, so the chain follows the posterior
    mean toward 1 (E[a_{i-1}] = c1_i * 1 + c2_i * E[a_i]); unclipped it would head for 3 and only the final clamp
    would hide it."""
    torch.manual_seed(0)
    actor = RecordingActor(mu=3.0)
    dql.sample_actions(actor, torch.zeros(200_000, OBS))
    c = dql.ddpm_schedule(dql.vp_beta_schedule(5))
    mean = 0.0
    for i, a_i in zip(reversed(range(5)), actor.inputs):
        assert a_i.mean().item() == pytest.approx(mean, abs=0.01), i
        mean = float(c["posterior_mean_coef1"][i] * 1.0 + c["posterior_mean_coef2"][i] * mean)
    assert 0.5 < actor.inputs[-1].mean().item() < 1.2  # a_1 near the clip, far from 3


@pytest.mark.parametrize("env_id", ["door-cloned-v1", "hammer-cloned-v1", "relocate-cloned-v1"])
def test_adroit_datasets_outside_dqls_table_take_pen_cloneds_row(env_id):
    """door, hammer and relocate are not in DQL's main.py: each takes pen-cloned's row whole (our rule)."""
    flags = ("actor_lr", "eta", "max_q_backup", "reward_mode", "total_steps", "grad_norm", "eval_episodes")
    args, pen = dql.parse_args(["--env-id", env_id]), dql.parse_args(["--env-id", "pen-cloned-v1"])
    assert [getattr(args, f) for f in flags] == [getattr(pen, f) for f in flags]


def test_the_defaults_are_dqls():
    """DQL's eta and its T = 5 denoising steps, for datasets without a preset."""
    assert (dql.Args().eta, dql.Args().diffusion_steps) == (1.0, 5)
