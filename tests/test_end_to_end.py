"""ofql.py, dql.py and fql.py run as a user runs them, on tiny D4RL-layout files, with real evaluation episodes
in Hopper-v4."""

import importlib
import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import d4rl_compat

SCRIPTS = ["ofql", "dql", "fql"]


@pytest.fixture(params=SCRIPTS)
def algo(request):
    """One of the three scripts, imported as a module."""
    return importlib.import_module(request.param)


def run_script(cwd, algo, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "D4RL_DATASET_DIR": str(cwd)}
    os.makedirs(cwd, exist_ok=True)
    return subprocess.run(
        [sys.executable, algo.__file__, *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def networks(algo):
    return [name for name, f in algo.Agent.__dataclass_fields__.items() if "optimizer" not in name]


def small_run_flags(dataset, total_steps):
    return [
        "--env-id",
        "hopper-medium-v2",
        "--dataset-path",
        dataset,
        "--total-steps",
        str(total_steps),
        "--eval-every",
        "20",
        "--log-every",
        "10",
        "--eval-episodes",
        "2",
        "--num-candidates",
        "5",
        "--batch-size",
        "32",
    ]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_script_trains_evaluates_and_writes_a_valid_run(tmp_path, hopper_file, algo):
    proc = run_script(tmp_path, algo, *small_run_flags(hopper_file, 40), "--save-model", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    summary_line = proc.stdout.strip().splitlines()[-1]
    assert summary_line.startswith(f"summary: runs/hopper-medium-v2__{algo.__name__}__3__")
    run_dir = tmp_path / os.path.dirname(summary_line.split(" ", 1)[1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["algorithm"] == algo.__name__
        and summary["steps"] == 40
        and summary["num_candidates"] == 5
        and summary["eval_episodes"] == 2
    )
    assert [e["step"] for e in summary["evaluations"]] == [20, 40]
    assert summary["final_score"] == summary["evaluations"][-1]["score"]
    assert summary["best_score"] == max(e["score"] for e in summary["evaluations"]) >= summary["final_score"]
    for e in summary["evaluations"]:  # a real episode's return, normalised with hopper's reference returns
        assert e["score"] == pytest.approx(
            d4rl_compat.normalized_score("hopper-medium-v2", e["return"]), rel=1e-6, abs=1e-6
        )
        assert 0 < e["return"] < 3000 and e["decision_rate"] > 0
    assert summary["train_steps_per_sec"] > 0 and summary["wall_clock_sec"] > 0
    config = json.loads((run_dir / "config.json").read_text())
    preset = {  # the three set by the flags aside
        k: v for k, v in algo.PRESETS["hopper-medium-v2"].items() if k not in ("total_steps", "eval_episodes")
    }
    assert preset and {k: config[k] for k in preset} == preset and config["transitions"] > 0
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert "eval/score" in records[1] and "eval/score" not in records[0]
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 40 and all(name in checkpoint for name in algo.Agent.__dataclass_fields__)


def test_with_candidates_the_policys_own_sample_is_evaluated_too(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    built, make_policy = [], algo.make_policy
    monkeypatch.setattr(algo, "make_policy", lambda agent, k, *a: built.append(k) or make_policy(agent, k, *a))
    summary = json.load(open(algo.train(algo.parse_args(small_run_flags(hopper_file, 20)))))
    assert built == [5, 1]  # the protocol's policy, then the policy's own sample
    e = summary["evaluations"][-1]
    assert e["policy_score"] == pytest.approx(
        d4rl_compat.normalized_score("hopper-medium-v2", e["policy_return"]), rel=1e-6
    )
    assert summary["final_policy_score"] == e["policy_score"] and e["policy_return"] != e["return"]
    records = read_jsonl(tmp_path / "runs" / os.listdir(tmp_path / "runs")[0] / "metrics.jsonl")
    assert records[-1]["eval/policy_score"] == e["policy_score"]
    built.clear()
    summary = json.load(open(algo.train(algo.parse_args(small_run_flags(hopper_file, 20) + ["--num-candidates", "1"]))))
    assert built == [1] and "policy_score" not in summary["evaluations"][-1] and summary["final_policy_score"] is None


def _comparable(records):
    return [
        {k: v for k, v in r.items() if k not in ("steps_per_sec", "eval/decision_rate", "decision_rate")}
        for r in records
    ]


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, hopper_file, monkeypatch, algo):
    """40 steps in one go and 20 + 20 steps with --resume give the same metrics and the same networks."""
    (tmp_path / "straight").mkdir(), (tmp_path / "resumed").mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    straight = algo.train(algo.parse_args(small_run_flags(hopper_file, 40) + ["--save-model"]))
    monkeypatch.chdir(tmp_path / "resumed")
    first_half = algo.train(algo.parse_args(small_run_flags(hopper_file, 20) + ["--save-model"]))
    checkpoint = os.path.join(os.path.dirname(first_half), "checkpoint.pt")
    resumed = algo.train(algo.parse_args(small_run_flags(hopper_file, 40) + ["--save-model", "--resume", checkpoint]))
    assert os.path.dirname(resumed) == os.path.dirname(first_half)

    straight_dir, resumed_dir = (
        tmp_path / "straight" / os.path.dirname(straight),
        tmp_path / "resumed" / os.path.dirname(resumed),
    )
    assert _comparable(read_jsonl(resumed_dir / "metrics.jsonl")) == _comparable(
        read_jsonl(straight_dir / "metrics.jsonl")
    )
    a = torch.load(straight_dir / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed_dir / "checkpoint.pt", weights_only=False)
    for net in networks(algo):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    summaries = [json.loads(open(p).read()) for p in (straight_dir / "summary.json", resumed_dir / "summary.json")]
    assert _comparable(summaries[0]["evaluations"]) == _comparable(summaries[1]["evaluations"])


def test_different_seeds_give_different_runs(tmp_path, hopper_file, monkeypatch, algo):
    """The counterpart of the resume test: the numbers compared there do depend on the randomness."""
    monkeypatch.chdir(tmp_path)
    flags = small_run_flags(hopper_file, 10) + ["--eval-every", "10"]
    runs = [
        read_jsonl(os.path.join(os.path.dirname(algo.train(algo.parse_args(flags + ["--seed", s]))), "metrics.jsonl"))
        for s in ("0", "1")
    ]
    assert _comparable(runs[0]) != _comparable(runs[1])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-id", "hopper-medium-v9"], "unknown --env-id 'hopper-medium-v9'; supported: halfcheetah-medium-v2,"),
        (
            ["--env-id", "hopper-medium-v2", "--dataset-path", "missing.hdf5"],
            "dataset file missing.hdf5 does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, flags, message, algo):
    proc = run_script(tmp_path, algo, *flags)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{algo.__name__}.py: error: {proc.stderr.split('error: ', 1)[1].strip()}"
    ]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_non_finite_loss_stops_with_step_and_name(tmp_path, hopper_file, monkeypatch, algo):
    with h5py.File(hopper_file, "a") as f:
        f["rewards"][...] = np.float32(1e30)  # finite data whose squared TD error overflows float32
    monkeypatch.chdir(tmp_path)
    with pytest.raises(algo.UserError, match="non-finite critic_loss at step 1;"):
        algo.train(algo.parse_args(small_run_flags(hopper_file, 10) + ["--log-every", "5"]))


def test_resume_from_a_missing_checkpoint(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(algo.UserError, match="cannot resume from"):
        algo.train(
            algo.parse_args(small_run_flags(hopper_file, 10) + ["--resume", str(tmp_path / "x" / "checkpoint.pt")])
        )


def antmaze_file(tmp_path):
    """AntMaze-layout data: 29-dim observations, 8-dim actions, sparse rewards, goals."""
    rng = np.random.default_rng(0)
    n = 300
    path = tmp_path / "antmaze.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 29)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        f["rewards"] = (rng.random(n) < 0.1).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.arange(n) % 100 == 99
        f["infos/goal"] = rng.normal(size=(n, 2)).astype(np.float32)
    return str(path)


def test_antmaze_trains_with_its_preset_and_evaluates_in_the_adapter(tmp_path, monkeypatch, algo):
    """AntMaze data trains with the preset's backup and reward shift, and is scored in the AntMaze adapter: each
    episode succeeds (return 1) or not (0), so the score is 100 x the success rate."""
    path = antmaze_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    summary_path = algo.train(
        algo.parse_args(
            [
                "--env-id",
                "antmaze-medium-play-v2",
                "--dataset-path",
                path,
                "--total-steps",
                "10",
                "--eval-every",
                "10",
                "--batch-size",
                "16",
                "--eval-episodes",
                "2",
                "--num-candidates",
                "1",
            ]
        )
    )
    summary = json.loads(open(summary_path).read())
    assert summary["eval_env"] == d4rl_compat.DOMAINS["antmaze"].eval_env and len(summary["evaluations"]) == 1
    assert (
        summary["final_score"] in (0.0, 50.0, 100.0)
        and summary["final_score"] == 100 * summary["evaluations"][0]["return"]
    )
    records = read_jsonl(os.path.join(os.path.dirname(summary_path), "metrics.jsonl"))
    low, high = {"cql_antmaze": (-2.0, 2.0), "iql_antmaze": (-1.0, 0.0)}[
        algo.parse_args(["--env-id", "antmaze-medium-play-v2"]).reward_mode
    ]
    assert records[-1]["step"] == 10 and low / (1 - 0.99) <= records[-1]["q_target"] <= max(high, 1.0) / (1 - 0.99)


def test_datasets_without_an_evaluation_env_train_and_say_so(tmp_path, monkeypatch, capsys, algo):
    """Without an evaluation env (gymnasium-robotics not installed) a run trains and reports no score instead of a
    made-up one."""
    path = antmaze_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(d4rl_compat, "eval_env_factory", lambda env_id: None)
    summary_path = algo.train(
        algo.parse_args(
            [
                "--env-id",
                "antmaze-medium-play-v2",
                "--dataset-path",
                path,
                "--total-steps",
                "10",
                "--eval-every",
                "5",
                "--batch-size",
                "16",
            ]
        )
    )
    assert "NOTE: antmaze-medium-play-v2: no evaluation environment" in capsys.readouterr().out
    summary = json.loads(open(summary_path).read())
    assert summary["final_score"] is None and summary["evaluations"] == []
