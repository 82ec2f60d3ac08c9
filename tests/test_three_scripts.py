"""ofql.py, dql.py and fql.py are three single files that must share their non-algorithmic parts word for word (the
buffer, the evaluation, the CUDA training step and the training loop; data, environments and run bookkeeping come from
offline_data), so that `diff dql.py ofql.py` shows only the algorithms. These tests keep the copies from drifting apart,
by text and by behaviour, and each script within its size budget."""

import dataclasses
import inspect
import re

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
    assert order["dql"] == order["ofql"] == order["fql"] and len(order["ofql"]) == 7


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
def test_evaluation_resets_env_i_of_each_member_with_its_seed_plus_100_plus_i(module, monkeypatch):
    """Each of a member's evaluation episodes starts from its own seed (the same in every evaluation of the run), for
    each evaluated policy; member m's results are its own envs' episodes (a sweep's envs are member-major)."""
    calls = []

    def run_episodes(policy, envs, seeds, device):
        calls.append(list(seeds))
        return np.arange(envs.num_envs, dtype=float) + 10 * len(calls), np.full(envs.num_envs, np.nan), 1.0

    class Source:
        def member(self, m):
            return offline_data.DataSource({}, "", 11, 3, None, "Hopper-v4", 0.0, 100.0)

    monkeypatch.setattr(offline_data, "run_episodes", run_episodes)
    members = [module.Args(env_id="hopper-medium-v2", seed=3), module.Args(env_id="hopper-medium-v2", seed=8)]
    envs = type("Envs", (), {"num_envs": 4})()
    first, second = module.evaluate([None, None], envs, Source(), members, torch.device("cpu"))
    assert calls == [[103, 104, 108, 109]] * 2
    assert (first["return"], second["return"], second["policy_return"]) == (10.5, 12.5, 22.5)


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
