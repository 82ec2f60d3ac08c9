"""bookkeeping.py and the sweep's members, directly: every training flag is refused by --resume, summary.json's final
and best evaluations on made-up evaluations, a sweep's members drawing their own batches and their own noise, the
generators' states on CUDA (mocked: fewer devices at resume, the sweep's generator after the members' seeds) and each
member's gradient clipped by its own norm."""

import dataclasses
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

import bookkeeping
import dql
import fql
import offline_data
import ofql
import sweep
from offline_data import UserError

# what README.md says a --resume may change: the length, logging, evaluation and device flags (nothing else)
MAY_CHANGE = set(
    "resume total_steps exp_name cuda cuda_graph compile capture_video track wandb_project_name wandb_entity "
    "save_model eval_every eval_episodes num_candidates log_every".split()
)
ONLINE = {"online_steps", "online_candidates", "balanced_sampling"}  # and these until the online phase begins


def changed(value):
    """Another value of a flag's type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    return f"{value}_other" if value is not None else "other"


@pytest.mark.parametrize("script", [ofql, dql, fql])
def test_resume_refuses_every_training_flag_and_only_those(script):
    saved = vars(script.Args())
    for flag, value in saved.items():
        config = {**saved, flag: changed(value)}
        if flag in MAY_CHANGE | ONLINE:
            bookkeeping.check_resume(config, saved, step=10)
        else:
            with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} "):
                bookkeeping.check_resume(config, saved, step=10)
        if flag in ONLINE:  # a checkpoint of the online phase
            with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} .*its online phase had begun"):
                bookkeeping.check_resume(config, saved, step=saved["total_steps"] + 1)


def test_a_run_records_the_commit_of_its_code_and_may_resume_on_another(tmp_path):
    """config.json's and summary.json's "commit": the checkout's HEAD, marked when a tracked file differs from it."""
    if shutil.which("git") is None:
        pytest.skip("no git here")
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir(), plain.mkdir()
    git = lambda *a: subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *a], check=True, capture_output=True
    ).stdout.decode()
    (repo / "ofql.py").write_text("x = 1\n")
    git("init", "-q"), git("add", "ofql.py"), git("commit", "-qm", "first")
    head, script = git("rev-parse", "HEAD").strip(), str(repo / "ofql.py")
    assert bookkeeping.code_version(script) == head[:12]
    (repo / "notes.txt").write_text("not tracked: not the code")
    assert bookkeeping.code_version(script) == head[:12]
    (repo / "ofql.py").write_text("x = 2\n")
    assert bookkeeping.code_version(script) == head[:12] + "+changes"
    assert bookkeeping.code_version(str(plain / "ofql.py")) is None  # not a git checkout
    saved = vars(ofql.Args())
    bookkeeping.check_resume({**saved, "commit": "b"}, {**saved, "commit": "a"}, step=10)  # later code may continue


def test_the_summary_names_the_last_and_the_best_evaluation():
    evals = [
        {"step": 10, "return": 50.0, "score": 5.0, "score_std": 1.0},
        {"step": 20, "return": 300.0, "score": 30.0, "score_std": 2.0},  # the best
        {"step": 30, "return": 100.0, "score": 10.0, "score_std": 3.0, "policy_score": 9.0, "policy_return": 90.0},
    ]
    source = types.SimpleNamespace(path="data.hdf5", eval_env_id="Hopper-v4")
    summary = bookkeeping.summarize("ofql.py", ofql.Args(env_id="hopper-medium-v2"), source, evals, 5.0, 2.0)
    assert (summary["final_score"], summary["final_score_std"], summary["final_return"]) == (10.0, 3.0, 100.0)
    assert (summary["best_score"], summary["best_score_std"], summary["best_step"]) == (30.0, 2.0, 20)
    assert summary["best_return"] == 300.0
    assert (summary["final_policy_score"], summary["final_policy_return"]) == (9.0, 90.0)
    assert summary["algorithm"] == "ofql" and summary["evaluations"] == evals and summary["reported_success"] is None
    # scored by success (OGBench): the best is the most successful, whatever its return
    for e, success in zip(evals, (0.9, 0.1, 0.4)):
        e["success"] = success
    summary = bookkeeping.summarize("fql.py", fql.Args(env_id="hopper-medium-v2"), source, evals, 5.0, 2.0)
    assert summary["best_step"] == 10 and summary["best_success"] == 0.9 and summary["final_success"] == 0.4
    assert summary["reported_success"] == pytest.approx((0.9 + 0.1 + 0.4) / 3)


def two_identical_members(script, batch_size=64):
    """Two members with the same networks (the same seed) and the same flags, stacked, and a buffer of 1,000 random
    transitions whose sample() draws a batch per member."""
    args = [script.Args(batch_size=batch_size)] * 2
    agents = []
    for _ in args:
        torch.manual_seed(0)
        agents.append(script.make_agent(11, 3, args[0], torch.device("cpu")))
    members = sweep.Members(script, args)
    data = {k: torch.randn(1000, d).numpy() for k, d in (("observations", 11), ("next_observations", 11))}
    data.update(actions=torch.rand(1000, 3).numpy() * 2 - 1, rewards=torch.randn(1000).numpy())
    data["terminals"] = torch.zeros(1000).numpy()
    return members, members.stack(agents), members.OfflineBuffer(data, torch.device("cpu")), args[0]


