"""The CUDA training step of the three scripts (cuda_graph, set_capturable, make_policy): what makes the training
iteration and the policy capturable as CUDA graphs, checked on the CPU (no value read back to the host, the
softmax(Q) candidate draw, cuda_graph's warm-up / capture / replay sequence and its one-line failure, Adam's
capturable mode undone when a fast-path checkpoint resumes on the CPU), and, where CUDA is present, that the captured
graphs compute what the eager code computes, for a domain sweep too, and that the online phase trains in them (its own
update graph, the acting policy's, a captured batch that reads the transitions added after the capture)."""

import contextlib
import dataclasses
import json
import math
import os
import types

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dql
import fql
import ofql
import sweep
from conftest import record_d4rl_file
from offline_data import UserError

MODULES = (ofql, dql, fql)
OBS, ACT = 11, 3
aten = torch.ops.aten
# operators that read a tensor's value on the host (.item(), bool(t), Python control flow on a tensor) or whose
# output shape depends on the data: each one is a device-to-host sync on CUDA and cannot be captured
HOST_READS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.repeat_interleave.Tensor,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.multinomial.default,
}  # multinomial checks its probabilities on the host


class RecordHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def small_data() -> dict:
    """500 seeded random transitions in the D4RL layout's keys."""
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(500, OBS, generator=g)
    return {
        "observations": obs.numpy(),
        "next_observations": (obs + 0.1).numpy(),
        "actions": (torch.rand(500, ACT, generator=g) * 2 - 1).numpy(),
        "rewards": torch.randn(500, generator=g).numpy(),
        "terminals": (torch.rand(500, generator=g) < 0.05).numpy(),
    }


def small_setup(module, device, **overrides):
    torch.manual_seed(0)
    args = (
        dataclasses.replace(module.Args(), batch_size=32, ema_start=4, ema_every=2, **overrides)
        if module is not fql
        else dataclasses.replace(module.Args(), batch_size=32, **overrides)
    )
    return args, module.make_agent(OBS, ACT, args, device), module.OfflineBuffer(small_data(), device)


def training_iteration(module, agent, buffer, args, device, last_step=0):
    """What train() runs at each step: update() on a fresh batch with the step count on the device; on the fast path
    the same function served by cuda_graph, with Adam in capturable mode. Returns (iteration, step count)."""
    use_graph = args.cuda_graph and device.type == "cuda"
    for optimizer in (agent.actor_optimizer, agent.critic_optimizer):
        module.set_capturable(optimizer, use_graph)
    step = torch.tensor(last_step, device=device)

    def iteration():
        step.add_(1)
        return module.update(agent, buffer.sample(args.batch_size), args, step)

    return (module.cuda_graph(iteration, warmup=3, what="the training step") if use_graph else iteration), step


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_an_iteration_never_reads_a_value_back_to_the_host(module):
    args, agent, buffer = small_setup(module, torch.device("cpu"), max_q_backup=True, grad_norm=1.0)
    # Adam's CPU path reads its step count with .item(); its fused path does not (on CUDA, capturable Adam is used)
    agent.actor_optimizer = torch.optim.Adam(agent.actor.parameters(), lr=args.actor_lr, fused=True)
    agent.critic_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=args.critic_lr, fused=True)
    iteration, _ = training_iteration(module, agent, buffer, args, torch.device("cpu"))
    with RecordHostReads() as recorder:
        for _ in range(6):  # covers the EMA branches: before ema_start, on and off the EMA schedule
            iteration()
    assert recorder.found == []

    with RecordHostReads() as recorder:  # the recorder does see one: Python control flow on a tensor
        assert bool(iteration()["critic_loss"] >= 0)
    assert recorder.found == ["aten._local_scalar_dense.default"]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_choosing_an_action_never_reads_a_value_back_to_the_host(module):
    args, agent, _ = small_setup(module, torch.device("cpu"))
    with RecordHostReads() as recorder:
        for k in (1, 50):
            module.make_policy(agent, k, 10, OBS, torch.device("cpu"), use_graph=False)(torch.randn(10, OBS))
    assert recorder.found == []


