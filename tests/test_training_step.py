"""The fast path of the three scripts (TrainStep, ActionSelector): what makes the training iteration and the policy
capturable as CUDA graphs, checked on the CPU (no value read back to the host, the softmax(Q) candidate draw, Adam's
capturable mode set and undone across checkpoints), and, where CUDA is present, that the captured graphs compute
what the eager code computes."""
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dql
import fql
import ofql

MODULES = (ofql, dql, fql)
OBS, ACT = 11, 3
aten = torch.ops.aten
# operators that read a tensor's value on the host (.item(), bool(t), Python control flow on a tensor) or whose
# output shape depends on the data: each one is a device-to-host sync on CUDA and cannot be captured
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
              aten.repeat_interleave.Tensor, aten._unique2.default, aten.unique_consecutive.default,
              aten.multinomial.default}  # multinomial checks its probabilities on the host


class RecordHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def small_setup(module, device, **overrides):
    torch.manual_seed(0)
    args = dataclasses.replace(module.Args(), batch_size=32, ema_start=4, ema_every=2, **overrides) \
        if module is not fql else dataclasses.replace(module.Args(), batch_size=32, **overrides)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(500, OBS, generator=g)
    data = {"observations": obs.numpy(), "next_observations": (obs + 0.1).numpy(),
            "actions": (torch.rand(500, ACT, generator=g) * 2 - 1).numpy(), "rewards": torch.randn(500, generator=g).numpy(),
            "terminals": (torch.rand(500, generator=g) < 0.05).numpy()}
    return args, module.make_agent(OBS, ACT, args, device), module.OfflineBuffer(data, device)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_an_iteration_never_reads_a_value_back_to_the_host(module):
    args, agent, buffer = small_setup(module, torch.device("cpu"), max_q_backup=True, grad_norm=1.0)
    # Adam's CPU path reads its step count with .item(); its fused path does not (on CUDA, capturable Adam is used)
    agent.actor_optimizer = torch.optim.Adam(agent.actor.parameters(), lr=args.actor_lr, fused=True)
    agent.critic_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=args.critic_lr, fused=True)
    train_step = module.TrainStep(agent, buffer, args, torch.device("cpu"), last_step=0)
    with RecordHostReads() as recorder:
        for _ in range(6):  # covers the EMA branches: before ema_start, on and off the EMA schedule
            train_step()
    assert recorder.found == []

    with RecordHostReads() as recorder:  # the recorder does see one: Python control flow on a tensor
        assert bool(train_step()["critic_loss"] >= 0)
    assert recorder.found == ["aten._local_scalar_dense.default"]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_choosing_an_action_never_reads_a_value_back_to_the_host(module):
    args, agent, _ = small_setup(module, torch.device("cpu"))
    with RecordHostReads() as recorder:
        for k in (1, 50):
            module.ActionSelector(agent, k, 10, OBS, torch.device("cpu"), use_graph=False)(torch.randn(10, OBS))
    assert recorder.found == []


def test_the_candidate_is_drawn_from_softmax_q():
    """select_action's draw (argmax of q - log E, E ~ Exp(1), which needs no host read) against softmax(q): with
    q = 3 a_0 and the candidates regenerated from the same seed, the best candidate of each state is picked as often
    as softmax(q) says, summed over 20,000 states (a plain argmax or a wrong temperature is many sigmas off)."""

    class Linear(torch.nn.Module):
        def q_min(self, obs, actions):
            return 3.0 * actions[:, :1]

    _, agent, _ = small_setup(ofql, torch.device("cpu"))
    agent = dataclasses.replace(agent, critic_target=Linear())
    obs, k = torch.randn(20_000, OBS), 3
    torch.manual_seed(1)
    chosen = ofql.select_action(agent, obs, k)
    torch.manual_seed(1)  # the same noise: the same candidates
    candidates = ofql.sample_actions(agent.actor, obs.repeat_interleave(k, dim=0)).view(len(obs), k, -1)
    picked = (candidates == chosen[:, None]).all(dim=-1)
    assert (picked.sum(dim=1) >= 1).all()  # the returned action is one of the candidates
    distinct = picked.sum(dim=1) == 1  # (clipping to [-1, 1] makes a few candidates equal)
    assert distinct.float().mean() > 0.9
    picked, candidates = picked[distinct], candidates[distinct]
    p = torch.softmax(3.0 * candidates[:, :, 0], dim=-1)
    best = p.argmax(dim=1, keepdim=True)
    expected, got = p.gather(1, best).sum().item(), picked.gather(1, best).sum().item()
    sigma = (p.gather(1, best) * (1 - p.gather(1, best))).sum().item() ** 0.5
    assert abs(got - expected) < 4 * sigma and len(p) - expected > 40 * sigma
    # the rule is torch.multinomial's draw for one sample, number for number (minus its host-side check)
    q = torch.randn(1000, 7)
    torch.manual_seed(2)
    reference = torch.multinomial(torch.softmax(q, dim=-1), 1).squeeze(-1)
    torch.manual_seed(2)
    assert torch.equal((q - torch.empty_like(q).exponential_().log()).argmax(dim=-1), reference)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_a_checkpoint_of_the_cuda_graph_path_resumes_on_the_cpu(module, tmp_path):
    """A run with the fast path saves Adam in capturable mode; load_state_dict brings that mode back, and CPU Adam
    refuses it. TrainStep sets the mode of the run that resumes, and the resumed run continues exactly."""
    args, agent, buffer = small_setup(module, torch.device("cpu"))
    train_step = module.TrainStep(agent, buffer, args, torch.device("cpu"), last_step=0)
    for _ in range(3):
        train_step()
    for optimizer in (agent.actor_optimizer, agent.critic_optimizer):
        module.set_capturable(optimizer, True)  # as a CUDA run leaves them (steps on the parameters' device)
    module.save_checkpoint(str(tmp_path / "checkpoint.pt"), agent, 3, [], 0.0)

    _, resumed, _ = small_setup(module, torch.device("cpu"))
    module.load_checkpoint(str(tmp_path / "checkpoint.pt"), resumed)
    assert resumed.actor_optimizer.param_groups[0]["capturable"]
    with pytest.raises(AssertionError, match="capturable"):  # what happens without TrainStep's reset
        module.optimizer_step(resumed.critic_optimizer, resumed.critic, module.critic_loss_fn(resumed, buffer.sample(8), args)[0], 0)
    module.load_checkpoint(str(tmp_path / "checkpoint.pt"), resumed)
    resumed_step = module.TrainStep(resumed, buffer, args, torch.device("cpu"), last_step=3)
    train_step = module.TrainStep(agent, buffer, args, torch.device("cpu"), last_step=3)
    assert not resumed.actor_optimizer.param_groups[0]["capturable"]
    assert all(s["step"].device.type == "cpu" for s in resumed.actor_optimizer.state.values())
    torch.manual_seed(5)
    for _ in range(3):
        expected = train_step()
    torch.manual_seed(5)
    for _ in range(3):
        got = resumed_step()
    assert int(resumed_step.step) == 6
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    for a, b in zip(agent.actor.parameters(), resumed.actor.parameters()):
        assert torch.equal(a, b)


