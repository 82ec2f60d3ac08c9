"""ofql.py, dql.py and fql.py are three single files that must share their non-algorithmic parts word for word (the
buffer, the evaluation, the CUDA training step and the training loop; data, environments and run bookkeeping come from
offline_data), so that `diff dql.py ofql.py` shows only the algorithms. These tests keep the copies from drifting apart,
by text and by behaviour, and each script within its size budget."""

import dataclasses
import inspect
import re
import shutil
import subprocess

import gymnasium as gym
import numpy as np
import pytest
import torch

import dql
import fql
import offline_data
import ofql
from conftest import ROOT

MODULES = (ofql, dql, fql)
SHARED_SECTIONS = ("Replay buffer", "Evaluation", "Training step", "Training loop")
COMMON_FLAGS = (
    "exp_name",
    "env_id",
    "dataset_path",
    "seed",
    "torch_deterministic",
    "cuda",
    "cuda_graph",
    "track",
    "wandb_project_name",
    "wandb_entity",
    "save_model",
    "resume",
    "capture_video",
    "total_steps",
    "batch_size",
    "actor_lr",
    "critic_lr",
    "gamma",
    "tau",
    "max_q_backup",
    "num_backup_actions",
    "reward_mode",
    "grad_norm",
    "eval_every",
    "eval_episodes",
    "num_candidates",
    "log_every",
)

ALGORITHM_DEFAULTS = (
    "exp_name",
    "total_steps",
    "actor_lr",
    "max_q_backup",
    "reward_mode",
    "grad_norm",
    "eval_episodes",
    "num_candidates",
)  # flags whose default (or preset) differs between the algorithms by design


def sections(name):
    """{section title: text} of a script, split at its '# ----' banner lines."""
    text = open(f"{ROOT}/{name}.py").read()
    parts = re.split(r"\n# -{20,}\n# (.+)\n(?:# .+\n)*# -{20,}\n", text)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def test_the_shared_sections_are_identical_text():
    texts = {name: sections(name) for name in ("ofql", "dql", "fql")}
    for found in texts.values():
        assert [t for t in found if t.startswith(SHARED_SECTIONS)] == [
            t for t in texts["ofql"] if t.startswith(SHARED_SECTIONS)
        ]
    for title in texts["ofql"]:
        if title.startswith(SHARED_SECTIONS):
            assert texts["dql"][title] == texts["ofql"][title], f"dql.py's section '{title}' differs from ofql.py's"
            assert texts["fql"][title] == texts["ofql"][title], f"fql.py's section '{title}' differs from ofql.py's"
    # the same sections in the same order (the titles of the ALGO LOGIC sections name each algorithm's parts)
    order = {name: [t.split(":")[0] for t in found] for name, found in texts.items()}
    assert order["dql"] == order["ofql"] == order["fql"] and len(order["ofql"]) == 9


def test_the_shared_tables_and_flags_agree():
    for m in (dql, fql):
        assert (
            set(m.PRESETS) == set(ofql.PRESETS) == set(offline_data.DATASETS) | set(offline_data.OGBENCH_IDS.values())
        )  # every dataset ofql.py supports has a preset in each script
        fields = {f.name: f for f in dataclasses.fields(m.Args)}
        for name in COMMON_FLAGS:
            assert name in fields, f"{m.__name__}.Args lacks --{name.replace('_', '-')}"
            if name not in ALGORITHM_DEFAULTS:
                assert fields[name].default == {f.name: f for f in dataclasses.fields(ofql.Args)}[name].default, name


