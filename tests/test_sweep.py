"""sweep.py: many runs of one script in one process. A one-member sweep is the script's run (up to float rounding),
no member's numbers depend on another member's hyper-parameters, the sweep runs the script's own losses, each member
writes the run folder the script would, and a member's checkpoint resumes with the script alone."""

import copy
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types

import gymnasium as gym
import numpy as np
import pytest
import torch

import bookkeeping
import dql
import fql
import offline_data
import ofql
import sweep
from conftest import ROOT

SCRIPTS = {"ofql": ofql, "dql": dql, "fql": fql}
TIMING = ("steps_per_sec", "eval/decision_rate")


def script_args(module, hopper_file, *flags):
    base = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--no-cuda", "--batch-size", "32"]
    return module.parse_args(base + ["--eval-episodes", "2", "--log-every", "10", "--grad-norm", "0.5", *flags])


def records(summary_path: str) -> list[dict]:
    with open(os.path.join(os.path.dirname(summary_path), "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_one_member_sweep_is_the_scripts_run(tmp_path, hopper_file, monkeypatch, name):
    """50 updates and an evaluation: every logged number within float rounding of the script's own run (the random
    numbers are the same; vmap's batched matrix products add in another order than the script's: about 1e-7)."""
    monkeypatch.chdir(tmp_path)
    module = SCRIPTS[name]
    args = script_args(module, hopper_file, "--total-steps", "50", "--eval-every", "50", "--num-candidates", "3")
    alone, swept = records(module.train(args)), records(sweep.train(module, [args], "test")[0])
    assert [r["step"] for r in swept] == [10, 20, 30, 40, 50] and alone[-1].keys() == swept[-1].keys()
    for a, s in zip(alone, swept):
        for key in a:
            assert s[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_member_depends_on_another_members_weight(tmp_path, hopper_file, monkeypatch, name):
    """Three members; the third's eta (alpha) changed: the other two log bit for bit the same numbers."""
    monkeypatch.chdir(tmp_path)
    module = SCRIPTS[name]
    weight = module.SWEEP_WEIGHT
    base = script_args(module, hopper_file, "--total-steps", "30", "--eval-every", "30", "--num-candidates", "2")
    grid = [dataclasses.replace(base, seed=s, **{weight: w}) for s, w in ((0, 0.1), (1, 0.3), (2, 1.0))]
    first = [records(p) for p in sweep.train(module, grid, "a")]
    grid[2] = dataclasses.replace(grid[2], **{weight: 50.0})
    second = [records(p) for p in sweep.train(module, grid, "b")]
    assert first[0] == second[0] and first[1] == second[1]
    assert first[2][-1]["actor_loss"] != second[2][-1]["actor_loss"]  # the changed member did change
    assert first[0][-1]["critic_loss"] != first[1][-1]["critic_loss"]  # and the members are not copies


def test_a_compiled_sweep_trains_as_the_eager_one(tmp_path, hopper_file, monkeypatch):
    """--compile in a sweep (the script's loop compiles the vmapped iteration, inductor's CPU backend): two OFQL members
    log the eager sweep's numbers within float rounding over 30 updates and an evaluation, each member with its own
    noise as eager (fallback_random, AOTAutograd's CSE off: tests/test_training_step.py says why)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    monkeypatch.setattr(torch._functorch.config, "cse", False)
    compiled_fns, compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled_fns.append(fn) or compile(fn, **kw))
    base = script_args(ofql, hopper_file, "--total-steps", "30", "--eval-every", "30")
    grid = [dataclasses.replace(base, seed=s, eta=eta) for s, eta in ((0, 0.1), (1, 0.3))]
    eager = [records(p) for p in sweep.train(ofql, grid, "eager")]
    assert compiled_fns == []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = [records(p) for p in sweep.train(ofql, [dataclasses.replace(a, compile=True) for a in grid], "c")]
    assert len(compiled_fns) == 2 and torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # both phases' loops
    assert eager[0][-1]["critic_loss"] != eager[1][-1]["critic_loss"]
    for member_eager, member_compiled in zip(eager, compiled, strict=True):
        for e, c in zip(member_eager, member_compiled, strict=True):
            for key, value in e.items():
                assert c[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (e["step"], key)


@pytest.mark.parametrize("script", [ofql, dql, fql], ids=["ofql", "dql", "fql"])
def test_dynamo_traces_each_vmapped_loss_as_one_graph(script):
    """What --compile compiles in a sweep: each member-vmapped loss traced whole (fullgraph=True raises at a graph
    break; a break inside functional_call's context leaves the whole loss eager, as a SimpleNamespace agent did)."""
    args = [dataclasses.replace(script.Args(), seed=s) for s in (0, 1)]
    members = sweep.Members(script, args)
    agent = members.make_agent(11, 3, args[0], torch.device("cpu"))
    batch = script.Batch(*(torch.randn(2, 8, n) for n in (11, 3, 1, 11)), torch.zeros(2, 8, 1))
    for name in set(script.SWEEP_REPLACES) - {"optimizer_step"}:
        loss_fn = members.vectorized(getattr(script, name))
        torch._dynamo.reset()
        losses, _ = torch.compile(loss_fn, backend="eager", fullgraph=True)(agent, batch, args[0])
        assert losses.shape == (2,) and torch.isfinite(losses).all()


def test_the_sweep_runs_the_scripts_own_loss(tmp_path, hopper_file, monkeypatch):
    """A change to ofql.py's behaviour-cloning loss is a change to the sweep: nothing of the algorithm is copied."""
    monkeypatch.chdir(tmp_path)
    args = script_args(ofql, hopper_file, "--total-steps", "2", "--eval-every", "2", "--log-every", "1")
    plain = records(sweep.train(ofql, [args], "plain")[0])[0]  # step 1: before the first actor step
    original = ofql.behavior_cloning_loss
    monkeypatch.setattr(ofql, "behavior_cloning_loss", lambda *a: tuple(3.0 * x for x in original(*a)))
    tripled = records(sweep.train(ofql, [args], "tripled")[0])[0]
    assert tripled["bc_loss"] == pytest.approx(3 * plain["bc_loss"], rel=1e-6)
    assert tripled["critic_loss"] == plain["critic_loss"]


def test_each_member_writes_the_scripts_run_folder_and_resumes_with_the_script_alone(
    tmp_path, hopper_file, monkeypatch
):
    """A one-member sweep with checkpoints, resumed by ofql.py alone from its step-20 checkpoint, logs steps 30 and 40
    as the sweep did (within rounding): the checkpoint holds the member's networks, Adam states and the generator."""
    monkeypatch.chdir(tmp_path)
    args = script_args(ofql, hopper_file, "--total-steps", "40", "--eval-every", "20", "--save-model")
    (summary,) = sweep.train(ofql, [args], "ckpt")
    run_dir = os.path.dirname(summary)
    assert sorted(os.listdir(run_dir)) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "sweep.json",
    ]
    config, written = json.load(open(f"{run_dir}/config.json")), json.load(open(summary))
    assert config["seed"] == 0 and config["eta"] == args.eta and written["sweep"] == "ckpt"
    assert [e["step"] for e in written["evaluations"]] == [20, 40]
    swept = records(summary)
    # the step-20 checkpoint: rerun the sweep to 20 steps, then continue with the script
    (short,) = sweep.train(ofql, [dataclasses.replace(args, total_steps=20)], "ckpt20")
    resumed = dataclasses.replace(args, resume=os.path.join(os.path.dirname(short), "checkpoint.pt"))
    continued = records(ofql.train(resumed))
    assert [r["step"] for r in continued] == [10, 20, 30, 40]
    for a, s in zip(continued[2:], swept[2:]):
        for key in a:
            assert a[key] == pytest.approx(s[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_a_members_checkpoint_in_a_larger_sweep_holds_that_member(tmp_path, hopper_file, monkeypatch):
    """Member 1 of 2: its checkpoint's networks and Adam moments are its own (the stacked ones at index 1): they are
    unchanged when member 0's alpha changes, and they differ from member 0's; it resumes with the script alone."""
    monkeypatch.chdir(tmp_path)
    base = script_args(fql, hopper_file, "--total-steps", "20", "--eval-every", "20", "--save-model")
    checkpoints = []
    for alpha in (3.0, 30.0):  # member 0's alpha; member 1 (seed 1, alpha 10) is the same in both sweeps
        grid = [dataclasses.replace(base, seed=0, alpha=alpha), dataclasses.replace(base, seed=1, alpha=10.0)]
        paths = sweep.train(fql, grid, f"two_{alpha:g}")
        checkpoints.append([os.path.join(os.path.dirname(p), "checkpoint.pt") for p in paths])
    (first0, first1), (second0, second1) = [[bookkeeping.load_checkpoint(c) for c in pair] for pair in checkpoints]

    def moments(state):  # every optimizer's Adam moments, in a fixed order
        return [
            m[k]
            for o in ("actor_optimizer", "critic_optimizer")
            for m in state[o]["state"].values()
            for k in m
            if k != "step"
        ]

    for name in ("actor", "critic"):
        assert all(torch.equal(first1[name][k], v) for k, v in second1[name].items())
    assert all(torch.equal(a, b) for a, b in zip(moments(first1), moments(second1)))
    assert not any(torch.equal(a, b) for a, b in zip(moments(first0), moments(first1)))
    assert not torch.equal(first0["actor"]["onestep.0.weight"], second0["actor"]["onestep.0.weight"])
    agent = fql.make_agent(11, 3, grid[1], torch.device("cpu"))
    for part in dataclasses.fields(agent):  # the script's own Agent loads it
        getattr(agent, part.name).load_state_dict(first1[part.name])
    assert first1["config"]["seed"] == 1 and first1["step"] == 20


def test_evaluation_steps_every_members_episodes_as_the_script_would(hopper_file):
    """A fixed policy through the sweep's evaluation: member m's numbers are those of the script's evaluate() with
    member m's seed (its own episodes, its own env seeds)."""
    members = [ofql.Args(env_id="hopper-medium-v2", eval_episodes=2, seed=s) for s in (3, 8)]
    source = offline_data.DataSource(
        {},
        "",
        11,
        3,
        offline_data.eval_env_factory("hopper-medium-v2"),
        "Hopper-v4",
        *offline_data.d4rl_files.DOMAINS["hopper"][:2],
    )
    weights = torch.from_numpy(np.random.default_rng(1).normal(0, 0.3, (11, 3)).astype(np.float32))
    policy = lambda obs: torch.tanh(obs @ weights)  # noqa: E731
    envs = gym.vector.SyncVectorEnv([source.make_env] * 4)
    together = ofql.evaluate([policy], envs, source, members, torch.device("cpu"))
    for args, result in zip(members, together):
        (alone,) = ofql.evaluate(
            [policy], gym.vector.SyncVectorEnv([source.make_env] * 2), source, [args], torch.device("cpu")
        )
        assert {k: v for k, v in result.items() if k != "decision_rate"} == {
            k: v for k, v in alone.items() if k != "decision_rate"
        }
    assert together[0]["return"] != together[1]["return"]


def test_evaluation_noise_is_its_own_and_leaves_trainings_generator_alone(hopper_file):
    """A stochastic policy through the sweep's evaluation: the same numbers whatever the state of training's generator
    (the evaluation's noise is seeded by the members' seeds), and that generator is left where it was (evaluating
    never changes training's numbers)."""
    members = [ofql.Args(env_id="hopper-medium-v2", eval_episodes=1, seed=s) for s in (3, 8)]
    refs = offline_data.d4rl_files.DOMAINS["hopper"][:2]
    source = offline_data.DataSource(
        {}, "", 11, 3, offline_data.eval_env_factory("hopper-medium-v2"), "Hopper-v4", *refs
    )
    policy = lambda obs: torch.tanh(torch.randn(obs.shape[0], 3))  # noqa: E731
    envs = gym.vector.SyncVectorEnv([source.make_env] * 2)
    results = []
    for training_seed in (0, 1):  # training's generator in two states: the same evaluation
        torch.manual_seed(training_seed)
        before = torch.get_rng_state()
        results.append(ofql.evaluate([policy], envs, source, members, torch.device("cpu")))
        assert torch.equal(torch.get_rng_state(), before)
    first, second = results
    assert [r["return"] for r in first] == [r["return"] for r in second]


@pytest.mark.parametrize("name", ["ofql", "dql", "fql"])
def test_each_members_networks_start_as_a_lone_run_with_its_seed(name):
    """Member m's slice of every stacked network is what the script's make_agent gives after seeding with its seed;
    the generators left as a lone run leaves them for one member, for more seeded from all their seeds: a grid whose
    second seed differs draws other noise (seeded by the first member alone, it would draw the same)."""
    module, cpu = {"ofql": ofql, "dql": dql, "fql": fql}[name], torch.device("cpu")
    members = [module.Args(seed=3), module.Args(seed=8)]
    stacked = sweep.Members(module, members).make_agent(11, 3, members[0], cpu)
    after = torch.rand(4)
    sweep.Members(module, [members[0], module.Args(seed=9)]).make_agent(11, 3, members[0], cpu)
    assert not torch.equal(torch.rand(4), after)
    sweep.Members(module, members).make_agent(11, 3, members[0], cpu)
    torch.testing.assert_close(torch.rand(4), after, rtol=0, atol=0)
    sweep.Members(module, members[:1]).make_agent(11, 3, members[0], cpu)
    alone = torch.rand(4)
    for m, args in enumerate(members):
        torch.manual_seed(args.seed)
        lone = module.make_agent(11, 3, args, cpu)
        if m == 0:
            torch.testing.assert_close(torch.rand(4), alone, rtol=0, atol=0)
        for field in dataclasses.fields(lone):
            if isinstance(getattr(lone, field.name), torch.nn.Module):
                for key, p in getattr(lone, field.name).named_parameters():
                    torch.testing.assert_close(getattr(stacked, field.name).get_parameter(key)[m], p.detach())


def test_the_batched_policy_gives_each_member_its_own_rows(hopper_file):
    """select_action for 2 members x 3 envs, member-major: member 0's output bias at +10 (u large: its actions clip
    to -1), member 1's at -10 (+1); rows 0-2 must be member 0's, rows 3-5 member 1's."""
    torch.manual_seed(0)
    agents = [ofql.make_agent(11, 3, ofql.Args(), torch.device("cpu")) for _ in range(2)]
    with torch.no_grad():
        agents[0].actor.net[-1].bias.fill_(10.0)  # a = eps - u
        agents[1].actor.net[-1].bias.fill_(-10.0)
    members = sweep.Members(ofql, [ofql.Args()] * 2)
    actions = members.select_action(members.stack(agents), torch.randn(6, 11), 1)
    assert actions.shape == (6, 3)
    assert torch.all(actions[:3] == -1.0) and torch.all(actions[3:] == 1.0)
    plain = ofql.make_agent(11, 3, ofql.Args(), torch.device("cpu"))  # actions that do not clip
    same = members.select_action(members.stack([plain, copy.deepcopy(plain)]), torch.randn(3, 11).repeat(2, 1), 4)
    assert not torch.equal(same[:3], same[3:])  # two equal members, the same states: each its own noise


def test_a_member_that_diverges_stops_alone(tmp_path, hopper_file, monkeypatch, capsys):
    """A member with a NaN weight: its folder says why, the others train to the end, the sweep ends with a UserError."""
    monkeypatch.chdir(tmp_path)
    base = script_args(ofql, hopper_file, "--total-steps", "20", "--eval-every", "20")
    grid = [dataclasses.replace(base, eta=0.1), dataclasses.replace(base, eta=float("nan"), exp_name="bad")]
    monkeypatch.setattr(bookkeeping, "check_flags", lambda flags: None)  # the flags' check would refuse the NaN
    failed = "non-finite actor_grad_norm, actor_loss at step 1"  # every metric that went at its first bad step
    with pytest.raises(offline_data.UserError, match=f"1 of 2 members failed.*{failed}"):
        sweep.train(ofql, grid, "nan")
    good, bad = (next(d for d in os.listdir("runs") if f"__{n}__" in d) for n in ("ofql", "bad"))
    assert json.load(open(f"runs/{good}/summary.json"))["final_score"] is not None
    assert json.load(open(f"runs/{bad}/summary.json"))["error"] == failed
    assert records(f"runs/{bad}/summary.json") == []


def test_a_sweep_whose_members_all_diverge_leaves_each_ones_reason(tmp_path, hopper_file, monkeypatch):
    """No member left: the sweep stops there, and each member's summary.json names its error (compare.py reads it)."""
    monkeypatch.chdir(tmp_path)
    base = script_args(ofql, hopper_file, "--total-steps", "20", "--eval-every", "20", "--eta", "nan")
    monkeypatch.setattr(bookkeeping, "check_flags", lambda flags: None)  # the flags' check would refuse the NaN
    with pytest.raises(offline_data.UserError, match="2 of 2 members failed"):
        sweep.train(ofql, [base, dataclasses.replace(base, seed=1)], "nan")
    errors = [json.load(open(f"runs/{d}/summary.json"))["error"] for d in sorted(os.listdir("runs"))]
    assert errors == ["non-finite actor_grad_norm, actor_loss at step 1"] * 2


def test_the_grid_and_its_shards(hopper_file):
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--seeds", "0", "1", "2"]
    script, _, members = sweep.parse_args(["ofql.py", *flags, "--eta", "0.1", "0.3", "--grad-norm", "4"])
    assert script is ofql and [(m.seed, m.eta) for m in members] == [(s, e) for s in (0, 1, 2) for e in (0.1, 0.3)]
    assert {m.grad_norm for m in members} == {4.0} and members[1].exp_name == "ofql_eta0.3"
    _, _, shard = sweep.parse_args(["ofql.py", *flags, "--eta", "0.1", "0.3", "--shard", "1/4"])
    assert [(m.seed, m.eta) for m in shard] == [(0, 0.3), (2, 0.3)]
    _, spelled, same = sweep.parse_args(["ofql.py", *flags, "--eta", "0.1", "0.3", "--shard", "01/+4"])
    assert spelled.shard == "1/4" and same == shard  # and so the sweep's name: __shard1of4
    _, _, preset = sweep.parse_args(["fql.py", *flags])
    assert [(m.seed, m.alpha) for m in preset] == [(0, 10.0), (1, 10.0), (2, 10.0)] and preset[0].exp_name == "fql"
    shards = [sweep.parse_args(["dql.py", *flags, "--eta", "1", "2", "--shard", f"{i}/3"])[2] for i in range(3)]
    assert sorted((m.seed, m.eta) for s in shards for m in s) == [(s, e) for s in (0, 1, 2) for e in (1.0, 2.0)]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["ofql.py", "--alpha", "1"], "ofql.py has no flag --alpha (its grid is over --eta)"),
        (["fql.py", "--eta", "1"], "fql.py has no flag --eta (its grid is over --alpha)"),
        (["ofql.py", "--seed", "3"], "the grid's flags are --seeds and --eta"),
        (["ofql.py", "--shard", "2/2"], "--shard must be I/K"),
        (["ofql.py", "--seeds", "0", "--shard", "1/2"], "shard 1/2 of a grid of 1 members is empty"),
        (["ofql.py", "--eta", "0.1", "0.1"], "must not repeat"),
        (["ofql.py", "--eta", "-1"], "--eta must be a number in"),
        (["ofql.py", "--eta", "-.1", "0.3"], "--eta must be a number in [0, inf), not -0.1"),  # not 'needs a value'
        (["ofql.py", "--seeds", "0", "-1"], "--seeds must be numbers in [0, 4294967295], not 0 -1"),
        (["train.py"], "no script 'train.py' (sweep.py trains ofql.py, dql.py, fql.py or a script of the same form)"),
        (["fql.py", "--capture-video"], "a sweep records none"),
        (["--seeds", "0", "ofql.py"], "the first argument is the script"),
    ],
)
def test_bad_grids_are_one_line_and_exit_code_2(tmp_path, flags, message):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sweep.py"), *flags, "--env-id", "hopper-medium-v2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["nosuchdir/ofql.py"], "no script 'nosuchdir/ofql.py'"),  # not the ofql.py beside sweep.py
        (["ofql.py", "--eta", "0.1", "--eta", "0.3"], "--eta is given 2 times"),  # not [0.1] alone
        (["ofql.py", "--eta=0.1", "--eta", "0.3"], "--eta is given 2 times"),
        (["ofql.py", "--eta", "--seeds", "0"], "--eta needs at least one value"),  # not the preset's
        (["ofql.py", "--seeds", "0", "--eta="], "--eta needs at least one value"),
        (["ofql.py", "--seeds"], "--seeds needs at least one seed"),
        (["ofql.py", "--seeds", "0", "1", "--seeds", "2"], "--seeds is given 2 times"),  # not [2] alone (tyro's)
        (["ofql.py", "--resume", "a.pt", "--resume=b.pt"], "--resume is given 2 times"),
        (["ofql.py", "--seeds", "0", "1", "--shard", "0/2", "--shard", "1/2"], "--shard is given 2 times"),
        (["ofql.py", "--resume", "a.pt", "b.pt"], "--resume needs one checkpoint per member: 1, not 2 (the members"),
        (["ofql.py", "--env-ids", "hopper-medium-v2", "--env_ids", "hopper-medium-replay-v2"], "--env-ids is given 2"),
        (["ofql.py", "--dataset-paths", "a", "--dataset-paths", "b"], "--dataset-paths is given 2 times"),
    ],
)
def test_grid_flags_that_would_be_ignored_or_empty_are_refused(flags, message):
    with pytest.raises(offline_data.UserError, match=f"^{re.escape(message)}"):
        sweep.parse_args([*flags, "--env-id", "hopper-medium-v2"])


