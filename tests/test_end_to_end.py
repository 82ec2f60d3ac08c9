"""ofql.py, dql.py and fql.py run as a user runs them, on tiny D4RL-layout files, with real evaluation episodes
in Hopper-v4."""

import dataclasses
import glob
import importlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import bookkeeping
import offline_data
import ofql
from conftest import fail_at_window

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
    transitions = json.loads((run_dir / "config.json").read_text())["transitions"]
    banner = f"run {os.path.relpath(run_dir, tmp_path)}: hopper-medium-v2, {transitions} transitions of {hopper_file}"
    assert banner in proc.stdout.splitlines()  # what it trains on, said at the start
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
            offline_data.normalized_score("hopper-medium-v2", e["return"]), rel=1e-6, abs=1e-6
        )
        assert 0 < e["return"] < 3000 and e["decision_rate"] > 0
    assert summary["train_steps_per_sec"] > 0 and summary["wall_clock_sec"] > 0
    windows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "steps_per_sec" in r]  # 4 windows of 10 steps
    seconds = sum(10 / r["steps_per_sec"] for r in windows)
    assert len(windows) == 4 and summary["train_steps_per_sec"] == pytest.approx(40 / seconds, rel=1e-9)
    config = json.loads((run_dir / "config.json").read_text())
    preset = {  # the three set by the flags aside
        k: v for k, v in algo.PRESETS["hopper-medium-v2"].items() if k not in ("total_steps", "eval_episodes")
    }
    assert preset and {k: config[k] for k in preset} == preset and config["transitions"] > 0
    assert config["commit"] == summary["commit"] == bookkeeping.code_version(algo.__file__)  # None outside git
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert "eval/score" in records[1] and "eval/score" not in records[0]
    checkpoint = torch.load(run_dir / "checkpoint.pt")
    assert checkpoint["step"] == 40 and all(name in checkpoint for name in algo.Agent.__dataclass_fields__)


