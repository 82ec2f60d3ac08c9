"""tools/compare_runs.py: the record-by-record comparison that checks a refactoring keeps every logged number."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import compare_runs  # noqa: E402

DONE = subprocess.CompletedProcess([], 0)


def test_only_identical_numbers_pass():
    base = [{"step": 101, "critic_loss": 0.25, "q_data": 1.0}, {"step": 202, "critic_loss": 0.125, "eval/score": 3.5}]
    assert compare_runs.differences(base, [dict(r) for r in base]) == []
    changed = [dict(r) for r in base]
    changed[1]["eval/score"] = 3.5 + 2**-40  # one bit in the last places of a float64
    assert compare_runs.differences(base, changed) == ["step 202 eval/score: 3.5 (base) vs 3.5000000000009095 (this)"]
    missing = [base[0], {"step": 202, "critic_loss": 0.125}]
    assert compare_runs.differences(base, missing) == ["step 202 eval/score: 3.5 (base) vs None (this)"]
    assert compare_runs.differences(base, base[:1])[0].startswith("logged steps differ")
    more = [base[0] | {"q_policy": 2.0}]  # a key only this checkout logs
    assert compare_runs.differences(base[:1], more) == ["step 101 q_policy: None (base) vs 2.0 (this)"]
    logged = [{"step": 1, "zero": 0.0, "count": 1, "nan": float("nan")}]  # what each logged, bit for bit
    other = [{"step": 1, "zero": -0.0, "count": 1.0, "nan": float("nan")}]
    assert compare_runs.differences(logged, other) == [
        "step 1 count: 1 (base) vs 1.0 (this)",
        "step 1 zero: 0.0 (base) vs -0.0 (this)",
    ]


def test_the_largest_relative_difference_and_where():
    base = [{"step": 101, "critic_loss": 0.25, "q_data": 4.0, "done": True}, {"step": 202, "critic_loss": 0.5}]
    this = [{"step": 101, "critic_loss": 0.25, "q_data": 4.2, "done": False}, {"step": 202, "critic_loss": 0.51}]
    rel, where = compare_runs.largest_difference(base, this)
    assert rel == pytest.approx(0.05) and where == "step 101 q_data"  # not step 202's 0.02, not the boolean
    assert compare_runs.largest_difference(base, base) == (0.0, "")


def test_base_flags_go_to_the_base_runs_only_and_cuda_leaves_the_gpu_visible(tmp_path, monkeypatch):
    """--base . --base-flags F: what F changes (the base's command gets F, this checkout's does not); --cuda: the runs
    are not sent to the CPU (no --no-cuda, CUDA_VISIBLE_DEVICES left as it is)."""
    calls = []
    monkeypatch.setattr(compare_runs, "read_records", lambda out: [[{"step": 1, "critic_loss": float(len(calls))}]])
    monkeypatch.setattr(compare_runs.subprocess, "run", lambda cmd, env=None, **kw: calls.append((cmd, env)) or DONE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = compare_runs.Args(ROOT, "hopper.hdf5", scripts=["ofql"], sweeps=[], flags="--total-steps 5")
    args = dataclasses.replace(args, out_dir=str(tmp_path))
    assert compare_runs.main(dataclasses.replace(args, base_flags="--matmul-precision high", cuda=True)) == 1
    runs = [(cmd, env) for cmd, env in calls if cmd[0] == sys.executable]
    (base_cmd, base_env), (this_cmd, this_env) = runs
    assert base_cmd[-2:] == ["--matmul-precision", "high"] and "--matmul-precision" not in this_cmd
    assert "--no-cuda" not in base_cmd + this_cmd and "CUDA_VISIBLE_DEVICES" not in this_env.keys() - os.environ.keys()
    calls.clear()
    compare_runs.main(args)  # the default: on the CPU, the same flags on both sides
    (base_cmd, base_env), (this_cmd, this_env) = [(c, e) for c, e in calls if c[0] == sys.executable]
    assert "--no-cuda" in base_cmd and base_cmd[2:] == this_cmd[2:] and this_env["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("records", [[], [[]]])
def test_runs_that_logged_nothing_are_not_called_identical(tmp_path, monkeypatch, capsys, records):
    """No run folder, or a run without records, on both sides: a failure that says nothing was compared."""
    monkeypatch.setattr(compare_runs, "read_records", lambda out: records)
    monkeypatch.setattr(compare_runs.subprocess, "run", lambda cmd, env=None, **kw: DONE)
    args = compare_runs.Args(ROOT, "hopper.hdf5", scripts=["ofql"], sweeps=[], flags="--total-steps 5")
    args = dataclasses.replace(args, out_dir=str(tmp_path))
    assert compare_runs.main(args) == 1
    assert "nothing compared" in capsys.readouterr().out


def test_nothing_to_compare_and_a_failing_run_are_one_line(tmp_path, monkeypatch):
    """Empty --scripts and --sweeps: refused (not a silent exit 0); --cuda where torch finds no GPU: refused (not runs
    on the CPU called identical); a base checkout whose script cannot run: one line with its exit code, its log's last
    line and the log's path (not a CalledProcessError traceback)."""
    nowhere = str(tmp_path / "nowhere")
    args = compare_runs.Args(nowhere, "hopper.hdf5", scripts=["ofql"], sweeps=[], out_dir=str(tmp_path))
    with pytest.raises(SystemExit, match="nothing to compare"):
        compare_runs.main(dataclasses.replace(args, scripts=[]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--cuda: torch finds no CUDA device here"):
        compare_runs.main(dataclasses.replace(args, cuda=True))
    with pytest.raises(
        SystemExit, match=r"ofql in .*nowhere exited 2: .*can't open file.*\(the whole log: .*log.txt\)"
    ):
        compare_runs.main(args)


def test_a_run_only_this_checkout_writes_is_a_difference(tmp_path, monkeypatch, capsys):
    one, two = (
        [[{"step": 1, "critic_loss": 0.5}]],
        [[{"step": 1, "critic_loss": 0.5}], [{"step": 1, "critic_loss": 0.7}]],
    )
    sides = iter([one, two])  # the base's runs, then this checkout's
    monkeypatch.setattr(compare_runs, "run", lambda checkout, script, args, out, extra="": next(sides))
    monkeypatch.setattr(compare_runs.subprocess, "run", lambda cmd, **kw: DONE)
    args = compare_runs.Args(ROOT, "hopper.hdf5", scripts=["ofql"], sweeps=[], out_dir=str(tmp_path))
    assert compare_runs.main(args) == 1  # no largest relative difference where no number differs
    assert capsys.readouterr().out.startswith("ofql: 1 difference(s)\n  1 runs (base) vs 2 (this)")


def test_the_bases_runs_are_run_again_unless_reuse_base(tmp_path, monkeypatch):
    """Runs of an earlier comparison in the output folder are read back only with --reuse-base."""
    os.makedirs(tmp_path / "base" / "ofql" / "runs")
    ran = []
    monkeypatch.setattr(
        compare_runs, "run", lambda checkout, script, args, out, extra="": ran.append(checkout) or [[{"step": 1}]]
    )
    monkeypatch.setattr(compare_runs, "read_records", lambda out: pytest.fail("the base's old runs were reused"))
    monkeypatch.setattr(compare_runs.subprocess, "run", lambda cmd, **kw: DONE)
    args = compare_runs.Args("/some/base", "hopper.hdf5", scripts=["ofql"], sweeps=[], out_dir=str(tmp_path))
    assert compare_runs.main(args) == 0 and ran == ["/some/base", ROOT]
