"""A sweep's checkpoints and its --resume (bookkeeping.Runs): the members' checkpoints replaced all together or not at
all, a failed member's saved with the others' and still failed when resumed, resume's errors naming each member's
file, summary.json written whole, and a resumed sweep keeping its name."""

import dataclasses
import glob
import json
import os
import re
import signal

import pytest
import torch

import bookkeeping
import ofql
import sweep
from offline_data import UserError

TIMING = ("steps_per_sec", "eval/decision_rate")


def two_members(hopper_file, *flags, etas=(0.1, 0.3)) -> list:
    """Seeds 0 and 1 (member 1 named "bad"), OFQL with the weights `etas`, on the tiny hopper file."""
    base = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--no-cuda", "--batch-size", "32"]
    args = ofql.parse_args(base + ["--eval-episodes", "2", "--log-every", "10", "--num-candidates", "2", *flags])
    return [
        dataclasses.replace(args, seed=0, eta=etas[0]),
        dataclasses.replace(args, seed=1, eta=etas[1], exp_name="bad"),
    ]


def checkpoints() -> list[str]:
    """The two members' checkpoint files, member 0's first (the run folders of the test's one sweep)."""
    return [os.path.join(d, "checkpoint.pt") for n in ("ofql", "bad") for d in glob.glob(f"runs/*__{n}__*")]


def records(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def test_a_failed_write_leaves_every_members_old_checkpoint(tmp_path, hopper_file, monkeypatch):
    """Step 20's save fails at member 1's file: member 0's checkpoint is still of step 10, as member 1's (written one
    after the other, member 0's would be of step 20: a pair that --resume refuses), and no .tmp file is left; the
    error is one line naming the file and the command that continues from the old ones."""
    monkeypatch.chdir(tmp_path)
    members = two_members(hopper_file, "--total-steps", "20", "--eval-every", "10", "--save-model")
    save, calls = torch.save, []

    def failing_save(obj, path):
        calls.append(path)
        if len(calls) == 4:  # step 20, member 1
            raise OSError("No space left on device")
        save(obj, path)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(UserError, match=r"cannot write .*__bad__.*checkpoint.pt \(No space left on device; a") as e:
        sweep.train(ofql, members, "full")
    assert "last checkpoint " + " ".join(checkpoints()) + "; continue with: python" in str(e.value)
    assert [bookkeeping.load_checkpoint(p)["step"] for p in checkpoints()] == [10, 10]
    assert glob.glob("runs/*/*.tmp") == []


def test_a_save_cut_among_the_renames_resumes_from_the_step_every_member_has(tmp_path, hopper_file, monkeypatch):
    """An I/O error (or a kill) after member 0's checkpoint of step 20 replaced its old one, before member 1's: one
    line with the command that continues; the checkpoints are of steps 20 and 10, and the resume takes member 0's old
    file (kept beside as .prev), so the resumed sweep logs the uninterrupted one's records from step 10 on."""
    monkeypatch.chdir(tmp_path)
    members = two_members(hopper_file, "--total-steps", "20", "--eval-every", "10", "--save-model")
    sweep.train(ofql, [dataclasses.replace(m, exp_name=f"{m.exp_name}_straight") for m in members], "straight")
    straight = [records(d) for n in ("ofql", "bad") for d in glob.glob(f"runs/*__{n}_straight__*")]
    replace, renames = os.replace, []

    def failing_replace(src, dst):
        renames.append(dst)
        if dst.endswith("checkpoint.pt") and sum(r.endswith("checkpoint.pt") for r in renames) == 4:  # step 20, m 1
            raise OSError("Input/output error")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(UserError, match=r"cannot replace the checkpoints \(Input/output error\); .*continue with"):
        sweep.train(ofql, members, "cut")
    monkeypatch.setattr(os, "replace", replace)
    paths = checkpoints()
    assert [bookkeeping.load_checkpoint(p)["step"] for p in paths] == [20, 10]
    sweep.train(ofql, [dataclasses.replace(m, resume=p) for m, p in zip(members, paths)], "cut")
    assert [records(os.path.dirname(p)) for p in paths] == straight
    assert glob.glob("runs/*/*.prev") == [] and [bookkeeping.load_checkpoint(p)["step"] for p in paths] == [20, 20]


def test_signals_during_a_save_wait_until_every_checkpoint_is_replaced(tmp_path, hopper_file, monkeypatch):
    """Two SIGINTs (the second stops at once) just after member 0's checkpoint replaced its old one: member 1's is
    replaced too before the stop, so both are of that step."""
    monkeypatch.chdir(tmp_path)
    members = two_members(hopper_file, "--total-steps", "20", "--eval-every", "10", "--save-model")
    replace, signalled = os.replace, []

    def replace_then_signal(src, dst):
        replace(src, dst)
        if dst.endswith("checkpoint.pt") and not signalled:
            signalled.append(dst)
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_signal)
    with pytest.raises(bookkeeping.Interrupted):
        sweep.train(ofql, members, "signalled")
    assert [bookkeeping.load_checkpoint(p)["step"] for p in checkpoints()] == [10, 10]


