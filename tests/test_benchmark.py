"""The benchmark scripts: compare.py (the commands it launches, the table it builds from the runs' summary.json and
config files, the rows it keeps), a tiny speed.py run, and time_embedding.py's offline measures."""

import dataclasses
import importlib
import itertools
import json
import os
import shutil
import sys
import types

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import tyro

from conftest import ROOT, record_d4rl_file

sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import compare  # noqa: E402


def fake_run(out_dir, env_id, algorithm, seed, scores, commit="0123456789ab", config=None, **summary):
    """A finished run's folder: summary.json (`summary` adds to or replaces its keys) and config.json (the same
    commit and evaluation flags, `config` added)."""
    run_dir = os.path.join(out_dir, "runs", f"{env_id.replace('/', '-')}__{algorithm}__{seed}__123")  # as the scripts
    os.makedirs(run_dir)
    evaluations = [{"step": 100 * (i + 1), "score": s} for i, s in enumerate(scores)]
    summary = {
        "env_id": env_id,
        "seed": seed,
        "steps": 300,
        "evaluations": evaluations,
        "train_steps_per_sec": 10.0,
        "eval_episodes": 10,
        "num_candidates": 1,
        "commit": commit,
    } | summary
    flags = {"eval_every": 100, **{k: summary[k] for k in ("eval_episodes", "num_candidates", "commit")}}
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(flags | (config or {}), f)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f)
    return run_dir


def test_report_is_mean_and_std_over_seeds_of_last_and_best(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = record_d4rl_file(data_dir / "hopper-medium.hdf5", episodes=2, max_steps=10)
    out = str(tmp_path / "out")
    fake_run(out, "hopper-medium-v2", "ofql", 0, [10.0, 50.0, 30.0])
    fake_run(out, "hopper-medium-v2", "ofql", 1, [20.0, 40.0, 50.0], commit="fedcba987654+changes")
    fake_run(out, "hopper-medium-v2", "dql", 0, [5.0, 6.0, 7.0])
    args = compare.Args(
        datasets=["hopper-medium-v2"],
        data_dir=str(data_dir),
        algorithms=["ofql", "dql", "fql"],
        seeds=[0, 1],
        out_dir=out,
        plot_only=True,
    )
    compare.write_report(args)
    table = open(os.path.join(out, "results.md")).read()
    # ofql: last 30, 50 -> 40 ± 10; best 50, 50 -> 50 ± 0; curve = seed mean at every evaluation
    assert "| ofql | 2 | 40.0 ± 10.0 | 50.0 ± 0.0 | 15 / 45 / 40 | - | 0123456789ab, fedcba987654+changes |" in table
    assert "| dql | 1 | 7.0 | 7.0 | 5 / 6 / 7 | - | 0123456789ab |" in table  # the code that made each row
    assert "| fql |" not in table  # no runs, no row
    results = json.load(open(os.path.join(out, "results.json")))
    assert [r["algorithm"] for r in results] == ["ofql", "dql"] and results[0]["seeds"] == [0, 1]
    ends = np.flatnonzero(rows["terminals"] | rows["timeouts"])
    returns = [rows["rewards"][start : end + 1].sum() for start, end in zip(np.r_[0, ends[:-1] + 1], ends)]
    expected = np.mean([100 * (r + 20.272305) / (3234.3 + 20.272305) for r in returns])
    assert len(returns) == 2 and results[0]["dataset_mean_score"] == pytest.approx(expected, rel=1e-5)
    assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000
    # a new ofql run replaces ofql's row; dql, with no runs left, keeps its row from the previous results.json
    for name in os.listdir(os.path.join(out, "runs")):
        shutil.rmtree(os.path.join(out, "runs", name))
    fake_run(out, "hopper-medium-v2", "ofql", 0, [1.0, 2.0, 3.0], commit="abcdefabcdef")
    compare.write_report(args)
    table = open(os.path.join(out, "results.md")).read()
    assert "| ofql | 1 | 3.0 | 3.0 | 1 / 2 / 3 | - | abcdefabcdef |" in table
    assert "| dql | 1 | 7.0 | 7.0 | 5 / 6 / 7 | - | 0123456789ab |" in table  # kept with the code that made it
    # a run of one algorithm (--algorithms fql) keeps the others' rows, in the usual order, in every file it writes
    fake_run(out, "hopper-medium-v2", "fql", 0, [4.0, 4.0, 4.0])
    compare.write_report(dataclasses.replace(args, algorithms=["fql"]))
    table = open(os.path.join(out, "results.md")).read()
    for row in ("| ofql | 1 | 3.0 | 3.0 |", "| dql | 1 | 7.0 | 7.0 |", "| fql | 1 | 4.0 | 4.0 |"):
        assert row in table
    results = json.load(open(os.path.join(out, "results.json")))
    assert [r["algorithm"] for r in results] == ["ofql", "dql", "fql"]
    # a run of another dataset keeps this one's rows, after its own (its dataset's mean: its file under --data-dir)
    record_d4rl_file(data_dir / "hopper-medium-replay.hdf5", episodes=1, max_steps=10)
    fake_run(out, "hopper-medium-replay-v2", "ofql", 0, [6.0, 6.0, 6.0])
    compare.write_report(dataclasses.replace(args, datasets=["hopper-medium-replay-v2"], algorithms=["ofql"]))
    results = json.load(open(os.path.join(out, "results.json")))
    assert [(r["env_id"], r["algorithm"]) for r in results] == [("hopper-medium-replay-v2", "ofql")] + [
        ("hopper-medium-v2", a) for a in ("ofql", "dql", "fql")
    ]
    assert f"| hopper-medium-v2 | {expected:.1f} | dql | 1 | 7.0 |" in open(os.path.join(out, "results.md")).read()
    compare.write_report(dataclasses.replace(args, keep_rows=False))
    assert "| dql |" not in open(os.path.join(out, "results.md")).read()
    assert "hopper-medium-replay-v2" not in open(os.path.join(out, "results.md")).read()
    # a sweep's members by their experiment names, after the usual ones
    fake_run(out, "hopper-medium-v2", "ofql_eta0.3", 0, [9.0, 8.0, 7.0])
    compare.write_report(dataclasses.replace(args, algorithms=["ofql_eta0.3", "ofql"], keep_rows=False))
    table = open(os.path.join(out, "results.md")).read()
    assert table.index("| ofql | 1 | 3.0") < table.index("| ofql_eta0.3 | 1 | 7.0 | 9.0 |")
    compare.write_report(dataclasses.replace(args, algorithms=["ofql"]))  # a sweep member's row is kept as any other
    assert "| ofql_eta0.3 | 1 | 7.0 | 9.0 |" in open(os.path.join(out, "results.md")).read()
    with pytest.raises(SystemExit, match=r"\(it holds hopper-medium-replay-v2 ofql seed 0, hopper-medium-v2 fql se"):
        compare.write_report(dataclasses.replace(args, algorithms=["bc"], keep_rows=False))  # what it could report


def test_report_leaves_out_failed_sweep_members_and_names_them(tmp_path):
    """A sweep member that went non-finite writes a summary.json with its error and the evaluations before it (here
    one, or none): not a seed of the row, and named under the table with the seed that has no finished run; a row
    whose members all failed is no row, and the nothing-to-report exit names them."""
    out = str(tmp_path)
    fake_run(out, "hopper-medium-v2", "ofql", 0, [10.0, 20.0, 30.0])
    fake_run(out, "hopper-medium-v2", "ofql", 1, [50.0], error="non-finite actor_grad_norm at step 150")
    fake_run(out, "hopper-medium-v2", "ofql", 2, [], error="non-finite critic_loss at step 1")
    args = compare.Args(datasets=["hopper-medium-v2"], algorithms=["ofql"], seeds=[0, 1, 2, 3], out_dir=out)
    compare.write_report(args)
    table = open(os.path.join(out, "results.md")).read()
    assert "| ofql | 1 | 30.0 | 30.0 | 10 / 20 / 30 |" in table
    assert (
        "hopper-medium-v2 ofql: seed 1 failed (non-finite actor_grad_norm at step 150); seed 2 failed (non-finite "
        "critic_loss at step 1); seed 3 has no finished run"
    ) in table
    assert json.load(open(os.path.join(out, "results.json")))[0]["seeds"] == [0]
    with pytest.raises(SystemExit, match=r"nothing to report: .*; hopper-medium-v2 ofql: seed 1 failed \(non-finite"):
        compare.write_report(dataclasses.replace(args, seeds=[1, 2], keep_rows=False))


def test_an_algorithm_without_runs_is_no_row_and_runs_without_a_score_are_refused(tmp_path):
    """--algorithms names one with no run at all: no row, no note of missing seeds (only a row's seeds are named); a
    finished run of a seed not in --seeds is named under the table; your own data's runs (raw returns, no score): one
    line, not a table of Nones."""
    out = str(tmp_path)
    fake_run(out, "hopper-medium-v2", "ofql", 0, [1.0, 2.0])
    args = compare.Args(datasets=["hopper-medium-v2"], algorithms=["ofql", "dql"], seeds=[0], out_dir=out)
    compare.write_report(args)
    report = open(os.path.join(out, "results.md")).read()
    assert "| ofql | 1 |" in report and "dql" not in report
    fake_run(out, "hopper-medium-v2", "ofql", 1, [3.0, 4.0])  # a run of a seed not asked for: named, not silent
    os.makedirs(os.path.join(out, "runs", "compare"))  # no run: compare's default --out-dir, a cluster's log folder
    compare.write_report(args)
    report = open(os.path.join(out, "results.md")).read()
    assert "| ofql | 1 |" in report and "hopper-medium-v2 ofql: seed 1's run left out (not in --seeds)" in report
    fake_run(out, "InvertedPendulum-v5", "ofql", 0, [None, None])
    args = compare.Args(datasets=["InvertedPendulum-v5"], algorithms=["ofql"], seeds=[0], out_dir=out)
    with pytest.raises(SystemExit, match=r"^InvertedPendulum-v5 ofql: its runs have no score \(no reference returns\)"):
        compare.write_report(args)


def test_report_states_the_runs_protocol_and_refuses_a_row_of_several(tmp_path):
    """The header says what the runs were (their summary.json and config.json), not --plot-only's defaults (20000
    steps, 10 episodes, 1 candidate, every 2000); rows of other protocols each get theirs; a row whose seeds differ
    in it (here the number of evaluations) is refused in one line."""
    out = str(tmp_path)
    presets = dict(steps=2_000_000, eval_episodes=100, num_candidates=50, config={"eval_every": 50_000})
    for seed in (0, 1):
        fake_run(out, "hopper-medium-v2", "ofql", seed, [1.0, 2.0], **presets)
    args = compare.Args(datasets=["hopper-medium-v2"], algorithms=["ofql", "dql"], seeds=[0, 1], out_dir=out)
    compare.write_report(args)
    protocol = "2000000 steps, 100 evaluation episodes, 50 candidate(s), evaluation every 50000 steps, seeds [0, 1];"
    assert open(os.path.join(out, "results.md")).read().startswith(protocol)
    row = json.load(open(os.path.join(out, "results.json")))[0]
    assert row["protocol"] == {
        "steps": 2_000_000,
        "online_steps": 0,
        "eval_episodes": 100,
        "num_candidates": 50,
        "eval_every": 50_000,
        "evaluation_steps": [100, 200],
    }
    fake_run(out, "hopper-medium-v2", "dql", 0, [3.0, 4.0, 5.0])  # another protocol: each row says its own
    compare.write_report(args)
    table = open(os.path.join(out, "results.md")).read()
    assert table.startswith("the rows' runs differ in protocol (under the table), seeds [0, 1];")
    assert "\n\nhopper-medium-v2 ofql: 2000000 steps, 100 evaluation episodes" in table
    assert "\n\nhopper-medium-v2 dql: 300 steps, 10 evaluation episodes, 1 candidate(s), evaluation every 100" in table
    assert "dql: seed 1 has no finished run" in table
    fake_run(out, "hopper-medium-v2", "dql", 1, [3.0, 4.0])
    with pytest.raises(SystemExit, match=r"^hopper-medium-v2 dql: its runs differ in protocol \(seed 0: .*, 3 eval"):
        compare.write_report(args)


def test_report_names_every_commit_that_trained_a_resumed_run(tmp_path):
    """A run resumed twice with other code: config.json, config_resumed_at_<step>.json (in the order of their steps,
    not of their names) and summary.json give its commits in order; a flag a --resume changed is shown the same way."""
    out = str(tmp_path)
    run_dir = fake_run(out, "hopper-medium-v2", "ofql", 0, [1.0, 2.0, 3.0], commit="cccccc", eval_episodes=100)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"commit": "aaaaaa+changes", "eval_every": 100, "eval_episodes": 10, "num_candidates": 1}, f)
    for step, commit in ((1000, "cccccc"), (200, "bbbbbb")):
        with open(os.path.join(run_dir, f"config_resumed_at_{step}.json"), "w") as f:
            json.dump({"commit": commit, "eval_every": 100, "eval_episodes": 100, "num_candidates": 1}, f)
    fake_run(out, "hopper-medium-v2", "ofql", 1, [1.0, 2.0, 3.0], commit="cccccc", eval_episodes=100)
    args = compare.Args(datasets=["hopper-medium-v2"], algorithms=["ofql"], seeds=[0], out_dir=out)
    compare.write_report(args)
    table = open(os.path.join(out, "results.md")).read()
    assert "| 1 / 2 / 3 | - | aaaaaa+changes then bbbbbb then cccccc |" in table
    assert table.startswith("300 steps, 10 then 100 evaluation episodes,")
    with pytest.raises(SystemExit, match="its runs differ in protocol"):  # a run evaluated on 100 episodes throughout
        compare.write_report(dataclasses.replace(args, seeds=[0, 1]))