@pytest.mark.parametrize("module", MODULES)
def test_the_policy_and_both_critic_heads_read_the_state_and_the_heads_are_two_networks(module):
    """The same noise and actions in two states give other actions and other Q values, and the twin heads share no
    parameter (a network blind to the state, or one head used twice, trains without an error)."""
    torch.manual_seed(0)
    agent = module.make_agent(11, 3, module.Args(), torch.device("cpu"))
    obs1, obs2, actions = torch.randn(8, 11), torch.randn(8, 11), torch.rand(8, 3) * 2 - 1
    for head1, head2 in zip(agent.critic(obs1, actions), agent.critic(obs2, actions)):
        assert not torch.allclose(head1, head2)
    assert not torch.allclose(*agent.critic(obs1, actions))
    assert {id(p) for p in agent.critic.q1.parameters()}.isdisjoint(map(id, agent.critic.q2.parameters()))
    sampled = []
    for obs in (obs1, obs2):
        torch.manual_seed(1)  # the same noise in both states
        sampled.append(module.sample_actions(agent.actor, obs))
    assert not torch.allclose(*sampled)
    if module is fql:  # its BC flow too
        t = torch.rand(8, 1)
        assert not torch.allclose(agent.actor.velocity(actions, t, obs1), agent.actor.velocity(actions, t, obs2))


@pytest.mark.parametrize("reward_mode", ["raw", "cql_antmaze", "iql_antmaze", "standardize"])
def test_all_three_buffers_draw_identical_batches(hopper_file, reward_mode):
    data = offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, reward_mode)
    buffers = [m.OfflineBuffer(data, torch.device("cpu")) for m in MODULES]
    for buffer in buffers:
        torch.manual_seed(0)
        batch = buffer.sample(16)
        torch.manual_seed(0)
        reference = buffers[0].sample(16)
        assert all(torch.equal(a, b) for a, b in zip(batch, reference))


def test_all_three_evaluate_a_policy_identically():
    """The same fixed policy, run through each script's evaluate(), gets the same episodes and the same score."""
    weights = torch.from_numpy(np.random.default_rng(1).normal(0, 0.3, (11, 3)).astype(np.float32))
    args = ofql.Args(env_id="hopper-medium-v2", eval_episodes=2, seed=5)
    results = []
    for m in MODULES:
        source = offline_data.DataSource(
            {},
            "",
            11,
            3,
            offline_data.eval_env_factory(args.env_id),
            "Hopper-v4",
            *offline_data.d4rl_files.DOMAINS["hopper"][:2],
        )
        envs = gym.vector.SyncVectorEnv([source.make_env] * args.eval_episodes)
        (result,) = m.evaluate([lambda obs: torch.tanh(obs @ weights)], envs, source, [args], torch.device("cpu"))
        envs.close()
        results.append({k: v for k, v in result.items() if k != "decision_rate"})
    assert results[0]["return"] != 0 and results[1] == results[0] and results[2] == results[0]


@pytest.mark.parametrize("module", MODULES)
def test_evaluation_resets_env_i_of_each_member_with_its_seed_plus_100_plus_a_million_i(module, monkeypatch):
    """Each of a member's evaluation episodes starts from its own seed (the same in every evaluation of the run), for
    each evaluated policy, and runs of neighbouring seeds share none (seed + 100 + i did: seed 4's env 0 was seed 3's
    env 1); member m's results are its own envs' episodes (a sweep's envs are member-major); the decision rate logged
    is the protocol policy's."""
    calls = []

    def run_episodes(policy, envs, seeds, device):  # returns 10 + policy + env index; decides at 1 + policy per s
        calls.append(list(seeds))
        return np.arange(envs.num_envs, dtype=float) + 10 + policy, np.full(envs.num_envs, np.nan), 1.0 + policy

    class Source:
        def member(self, m):
            return offline_data.DataSource({}, "", 11, 3, None, "Hopper-v4", 0.0, 100.0)

    monkeypatch.setattr(offline_data, "run_episodes", run_episodes)
    members = [module.Args(env_id="hopper-medium-v2", seed=3), module.Args(env_id="hopper-medium-v2", seed=4)]
    envs = type("Envs", (), {"num_envs": 4})()
    first, second = module.evaluate([0, 10], envs, Source(), members, torch.device("cpu"))  # protocol's, policy's own
    assert calls == [[103, 1_000_103, 104, 1_000_104]] * 2
    assert (first["return"], second["return"], second["policy_return"]) == (10.5, 12.5, 22.5)
    assert first["decision_rate"] == second["decision_rate"] == 1.0  # not the policy's own sample's 11