def test_a_failed_members_checkpoint_is_saved_and_it_stays_failed_when_resumed(
    tmp_path, hopper_file, monkeypatch, capsys
):
    """Member 1's eta (3e38) makes its gradient infinite at step 1: its checkpoint is still written at steps 10 and 20
    (with the reason), the console's scores keep one place per member ("-" for it), and the sweep resumed to step 30
    keeps it failed (no record, the same error) while member 0 trains on."""
    monkeypatch.chdir(tmp_path)
    members = two_members(hopper_file, "--total-steps", "20", "--eval-every", "10", "--save-model", etas=(0.1, 3e38))
    reason = "non-finite actor_grad_norm at step 1"
    with pytest.raises(UserError, match=f"1 of 2 members failed: .*__bad__.*: {reason}$"):
        sweep.train(ofql, members, "failing")
    paths = checkpoints()
    saved = [bookkeeping.load_checkpoint(p) for p in paths]
    assert [(s["step"], s["failed"]) for s in saved] == [(20, None), (20, reason)]
    scores = [line for line in capsys.readouterr().out.splitlines() if "members' eval/score" in line]
    pattern = r"eval/score: ofql seed 0 -?\d+\.\d, bad seed 1 -$"  # each member named, by its experiment and seed
    assert len(scores) == 2 and all(re.search(pattern, line) for line in scores), scores
    longer = [dataclasses.replace(m, total_steps=30, resume=p) for m, p in zip(members, paths)]
    with pytest.raises(UserError, match=f"1 of 2 members failed: .*__bad__.*: {reason}$"):
        sweep.train(ofql, longer, "failing")
    good, bad = (os.path.dirname(p) for p in paths)
    assert [r["step"] for r in records(good)] == [10, 20, 30] and records(bad) == []
    assert json.load(open(f"{bad}/summary.json"))["error"] == reason
    assert json.load(open(f"{good}/summary.json"))["error"] is None
    assert [bookkeeping.load_checkpoint(p)["failed"] for p in paths] == [None, reason]


def test_resume_errors_name_each_members_file(tmp_path, hopper_file, monkeypatch):
    """Checkpoints of different steps: each file with its step; member 1's without its critic: its file is named."""
    monkeypatch.chdir(tmp_path)
    members = two_members(hopper_file, "--total-steps", "10", "--eval-every", "10", "--save-model")
    sweep.train(ofql, members, "named")
    paths = checkpoints()
    resumed = [dataclasses.replace(m, total_steps=20, resume=p) for m, p in zip(members, paths)]
    state = torch.load(paths[1], weights_only=True)
    torch.save({**state, "step": 5}, paths[1])
    with pytest.raises(UserError, match=re.escape(f"steps: {paths[0]} (step 10), {paths[1]} (step 5)")):
        sweep.train(ofql, resumed, "named")
    torch.save({k: v for k, v in state.items() if k != "critic"}, paths[1])
    with pytest.raises(UserError, match=re.escape(paths[1])):
        sweep.train(ofql, resumed, "named")


