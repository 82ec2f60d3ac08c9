"""benchmark/gpu_check.py: its CPU mode end to end (as CI runs it), and the logic that decides pass or fail on a
GPU machine: the eager/graph comparison, pytest's counts, the runs' error lines, the speed targets."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import gpu_check  # noqa: E402


def log(*windows, keys=("critic_loss", "actor_loss")):
    """A metrics.jsonl log: one record per (step, value) window, every metric at that value."""
    return [{"step": step, **dict.fromkeys(keys, value), "steps_per_sec": 100.0} for step, value in windows]


def compare(eager, graph, tight_steps=200):
    return gpu_check.compare_logs(eager, graph, rtol=1e-4, atol=1e-5, tight_steps=tight_steps, drift_rtol=0.05)


def test_the_cpu_mode_runs_every_part_and_prints_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # the CPU mode on a GPU machine too
    cmd = [sys.executable, "benchmark/gpu_check.py", "--out-dir", str(tmp_path), "--transitions", "1000"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device") and "CPU parts work" in lines[0]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["ok"] and not report["cuda"] and report["tests"]["collected"] > 0
    for script in gpu_check.SCRIPTS:
        pair = report["parity"]["scripts"][script]
        assert pair["ok"] and pair["comparison"]["windows"] == 2 and pair["comparison"]["max_rel"] == 0
        assert pair["eager"]["training_step"] == pair["graph"]["training_step"] == "eager"
    assert report["speed"]["figures"]["ofql"]["eager"]["updates_per_sec"] > 0
    sweep = report["sweep"]
    assert sweep["ok"] and [c["windows"] for c in sweep["parity"]["members"]] == [2, 2]
    assert all(c["max_rel"] == 0 for c in sweep["parity"]["members"])
    assert sweep["figures"]["algorithms"]["ofql"]["eager"]["members"]["2"]["member_updates_per_sec"] > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "**PASS**" in summary and "| ofql.py: eager vs CUDA graph | pass |" in summary
    assert "| sweep.py: eager vs CUDA graph, sweep_speed.py | pass | 2 members" in summary


def test_identical_logs_pass():
    result = compare(log((100, 1.0), (200, 2.0)), log((100, 1.0), (200, 2.0)))
    assert result["problems"] == [] and result["max_rel"] == 0 and result["windows"] == 2


def test_an_early_window_beyond_the_tests_tolerance_is_a_mismatch():
    result = compare(log((100, 1.0), (200, 2.0)), log((100, 1.0), (200, 2.001)))
    assert result["problems"] == [
        "actor_loss at step 200: eager 2, graph 2.001 (relative difference 0.00048 > rtol 0.0001)",
        "critic_loss at step 200: eager 2, graph 2.001 (relative difference 0.00048 > rtol 0.0001)",
    ]
    assert result["first_beyond_rtol"] == {"step": 200, "metric": "actor_loss"}
    # within the tolerance: |g - e| <= atol + rtol |e|, as assert_close has it
    assert compare(log((100, 2.0)), log((100, 2.0 + 1e-5 + 1.9e-4)))["problems"] == []
    assert compare(log((100, 0.0)), log((100, 2e-5)))["problems"] != []  # atol near zero


def test_later_windows_may_drift_within_drift_rtol_only():
    eager = log((100, 1.0), (200, 1.0), (300, 1.0))
    drifted = compare(eager, log((100, 1.0), (200, 1.03), (300, 1.0)), tight_steps=100)
    assert drifted["problems"] == [] and drifted["max_rel_at"] == {"metric": "actor_loss", "step": 200}
    assert drifted["first_beyond_rtol"] == {"step": 200, "metric": "actor_loss"}
    broken = compare(eager, log((100, 1.0), (200, 1.0), (300, 1.1)), tight_steps=100)
    assert len(broken["problems"]) == 2 and "drift_rtol" in broken["problems"][0]


def test_a_missing_step_or_metric_and_a_nan_are_reported():
    missing_step = compare(log((100, 1.0), (200, 1.0)), log((100, 1.0)))
    assert missing_step["problems"] == ["step 200 logged only by the eager run"]
    missing_key = compare(log((100, 1.0)), log((100, 1.0), keys=("critic_loss",)))
    assert missing_key["problems"] == ["actor_loss at step 100 logged only by the eager run"]
    nan = compare(log((100, 1.0)), log((100, float("nan"))))
    assert len(nan["problems"]) == 2 and "not finite" in nan["problems"][0]
    assert compare([], [])["problems"] == ["the eager run logged no metrics"]


def test_eval_and_speed_entries_are_not_compared():
    eager = [{"step": 100, "critic_loss": 1.0, "steps_per_sec": 10.0, "eval/score": 5.0}]
    graph = [{"step": 100, "critic_loss": 1.0, "steps_per_sec": 99.0, "eval/score": 7.0}]
    assert compare(eager, graph)["problems"] == []


@pytest.mark.parametrize(
    "output, counts",
    [
        ("....sss [100%]\n4 passed, 3 skipped in 5.21s\n", {"passed": 4, "skipped": 3, "failed": 0, "errors": 0}),
        (
            "F. [100%]\n1 failed, 22 passed, 2 warnings in 9.0s\n",
            {"passed": 22, "skipped": 0, "failed": 1, "errors": 0},
        ),
        ("E\n1 error in 0.5s\n", {"passed": 0, "skipped": 0, "failed": 0, "errors": 1}),
        ("garbage\n", {"passed": 0, "skipped": 0, "failed": 0, "errors": 0}),
    ],
)
def test_pytest_counts(output, counts):
    assert {k: v for k, v in gpu_check.pytest_counts(output).items() if k != "collected"} == counts


def test_a_skipped_or_failed_cuda_test_fails_the_check_on_cuda():
    def verdict(passed=23, skipped=0, failed=0, errors=0, rc=0, cuda=True):
        counts = {"passed": passed, "skipped": skipped, "failed": failed, "errors": errors, "collected": 0}
        return gpu_check.tests_verdict(counts, rc, cuda)

    assert verdict() is None
    assert verdict(passed=11, skipped=12) == "12 skipped on a CUDA machine"
    assert verdict(failed=1, rc=1) == "1 failed, 0 errors"
    assert verdict(passed=0) == "no test ran"
    assert verdict(rc=2) == "pytest exited 2"
    assert (
        gpu_check.tests_verdict(
            {**dict.fromkeys(("passed", "skipped", "failed", "errors"), 0), "collected": 23}, 0, cuda=False
        )
        is None
    )


def test_a_failed_capture_is_reported_loudly(tmp_path):
    path = tmp_path / "ofql_graph.log"
    path.write_text(
        "training on cuda: ...\nofql.py: error: capturing the training step as a CUDA graph failed (x); "
        "run with --no-cuda-graph\n"
    )
    assert gpu_check.error_line(str(path), 2, 600).startswith("exit 2: CUDA GRAPH FAILED: ofql.py: error: capturing")
    assert gpu_check.error_line(str(path), None, 600).startswith("timed out after 600 s")


def test_a_run_on_the_wrong_path_is_a_failure():
    run = {"training_step": "eager", "device": "cuda"}
    assert gpu_check.path_problem(run, graph=True, cuda=True) == "trained with training_step=eager, expected cuda_graph"
    assert gpu_check.path_problem(run, graph=False, cuda=True) is None
    assert gpu_check.path_problem({"training_step": "eager", "device": "cpu"}, graph=False, cuda=True) is not None
    assert gpu_check.path_problem(run | {"device": "cpu"}, graph=True, cuda=False) is None


def test_speed_targets_and_the_summary_of_a_failed_gpu_run():
    figures = {"ofql": {"cuda_graph": {"updates_per_sec": 1600.0, "decisions_1": 9000.0}}}
    ratios = {"OFQL/DQL training time, cuda_graph": 0.6, "OFQL/DQL decision frequency, 1 candidate, cuda_graph": 4.2}
    met = {t["target"].split(",")[0] + t["bound"]: t["met"] for t in gpu_check.check_targets(figures, ratios)}
    assert list(met.values()) == [True, False, False, True]
    assert gpu_check.check_targets({}, {})[0]["met"] is None
    report = {
        "cuda": True,
        "ok": False,
        "seconds": 1.0,
        "failures": ["ofql: graph run: exit 2: CUDA GRAPH FAILED"],
        "device": {"device": "H200", "driver": "550", "torch": "2", "cuda": "12", "cudnn": 9, "python": "3"},
        "tests": {"ok": True, "problem": None, "passed": 23, "skipped": 0, "failed": 0, "errors": 0},
    }
    pair = {
        "ok": False,
        "problems": ["graph run: exit 2: CUDA GRAPH FAILED: ..."],
        "comparison": None,
        "eager": {"steps_per_sec": 300.0},
        "graph": {},
    }
    report["parity"] = {"steps": 2000, "log_every": 100, "data": {"transitions": 5000}, "scripts": {"ofql": pair}}
    text = gpu_check.markdown(report)
    assert "**FAIL**" in text and "| ofql.py: eager vs CUDA graph | **FAIL** | graph run: exit 2: CUDA GRAPH" in text
    assert "| ofql | 300.0 | - | - | - | - | - |" in text


def test_a_graph_run_that_trains_eagerly_fails_on_cuda(tmp_path):
    """train_pair as on a CUDA machine, run here: both runs train eagerly on the CPU, which the check must call a
    failure (a silent fallback), not a pass; the comparison still runs."""
    data = gpu_check.record_hopper(str(tmp_path / "hopper.hdf5"), 300, seed=0)
    args = gpu_check.Args(seed=0)
    pair = gpu_check.train_pair("ofql", data["path"], (4, 2), str(tmp_path), args, cuda=True)
    assert not pair["ok"] and pair["comparison"]["windows"] == 2 and pair["comparison"]["problems"] == []
    assert pair["problems"] == [
        "eager run: trained on cpu, expected cuda",
        "graph run: trained with training_step=eager, expected cuda_graph",
    ]


def test_speed_on_cuda_gets_the_checks_flags_and_the_users_win(tmp_path, monkeypatch):
    """On CUDA speed.py runs with CUDA_SPEED_FLAGS, then --speed-flags, so that a repeated flag takes the user's
    value (speed.py's parser keeps the last)."""
    import speed

    launched = []

    def start(cmd, cwd, log):
        launched.append(cmd)
        return None, 0.0

    monkeypatch.setattr(gpu_check, "start", start)
    monkeypatch.setattr(gpu_check, "finish", lambda proc, timeout: 1)
    monkeypatch.setattr(gpu_check, "error_line", lambda log, rc, timeout: "failed")
    gpu_check.run_speed(gpu_check.Args(speed_flags="--rounds 9"), str(tmp_path), cuda=True)
    flags = launched[0][launched[0].index("--out-dir") + 2 :]
    assert " ".join(flags) == gpu_check.CUDA_SPEED_FLAGS + " --rounds 9"
    parsed = speed.tyro.cli(speed.Args, args=flags)
    assert (parsed.device, parsed.updates, parsed.decisions, parsed.rounds) == ("cuda", 400, 20, 9)