@pytest.mark.parametrize("script", [ofql, dql, fql])
def test_sweep_members_draw_their_own_batches_and_their_own_noise(script):
    """Two members identical in everything: their batches differ (each draws its own indices), and with one batch
    given to both, their losses still differ (each draws its own noise in the losses); were the draws shared, a sweep
    would train N copies of one run."""
    torch.manual_seed(1)
    members, stacked, buffer, args = two_identical_members(script)
    batch = buffer.sample(args.batch_size)
    assert not torch.equal(batch.obs[0], batch.obs[1])
    same = type(batch)(*(x[:1].expand_as(x).clone() for x in batch))  # member 0's batch, for both
    metrics = members.update(stacked, same, args, torch.tensor(1))
    assert metrics["critic_loss"][0] != metrics["critic_loss"][1]  # the next actions' noise
    assert metrics["actor_loss"][0] != metrics["actor_loss"][1]  # the policy's noise
    assert dataclasses.fields(stacked) == dataclasses.fields(script.Agent)


def test_cuda_generators_restore_on_fewer_visible_devices(monkeypatch):
    """A checkpoint saved with 2 GPUs, resumed with 1 visible: the first's state only (the training device's), no
    error for the missing one."""
    rng, restored = bookkeeping.rng_state(), []
    rng["cuda"] = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    bookkeeping.set_rng_state(rng)
    assert restored == [rng["cuda"][:1]]


def test_the_sweeps_cuda_generator_is_seeded_as_torchs(monkeypatch):
    """Members of seeds 3 then 5 (CUDA mocked: its generator's state is the last seed given): after making their
    networks, CUDA's generator and torch's are seeded alike, from both seeds (seeding torch's CPU generator alone
    leaves CUDA's at seed 5's); one member of seed 3 leaves both as its lone run does."""
    cuda = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda.update(state=torch.tensor([seed])))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [cuda["state"].clone()])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: cuda.update(state=states[0]))
    members = [ofql.Args(seed=3), ofql.Args(seed=5)]
    sweep.Members(ofql, members).make_agent(11, 3, members[0], torch.device("cpu"))
    assert cuda["state"].item() == torch.initial_seed() == np.random.SeedSequence([3, 5]).generate_state(1)[0]
    sweep.Members(ofql, [ofql.Args(seed=3)]).make_agent(11, 3, ofql.Args(seed=3), torch.device("cpu"))
    assert cuda["state"].item() == 3
    swept = torch.get_rng_state()
    torch.manual_seed(3)
    ofql.make_agent(11, 3, ofql.Args(seed=3), torch.device("cpu"))
    assert torch.equal(swept, torch.get_rng_state())  # torch's: the lone run's


def test_each_member_is_clipped_by_its_own_norm_with_a_scalar_parameter():
    """A network whose stacked parameters include one of shape (members,) (a scalar per member): each member's
    gradient norm is its own, and each is clipped to the limit."""
    members, *_ = two_identical_members(ofql)
    module = nn.Module()
    module.scale, module.weight = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.ones(2, 3))
    loss = 3.0 * module.scale + torch.tensor([[1.0], [4.0]]).mul(module.weight).sum(1)  # one loss per member
    norms = members.optimizer_step(torch.optim.SGD(module.parameters(), lr=0.0), module, loss, max_norm=1.0)
    assert norms.tolist() == pytest.approx([(9 + 3) ** 0.5, (9 + 48) ** 0.5])
    clipped = torch.cat([module.scale.grad[:, None], module.weight.grad], dim=1).norm(dim=1)
    assert clipped.tolist() == pytest.approx([1.0, 1.0], rel=1e-5)


def test_resume_refuses_other_data_in_words_that_name_it():
    saved = {**vars(ofql.Args(total_steps=10)), "transitions": 120}
    with pytest.raises(UserError, match=r"^its run had other flags: a dataset of 85 transitions \(was 120\)$"):
        bookkeeping.check_resume({**saved, "transitions": 85}, saved, step=5)  # no flag --transitions to name
    with pytest.raises(UserError, match=r"does not know \(.*--flow-ratio, .*\): a checkpoint of another script"):
        bookkeeping.check_resume(vars(dql.Args()), vars(ofql.Args()), step=5)  # dql.py given an ofql.py checkpoint
    with pytest.raises(UserError, match=r"^its run had other flags: --dataset-path unset \(was /data/h.hdf5\)$"):
        bookkeeping.check_resume(saved, {**saved, "dataset_path": "/data/h.hdf5"}, step=5)  # a flag left out


