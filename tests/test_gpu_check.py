"""benchmark/gpu_check.py: its CPU mode end to end (as CI runs it), and the logic that decides pass or fail on a
GPU machine: the eager/graph comparison, pytest's counts, the runs' error lines, the speed targets."""

import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

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
    # the tests: collected, the CPU-only compile test deselected (a CUDA call runs the rest)
    assert "--deselect=tests/test_training_step.py::test_the_compiled_iteration" in report["tests"]["command"]
    for script in gpu_check.SCRIPTS:
        pair = report["parity"]["scripts"][script]
        assert pair["ok"] and pair["comparison"]["windows"] == 2 and pair["comparison"]["max_rel"] == 0
        assert pair["eager"]["training_step"] == pair["graph"]["training_step"] == "eager"
        # then the online phase: 30 steps in windows of 5, both runs the same (two eager runs on the CPU), episodes
        online = pair["online"]
        assert online["problems"] == [] and online["windows"] == 6 and online["max_rel"] == 0
        assert online["episodes"]["eager"] == online["episodes"]["graph"] == pair["eager"]["online_episodes"]
        assert pair["eager"]["online_steps_per_sec"] > 0 and pair["graph"]["online_steps_per_sec"] > 0
        for run in (pair["eager"], pair["graph"]):
            config = json.loads(open(os.path.join(run["run_dir"], "config.json")).read())
            assert (config["total_steps"], config["online_steps"]) == (10, 30)
    assert report["speed"]["figures"]["ofql"]["eager"]["updates_per_sec"] > 0
    sweep = report["sweep"]
    assert sweep["ok"] and [c["windows"] for c in sweep["parity"]["members"]] == [2, 2]
    assert all(c["max_rel"] == 0 for c in sweep["parity"]["members"])
    assert [(o["windows"], o["max_rel"], o["problems"]) for o in sweep["parity"]["online"]] == [(6, 0, [])] * 2
    # the barely trained policies' hoppers fall within the 30 online steps: episodes on both paths
    episodes = gpu_check.online_episodes(report)
    assert episodes["ok"] and episodes["pairs"] == 5 and episodes["eager"] == episodes["graph"] > 0
    assert sweep["figures"]["algorithms"]["ofql"]["eager"]["members"]["2"]["member_updates_per_sec"] > 0
    # both tools ran through the eager-light runner (1 eager update a block in the CPU mode) and say so
    assert report["speed"]["eager_updates"] == 1 and sweep["figures"]["eager_updates"] == 1
    assert "Eager-light (gpu_check)" in (tmp_path / "speed" / "cpu.md").read_text()
    # the budget: every step timed, the estimates those of a CUDA call with the default flags
    rows = report["budget"]["rows"]
    assert [r["step"] for r in rows] == list(gpu_check.STEP_BUDGET_S)
    assert all(r["actual_s"] is not None and r["actual_s"] >= 0 for r in rows)
    assert "of its 300 s budget on one H200 (estimate)" in lines[0]
    summary = (tmp_path / "summary.md").read_text()
    assert "**PASS**" in summary and "| ofql.py: eager vs CUDA graph | pass |" in summary
    assert "| sweep.py: eager vs CUDA graph, sweep_speed.py | pass | 2 members" in summary
    assert "| online episodes that ended (steps 3 and 5) | pass |" in summary
    assert "online (reported only): max relative difference 0" in summary
    assert "| total | 300 |" in summary


def estimates(**flags) -> dict:
    return {r["step"]: r["estimate_s"] for r in gpu_check.budget(gpu_check.Args(**flags))}


def test_the_default_call_fits_five_minutes_at_the_recorded_h200_rates():
    """Each step's estimate within its allowance, the allowances within the 300 s of one call: a lent GPU's 15
    minutes, its start-up included, keep time for a learning run."""
    rows = gpu_check.budget(gpu_check.Args())
    assert [r["step"] for r in rows] == list(gpu_check.STEP_BUDGET_S)  # every step is in the budget
    assert all(r["estimate_s"] <= r["budget_s"] for r in rows), [(r["step"], r["estimate_s"]) for r in rows]
    assert sum(gpu_check.STEP_BUDGET_S.values()) <= gpu_check.BUDGET_S == 300
    assert sum(r["estimate_s"] for r in rows) <= 270  # and some margin for the assumed parts