def test_the_fast_path_is_off_without_cuda():
    args, agent, buffer = small_setup(ofql, torch.device("cpu"))
    assert args.cuda_graph and not ofql.TrainStep(agent, buffer, args, torch.device("cpu"), 0).use_graph
    assert not ofql.parse_args(["--no-cuda-graph"]).cuda_graph


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_cuda_graph_replays_compute_the_eager_iterations(module):
    """Same initial networks and seed: the eager path (plain Adam) and the fast path (3 eager warm-up iterations on a
    side stream, a capture, replays with capturable Adam) give the same metrics at every step and the same networks.
    The random numbers are the same too: a replay starts at the generator's offset, as the eager kernels do, and
    capturing the evaluation policy leaves the generator as it found it."""
    device = torch.device("cuda")
    args, eager_agent, buffer = small_setup(module, device, cuda_graph=False)
    _, graph_agent, _ = small_setup(module, device, cuda_graph=True)
    runs = {}
    for name, agent, flags in (("eager", eager_agent, args), ("graph", graph_agent, dataclasses.replace(args, cuda_graph=True))):
        train_step = module.TrainStep(agent, buffer, flags, device, last_step=0)
        assert train_step.use_graph == (name == "graph")
        torch.manual_seed(7)
        # as in train(): the evaluation policy is built (and, on the fast path, captured) before the first iteration
        module.ActionSelector(agent, 50, 4, OBS, device, use_graph=name == "graph")
        runs[name] = [{k: v.clone() for k, v in train_step().items()} for _ in range(10)]
        assert int(train_step.step) == 10
    for step, (e, g) in enumerate(zip(runs["eager"], runs["graph"]), start=1):
        for key in e:
            torch.testing.assert_close(g[key], e[key], rtol=1e-4, atol=1e-5, msg=f"{key} at step {step}")
    for net in ("actor", "critic", "critic_target") + (("actor_ema",) if module is not fql else ()):
        for a, b in zip(getattr(eager_agent, net).parameters(), getattr(graph_agent, net).parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=net)


@cuda
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_cuda_iterations_make_no_device_sync(module, cuda_graph):
    """Every iteration but the first (lazy initialisation) and the capturing one (torch.cuda.graph synchronizes on
    entry) runs under CUDA's sync debug mode 'error': no iteration waits for the GPU."""
    device = torch.device("cuda")
    args, agent, buffer = small_setup(module, device, cuda_graph=cuda_graph)
    train_step = module.TrainStep(agent, buffer, args, device, last_step=0)
    for i in range(1, 11):
        checked = i != 1 and not (cuda_graph and i == train_step.warmup + 1)
        torch.cuda.set_sync_debug_mode("error" if checked else "default")
        try:
            train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert (train_step.graph is not None) == cuda_graph


@cuda
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_the_captured_policy_chooses_the_eager_actions(module):
    """Same seed, same actions, with 1 and 50 candidates; and the graph reads the networks in place, so it follows
    them when they change."""
    device = torch.device("cuda")
    _, agent, _ = small_setup(module, device)
    obs = torch.randn(10, OBS, device=device)
    for k in (1, 50):
        eager = module.ActionSelector(agent, k, 10, OBS, device, use_graph=False)
        graph = module.ActionSelector(agent, k, 10, OBS, device, use_graph=True)
        for change in (0.0, 0.05):
            with torch.no_grad():
                for p in agent.actor.parameters():
                    p.add_(change)
            torch.manual_seed(3)
            expected = eager(obs).clone()
            torch.manual_seed(3)
            torch.testing.assert_close(graph(obs).clone(), expected, rtol=1e-5, atol=1e-6)