@pytest.mark.parametrize("presets", [False, True])
def test_launch_passes_the_protocol_or_leaves_the_presets(tmp_path, monkeypatch, presets):
    launched = []
    monkeypatch.setattr(compare.subprocess, "Popen", lambda cmd, **kw: launched.append(cmd))
    args = compare.Args(data_dir="", out_dir=str(tmp_path), presets=presets, total_steps=123)
    compare.launch(args, "hopper-medium-v2", "fql", 2)
    cmd = launched[0]
    assert (
        cmd[1].endswith("fql.py") and cmd[cmd.index("--seed") + 1] == "2" and cmd[cmd.index("--exp-name") + 1] == "fql"
    )
    assert ("--total-steps" in cmd) == (not presets) and ("--num-candidates" in cmd) == (not presets)
    assert "--dataset-path" not in cmd  # --data-dir '': the real D4RL file
    assert cmd[cmd.index("--eval-every") + 1] == "2000" if not presets else "--eval-every" not in cmd  # the preset's
    compare.launch(args, "hopper-medium-v2", "bc", 0)
    assert launched[1][1].endswith("ofql.py") and launched[1][launched[1].index("--eta") + 1] == "0"
    compare.launch(dataclasses.replace(args, eval_every=500), "hopper-medium-v2", "bc", 0)
    assert launched[2][launched[2].index("--eval-every") + 1] == "500"  # given: passed, with the presets too


def test_launch_gives_local_files_to_d4rl_ids_only(tmp_path, monkeypatch):
    """With --data-dir, a D4RL id trains on its file there; an OGBench id on ogbench's files."""
    launched = []
    monkeypatch.setattr(compare.subprocess, "Popen", lambda cmd, **kw: launched.append(cmd))
    args = compare.Args(data_dir=str(tmp_path), out_dir=str(tmp_path))
    for env_id in ("hopper-medium-v2", "cube-double-play-singletask-task2-v0"):
        compare.launch(args, env_id, "ofql", 0)
    paths = [cmd[cmd.index("--dataset-path") + 1] if "--dataset-path" in cmd else None for cmd in launched]
    assert paths == [str(tmp_path / "hopper-medium.hdf5"), None]


def test_a_relative_data_dir_reaches_the_runs_absolute(tmp_path, monkeypatch):
    """The runs start in --out-dir: --data-dir data must reach them as <here>/data/..., not data/..."""
    launched = []
    monkeypatch.setattr(compare.subprocess, "Popen", lambda cmd, **kw: launched.append(cmd))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    compare.launch(compare.Args(data_dir="data", out_dir="out"), "hopper-medium-v2", "ofql", 0)
    assert launched[0][launched[0].index("--dataset-path") + 1] == str(tmp_path / "data" / "hopper-medium.hdf5")


def test_time_embedding_gives_its_runs_the_dataset_path_absolute(tmp_path, monkeypatch):
    """Its runs start in --out-dir: a relative --dataset-path must reach them absolute."""
    import time_embedding

    launched = []
    monkeypatch.setattr(time_embedding.subprocess, "Popen", lambda cmd, **kw: launched.append((cmd, kw["cwd"])))
    monkeypatch.chdir(tmp_path)
    args = time_embedding.Args(dataset_path="data/hopper.hdf5", out_dir="out")
    time_embedding.launch(args, "raw16:0", str(tmp_path / "raw16__0.log"))
    ((cmd, cwd),) = launched
    assert cwd == "out" and cmd[cmd.index("--dataset-path") + 1] == str(tmp_path / "data" / "hopper.hdf5")