def test_the_online_phase_is_in_the_budget():
    """Each parity and sweep pair's estimate has its online phase: per run its assumed start and per online step the
    update at the pair's rate plus the assumed overhead; without one (--online-steps 0), the runs as before."""
    rates = gpu_check.H200_RATES
    with_online, without = estimates(), estimates(online_steps=0)
    n, overhead = gpu_check.Args().online_steps, rates["online_step_overhead_s"]
    per_sec = {f"parity {s}": rates["train_steps_per_sec"][s] for s in gpu_check.SCRIPTS}
    per_sec["sweep parity"] = rates["sweep_steps_per_sec"]
    for step, rate in per_sec.items():
        online = sum(rates["online_start_s"] + n * (1 / rate[p] + overhead) for p in gpu_check.PATHS)
        assert with_online[step] - without[step] == pytest.approx(online), step
    assert n > 0 and overhead >= 3e-3  # the slowest acting policy, DQL's eager chain: 3.0 ms (speed.py's rate)
    assert {k: v for k, v in with_online.items() if k not in per_sec} == {
        k: v for k, v in without.items() if k not in per_sec
    }


@pytest.mark.parametrize(
    "flags, step",
    [
        ({"train_steps": 2000}, "parity dql"),  # the first call's parity runs
        ({"online_steps": 1000}, "parity dql"),  # a hopper episode's time limit
        ({"online_steps": 1000}, "sweep parity"),
        ({"speed_eager_updates": 400}, "speed"),  # speed.py without eager-light
        ({"speed_flags": "--rounds 5"}, "speed"),
        ({"sweep_steps": 2000}, "sweep parity"),
        ({"sweep_eager_updates": 50}, "sweep speed"),
        ({"transitions": 100_000}, "data"),
    ],
)
def test_a_mis_sized_step_is_over_its_budget(flags, step):
    assert estimates(**flags)[step] > gpu_check.STEP_BUDGET_S[step] >= estimates()[step]


def test_the_budget_reproduces_the_first_full_call():
    """The estimate for the sizes of the first call on one H200 (2026-11-30: 2000 parity steps, speed.py with 400
    updates on both paths and 5 rounds, no sweep) against its recorded seconds per step: a model that left out the
    runs' start, a path, the warm-up, the decisions or the rounds would miss them (it ran no online phase)."""
    e = estimates(train_steps=2000, online_steps=0, speed_eager_updates=400, speed_flags="--rounds 5", sweep=False)
    recorded = {"parity ofql": 41.79 + 14.31, "parity dql": 57.38 + 15.16, "parity fql": 46.0 + 16.97, "speed": 148.28}
    assert all(abs(e[step] - seconds) < 0.02 * seconds for step, seconds in recorded.items()), e
    assert "sweep parity" not in e and "sweep speed" not in e


def test_sweep_speed_iterations_interpolate_between_the_recorded_sizes():
    rates = {"plain": 100.0, "1": 50.0, "16": 400.0}  # 10 ms a lone update; 20 ms at N = 1, 40 ms at N = 16
    assert gpu_check.iteration_s(rates, "plain") == pytest.approx(0.01)
    assert gpu_check.iteration_s(rates, 1) == pytest.approx(0.02)
    assert gpu_check.iteration_s(rates, 4) == pytest.approx(0.024)
    assert gpu_check.iteration_s(rates, 31) == pytest.approx(0.06)  # beyond: the line through the last two


