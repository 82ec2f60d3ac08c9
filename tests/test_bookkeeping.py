"""bookkeeping.py and the sweep's members, directly: every training flag is refused by --resume, summary.json's final
and best evaluations on made-up evaluations, a sweep's members drawing their own batches and their own noise, the
generators' states on CUDA (mocked: fewer devices at resume, the sweep's generator after the members' seeds) and each
member's gradient clipped by its own norm."""

import dataclasses
import shutil
import subprocess
import types

import pytest
import torch
import torch.nn as nn

import bookkeeping
import dql
import fql
import ofql
import sweep
from offline_data import UserError

# what README.md says a --resume may change: the length, logging, evaluation and device flags (nothing else)
MAY_CHANGE = set(
    "resume total_steps exp_name cuda cuda_graph compile capture_video track wandb_project_name wandb_entity "
    "save_model eval_every eval_episodes num_candidates log_every".split()
)


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
        if flag in MAY_CHANGE:
            bookkeeping.check_resume(config, saved, step=10)
        else:
            with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} "):
                bookkeeping.check_resume(config, saved, step=10)


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
        {"step": 30, "return": 100.0, "score": 10.0, "score_std": 3.0, "policy_score": 9.0},  # the last
    ]
    source = types.SimpleNamespace(path="data.hdf5", eval_env_id="Hopper-v4")
    summary = bookkeeping.summarize("ofql.py", ofql.Args(env_id="hopper-medium-v2"), source, evals, 5.0, 2.0)
    assert (summary["final_score"], summary["final_score_std"], summary["final_return"]) == (10.0, 3.0, 100.0)
    assert (summary["best_score"], summary["best_score_std"], summary["best_step"]) == (30.0, 2.0, 20)
    assert summary["best_return"] == 300.0 and summary["final_policy_score"] == 9.0
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


def test_the_sweeps_cuda_generator_is_left_as_the_first_members_seed_leaves_it(monkeypatch):
    """Members of seeds 3 then 5 (CUDA mocked: its generator's state is the last seed given): after making their
    networks, CUDA's generator is where seed 3 left it, as torch's is (restoring torch's alone leaves seed 5's)."""
    cuda = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda.update(state=torch.tensor([seed])))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [cuda["state"].clone()])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: cuda.update(state=states[0]))
    members = sweep.Members(ofql, [ofql.Args(seed=3), ofql.Args(seed=5)])
    members.make_agent(11, 3, ofql.Args(seed=3), torch.device("cpu"))
    assert cuda["state"].item() == 3
    swept = torch.get_rng_state()
    torch.manual_seed(3)
    ofql.make_agent(11, 3, ofql.Args(seed=3), torch.device("cpu"))
    assert torch.equal(swept, torch.get_rng_state())  # torch's: the first member's lone run's


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
