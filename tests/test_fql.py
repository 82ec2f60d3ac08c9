"""fql.py: the Euler flow against known velocity fields, the stop-gradient distillation target, which parameters
each loss term reaches, the critic target's Q aggregation, FQL's networks and presets."""

import copy

import numpy as np
import pytest
import torch

import dql
import fql
import ofql
from conftest import agent_and_random_batch, move_targets_apart

OBS, ACT, B = 11, 3, 64


@pytest.fixture
def agent_and_batch():
    return agent_and_random_batch(fql, OBS, ACT, B)


def test_euler_flow_follows_a_straight_path_exactly():
    """The flow that carries z to a fixed point a* along the straight path has velocity (a* - a)/(1 - t), which is
    constant along the path, so Euler steps are exact for any step count: the endpoint is a*."""
    torch.manual_seed(0)
    z, target = torch.randn(500, ACT), torch.rand(500, ACT) * 1.6 - 0.8
    for steps in (1, 3, 10):
        end = fql.euler_flow(lambda a, t: (target - a) / (1 - t), z, steps)
        torch.testing.assert_close(end, target)


def test_euler_flow_integrates_a_time_dependent_field():
    """da/dt = 2 t a from t = 0 has the exact endpoint a(1) = e * a(0); Euler's product prod(1 + 2 t_i / N) is known
    in closed form for each N, and the error shrinks like 1/N."""
    z = torch.linspace(-0.3, 0.3, 7, dtype=torch.float64).unsqueeze(-1)
    errors = []
    for steps in (10, 100, 1000):
        end = fql.euler_flow(lambda a, t: 2 * t * a, z, steps)
        euler_product = torch.prod(1 + 2 * torch.arange(steps, dtype=torch.float64) / steps / steps)
        torch.testing.assert_close(end, z * euler_product)
        errors.append((end - z * torch.e).abs().max().item())
    assert errors[0] > 8 * errors[1] > 64 * errors[2] and errors[2] < 2e-3


def test_euler_flow_clips_to_the_action_range():
    end = fql.euler_flow(lambda a, t: torch.full_like(a, 5.0), torch.zeros(4, ACT), 10)
    assert torch.equal(end, torch.ones(4, ACT))


def test_flow_bc_loss_uses_fqls_time_convention(agent_and_batch):
    """Noise at t = 0, data at t = 1, target velocity a - z: a velocity field that returns the exact conditional
    velocity for point-mass data has zero loss, and the loss reaches only the BC flow's parameters."""
    agent, batch, _ = agent_and_batch
    loss = fql.behavior_cloning_loss(agent.actor, batch.obs, batch.actions)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.flow.parameters())
    assert all(p.grad is None for p in agent.actor.onestep.parameters())

    class PointMassFlow(fql.Actor):
        def velocity(self, a_t, t, obs):  # data at 0.4: a_t = (1 - t) z + 0.4 t, so a - z = (0.4 - a_t) / (1 - t)
            return (0.4 - a_t) / (1 - t)

    exact = PointMassFlow(OBS, ACT)
    assert fql.behavior_cloning_loss(exact, batch.obs, torch.full((B, ACT), 0.4)).item() < 1e-9


def test_distillation_target_carries_no_gradient(agent_and_batch):
    agent, batch, args = agent_and_batch
    z = torch.randn(B, ACT)
    target = fql.distillation_target(agent.actor, batch.obs, z, args.flow_steps)
    assert not target.requires_grad and target.abs().max() <= 1
    calls = []
    handle = agent.actor.flow.register_forward_hook(lambda *a: calls.append(1))
    fql.distillation_target(agent.actor, batch.obs, z, args.flow_steps)
    handle.remove()
    assert len(calls) == args.flow_steps == 10
    torch.testing.assert_close(target, fql.euler_flow(lambda a, t: agent.actor.velocity(a, t, batch.obs), z, 10))


def test_each_actor_loss_term_reaches_only_its_parameters(agent_and_batch):
    """Distillation and Q terms train the one-step policy only; the flow-matching term trains the BC flow only."""
    agent, batch, args = agent_and_batch
    actor = agent.actor
    z = torch.randn(B, ACT)
    actions = actor(z, batch.obs)
    distill = torch.nn.functional.mse_loss(actions, fql.distillation_target(actor, batch.obs, z, args.flow_steps))
    q = sum(agent.critic(batch.obs, actions.clamp(-1, 1))) / 2
    bc = fql.behavior_cloning_loss(actor, batch.obs, batch.actions)
    flow, onestep = list(actor.flow.parameters()), list(actor.onestep.parameters())
    for term, reaches, spared in ((distill, onestep, flow), (q.mean(), onestep, flow), (bc, flow, onestep)):
        grads = torch.autograd.grad(term, flow + onestep, allow_unused=True, retain_graph=True)
        by_param = dict(zip(map(id, flow + onestep), grads))
        assert all(by_param[id(p)] is not None and by_param[id(p)].abs().sum() > 0 for p in reaches)
        assert all(by_param[id(p)] is None for p in spared)