def test_summary_json_is_written_whole_or_not_at_all(tmp_path, hopper_file, monkeypatch):
    """A write of summary.json cut after its first characters (a full disk) leaves no summary.json, and no .tmp."""
    monkeypatch.chdir(tmp_path)
    dump = json.dump

    def cut_dump(obj, f, **kwargs):
        if "summary.json" in f.name:
            f.write('{"algorithm": "of')
            raise OSError("No space left on device")
        dump(obj, f, **kwargs)

    monkeypatch.setattr(json, "dump", cut_dump)
    (member, _) = two_members(hopper_file, "--total-steps", "2", "--eval-every", "2", "--log-every", "1")
    with pytest.raises(OSError, match="No space left"):
        sweep.train(ofql, [member], "cut")
    assert glob.glob("runs/*/summary.json*") == []


def test_a_stop_while_the_summaries_are_written_waits_for_all_of_them(tmp_path, hopper_file, monkeypatch):
    """A stop during the first summary.json: every member's is written, then the stop says the runs had finished
    (no continue command); their resume is refused, unless a member lacks its summary.json (a kill): then it writes
    them again and trains nothing."""
    monkeypatch.chdir(tmp_path)
    summarize = bookkeeping.summarize
    monkeypatch.setattr(bookkeeping, "summarize", lambda *a: signal.raise_signal(signal.SIGINT) or summarize(*a))
    members = two_members(hopper_file, "--total-steps", "2", "--eval-every", "2", "--log-every", "1", "--save-model")
    with pytest.raises(KeyboardInterrupt):
        sweep.train(ofql, members, "stopped")
    monkeypatch.setattr(bookkeeping, "summarize", summarize)
    summaries = [os.path.join(os.path.dirname(p), "summary.json") for p in checkpoints()]
    assert all(map(os.path.exists, summaries))
    assert bookkeeping.Runs.latest.how_to_continue().startswith("the runs had finished (summaries: ")
    resumed = [dataclasses.replace(m, resume=p) for m, p in zip(members, checkpoints())]
    with pytest.raises(UserError, match=r"its run had finished at step 2 \(summary.json\)"):
        sweep.train(ofql, resumed, "stopped")
    os.remove(summaries[1])
    assert sweep.train(ofql, resumed, "stopped") == summaries and os.path.exists(summaries[1])
    assert [r["step"] for r in records(os.path.dirname(summaries[1]))] == [1, 2]


def test_a_resumed_sweep_keeps_its_name(tmp_path, hopper_file, monkeypatch):
    """--resume: the name in the members' sweep.json (a shard's included), not a new one; else a new one."""
    monkeypatch.chdir(tmp_path)
    members = two_members(hopper_file, "--total-steps", "2", "--eval-every", "2", "--log-every", "1", "--save-model")
    name = "hopper-medium-v2__ofql_sweep__1700000000__shard0of2"
    sweep.train(ofql, members, name)
    assert sweep.sweep_name(ofql, sweep.Args(shard="0/2", resume=checkpoints()), members) == name
    links = [f"latest{m}.pt" for m in range(2)]  # links outside the run folders: their targets' sweep.json
    for link, path in zip(links, checkpoints()):
        os.symlink(os.path.abspath(path), link)
    assert sweep.sweep_name(ofql, sweep.Args(shard="0/2", resume=links), members) == name
    fresh = sweep.sweep_name(ofql, sweep.Args(shard="1/2"), members)
    assert re.fullmatch(r"hopper-medium-v2__ofql_sweep__\d+__shard1of2", fresh) and fresh != name