def test_a_steps_subprocesses_stop_at_four_times_its_estimate_on_cuda():
    args = gpu_check.Args()
    assert gpu_check.step_timeout(args, {"estimate_s": 49.0}, cuda=True) == 196
    assert gpu_check.step_timeout(args, {"estimate_s": 10.0}, cuda=True) == 120
    assert gpu_check.step_timeout(args, {"estimate_s": 400.0}, cuda=True) == 600
    assert gpu_check.step_timeout(args, {"estimate_s": 49.0}, cuda=False) == 600


def test_eager_light_times_the_eager_path_over_fewer_updates(tmp_path, monkeypatch):
    """eager_light runs a tool's main with speed.time_updates timing an iteration served by a script's cuda_graph
    over --updates and any other over the eager updates (here a fake tool and a fake cuda_graph, without CUDA)."""
    import types
    from dataclasses import dataclass

    import ofql
    import speed

    for module in speed.MODULES.values():  # restored after the test: eager_light rebinds them
        monkeypatch.setattr(module, "cuda_graph", lambda fn, warmup, what: lambda: fn())
    monkeypatch.setattr(speed, "time_updates", speed.time_updates)
    calls = {"eager": 0, "graph": 0}

    @dataclass
    class Args:
        updates: int = 7
        out_dir: str = str(tmp_path)

    def main(args):
        timing = speed.Args(warmup=0, updates=args.updates)
        eager = lambda: calls.__setitem__("eager", calls["eager"] + 1)
        graph = ofql.cuda_graph(lambda: calls.__setitem__("graph", calls["graph"] + 1), warmup=3, what="x")
        cpu = torch.device("cpu")
        result = {"device": "x86 CPU", "seconds": [speed.time_updates(it, timing, cpu) for it in (eager, graph)]}
        tool.write(result, args)
        return result

    def write(result, args):
        (tmp_path / "cpu.md").write_text("first line\nsecond line\n")

    tool = types.ModuleType("fake_tool")
    tool.Args, tool.main, tool.write = Args, main, write
    monkeypatch.setitem(sys.modules, "fake_tool", tool)
    result = gpu_check.eager_light("fake_tool", 2, ["--updates", "9"])
    assert calls == {"eager": 2, "graph": 9} and result["eager_updates"] == 2
    assert (tmp_path / "cpu.md").read_text().splitlines()[1] == (
        "Eager-light (gpu_check): the eager path timed over 2 iterations a block, the CUDA graph path over 9."
    )


def test_a_stopped_call_keeps_the_steps_it_did(tmp_path, monkeypatch):
    """Results are written after every step: a call stopped in speed.py leaves its budget with the steps done and a
    summary that says INCOMPLETE."""
    monkeypatch.setattr(
        gpu_check, "record_hopper", lambda path, n, seed: {"path": path, "transitions": n, "episodes": 1}
    )
    pair = {
        "ok": True,
        "problems": [],
        "comparison": compare(log((100, 1.0)), log((100, 1.0))),
        "eager": {"steps_per_sec": 60.0},
        "graph": {"steps_per_sec": 500.0},
    }
    monkeypatch.setattr(gpu_check, "train_pair", lambda *a, **k: pair)

    def stopped(*args, **kwargs):
        raise RuntimeError("killed")  # as a call stopped in speed.py

    monkeypatch.setattr(gpu_check, "run_speed", stopped)
    with pytest.raises(RuntimeError, match="killed"):
        gpu_check.main(gpu_check.Args(out_dir=str(tmp_path), tests=False, scripts=["ofql"], sweep=False))
    report = json.loads((tmp_path / "results.json").read_text())
    done = {r["step"]: r["actual_s"] is not None for r in report["budget"]["rows"]}
    assert done == {"start": True, "data": True, "parity ofql": True, "speed": False}
    assert report["ok"] is None and report["parity"]["scripts"]["ofql"]["ok"]
    summary = (tmp_path / "summary.md").read_text()
    assert "**INCOMPLETE** after" in summary and "3 of 4 steps done" in summary
    assert "| ofql.py: eager vs CUDA graph | pass |" in summary