def test_a_resume_keeps_the_runs_flags_that_it_is_not_given(tmp_path, hopper_file, monkeypatch, capsys):
    """`--resume FILE --total-steps 8` alone: every flag left out is the run's (its env id, data file, evaluation and
    candidates), not the script's default or the preset's, and the run goes on as the one trained to 8 steps in one go
    (every logged number); one line says where it resumes and what changed. The finished run resumed with nothing
    else is refused as finished (with the defaults it trained on toward the default 2M steps)."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--batch-size", "16", "--eval-every", "4"]
    flags += ["--eval-episodes", "1", "--num-candidates", "2", "--log-every", "2", "--save-model"]
    straight = ofql.train(ofql.parse_args([*flags, "--total-steps", "8", "--exp-name", "straight"]))
    checkpoint = os.path.join(
        os.path.dirname(ofql.train(ofql.parse_args([*flags, "--total-steps", "4"]))), "checkpoint.pt"
    )
    with pytest.raises(UserError, match=r"its run had finished at step 4 \(summary.json\)"):
        ofql.train(ofql.parse_args(["--resume", checkpoint]))
    capsys.readouterr()
    resumed = ofql.train(ofql.parse_args(["--resume", checkpoint, "--total-steps", "8"]))
    assert f"resuming {checkpoint} at step 4; changed: --total-steps 4 -> 8\n" in capsys.readouterr().out
    read = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("steps_per_sec", "eval/decision_rate")}
                         for line in open(os.path.join(os.path.dirname(path), "metrics.jsonl"))]  # fmt: skip
    assert read(resumed) == read(straight) and len(read(straight)) == 4  # steps 2, 4 (evaluated), 6, 8 (evaluated)
    with pytest.raises(UserError, match=r"--batch-size 32 \(was 16\)"):  # a flag given is checked as before
        ofql.train(ofql.parse_args(["--resume", checkpoint, "--total-steps", "12", "--batch-size", "32"]))


def test_a_finished_run_is_refused_but_one_stopped_before_its_summary_writes_it(tmp_path, hopper_file, monkeypatch):
    """A finished run's checkpoint (its summary.json written): refused in one line, unless --total-steps grows; one
    whose summaries a stop cut off (no summary.json): the resume trains nothing and writes them. A summary put aside
    is named by the step its run finished at: a second resume of step 4's checkpoint keeps summary_at_4.json."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1", "--save-model"]
    summary = ofql.train(ofql.parse_args([*flags, "--total-steps", "4", "--eval-every", "4"]))
    checkpoint, written = os.path.join(os.path.dirname(summary), "checkpoint.pt"), open(summary).read()
    again = [*flags, "--total-steps", "4", "--eval-every", "4", "--resume", checkpoint]
    with pytest.raises(UserError, match=r"its run had finished at step 4 \(summary.json\); a larger --total-steps"):
        ofql.train(ofql.parse_args(again))
    os.remove(summary)  # as if a stop came while the summaries were written
    assert ofql.train(ofql.parse_args(again)) == summary
    assert json.load(open(summary))["evaluations"] == json.loads(written)["evaluations"]
    further = [*flags, "--total-steps", "6", "--eval-every", "2", "--resume", checkpoint]  # a larger --total-steps
    monkeypatch.setattr(ofql, "evaluate", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))  # stopped at step 6
    with pytest.raises(KeyboardInterrupt):
        ofql.train(ofql.parse_args(further))
    at_4 = os.path.join(os.path.dirname(summary), "summary_at_4.json")
    assert not os.path.exists(summary) and json.load(open(at_4))["evaluations"] == json.loads(written)["evaluations"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    ofql.train(ofql.parse_args([*further, "--no-save-model"]))  # finished at 6, the checkpoint still step 4's
    ofql.train(ofql.parse_args([*flags, "--total-steps", "8", "--eval-every", "2", "--resume", checkpoint]))
    at_6 = os.path.join(os.path.dirname(summary), "summary_at_6.json")
    assert json.load(open(at_4))["evaluations"] == json.loads(written)["evaluations"]
    assert [e["step"] for e in json.load(open(at_6))["evaluations"]] == [4, 6]


def test_the_command_that_continues_replaces_either_spelling_of_resume():
    for resume in (["--resume", "a.pt", "b.pt"], ["--resume=a.pt", "b.pt"]):
        argv = ["sweep.py", "ofql.py", "--seeds", "0", "1", *resume, "--eta", "0.1"]
        expected = "python sweep.py ofql.py --seeds 0 1 --eta 0.1 --resume X Y"
        assert bookkeeping.continue_command(argv, ["X", "Y"]) == expected


def test_exp_name_is_one_part_of_the_run_name():
    bookkeeping.check_flags({"exp_name": "ofql_eta0.1"})
    for name in ("a/b", "../up", "a__b", ""):
        with pytest.raises(UserError, match="--exp-name must be a name without '/' or '__'"):
            bookkeeping.check_flags({"exp_name": name})


def test_resume_names_what_is_wrong_with_the_path(tmp_path, hopper_file, monkeypatch):
    """A folder (not its checkpoint.pt) and a file that is not a checkpoint: each said in one line."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "4", "--resume"]
    with pytest.raises(UserError, match="a folder; name its checkpoint.pt"):
        ofql.train(ofql.parse_args([*flags, str(tmp_path)]))
    with pytest.raises(UserError, match=r"cannot resume from .*: not a checkpoint \(not a file torch.save wrote\)$"):
        ofql.train(ofql.parse_args([*flags, hopper_file]))


def test_an_empty_a_text_or_a_truncated_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello world\n")
    torch.save({"step": torch.zeros(1000)}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[:2000])
    (tmp_path / "damaged.pt").write_bytes(whole[:-300] + bytes(200) + whole[-100:])  # a zeroed block in its index
    torch.save({"step": torch.zeros(100_000)}, tmp_path / "big.pt")
    (tmp_path / "cut_big.pt").write_bytes((tmp_path / "big.pt").read_bytes()[:8919])  # torch: OSError(EINVAL)
    lines = {"empty": "the file is empty", "text": "not a checkpoint", "cut": "a truncated", "damaged": "a truncated"}
    lines["cut_big"] = "a truncated"
    for name, says in lines.items():
        with pytest.raises(UserError, match=f"^{says}"):
            bookkeeping.load_checkpoint(str(tmp_path / f"{name}.pt"))


def test_the_log_is_cut_in_place_after_the_checkpoints_step_and_a_stray_line_is_named(tmp_path):
    """trim_log keeps the records up to the step and drops a partial last line, in the file itself (an open, locked
    log keeps writing to it: a rewrite renamed into place fails); a line that is not a record is one line naming the
    file and its number."""
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 2, 3, 4)) + '{"step": 5, "x')
    inode = log.stat().st_ino
    bookkeeping.trim_log(str(log), 4)  # the partial line goes
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 2, 3, 4]
    bookkeeping.trim_log(str(log), 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 2]
    assert log.stat().st_ino == inode
    log.write_text(log.read_text() + "garbage\n")
    with pytest.raises(UserError, match=r"metrics.jsonl, line 4, is not a record of a step: delete it to resume$"):
        bookkeeping.trim_log(str(log), 3)


def test_a_resume_through_a_link_continues_in_the_run_folder_it_points_into(tmp_path, hopper_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1", "--save-model"]
    summary = ofql.train(ofql.parse_args([*flags, "--total-steps", "2", "--eval-every", "2"]))
    os.symlink(os.path.join(os.path.dirname(summary), "checkpoint.pt"), "latest.pt")
    again = ofql.train(ofql.parse_args([*flags, "--total-steps", "4", "--eval-every", "2", "--resume", "latest.pt"]))
    assert os.path.samefile(again, summary) and not os.path.exists("metrics.jsonl")
    with pytest.raises(UserError, match=r"its run had finished at step 4 \(summary.json\)"):  # its folder's summary
        ofql.train(ofql.parse_args([*flags, "--total-steps", "4", "--eval-every", "2", "--resume", "latest.pt"]))
    run_dir, scratch = os.path.dirname(summary), tmp_path / "scratch"  # the file moved away, a link left in its place
    scratch.mkdir()
    os.replace(os.path.join(run_dir, "checkpoint.pt"), scratch / "big.pt")
    os.symlink(scratch / "big.pt", os.path.join(run_dir, "checkpoint.pt"))
    resume = [*flags, "--total-steps", "6", "--eval-every", "2", "--resume", os.path.join(run_dir, "checkpoint.pt")]
    assert os.path.samefile(ofql.train(ofql.parse_args(resume)), summary) and os.listdir(scratch) == ["big.pt"]


def test_a_checkpoint_is_on_disk_before_it_replaces_the_last_one(tmp_path, hopper_file, monkeypatch):
    """Each checkpoint's new file is flushed to the disk (fsync) before it is renamed over the old one, so that a
    node's crash, not only a killed process, leaves the old checkpoint or the whole new one."""
    monkeypatch.chdir(tmp_path)
    events, fsync, replace = [], os.fsync, os.replace
    opened = lambda fd: os.readlink(f"/proc/self/fd/{fd}")  # Linux's name of an open file
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", opened(fd))) or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", os.path.abspath(a))) or replace(a, b))
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1", "--save-model"]
    summary = ofql.train(ofql.parse_args([*flags, "--total-steps", "4", "--eval-every", "2"]))
    tmp = os.path.join(os.path.dirname(os.path.abspath(summary)), "checkpoint.pt.tmp")
    assert [e for e in events if e[1] == tmp] == [("fsync", tmp), ("replace", tmp)] * 2  # steps 2 and 4


