"""tools/render_policy.py: a checkpoint's policy rendered off-screen as a strip of frames, by the script whose
networks the checkpoint holds."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

import dql
import ofql
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import render_policy  # noqa: E402

FLAGS = ["--env-id", "hopper-medium-v2", "--total-steps", "5", "--eval-every", "5", "--eval-episodes", "1"]


@pytest.mark.parametrize("module", [ofql, dql])
def test_a_checkpoint_becomes_a_strip_of_frames_of_its_own_policy(tmp_path, hopper_file, monkeypatch, module):
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