def test_the_weights_flag_forms_and_names_that_read_back(hopper_file):
    """--eta 0.1 0.3, --eta=0.1 0.3 and --eta=0.2; tyro's spellings of a weight with an underscore; experiment names
    whose weight reads back as the same number (0.1 and 0.1000001 apart)."""
    flags = ["ofql.py", "--env-id", "hopper-medium-v2", "--dataset-path", hopper_file]
    for weights in (["--eta", "0.1", "0.3"], ["--eta=0.1", "0.3"]):
        assert [m.eta for m in sweep.parse_args([*flags, *weights, "--seeds", "1"])[2]] == [0.1, 0.3]
    assert [m.eta for m in sweep.parse_args([*flags, "--eta=0.2"])[2]] == [0.2]
    for spelling in ("--grad-norm", "--grad_norm"):
        assert sweep.grid_values(["-x", spelling, "1", "-2", "--y"], "grad_norm") == (["1", "-2"], ["-x", "--y"])
    _, _, members = sweep.parse_args([*flags, "--eta", "0.1", "0.1000001", "3", "1e-05"])
    assert [m.exp_name for m in members] == ["ofql_eta0.1", "ofql_eta0.1000001", "ofql_eta3", "ofql_eta1e-05"]
    _, _, members = sweep.parse_args([*flags, "--eta", "0.2", "--seeds", "0", "1"])  # one weight: the script's name
    assert [(m.eta, m.exp_name) for m in members] == [(0.2, "ofql"), (0.2, "ofql")]