def run_main(argv: list[str], monkeypatch) -> SystemExit:
    """bookkeeping.main of ofql.py with `argv`, in this process (its SIGINT and SIGTERM handlers restored after)."""
    monkeypatch.setattr(sys, "argv", ["ofql.py", *argv])
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as stop:
            bookkeeping.main("ofql.py", lambda: ofql.train(ofql.parse_args(argv)))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return stop.value


def test_a_stop_outside_the_loop_names_the_last_checkpoint_and_leaves_no_empty_folder(
    tmp_path, hopper_file, monkeypatch, capsys
):
    """Ctrl-C while the agent is made (after the run folder, before anything is written in it): a fresh run's folder
    is removed; a resumed run's line names its checkpoint and the command that continues (not "no checkpoint")."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1", "--save-model"]
    summary = ofql.train(ofql.parse_args([*flags, "--total-steps", "4", "--eval-every", "4"]))
    checkpoint = os.path.join(os.path.dirname(summary), "checkpoint.pt")
    make_agent = ofql.make_agent
    monkeypatch.setattr(ofql, "make_agent", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert run_main([*flags, "--total-steps", "8"], monkeypatch).code == 130
    assert "no checkpoint was written" in capsys.readouterr().err and os.listdir("runs") == [
        os.path.basename(os.path.dirname(checkpoint))
    ]  # the new run's empty folder removed, the first run's kept
    assert run_main([*flags, "--total-steps", "8", "--resume", checkpoint], monkeypatch).code == 130
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"ofql.py: interrupted: last checkpoint {checkpoint}; continue with: python ofql.py ")
    assert line.endswith(f"--total-steps 8 --resume {checkpoint}")
    monkeypatch.setattr(ofql, "make_agent", make_agent)


def capture_failed(cause: Exception) -> UserError:
    """The UserError a script's cuda_graph raises when capturing fails, with its cause."""
    try:
        raise UserError("capturing the training step as a CUDA graph failed; run with --no-cuda-graph") from cause
    except UserError as e:
        return e