def test_no_step_starts_after_the_deadline_and_a_running_subprocess_stops_there(tmp_path, monkeypatch):
    """--deadline: the steps not started by then are failures named in the results (here speed: no step starts in the
    last 10 s, and the parity step ends 9.5 s before the deadline); finish() stops a subprocess at the deadline whatever
    its own timeout."""
    monkeypatch.setattr(gpu_check, "process_start", time.time)
    monkeypatch.setattr(gpu_check, "DEADLINE", math.inf)  # main() sets it: restored to no deadline after the test
    monkeypatch.setattr(
        gpu_check, "record_hopper", lambda path, n, seed: {"path": path, "transitions": n, "episodes": 1}
    )
    pair = {"ok": True, "problems": [], "comparison": compare(log((100, 1.0)), log((100, 1.0)))}
    pair |= {"eager": {"steps_per_sec": 60.0}, "graph": {"steps_per_sec": 500.0}}
    monkeypatch.setattr(gpu_check, "train_pair", lambda *a, **k: time.sleep(2.5) or pair)
    monkeypatch.setattr(gpu_check, "run_speed", lambda *a, **k: pytest.fail("speed.py started after the deadline"))
    args = gpu_check.Args(out_dir=str(tmp_path), tests=False, scripts=["ofql"], sweep=False, deadline=12)
    assert gpu_check.main(args) == 1
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["not_run"] == ["speed"] and report["failures"] == ["--deadline: not run: speed"]
    monkeypatch.setattr(gpu_check, "DEADLINE", time.time() + 0.5)
    t0 = time.time()
    assert gpu_check.finish(subprocess.Popen(["sleep", "30"]), timeout=60) is None and time.time() - t0 < 10


def test_the_sweep_target_is_12000_member_updates_per_second(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "start", lambda cmd, cwd, log: (None, 0.0))
    monkeypatch.setattr(gpu_check, "finish", lambda proc, timeout: 0)
    (tmp_path / "sweep_speed").mkdir()
    sweep = {"parity": {"ok": True, "problems": [], "members": []}}
    for rate, met in ((11_900.0, False), (12_000.0, True)):
        members = {"16": {"member_updates_per_sec": rate}}
        figures = {"algorithms": {"ofql": {"cuda_graph": {"members": members}}}}
        (tmp_path / "sweep_speed" / "cuda.json").write_text(json.dumps(figures))
        result = gpu_check.run_sweep_speed(gpu_check.Args(), str(tmp_path), True, sweep)
        assert result["target"]["met"] is met and result["target"]["bound"] == ">= 12000" and result["ok"]
        result = gpu_check.run_sweep_speed(gpu_check.Args(fail_on_targets=True), str(tmp_path), True, sweep)
        assert result["ok"] is met
    # a graph path sweep_speed.py could not run ({"failed": ...}): the target unmeasured and not met, no KeyError
    failed = {"algorithms": {"ofql": {"cuda_graph": {"failed": "RuntimeError: capture failed"}}}}
    (tmp_path / "sweep_speed" / "cuda.json").write_text(json.dumps(failed))
    result = gpu_check.run_sweep_speed(gpu_check.Args(), str(tmp_path), True, sweep)
    assert result["target"]["value"] is None and result["target"]["met"] is False


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


def run_log(offline, online, episodes):
    """A metrics.jsonl of 200 offline steps, then online ones: the windows (step, value) and the online episodes
    that ended at the given steps."""
    ended = [{"step": s, "online/episode_return": 12.0, "online/env_steps": s - 200} for s in episodes]
    return log(*offline, *online) + ended


def compare_runs(eager, graph, online_steps=100):
    e, g = (gpu_check.phases(records, 200) for records in (eager, graph))
    return gpu_check.compare_phases(e, g, online_steps, gpu_check.Args(tight_steps=200))