def test_a_stopped_sweep_resumes_bit_for_bit(tmp_path, hopper_file, monkeypatch):
    """Two members to step 40 in one go, or to step 20 and then --resume from their checkpoints: the same numbers, bit
    for bit (networks, Adam moments and the generators all come back), in the same run folders."""
    monkeypatch.chdir(tmp_path)
    base = script_args(ofql, hopper_file, "--total-steps", "40", "--eval-every", "20", "--save-model")
    grid = [dataclasses.replace(base, seed=s, eta=e) for s, e in ((0, 0.1), (1, 0.3))]
    whole_paths = sweep.train(ofql, grid, "whole")
    whole = [records(p) for p in whole_paths]
    first = sweep.train(ofql, [dataclasses.replace(a, total_steps=20) for a in grid], "part")
    checkpoints = [os.path.join(os.path.dirname(p), "checkpoint.pt") for p in first]
    resumed = sweep.train(ofql, [dataclasses.replace(a, resume=c) for a, c in zip(grid, checkpoints)], "part")
    assert [os.path.dirname(p) for p in resumed] == [os.path.dirname(p) for p in first]
    assert [records(p) for p in resumed] == whole
    evaluations = lambda path: [{k: v for k, v in e.items() if k != "decision_rate"} for e in
                                json.load(open(path))["evaluations"]]  # fmt: skip
    assert [e["step"] for e in evaluations(resumed[1])] == [20, 40]  # both sessions'
    assert [evaluations(p) for p in resumed] == [
        evaluations(p) for p in whole_paths
    ]  # each member's own, not member 0's