class FakeRun:
    """A stand-in for subprocess.Popen: a run that fails at once (exit 2, an error as its log's last line) when its
    command has `FakeRun.failing`, else one that trains until terminated."""

    failing, started = "", []

    def __init__(self, cmd, stdout=None, **kw):
        self.cmd, self.returncode, self.calls = " ".join(cmd), None, []
        if FakeRun.failing in self.cmd:
            stdout.write("training...\nerror: out of memory\n")
            stdout.flush()
            self.returncode = 2
        FakeRun.started.append(self)

    def poll(self):
        return self.returncode

    def terminate(self):
        self.calls.append("terminate")

    def wait(self):
        self.calls.append("wait")
        self.returncode = -15


def test_a_failed_run_stops_the_others_and_is_named_with_its_logs_last_line(tmp_path, monkeypatch):
    """Seed 1 fails at once: seed 0, still training, is stopped and waited for (not left training, orphaned), seed 2
    never starts, and the message names seed 1's log and its last line."""
    monkeypatch.setattr(FakeRun, "started", [])
    monkeypatch.setattr(FakeRun, "failing", "--seed 1")
    monkeypatch.setattr(compare.subprocess, "Popen", FakeRun)
    monkeypatch.setattr(compare.time, "sleep", lambda s: None)
    args = compare.Args(datasets=["hopper-medium-v2"], algorithms=["ofql"], seeds=[0, 1, 2], out_dir=str(tmp_path))
    log = tmp_path / "hopper-medium-v2__ofql__1.log"
    with pytest.raises(SystemExit, match=rf"exit 2\): error: out of memory \(its log: {log}\); the other runs"):
        compare.train_all(args)
    assert [(" --seed 0 " in p.cmd, p.calls) for p in FakeRun.started] == [(True, ["terminate", "wait"]), (False, [])]


def test_speed_benchmark_writes_its_figures_and_ratios(tmp_path, monkeypatch):
    import speed

    profiled, profile = [], speed.profile_update
    monkeypatch.setattr(speed, "profile_update", lambda *a, **k: profiled.append(k["rounds"]) or profile(*a, **k))
    result = speed.main(
        speed.Args(
            device="cpu",
            updates=2,
            warmup=1,
            rounds=2,
            decisions=1,
            decision_batch=8,
            dataset_size=1000,
            out_dir=str(tmp_path),
        )
    )
    a = result["algorithms"]
    assert set(a) == {"ofql", "dql", "fql"} and set(a["ofql"]["decisions_per_sec"]["eager"]) == {"1", "50"}
    assert set(a["fql"]["decisions_per_sec"]["eager"]) == {"1"}  # FQL evaluates its one-step policy only
    assert result["ratios"]["OFQL/DQL decision frequency, 50 candidates, eager"] == pytest.approx(
        a["ofql"]["decisions_per_sec"]["eager"]["50"] / a["dql"]["decisions_per_sec"]["eager"]["50"]
    )
    assert result["paths"] == ["eager"]  # the CUDA graph exists on CUDA only
    assert result["ratios"]["OFQL/DQL training time, eager"] == pytest.approx(
        a["dql"]["updates_per_sec"]["eager"] / a["ofql"]["updates_per_sec"]["eager"]
    )
    assert a["ofql"]["hours_per_1M_updates"]["eager"] == pytest.approx(
        1e6 / a["ofql"]["updates_per_sec"]["eager"] / 3600
    )
    # DQL's 5-step chain (back-propagated) runs more operators than OFQL's one JVP and one-step policy
    assert a["dql"]["ops"]["iteration"] > a["ofql"]["ops"]["iteration"] > 100
    assert a["ofql"]["ops"]["iteration"] == sum(v for k, v in a["ofql"]["ops"].items() if k != "iteration")
    assert a["dql"]["ops"]["critic loss"] > 2 * a["ofql"]["ops"]["critic loss"]  # 5 denoising calls against 1
    assert "| ofql |" in open(tmp_path / "cpu.md").read() and json.load(open(tmp_path / "cpu.json")) == result
    assert result["commit"] == speed.bookkeeping.code_version(speed.__file__)  # the code measured
    assert profiled == [2, 2, 2]  # each script's update profile: the median over the rounds


@pytest.mark.parametrize(
    "tool, argv, message",
    [
        ("compare", ["--plot-only", "--out-dir", "{tmp}/empty"], "nothing to report: no finished runs"),
        ("compare", ["--algorithms", "foo", "--out-dir", "{tmp}"], "--algorithms foo: not one of bc, ofql, dql, fql"),
        ("compare", ["--jobs", "0", "--out-dir", "{tmp}"], "--jobs must be at least 1, not 0"),  # it waited forever
        ("online_check", ["--dataset-path", "{tmp}/nothing.hdf5", "--plot-only"], "--dataset-path .* does not exist"),
        ("online_check", ["--dataset-path", "{file}", "--plot-only", "--runs-dir", "{tmp}/no"], "no runs to report"),
        (
            "online_check",
            ["--dataset-path", "{file}", "--ofql-seeds", "--dql-seeds", "--fql-seeds"],
            "nothing to train",
        ),
        ("speed", ["--env-id", "halfchetah-medium-v2"], "--env-id halfchetah-medium-v2: not a D4RL id"),
        ("speed", ["--device", "cuda"], "--device cuda: torch finds no CUDA device here"),
        ("speed", ["--rounds", "0"], "--rounds, --updates, --decisions, --decision-batch, --batch-size and --datas"),
        ("speed", ["--batch-size", "0"], "--rounds, --updates, --decisions, --decision-batch, --batch-size and --d"),
        ("speed", ["--algorithms"], "--algorithms: name at least one of ofql, dql, fql"),  # StopIteration
        ("speed", ["--algorithms", "foo"], None),  # tyro's refusal of a name it does not know
        # it timed batches of the dataset's 2000 states and wrote 3000
        ("speed", ["--decision-batch", "3000", "--dataset-size", "2000"], "--decision-batch 3000 is above --dataset-s"),
        ("sweep_speed", ["--algorithms", "foo"], None),  # KeyError: 'foo'
        ("sweep_speed", ["--device", "cud"], None),  # torch's RuntimeError
        ("sweep_speed", ["--paths", "cuda_graph"], "--paths cuda_graph needs a CUDA device"),  # ValueError
        ("sweep_speed", ["--members", "0"], "--members, --datasets, --updates, --rounds and --batch-size must be at"),
        ("sweep_speed", ["--datasets", "0"], "--members, --datasets, --updates, --rounds and --batch-size must be at"),
        ("sweep_speed", ["--members"], "--algorithms, --members, --matmul-precision and --paths each need at least"),
        ("sweep_speed", ["--table1-from", "{speed_json}"], r"--table1-from .*/cpu.json: no sweep's rates in it"),
        ("online_speed", ["--steps", "0"], "--steps, --members and --workers must be at least 1"),  # ZeroDivisionError
        ("online_speed", ["--members", "4"], "--members 4: .*cuda.json has the rates of sweeps of 1, 16 members"),
        ("online_speed", ["--gpu-results", "{speed_json}"], r"--gpu-results .*/cpu.json: no CUDA-graph rates in it"),
        ("eval_speed", ["--steps", "0"], "--num-envs, --steps, --rounds and --workers must be at least 1"),
        ("eval_speed", ["--num-envs", "0"], "--num-envs, --steps, --rounds and --workers must be at least 1"),
        ("eval_speed", ["--rounds", "0"], "--num-envs, --steps, --rounds and --workers must be at least 1"),
        ("eval_speed", ["--workers", "1", "0"], "--num-envs, --steps, --rounds and --workers must be at least 1"),
        ("online_speed", ["--workers", "0"], "--steps, --members and --workers must be at least 1"),
        ("online_speed", ["--workers", "17"], "--workers 17 is above --members 16"),
        ("sweep_speed", ["--batch-size", "0"], "--members, --datasets, --updates, --rounds and --batch-size must be"),
        ("sweep_speed", ["--dataset-size", "1", "--datasets", "2"], "--dataset-size 1 is below --datasets 2"),
        ("eval_speed", ["--workers"], "--workers starts with 1"),  # IndexError
        ("time_embedding", ["--dataset-path", "{file}", "--report-only", "--out-dir", "{tmp}"], "no runs to report"),
        ("compare", ["--plot-only", "--data-dir", "{tmp}/no", "--out-dir", "{tmp}"], r"--data-dir .*/no: no .*\.hdf5"),
        ("time_embedding", ["--dataset-path", "{file}", "--variants", "raw64", "foo"], "--variants raw64 foo: each"),
    ],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, tool, argv, message):
    """Each was a traceback (FileNotFoundError, KeyError, IndexError, AssertionError, StatisticsError)."""
    module = importlib.import_module(tool)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "data.hdf5").touch()
    speed_json = os.path.join(ROOT, "benchmark", "results", "speed", "cpu.json")  # speed.py's, not sweep_speed.py's
    argv = [a.format(tmp=tmp_path, file=tmp_path / "data.hdf5", speed_json=speed_json) for a in argv]
    with pytest.raises(SystemExit, match=message) as e:
        module.main(tyro.cli(module.Args, args=argv))
    assert message or e.value.code == 2