def test_actor_loss_is_fqls_sum_and_update_leaves_the_critic_to_its_own_loss(agent_and_batch):
    agent, batch, args = agent_and_batch
    loss, m = fql.actor_loss_fn(agent, batch, args)
    assert loss.item() == pytest.approx((m["bc_loss"] + args.alpha * m["distill_loss"] + m["q_loss"]).item(), rel=1e-5)
    torch.manual_seed(0)
    m = fql.actor_loss_fn(agent, batch, args)[1]
    torch.manual_seed(0)  # the same draws: the BC term is the flow-matching loss of the batch's states and actions
    torch.testing.assert_close(m["bc_loss"], fql.behavior_cloning_loss(agent.actor, batch.obs, batch.actions))
    raw = fql.actor_loss_fn(agent, batch, fql.Args(normalize_q=False))[1]
    assert raw["q_loss"].item() == pytest.approx(-raw["q_policy"].item(), rel=1e-5)
    with torch.no_grad():  # all Q values positive: the normalised Q term -E[Q] / E|Q| is exactly -1
        agent.critic.q1[-1].bias += 100.0
        agent.critic.q2[-1].bias += 100.0
    assert fql.actor_loss_fn(agent, batch, args)[1]["q_loss"].item() == pytest.approx(-1.0, rel=1e-6)

    # the critic step sees only the TD loss: its change equals that of a critic trained on the TD loss alone
    twin = fql.make_agent(OBS, ACT, args, torch.device("cpu"))
    twin.actor.load_state_dict(agent.actor.state_dict())
    twin.critic.load_state_dict(agent.critic.state_dict())
    twin.critic_target.load_state_dict(agent.critic_target.state_dict())
    torch.manual_seed(1)
    fql.update(agent, batch, args, step=torch.tensor(1))
    torch.manual_seed(1)
    td_loss, _ = fql.critic_loss_fn(twin, batch, args)
    fql.optimizer_step(twin.critic_optimizer, twin.critic, td_loss, args.grad_norm)
    for a, b in zip(agent.critic.parameters(), twin.critic.parameters()):
        torch.testing.assert_close(a, b)


def test_the_target_critic_moves_toward_the_critic_of_the_losses_not_the_stepped_one(agent_and_batch):
    """FQL's `target_update` reads the critic's parameters before the Adam step of the same update."""
    agent, batch, args = agent_and_batch
    move_targets_apart(agent)
    agent.critic_optimizer.param_groups[0]["lr"] = 0.01  # a step the target's tau * 0.01 shows above rounding
    critic = [p.clone() for p in agent.critic.parameters()]
    target = [p.clone() for p in agent.critic_target.parameters()]
    fql.update(agent, batch, args, step=torch.tensor(1))
    assert not any(torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))  # the critic took a step
    for p_target, p_old, p in zip(agent.critic_target.parameters(), target, critic):
        torch.testing.assert_close(p_target, p_old + args.tau * (p - p_old))


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_critic_target_aggregates_the_heads_of_the_one_step_policy(agent_and_batch, q_agg):
    agent, batch, _ = agent_and_batch
    move_targets_apart(agent)
    args = fql.Args(q_agg=q_agg)
    torch.manual_seed(3)
    _, m = fql.critic_loss_fn(agent, batch, args)
    torch.manual_seed(3)
    with torch.no_grad():
        q1, q2 = agent.critic_target(batch.next_obs, fql.sample_actions(agent.actor, batch.next_obs))
    next_q = (q1 + q2) / 2 if q_agg == "mean" else torch.min(q1, q2)
    expected = batch.rewards + 0.99 * (1 - batch.dones) * next_q
    assert m["q_target"].item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_networks_are_fqls(agent_and_batch):
    agent, batch, _ = agent_and_batch
    linears = [m for m in agent.critic.q1 if isinstance(m, torch.nn.Linear)]
    assert [layer.out_features for layer in linears] == [512, 512, 512, 512, 1]
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in agent.critic.q1) == 4
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in agent.actor.modules())
    assert all(layer.bias.abs().sum() == 0 for layer in linears)  # Flax's zero bias; Glorot-uniform weights
    bound = (6 / (linears[1].in_features + linears[1].out_features)) ** 0.5
    assert linears[1].weight.abs().max() <= bound and linears[1].weight.abs().max() > 0.95 * bound
    assert agent.actor(torch.randn(B, ACT), batch.obs).shape == (B, ACT)
    assert agent.actor.velocity(torch.randn(B, ACT), torch.rand(B, 1), batch.obs).shape == (B, ACT)
    assert fql.sample_actions(agent.actor, batch.obs).abs().max() <= 1