def test_a_resumed_sweep_takes_the_commands_seeds_data_and_negated_flags(tmp_path, hopper_file, monkeypatch):
    """A --no-... flag given on the resume is the command's (not the run's True); the members' seeds and data are the
    command's grid: in another order, or without --dataset-path, the checkpoints are refused."""
    monkeypatch.chdir(tmp_path)
    grid = ["ofql.py", "--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--seeds", "0", "1"]
    ran = ["--total-steps", "4", "--eval-every", "4", "--batch-size", "16", "--eval-episodes", "1", "--save-model"]
    script, _, members = sweep.parse_args([*grid, *ran])
    checkpoints = [os.path.join(os.path.dirname(p), "checkpoint.pt") for p in sweep.train(script, members, "first")]
    resume = ["--total-steps", "8", "--resume", *checkpoints]
    assert [a.save_model for a in sweep.parse_args([*grid, "--no-save-model", *resume])[2]] == [False, False]
    swapped = sweep.parse_args([*grid[:-2], "1", "0", *resume])[2]
    with pytest.raises(offline_data.UserError, match=r"--seed 1 \(was 0\)"):
        bookkeeping.Runs(ofql.__file__, swapped, sweep="x")
    without_data = sweep.parse_args([*grid[:3], *grid[5:], *resume])[2]
    with pytest.raises(offline_data.UserError, match=r"--dataset-path unset \(was "):
        bookkeeping.Runs(ofql.__file__, without_data, sweep="x")