def test_the_checks_take_their_boundaries_and_refuse_an_uncaptured_warmup_on_cuda(monkeypatch):
    """What is valid passes (a decision batch of the whole dataset, one dataset's worth of transitions per dataset, no
    online steps); on CUDA, `auto` included, a --warmup below 3 is refused: the graph's capture, the third call,
    would land in a timed block. check() touches no device."""
    import online_speed
    import sweep_speed

    import speed

    speed.check(speed.Args(device="cpu", decision_batch=1000, dataset_size=1000))
    sweep_speed.check(sweep_speed.Args(device="cpu", dataset_size=2, datasets=2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for module in (speed, sweep_speed):
        module.check(module.Args(device="auto", warmup=3))
        with pytest.raises(SystemExit, match="--warmup must be at least 3 on CUDA"):
            module.check(module.Args(device="auto", warmup=2))
    monkeypatch.setattr(online_speed, "gpu_rates", lambda *a: (_ for _ in ()).throw(LookupError("past the checks")))
    with pytest.raises(LookupError):
        online_speed.main(online_speed.Args(offline_steps=0, online_steps=0, workers=16))


def test_speed_profiles_each_part_as_the_median_over_rounds(monkeypatch):
    """profile_update: the parts timed in turn, in `rounds` rounds of a block of `reps` calls each, after one untimed
    call, each part's median block reported, and the rest of the update (update - critic - actor) the median of each
    round's (a scripted clock: the parts' medians are neither their first, last nor mean block, and the rest's is
    0.5 ms, not the medians' difference, 3 ms); the actor's loss with the critic frozen, as update() computes it."""
    import types

    import speed

    calls, critic = [], torch.nn.Linear(1, 1)
    module = types.SimpleNamespace(
        critic_loss_fn=lambda *a: calls.append("critic"),
        actor_loss_fn=lambda *a: calls.append("actor" if not critic.weight.requires_grad else "with a trained critic"),
        behavior_cloning_loss=lambda actor, obs, actions: calls.append("bc"),
        update=lambda *a: calls.append("update"),
    )
    buffer = types.SimpleNamespace(sample=lambda n: types.SimpleNamespace(obs=None, actions=None))
    agent, args = types.SimpleNamespace(actor=None, critic=critic), types.SimpleNamespace(batch_size=4)
    blocks_ms = [0.5, 0.5, 0.5, 1, 1, 1, 1, 5, 4, 4, 4, 8.5]  # rounds of critic, actor, BC, update: rests 0, 3, 0.5
    clock = iter([t for k, ms in enumerate(blocks_ms) for t in (k, k + ms / 1000)])
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(clock))
    parts = speed.profile_update(module, agent, buffer, args, torch.device("cpu"), reps=1, rounds=3)
    assert [parts[k] for k in ("critic loss", "actor loss", "of which BC loss", "update")] == pytest.approx(
        [1, 1, 1, 5]
    )
    assert parts["backward, optimizers, targets"] == pytest.approx(0.5)
    assert [calls.count(k) for k in ("critic", "actor", "bc", "update")] == [4] * 4  # 1 untimed + 3 rounds x 1
    assert critic.weight.requires_grad  # frozen for the actor's loss, as update() freezes it, then trained again


def test_time_embedding_offline_measures_on_a_flow_known_exactly():
    """benchmark/time_embedding.py. Data at a point c: the exact velocity of the path a_t = (1 - t) c + t eps is
    (a_t - c) / t, whose Euler steps from t = 1 to 0 land exactly on c, as the one-step map eps - u(eps, 0, 1) does;
    a wrong step size or direction would not."""
    import time_embedding

    c = torch.tensor([[0.3, -0.2]])

    class PointMassVelocity(torch.nn.Module):
        act_dim = 2

        def forward(self, a_t, r, t, obs):
            return (a_t - c) / t

    obs, actions = torch.zeros(64, 1), c.expand(64, 2)
    m = time_embedding.offline_measures(PointMassVelocity(), obs, actions, ode_steps=10)
    assert m["one_step_to_ode"] < 1e-12 and m["one_step_to_data"] < 1e-12 and m["ode_to_data"] < 1e-12
    m = time_embedding.offline_measures(PointMassVelocity(), obs, actions + 0.1)
    assert m["one_step_to_data"] == pytest.approx(0.01, rel=1e-4)


def test_a_minari_id_is_launched_and_reported(tmp_path, monkeypatch):
    """A Minari id has '/' in it: its log file and its runs' folders have '-' there, the report the id itself."""
    launched = []
    monkeypatch.setattr(compare.subprocess, "Popen", lambda cmd, **kw: launched.append(cmd))
    env_id = "mujoco/hopper/medium-v0"
    args = compare.Args(datasets=[env_id], data_dir="", out_dir=str(tmp_path), seeds=[0], plot_only=True)
    compare.launch(args, env_id, "ofql", 0)
    assert launched[0][launched[0].index("--env-id") + 1] == env_id
    assert os.path.exists(tmp_path / "mujoco-hopper-medium-v0__ofql__0.log")
    fake_run(str(tmp_path), env_id, "ofql", 0, [3.0, 5.0])
    compare.write_report(args)
    row = "| mujoco/hopper/medium-v0 | - | ofql | 1 | 5.0 | 5.0 | 3 / 5 |"
    assert row in open(tmp_path / "results.md").read()


def test_with_sweep_one_process_trains_all_seeds_of_a_dataset_and_algorithm(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(compare.subprocess, "Popen", lambda cmd, **kw: launched.append(cmd))
    args = compare.Args(data_dir="", out_dir=str(tmp_path), seeds=[0, 3], sweep=True)
    compare.launch(args, "hopper-medium-replay-v2", "bc", None)
    cmd = launched[0]
    assert cmd[1].endswith("sweep.py") and cmd[2] == "ofql.py" and cmd[cmd.index("--seeds") + 1 :][:2] == ["0", "3"]
    assert "--seed" not in cmd and cmd[cmd.index("--eta") + 1] == "0" and cmd[cmd.index("--exp-name") + 1] == "bc"


def test_sweep_speed_writes_member_updates_and_the_ratio(tmp_path):
    import sweep_speed

    args = sweep_speed.Args(
        device="cpu", algorithms=["ofql", "fql"], members=[1, 2], warmup=1, updates=2, rounds=1, out_dir=str(tmp_path)
    )
    result = sweep_speed.main(args)
    for name in ("ofql", "fql"):
        eager = result["algorithms"][name]["eager"]
        assert eager["plain_updates_per_sec"] > 0 and set(eager["members"]) == {"1", "2"}
        for m in eager["members"].values():  # N x (one run's seconds) / (the sweep's seconds)
            assert m["vs_one_after_another"] == pytest.approx(
                m["member_updates_per_sec"] / eager["plain_updates_per_sec"]
            )
    table1 = result["table1"]  # two of the three scripts: no total
    assert table1["members"] == 2 and set(table1["algorithms"]) == {"ofql", "fql"} and "total_hours" not in table1
    assert table1["algorithms"]["ofql"]["member_updates"] == 15 * (9 * 2_000_000 + 8 * 1_000_000)
    md = (tmp_path / "cpu.md").read_text()
    rows = [line.split(" | ")[:2] for line in md.splitlines() if "| eager |" in line]  # the speed rows, then Table 1's
    assert rows == [
        ["| ofql", "eager"],
        ["| fql", "eager"],
        ["| ofql", "15 (3 seeds x 5 etas)"],
        ["| fql", "3 (3 seeds, presets)"],
    ]
    assert "| ofql | 15 (3 seeds x 5 etas) | 390M |" in md and "| all three |" not in md


def test_the_speed_paths_compile_and_capture_as_named(monkeypatch):
    """speed.on_path: compile_graph is torch.compile's default mode (then the script's CUDA graph, on CUDA),
    compile_reduce_overhead its mode="reduce-overhead" with no graph of the script's; a graph path asked on the CPU,
    or an unknown path, is refused."""
    import speed

    compiled = []
    monkeypatch.setattr(speed.torch, "compile", lambda fn, mode=None: compiled.append(mode) or fn)
    fn, cpu = (lambda: 1), torch.device("cpu")
    assert speed.on_path(fn, speed.ofql, "eager", cpu, "it") is fn and compiled == []
    assert speed.on_path(fn, speed.ofql, "compile_graph", cpu, "it") is fn and compiled == [None]
    assert speed.on_path(fn, speed.ofql, "compile_reduce_overhead", cpu, "it") is fn
    assert compiled == [None, "reduce-overhead"]
    with pytest.raises(ValueError, match="needs a CUDA device"):
        speed.on_path(fn, speed.ofql, "cuda_graph", cpu, "it")
    with pytest.raises(ValueError, match="unknown path"):
        speed.on_path(fn, speed.ofql, "graph", cpu, "it")


def test_the_profilers_count_of_an_eager_update_is_count_ops_count():
    """count_calls (the profiler's count, which --compile's proxy uses) counts an eager update of fql.py (no
    forward-mode AD) as count_ops's dispatch mode does, to 1%: views aside, composed operators (linear) as what they
    run, the backward pass's operators included."""
    import speed

    class Shapes:
        obs_dim, act_dim = 17, 6

    args = speed.fql.parse_args(["--env-id", "halfcheetah-medium-v2", "--batch-size", "16"])
    buffer = speed.fql.OfflineBuffer(speed.synthetic_data(17, 6, 100), torch.device("cpu"))
    agent = speed.fql.make_agent(17, 6, args, torch.device("cpu"))
    update = lambda: speed.fql.update(agent, buffer.sample(16), args, torch.tensor(5))
    update()  # Adam's state, as count_ops makes it
    calls, ops = speed.count_calls(update), speed.count_ops(speed.fql, Shapes, args)["iteration"]
    assert calls["calls"] == pytest.approx(ops, rel=0.01) and calls["generated kernels"] == 0
    assert calls["matrix products"] == 141  # FQL's 4x512 networks: forward and backward products of one update


def test_the_compiled_count_is_generated_kernels_and_the_operators_called():
    """A compiled (x.sin() * 2 + y).relu() @ w: one generated kernel for the fused pointwise chain and one matrix
    product, against the eager code's four operators and one product."""
    import speed

    x, y, w = torch.randn(8, 4), torch.randn(8, 4), torch.randn(4, 3)
    fn = lambda: (x.sin() * 2 + y).relu() @ w
    assert speed.count_calls(fn) == {
        "calls": 5,
        "generated kernels": 0,
        "matrix products": 1,
        "other ATen operators": 4,
    }
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
        compiled = torch.compile(fn)
        compiled()
        assert speed.count_calls(compiled) == {
            "calls": 2, "generated kernels": 1, "matrix products": 1, "other ATen operators": 0
        }  # fmt: skip


def test_sweep_speed_times_each_path_at_its_matmul_precision_and_reports_compiling(tmp_path, monkeypatch, capsys):
    """Each path is timed at each --matmul-precision, set before its blocks (then back to highest), the non-default
    one named path+tf32; a compiled path's first call is timed apart as its compile seconds, each compiled iteration
    compiling from a fresh dynamo state (torch 2.11 fails OFQL's lone and sweep iterations compiled in one) and
    timed over its rounds before the next compiles, the largest sweeps first and the lone runs last."""
    import sweep_speed

    import speed

    seen, time_updates = [], speed.time_updates
    monkeypatch.setattr(speed.torch, "compile", lambda fn, mode=None: fn)  # the wiring, not inductor's 40 s
    monkeypatch.setattr(speed.torch._dynamo, "reset", lambda: seen.append("reset"))
    monkeypatch.setattr(
        speed, "time_updates", lambda *a: seen.append(torch.get_float32_matmul_precision()) or time_updates(*a)
    )
    args = sweep_speed.Args(
        device="cpu", algorithms=["ofql"], members=[1, 2], warmup=0, updates=1, rounds=2, out_dir=str(tmp_path),
        paths=["eager", "compile_graph"], matmul_precision=["highest", "high"], dataset_size=500,
    )  # fmt: skip
    result = sweep_speed.main(args)
    assert result["paths"] == ["eager", "eager+tf32", "compile_graph", "compile_graph+tf32"]
    # the eager paths' 2 rounds: (one run, N = 1, N = 2) per path in turn; then each compiled iteration alone: reset,
    # compile, its 2 rounds
    compiled = [["reset", p, p] for p in ("highest", "high") * 3]
    assert seen == (["highest"] * 3 + ["high"] * 3) * 2 + sum(compiled, [])
    order = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": compiled in" in line]
    assert order == [f"ofql {path} {n}" for n in (2, 1, "plain") for path in ("compile_graph", "compile_graph+tf32")]
    assert torch.get_float32_matmul_precision() == "highest"
    by_path = result["algorithms"]["ofql"]
    assert by_path["eager"]["compile_sec"] == {}
    assert set(by_path["compile_graph+tf32"]["compile_sec"]) == {"plain", "1", "2"}
    assert "| ofql | compile_graph+tf32 |" in (tmp_path / "cpu.md").read_text()


def test_a_path_that_fails_is_reported_and_the_others_measured(tmp_path, monkeypatch):
    """A compiled path that cannot compile (here torch.compile's iteration raises, as a GPU without Triton would) is
    reported with its error in the results, and the other paths are measured and Table 1 computed from them."""
    import sweep_speed

    import speed

    def broken(fn, mode=None):
        def call():
            raise RuntimeError("inductor: no working C++ compiler\nmore lines")

        return call

    monkeypatch.setattr(speed.torch, "compile", broken)
    args = sweep_speed.Args(
        device="cpu", algorithms=["ofql"], members=[2], warmup=0, updates=1, rounds=2, out_dir=str(tmp_path),
        paths=["eager", "compile_graph"], dataset_size=500,
    )  # fmt: skip
    result = sweep_speed.main(args)
    by_path = result["algorithms"]["ofql"]
    assert by_path["compile_graph"] == {"failed": "RuntimeError: inductor: no working C++ compiler"}
    assert by_path["eager"]["members"]["2"]["member_updates_per_sec"] > 0
    assert result["table1"]["algorithms"]["ofql"]["path"] == "eager"
    assert "| ofql | compile_graph | failed: RuntimeError: inductor" in (tmp_path / "cpu.md").read_text()


def test_a_domain_sweep_s_member_trains_on_its_own_dataset(tmp_path):
    """sweep_speed --datasets K: member m's batches come from dataset m % K (here dataset 1's rewards are NaN: members
    1 and 3 only go non-finite), through sweep.DomainBuffer, with its dataset's own grad_norm."""
    import sweep_speed

    import speed

    cpu, domain = torch.device("cpu"), speed.offline_data.d4rl_files.domain_of("hopper-medium-v2")
    data = [speed.synthetic_data(domain.obs_dim, domain.act_dim, n) for n in (300, 200)]
    data[1]["rewards"][:] = np.nan
    args = speed.ofql.parse_args(["--env-id", "hopper-medium-v2", "--batch-size", "8"])
    iteration = sweep_speed.sweep_iteration(speed.ofql, args, 4, domain, data, cpu, "eager")
    finite = torch.isfinite(iteration()["critic_loss"]).tolist()
    assert finite == [True, False, True, False]
    members, seen = sweep_speed.sweep.Members, []  # each member's --grad-norm
    record = lambda module, member_args: seen.append([a.grad_norm for a in member_args]) or members(module, member_args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep_speed.sweep, "Members", record)
        for script, flags in ((speed.ofql, []), (speed.fql, ["--grad-norm", "0"])):
            script_args = script.parse_args(["--env-id", "hopper-medium-v2", "--batch-size", "8", *flags])
            sweep_speed.sweep_iteration(script, script_args, 3, domain, data, cpu, "eager")
    assert seen == [[9.0, 10.0, 9.0], [0.0] * 3]  # dataset 1's the preset's + 1; 0, FQL's no clipping, stays 0
    result = sweep_speed.main(
        sweep_speed.Args(
            device="cpu",
            algorithms=["ofql"],
            members=[2],
            warmup=0,
            updates=1,
            rounds=1,
            out_dir=str(tmp_path),
            datasets=2,
            dataset_size=400,
        )  # fmt: skip
    )
    assert result["datasets"] == [400, 200] and "synthetic dataset m % 2" in (tmp_path / "cpu.md").read_text()


def test_sweep_speed_table1_device_hours_of_the_three_scripts():
    """Each script's Table 1 protocol (17 D4RL datasets at its presets' steps: 9 MuJoCo, 4 AntMaze, 2 Kitchen, 2 pen)
    at its member-updates/s with the largest N, on its faster path, and the sum; the hours below are worked by hand."""
    import sweep_speed

    def paths(eager: float, graph: float) -> dict:
        return {
            p: {"members": {"1": {"member_updates_per_sec": 1.0}, "16": {"member_updates_per_sec": r}}}
            for p, r in (("eager", eager), ("cuda_graph", graph))
        }

    t = sweep_speed.table1({"ofql": paths(100.0, 6500.0), "dql": paths(3900.0, 50.0), "fql": paths(10.0, 1300.0)}, 16)
    a = t["algorithms"]
    # OFQL 15 runs (3 seeds x 5 etas) per dataset, 2M steps on MuJoCo and 1M elsewhere: 15 x 26M
    assert a["ofql"]["member_updates"] == 390_000_000 and a["ofql"]["path"] == "cuda_graph"
    assert a["ofql"]["hours"] == pytest.approx(390e6 / 6500 / 3600)  # 16.67
    # DQL 3 seeds, the same steps: 3 x 26M; its faster path here the eager one
    assert a["dql"]["member_updates"] == 78_000_000 and a["dql"]["path"] == "eager"
    assert a["dql"]["hours"] == pytest.approx(78e6 / 3900 / 3600)  # 5.56
    # FQL 3 seeds; 500k steps on AntMaze and pen (FQL's own), 1M on Kitchen, 2M on MuJoCo: 3 x 23M
    assert a["fql"]["member_updates"] == 69_000_000 and a["fql"]["hours"] == pytest.approx(69e6 / 1300 / 3600)  # 14.74
    assert t["total_member_updates"] == 537_000_000
    assert t["total_hours"] == pytest.approx(16.6667 + 5.5556 + 14.7436, abs=1e-3)
    # the committed H200 file: OFQL's figure as the script of that day computed it, and the three together as the README
    # quotes them
    with open(os.path.join(ROOT, "benchmark", "results", "sweep_speed", "cuda.json")) as f:
        h200 = json.load(f)
    t = sweep_speed.table1(h200["algorithms"], 16)
    assert t["algorithms"]["ofql"]["hours"] == pytest.approx(h200["table1_ofql"]["hours"])
    assert f"{t['total_hours']:.1f} device hours" in open(os.path.join(ROOT, "README.md")).read()


def test_table1_from_a_file_with_a_failed_path(tmp_path):
    """--table1-from a results file in which one path failed ({"failed": ...}, as sweep_speed writes it): the hours
    from the paths that were measured, and the caveat that DQL's and FQL's are a lower bound."""
    import sweep_speed

    with open(os.path.join(ROOT, "benchmark", "results", "sweep_speed", "cuda.json")) as f:
        result = json.load(f)
    measured = sweep_speed.table1(result["algorithms"], 16)["total_hours"]
    result["algorithms"]["ofql"]["compile_graph"] = {"failed": "RuntimeError: no"}
    with open(tmp_path / "cuda.json", "w") as f:
        json.dump(result, f)
    t = sweep_speed.main(sweep_speed.Args(table1_from=str(tmp_path / "cuda.json")))
    assert t["total_hours"] == pytest.approx(measured)  # the graph path's rates, which were measured
    assert "a lower bound" in " ".join(sweep_speed.table1_lines(t))


def fake_online_run(runs_dir, name, config, evals, episodes, finished=True, candidates=None):
    """A run folder of online_check's: config.json, metrics.jsonl (evaluations, online episodes), summary.json."""
    run_dir = os.path.join(runs_dir, name)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        protocol = dict(total_steps=50, online_steps=50, eval_every=10, eval_episodes=10, commit="abc")
        json.dump(
            {"exp_name": "online_check", "env_id": "hopper-medium-replay-v2", "num_candidates": 1} | protocol | config,
            f,
        )
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step, score in evals:  # with candidates: eval/score theirs, eval/policy_score the own sample's
            own = {} if candidates is None else {"eval/score": candidates * score, "eval/policy_score": score}
            f.write(json.dumps({"step": step, "eval/score": score, **own}) + "\n")
        for env_step, score in episodes:
            f.write(json.dumps({"step": 40 + env_step, "online/env_steps": env_step, "online/episode_score": score}))
            f.write("\n")
    if finished:
        open(os.path.join(run_dir, "summary.json"), "w").write("{}")


def test_online_check_reports_each_phases_end_and_a_run_under_way(tmp_path):
    """OFQL (two seeds, finished) and FQL (under way, at 80 of 100 steps): the scores at the offline phase's end
    (step 50) and the online one's, their change, the means of each phase's last five evaluations, the online
    episodes' first and last ten; FQL marked under way at its last step, with no online end of five evaluations. The
    phases' lengths are the runs' own (config.json), not the command line's (--plot-only's defaults: 20,000 each)."""
    import online_check

    path = str(tmp_path / "hopper.hdf5")
    record_d4rl_file(path)
    runs = str(tmp_path / "runs")
    steps = list(range(10, 110, 10))  # offline 10 ... 50, online 60 ... 100
    episodes = [(10 * i, float(i)) for i in range(1, 21)]  # scores 1 ... 20
    for seed, shift in ((0, 0.0), (1, 2.0)):
        fake_online_run(runs, f"a{seed}", {"seed": seed, "eta": 0.1}, [(t, t / 10 + shift) for t in steps], episodes)
    fake_online_run(runs, "b0", {"seed": 0, "alpha": 10.0}, [(t, 1.0) for t in steps[:8]], [], finished=False)
    fake_online_run(runs, "c0", {"seed": 0, "diffusion_steps": 5}, [(t, t / 10) for t in steps], [], candidates=3)
    os.makedirs(os.path.join(runs, "killed_while_it_started"))  # no config.json: not a run to read
    args = online_check.Args(dataset_path=path, runs_dir=runs, out_dir=str(tmp_path), plot_only=True)
    online_check.main(args)
    results = {r["algorithm"]: r for r in json.load(open(tmp_path / "results.json"))}
    ofql, fql = results["ofql"], results["fql"]
    assert ofql["offline_end"] == [5.0, 7.0] and ofql["online_end"] == [10.0, 12.0] and ofql["finished"]
    assert ofql["offline_last_5_mean"] == [3.0, 5.0] and ofql["online_last_5_mean"] == [8.0, 10.0]
    assert ofql["first_10_episodes"] == [5.5, 5.5] and ofql["last_10_episodes"] == [15.5, 15.5]
    assert fql["last_step"] == 80 and not fql["finished"] and fql["online_last_5_mean"] == []
    dql = results["dql"]  # its own sample's scores in the first table, the candidates' (3x here) in the second
    assert (
        dql["online_end"] == [10.0]
        and dql["candidates_offline_end"] == [15.0]
        and dql["candidates_online_end"] == [30.0]
    )
    table = open(tmp_path / "results.md").read()
    assert (
        "| ofql | 2 | 6.0 ± 1.0 | 4.0 ± 1.0 | 11.0 ± 1.0 | 9.0 ± 1.0 | 5.0 ± 0.0 | 5.5 ± 0.0 → 15.5 ± 0.0 | 100 |"
        in table
    )
    assert (
        "| dql | 1 | 15.0 | 30.0 | 15.0 |" in table
        and "| fql | 1 |" in table
        and "80 (under way)" in table
        and os.path.exists(tmp_path / "curves.png")
    )
    assert "50 offline updates, then 50 online env steps" in table and "commit: abc." in table
    # a phase of 4 evaluations, a seed of fewer than 10 online episodes: "-", not a mean of what there is
    evals = [(t, 1.0, None) for t in (10, 20, 30, 40, 60)]
    for few in ([], [(10, 3.0)] * 9):
        short = [
            dict(seed=s, evals=evals, episodes=e, finished=True, candidates=1)
            for s, e in ((0, few), (1, [(10, 3.0)] * 12))
        ]
        r = online_check.algorithm_result("ofql", short, offline_end=50)
        assert (
            r["offline_last_5_mean"] == r["online_last_5_mean"] == r["first_10_episodes"] == r["last_10_episodes"] == []
        )
    fake_online_run(runs, "c1", {"seed": 1, "diffusion_steps": 5, "eval_episodes": 5}, [(10, 1.0)], [])
    with pytest.raises(SystemExit, match=r"the runs differ in total_steps, .*\(50, 50, 10, 5\), \(50, 50, 10, 10\)"):
        online_check.report(args)


def test_online_check_trains_into_the_runs_dir_it_reads_and_stops_all_when_one_fails(tmp_path, monkeypatch):
    """Its scripts make runs/ in the folder they start in: --runs-dir not named runs is refused before any run starts
    (the report would read a folder no run writes to); DQL failing stops OFQL's sweep, FQL never starts, and the
    message names DQL's log."""
    import online_check

    path = str(tmp_path / "hopper.hdf5")
    open(path, "w").close()
    monkeypatch.setattr(FakeRun, "started", [])
    monkeypatch.setattr(FakeRun, "failing", "dql.py")
    monkeypatch.setattr(online_check.subprocess, "Popen", FakeRun)
    monkeypatch.setattr(online_check.time, "sleep", lambda s: None)
    args = online_check.Args(dataset_path=path, runs_dir=str(tmp_path / "online"), out_dir=str(tmp_path))
    with pytest.raises(SystemExit, match="to train, a folder named runs"):
        online_check.main(args)
    assert FakeRun.started == []
    log = tmp_path / "online_check_dql.log"
    with pytest.raises(SystemExit, match=rf"exit 2\): error: out of memory \(its log: {log}\)"):
        online_check.main(dataclasses.replace(args, runs_dir=str(tmp_path / "runs")))
    assert [(p.cmd.split()[1:3], p.calls) for p in FakeRun.started] == [
        ([os.path.join(ROOT, "sweep.py"), "ofql.py"], ["terminate", "wait"]),
        ([os.path.join(ROOT, "dql.py"), "--seed"], []),
    ]


def test_online_speed_implied_hours_from_the_measured_env_step_and_the_recorded_rates(tmp_path):
    """A fake GPU's rates and the env step time online_speed.py measured (read back from results.json): the hours of
    one run (offline N / r, online M x (1 / r + t)) and of a sweep of 16 (offline N / (R / 16), online
    M x (16 / R + 16 t / W), W = 1 and 2 --workers), worked by hand; an id that has no env gets a row saying so, and
    no hours."""
    import online_speed

    rates = {"ofql": (800.0, 6400.0), "fql": (400.0, 1600.0)}  # one run's updates/s, a sweep of 16's member-updates/s
    algorithms = {
        name: {"cuda_graph": {"plain_updates_per_sec": r, "members": {"16": {"member_updates_per_sec": big_r}}}}
        for name, (r, big_r) in rates.items()
    }
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"device": "Fake GPU", "torch": "0.0", "date": "2000-01-01", "algorithms": algorithms}))
    args = online_speed.Args(
        env_ids=["hopper-medium-v2", "nonsense-v0"],
        steps=20,
        warmup=5,
        gpu_results=str(gpu),
        offline_steps=1_000,
        online_steps=2_000,
        out_dir=str(tmp_path),
    )
    online_speed.main(dataclasses.replace(args, workers=2))
    two, model = (json.load(open(tmp_path / "results.json"))[k] for k in ("envs", "model"))
    two = two[0]  # the sweep's 16 envs in 2 workers: t / 2 per env
    assert "(16 / R + 16 t / 2) (its 16 envs in 2 worker process(es)" in model
    online_speed.main(args)
    result = json.load(open(tmp_path / "results.json"))
    hopper, nonsense = result["envs"]
    t = hopper["cpu_ms"] / 1e3
    assert t > 0 and hopper["wall_ms"] > 0
    for name, (r, big_r) in rates.items():
        h = hopper["hours"][name]
        assert h["run_offline_h"] == pytest.approx(1_000 / r / 3600)
        assert h["run_h"] == pytest.approx((1_000 / r + 2_000 * (1 / r + t)) / 3600)
        assert h["sweep_offline_h"] == pytest.approx(1_000 * 16 / big_r / 3600)
        assert h["sweep_h"] == pytest.approx((1_000 * 16 / big_r + 2_000 * (16 / big_r + 16 * t)) / 3600)
        assert h["sweep_per_member_run_h"] == pytest.approx(h["sweep_h"] / 16)
        t2 = two["cpu_ms"] / 1e3
        sweep_two = (1_000 * 16 / big_r + 2_000 * (16 / big_r + 16 * t2 / 2)) / 3600
        assert two["hours"][name]["sweep_h"] == pytest.approx(sweep_two)
        assert result["offline_hours"][name]["sweep_offline_h"] == pytest.approx(h["sweep_offline_h"])
    assert nonsense["error"].startswith("could not be built") and "hours" not in nonsense
    table = open(tmp_path / "results.md").read()
    assert "| nonsense-v0 | could not be built" in table and "Fake GPU, torch 0.0, 2000-01-01" in table
    assert f"| hopper-medium-v2 | {hopper['cpu_ms']:.3f} |" in table