def test_online_windows_are_reported_not_failed_on():
    """The online windows may differ by any amount (the paths' envs diverge): reported, no problem; the offline windows
    decide as before; an episode's record at a window's step is no window."""
    eager = run_log([(100, 1.0), (200, 2.0)], [(300, 3.0)], [250, 300])
    graph = run_log([(100, 1.0), (200, 2.0)], [(300, 6.0)], [300])
    offline, online = compare_runs(eager, graph)
    assert offline["problems"] == [] and offline["windows"] == 2 and offline["max_rel"] == 0
    assert online["problems"] == [] and online["windows"] == 1 and online["max_rel"] == pytest.approx(3 / 3.1)
    assert online["episodes"] == {"eager": 2, "graph": 1}
    assert compare_runs(eager, graph, online_steps=0)[1] is None
    drifted = run_log([(100, 1.0), (200, 2.1)], [(300, 3.0)], [250])  # an offline window still fails
    assert len(compare_runs(eager, drifted)[0]["problems"]) == 2


def test_an_online_phase_without_windows_or_with_a_non_finite_value_is_a_problem():
    eager = run_log([(100, 1.0), (200, 2.0)], [(300, 3.0)], [250])
    no_online = run_log([(100, 1.0), (200, 2.0)], [], [])
    assert compare_runs(eager, no_online)[1]["problems"] == [
        "step 300 logged only by the eager run",
        "the graph run logged no online window",
    ]
    assert compare_runs(no_online, no_online)[1]["problems"] == [
        "the eager run logged no online window",
        "the graph run logged no online window",
    ]
    nan = run_log([(100, 1.0), (200, 2.0)], [(300, float("nan"))], [250])
    assert [p.split(" is ")[1] for p in compare_runs(eager, nan)[1]["problems"]] == [
        "not finite (eager 3.0, graph nan)"
    ] * 2
    inf = eager[:-1] + [{**eager[-1], "online/episode_return": float("inf")}]
    assert compare_runs(eager, inf)[1]["problems"] == [
        "graph run: the online episode ending at step 250 has a non-finite value"
    ]


def test_a_path_on_which_no_online_episode_ended_fails_the_check():
    """Online episodes are counted over every pair of runs (step 3's, step 5's members): one pair without an episode
    passes (a policy that balances its hopper for longer than the online phase), a path without any fails."""

    def online(eager, graph):
        return {"max_rel": 0.5, "episodes": {"eager": eager, "graph": graph}}

    def pair(eager, graph):
        return {
            "ok": True,
            "problems": [],
            "comparison": compare(log((100, 1.0)), log((100, 1.0))),
            "online": online(eager, graph),
        }

    sweep = {"ok": True, "error": None, "parity": {"members": [], "online": [online(0, 1)]}}
    report = {"parity": {"scripts": {"ofql": pair(0, 0), "dql": pair(1, 2)}}, "sweep": sweep}
    assert gpu_check.online_episodes(report) == {"pairs": 3, "eager": 1, "graph": 3, "ok": True}
    assert gpu_check.failures(report) == []
    report["parity"]["scripts"]["dql"] = pair(0, 2)
    assert gpu_check.failures(report) == [
        "online: no online episode ended in the eager runs (their episode ends were not exercised): rerun with a "
        "larger --online-steps"
    ]
    assert "| online episodes that ended (steps 3 and 5) | **FAIL** | 0 eager, 3 graph, over 3 pairs" in "\n".join(
        gpu_check.check_rows(report)
    )
    assert gpu_check.online_episodes({"parity": {"scripts": {"ofql": {"online": None}}}}) is None