def test_out_of_memory_is_one_line_that_names_what_to_make_smaller(tmp_path, hopper_file, monkeypatch, capsys):
    """The buffer of a too-large --online-steps (the CPU allocator's RuntimeError; CUDA's is torch.OutOfMemoryError,
    also as the cause of a graph capture's UserError): one line, exit code 2, no empty run folder left, nor one that
    failed before its first record; any other RuntimeError stays a traceback."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "4", "--online-steps", "9"]
    for error in (
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 88000000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 82.00 GiB."),
        capture_failed(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 82.00 GiB.")),
    ):
        monkeypatch.setattr(ofql, "OfflineBuffer", lambda *a, error=error: (_ for _ in ()).throw(error))
        assert run_main(flags, monkeypatch).code == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith("ofql.py: error: out of memory (") and line.endswith(
            ": a smaller --batch-size or fewer --online-steps"
        )
        assert ("allocate 88000000000 bytes" in line or "82.00 GiB" in line) and "enforce fail" not in line
        assert glob.glob("runs/*") == []
    monkeypatch.setattr(ofql, "OfflineBuffer", lambda *a: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run_main(flags, monkeypatch)
    assert glob.glob("runs/*") == []
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # out of memory in the first step: the folder that start() filled goes too
    monkeypatch.setattr(ofql, "update", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory.")))
    assert run_main([*flags, "--save-model"], monkeypatch).code == 2
    assert "no checkpoint was written" in capsys.readouterr().err and glob.glob("runs/*") == []


def test_a_write_refused_in_training_names_the_last_checkpoint(tmp_path, hopper_file, monkeypatch, capsys):
    """A full disk while a training run writes its log: one line, the error and the command that continues."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1", "--save-model"]
    log, calls = bookkeeping.Runs.log, []

    def full_disk(self, step, *args):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return log(self, step, *args)

    monkeypatch.setattr(bookkeeping.Runs, "log", full_disk)
    assert run_main([*flags, "--total-steps", "4", "--eval-every", "2", "--log-every", "2"], monkeypatch).code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]  # after the progress bar's
    checkpoint = glob.glob("runs/*/checkpoint.pt")[0]
    assert line.startswith(f"ofql.py: error: [Errno 28] No space left on device; last checkpoint {checkpoint}; ")
    assert line.endswith(f"--resume {checkpoint}")


def test_track_without_a_usable_wandb_is_one_line_and_leaves_no_folder(tmp_path, hopper_file, monkeypatch, capsys):
    import wandb

    def no_key(**_):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wandb, "init", no_key)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "4", "--track"]
    assert run_main(flags, monkeypatch).code == 2
    assert capsys.readouterr().err.strip() == (
        "ofql.py: error: --track: wandb could not start (No API key configured. Use `wandb login` to log in.); "
        "`wandb login`, or WANDB_MODE=offline"
    )
    assert not os.path.exists("runs")


def test_a_wandb_killed_with_the_job_turns_track_off_and_the_stop_still_saves(
    tmp_path, hopper_file, monkeypatch, capsys
):
    """A cluster's SIGTERM reaches every process of the job, wandb's service too, whose next call raises: the run says
    so in one line, goes on without --track and saves the stop's step, exit 143 (it ended with exit 2 and the last
    evaluation's checkpoint, and each later wandb call raised again)."""
    import wandb

    class Killed:  # a wandb run whose service got the job's SIGTERM with this process
        summary = {}

        def log(self, *a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            raise ConnectionResetError("Connection lost")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wandb, "init", lambda **k: Killed())
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "8", "--eval-every", "8"]
    flags += ["--eval-episodes", "1", "--log-every", "2", "--save-model", "--track"]
    with pytest.raises(bookkeeping.Interrupted) as stop:
        ofql.train(ofql.parse_args(flags))
    assert stop.value.exit_code == 143 and "stopped at step 3; saved in" in str(stop.value)
    assert capsys.readouterr().out.count("wandb stopped (Connection lost); --track is off") == 1
    assert torch.load(glob.glob("runs/*/checkpoint.pt")[0], weights_only=True)["step"] == 3