def test_the_candidate_is_drawn_from_softmax_q():
    """select_action's draw (argmax of q - log E, E ~ Exp(1), which needs no host read) against softmax(q): with
    q = 3 a_0 and the candidates regenerated from the same seed, the best candidate of each state is picked as often
    as softmax(q) says, summed over 20,000 states (a plain argmax or a wrong temperature is many sigmas off)."""

    class Linear(torch.nn.Module):
        def forward(self, obs, actions):
            return 3.0 * actions[:, :1], 3.0 * actions[:, :1] + 1.0  # the min of the two heads is the first

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


class FakeCuda:
    """Stands in for torch.cuda's streams and graphs: records what cuda_graph runs where."""

    def __init__(self, fail_capture=False):
        self.log, self.capturing, self.fail_capture = [], False, fail_capture
        fake = self

        class Graph:
            def replay(self):
                fake.log.append("replay")

        class Capture:
            def __init__(self, graph):
                pass

            def __enter__(self):
                if fake.fail_capture:
                    raise RuntimeError("operation not permitted when stream is capturing")
                fake.capturing = True

            def __exit__(self, *exc):
                fake.capturing = False

        class Stream:
            def wait_stream(self, other):
                pass

        self.Stream, self.CUDAGraph, self.graph = Stream, Graph, Capture
        self.stream = lambda stream: contextlib.nullcontext()
        self.current_stream = lambda: Stream()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_cuda_graph_warms_up_then_captures_once_then_replays(module, monkeypatch):
    """cuda_graph's sequence, with torch.cuda's streams and graphs faked (no GPU needed): `warmup` eager calls, each
    returning its own result; right after the last one a single capture that records fn without a replay; then one
    replay per call, returning the captured outputs. A failed capture is one UserError naming --no-cuda-graph."""
    fake = FakeCuda()
    monkeypatch.setattr(
        module.torch,
        "cuda",
        types.SimpleNamespace(
            **{k: getattr(fake, k) for k in ("Stream", "CUDAGraph", "graph", "stream", "current_stream")}
        ),
    )
    calls = []
    fn = lambda: calls.append("capture" if fake.capturing else "eager") or len(calls)
    served = module.cuda_graph(fn, warmup=3, what="the training step")
    assert [served() for _ in range(3)] == [1, 2, 3] and calls == ["eager"] * 3 + ["capture"] and fake.log == []
    assert [served() for _ in range(2)] == [4, 4] and fake.log == ["replay"] * 2 and len(calls) == 4
    fake.fail_capture = True
    failing = module.cuda_graph(fn, warmup=1, what="the policy")
    with pytest.raises(UserError, match=r"capturing the policy as a CUDA graph failed .*run with --no-cuda-graph"):
        failing()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_a_checkpoint_of_the_cuda_graph_path_resumes_on_the_cpu(module, hopper_file, tmp_path, monkeypatch):
    """A fast-path run saves Adam in capturable mode, which load_state_dict brings back; train() sets the mode of the
    run that resumes after loading the checkpoint (set_capturable), and the resumed run continues exactly."""
    monkeypatch.chdir(tmp_path)
    flags = [
        "--env-id",
        "hopper-medium-v2",
        "--dataset-path",
        hopper_file,
        "--eval-every",
        "10",
        "--eval-episodes",
        "1",
        "--num-candidates",
        "1",
        "--batch-size",
        "16",
        "--log-every",
        "5",
        "--save-model",
    ]
    straight = os.path.dirname(module.train(module.parse_args(flags + ["--total-steps", "20", "--exp-name", "a"])))
    first = os.path.dirname(module.train(module.parse_args(flags + ["--total-steps", "10", "--exp-name", "b"])))
    state = torch.load(f"{first}/checkpoint.pt")
    for name in ("actor_optimizer", "critic_optimizer"):  # as a CUDA run leaves them
        for group in state[name]["param_groups"]:
            group["capturable"] = True
    torch.save(state, f"{first}/checkpoint.pt")
    module.train(module.parse_args(flags + ["--total-steps", "20", "--resume", f"{first}/checkpoint.pt"]))

    def records(run_dir):
        with open(f"{run_dir}/metrics.jsonl") as f:
            return [{k: v for k, v in json.loads(line).items() if "per_sec" not in k and "rate" not in k} for line in f]

    assert records(first) == records(straight) and len(records(first)) == 4


