"""sweep.py --env-ids: several datasets of one domain in one process. Each member samples its own dataset (sizes
differ), trains with its own dataset's presets (eta, grad_norm, ...), evaluates in its own env and writes the run
folder the script would; it equals the same member of a one-dataset sweep, so no member's numbers depend on another
dataset's; flags that cannot differ inside one process are refused in one line."""

import dataclasses
import json
import os
import subprocess
import sys
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
from conftest import ROOT, record_d4rl_file

SCRIPTS = {"ofql": ofql, "dql": dql, "fql": fql}
DomainBuffer = sweep.DomainBuffer
TIMING = ("steps_per_sec", "eval/decision_rate")
FLAGS = ["--no-cuda", "--batch-size", "32", "--eval-episodes", "2", "--log-every", "10", "--num-candidates", "2"]
A, B = "hopper-medium-v2", "hopper-medium-replay-v2"  # OFQL's and DQL's presets: grad_norm 9 and 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two hopper files of different sizes and contents, and a third like the second with other transitions."""
    folder = tmp_path_factory.mktemp("domain")
    paths = {name: str(folder / f"{name}.hdf5") for name in ("a", "b", "b2")}
    record_d4rl_file(paths["a"], episodes=4, max_steps=40, seed=0)
    record_d4rl_file(paths["b"], episodes=3, max_steps=25, seed=7)
    record_d4rl_file(paths["b2"], episodes=5, max_steps=30, seed=11)
    return paths