def test_only_the_failing_calls_new_empty_folders_are_removed(tmp_path, hopper_file, monkeypatch, capsys):
    """A new run's folder goes with its empty videos/ (--capture-video makes it with the envs); a later main() whose
    flags are refused before it makes a Runs leaves an earlier Runs' folder of this process alone."""
    monkeypatch.chdir(tmp_path)
    runs = bookkeeping.Runs("ofql.py", [ofql.Args()])
    os.makedirs(os.path.join(runs.dirs[0], "videos"))
    runs.remove_made()
    assert not os.path.exists("runs")
    earlier = bookkeeping.Runs("ofql.py", [ofql.Args()])
    assert run_main(["--env-id", "hopper-medium-v2", "--batch-size", "-1"], monkeypatch).code == 2
    assert "--batch-size must be a number in (0, inf), not -1" in capsys.readouterr().err
    assert os.path.isdir(earlier.dirs[0])


def test_a_resume_with_other_flags_is_refused_before_the_data_are_loaded(tmp_path, hopper_file, monkeypatch):
    """A resume given another --dataset-path would load (download, for a D4RL id) it before the checkpoint's check
    refused it: the run's config.json is checked first (the same dataset given by a relative path passes, and left
    out it is the run's)."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--eval-episodes", "1", "--save-model", "--total-steps", "4"]
    summary = ofql.train(ofql.parse_args([*flags, "--dataset-path", hopper_file, "--eval-every", "4"]))
    checkpoint, loads = os.path.join(os.path.dirname(summary), "checkpoint.pt"), []
    monkeypatch.setattr(offline_data, "load", lambda *a: loads.append(a) or (_ for _ in ()).throw(LookupError("load")))
    other = ["--total-steps", "8", "--dataset-path", "other.hdf5", "--resume", checkpoint]
    with pytest.raises(UserError, match=r"cannot resume from .*: its run had other flags: --dataset-path .*other.hdf5"):
        ofql.train(ofql.parse_args([*flags, *other]))
    assert loads == []
    for given in (["--dataset-path", os.path.relpath(hopper_file)], []):
        with pytest.raises(LookupError, match="load"):  # past the check, at the load
            ofql.train(ofql.parse_args([*flags, "--total-steps", "8", *given, "--resume", checkpoint]))
    assert [a[1] for a in loads] == [os.path.relpath(hopper_file), hopper_file]
    with pytest.raises(UserError, match=r"does not know \(--adaptive-weight-power, .*\): a checkpoint of another"):
        dql.train(dql.parse_args([*flags, "--dataset-path", hopper_file, "--resume", checkpoint]))  # ofql.py's
    assert len(loads) == 2  # refused before the data too


def test_peek_reads_the_env_id_and_the_flags_of_the_run_a_checkpoint_continues(tmp_path):
    """The flags of the checkpoint's run by the script's fields (a tuple flag a tuple again; its old --resume and
    config.json's additions not flags); no --resume or a path that is no file: no flags; a file that is no checkpoint:
    one line."""

    @dataclasses.dataclass
    class Flags:
        env_id: str = "x"
        hidden_dims: tuple[int, ...] = (256, 256)
        resume: str | None = None

    config = {"env_id": "y", "hidden_dims": [64], "resume": "old.pt", "device": "cpu"}
    torch.save({"config": config, "actor": {"w": torch.zeros(2)}}, tmp_path / "checkpoint.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save({"step": 3}, tmp_path / "other.pt")
    resumed = ["--resume", str(tmp_path / "checkpoint.pt")]
    assert bookkeeping.peek(resumed, Flags) == (None, {"env_id": "y", "hidden_dims": (64,)})
    assert bookkeeping.peek(["--env_id=z", "--resume", str(tmp_path)], Flags) == ("z", {})  # a folder: Runs names it
    # a file that is no checkpoint: said before the defaults' data are loaded (a download), not a flag list
    for name, says in (("junk.pt", r"not a checkpoint \(not a file"), ("other.pt", "not a checkpoint of ofql.py")):
        with pytest.raises(UserError, match=f"^cannot resume from {tmp_path / name}: {says}"):
            bookkeeping.peek(["--resume", str(tmp_path / name)], Flags)
    with pytest.raises(UserError, match="--resume needs a checkpoint file, not ''"):  # an unset shell variable
        bookkeeping.check_flags({"resume": ""})


def test_a_flag_newer_than_the_run_resumes_at_its_default(tmp_path):
    """A run of older code has no value of a flag added since: it ran as the flag's default does, so the resume
    accepts the default and refuses another value (it was refused at any value, 'unset')."""
    saved = {k: v for k, v in bookkeeping.recorded_flags(ofql.Args(resume="x.pt")).items() if k != "time_mu"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    bookkeeping.check_resume_flags(ofql.Args(resume="x.pt"), str(tmp_path))
    with pytest.raises(UserError, match=r"--time-mu 0.5 \(was -0.4\)"):
        bookkeeping.check_resume_flags(ofql.Args(resume="x.pt", time_mu=0.5), str(tmp_path))


def test_a_tuple_flag_reads_back_from_config_json_as_it_was_given(tmp_path):
    """A flag a user adds as a tuple (hidden sizes, say) is a list in config.json: the resume check sees no change."""
    args = types.SimpleNamespace(dataset_path=None, resume="checkpoint.pt", total_steps=10, hidden_dims=(256, 256))
    (tmp_path / "config.json").write_text(json.dumps(bookkeeping.recorded_flags(args)))
    bookkeeping.check_resume_flags(args, str(tmp_path))
    with pytest.raises(UserError, match=r"--hidden-dims \[256, 64\] \(was \[256, 256\]\)"):
        bookkeeping.check_resume_flags(types.SimpleNamespace(**{**vars(args), "hidden_dims": (256, 64)}), str(tmp_path))


def test_an_agent_field_that_is_no_network_or_optimizer_stops_the_run_before_training(
    tmp_path, hopper_file, monkeypatch
):
    """Checkpoints and sweeps hold an Agent's networks and optimizers: a tensor field is refused at the start, in one
    line naming it, not at the first checkpoint."""
    monkeypatch.chdir(tmp_path)
    Tempered = dataclasses.make_dataclass("Tempered", [("temperature", torch.Tensor)], bases=(ofql.Agent,))
    make = ofql.make_agent
    monkeypatch.setattr(ofql, "make_agent", lambda *a: Tempered(**vars(make(*a)), temperature=torch.ones(())))
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "4", "--save-model"]
    with pytest.raises(UserError, match=r"^the Agent's temperature: an Agent holds nn.Modules and optimizers only"):
        ofql.train(ofql.parse_args(flags))
    agent = Tempered(**vars(make(11, 3, ofql.Args(), torch.device("cpu"))), temperature=torch.ones(()))
    with pytest.raises(UserError, match=r"^the Agent's temperature"):  # a sweep's, as it stacks the members
        sweep.stack_agents([agent, agent])


def test_a_second_process_resuming_a_run_is_refused(tmp_path, hopper_file, monkeypatch):
    """A requeued duplicate: while one process trains a run (its metrics.jsonl locked), another's --resume of it stops
    in one line before it touches the log; once the first is done, the resume goes on."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1", "--save-model"]
    summary = ofql.train(ofql.parse_args([*flags, "--total-steps", "4", "--eval-every", "4"]))
    checkpoint, log = (os.path.join(os.path.dirname(summary), name) for name in ("checkpoint.pt", "metrics.jsonl"))
    records = open(log).read()
    holder = subprocess.Popen(  # another process holding the run, as a training one does
        [
            sys.executable,
            "-c",
            f"import bookkeeping, time; f = bookkeeping.open_log({os.path.abspath(os.path.dirname(log))!r}); "
            "print('held', flush=True); time.sleep(60)",
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            UserError, match=r"another process is training the run in .* \(its metrics.jsonl is locked\)"
        ):
            ofql.train(ofql.parse_args([*flags, "--total-steps", "8", "--eval-every", "4", "--resume", checkpoint]))
        assert open(log).read() == records
    finally:
        holder.kill()
        holder.wait()
    ofql.train(ofql.parse_args([*flags, "--total-steps", "8", "--eval-every", "4", "--resume", checkpoint]))


def test_a_file_system_without_locks_trains_unguarded(tmp_path, monkeypatch):
    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(bookkeeping.fcntl, "flock", no_locks)
    with bookkeeping.open_log(str(tmp_path)) as log:
        log.write("{}\n")
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"


def test_stop_signals_notes_the_first_signal_stops_at_the_second_and_restores_the_handlers():
    """Inside stop_signals a first SIGINT or SIGTERM is only noted; a second stops at once with the line that
    continues and the second signal's exit code; a KeyboardInterrupt raised inside (no signal's number) is Ctrl-C's,
    130. Whichever way it ends, the handlers it replaced are back (the loop's handler does not outlive the loop)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    own = {s: (lambda signum, frame: None) for s in signals}  # the handlers before: each its own
    before = {s: signal.signal(s, own[s]) for s in signals}
    try:
        with bookkeeping.stop_signals(lambda: "the line") as received:
            signal.raise_signal(signal.SIGINT)
            assert received == [signal.SIGINT]  # noted, not raised
        assert all(signal.getsignal(s) is own[s] for s in signals)
        with pytest.raises(bookkeeping.Interrupted) as second:
            with bookkeeping.stop_signals(lambda: "the line") as received:
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGTERM)  # the second: at once
        assert received == [signal.SIGINT] and str(second.value) == "the line" and second.value.exit_code == 143
        assert all(signal.getsignal(s) is own[s] for s in signals)
        with pytest.raises(bookkeeping.Interrupted) as plain:
            with bookkeeping.stop_signals(lambda: "the line"):
                raise KeyboardInterrupt
        assert str(plain.value) == "the line" and plain.value.exit_code == 130
        assert all(signal.getsignal(s) is own[s] for s in signals)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_signal_after_the_run_has_finished_does_not_turn_it_into_a_stop(monkeypatch, capsys):
    """Once run() has returned (the summaries written), SIGINT and SIGTERM are ignored: a signal while the summary
    lines are printed leaves exit code 0 and no 'interrupted' line (not 143 for a finished run)."""
    printed = []

    def print_after_a_sigterm(*args, **kwargs):
        printed.append(" ".join(map(str, args)))
        if len(printed) == 1:
            signal.raise_signal(signal.SIGTERM)  # a cluster's pre-emption just as the run ends

    monkeypatch.setattr(bookkeeping, "print", print_after_a_sigterm, raising=False)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        bookkeeping.main("ofql.py", lambda: "runs/x/summary.json")  # no SystemExit: it ended normally
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert printed == ["summary: runs/x/summary.json"] and "interrupted" not in capsys.readouterr().err


def test_a_stop_of_a_resumed_run_without_save_model_names_its_older_checkpoint_as_unsaved(
    tmp_path, hopper_file, monkeypatch
):
    """A run resumed from a checkpoint with --no-save-model, stopped by SIGTERM: its line says nothing was saved since
    that checkpoint (of an earlier step), not 'saved in' it, and still gives the command that continues from it."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1"]
    summary = ofql.train(ofql.parse_args([*flags, "--total-steps", "4", "--eval-every", "4", "--save-model"]))
    checkpoint = os.path.join(os.path.dirname(summary), "checkpoint.pt")
    update = ofql.update

    def update_then_sigterm(agent, batch, args, step):
        if int(step) == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # noted; the loop stops after this step
        return update(agent, batch, args, step)

    monkeypatch.setattr(ofql, "update", update_then_sigterm)
    monkeypatch.setattr(sys, "argv", ["ofql.py", "--resume", checkpoint])
    resumed = [*flags, "--total-steps", "20", "--eval-every", "10", "--no-save-model", "--resume", checkpoint]
    with pytest.raises(bookkeeping.Interrupted) as stop:
        ofql.train(ofql.parse_args(resumed))
    assert stop.value.exit_code == 143
    assert str(stop.value).startswith(f"stopped at step 6; nothing was saved since {checkpoint} (--save-model is off")
    assert str(stop.value).endswith(f"continue with: python ofql.py --resume {checkpoint}")