def test_eval_speed_times_one_process_against_workers_and_prices_table1(tmp_path, monkeypatch):
    """eval_speed.py: hopper's envs in one process and in 2 workers, each figure written with its ratio; Table 1's
    evaluation env steps from the presets (OFQL on hopper-medium-v2: 15 runs x 40 evaluations x 2 policies x 10
    episodes x 1000 steps; FQL acts with one sample: 1 policy); an env that cannot be built is a row saying why, the
    others measured; a baseline other than one process is refused."""
    import eval_speed

    ids = ["hopper-medium-v2", "nosuch-medium-v2"]
    args = eval_speed.Args(env_ids=ids, num_envs=4, steps=3, rounds=1, out_dir=str(tmp_path))
    result = eval_speed.main(args)
    assert result["commit"] == eval_speed.bookkeeping.code_version(eval_speed.__file__)  # the code measured
    row, missing = result["rows"]
    assert missing.keys() == {"env_id", "error"} and "no evaluation env" in missing["error"]
    assert set(row["ms_per_vector_step"]) == {"1", "2"} and row["ratio"]["1"] == 1.0
    assert row["ratio"]["2"] == pytest.approx(row["ms_per_vector_step"]["1"] / row["ms_per_vector_step"]["2"])
    assert result["table1_evaluation"] == {}  # only one family measured: no hours
    assert json.load(open(tmp_path / "cpu.json"))["args"]["out_dir"] == os.path.relpath(tmp_path, ROOT)
    ofql, fql = (eval_speed.table1_eval_steps(n)["hopper-medium-v2"] for n in ("ofql", "fql"))
    assert ofql == 15 * (2_000_000 // 50_000) * 2 * 10 * 1000
    assert fql == 3 * (2_000_000 // 50_000) * 1 * 10 * 1000
    with pytest.raises(SystemExit, match="starts with 1"):
        eval_speed.main(dataclasses.replace(args, workers=[2, 4]))
    # a machine without gymnasium_robotics (no AntMaze, Kitchen or pen env): rows saying so, no hours, no traceback
    mujoco_only = eval_speed.offline_data.eval_env_factory
    monkeypatch.setattr(
        eval_speed.offline_data, "eval_env_factory", lambda i: mujoco_only(i) if "-medium" in i else None
    )
    result = eval_speed.main(dataclasses.replace(args, env_ids=["hopper-medium-v2", "pen-cloned-v1"]))
    assert "no evaluation env" in result["rows"][1]["error"] and result["table1_evaluation"] == {}


def test_time_embedding_reports_a_seed_run_twice_once(tmp_path):
    """Two finished runs of raw16 seed 0 in the runs folder (the second newer): the report's row for seed 0 is the
    newer one's alone, not both (a mean over the two would count the seed twice); the table says what the runs
    evaluated (here 3 candidates on 2 episodes, not --flags' defaults) and their commit."""
    import time_embedding

    record_d4rl_file(tmp_path / "hopper.hdf5", episodes=250, max_steps=60)  # the report samples 4096 transitions
    actor = time_embedding.actor_class("raw16")(11, 3)
    for i, score in enumerate((10.0, 50.0)):
        run_dir = tmp_path / "runs" / f"hopper-medium-v2__raw16__0__{100 + i}"
        run_dir.mkdir(parents=True)
        torch.save({"actor": actor.state_dict()}, run_dir / "checkpoint.pt")
        summary = {"evaluations": [{"step": 10, "score": score}], "train_steps_per_sec": 1.0, "commit": "abc"}
        summary.update(eval_episodes=2, num_candidates=3)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        os.utime(run_dir / "summary.json", (1000 + i, 1000 + i))
    args = time_embedding.Args(
        dataset_path=str(tmp_path / "hopper.hdf5"), variants=["raw16"], seeds=[0], out_dir=str(tmp_path)
    )
    time_embedding.report(args)
    runs = json.load(open(tmp_path / "results.json"))["results"][0]["runs"]
    assert [(r["seed"], r["scores"]) for r in runs] == [(0, [50.0])]
    table = (tmp_path / "results.md").read_text()
    assert "score of one of 3 candidate actions picked by softmax(Q) (2 episodes)" in table and "commit: abc." in table


def test_a_runs_sessions_are_named_in_order_with_a_change_back_kept():
    """A run resumed on other code, then back on the first: "a then b then a" (a set of commits would hide the last)."""
    assert compare.in_order(["a", "a", "b", "a"]) == "a then b then a"
    assert compare.in_order([10, 10]) == 10 and compare.in_order([]) is None


def test_the_table_takes_the_newest_run_of_a_seed(tmp_path):
    """Two runs of one seed (a rerun): the table's row is the later one's, by the run folder's unix time."""
    out = str(tmp_path)
    for scores, time in (([1.0, 2.0, 3.0], "1700000000"), ([10.0, 20.0, 30.0], "1700000100")):
        run_dir = fake_run(out, "hopper-medium-v2", "ofql", 0, scores)
        os.rename(run_dir, run_dir.replace("__123", f"__{time}"))
    open_figures = len(plt.get_fignums())
    compare.write_report(compare.Args(datasets=["hopper-medium-v2"], algorithms=["ofql"], seeds=[0], out_dir=out))
    assert "| ofql | 1 | 30.0 | 30.0 | 10 / 20 / 30 |" in open(os.path.join(out, "results.md")).read()
    assert len(plt.get_fignums()) == open_figures  # closed once saved: a process tabulating again gathers none


def test_speed_timers_divide_by_their_own_counts(monkeypatch):
    import speed

    clock = iter([0.0, 2.0, 10.0, 11.5])
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(clock))
    args = speed.Args(warmup=1, updates=4, decisions=3)
    assert speed.time_updates(lambda: None, args, torch.device("cpu")) == pytest.approx(0.5)  # 2 s / 4 timed updates
    rate = speed.time_decisions(lambda obs: torch.zeros(1), None, args, torch.device("cpu"))
    assert rate == pytest.approx(2.0)  # 3 decisions in 1.5 s


def test_speed_reports_the_median_round_its_ratios_and_table(tmp_path, monkeypatch):
    import speed

    rounds = {"ofql": [0.01, 0.05, 0.02], "dql": [0.04, 0.03, 0.1], "fql": [0.1, 0.08, 0.2]}  # medians .02, .04, .1
    order = iter([rounds[n][r] for r in range(3) for n in ("ofql", "dql", "fql")])
    monkeypatch.setattr(speed, "time_updates", lambda *a: next(order))
    monkeypatch.setattr(speed, "time_decisions", lambda *a: 7.0)
    monkeypatch.setattr(speed, "count_ops", lambda *a: {"iteration": 1})
    monkeypatch.setattr(speed, "profile_update", lambda *a, **k: {"update": 1.0})
    result = speed.main(
        speed.Args(
            device="cpu",
            rounds=3,
            updates=1,
            warmup=0,
            decisions=1,
            decision_batch=8,
            dataset_size=100,
            out_dir=str(tmp_path),
        )
    )
    a = result["algorithms"]
    assert [a[n]["updates_per_sec"]["eager"] for n in ("ofql", "dql", "fql")] == pytest.approx([50, 25, 10])
    assert result["ratios"]["OFQL/FQL training time, eager"] == pytest.approx(0.2)  # 0.02 s / 0.1 s
    assert result["ratios"]["OFQL/DQL training time, eager"] == pytest.approx(0.5)
    md = (tmp_path / "cpu.md").read_text()
    assert (
        "| ofql | 50.0 | 5.56 | 7.00 | 7.000 (50) | 1 |" in md and "| fql | 10.0 | 27.78 | 7.00 | 7.000 (1) | 1 |" in md
    )


def test_sweep_speed_reports_the_median_round_and_table1_hours(tmp_path, monkeypatch):
    import sweep_speed

    import speed

    order = iter([0.1, 0.2, 0.3, 0.25, 0.2, 0.5])  # rounds of (one run, N = 2): medians 0.2 and 0.25
    monkeypatch.setattr(speed, "time_updates", lambda *a: next(order))
    args = sweep_speed.Args(
        device="cpu",
        algorithms=["ofql"],
        members=[2],
        warmup=0,
        updates=1,
        rounds=3,
        dataset_size=500,
        out_dir=str(tmp_path),
    )
    eager = sweep_speed.main(args)["algorithms"]["ofql"]["eager"]
    assert eager["plain_updates_per_sec"] == pytest.approx(5.0)
    assert eager["members"]["2"] == pytest.approx({"member_updates_per_sec": 8.0, "vs_one_after_another": 1.6})
    md = (tmp_path / "cpu.md").read_text()
    assert "| ofql | eager | 5.0 | 8.0 (1.60x) |" in md
    assert "| ofql | 15 (3 seeds x 5 etas) | 390M | 8.0 | eager | 13541.7 |" in md  # 390e6 / 8 / 3600


def test_eval_speed_step_time_and_table1_hours_from_scripted_times(monkeypatch):
    import eval_speed

    clock = iter([0.0, 2.0])
    monkeypatch.setattr(eval_speed.time, "perf_counter", lambda: next(clock))
    envs = types.SimpleNamespace(num_envs=2, reset=lambda seed: None, step=lambda a: None)
    assert eval_speed.time_steps(envs, np.zeros((9, 2, 1))) == pytest.approx(0.5)  # 2 s over the 4 timed steps
    fake = types.SimpleNamespace(single_action_space=types.SimpleNamespace(shape=(3,)), close=lambda: None)
    monkeypatch.setattr(eval_speed.offline_data, "eval_env_factory", lambda i: object)
    monkeypatch.setattr(
        eval_speed.offline_data, "vector_env", lambda makes, workers: types.SimpleNamespace(w=workers, **vars(fake))
    )
    step_seconds = {1: 0.008, 2: 0.002}  # a vector step in 1 worker, in 2
    monkeypatch.setattr(eval_speed, "time_steps", lambda e, actions: step_seconds[e.w])
    monkeypatch.setattr(
        eval_speed, "table1_eval_steps", lambda name: dict.fromkeys(eval_speed.TABLE1_DATASETS, 1_000_000)
    )
    monkeypatch.setattr(eval_speed, "write", lambda result, out: None)
    result = eval_speed.main(eval_speed.Args(num_envs=4, steps=1, rounds=1))
    assert result["rows"][0]["ms_per_env_step_one_process"] == pytest.approx(2.0)  # 8 ms / 4 envs
    t = result["table1_evaluation"]["ofql"]
    hours = 17 * 1_000_000 * 2.0 / 3.6e6
    assert t["hours_one_process"] == pytest.approx(hours) and t["hours_fastest"] == pytest.approx(hours / 4)


def test_online_speed_times_only_the_timed_steps(monkeypatch):
    import online_speed

    ticks = itertools.count()
    monkeypatch.setattr(online_speed.time, "process_time", lambda: next(ticks) * 1e-3)  # each call 1 ms on
    walls = itertools.count()
    monkeypatch.setattr(online_speed.time, "perf_counter", lambda: next(walls) * 2e-3)
    calls = itertools.count()
    space = types.SimpleNamespace(seed=lambda s: None, sample=lambda: 0)
    env = types.SimpleNamespace(
        action_space=space, reset=lambda seed=None: None, step=lambda a: (None, 0.0, next(calls) % 3 == 2, False, {})
    )
    row = online_speed.time_steps(env, online_speed.Args(steps=6, warmup=2))
    assert row == {"cpu_ms": pytest.approx(1.0), "wall_ms": pytest.approx(2.0), "resets": 2}


def test_online_speed_offline_table_cells(tmp_path):
    import online_speed

    algorithms = {
        "ofql": {"cuda_graph": {"plain_updates_per_sec": 800.0, "members": {"16": {"member_updates_per_sec": 6400.0}}}}
    }
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"device": "Fake GPU", "torch": "0.0", "date": "2000-01-01", "algorithms": algorithms}))
    online_speed.main(
        online_speed.Args(
            env_ids=[], gpu_results=str(gpu), offline_steps=3_600_000, online_steps=0, out_dir=str(tmp_path)
        )
    )
    assert (
        "| ofql | 800.0 | 6400.0 | 1.25 | 2.50 |" in (tmp_path / "results.md").read_text()
    )  # 3.6M / 800; 3.6M x 16 / 6400