def records(summary_path: str) -> list[dict]:
    with open(os.path.join(os.path.dirname(summary_path), "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def run(argv: list[str], name: str) -> list[list[dict]]:
    script, _, members = sweep.parse_args(argv)
    return [records(path) for path in sweep.train(script, members, name)]


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_domain_member_is_that_member_of_a_one_dataset_sweep(tmp_path, files, monkeypatch, name):
    """The domain sweep (A, B) x seed 0 against A's sweep over (A's preset weight, another) and B's over (another, B's
    preset weight): the same member at the same place of a grid of the same size logs bit for bit the same numbers,
    though the other member trains on another dataset, with another weight and another gradient clipping."""
    monkeypatch.chdir(tmp_path)
    module, weight = SCRIPTS[name], f"--{SCRIPTS[name].SWEEP_WEIGHT}"
    steps = ["--total-steps", "30", "--eval-every", "30", *FLAGS]
    domain = run([f"{name}.py", "--env-ids", A, B, "--dataset-paths", files["a"], files["b"], *steps], "domain")
    preset = {e: str(getattr(module.parse_args(["--env-id", e]), module.SWEEP_WEIGHT)) for e in (A, B)}
    alone_a = run([f"{name}.py", "--env-id", A, "--dataset-path", files["a"], weight, preset[A], "7", *steps], "a")
    alone_b = run([f"{name}.py", "--env-id", B, "--dataset-path", files["b"], weight, "7", preset[B], *steps], "b")
    assert [r["step"] for r in domain[0]] == [10, 20, 30] and "eval/score" in domain[0][-1]
    assert domain[0] == alone_a[0] and domain[1] == alone_b[1]
    assert domain[0][-1]["critic_loss"] != domain[1][-1]["critic_loss"]  # two datasets, not one


def test_a_domain_sweep_saves_and_resumes_bit_for_bit(tmp_path, files, monkeypatch):
    """(A, B) with --save-model to step 20 in one go, or to step 10 and then --resume from the members' checkpoints
    (member 0's with the 5 empty online tensors of an older file): the same numbers, bit for bit."""
    monkeypatch.chdir(tmp_path)
    steps = ["--total-steps", "20", "--eval-every", "10", "--save-model", *FLAGS]
    script, _, members = sweep.parse_args(
        ["ofql.py", "--env-ids", A, B, "--dataset-paths", files["a"], files["b"], *steps]
    )
    whole = [records(p) for p in sweep.train(script, members, "whole")]
    part = sweep.train(script, [dataclasses.replace(m, total_steps=10) for m in members], "part")
    paths = [os.path.join(os.path.dirname(p), "checkpoint.pt") for p in part]
    older = torch.load(paths[0], weights_only=True)
    torch.save({**older, "online": {k: torch.zeros(0, 1) for k in bookkeeping.ONLINE_FIELDS}}, paths[0])
    resumed = sweep.train(script, [dataclasses.replace(m, resume=p) for m, p in zip(members, paths)], "part")
    assert [records(p) for p in resumed] == whole and [r["step"] for r in whole[1]] == [10, 20]


def test_no_member_depends_on_another_dataset(tmp_path, files, monkeypatch):
    """(A, B) and (A, B2), B2 a dataset of another size: A's member logs the same numbers; B's and B2's differ."""
    monkeypatch.chdir(tmp_path)
    steps = ["--total-steps", "20", "--eval-every", "20", *FLAGS]
    first = run(["ofql.py", "--env-ids", A, B, "--dataset-paths", files["a"], files["b"], *steps], "first")
    second = run(["ofql.py", "--env-ids", A, B, "--dataset-paths", files["a"], files["b2"], *steps], "second")
    assert first[0] == second[0] and first[1] != second[1]


def test_each_member_has_its_datasets_presets_and_writes_the_scripts_run_folder(tmp_path, files):
    """The command line: datasets outer, seeds, then each dataset's preset weight; each member's config.json and
    summary.json name its own dataset (its size: config's transitions) and grad_norm; --shard splits the domain."""
    argv = ["ofql.py", "--env-ids", A, B, "--dataset-paths", files["a"], files["b"], "--seeds", "0", "1"]
    _, _, members = sweep.parse_args(argv + ["--shard", "1/2"])
    assert [(m.env_id, m.seed) for m in members] == [(A, 1), (B, 1)]
    _, _, walkers = sweep.parse_args(["ofql.py", "--env-ids", "walker2d-medium-v2", "walker2d-medium-replay-v2"])
    assert [m.eta for m in walkers] == [0.1, 0.01] and [m.grad_norm for m in walkers] == [1.0, 4.0]
    flags = ["--total-steps", "10", "--eval-every", "10", *FLAGS]
    done = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *argv, *flags], cwd=tmp_path, timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = [line.split("summary: ")[1] for line in done.stdout.splitlines() if line.startswith("summary: ")]
    assert len(summaries) == 4
    for path, (env_id, seed, file) in zip(summaries, [(A, 0, "a"), (A, 1, "a"), (B, 0, "b"), (B, 1, "b")]):
        with open(os.path.join(tmp_path, path)) as f:
            summary = json.load(f)
        with open(os.path.join(tmp_path, os.path.dirname(path), "config.json")) as f:
            config = json.load(f)
        assert (summary["env_id"], summary["seed"], summary["dataset"]) == (env_id, seed, files[file])
        assert summary["sweep"].startswith("hopper-medium__ofql_sweep__") and summary["final_score"] is not None
        assert config["grad_norm"] == (9.0 if env_id == A else 4.0) and config["dataset_path"] == files[file]
        assert config["transitions"] == len(offline_data.load(env_id, files[file]).data["rewards"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ofql.py", "--env-ids", "antmaze-umaze-v2", "antmaze-medium-play-v2"], "--max-q-backup differs"),
        (["dql.py", "--env-ids", "antmaze-medium-play-v2", "antmaze-large-play-v2"], "--actor-lr differs"),
        (["ofql.py", "--env-ids", A, B, "--env-id", A], "replace --env-id"),
        (
            ["ofql.py", "--env-ids", A, B, "--dataset-paths", "x.hdf5"],
            "^--dataset-paths needs one file per id.*1 for 2$",
        ),
        (["ofql.py", "--env-ids", A, B, "--dataset-paths"], "^--dataset-paths needs one file per id.*0 for 2$"),
        (["ofql.py", "--env-ids", A, A], f"^--env-ids must not repeat an id: {A}$"),
        (["ofql.py", "--env-ids"], "^--env-ids needs at least one id$"),
        (["ofql.py", "--env-id", A, "--dataset-paths", "x.hdf5"], "goes with --env-ids"),
    ],
)
def test_what_cannot_differ_in_one_process_is_refused_in_one_line(argv, message):
    with pytest.raises(sweep.UserError, match=message):
        sweep.parse_args(argv)


def test_datasets_of_other_sizes_or_online_steps_are_refused_and_leave_no_run_folder(tmp_path, files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    walker = str(tmp_path / "walker.hdf5")
    record_d4rl_file(walker, gym_id="Walker2d-v4", episodes=2, max_steps=20)
    for argv, message in [
        (["--env-ids", A, "walker2d-medium-v2", "--dataset-paths", files["a"], walker], "different .* sizes"),
        (["--env-ids", A, B, "--dataset-paths", files["a"], files["b"], "--online-steps", "5"], "--online-steps"),
    ]:
        script, _, members = sweep.parse_args(["ofql.py", *argv, "--total-steps", "10", *FLAGS])
        with pytest.raises(sweep.UserError, match=message):
            sweep.train(script, members, "refused")
        assert not os.path.exists("runs") or os.listdir("runs") == []


def test_datasets_with_and_without_an_evaluation_env_are_refused_in_either_order(files):
    """The first dataset's env decided before: a second without one failed at the first evaluation (NoneType is not
    callable), one with an env after a first without went unevaluated."""
    a = offline_data.load(A, files["a"])
    for members in ([a, a._replace(make_env=None)], [a._replace(make_env=None), a]):
        with pytest.raises(offline_data.UserError, match=r"an evaluation environment, or none: \[.*\] have none"):
            offline_data.MemberSources(members)


def test_a_note_shared_by_the_members_datasets_is_printed_once():
    """Two datasets of your own (no reference returns) and one with them: the run's note is the raw returns' once."""
    own = offline_data.DataSource({}, "a.hdf5", 11, 3, lambda: None, "Hopper-v5", None, None)
    sources = [own, own._replace(path="b.hdf5"), own._replace(path="c.hdf5", ref_min=0.0, ref_max=1.0)]
    assert offline_data.MemberSources(sources).limitation == own.limitation != ""


def test_evaluation_scores_each_member_in_its_own_env_by_its_own_references(files):
    """Member 1's env pays 10x member 0's and its references are (0, 1000): the same actions from the same seeds
    return 10x, scored by member 1's references; member 0's by D4RL's hopper ones."""
    a = offline_data.load(A, files["a"])
    ten_times = lambda: gym.wrappers.TransformReward(a.make_env(), lambda r: 10.0 * r)
    source = offline_data.MemberSources([a, a._replace(make_env=ten_times, ref_min=0.0, ref_max=1000.0)])
    envs = offline_data.evaluation_envs(source.make_env, 4)
    still = lambda obs: torch.zeros(len(obs), a.act_dim)
    results = ofql.evaluate([still], envs, source, [ofql.Args(seed=0)] * 2, torch.device("cpu"))
    assert results[1]["return"] == pytest.approx(10.0 * results[0]["return"])
    assert results[1]["score"] == pytest.approx(results[1]["return"] / 10.0)
    assert results[0]["score"] == pytest.approx(offline_data.normalized_score(A, results[0]["return"]))


def test_a_members_own_reward_rule_shapes_its_rewards(tmp_path, files, monkeypatch):
    """Each dataset's reward rule is its own (AntMaze's and Adroit's presets differ from MuJoCo's): member 1's rule
    changes its numbers and not member 0's, and its rewards are its dataset's under that rule."""
    monkeypatch.chdir(tmp_path)
    base = ofql.parse_args(["--env-id", A, "--dataset-path", files["a"], "--total-steps", "20", "--eval-every", "20"]
                           + FLAGS)  # fmt: skip
    buffers, logs = [], []
    monkeypatch.setattr(sweep, "DomainBuffer", lambda *a: buffers.append(DomainBuffer(*a)) or buffers[-1])
    for mode in ("raw", "standardize"):
        other = dataclasses.replace(base, env_id=B, dataset_path=files["b"], seed=1, reward_mode=mode)
        logs.append([records(path) for path in sweep.train(ofql, [base, other], f"rewards_{mode}")])
    assert logs[0][0] == logs[1][0] and logs[0][1][-1]["critic_loss"] != logs[1][1][-1]["critic_loss"]
    start, size = int(buffers[1].starts[1]), buffers[1].member_sizes[1]
    expected = offline_data.load(B, files["b"], "standardize").data["rewards"]
    np.testing.assert_allclose(buffers[1].rewards[start : start + size].squeeze(1).numpy(), expected, rtol=1e-6)


def test_a_members_own_gamma_enters_its_losses(tmp_path, files, monkeypatch):
    """gamma differs between OGBench's mazes' presets: changing member 1's changes its numbers and not member 0's."""
    monkeypatch.chdir(tmp_path)
    base = ofql.parse_args(["--env-id", A, "--dataset-path", files["a"], "--total-steps", "20", "--eval-every", "20"]
                           + FLAGS)  # fmt: skip
    logs = []
    for gamma in (0.99, 0.5):
        members = [dataclasses.replace(base, seed=0), dataclasses.replace(base, seed=1, gamma=gamma)]
        logs.append([records(path) for path in sweep.train(ofql, members, f"gamma{gamma}")])
    assert logs[0][0] == logs[1][0] and logs[0][1][-1]["critic_loss"] != logs[1][1][-1]["critic_loss"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ofql.py", "--env-ids", A, A, B], f"^--env-ids must not repeat an id: {A}$"),  # the repeated one alone
        (
            ["ofql.py", "--env-ids", A, B, "--dataset-paths", "x", "y", "z"],
            "^--dataset-paths needs one file per id.*3 for 2$",
        ),
    ],
)
def test_a_repeated_id_is_named_alone_and_a_path_too_many_is_refused(argv, message):
    with pytest.raises(sweep.UserError, match=message):
        sweep.parse_args(argv)


def test_the_domain_buffer_holds_each_dataset_once_however_many_members_share_it(files):
    """Two members of dataset a and one of b: a's rows are on the device once, both of its members read them from
    row 0, and b's member from the row after them; each member's size is its dataset's."""
    a, b = (offline_data.load(env_id, files[f]).data for env_id, f in ((A, "a"), (B, "b")))
    buffer = sweep.DomainBuffer(ofql, [a, a, b], torch.device("cpu"))
    n_a, n_b = len(a["rewards"]), len(b["rewards"])
    assert len(buffer.rewards) == n_a + n_b and buffer.member_sizes == [n_a, n_a, n_b]
    assert buffer.starts.flatten().tolist() == [0, 0, n_a]


def test_a_sweep_over_datasets_without_a_common_prefix_is_named_by_their_number():
    members = [types.SimpleNamespace(env_id=e) for e in ("hopper-medium-v2", "walker2d-medium-v2")]
    name = sweep.sweep_name(ofql, sweep.Args(), members)
    assert name.startswith("2_datasets__ofql_sweep__") and not name.endswith("of1")
