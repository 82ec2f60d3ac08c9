"""OGBench's reporting rule in benchmark/compare.py: a single-task run's reported figure is the mean success rate over
its last three evaluations (FQL's Appendix B, following OGBench), not its final or its best evaluation. Made-up
summary.json files, where the final, the best and the mean of any other number of last evaluations all differ."""

import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import bookkeeping  # noqa: E402
import compare  # noqa: E402

CUBE = "cube-double-play-singletask-task2-v0"


def evaluations(successes, step=100_000):
    return [{"step": step * (i + 1), "success": s, "score": 100.0 * s, "return": s} for i, s in enumerate(successes)]


def write_summary(out_dir, env_id, algorithm, seed, evals, **keys):
    run_dir = os.path.join(out_dir, "runs", f"{env_id}__{algorithm}__{seed}__123")
    os.makedirs(run_dir, exist_ok=True)
    summary = {"env_id": env_id, "seed": seed, "evaluations": evals, "train_steps_per_sec": 10.0, **keys}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f)


def test_the_rule_is_the_mean_success_of_the_last_three_evaluations_by_step():
    e = evaluations([0.1, 0.9, 0.8, 0.2, 0.2])
    assert bookkeeping.reported_success(e) == pytest.approx(0.4)  # final 0.2, best 0.9, last two 0.2, last four 0.525
    assert bookkeeping.reported_success(e[::-1]) == pytest.approx(0.4)  # by step, not by position
    assert bookkeeping.reported_success(e[:2]) == pytest.approx(0.5)  # fewer than three: the mean of those there are
    assert bookkeeping.reported_success([]) is None
    assert bookkeeping.reported_success([{"step": 1, "score": 50.0}, *e]) == pytest.approx(0.4)  # only the last three
    assert bookkeeping.reported_success([*e[:4], {"step": 10**6, "score": 5.0}]) is None  # no success: not OGBench


def test_the_ogbench_table_reports_the_mean_of_the_last_three_evaluations(tmp_path):
    """Seed 0's summary has reported_success (as the scripts write it), seed 1's has not (computed by compare.py from
    its evaluations); the D4RL row has no reported figure."""
    out = str(tmp_path)
    seed0, seed1 = [0.1, 0.9, 0.8, 0.2, 0.2], [0.0, 0.3, 0.6, 0.9, 0.6]  # reported 0.4 and 0.7
    write_summary(out, CUBE, "fql", 0, evaluations(seed0), reported_success=0.4)
    write_summary(out, CUBE, "fql", 1, evaluations(seed1))
    write_summary(out, "hopper-medium-v2", "fql", 0, [{"step": 100, "score": 30.0}, {"step": 200, "score": 40.0}])
    args = compare.Args(
        datasets=[CUBE, "hopper-medium-v2"], data_dir="", algorithms=["fql"], seeds=[0, 1], out_dir=out, plot_only=True
    )
    compare.write_report(args)
    table = open(os.path.join(out, "results.md")).read()
    # last 20, 60 -> 40 ± 20; best 90, 90; reported 40, 70 -> 55 ± 15 (the final would give 40, the best 90)
    assert f"| {CUBE} | - | fql | 2 | 40.0 ± 20.0 | 90.0 ± 0.0 | 5 / 60 / 70 / 55 / 40 | 55.0 ± 15.0 |" in table
    assert "| hopper-medium-v2 | - | fql | 1 | 40.0 | 40.0 | 30 / 40 | - |" in table
    assert "| reported |" in table.splitlines()[2]
    results = json.load(open(os.path.join(out, "results.json")))
    assert results[0]["reported_scores"] == pytest.approx([40.0, 70.0]) and results[1]["reported_scores"] is None
    # the summary's own reported_success is the one shown where there is one
    write_summary(out, CUBE, "fql", 0, evaluations(seed0), reported_success=0.5)
    compare.write_report(args)
    assert "| 5 / 60 / 70 / 55 / 40 | 60.0 ± 10.0 |" in open(os.path.join(out, "results.md")).read()