@pytest.mark.parametrize("module", MODULES)
def test_the_loop_numbers_its_updates_from_1_and_trains_online_on_the_envs_transitions(module, hopper_file, monkeypatch,
                                                                                         tmp_path):  # fmt: skip
    """update() gets steps 1, 2, ... (DQL's EMA schedule counts them: from 0 or 2 every EMA move shifts), with batches
    of the data alone in the offline phase and of the data and the envs' transitions in the online one, each online
    update's batch drawn with the step's own transition stored (counts 1, 2)."""
    monkeypatch.chdir(tmp_path)
    calls, update, sample = [], module.update, module.OfflineBuffer.sample
    monkeypatch.setattr(module, "update", lambda agent, batch, args, step: calls.append(int(step)) or update(
        agent, batch, args, step))  # fmt: skip
    monkeypatch.setattr(module.OfflineBuffer, "sample", lambda self, n, env=0, online=False: calls.append(
        (online, int(self.count)) if online else online) or sample(self, n, env, online))  # fmt: skip
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--no-cuda", "--batch-size", "16"]
    module.train(module.parse_args(flags + ["--total-steps", "3", "--online-steps", "2", "--eval-episodes", "1"]))
    assert calls == [False, 1, False, 2, False, 3, (True, 1), 4, (True, 2), 5]


@pytest.mark.parametrize("module", MODULES)
def test_update_steps_each_network_once_clipped_to_grad_norm_in_its_algorithms_order(module):
    """Each network's gradient clipped to --grad-norm (3.7 here; 0 or another number for either network fails); DQL's
    order in ofql.py and dql.py (the actor's loss sees the stepped critic: critic step first), FQL's in fql.py (both
    losses from the same critic, then the actor's step and the critic's)."""
    torch.manual_seed(0)
    args = module.Args(grad_norm=3.7)
    agent = module.make_agent(11, 3, args, torch.device("cpu"))
    batch = module.Batch(torch.randn(32, 11), torch.rand(32, 3) * 2 - 1, torch.randn(32, 1), torch.randn(32, 11),
                         torch.zeros(32, 1))  # fmt: skip
    before = [p.detach().clone() for p in agent.critic.parameters()]
    steps, seen, optimizer_step, actor_loss_fn = [], [], module.optimizer_step, module.actor_loss_fn
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "optimizer_step", lambda o, net, loss, max_norm: steps.append((net, max_norm)) or
                      optimizer_step(o, net, loss, max_norm))  # fmt: skip
        patch.setattr(module, "actor_loss_fn", lambda agent, *a: seen.extend(p.detach().clone() for p in
                      agent.critic.parameters()) or actor_loss_fn(agent, *a))  # fmt: skip
        module.update(agent, batch, args, torch.tensor(1))
    after = list(agent.critic.parameters())
    order = [(agent.actor, 3.7), (agent.critic, 3.7)] if module is fql else [(agent.critic, 3.7), (agent.actor, 3.7)]
    assert steps == order and not any(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(s, b if module is fql else a) for s, a, b in zip(seen, after, before))


@pytest.mark.parametrize("module", [ofql, dql])
def test_dql_and_ofql_share_dqls_ema_rule(module):
    """One rule (DQL's code, whose step counter starts at 0): the EMA policy keeps its initial network for 1000
    steps, then every 5 steps (the 1001st, 1006th, ...) ema <- 0.995 ema + 0.005 actor. The same text in both
    scripts, and this behaviour."""
    assert inspect.getsource(ofql.update_targets) == inspect.getsource(dql.update_targets)
    torch.manual_seed(0)
    agent = module.make_agent(11, 3, module.Args(), torch.device("cpu"))
    initial = [p.clone() for p in agent.actor_ema.parameters()]
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(1.0)
    for step in (1, 5, 996, 1000, 1002):
        module.update_targets(agent, module.Args(), torch.tensor(step))
        assert all(torch.equal(a, b) for a, b in zip(initial, agent.actor_ema.parameters())), step
    module.update_targets(agent, module.Args(), torch.tensor(1001))
    for p0, p_ema, p in zip(initial, agent.actor_ema.parameters(), agent.actor.parameters()):
        torch.testing.assert_close(p_ema, 0.995 * p0 + 0.005 * p)
    # an --ema-start that is no multiple of --ema-every: DQL moves at counters >= 11 divisible by 5 (steps 16, 21, ...),
    # not at step 11 (counter 10, before the start)
    args, moved = module.Args(ema_start=11), [p.clone() for p in agent.actor_ema.parameters()]
    for step in (11, 12, 15):
        module.update_targets(agent, args, torch.tensor(step))
        assert all(torch.equal(a, b) for a, b in zip(moved, agent.actor_ema.parameters())), step
    module.update_targets(agent, args, torch.tensor(16))
    assert not any(torch.equal(a, b) for a, b in zip(moved, agent.actor_ema.parameters()))