def test_a_resumed_sweeps_members_keep_their_runs_flags_that_the_command_leaves_out(tmp_path, hopper_file, monkeypatch):
    """As a lone run's resume: each member's flags that the command leaves out are its run's (batch, evaluation,
    logging, --save-model, here); the grid (seeds, eta), the data and the flags given are the command's."""
    monkeypatch.chdir(tmp_path)
    grid = [
        "ofql.py",
        "--env-id",
        "hopper-medium-v2",
        "--dataset-path",
        hopper_file,
        "--seeds",
        "0",
        "1",
        "--eta",
        "0.1",
    ]
    grid += ["0.3"]
    ran = ["--total-steps", "4", "--eval-every", "4", "--log-every", "2", "--batch-size", "16", "--eval-episodes", "1"]
    script, _, members = sweep.parse_args([*grid, *ran, "--save-model"])
    checkpoints = [os.path.join(os.path.dirname(p), "checkpoint.pt") for p in sweep.train(script, members, "first")]
    _, _, resumed = sweep.parse_args([*grid, "--total-steps", "8", "--log-every", "4", "--resume", *checkpoints])
    kept = [(a.batch_size, a.eval_every, a.eval_episodes, a.save_model, a.num_candidates) for a in resumed]
    assert kept == [(16, 4, 1, True, 50)] * 4 and [(a.seed, a.eta) for a in resumed] == [(0, 0.1), (0, 0.3), (1, 0.1),
                                                                                          (1, 0.3)]  # fmt: skip
    assert [(a.total_steps, a.log_every, a.resume) for a in resumed] == [(8, 4, c) for c in checkpoints]