def test_the_online_steps_reach_both_runs_of_each_pair(tmp_path, monkeypatch):
    """--online-steps goes to the eager and the graph run of step 3 and of step 5 (the CPU mode: its own sizes), the
    evaluation at the end of each phase."""
    launched = []
    monkeypatch.setattr(gpu_check, "start", lambda cmd, cwd, log: launched.append(cmd) or (None, 0.0))
    monkeypatch.setattr(gpu_check, "finish", lambda proc, timeout: 1)
    monkeypatch.setattr(gpu_check, "error_line", lambda log, rc, timeout: "failed")
    args = gpu_check.Args(online_steps=70)
    gpu_check.train_pair("fql", "x.hdf5", gpu_check.sizes(args, args.train_steps, True), str(tmp_path), args, True)
    gpu_check.run_sweep_parity(args, str(tmp_path), cuda=True)
    value = lambda cmd, flag: cmd[cmd.index(flag) + 1]
    assert [(value(c, "--online-steps"), "--cuda-graph" in c) for c in launched] == [("70", False), ("70", True)] * 2
    steps = [(value(c, "--total-steps"), value(c, "--eval-every")) for c in launched]
    assert steps == [("500", "570")] * 2 + [("400", "470")] * 2
    assert gpu_check.sizes(args, 500, cuda=False) == (10, 5, 30)
    assert gpu_check.sizes(gpu_check.Args(online_steps=0), 500, cuda=False)[2] == 0


def test_a_sweep_member_without_its_files_is_a_problem_not_a_traceback(tmp_path, monkeypatch):
    """Both sweeps exit 0 and print two summaries, but member 1's run folder holds nothing: step 5 fails in its row
    (naming the member), the check goes on."""
    run = tmp_path / "runs" / "m0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "critic_loss": 1.0, "steps_per_sec": 9.0}) + "\n\n")
    (run / "config.json").write_text(json.dumps({"training_step": "eager", "device": "cpu"}))
    summaries = "summary: runs/m0/summary.json\nsummary: runs/m1/summary.json\n"
    monkeypatch.setattr(gpu_check, "start", lambda cmd, cwd, log: (open(log, "w").write(summaries), (None, 0.0))[1])
    monkeypatch.setattr(gpu_check, "finish", lambda proc, timeout: 0)
    args = gpu_check.Args()
    pair = gpu_check.sweep_pair("x.hdf5", 10, 5, str(tmp_path), args, cuda=False)
    assert not pair["ok"] and pair["members"] == []
    assert [p.split(": ")[0] for p in pair["problems"]] == ["eager sweep, member 1", "graph sweep, member 1"]
    assert all("unreadable run" in p and "metrics.jsonl" in p for p in pair["problems"])


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
        ("28 passed, 2 deselected in 50.1s\n", {"passed": 28, "skipped": 0, "failed": 0, "errors": 0}),
    ],
)
def test_pytest_counts(output, counts):
    assert {k: v for k, v in gpu_check.pytest_counts(output).items() if k != "collected"} == counts


def test_collected_counts_leave_the_deselected_tests_out():
    assert gpu_check.pytest_counts("30/32 tests collected (2 deselected) in 1.96s\n")["collected"] == 30
    assert gpu_check.pytest_counts("23 tests collected in 1.1s\n")["collected"] == 23


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
    assert "| ofql | 300.0 | - | - | - | - | - | - | - | - | - |" in text


def test_a_graph_run_that_trains_eagerly_fails_on_cuda(tmp_path):
    """train_pair as on a CUDA machine, run here: both runs train eagerly on the CPU, which the check must call a
    failure (a silent fallback), not a pass; the comparison still runs."""
    data = gpu_check.record_hopper(str(tmp_path / "hopper.hdf5"), 300, seed=0)
    args = gpu_check.Args(seed=0)
    pair = gpu_check.train_pair("ofql", data["path"], (4, 2, 0), str(tmp_path), args, cuda=True)
    assert not pair["ok"] and pair["comparison"]["windows"] == 2 and pair["comparison"]["problems"] == []
    assert pair["online"] is None  # --online-steps 0
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


def read_offline_wheels():
    """benchmark/offline_wheels.txt: its pins, and its 'present:' and 'left out:' lines."""
    pins, lists = {}, {"present": set(), "left out": set()}
    with open(os.path.join(ROOT, "benchmark", "offline_wheels.txt")) as f:
        for line in f:
            line = line.strip()
            for key in lists:
                if line.startswith(f"# {key}:"):
                    lists[key] = {canonical(name) for name in line.split(":", 1)[1].split()}
            if line and not line.startswith("#"):
                name, version = line.split("#")[0].strip().split("==")
                pins[canonical(name)] = version
    return pins, lists["present"], lists["left out"]