@pytest.mark.parametrize("name", ["ofql", "dql", "fql"])
def test_each_script_stays_within_its_budget(name):
    """At most 600 lines, the first ALGO LOGIC line before line 200, no line over 120 columns, and the data and
    environment layer imported from offline_data rather than copied in."""
    lines = open(f"{ROOT}/{name}.py").read().splitlines()
    assert len(lines) <= 600
    assert next(i for i, line in enumerate(lines, 1) if line.startswith("# ALGO LOGIC")) < 200
    assert max(len(line) for line in lines) <= 120
    assert not any(
        line.startswith(("def download(", "def qlearning_dataset(", "class D4RLAntMazeEnv")) for line in lines
    )


@pytest.mark.skipif(shutil.which("diff") is None, reason="needs the diff command")
def test_the_readmes_diff_table_and_line_counts_are_the_scripts():
    """README.md quotes `diff dql.py ofql.py` and `diff fql.py ofql.py` (lines only in each file, hunks), each script's
    length and its first ALGO LOGIC line: the figures of the files as they are."""
    with open(f"{ROOT}/README.md") as file:
        readme = file.read()
    for first in ("dql", "fql"):
        out = subprocess.run(["diff", f"{first}.py", "ofql.py"], cwd=ROOT, capture_output=True, text=True).stdout
        lines = out.splitlines()
        ranges = sum(line[:1].isdigit() for line in lines)
        counts = [sum(line.startswith(mark) for line in lines) for mark in ("< ", "> ")]
        assert f"| `diff {first}.py ofql.py` | {counts[0]} | {counts[1]} | {ranges} |" in readme
    lengths, starts = [], []
    for name in ("ofql", "dql", "fql"):
        lines = open(f"{ROOT}/{name}.py").read().splitlines()
        lengths.append(len(lines))
        starts.append(next(i for i, line in enumerate(lines, 1) if line.startswith("# ALGO LOGIC")))
    quoted = f"(`ofql.py` {lengths[0]} lines, `dql.py` {lengths[1]}, `fql.py` {lengths[2]}; the algorithm starts at"
    assert f"{quoted} line {starts[0]}, {starts[1]} and {starts[2]}.)" in " ".join(readme.split())


def structure(net: torch.nn.Module) -> list:
    """A network's layers in order: ("Linear", in, out), or the class name (a GELU's with its approximation)."""
    describe = {torch.nn.Linear: lambda m: ("Linear", m.in_features, m.out_features),
                torch.nn.GELU: lambda m: f"GELU({m.approximate})"}  # fmt: skip
    return [describe.get(type(m), lambda m: type(m).__name__)(m) for m in net]


def dqls_mlp(in_dim: int, out_dim: int) -> list:  # DQL's 3 x 256 Mish MLP
    return [("Linear", in_dim, 256), "Mish", ("Linear", 256, 256), "Mish", ("Linear", 256, 256), "Mish",
            ("Linear", 256, out_dim)]  # fmt: skip


def fqls_mlp(in_dim: int, out_dim: int, layer_norm: bool = False) -> list:  # FQL's 4 x 512 GELU(tanh) MLP
    hidden = [("Linear", d, 512) for d in (in_dim, 512, 512, 512)]
    return [x for layer in hidden for x in (layer, "GELU(tanh)", *["LayerNorm"] * layer_norm)] + [
        ("Linear", 512, out_dim)
    ]