def test_offline_measures_call_one_step_at_r0_t1_and_the_ode_at_r_equal_t():
    import time_embedding

    calls = []

    class Probe(torch.nn.Module):
        act_dim = 2

        def forward(self, a, r, t, obs):
            calls.append((float(r.flatten()[0]), float(t.flatten()[0])))
            return torch.zeros_like(a)

    time_embedding.offline_measures(Probe(), torch.zeros(4, 1), torch.zeros(4, 2), ode_steps=4)
    assert calls == [(0.0, 1.0), (1.0, 1.0), (0.75, 0.75), (0.5, 0.5), (0.25, 0.25)]


def test_time_embedding_table_is_the_mean_over_seeds_at_each_evaluation(tmp_path):
    import time_embedding

    record_d4rl_file(tmp_path / "hopper.hdf5", episodes=250, max_steps=60)
    actor = time_embedding.actor_class("raw16")(11, 3)
    for seed, scores in ((0, (10.0, 30.0)), (1, (20.0, 50.0))):
        run_dir = tmp_path / "runs" / f"hopper-medium-v2__raw16__{seed}__100"
        run_dir.mkdir(parents=True)
        torch.save({"actor": actor.state_dict()}, run_dir / "checkpoint.pt")
        summary = {
            "evaluations": [{"step": 10, "score": scores[0]}, {"step": 20, "score": scores[1]}],
            "train_steps_per_sec": 1.0,
            "commit": "abc",
            "eval_episodes": 2,
            "num_candidates": 1,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    time_embedding.report(
        time_embedding.Args(
            dataset_path=str(tmp_path / "hopper.hdf5"), variants=["raw16"], seeds=[0, 1], out_dir=str(tmp_path)
        )
    )
    assert "| raw16 | 15.0 / 40.0 | 27.5 |" in (tmp_path / "results.md").read_text()


def test_online_check_reads_a_seeds_newest_run(tmp_path):
    import online_check

    runs = str(tmp_path / "runs")
    for name, score in (("run__0__1700000000", 1.0), ("run__0__1700000100", 2.0)):
        fake_online_run(runs, name, {"seed": 0, "eta": 0.1}, [(10, score)], [])
    read = online_check.read_runs(online_check.Args(dataset_path="x", runs_dir=runs))
    assert [r["evals"] for r in read["ofql"]] == [[(10, 2.0, None)]]