def test_the_fast_path_is_off_without_cuda(hopper_file, tmp_path, monkeypatch, capsys):
    """On the CPU (--no-cuda: also on a CUDA machine) training is eager even though --cuda-graph is the default."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "2", "--batch-size", "8"]
    flags += ["--no-cuda"]
    summary = ofql.train(ofql.parse_args(flags + ["--eval-episodes", "1", "--num-candidates", "1"]))
    assert "training on cpu: eager" in capsys.readouterr().out
    assert json.load(open(os.path.join(os.path.dirname(summary), "config.json")))["training_step"] == "eager"
    assert not ofql.parse_args(["--no-cuda-graph"]).cuda_graph


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_a_cuda_graph_checkpoint_resumes_on_the_eager_path(hopper_file, tmp_path, monkeypatch):
    """Fused Adam keeps its step counts on the GPU in both modes: a graph-path checkpoint (capturable Adam) resumed
    with --no-cuda-graph (plain fused Adam) trains on, its numbers finite (ofql.py: the three scripts share
    set_capturable and make_agent's optimizers; moving the step counts to the CPU, as set_capturable did, fails)."""
    module, first, then = ofql, "--cuda-graph", "--no-cuda-graph"
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-every", "10"]
    flags += ["--eval-episodes", "1", "--num-candidates", "1", "--batch-size", "16", "--log-every", "5", "--save-model"]
    run_dir = os.path.dirname(module.train(module.parse_args(flags + ["--total-steps", "10", first])))
    resumed = flags + ["--total-steps", "20", then, "--resume", f"{run_dir}/checkpoint.pt"]
    module.train(module.parse_args(resumed))
    with open(f"{run_dir}/metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "eval/score" in r][-2:] == [10, 20]
    assert all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))


@cuda
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_cuda_graph_replays_compute_the_eager_iterations(module):
    """Same initial networks and seed: the fast path (3 eager warm-up iterations on a side stream, a capture, replays)
    gives bit for bit the metrics and networks of the same iterations run eagerly with Adam in the same (capturable)
    mode. The random numbers are the same too: a replay starts at the generator's offset, as the eager kernels do, and
    capturing the evaluation policy leaves the generator as it found it. The eager path of train() (plain Adam) rounds
    Adam's step differently (on an H200, DQL's actor differed by at most 1.5e-5 in 2 of 141,363 weights after 10 steps,
    the metrics by less than 1e-4): it agrees within the tests' tolerance on the metrics and a tenth of Adam's step
    (lr) on the networks."""
    device = torch.device("cuda")
    runs, agents = {}, {}
    for name in ("eager", "eager_capturable", "graph"):
        args, agents[name], buffer = small_setup(module, device, cuda_graph=name == "graph")
        iteration, step = training_iteration(module, agents[name], buffer, args, device)
        if name == "eager_capturable":
            for optimizer in (agents[name].actor_optimizer, agents[name].critic_optimizer):
                module.set_capturable(optimizer, True)
        torch.manual_seed(7)
        # as in train(): the evaluation policy is built (and, on the fast path, captured) before the first iteration
        module.make_policy(agents[name], 50, 4, OBS, device, use_graph=name == "graph")
        runs[name] = [{k: v.clone() for k, v in iteration().items()} for _ in range(10)]
        assert int(step) == 10
    nets = ("actor", "critic", "critic_target") + (("actor_ema",) if module is not fql else ())
    for step, (e, c, g) in enumerate(zip(runs["eager"], runs["eager_capturable"], runs["graph"]), start=1):
        for key in e:
            assert torch.equal(g[key], c[key]), f"{key} at step {step}"
            torch.testing.assert_close(g[key], e[key], rtol=1e-4, atol=1e-5, msg=f"{key} at step {step}")
    lr = min(args.actor_lr, args.critic_lr)
    for net in nets:
        params = [getattr(agents[name], net).parameters() for name in ("eager", "eager_capturable", "graph")]
        for e, c, g in zip(*params):
            assert torch.equal(g, c), net
            torch.testing.assert_close(g, e, rtol=0, atol=lr / 10, msg=net)


@cuda
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_cuda_iterations_make_no_device_sync(module, cuda_graph):
    """Every iteration but the first (lazy initialisation) and the last warm-up one, which captures (torch.cuda.graph
    synchronizes on entry), runs under CUDA's sync debug mode 'error': no iteration waits for the GPU."""
    device = torch.device("cuda")
    args, agent, buffer = small_setup(module, device, cuda_graph=cuda_graph)
    iteration, step = training_iteration(module, agent, buffer, args, device)
    for i in range(1, 11):
        checked = i != 1 and not (cuda_graph and i == 3)
        torch.cuda.set_sync_debug_mode("error" if checked else "default")
        try:
            iteration()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert int(step) == 10