def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_offline_wheels_hold_every_requirement_of_the_gpu_checks_packages():
    """--no-deps installs only the listed wheels: each one's requirements (Python 3.12 on Linux, no extras) must be
    listed, or be in the machine's own Python ('present'), or be left out on purpose; and the pins are
    requirements.txt's where it names the package."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins, present, left_out = read_offline_wheels()
    assert {"gymnasium", "mujoco", "tyro"} <= set(pins)
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "extra": ""}
    for name in pins:
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                assert canonical(requirement.name) in set(pins) | present | left_out, (name, text)
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = dict(line.split("#")[0].strip().split("==") for line in f if "==" in line.split("#")[0])
    pinned = {canonical(re.sub(r"\[.*\]", "", name)): version for name, version in pinned.items()}
    for name, version in pins.items():
        assert pinned.get(name, version) == version, f"{name}: {version} here, {pinned[name]} in requirements.txt"


def test_read_run_rates_each_phase_over_its_own_steps(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    windows = [(50, 10.0), (100, 10.0), (150, 5.0), (200, 10.0)]  # offline to 100; online 150 (10 s), 200 (5 s)
    run.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "critic_loss": 1.0, "steps_per_sec": r}) + "\n" for s, r in windows)
    )
    run.joinpath("summary.json").write_text(json.dumps({"final_score": 1.0}))
    run.joinpath("config.json").write_text(json.dumps({"device": "cpu", "training_step": "eager"}))
    (tmp_path / "x.log").write_text("summary: runs/r/summary.json\n")
    r = gpu_check.read_run(str(tmp_path / "x.log"), str(tmp_path), 100)
    assert r["steps_per_sec"] == pytest.approx(10.0) and r["online_steps_per_sec"] == pytest.approx(100 / 15)


def test_speed_figures_take_the_evaluations_candidates():
    raw = {
        "paths": ["eager"],
        "algorithms": {
            "ofql": {"updates_per_sec": {"eager": 3.0}, "decisions_per_sec": {"eager": {"1": 100.0, "50": 5.0}}}
        },
    }
    assert gpu_check.speed_figures(raw)["ofql"]["eager"] == {
        "updates_per_sec": 3.0,
        "decisions_1": 100.0,
        "decisions_k": 5.0,
        "k": 50,
    }


def test_missed_speed_targets_fail_the_check_only_with_fail_on_targets(tmp_path, monkeypatch):
    raw = {
        "device": "H100",
        "paths": ["cuda_graph"],
        "ratios": {},
        "algorithms": {
            "ofql": {"updates_per_sec": {"cuda_graph": 100.0}, "decisions_per_sec": {"cuda_graph": {"1": 10.0}}}
        },
    }

    def start(cmd, cwd, log):
        os.makedirs(tmp_path / "speed", exist_ok=True)
        (tmp_path / "speed" / "cuda.json").write_text(json.dumps(raw))
        return None, 0.0

    monkeypatch.setattr(gpu_check, "start", start)
    monkeypatch.setattr(gpu_check, "finish", lambda proc, timeout: 0)
    assert gpu_check.run_speed(gpu_check.Args(), str(tmp_path), cuda=True)["ok"]
    result = gpu_check.run_speed(gpu_check.Args(fail_on_targets=True), str(tmp_path), cuda=True)
    assert not result["ok"] and result["error"].startswith("missed targets: OFQL updates/s, CUDA graph")
    assert gpu_check.failures({"speed": result}) == [f"speed.py: {result['error']}"]
    sweep = {"ok": False, "error": "missed target: x", "parity": {"ok": True, "problems": [], "members": []}}
    assert gpu_check.failures({"sweep": sweep}) == ["sweep: missed target: x"]