def test_the_command_that_continues_quotes_what_the_shell_would_split():
    """The printed command is pasted into a shell: a path with a space or a quote stays one argument."""
    argv = ["ofql.py", "--dataset-path", "my data/hop'per.hdf5", "--resume", "old.pt"]
    line = bookkeeping.continue_command(argv, ["runs/a b/checkpoint.pt"])
    assert line == "python ofql.py --dataset-path 'my data/hop'\"'\"'per.hdf5' --resume 'runs/a b/checkpoint.pt'"


def test_a_lone_run_that_goes_non_finite_says_so_once_and_not_as_a_sweep_member(
    tmp_path, hopper_file, monkeypatch, capsys
):
    """A lone run whose loss goes non-finite stops with one UserError line (the caller prints it); it writes no
    sweep member's 'this member stops, the others go on' line (there are no others)."""
    from conftest import fail_at_window

    monkeypatch.chdir(tmp_path)
    fail_at_window(1, 0, monkeypatch, step=2)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "10", "--log-every", "5"]
    with pytest.raises(bookkeeping.UserError, match=r"at step 2; stopping \(check the data"):
        ofql.train(ofql.parse_args([*flags, "--eval-every", "10", "--eval-episodes", "1"]))
    captured = capsys.readouterr()
    assert "the others go on" not in captured.err + captured.out
    shutil.rmtree("runs")  # through the command: its folder keeps what it has, its first record or not
    fail_at_window(1, 0, monkeypatch, step=2)
    assert run_main([*flags, "--eval-every", "10", "--eval-episodes", "1"], monkeypatch).code == 2
    (run_dir,) = glob.glob("runs/*")
    assert {"config.json", "summary.json"} <= set(os.listdir(run_dir))