@cuda
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_the_captured_policy_chooses_the_eager_actions(module):
    """Same seed, same actions, with 1 and 50 candidates; and the graph reads the networks in place, so it follows
    them when they change."""
    device = torch.device("cuda")
    _, agent, _ = small_setup(module, device)
    obs = torch.randn(10, OBS, device=device)
    for k in (1, 50):
        eager = module.make_policy(agent, k, 10, OBS, device, use_graph=False)
        graph = module.make_policy(agent, k, 10, OBS, device, use_graph=True)
        for change in (0.0, 0.05):
            with torch.no_grad():
                for p in agent.actor.parameters():
                    p.add_(change)
            torch.manual_seed(3)
            expected = eager(obs).clone()
            torch.manual_seed(3)
            torch.testing.assert_close(graph(obs).clone(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", [ofql, dql, fql])
def test_the_compiled_iteration_trains_as_the_eager_one(hopper_file, tmp_path, monkeypatch, capsys, module):
    """--compile (inductor's CPU backend here): 50 updates log the eager run's numbers within float rounding (inductor
    fuses and reorders the arithmetic), with the eager run's noise (fallback_random: inductor draws its random numbers
    as eager PyTorch does, where by default it uses its own generator: other numbers, as random). AOTAutograd's common
    subexpression pass is off: with fallback_random it merges FQL's two torch.randn_like(actions) into one draw
    (aten.randn_like is missing from its list of random ops on torch 2.13; docs/speed.md). Before torch 2.13, inductor
    may reorder those eager draws (2.11 draws OFQL's and DQL's coin flip before the policy's noise): there the compiled
    run must train to finite numbers, and the comparison is skipped."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    monkeypatch.setattr(torch._functorch.config, "cse", False)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--no-cuda", "--total-steps", "50"]
    flags += ["--batch-size", "32", "--log-every", "10", "--eval-every", "50", "--eval-episodes", "1"]
    runs, compiled_fns, compile = {}, [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled_fns.append(fn) or compile(fn, **kw))
    for compiled in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        summary = module.train(module.parse_args(flags + (["--compile"] if compiled else [])))
        with open(os.path.join(os.path.dirname(summary), "metrics.jsonl")) as f:
            runs[compiled] = [{k: v for k, v in json.loads(line).items() if "per_sec" not in k} for line in f]
    assert len(compiled_fns) == 2 and torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert [r["step"] for r in runs[True]] == [10, 20, 30, 40, 50]
    assert "training on cpu: eager, torch.compile\n" in capsys.readouterr().out  # the run says how it trains
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 13):
        assert all(math.isfinite(v) for row in runs[True] for v in row.values() if isinstance(v, float))
        pytest.skip(f"torch {torch.__version__}: inductor may reorder the eager random draws; compared on 2.13+")
    for eager, compiled in zip(runs[False], runs[True], strict=True):
        for key, value in eager.items():
            if "decision_rate" not in key:
                assert compiled[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (eager["step"], key)


def run_files(summary_path: str) -> tuple[dict, list[dict]]:
    """A finished run's config.json and metrics.jsonl (without the timings)."""
    run_dir = os.path.dirname(summary_path)
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        logged = [{k: v for k, v in json.loads(line).items() if "per_sec" not in k and "rate" not in k} for line in f]
    return config, logged


@cuda
def test_a_domain_sweep_in_a_cuda_graph_logs_the_eager_numbers(tmp_path, monkeypatch):
    """sweep.py ofql.py --env-ids over two hopper files of different sizes x seeds 0 and 1 (sweep.DomainBuffer's draw,
    rows r % each member's dataset size; each dataset's own --grad-norm, a per-member tensor in the clipping: here 0.3
    and 2, under these gradients' norms, where the presets' 9 and 4 would hardly clip), 30 steps with the EMA policy
    moving from step 10, then an evaluation: the fast path's members log the eager path's training metrics within the
    tests' tolerance (its Adam is capturable, the eager path's is not)."""
    monkeypatch.chdir(tmp_path)
    files = [str(tmp_path / "a.hdf5"), str(tmp_path / "b.hdf5")]
    record_d4rl_file(files[0], episodes=4, max_steps=40, seed=0)
    record_d4rl_file(files[1], episodes=3, max_steps=25, seed=7)
    argv = ["ofql.py", "--env-ids", "hopper-medium-v2", "hopper-medium-replay-v2", "--dataset-paths", *files]
    argv += "--seeds 0 1 --total-steps 30 --log-every 10 --eval-every 30 --batch-size 32".split()
    argv += ["--ema-start", "10", "--ema-every", "2", "--eval-episodes", "1", "--num-candidates", "1"]
    runs = {}
    for path in ("eager", "cuda_graph"):
        script, _, members = sweep.parse_args(argv + ["--cuda-graph" if path == "cuda_graph" else "--no-cuda-graph"])
        members = [dataclasses.replace(m, grad_norm=0.3 if m.dataset_path == files[0] else 2.0) for m in members]
        runs[path] = [run_files(summary) for summary in sweep.train(script, members, path)]
        assert [config["training_step"] for config, _ in runs[path]] == [path] * 4
    datasets = [(config["transitions"], config["grad_norm"]) for config, _ in runs["cuda_graph"]]
    assert datasets[0] == datasets[1] != datasets[2] == datasets[3] and datasets[0][0] != datasets[2][0]  # then seeds
    for member, ((_, eager), (_, graph)) in enumerate(zip(runs["eager"], runs["cuda_graph"])):
        assert [r["step"] for r in graph] == [r["step"] for r in eager] == [10, 20, 30]
        assert "eval/score" in graph[-1] and math.isfinite(graph[-1]["eval/score"])
        for e, g in zip(eager, graph):
            assert e.keys() == g.keys()
            for key in (k for k in e if k != "step" and not k.startswith("eval/")):
                torch.testing.assert_close(g[key], e[key], rtol=1e-4, atol=1e-5, msg=f"{key}, {member}, {e['step']}")


@cuda
def test_an_online_run_trains_on_the_cuda_graph_path(hopper_file, tmp_path, monkeypatch):
    """ofql.py, 20 offline then 20 online steps on the fast path (the online update its own graph, the acting policy a
    graph, --balanced-sampling): the checkpoint holds the 20 transitions the env gave, in order (a row's next
    observation is the next row's observation except where the episode ended), all finite, and every logged value is
    finite."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "20", "--online-steps"]
    flags += ["20", "--balanced-sampling", "--batch-size", "32", "--log-every", "10", "--eval-episodes", "1"]
    summary = ofql.train(ofql.parse_args(flags + ["--num-candidates", "1", "--save-model"]))
    config, logged = run_files(summary)
    assert config["training_step"] == "cuda_graph" and config["device"].startswith("cuda")
    online = torch.load(os.path.join(os.path.dirname(summary), "checkpoint.pt"))["online"]
    assert [len(v) for v in online.values()] == [20] * 5 and all(v.isfinite().all() for v in online.values())
    continues = (online["next_obs"][:-1] == online["obs"][1:]).all(dim=1)
    assert torch.equal(~continues, online["dones"][:-1, 0].bool())
    assert [r["step"] for r in logged if "critic_loss" in r] == [10, 20, 30, 40]
    assert all(math.isfinite(v) for r in logged for v in r.values())


@cuda
@pytest.mark.parametrize("balanced", [False, True], ids=["uniform", "balanced"])
def test_a_captured_online_batch_draws_the_transitions_added_after_the_capture(balanced):
    """An online batch (the online iteration's draw) captured with 4 transitions in the buffer: its replays draw from
    every transition added since, and from no row not yet written (the count is read on the device, not fixed at the
    capture); balanced: the batch's second half from them only."""
    device = torch.device("cuda")
    buffer = ofql.OfflineBuffer(small_data(), device, online_steps=40, balanced=balanced)

    def add(j: int) -> None:  # transition j: observation 1000 + j
        obs = np.full((1, OBS), 1000.0 + j, dtype=np.float32)
        buffer.add(obs, np.zeros((1, ACT)), np.zeros(1), obs, np.zeros(1))

    batch = ofql.cuda_graph(lambda: buffer.sample(20_000, online=True).obs[:, 0], warmup=4, what="the online batch")
    for j in range(40):
        add(j)
        obs = batch().cpu()
    online = obs >= 1000
    assert set(obs[online].tolist()) == {1000.0 + j for j in range(40)} and (obs != 0).all()
    if balanced:
        assert not online[:10_000].any() and online[10_000:].all()
