"""tools/render_policy.py: a checkpoint's policy rendered off-screen as a strip of frames, by the script whose
networks the checkpoint holds."""

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dql
import ofql
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import render_policy  # noqa: E402
from render_policy import UserError  # noqa: E402

FLAGS = ["--env-id", "hopper-medium-v2", "--total-steps", "5", "--eval-every", "5", "--eval-episodes", "1"]


@pytest.mark.parametrize("module", [ofql, dql])
def test_a_checkpoint_becomes_a_strip_of_frames_of_its_own_policy(tmp_path, hopper_file, monkeypatch, capsys, module):
    """A D4RL checkpoint: the whole episode, scored; cut by --max-steps, its partial return gets no normalized score."""
    monkeypatch.chdir(tmp_path)
    run_dir = os.path.dirname(module.train(module.parse_args(FLAGS + ["--dataset-path", hopper_file, "--save-model"])))
    args = render_policy.Args(os.path.join(run_dir, "checkpoint.pt"), out=str(tmp_path / "strip.png"), frames=4)
    args.gif, args.size = str(tmp_path / "episode.gif"), 64
    render_policy.main(args)
    strip = np.asarray(Image.open(args.out))
    assert strip.shape == (64, 4 * 64, 3)
    frames = strip.reshape(64, 4, 64, 3).transpose(1, 0, 2, 3)
    assert np.abs(frames[0].astype(float) - frames[-1]).mean() > 1  # the hopper moved
    assert Image.open(args.gif).n_frames > 1
    state = render_policy.bookkeeping.load_checkpoint(args.checkpoint)
    assert render_policy.load_agent(state, 11, 3)[0] is module  # DQL's and OFQL's Agent fields are the same
    assert ", normalized score " in capsys.readouterr().out  # the whole episode
    args.max_steps, args.gif = 2, None
    render_policy.main(args)
    steps, rest = capsys.readouterr().out.split(" steps, return ")
    assert steps == "2" and "normalized" not in rest and Image.open(args.out).size == (4 * 64, 64)


def test_an_ogbench_checkpoint_renders_its_task_and_reports_no_normalized_score(tmp_path, monkeypatch):
    """As a user runs it (a process of its own, MUJOCO_GL unset): an OGBench manipulation id's env comes from ogbench
    (not D4RL's factory) and renders through MuJoCo's own renderer; no normalized score (OGBench scores successes, and
    --max-steps cut the episode); bad input is one line, exit 2."""
    pytest.importorskip("ogbench")
    from test_ogbench_datasets import CUBE, record_ogbench

    monkeypatch.chdir(tmp_path)
    data = record_ogbench(CUBE, tmp_path / "data", steps=(20, 20))
    flags = ["--env-id", CUBE, "--dataset-path", data, "--total-steps", "5", "--eval-every", "5", "--save-model"]
    run_dir = os.path.dirname(ofql.train(ofql.parse_args(flags + ["--eval-episodes", "1", "--num-candidates", "1"])))
    out = str(tmp_path / "strip.png")
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    cmd = [sys.executable, render_policy.__file__, checkpoint, "--out", out, "--frames", "3"]
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY")}
    run = lambda *flags: subprocess.run(cmd + list(flags), env=env, capture_output=True, text=True, timeout=600)
    proc = run("--size", "48", "--max-steps", "6")  # a cut episode: 7 frames, not ogbench's 500 steps
    if proc.returncode and "EGL" in proc.stderr:
        pytest.skip(f"off-screen rendering is not available here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("6 steps, return ") and proc.stdout.strip().endswith(out)
    strip = np.asarray(Image.open(out))
    assert strip.shape == (48, 3 * 48, 3) and strip.std() > 1  # frames of the scene, not a blank image
    bad = run("--max-steps", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "render_policy.py: error: --frames, --size and --max-steps must be at least 1"
    )


def test_a_minari_checkpoint_renders_in_its_datasets_env_scored_by_its_references(tmp_path, monkeypatch, capsys):
    """A Minari id's env and score come with its dataset (its evaluation env's spec, here 4-step episodes, and its
    reference returns), not from the id."""
    pytest.importorskip("minari")
    import gymnasium as gym
    from test_minari_datasets import rollout, write_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)
    env = gym.make("Hopper-v5")
    episodes = [rollout(env, seed, max_steps=20) for seed in (0, 1, 4)]
    short = gym.make("Hopper-v5", max_episode_steps=4)  # its evaluation env: episodes of 4 steps at most
    write_dataset("mujoco/hopper/medium-v0", env, episodes, eval_env=short, ref_min=-20.0, ref_max=30.0)
    flags = ["--env-id", "mujoco/hopper/medium-v0", "--total-steps", "5", "--eval-every", "5", "--save-model"]
    run_dir = os.path.dirname(ofql.train(ofql.parse_args(flags + ["--eval-episodes", "1", "--num-candidates", "1"])))
    args = render_policy.Args(os.path.join(run_dir, "checkpoint.pt"), out=str(tmp_path / "strip.png"), frames=3)
    args.size = 48
    capsys.readouterr()  # the training's output
    render_policy.main(args)
    steps, rest = capsys.readouterr().out.split(" steps, return ")
    total, score = map(float, re.match(r"(-?[\d.]+), normalized score (-?[\d.]+): ", rest).groups())
    assert score == pytest.approx(100 * (total + 20) / 50, abs=0.11)  # both printed to one decimal
    assert Image.open(args.out).size == (3 * 48, 48) and steps == "4"