def test_sigterm_checkpoints_every_member_and_prints_the_command_that_continues(tmp_path, hopper_file):
    """A real SIGTERM to a running sweep: exit code 143, every member's checkpoint of the step it stopped at, and one
    line whose command finishes the sweep."""
    flags = ["ofql.py", "--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--no-cuda", "--seeds", "0", "1"]
    flags += ["--batch-size", "32", "--total-steps", "100000", "--log-every", "5", "--eval-every", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "sweep.py"), *flags, "--save-model"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/metrics.jsonl")) or not all(
        p.stat().st_size for p in tmp_path.glob("runs/*/metrics.jsonl")
    ):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("sweep.py: interrupted: stopped at step") and "continue with: python" in line
    step = int(line.split("stopped at step ")[1].split(";")[0])
    states = [bookkeeping.load_checkpoint(p) for p in sorted(tmp_path.glob("runs/*/checkpoint.pt"))]
    assert len(states) == 2 and {s["step"] for s in states} == {step}
    command = shlex.split(line.split("continue with: ")[1])
    resumed = command[command.index("--resume") + 1 :]
    assert len(resumed) == 2 and all((tmp_path / p).is_file() for p in resumed) and "__0__" in resumed[0]
    name = json.load(open(tmp_path / os.path.dirname(resumed[0]) / "sweep.json"))["sweep"]
    total = command.index("--total-steps") + 1
    command[total] = str(step + 10)
    done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for summary in tmp_path.glob("runs/*/summary.json"):
        assert json.load(open(summary))["steps"] == step + 10
        assert json.load(open(summary))["sweep"] == name  # the resumed sweep's name, not a new one


def test_track_makes_one_wandb_run_per_member_grouped_by_the_sweep(tmp_path, hopper_file, monkeypatch):
    """--track: one wandb run per member (wandb.init each time, reinit="create_new"), named after its run folder, in
    the sweep's group, with the script's code (not sweep.py's); each member's records go to its own run, which is
    finished at the end."""
    import wandb

    monkeypatch.chdir(tmp_path)
    made = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.summary, self.finished = kwargs, [], {}, False
            made.append(self)

        def log(self, record, step):
            self.logged.append(step)

        def finish(self, exit_code):
            self.finished = exit_code

    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeRun(**kwargs))
    base = script_args(ofql, hopper_file, "--total-steps", "4", "--eval-every", "4", "--log-every", "2", "--track")
    paths = sweep.train(ofql, [dataclasses.replace(base, seed=s) for s in (0, 1)], "tracked")
    assert [r.kwargs["name"] for r in made] == [os.path.basename(os.path.dirname(p)) for p in paths]
    assert all(r.kwargs["group"] == "tracked" and r.kwargs["reinit"] == "create_new" for r in made)
    assert [r.kwargs["config"]["seed"] for r in made] == [0, 1]
    assert all(r.kwargs["save_code"] and r.kwargs["settings"].program_relpath == "ofql.py" for r in made)
    assert all(r.logged == [2, 4] and r.finished == 0 and "final_score" in r.summary for r in made)
    monkeypatch.setattr(bookkeeping, "check_flags", lambda flags: None)  # the flags' check would refuse the NaN
    with pytest.raises(offline_data.UserError, match="1 of 2 members failed"):
        sweep.train(ofql, [base, dataclasses.replace(base, seed=1, eta=float("nan"))], "tracked")
    assert [r.finished for r in made[2:]] == [0, 1]  # the failed member's run is marked failed in wandb


def test_sweep_trains_a_fourth_script_by_the_contract_it_states(tmp_path, hopper_file, monkeypatch):
    """tests/minimal_script.py (its own names: one network, an optimizer `opt`, a weight `beta`) through sweep.py as
    it is: parsed, trained as a 2 x 2 grid with each member's folder and checkpoint, a one-member sweep equal to the
    script's own run, and a member's numbers independent of another's beta."""
    monkeypatch.chdir(tmp_path)
    path = os.path.join(ROOT, "tests", "minimal_script.py")
    flags = [path, "--dataset-path", hopper_file, "--seeds", "0", "1", "--beta", "0", "3", "--save-model"]
    script, _, grid = sweep.parse_args(flags)
    assert [(m.seed, m.beta, m.exp_name) for m in grid][:2] == [
        (0, 0.0, "minimal_script_beta0"),
        (0, 3.0, "minimal_script_beta3"),
    ]
    paths = sweep.train(script, grid, "minimal")
    assert len(paths) == 4 and all(json.load(open(p))["evaluations"][-1]["step"] == 20 for p in paths)
    state = bookkeeping.load_checkpoint(os.path.join(os.path.dirname(paths[3]), "checkpoint.pt"))
    agent = script.make_agent(11, 3, grid[3], torch.device("cpu"))
    agent.policy.load_state_dict(state["policy"]), agent.opt.load_state_dict(state["opt"])  # a lone Agent loads it
    alone, swept = records(script.train(grid[0])), records(sweep.train(script, [grid[0]], "one")[0])
    for a, s in zip(alone, swept, strict=True):
        assert s == pytest.approx(a, rel=1e-5, abs=1e-7)
    changed = [records(p) for p in sweep.train(script, grid[:3] + [dataclasses.replace(grid[3], beta=30.0)], "b")]
    assert changed[:3] == [records(p) for p in paths[:3]] and changed[3] != records(paths[3])
    assert records(paths[0]) != records(paths[2])  # seeds 0 and 1 differ