@pytest.mark.parametrize("module", MODULES)
def test_the_networks_are_the_papers(module):
    """For 11 observation and 3 action dimensions: OFQL's u on [a_t (3), emb(t), emb(r) (64 each), s (11)] and DQL's
    eps on [a_i, 16 features of its time MLP (16 -> 32 -> 16), s] are DQL's 3 x 256 Mish MLP; FQL's flow on [a_t, t, s],
    its one-step policy on [z, s] and its critics (LayerNorm) FQL's 4 x 512 tanh-GELU MLPs; DQL's twin critics in
    ofql.py and dql.py."""
    agent = module.make_agent(11, 3, module.Args(), torch.device("cpu"))
    expected = {
        ofql: {"actor.net": dqls_mlp(3 + 64 + 64 + 11, 3)},
        dql: {
            "actor.net": dqls_mlp(3 + 16 + 11, 3),
            "actor.t_emb": ["SinusoidalPosEmb", ("Linear", 16, 32), "Mish", ("Linear", 32, 16)],
        },  # fmt: skip
        fql: {"actor.flow": fqls_mlp(3 + 1 + 11, 3), "actor.onestep": fqls_mlp(3 + 11, 3)},
    }[module]
    critic = fqls_mlp(14, 1, layer_norm=True) if module is fql else dqls_mlp(14, 1)
    for name, layers in {**expected, "critic.q1": critic, "critic.q2": critic}.items():
        net = agent.actor.get_submodule(name[6:]) if name.startswith("actor.") else agent.critic.get_submodule(name[7:])
        assert structure(net) == layers, name
    if module is ofql:
        assert agent.actor.time_emb(torch.zeros(1, 1)).shape == (1, 64)


@pytest.mark.parametrize("module", MODULES)
def test_each_network_has_its_own_adam_at_its_own_learning_rate(module):
    """Adam (betas 0.9, 0.999, eps 1e-8, no weight decay) over the actor's parameters at --actor-lr and over the
    critic's at --critic-lr: on pen-human, DQL's actor 3e-5 and critic 3e-4 (swapping them fails)."""
    args = module.parse_args(["--env-id", "pen-human-v1"])
    agent = module.make_agent(11, 3, args, torch.device("cpu"))
    for optimizer, net, lr in ((agent.actor_optimizer, agent.actor, args.actor_lr),
                               (agent.critic_optimizer, agent.critic, args.critic_lr)):  # fmt: skip
        group = optimizer.param_groups[0]
        assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
        assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (lr, (0.9, 0.999), 1e-8, 0)
        assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]
    assert module is not dql or (args.actor_lr, args.critic_lr) == (3e-5, 3e-4)


@pytest.mark.parametrize("module", MODULES)
def test_select_action_scores_each_candidate_in_its_own_state(module):
    """A target critic of the state: Q = 1e4 s_0 a_0 in both heads (s_0 = +-1), so that softmax(Q) picks, in each
    state, the candidate whose a_0 is largest in the direction of that state's s_0 (the candidates regenerated from
    the same seed). Candidates scored at another row's state (reversed or tiled states) pick it about half the time."""

    class StateSign(torch.nn.Module):
        def forward(self, obs, actions):
            q = 1e4 * obs[:, :1] * actions[:, :1]
            return q, q + 1.0

    torch.manual_seed(0)
    agent = module.make_agent(11, 3, module.Args(), torch.device("cpu"))
    agent = dataclasses.replace(agent, critic_target=StateSign())
    obs, k = torch.randn(400, 11), 10
    obs[:, 0] = torch.randint(2, (400,)) * 2.0 - 1  # s_0 = +-1
    torch.manual_seed(1)
    chosen = module.select_action(agent, obs, k)
    torch.manual_seed(1)  # the same candidates
    candidates = module.sample_actions(agent.actor, obs.repeat_interleave(k, dim=0)).view(len(obs), k, -1)
    assert ((candidates == chosen[:, None]).all(dim=-1)).any(dim=1).all()  # one of its state's candidates
    best, worst = (obs[:, :1] * candidates[:, :, 0]).aminmax(dim=1)[::-1]  # (clipping makes some a_0 equal)
    got = obs[:, 0] * chosen[:, 0]
    assert (got == best).float().mean() > 0.95 and (best > worst).float().mean() > 0.5