def test_a_stop_while_the_data_load_leaves_no_new_run_folder_behind(tmp_path, hopper_file, monkeypatch):
    """Ctrl-C while the data are loaded (a long download) in train() itself, not only through main(): the run's new,
    empty folder and runs/ are removed, as for an error there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bookkeeping.offline_data, "load", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ofql.train(ofql.parse_args(["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file]))
    assert not os.path.exists("runs")


def test_track_resumes_the_runs_own_wandb_run_and_sends_its_summary_without_the_evaluations(
    tmp_path, hopper_file, monkeypatch
):
    """--track with --resume continues the same wandb run (id = the run folder's name, resume="allow"), not a new
    one or a refused duplicate id; wandb's summary gets summary.json's figures but not the list of evaluations."""
    import wandb

    made = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.kwargs, self.summary = kwargs, {}
            made.append(self)

        def log(self, record, step):
            pass

        def finish(self, exit_code):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeRun(**kwargs))
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--eval-episodes", "1", "--eval-every", "4"]
    flags += ["--track", "--save-model"]
    summary = ofql.train(ofql.parse_args([*flags, "--total-steps", "4"]))
    checkpoint = os.path.join(os.path.dirname(summary), "checkpoint.pt")
    ofql.train(ofql.parse_args([*flags, "--total-steps", "8", "--resume", checkpoint]))
    first, resumed = made
    name = os.path.basename(os.path.dirname(summary))
    assert first.kwargs["id"] == resumed.kwargs["id"] == name and resumed.kwargs["resume"] == "allow"
    assert resumed.summary["steps"] == 8 and resumed.summary["final_score"] is not None
    assert "evaluations" not in resumed.summary