def test_a_parameter_without_a_gradient_is_left_out_of_the_norm_as_clip_grad_norm_does():
    """A script of the same form whose module holds a parameter no loss uses: the step clips the others per member."""
    used, unused = torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(2, 3))  # 2 members each
    module = torch.nn.ParameterList([used, unused])
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    losses = (used * torch.tensor([[1.0], [3.0]])).sum(dim=1)  # member m's gradient: (1 or 3) * ones(3)
    members = type("Stacked", (), {"max_norms": None})()
    norms = sweep.Members.optimizer_step(members, optimizer, module, losses, 1.0)
    torch.testing.assert_close(norms, torch.tensor([3**0.5, 3 * 3**0.5]))
    torch.testing.assert_close(used.detach(), 1 - torch.full((2, 3), 3**-0.5), atol=1e-5, rtol=0)  # both clipped to 1
    assert unused.grad is None and torch.equal(unused.detach(), torch.ones(2, 3))


def test_members_of_differing_grad_norms_are_each_clipped_to_their_own_and_another_limit_is_refused():
    """A domain's members (--grad-norm 1, 2 and 100; each gradient's norm 17.3): each clipped to its own, the third
    left as it is; an edited copy's optimizer_step given a limit other than --grad-norm, which the sweep would silently
    replace, is one line."""
    weight = torch.nn.Parameter(torch.ones(3, 3))
    args = [types.SimpleNamespace(grad_norm=limit) for limit in (1.0, 2.0, 100.0)]
    members = type("Stacked", (), {"max_norms": torch.tensor([1.0, 2.0, 100.0]), "member_args": args})()
    step = lambda max_norm: sweep.Members.optimizer_step(  # noqa: E731
        members, torch.optim.SGD([weight], lr=0.0), torch.nn.ParameterList([weight]), (weight * 10).sum(1), max_norm
    )
    step(1.0)
    torch.testing.assert_close(weight.grad.norm(dim=1), torch.tensor([1.0, 2.0, 10 * 3**0.5]), rtol=1e-5, atol=0)
    with pytest.raises(offline_data.UserError, match="clips each member to its own --grad-norm; .* given 0.5"):
        step(0.5)