def test_bad_input_is_refused_before_rendering_and_names_the_file(tmp_path, monkeypatch):
    """A file that is not a checkpoint, or holds no run's config: one line that names it. --num-candidates below 1
    (0 was the run's own, -3 a RuntimeError) and an --out or --gif that PIL cannot write (a ValueError after the whole
    episode): refused before any rendering."""
    text, tensors = tmp_path / "notes.txt", tmp_path / "tensors.pt"
    text.write_text("not a checkpoint")
    torch.save({"actor": torch.zeros(1)}, tensors)
    for path, message in ((text, "not a checkpoint "), (tensors, r"not a checkpoint of .* \(no config in it\)")):
        with pytest.raises(UserError, match=f"^{re.escape(str(path))}: {message}"):
            render_policy.main(render_policy.Args(str(path), out=str(tmp_path / "strip.png")))
    monkeypatch.setattr(render_policy, "render_episode", lambda args: pytest.fail("rendered"))
    args = render_policy.Args(str(tensors), out=str(tmp_path / "strip.png"))
    for changes, message in [
        (dict(num_candidates=0), "--num-candidates must be at least 1"),
        (dict(num_candidates=-3), "--num-candidates must be at least 1"),
        (dict(seed=-1), r"--seed must be in \[0, 4294967295\]"),  # gymnasium's traceback
        (dict(out="x.foo"), "--out x.foo: not a file type PIL can write"),
        (dict(gif="y.txt"), "--gif y.txt: not a file type PIL can write animated"),
    ]:
        with pytest.raises(UserError, match=message):
            render_policy.main(dataclasses.replace(args, **changes))


def test_the_policy_acts_with_the_runs_candidates_from_its_first_evaluation_seed(tmp_path, hopper_file, monkeypatch):
    """By default the run's --num-candidates and its first evaluation episode's seed (seed + 100); the flags given
    replace them."""
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--total-steps", "5", "--eval-every", "5"]
    flags += ["--eval-episodes", "1", "--save-model", "--num-candidates", "3", "--seed", "7"]
    run_dir = os.path.dirname(ofql.train(ofql.parse_args(flags)))
    candidates, seeds, select, renderable = [], [], ofql.select_action, render_policy.offline_data.renderable
    monkeypatch.setattr(ofql, "select_action", lambda agent, obs, k: candidates.append(k) or select(agent, obs, k))

    def recorded(env):
        env = renderable(env)
        reset = env.reset
        env.reset = lambda **kw: seeds.append(kw.get("seed")) or reset(**kw)
        return env

    monkeypatch.setattr(render_policy.offline_data, "renderable", recorded)
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    args = render_policy.Args(checkpoint, out=str(tmp_path / "s.png"), frames=2, size=32, max_steps=3)
    render_policy.main(args)
    assert candidates == [3, 3, 3] and seeds == [107]
    candidates.clear()
    render_policy.main(dataclasses.replace(args, num_candidates=1, seed=5))
    assert candidates == [1, 1, 1] and seeds == [107, 5]
