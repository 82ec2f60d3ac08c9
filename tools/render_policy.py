"""Look at a trained policy: one evaluation episode of a checkpoint's policy (ofql.py, dql.py or fql.py, whichever
script's networks it holds), rendered off-screen, as a strip of frames (PNG) and optionally a GIF of the episode.

    python tools/render_policy.py runs/<run_name>/checkpoint.pt --out policy.png --gif policy.gif
"""

import dataclasses
import functools
import importlib
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import tyro
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MUJOCO_GL", "egl")  # off-screen frames; MuJoCo's own renderer reads it when first imported
import bookkeeping  # noqa: E402
import offline_data  # noqa: E402
from offline_data import UserError  # noqa: E402
from offline_data.ogbench_datasets import make_ogbench_env  # noqa: E402


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str]
    """a checkpoint.pt written with --save-model"""
    out: str = "policy.png"
    """the PNG strip to write"""
    frames: int = 8
    """the number of frames in the strip, evenly spaced over the episode"""
    size: int = 240
    """the side of each frame, in pixels"""
    seed: int | None = None
    """the episode's seed; None: the run's first evaluation episode's, its --seed + 100"""
    num_candidates: int | None = None
    """candidate actions per state (at least 1), one picked by softmax(Q); None: the run's --num-candidates"""
    gif: str | None = None
    """if given, the whole episode is also written there as a GIF (every 4th frame)"""
    max_steps: int | None = None
    """stop the episode after this many steps (None: where the env ends it); a cut episode has no normalized score"""


def load_agent(state: dict, obs_dim: int, act_dim: int):
    """(script module, its Agent with the checkpoint's networks) for the script whose networks match the checkpoint."""
    for name in ("ofql", "dql", "fql"):
        module = importlib.import_module(name)
        fields = {f.name for f in dataclasses.fields(module.Args)}
        args = module.Args(**{k: v for k, v in state["config"].items() if k in fields})
        agent = module.make_agent(obs_dim, act_dim, args, torch.device("cpu"))
        try:
            for net in module.Agent.__dataclass_fields__:
                getattr(agent, net).load_state_dict(state[net])
        except (RuntimeError, KeyError, ValueError):  # another script's networks
            continue
        return module, agent
    raise UserError("its networks are none of ofql.py's, dql.py's or fql.py's")


def read_checkpoint(path: str) -> dict:
    """The checkpoint's contents; one that cannot be read, or holds no run's config, is a UserError naming it."""
    try:
        state = bookkeeping.load_checkpoint(path)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"{path}: not a checkpoint of ofql.py, dql.py or fql.py (no config in it)")
    return state


def render_episode(args: Args) -> tuple[list[np.ndarray], float, float | None]:
    """The frames (reset, then every step), the return and the normalized score of one episode (None if cut)."""
    state = read_checkpoint(args.checkpoint)
    config = state["config"]
    env_id = config["env_id"]  # a Minari id's env comes with its data; a D4RL or OGBench id's from the id
    minari, ogbench = offline_data.is_minari_id(env_id), offline_data.is_ogbench_id(env_id)
    gymnasium = offline_data.source_kind(env_id) == "gymnasium"  # your own data's env
    source = offline_data.load(env_id) if minari else None
    if minari:
        make = source.make_env
    elif ogbench:
        make = functools.partial(make_ogbench_env, env_id)
    elif gymnasium:
        make = functools.partial(offline_data.make_gymnasium_env, env_id)
    else:
        make = offline_data.eval_env_factory(env_id)
    if make is None:
        raise UserError(
            f"no evaluation env for {env_id} here (AntMaze, Kitchen and Adroit need gymnasium-robotics; an env of your "
            "own package, its registration, which render_policy.py does not import)"
        )
    env = offline_data.renderable(make())
    try:
        module, agent = load_agent(state, env.observation_space.shape[0], env.action_space.shape[0])
    except UserError as e:
        raise UserError(f"{args.checkpoint}: {e}") from None
    seed = config["seed"] + 100 if args.seed is None else args.seed
    torch.manual_seed(seed)
    k = config["num_candidates"] if args.num_candidates is None else args.num_candidates
    shrink = lambda frame: np.asarray(Image.fromarray(frame).resize((args.size, args.size), Image.LANCZOS))
    obs, _ = env.reset(seed=seed)
    frames, total, done = [shrink(env.render())], 0.0, False
    while not done and len(frames) - 1 < (args.max_steps or np.inf):
        action = module.select_action(agent, torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0), k)[0]
        obs, reward, terminated, truncated, _ = env.step(action.numpy())
        frames.append(shrink(env.render()))
        total, done = total + float(reward), terminated or truncated
    env.close()
    if not done:  # cut by --max-steps: a part of an episode has no normalized score
        return frames, total, None
    score = (
        source.normalized_score(np.array(total))
        if minari
        else None  # an OGBench task is scored by its success, your own data's env has no reference returns
        if ogbench or gymnasium
        else offline_data.normalized_score(env_id, total)
    )
    return frames, total, None if score is None else float(score)


def check_image_path(flag: str, path: str | None, animated: bool) -> None:
    """A UserError unless PIL writes the file type of `path`'s extension (as an animation, if `animated`)."""
    kind = Image.registered_extensions().get(os.path.splitext(path or "")[1].lower())
    if path is not None and kind not in (Image.SAVE_ALL if animated else Image.SAVE):
        example = "an animated .gif" if animated else "a .png"
        raise UserError(f"{flag} {path}: not a file type PIL can write{' animated' * animated} (give {example} file)")


def main(args: Args) -> None:
    if min(args.frames, args.size, 1 if args.max_steps is None else args.max_steps) < 1:
        raise UserError("--frames, --size and --max-steps must be at least 1")
    if args.num_candidates is not None and args.num_candidates < 1:
        raise UserError("--num-candidates must be at least 1 (default: the run's own)")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 4294967295] (gymnasium's and numpy's seeds), not {args.seed}")
    check_image_path("--out", args.out, animated=False)
    check_image_path("--gif", args.gif, animated=True)
    frames, total, score = render_episode(args)
    picked = [frames[i] for i in np.linspace(0, len(frames) - 1, args.frames).round().astype(int)]
    Image.fromarray(np.concatenate(picked, axis=1)).save(args.out)
    if args.gif:
        images = [Image.fromarray(f) for f in frames[::4]]
        images[0].save(args.gif, save_all=True, append_images=images[1:], duration=32, loop=0)
    scored = "" if score is None else f", normalized score {score:.1f}"
    print(f"{len(frames) - 1} steps, return {total:.1f}{scored}: {args.out}" + (f", {args.gif}" if args.gif else ""))


if __name__ == "__main__":
    try:
        main(tyro.cli(Args, description=__doc__))
    except (UserError, OSError) as e:
        print(f"render_policy.py: error: {e}", file=sys.stderr)
        sys.exit(2)