def test_stacked_optimizers_keep_each_groups_options():
    """An actor optimizer of two groups (the output layer frozen at lr 0, listed first): the stacked optimizer has the
    same groups, with their options, over the stacked parameters; one over no network's parameters is refused."""
    agents = [ofql.make_agent(11, 3, ofql.Args(seed=seed), torch.device("cpu")) for seed in (0, 1)]
    for agent in agents:
        head, body = list(agent.actor.net[-1].parameters()), list(agent.actor.net[:-1].parameters())
        agent.actor_optimizer = torch.optim.Adam([{"params": head, "lr": 0.0}, {"params": body}], lr=3e-4)
    stacked = sweep.stack_agents(agents)
    groups = stacked.actor_optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.0, 3e-4]
    assert [p.shape for p in groups[0]["params"]] == [(2, 3, 256), (2, 3)]
    assert groups[1]["params"][0] is stacked.actor.net[0].weight and len(groups[1]["params"]) == 6
    agents[0].critic_optimizer = torch.optim.Adam([*agents[0].critic.parameters(), torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(offline_data.UserError, match="the Agent's critic_optimizer steps a parameter of none of its"):
        sweep.stack_agents(agents)


def test_a_name_the_sweep_rebinds_must_be_called_by_the_function_itself():
    """sweep.py batches the losses by rebinding the names update() calls: a loss called through a helper of the script
    would run unbatched, so it is refused in one line; a call from a function defined inside is found."""

    def helper_calls_it(agent):
        return critic_step(agent)  # noqa: F821 (a helper of the script, which calls critic_loss_fn)

    def calls_it_inside(agent):
        return (lambda: critic_loss_fn(agent))()  # noqa: F821 (the rebound name)

    with pytest.raises(
        offline_data.UserError, match=r"runs critic_loss_fn for all members by rebinding the name where"
    ):
        sweep.rebind(helper_calls_it, critic_loss_fn=print)
    assert sweep.rebind(calls_it_inside, critic_loss_fn=lambda agent: agent + 1)(1) == 2

    def with_a_keyword_only_default(agent, *, scale=3):
        """An edited copy's update()."""
        return critic_loss_fn(agent) * scale  # noqa: F821 (the rebound name)

    rebound = sweep.rebind(with_a_keyword_only_default, critic_loss_fn=lambda agent: agent + 1)
    assert rebound(1) == 6 and rebound.__doc__ == "An edited copy's update()."  # FunctionType alone drops both


def test_a_member_of_grad_norm_0_is_left_unclipped_beside_one_that_clips():
    """Members.stack's per-member limits: 0 is "no clipping" as in the script (inf), not a limit of 0, which would
    zero that member's gradient (it would never train)."""
    args = [dataclasses.replace(ofql.Args(), grad_norm=g) for g in (0.0, 2.0)]
    members = sweep.Members(ofql, args)
    members.stack([ofql.make_agent(11, 3, a, torch.device("cpu")) for a in args])
    weight = torch.nn.Parameter(torch.ones(2, 3))
    members.optimizer_step(
        torch.optim.SGD([weight], lr=0.0), torch.nn.ParameterList([weight]), (weight * 10).sum(1), 0.0
    )
    torch.testing.assert_close(weight.grad.norm(dim=1), torch.tensor([10 * 3**0.5, 2.0]), rtol=1e-5, atol=0)


def test_each_summary_names_the_sweep_and_its_size_a_failed_member_included(tmp_path, hopper_file, monkeypatch):
    """summary.json of every member, the failed one's too, names the sweep and its number of members (the grid's, not
    the members still training at the end)."""
    monkeypatch.chdir(tmp_path)
    base = script_args(ofql, hopper_file, "--total-steps", "2", "--eval-every", "2", "--log-every", "1")
    grid = [base, dataclasses.replace(base, eta=float("nan"), exp_name="bad")]
    monkeypatch.setattr(bookkeeping, "check_flags", lambda flags: None)  # the flags' check would refuse the NaN
    with pytest.raises(offline_data.UserError, match="1 of 2 members failed"):
        sweep.train(ofql, grid, "sized")
    summaries = [json.load(open(os.path.join("runs", d, "summary.json"))) for d in sorted(os.listdir("runs"))]
    assert [(s["sweep"], s["sweep_members"]) for s in summaries] == [("sized", 2), ("sized", 2)]
    assert sorted(s["error"] is None for s in summaries) == [False, True]


def test_the_shard_index_is_a_grid_place_from_0(hopper_file):
    """--shard I/K with a negative I (a job array's index mis-set) is refused, not read from the grid's end."""
    flags = ["ofql.py", "--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--seeds", "0", "1", "2"]
    for shard in ("--shard=-1/3", "--shard=-3/3"):
        with pytest.raises(offline_data.UserError, match=r"^--shard must be I/K with 0 <= I < K"):
            sweep.parse_args([*flags, shard])


def test_the_largest_seed_numpy_takes_is_a_seed_of_the_grid(hopper_file):
    """--seeds takes numpy's whole range, [0, 2^32 - 1], as the script's --seed does; 2^32 is refused."""
    flags = ["ofql.py", "--env-id", "hopper-medium-v2", "--dataset-path", hopper_file]
    _, _, members = sweep.parse_args([*flags, "--seeds", "0", "4294967295"])
    assert [m.seed for m in members] == [0, 4294967295]
    bookkeeping.check_flags(vars(members[1]))  # the script's own check agrees
    with pytest.raises(offline_data.UserError, match=r"--seeds must be numbers in \[0, 4294967295\]"):
        sweep.parse_args([*flags, "--seeds", "4294967296"])


def test_runs_resumed_together_agree_where_one_process_cannot_differ(tmp_path, hopper_file, monkeypatch, capsys):
    """Each member's flags that the command leaves out are its run's: runs whose --num-candidates differ are refused
    (the loop reads one), given on the command they train together, told that their noise is new; a sweep resumed whole
    keeps its members' names (--exp-name left out) with no note, and a part of it gets the note."""
    monkeypatch.chdir(tmp_path)
    data = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file]
    ran = ["--total-steps", "4", "--eval-every", "4", "--batch-size", "16", "--eval-episodes", "1", "--save-model"]
    checkpoint = lambda summary: os.path.join(os.path.dirname(summary), "checkpoint.pt")
    lone = [checkpoint(ofql.train(ofql.parse_args([*data, *ran, "--seed", s, "--num-candidates", k]))) for s, k in
            (("0", "2"), ("1", "3"))]  # fmt: skip
    grid = ["ofql.py", *data, "--seeds", "0", "1", "--total-steps", "8"]
    with pytest.raises(offline_data.UserError, match=r"--num-candidates differs between the members' runs \(\{'hop"):
        sweep.parse_args([*grid, "--resume", *lone])
    capsys.readouterr()
    together = sweep.parse_args([*grid, "--num-candidates", "2", "--resume", *lone])[2]
    assert [a.num_candidates for a in together] == [2, 2]
    assert "NOTE: these runs are not one sweep's members in its order" in capsys.readouterr().out

    grid = ["ofql.py", *data, "--seeds", "0", "--eta", "0.1", "0.3"]
    script, _, members = sweep.parse_args([*grid, *ran, "--exp-name", "foo"])
    checkpoints = [checkpoint(p) for p in sweep.train(script, members, "first")]
    capsys.readouterr()
    resumed = sweep.parse_args([*grid, "--total-steps", "8", "--resume", *checkpoints])[2]
    assert [a.exp_name for a in resumed] == ["foo_eta0.1", "foo_eta0.3"] and "NOTE" not in capsys.readouterr().out
    sweep.parse_args([*grid[:-2], "0.3", "--total-steps", "8", "--resume", checkpoints[1]])
    assert "NOTE: these runs are not one sweep's members" in capsys.readouterr().out