def test_with_candidates_the_policys_own_sample_is_evaluated_too(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    built, make_policy = [], algo.make_policy
    monkeypatch.setattr(algo, "make_policy", lambda agent, k, *a: built.append(k) or make_policy(agent, k, *a))
    summary = json.load(open(algo.train(algo.parse_args(small_run_flags(hopper_file, 20)))))
    assert built == [5, 1]  # the protocol's policy, then the policy's own sample
    e = summary["evaluations"][-1]
    assert e["policy_score"] == pytest.approx(
        offline_data.normalized_score("hopper-medium-v2", e["policy_return"]), rel=1e-6
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
    """40 steps in one go and 20 + 20 steps with --resume give the same metrics and the same networks (the EMA policy
    moving from step 13 on, so that its state crosses the checkpoint)."""
    (tmp_path / "straight").mkdir(), (tmp_path / "resumed").mkdir()
    ema = ["--ema-start", "10", "--ema-every", "3"] if hasattr(algo.Args, "ema_start") else []
    monkeypatch.chdir(tmp_path / "straight")
    straight = algo.train(algo.parse_args(small_run_flags(hopper_file, 40) + ["--save-model", *ema]))
    monkeypatch.chdir(tmp_path / "resumed")
    first_half = algo.train(algo.parse_args(small_run_flags(hopper_file, 20) + ["--save-model", *ema]))
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
    a = torch.load(straight_dir / "checkpoint.pt")
    b = torch.load(resumed_dir / "checkpoint.pt")
    for net in networks(algo):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    summaries = [json.loads(open(p).read()) for p in (straight_dir / "summary.json", resumed_dir / "summary.json")]
    assert _comparable(summaries[0]["evaluations"]) == _comparable(summaries[1]["evaluations"])


def test_matmul_precision_high_is_set_and_changes_nothing_on_the_cpu(tmp_path, hopper_file, monkeypatch, algo):
    """--matmul-precision high (TF32 on NVIDIA GPUs) is what the run sets, and on the CPU it logs the same numbers as
    the default, highest, bit for bit."""
    monkeypatch.chdir(tmp_path)
    records = {}
    for precision in ("high", "highest"):
        flags = small_run_flags(hopper_file, 10) + ["--eval-every", "10", "--matmul-precision", precision]
        summary = algo.train(algo.parse_args(flags))
        assert torch.get_float32_matmul_precision() == precision
        records[precision] = _comparable(read_jsonl(os.path.join(os.path.dirname(summary), "metrics.jsonl")))
    assert records["high"] == records["highest"]


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
        (["--env-id", "hopper-medium-v9"], "unknown --env-id 'hopper-medium-v9'; did you mean hopper-medium-v2 or "),
        (
            ["--env-id", "hopper-medium-v2", "--dataset-path", "missing.hdf5"],
            "dataset file missing.hdf5 does not exist",
        ),
        (["--env-id", "hopper-medium-v2", "--batch-size", "-4"], "--batch-size must be a number in (0, inf), not -4"),
        (["--env-id", "hopper-medium-v2", "--dataset-path", "/dev/null"], "/dev/null is not an hdf5 file"),
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
    with pytest.raises(algo.UserError, match=r"non-finite critic_loss(, \w+)* at step 1; stopping \(check the data"):
        algo.train(algo.parse_args(small_run_flags(hopper_file, 10) + ["--log-every", "5"]))
    # the run's folder says why it stopped, as a failed sweep member's does: compare.py names it, --resume refuses it
    (summary_path,) = glob.glob(str(tmp_path / "runs" / "*" / "summary.json"))
    summary = json.load(open(summary_path))
    assert summary["error"].startswith("non-finite critic_loss") and summary["error"].endswith(" at step 1")
    assert summary["evaluations"] == [] and summary["train_steps_per_sec"] is None


def test_a_run_stopped_after_its_first_window_reports_no_training_speed(tmp_path, hopper_file, monkeypatch):
    """A loss that goes non-finite in the second logging window: the summary names it and gives no steps per second
    (the steps it would count were never trained)."""
    monkeypatch.chdir(tmp_path)
    fail_at_window(2, 0, monkeypatch, step=6)  # the second window of 5 steps
    with pytest.raises(ofql.UserError, match="stopping"):
        ofql.train(ofql.parse_args(small_run_flags(hopper_file, 20) + ["--log-every", "5"]))
    (summary_path,) = glob.glob(str(tmp_path / "runs" / "*" / "summary.json"))
    summary = json.load(open(summary_path))
    assert summary["error"].endswith(" at step 6") and summary["train_steps_per_sec"] is None


def test_a_resumed_runs_wall_clock_counts_its_earlier_sessions(tmp_path, hopper_file, monkeypatch):
    """wall_clock_sec in summary.json and the checkpoint's elapsed add the time before the resume (1000 s here) to the
    resumed session's, which lasts at most as long as the call."""
    monkeypatch.chdir(tmp_path)
    flags = small_run_flags(hopper_file, 4) + ["--save-model", "--eval-every", "4"]
    summary = ofql.train(ofql.parse_args(flags))
    checkpoint = os.path.join(os.path.dirname(summary), "checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    torch.save(state | {"elapsed": 1000.0}, checkpoint)
    start = time.time()
    ofql.train(ofql.parse_args(["--resume", checkpoint, "--total-steps", "8"]))
    took = time.time() - start
    assert 1000 < json.load(open(summary))["wall_clock_sec"] <= 1000 + took
    assert 1000 < torch.load(checkpoint, weights_only=True)["elapsed"] <= 1000 + took


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
    assert (
        summary["eval_env"] == offline_data.d4rl_files.DOMAINS["antmaze"].eval_env and len(summary["evaluations"]) == 1
    )
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
    monkeypatch.setattr(offline_data, "eval_env_factory", lambda env_id: None)
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
    assert (
        "NOTE: antmaze-medium-play-v2: no evaluation environment (AntMaze, Kitchen and Adroit need gymnasium-"
        "robotics: pip install -r requirements.txt)" in capsys.readouterr().out
    )
    summary = json.loads(open(summary_path).read())
    assert summary["final_score"] is None and summary["evaluations"] == []


# --- reliability: what a user meets in the first days (one line and exit code 2, never lost data) ----------------
BAD_NUMBERS = {
    "common": [
        ("--eval-every", "0"),
        ("--log-every", "0"),
        ("--batch-size", "-4"),
        ("--batch-size", "0"),
        ("--eval-episodes", "0"),
        ("--total-steps", "0"),
        ("--num-candidates", "0"),
        ("--grad-norm", "-1"),
        ("--gamma", "nan"),
        ("--seed", "-1"),
        ("--batch-size", str(2**31)),
    ],
    "ofql": [("--eta", "-1"), ("--flow-ratio", "1.5"), ("--time-sigma", "0"), ("--adaptive-weight-power", "20")],
    "dql": [("--diffusion-steps", "0"), ("--eta", "-1"), ("--ema-start", str(2**64))],  # an OverflowError in update()
    "fql": [("--flow-steps", "0"), ("--alpha", "-1")],
}


def test_bad_numbers_stop_before_anything_is_read_or_written(tmp_path, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        offline_data, "load", lambda *a: pytest.fail("the data were loaded before the flags were checked")
    )
    for flag, value in BAD_NUMBERS["common"] + BAD_NUMBERS[algo.__name__]:
        with pytest.raises(algo.UserError, match=rf"^{flag} must be (a number in .*|at most \d+), not {value}"):
            algo.train(algo.parse_args(["--env-id", "hopper-medium-v2", flag, value]))
    assert os.listdir(tmp_path) == []


def test_every_number_flag_has_a_range(algo):
    ranged = " ".join(bookkeeping.FLAG_RANGES.values()).split()
    numbers = [f.name for f in dataclasses.fields(algo.Args) if f.type in (int, float)]
    assert set(numbers) - set(ranged) <= {"time_mu"}  # the mean of a logit-normal may be any finite number


def test_two_runs_started_in_the_same_second_get_a_folder_each(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    flags = small_run_flags(hopper_file, 10) + ["--eval-every", "10", "--save-model"]
    first, second = (os.path.dirname(algo.train(algo.parse_args(flags))) for _ in range(2))
    assert first != second and sorted(os.listdir("runs")) == sorted(os.path.basename(d) for d in (first, second))
    for run_dir in (first, second):
        assert [r["step"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))] == [10]


def test_resume_refuses_other_training_flags_and_names_each(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    first = os.path.dirname(algo.train(algo.parse_args(small_run_flags(hopper_file, 20) + ["--save-model"])))
    checkpoint, config = os.path.join(first, "checkpoint.pt"), open(os.path.join(first, "config.json")).read()
    other_file = str(tmp_path / "same_shapes.hdf5")
    with open(hopper_file, "rb") as src, open(other_file, "wb") as dst:
        dst.write(src.read())
    for extra, named in [
        (["--batch-size", "16", "--gamma", "0.9"], ["--batch-size 16 (was 32)", "--gamma 0.9 (was 0.99)"]),
        (["--dataset-path", other_file], ["--dataset-path " + other_file]),
        (["--total-steps", "10"], ["--total-steps 10 (below its step, 20)"]),
    ]:
        with pytest.raises(algo.UserError, match="cannot resume from") as info:
            algo.train(algo.parse_args(small_run_flags(hopper_file, 40) + ["--resume", checkpoint] + extra))
        assert all(n in str(info.value) for n in named), str(info.value)
    assert open(os.path.join(first, "config.json")).read() == config  # the first part's record is kept
    # the length, logging and evaluation may change; the resumed part's flags are recorded beside the first's
    resumed = ["--resume", checkpoint, "--eval-episodes", "1", "--log-every", "5", "--num-candidates", "1"]
    algo.train(algo.parse_args(small_run_flags(hopper_file, 30) + resumed))
    assert json.load(open(os.path.join(first, "config_resumed_at_20.json")))["total_steps"] == 30
    assert open(os.path.join(first, "config.json")).read() == config


def test_resume_from_an_unusable_file_or_after_a_kill(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save({"step": 3}, tmp_path / "other.pt")
    for name in ("empty.pt", "notes.pt", "other.pt", "typo/checkpoint.pt"):
        with pytest.raises(algo.UserError, match=f"cannot resume from {tmp_path / name}"):
            algo.train(algo.parse_args(small_run_flags(hopper_file, 40) + ["--resume", str(tmp_path / name)]))
    assert not (tmp_path / "typo").exists() and not (tmp_path / "runs").exists()
    # a kill (or a full disk) in the middle of a metrics line: the resumed run drops it and continues
    first = os.path.dirname(algo.train(algo.parse_args(small_run_flags(hopper_file, 20) + ["--save-model"])))
    with open(os.path.join(first, "metrics.jsonl"), "a") as f:
        f.write('{"step": 30, "critic_lo')
    algo.train(algo.parse_args(small_run_flags(hopper_file, 40) + ["--resume", os.path.join(first, "checkpoint.pt")]))
    assert [r["step"] for r in read_jsonl(os.path.join(first, "metrics.jsonl"))] == [10, 20, 30, 40]


def test_the_run_folder_is_checked_before_the_data_are_loaded(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    monkeypatch.setattr(offline_data, "load", lambda *a: pytest.fail("the data were loaded first"))
    with pytest.raises(algo.UserError, match="cannot make the run folder runs/hopper-medium-v2__"):
        algo.train(algo.parse_args(small_run_flags(hopper_file, 10)))
    # and a run whose data fail leaves no empty folder behind, nor the runs folder it made
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").unlink()
    with pytest.raises(algo.UserError, match="does not exist"):
        algo.train(algo.parse_args(small_run_flags(str(tmp_path / "missing.hdf5"), 10)))
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()  # a runs folder that was there before stays
    with pytest.raises(algo.UserError, match="does not exist"):
        algo.train(algo.parse_args(small_run_flags(str(tmp_path / "missing.hdf5"), 10)))
    assert os.listdir(tmp_path / "runs") == []


def test_an_interrupted_checkpoint_write_leaves_the_last_one_whole(tmp_path, hopper_file, monkeypatch, algo):
    """Ctrl-C while a checkpoint is written: no checkpoint.pt.tmp left, the previous checkpoint.pt intact, and the
    KeyboardInterrupt carries the line __main__ prints: that checkpoint and the --resume command."""
    monkeypatch.chdir(tmp_path)
    save, saves = torch.save, []

    def interrupted_save(obj, file, *args, **kwargs):  # file: the open .tmp file
        saves.append(file)
        if len(saves) == 2:
            file.write(b"half a checkpo")
            raise KeyboardInterrupt
        save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    monkeypatch.setattr(sys, "argv", ["ofql.py", "--save-model", "--resume", "old.pt", "--seed", "0"])
    with pytest.raises(KeyboardInterrupt) as info:
        algo.train(algo.parse_args(small_run_flags(hopper_file, 40) + ["--save-model"]))
    run_dir = os.path.join("runs", os.listdir("runs")[0])
    assert sorted(os.listdir(run_dir)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    assert torch.load(os.path.join(run_dir, "checkpoint.pt"))["step"] == 20
    assert str(info.value) == (
        f"last checkpoint {run_dir}/checkpoint.pt; continue with: python ofql.py --save-model --seed 0 "
        f"--resume {run_dir}/checkpoint.pt"
    )


def test_a_signal_in_the_last_step_lets_the_run_finish(tmp_path, hopper_file, monkeypatch, algo):
    """SIGTERM while the last step trains: nothing is left to continue, so the run finishes (its summary.json, its
    last evaluation) rather than stopping with a --resume line."""
    monkeypatch.chdir(tmp_path)
    update = algo.update

    def update_then_sigterm(agent, batch, args, step):
        if int(step) == args.total_steps:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only notes it: the loop reads it after this step
        return update(agent, batch, args, step)

    monkeypatch.setattr(algo, "update", update_then_sigterm)
    summary = algo.train(algo.parse_args(small_run_flags(hopper_file, 20)))
    assert json.load(open(summary))["evaluations"][-1]["step"] == 20


def start_script(tmp_path, algo, flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "D4RL_DATASET_DIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, algo.__file__, *flags],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a shell without job control starts background jobs with SIGINT ignored, and Python keeps it so: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def stop_when(proc, tmp_path, pattern, signum):
    """Send `signum` once a file matching `pattern` exists; -> (exit code, stderr lines but tqdm's bar)."""
    deadline = time.time() + 120
    while not glob.glob(str(tmp_path / pattern)) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr.decode(), stderr.decode()
    return proc.returncode, [line for line in stderr.decode().splitlines() if line.strip() and "%|" not in line]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_it_came_in_and_says_how_to_continue(tmp_path, hopper_file, algo, signum):
    """SIGINT (Ctrl-C) or SIGTERM (a cluster's pre-emption) to a running script with --save-model: the step it came in
    is saved (after the last evaluation's), one line names it and the --resume command; exit code 130 or 143."""
    flags = small_run_flags(hopper_file, 10**6) + ["--eval-every", "10", "--eval-episodes", "1", "--save-model"]
    proc = start_script(tmp_path, algo, flags)
    code, lines = stop_when(proc, tmp_path, "runs/*/checkpoint.pt", signum)
    checkpoint = os.path.relpath(glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))[0], tmp_path)
    step = torch.load(tmp_path / checkpoint)["step"]
    records = read_jsonl(tmp_path / os.path.dirname(checkpoint) / "metrics.jsonl")
    assert code == 128 + signum and len(lines) == 1, lines
    assert lines[0].startswith(
        f"{algo.__name__}.py: interrupted: stopped at step {step}; saved in {checkpoint}; continue with: python"
    )
    assert lines[0].endswith(f"--save-model --resume {checkpoint}")
    assert step >= 10 and records[-1]["step"] == step  # the stopped step's own record, of the steps since the last
    assert not glob.glob(str(tmp_path / "runs" / "*" / "*.tmp"))


def test_sigterm_without_save_model_says_nothing_was_saved(tmp_path, hopper_file, algo):
    proc = start_script(tmp_path, algo, small_run_flags(hopper_file, 10**6) + ["--log-every", "1"])
    code, lines = stop_when(proc, tmp_path, "runs/*/metrics.jsonl", signal.SIGTERM)
    assert code == 143 and len(lines) == 1, lines
    assert re.fullmatch(
        rf"{algo.__name__}.py: interrupted: stopped at step \d+; nothing was saved \(--save-model is off: add it to "
        r"keep a checkpoint next time\)",
        lines[0],
    ), lines[0]
    assert not glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))


def test_a_run_stopped_by_sigterm_resumes_bit_for_bit(tmp_path, hopper_file, monkeypatch, algo):
    """SIGTERM to a running script at some step s; --resume to T, two evaluations later, gives the networks,
    evaluations and records of a straight run to T. The record window that the stop cut is logged in two parts,
    at s and at the next record, whose step-weighted mean is the straight run's."""
    (tmp_path / "stopped").mkdir(), (tmp_path / "straight").mkdir()
    flags = small_run_flags(hopper_file, 10**6) + ["--eval-every", "10", "--eval-episodes", "1", "--save-model"]
    proc = start_script(tmp_path / "stopped", algo, flags)
    code, _ = stop_when(proc, tmp_path / "stopped", "runs/*/checkpoint.pt", signal.SIGTERM)
    checkpoint = glob.glob(str(tmp_path / "stopped" / "runs" / "*" / "checkpoint.pt"))[0]
    s = torch.load(checkpoint)["step"]
    total = (s // 10 + 2) * 10
    monkeypatch.chdir(tmp_path / "stopped")
    resumed = algo.train(algo.parse_args(flags + ["--total-steps", str(total), "--resume", checkpoint]))
    monkeypatch.chdir(tmp_path / "straight")
    straight = algo.train(algo.parse_args(flags + ["--total-steps", str(total)]))
    a, b = (torch.load(os.path.join(os.path.dirname(p), "checkpoint.pt")) for p in (straight, resumed))
    assert code == 143 and a["step"] == b["step"] == total
    for net in networks(algo):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after the SIGTERM and resume"
    assert _comparable(a["evals"]) == _comparable(b["evals"]) and len(a["evals"]) == total // 10
    ours = {r["step"]: r for r in _comparable(read_jsonl(os.path.join(os.path.dirname(resumed), "metrics.jsonl")))}
    theirs = {r["step"]: r for r in _comparable(read_jsonl(os.path.join(os.path.dirname(straight), "metrics.jsonl")))}
    if s % 10 == 0:  # stopped at a record: no window was cut
        assert ours == theirs
        return
    cut_start, cut_end = s // 10 * 10, s // 10 * 10 + 10  # the straight run's record window that holds s
    assert {k: v for k, v in ours.items() if k not in (s, cut_end)} == {k: v for k, v in theirs.items() if k != cut_end}
    for key, value in theirs[cut_end].items():
        if key != "step" and not key.startswith("eval/"):
            parts = (s - cut_start) * ours[s][key] + (cut_end - s) * ours[cut_end][key]
            assert parts / (cut_end - cut_start) == pytest.approx(value, rel=1e-5, abs=1e-6), key


class CreatesAFile:
    """Unpickling this object calls open(path, "w"): what a shared checkpoint.pt could do to whoever resumes it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_resume_refuses_a_checkpoint_whose_pickle_would_run_code(tmp_path, hopper_file, monkeypatch, algo):
    monkeypatch.chdir(tmp_path)
    run_dir = os.path.dirname(algo.train(algo.parse_args(small_run_flags(hopper_file, 20) + ["--save-model"])))
    checkpoint, marker = os.path.join(run_dir, "checkpoint.pt"), tmp_path / "code_ran"
    state = torch.load(checkpoint)
    torch.save({**state, "config": {**state["config"], "note": CreatesAFile(marker)}}, checkpoint)
    torch.load(checkpoint, weights_only=False)  # the negative control: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    proc = run_script(tmp_path, algo, *small_run_flags(hopper_file, 40), "--resume", checkpoint)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"{algo.__name__}.py: error: cannot resume from {checkpoint}: it holds a Python object "
        f"({open.__module__}.open) that only an unsafe load could build; not loaded"  # _io.open from Python 3.12
    ), proc.stderr
    assert not marker.exists()


def test_capture_video_records_the_first_episode_of_each_evaluation(tmp_path, hopper_file, monkeypatch, algo):
    """--capture-video (with --track, offline): runs/<run>/videos/step_<step>.mp4 for each evaluation, frames of a
    moving hopper rendered off-screen (no display here; this fails, never skips, where rendering is impossible), and
    the same evaluations as without it."""
    monkeypatch.chdir(tmp_path)
    flags = small_run_flags(hopper_file, 40) + ["--track"]
    with_video = json.load(open(algo.train(algo.parse_args(flags + ["--capture-video"]))))
    without = json.load(open(algo.train(algo.parse_args(flags))))
    videos = glob.glob("runs/*/videos")  # the first run's only
    assert len(videos) == 1 and sorted(os.listdir(videos[0])) == ["step_20.mp4", "step_40.mp4"]
    frames = iio.imread(os.path.join(videos[0], "step_20.mp4"))
    assert frames.ndim == 4 and len(frames) > 5 and frames.shape[-1] == 3
    assert np.abs(frames[0].astype(float) - frames[-1]).mean() > 1  # the hopper moved
    assert _comparable(with_video["evaluations"]) == _comparable(without["evaluations"])


def test_each_windows_speed_is_its_steps_over_its_own_time(algo, hopper_file, tmp_path, monkeypatch):
    """A clock that advances 1 s per reading: every logging window lasts 1 s (from its start to its end, before the
    evaluation), so its steps_per_sec is its own step count: 10, 10, then 5 for the last window (25 steps, windows of
    10); the summary's 25 steps over 3 s. Fails on dividing by --log-every or on a window that starts at the run's
    start."""
    monkeypatch.chdir(tmp_path)
    clock = itertools.count()
    monkeypatch.setattr(algo, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "25", "--eval-every",
             "20", "--log-every", "10", "--eval-episodes", "1", "--batch-size", "32"]  # fmt: skip
    summary = json.load(open(algo.train(algo.parse_args(flags))))
    (log,) = glob.glob(str(tmp_path / "runs" / "*" / "metrics.jsonl"))
    windows = [r for r in map(json.loads, open(log)) if "steps_per_sec" in r]
    assert [(r["step"], r["steps_per_sec"]) for r in windows] == [(10, 10.0), (20, 10.0), (25, 5.0)]
    assert summary["train_steps_per_sec"] == pytest.approx(25 / 3)


def test_a_signal_during_an_evaluation_stops_at_its_step(tmp_path, hopper_file, monkeypatch, algo):
    """SIGTERM while step 20's episodes run: the run stops at step 20, saved once there, not after one more step."""
    monkeypatch.chdir(tmp_path)
    evaluate, saved = algo.evaluate, []

    def evaluate_then_sigterm(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # noted by the handler; the loop reads it after the episodes
        return evaluate(*args)

    monkeypatch.setattr(algo, "evaluate", evaluate_then_sigterm)
    monkeypatch.setattr(bookkeeping.Runs, "save", lambda self, agent, step: saved.append(step))
    with pytest.raises(bookkeeping.Interrupted) as info:
        algo.train(algo.parse_args(small_run_flags(hopper_file, 60) + ["--save-model"]))
    assert info.value.exit_code == 143 and saved == [20]
    run_dir = os.path.join("runs", os.listdir("runs")[0])
    assert [json.loads(line)["step"] for line in open(os.path.join(run_dir, "metrics.jsonl"))][-1] == 20
