"""The evaluation video's camera: offline_data.renderable renders through the model's "track" camera (which follows the
hopper), not gymnasium's free camera. Off-screen rendering (MUJOCO_GL=egl, as renderable sets it); skipped where this
machine cannot render at all."""

import importlib.util
import os
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import offline_data


def hopper(**render_kwargs) -> gym.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Hopper-v4 is "out of date"
        return gym.make("Hopper-v4", **render_kwargs)


def frame_after_steps(env: gym.Env, steps: int = 5) -> np.ndarray:
    """The frame after `steps` steps of the same seeded reset and actions (the same state in every env)."""
    env.reset(seed=0)
    for action in np.random.default_rng(0).uniform(-1, 1, (steps, 3)):
        env.step(action)
    return env.render()


def test_the_video_renders_through_the_track_camera(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    free = hopper(render_mode="rgb_array", camera_id=-1)
    try:
        free_frame = frame_after_steps(free)
    except Exception as e:  # no EGL (or other off-screen backend) here
        pytest.skip(f"off-screen rendering is not available here ({type(e).__name__}: {e})")
    finally:
        free.close()
    track = hopper(render_mode="rgb_array", camera_name="track")
    video = offline_data.renderable(offline_data.eval_env_factory("hopper-medium-v2")())
    try:
        model = video.unwrapped.model
        assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track") == 0  # the hopper's one camera
        track_frame, video_frame = frame_after_steps(track), frame_after_steps(video)
    finally:
        track.close()
        video.close()
    assert video_frame.shape == track_frame.shape == free_frame.shape and video_frame.std() > 0
    assert np.abs(track_frame.astype(float) - free_frame).mean() > 1  # the two cameras see different pictures
    np.testing.assert_array_equal(video_frame, track_frame)


def test_an_ogbench_manipulation_env_renders_or_names_the_setting_it_needs(monkeypatch):
    """ogbench's manipulation envs render through mujoco.Renderer, whose GL backend MuJoCo picks when first imported:
    in a process that imported it with GLFW and has no display, renderable refuses at once (the scripts' --capture-video
    before training, not a crash at the first evaluation) naming MUJOCO_GL=egl; otherwise the env renders frames."""
    pytest.importorskip("ogbench")
    from test_ogbench_datasets import CUBE

    monkeypatch.delenv("DISPLAY", raising=False)
    if importlib.util.find_spec("gymnasium_robotics"):  # AntMaze and Kitchen render through gymnasium: never refused
        offline_data.renderable(offline_data.eval_env_factory("antmaze-umaze-v2")()).close()
    env = offline_data.ogbench_datasets.make_ogbench_env(CUBE)
    try:
        if mujoco.GLContext.__module__ == "mujoco.glfw":
            with pytest.raises(offline_data.UserError, match="set MUJOCO_GL=egl before starting"):
                offline_data.renderable(env)
        else:
            offline_data.renderable(env).reset(seed=0)
            assert env.render().std() > 0
    finally:
        env.close()


def test_an_env_that_cannot_render_is_refused_at_once_not_at_the_first_evaluation(monkeypatch):
    """A MUJOCO_GL backend this machine lacks (mujoco.FatalError at the first frame): renderable renders a frame when
    it is called, before training, and names the setting; the error is one line."""
    env = offline_data.eval_env_factory("hopper-medium-v2")()

    def no_gl(*_):
        raise mujoco.FatalError("an OpenGL platform library has not been loaded into this process")

    monkeypatch.setattr(type(env.unwrapped), "render", no_gl)
    closed, close = [], env.close
    monkeypatch.setattr(env, "close", lambda: closed.append(True) or close())
    with pytest.raises(offline_data.UserError, match="cannot render a frame .an OpenGL platform.* set MUJOCO_GL"):
        offline_data.renderable(env)
    assert closed  # the refused env is closed (its simulator, its GL context), not left to the process's end
