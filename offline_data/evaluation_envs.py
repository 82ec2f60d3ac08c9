"""The evaluation envs of a run, stepped together in one vector env (any source's; in worker processes where there are
cores for them); with --capture-video all in this process, the first one recorded, one episode per evaluation."""

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable

import gymnasium as gym
import mujoco

from offline_data.source import UserError
from offline_data.vector_envs import vector_env


def renderable(env: gym.Env) -> gym.Env:
    """`env`, rendering rgb_array frames off-screen (MUJOCO_GL=egl unless it is set) through the model's "track"
    camera where it has one (gymnasium's free camera does not follow the MuJoCo locomotion bodies)."""
    try:
        return set_up_rendering(env)
    except Exception:
        env.close()  # a refused env: its simulator and GL context too
        raise


def set_up_rendering(env: gym.Env) -> gym.Env:
    """renderable()'s work, which may refuse the env."""
    base = env.unwrapped
    if "rgb_array" not in base.metadata.get("render_modes", []):
        raise UserError(f"the evaluation env {base} cannot render frames (--capture-video)")
    os.environ.setdefault("MUJOCO_GL", "egl")  # read when the first frame is rendered
    base.render_mode = "rgb_array"
    renderer = getattr(base, "mujoco_renderer", None)
    # ogbench's manipulation envs render through mujoco.Renderer, whose GL backend MuJoCo chose when it was imported
    context = getattr(mujoco, "GLContext", None)
    manipulation = type(base).__module__.startswith("ogbench.manipspace")
    if manipulation and getattr(context, "__module__", "") == "mujoco.glfw" and not os.environ.get("DISPLAY"):
        raise UserError(
            f"{base} renders through the GL backend MuJoCo chose at import (GLFW, no display): set "
            "MUJOCO_GL=egl before starting"
        )
    if renderer is not None and mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_CAMERA, "track") >= 0:
        renderer.camera_id = mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    env.reset(seed=0)  # a frame now, not at the first evaluation, --eval-every steps later (each resets with its seed)
    try:
        env.render()
    except Exception as e:  # mujoco.FatalError: no OpenGL platform library for MUJOCO_GL's backend, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{base} cannot render a frame ({first}): set MUJOCO_GL to a backend this machine has") from e
    return env


@contextlib.contextmanager
def settotalmass_warning_dropped():
    """While an env is made: MuJoCo 4 warns that the compiler attribute settotalmass is deprecated, on stderr and in a
    MUJOCO_LOG.TXT it writes in the working folder, at each compile of a model that sets it, as gymnasium's
    half_cheetah.xml does (the model D4RL's halfcheetah data come from): every HalfCheetah env made. That warning is
    dropped; any other MuJoCo warning meanwhile goes to the handler that was set, else is a Python warning."""
    previous = mujoco.get_mju_user_warning()

    def warn(message: str) -> None:
        if "'settotalmass' is deprecated" in message:
            return
        if previous:
            previous(message)
        else:
            warnings.warn(f"MuJoCo: {message}", stacklevel=2)

    mujoco.set_mju_user_warning(warn)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def remove_model_file(env: gym.Env) -> gym.Env:
    """`env`, with the temporary MuJoCo model file it was built from deleted (the model is loaded by then): each of
    Gymnasium-Robotics' maze envs (Minari's AntMaze and PointMaze) writes <temp folder>/ant_maze<time>.xml, and each of
    OGBench's maze and soccer envs a tempfile.mkstemp <temp folder>/tmp*.xml, and neither ever deletes it. Only such
    files are removed: a model read from anywhere else (a package's own assets) is left alone."""
    base, temp_folder = env.unwrapped, os.path.realpath(tempfile.gettempdir())
    for path, prefix in (
        (getattr(base, "tmp_xml_file_path", None), "ant_maze"),
        (getattr(base, "fullpath", None), "tmp"),
    ):
        if (
            isinstance(path, str)
            and os.path.dirname(os.path.realpath(path)) == temp_folder
            and os.path.basename(path).startswith(prefix)
            and path.endswith(".xml")
        ):
            with contextlib.suppress(OSError):
                os.remove(path)
    return env


class EpisodeVideo(gym.wrappers.RecordVideo):
    """gymnasium's RecordVideo of a renderable env, one episode at a time: the first that starts after record(name),
    to <folder>/<name>.mp4, written as soon as it ends (RecordVideo waits for the next reset). No frame is rendered
    outside the recorded episodes."""

    def __init__(self, env: gym.Env, folder: str):
        self.next_name = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RecordVideo warns about a folder that exists (a resumed run's)
            super().__init__(renderable(env), folder, episode_trigger=lambda _: self.next_name is not None)

    def record(self, name: str) -> str:
        """Record the next episode; returns the path of its video."""
        self.next_name = name
        return os.path.join(self.video_folder, f"{name}.mp4")

    def start_recording(self, video_name: str) -> None:
        super().start_recording(self.next_name)
        self.next_name = None

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.recording and (terminated or truncated):
            self.stop_recording()
        return obs, reward, terminated, truncated, info


def evaluation_envs(
    make_env: Callable[[], gym.Env] | list | None, num_envs: int, video_folder: str | None = None, workers=None
):
    """`num_envs` evaluation envs in one vector env (None without an env): in worker processes where the machine has
    the cores for them (vector_env; `workers`: their number, None: default_workers); with `video_folder`, all in a
    SyncVectorEnv in this process, the first an EpisodeVideo into it (`workers` unused). `make_env`: one factory,
    or one per member (a domain sweep's MemberSources: the envs member-major, num_envs / len(make_env) of each)."""
    if make_env is None:
        if video_folder:
            raise UserError("--capture-video needs an evaluation environment, and this dataset has none")
        return None
    makers = make_env if isinstance(make_env, list) else [make_env]
    makers = [f for f in makers for _ in range(num_envs // len(makers))]
    if video_folder is None:
        return vector_env(makers, workers)
    return gym.vector.SyncVectorEnv([lambda: EpisodeVideo(makers[0](), video_folder)] + makers[1:])
