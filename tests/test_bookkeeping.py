"""bookkeeping.py and the sweep's members, directly: every training flag is refused by --resume, summary.json's final
and best evaluations on made-up evaluations, and a sweep's members drawing their own batches and their own noise."""

import dataclasses
import types

import pytest
import torch

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