def test_presets_follow_fqls_flags():
    args = fql.parse_args(["--env-id", "pen-human-v1"])
    assert (args.alpha, args.q_agg, args.normalize_q, args.total_steps, args.reward_mode) == (
        10000.0,
        "min",
        False,
        500_000,
        "raw",
    )
    args = fql.parse_args(["--env-id", "antmaze-large-play-v2", "--alpha", "30"])
    assert (args.alpha, args.q_agg, args.reward_mode, args.grad_norm, args.num_candidates) == (
        30.0,
        "mean",
        "iql_antmaze",
        0.0,
        1,
    )
    assert fql.parse_args(["--env-id", "hopper-medium-v2"]).normalize_q


# FQL's README, its exact command lines (../shared/reference/reference-impls.md, 3.4): alpha, q_agg and, for OGBench,
# the discount; D4RL runs 500k steps, OGBench's state-based tasks 1M, both without the Q term's normaliser
FQL_README = {
    "antmaze-umaze-v2": (10, "mean"),
    "antmaze-umaze-diverse-v2": (10, "mean"),
    "antmaze-medium-play-v2": (10, "mean"),
    "antmaze-medium-diverse-v2": (10, "mean"),
    "antmaze-large-play-v2": (3, "mean"),
    "antmaze-large-diverse-v2": (3, "mean"),
    "pen-human-v1": (10000, "min"),
    "pen-cloned-v1": (10000, "min"),
    "door-cloned-v1": (30000, "min"),
    "hammer-cloned-v1": (10000, "min"),
    "relocate-cloned-v1": (30000, "min"),
    "antmaze-large-navigate-singletask-v0": (10, "min", 0.99),
    "antmaze-giant-navigate-singletask-v0": (10, "min", 0.995),
    "humanoidmaze-medium-navigate-singletask-v0": (30, "mean", 0.995),
    "humanoidmaze-large-navigate-singletask-v0": (30, "mean", 0.995),
    "antsoccer-arena-navigate-singletask-v0": (10, "mean", 0.995),
    "cube-single-play-singletask-v0": (300, "mean", 0.99),
    "cube-double-play-singletask-v0": (300, "mean", 0.99),
    "scene-play-singletask-v0": (300, "mean", 0.99),
    "puzzle-3x3-play-singletask-v0": (1000, "mean", 0.99),
    "puzzle-4x4-play-singletask-v0": (1000, "mean", 0.99),
}


@pytest.mark.parametrize("env_id", FQL_README)
def test_every_preset_of_a_task_in_fqls_readme_is_its_command_line(env_id):
    alpha, q_agg, *gamma = FQL_README[env_id]
    args = fql.parse_args(["--env-id", env_id])
    assert (args.alpha, args.q_agg, args.normalize_q) == (alpha, q_agg, False)
    assert (args.gamma, args.total_steps) == ((gamma[0], 1_000_000) if gamma else (0.99, 500_000))


MUJOCO_AND_KITCHEN = [e for e in fql.PRESETS if e.startswith(("halfcheetah", "hopper", "walker2d", "kitchen"))]


@pytest.mark.parametrize("env_id", MUJOCO_AND_KITCHEN)
def test_mujoco_and_kitchen_presets_are_inside_the_papers_alpha_grid(env_id):
    """Appendix N: the OFQL authors ran FQL on MuJoCo and Kitchen with the normalised Q term, alpha from this grid."""
    args = fql.parse_args(["--env-id", env_id])
    assert args.alpha in (0.03, 0.1, 0.3, 1.0, 3.0, 10.0) and args.normalize_q


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_max_q_backup_takes_the_max_over_several_next_actions(agent_and_batch, q_agg):
    """With --max-q-backup each head takes the max over num_backup_actions next actions of the one-step policy, then
    the heads are aggregated (`q_agg`)."""
    agent, batch, _ = agent_and_batch
    move_targets_apart(agent)
    args = fql.Args(q_agg=q_agg, max_q_backup=True, num_backup_actions=4)
    torch.manual_seed(3)
    _, m = fql.critic_loss_fn(agent, batch, args)
    torch.manual_seed(3)
    next_obs = batch.next_obs.repeat_interleave(4, 0)
    with torch.no_grad():
        q1, q2 = agent.critic_target(next_obs, fql.sample_actions(agent.actor, next_obs))
    q1, q2 = q1.view(B, 4).amax(1, keepdim=True), q2.view(B, 4).amax(1, keepdim=True)
    next_q = (q1 + q2) / 2 if q_agg == "mean" else torch.min(q1, q2)
    expected = batch.rewards + 0.99 * (1 - batch.dones) * next_q
    assert m["q_target"].item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_actor_loss_distils_onto_the_flow_steps_euler_target(agent_and_batch):
    """The distillation term of actor_loss_fn is |mu(z; s) - flow(z; s)|^2 with the BC flow integrated in flow_steps
    Euler steps, the same z as the one-step action (regenerated here from the same seed)."""
    agent, batch, args = agent_and_batch
    # a velocity field whose Euler integral depends on the step count (the initial network's is nearly constant)
    agent.actor.velocity = lambda a_t, t, obs: torch.sin(4.0 * t) - 2.0 * t * a_t + 0.1 * obs[:, :ACT]
    for flow_steps in (10, 3):
        a = fql.Args(flow_steps=flow_steps)
        torch.manual_seed(4)
        _, m = fql.actor_loss_fn(agent, batch, a)
        torch.manual_seed(4)
        fql.behavior_cloning_loss(agent.actor, batch.obs, batch.actions)  # the same draws, in the same order
        z = torch.randn_like(batch.actions)
        with torch.no_grad():
            actions = agent.actor(z, batch.obs)
            flow = lambda a_t, t: agent.actor.velocity(a_t, t, batch.obs)
            expected = torch.nn.functional.mse_loss(actions, fql.euler_flow(flow, z, flow_steps))
            one_step = torch.nn.functional.mse_loss(actions, fql.euler_flow(flow, z, 1))
        assert m["distill_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        assert abs(m["distill_loss"].item() - one_step.item()) > 0.05 * one_step.item()  # 1 step: another target


def test_actor_loss_sends_the_q_gradient_to_the_one_step_policy_only(agent_and_batch):
    """Another critic changes the one-step policy's gradient of actor_loss_fn and leaves the BC flow's unchanged."""
    agent, batch, args = agent_and_batch

    def gradients():
        agent.actor.zero_grad()
        torch.manual_seed(4)
        fql.actor_loss_fn(agent, batch, args)[0].backward()
        return [[p.grad.clone() for p in net.parameters()] for net in (agent.actor.flow, agent.actor.onestep)]

    (flow_a, onestep_a), _ = gradients(), None
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.mul_(-2.0)
    flow_b, onestep_b = gradients()
    assert all(torch.equal(a, b) for a, b in zip(flow_a, flow_b))
    assert not all(torch.allclose(a, b) for a, b in zip(onestep_a, onestep_b))


def test_the_q_term_is_the_heads_mean_at_the_clipped_one_step_action(agent_and_batch):
    """-E[(Q1 + Q2) / 2] at clip(mu(z; s), -1, 1), over the constant E|Q| (--normalize-q), and the gradient it sends to
    the one-step policy: with a policy whose actions leave [-1, 1], so that the clip matters."""
    agent, batch, args = agent_and_batch
    with torch.no_grad():
        agent.actor.onestep[-1].weight.mul_(100.0)
        agent.critic.q2[-1].bias.add_(5.0)  # heads apart: one head alone gives another value
    torch.manual_seed(4)
    _, m = fql.actor_loss_fn(agent, batch, args)
    torch.manual_seed(4)
    fql.behavior_cloning_loss(agent.actor, batch.obs, batch.actions)  # the same draws, in the same order
    actions = agent.actor(torch.randn_like(batch.actions), batch.obs)
    assert (actions.abs() > 1).float().mean() > 0.2
    assert fql.sample_actions(agent.actor, batch.obs).abs().max() <= 1.0  # the critic's and evaluation's actions
    q = sum(agent.critic(batch.obs, actions.clamp(-1.0, 1.0))) / 2
    expected = -q.mean() / q.abs().mean().item()
    torch.testing.assert_close(m["q_loss"], expected)
    params = list(agent.actor.onestep.parameters())
    for got, want in zip(torch.autograd.grad(m["q_loss"], params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want)


def test_the_critic_loss_is_the_mean_of_the_heads_squared_errors(agent_and_batch):
    agent, batch, args = agent_and_batch
    move_targets_apart(agent)
    torch.manual_seed(3)
    loss, m = fql.critic_loss_fn(agent, batch, args)
    torch.manual_seed(3)
    with torch.no_grad():
        next_q = sum(agent.critic_target(batch.next_obs, fql.sample_actions(agent.actor, batch.next_obs))) / 2
    target = batch.rewards + args.gamma * (1 - batch.dones) * next_q
    q1, q2 = agent.critic(batch.obs, batch.actions)
    torch.testing.assert_close(loss, ((q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()) / 2)


def test_the_update_trains_on_actions_clipped_as_fqls_loaders_clip_them(agent_and_batch):
    """FQL clips the data's actions to [-1 + 1e-5, 1 - 1e-5]: a batch with actions beyond that range trains exactly as
    the same batch clipped (losses and new weights), and differently from the batch with the actions inside it."""
    agent, batch, args = agent_and_batch
    wide = batch._replace(actions=batch.actions * 1.5)
    runs = []
    for actions in (wide.actions, wide.actions.clamp(-1 + 1e-5, 1 - 1e-5), batch.actions):
        a = copy.deepcopy(agent)
        torch.manual_seed(0)
        metrics = fql.update(a, batch._replace(actions=actions), args, torch.tensor(1))
        runs.append((metrics["critic_loss"], metrics["bc_loss"], list(a.actor.parameters())))
    assert (batch.actions.abs() * 1.5 > 1).any()
    for x, y in zip(runs[0][:2] + tuple(runs[0][2]), runs[1][:2] + tuple(runs[1][2])):
        assert torch.equal(x, y)
    assert not torch.equal(runs[0][0], runs[2][0])


def test_the_critics_layer_norms_have_flaxs_epsilon(agent_and_batch):
    """FQL's critics normalise with Flax's LayerNorm, whose epsilon is 1e-6 (PyTorch's default is 1e-5)."""
    agent, _, _ = agent_and_batch
    norms = [m for m in agent.critic.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 8 and all(m.eps == 1e-6 for m in norms)


def test_the_defaults_are_fqls():
    """FQL's distillation weight, Euler steps and mean of the target heads, for datasets without a preset."""
    args = fql.Args()
    assert (args.alpha, args.flow_steps, args.q_agg) == (10.0, 10, "mean")


@pytest.mark.parametrize("env_id", MUJOCO_AND_KITCHEN)
def test_mujoco_and_kitchen_alpha_is_the_grid_value_nearest_one_over_ofqls_eta_with_ofqls_budget(env_id):
    """docs/presets.md's rule for the datasets FQL never ran: alpha the grid value nearest 1 / eta of ofql.py's preset
    on a log scale, OFQL's step budget, and DQL's evaluation protocol (the three scripts scored alike)."""
    args, o, d = (m.parse_args(["--env-id", env_id]) for m in (fql, ofql, dql))
    nearest = min((0.03, 0.1, 0.3, 1.0, 3.0, 10.0), key=lambda alpha: abs(np.log(alpha * o.eta)))
    assert (args.alpha, args.total_steps) == (nearest, o.total_steps)
    assert (args.eval_episodes, args.eval_every) == (o.eval_episodes, o.eval_every) == (d.eval_episodes, d.eval_every)


def test_flow_bc_loss_draws_a_uniform_time_and_standard_normal_noise_per_row():
    """Each row has its own t ~ U[0, 1] and its own noise z ~ N(0, I), read back from what the velocity sees for
    point-mass data at 0.4: a_t = (1 - t) z + 0.4 t."""
    seen = {}

    class RecordingFlow(fql.Actor):
        def velocity(self, a_t, t, obs):
            seen.update(a_t=a_t, t=t)
            return torch.zeros_like(a_t)

    torch.manual_seed(0)
    n = 4096
    fql.behavior_cloning_loss(RecordingFlow(OBS, ACT), torch.zeros(n, OBS), torch.full((n, ACT), 0.4))
    t = seen["t"]
    z = ((seen["a_t"] - 0.4 * t) / (1 - t))[t[:, 0] < 0.9]  # rows far from t = 1, where z is read back exactly
    assert t.shape == (n, 1) and t.min() >= 0 and t.max() <= 1 and t.unique().numel() > n // 2
    assert abs(t.mean().item() - 0.5) < 0.02 and abs(t.var().item() - 1 / 12) < 0.01
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
