"""d4rl_compat: D4RL's offline datasets and evaluation environments on today's MuJoCo bindings, without the `d4rl`
package (it needs mujoco_py); also Minari datasets. What `import d4rl` is to CORL's scripts, for ofql.py, dql.py and
fql.py: same files, cache, `qlearning_dataset` semantics, reference returns and (rebuilt) evaluation envs as D4RL.

Public API:
    load(env_id, dataset_path=None, reward_mode="raw") -> DataSource   transitions, shapes, eval env and references
    DataSource.normalized_score(returns)                                 Eq. 18 with the source's reference returns
    DataSource.limitation                                                what a run on it cannot report ('' if nothing)
    normalized_score(env_id, returns)                                    Eq. 18 for a D4RL id
    eval_env_factory(env_id)                                             the evaluation env of a D4RL id (a factory)
    preset_key(env_id)                                                   the D4RL id whose presets an id uses
    UserError, DatasetError                                              reported by the scripts as one line, exit 2
    check_flags, run_folder, check_resume, trim_log, replaced_when_written, how_to_continue
                                                                         the scripts' flags and run files, checked
    rng_state, set_rng_state, load_checkpoint                           checkpoints that load without running code
    stop_signals, Interrupted                                            SIGINT and SIGTERM as a clean stop
    evaluation_envs, EpisodeVideo, renderable                           the evaluation envs, the first one recorded
"""

import contextlib
import functools
import glob
import hashlib
import json
import math
import os
import pickle
import random
import re
import shlex
import signal
import tempfile
import urllib.error
import urllib.request
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import h5py
import mujoco
import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "DataSource",
    "DatasetError",
    "UserError",
    "eval_env_factory",
    "is_minari_id",
    "load",
    "normalized_score",
    "preset_key",
]


class UserError(Exception):
    """A problem with the command line or the data: the scripts report it as one line, exit code 2."""


class DatasetError(UserError):
    """A dataset that cannot be downloaded, read or used."""


# ---------------------------------------------------------------------------------------------------------------
# The public API: a dataset with its evaluation env and reference returns, by D4RL id, local D4RL file or Minari id
# ---------------------------------------------------------------------------------------------------------------
class DataSource(NamedTuple):
    data: dict[str, np.ndarray]  # the keys of qlearning_dataset, rewards transformed
    path: str
    obs_dim: int
    act_dim: int
    make_env: Callable[[], gym.Env] | None  # one evaluation env, observations as in the data; None: not available
    eval_env_id: str | None
    ref_min: float | None  # the reference returns of the normalized score; None: raw returns only
    ref_max: float | None

    @property
    def limitation(self) -> str:
        """What a run on this data cannot report, as a note for the user ('' when nothing is missing)."""
        if self.make_env is None:
            return "no evaluation environment: this run trains and checkpoints, and reports no score"
        return (
            ""
            if self.ref_min is not None
            else "no reference returns: evaluations report raw returns, no normalized score"
        )

    def normalized_score(self, episode_returns: np.ndarray) -> np.ndarray | None:
        """100 (R - ref_min) / (ref_max - ref_min) (Eq. 18 for D4RL); None where the data have no reference returns."""
        if self.ref_min is None or self.ref_max is None:
            return None
        return 100.0 * (episode_returns - self.ref_min) / (self.ref_max - self.ref_min)


def load(env_id: str, dataset_path: str | None = None, reward_mode: str = "raw") -> DataSource:
    """A D4RL id (the D4RL file, downloaded to d4rl's cache if missing, or `dataset_path`, a local file in its
    layout) or a Minari id; rewards transformed by `reward_mode` (see transform_rewards)."""
    if is_minari_id(env_id):
        if dataset_path is not None:
            raise UserError(f"--dataset-path is for D4RL-layout files; {env_id} is read from $MINARI_DATASETS_PATH")
        source = load_minari(env_id)
        source.data["rewards"] = transform_rewards(source.data["rewards"], reward_mode)
        return source
    d = domain_of(env_id)
    return DataSource(
        load_d4rl(env_id, dataset_path, reward_mode),
        dataset_path or dataset_cache_path(env_id),
        d.obs_dim,
        d.act_dim,
        eval_env_factory(env_id),
        d.eval_env,
        d.ref_min,
        d.ref_max,
    )


def normalized_score(env_id: str, episode_return):
    """D4RL normalized score (Eq. 18) of a D4RL id: 0 = random policy, 100 = D4RL's expert."""
    d = domain_of(env_id)
    return 100.0 * (episode_return - d.ref_min) / (d.ref_max - d.ref_min)


def preset_key(env_id: str) -> str | None:
    """The D4RL id whose presets `env_id` uses: itself, or for a Minari id the D4RL id of the same task family;
    None for an id this module does not know."""
    key = MINARI_PRESET_KEYS.get(env_id) if is_minari_id(env_id) else env_id
    return key if key in DATASETS else None


def is_minari_id(env_id: str) -> bool:
    return "/" in env_id  # 'mujoco/hopper/medium-v0'; D4RL ids have no '/'


# ---------------------------------------------------------------------------------------------------------------
# The scripts' run files and flags, checked as the data are: one UserError line instead of a traceback or lost data
# ---------------------------------------------------------------------------------------------------------------
FLAG_RANGES = {  # the range of each number flag of ofql.py, dql.py and fql.py (any other: a finite number)
    "(0, inf)": "total_steps batch_size eval_every eval_episodes num_candidates log_every num_backup_actions ema_every "
    "diffusion_steps flow_steps actor_lr critic_lr time_sigma",
    "[0, inf)": "grad_norm eta alpha ema_start adaptive_weight_power",
    "[0, 4294967295]": "seed",  # numpy's seeds
    "[0, 1]": "gamma tau ema_decay flow_ratio",
}
# the flags a --resume may change (the length, logging, evaluation, the device), and what config.json adds to them
RESUMABLE = set(
    "resume total_steps exp_name cuda cuda_graph capture_video track wandb_project_name wandb_entity save_model "
    "eval_every eval_episodes num_candidates log_every device training_step torch".split()
)


def check_flags(flags: dict) -> None:
    """Every number flag finite and within its FLAG_RANGES range (at start-up, before anything is read or written)."""
    for name, value in flags.items():
        if type(value) not in (int, float):  # bool, str, None: tyro has checked them
            continue
        bound = next((b for b, names in FLAG_RANGES.items() if name in names.split()), "(-inf, inf)")
        low, high = (float(x) for x in bound[1:-1].split(","))
        if not (
            (type(value) is int or math.isfinite(value))
            and (low < value or low == value and bound[0] == "[")
            and value <= high
        ):
            raise UserError(f"--{name.replace('_', '-')} must be a number in {bound}, not {value}")


@contextlib.contextmanager
def run_folder(name: str, resume: str | None):
    """The folder of a run, around what may fail before the run writes anything (loading the data): with `resume`,
    the checkpoint's; else runs/<name>, made at once (a place where runs/ cannot be made fails before any data are
    loaded) and by this run only (when another run took the name, as one started in the same second does: a suffix
    _1, _2, ...); removed again if what it surrounds fails."""
    if resume:
        if not os.path.isfile(resume):
            raise UserError(f"cannot resume from {resume}: no such file")
        yield os.path.dirname(resume) or "."
        return
    for run_dir in (os.path.join("runs", name) + (f"_{i}" if i else "") for i in range(1_000_000)):
        try:
            os.makedirs(run_dir)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot make the run folder {run_dir} in {os.getcwd()} ({e.strerror or e})") from None
    try:
        yield run_dir
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(run_dir)  # only ever removes an empty folder
        raise


def check_resume(config: dict, saved: dict, step: int) -> None:
    """A run with `config` (config.json's keys) may continue a checkpoint at `step` of a run with `saved`, or a
    UserError names each flag (but RESUMABLE) that differs, and a --total-steps below `step`."""
    keys = sorted((config.keys() | saved.keys()) - RESUMABLE)
    diff = [
        f"--{k.replace('_', '-')} {config.get(k)} (was {saved.get(k)})" for k in keys if config.get(k) != saved.get(k)
    ]
    if config.get("total_steps", step) < step:
        diff.append(f"--total-steps {config['total_steps']} (below its step, {step})")
    if diff:
        raise UserError(f"its run had other flags: {', '.join(diff)}")


def trim_log(path: str, step: int) -> None:
    """Keep the records of a metrics.jsonl up to `step`, and drop a partial last line (a kill, a full disk)."""
    if os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(kept)


@contextlib.contextmanager
def replaced_when_written(path: str):
    """Yields a temporary path next to `path` to write; renamed to `path` once written, removed if the write fails
    or is interrupted (Ctrl-C): `path` holds the old file or the whole new one, never part of one."""
    tmp = path + ".tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def how_to_continue(argv: list[str], run_dir: str, args, stopped_at: int | None = None) -> str:
    """After SIGINT or SIGTERM: the step the run stopped at (`stopped_at`: saved, with --save-model) or else its last
    checkpoint (in `run_dir`, else --resume's), and the command line `argv` (sys.argv) with --resume pointing at it;
    or why there is none."""
    last = next((p for p in (os.path.join(run_dir, "checkpoint.pt"), args.resume) if p and os.path.isfile(p)), None)
    stop = "" if stopped_at is None else f"stopped at step {stopped_at}; "
    unsaved = "" if args.save_model else " (--save-model is off: add it to keep a checkpoint next time)"
    if last is None:
        return stop + ("nothing was saved" if stop else "no checkpoint was written") + unsaved
    saved = "saved in" if stop and args.save_model else "nothing was saved since" if stop else "last checkpoint"
    flags = [a for a, before in zip(argv[1:], argv) if not a.startswith("--resume") and before != "--resume"]
    return f"{stop}{saved} {last}{unsaved}; continue with: {shlex.join(['python', argv[0], *flags, '--resume', last])}"


# ---------------------------------------------------------------------------------------------------------------
# SIGINT (Ctrl-C) and SIGTERM (a cluster's pre-emption or time limit): a stop at the end of a step, which is saved
# ---------------------------------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM: str() is the line to print, `exit_code` 128 + the signal's number (130,
    143), as for a process that the signal ended."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


def raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum=signum)


def stop_on_sigterm() -> None:
    """SIGTERM raises Interrupted as SIGINT raises KeyboardInterrupt (by default it ends the process without a word)."""
    signal.signal(signal.SIGTERM, raise_interrupted)


@contextlib.contextmanager
def stop_signals(how_to_continue: Callable[[], str] = str):
    """While active, a first SIGINT or SIGTERM only appends its number to the yielded list, which a training loop
    reads once per step, to save that step and stop after it; a second one raises Interrupted at once. A
    KeyboardInterrupt from inside leaves as an Interrupted whose line is how_to_continue()."""
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        if received:
            raise_interrupted(signum, frame)
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    except KeyboardInterrupt as e:
        raise Interrupted(how_to_continue(), getattr(e, "signum", signal.SIGINT)) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints that load without running code: torch.load(weights_only=True) builds tensors and plain values only
# ---------------------------------------------------------------------------------------------------------------
# the types that checkpoints of the previous format hold besides tensors and plain values, and no others: numpy's
# random state (now a list) and the torch version in the config (now a str)
PREVIOUS_FORMAT_TYPES = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    torch.torch_version.TorchVersion,
]


def rng_state() -> dict:
    """The states of Python's, numpy's, torch's and CUDA's generators, as tuples, lists, numbers and tensors."""
    kind, keys, *rest = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), *rest),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_checkpoint(path: str) -> dict:
    """A checkpoint's contents, read with weights_only=True (and the few types of the previous format): a file
    whose pickle holds anything else, which could run code as it is built, is refused before it is built."""
    try:
        with torch.serialization.safe_globals(PREVIOUS_FORMAT_TYPES):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(e))
        what = next((g for g in found.groups() if g), "?") if found else str(e).splitlines()[0]
        raise UserError(f"it holds a Python object ({what}) that only an unsafe load could build; not loaded") from None


# ---------------------------------------------------------------------------------------------------------------
# D4RL data, without the `d4rl` package (it needs mujoco_py). Same files, cache and semantics as d4rl.
# ---------------------------------------------------------------------------------------------------------------
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/"


class Domain(NamedTuple):
    ref_min: float  # D4RL reference returns (d4rl/infos.py) for the normalized score, Eq. 18
    ref_max: float
    obs_dim: int
    act_dim: int
    eval_env: str  # the evaluation environment (see eval_env_factory)


DOMAINS = {
    "halfcheetah": Domain(-280.178953, 12135.0, 17, 6, "HalfCheetah-v4"),
    "hopper": Domain(-20.272305, 3234.3, 11, 3, "Hopper-v4"),
    "walker2d": Domain(1.629008, 4592.3, 17, 6, "Walker2d-v4"),
    "antmaze": Domain(0.0, 1.0, 29, 8, "D4RL's antmaze-v2 env on Gymnasium-Robotics AntMaze-v5"),
    "kitchen": Domain(0.0, 4.0, 60, 9, "D4RL's kitchen-v0 env on Gymnasium-Robotics' Franka kitchen model"),
    "pen": Domain(96.262799, 3076.8331017826877, 45, 24, "D4RL's pen-v1 env on Gymnasium-Robotics AdroitHandPen-v1"),
}


def _antmaze(maze: str, multistart: bool, multigoal: bool) -> str:
    return f"ant_maze_v2/Ant_maze_{maze}_noisy_multistart_{multistart}_multigoal_{multigoal}_sparse_fixed.hdf5"


# id: (path under D4RL_URL, size in bytes, sha256), size and sha256 from tensorflow_datasets' D4RL checksums.tsv
# files (none are published there for antmaze-medium-play-v2 and Kitchen: those downloads are not verified)
DATASETS = {
    "halfcheetah-medium-v2": (
        "gym_mujoco_v2/halfcheetah_medium-v2.hdf5",
        237727262,
        "41324e8487a9556d8cfa4538827f8937f4d63dae3030825ebc9f3a726ed08ca0",
    ),
    "halfcheetah-medium-replay-v2": (
        "gym_mujoco_v2/halfcheetah_medium_replay-v2.hdf5",
        59448533,
        "48d494a4770c11f48260736dec090b78bdca8375647ed4d24bfa5b6610c7f683",
    ),
    "halfcheetah-medium-expert-v2": (
        "gym_mujoco_v2/halfcheetah_medium_expert-v2.hdf5",
        474567252,
        "015db75dae5bbe8e94029b71fa0bafc2073365df0c94744e71031189f3f79c06",
    ),
    "hopper-medium-v2": (
        "gym_mujoco_v2/hopper_medium-v2.hdf5",
        152756557,
        "5bdf1bc4a713c82941de44633df669b36c89850b652a25985166796d25cf71a0",
    ),
    "hopper-medium-replay-v2": (
        "gym_mujoco_v2/hopper_medium_replay-v2.hdf5",
        75854457,
        "e121c5f7c9857a307baa9edc6a2c3b48e85fedb9ac316ecddd0f48ca7ef4e39b",
    ),
    "hopper-medium-expert-v2": (
        "gym_mujoco_v2/hopper_medium_expert-v2.hdf5",
        304537315,
        "9d51ad87f8c905be3880d84c6140bcdb7fbf39a19e046a237f238ba34fec9e26",
    ),
    "walker2d-medium-v2": (
        "gym_mujoco_v2/walker2d_medium-v2.hdf5",
        232254996,
        "cf00f43add04c17fdfc2958dd581dea0851b2e5bedbe6fda073758a8f841aeda",
    ),
    "walker2d-medium-replay-v2": (
        "gym_mujoco_v2/walker2d_medium_replay-v2.hdf5",
        86323963,
        "e75de96a4f77acf7d4e0d6fdf0d7ccb177c26c44bb4388e4fd99f543ccfa18db",
    ),
    "walker2d-medium-expert-v2": (
        "gym_mujoco_v2/walker2d_medium_expert-v2.hdf5",
        462197079,
        "6b8d7f868c45bbaedf460be797fb7271b46dee6ebe45fe7a64319f2005b59a04",
    ),
    "antmaze-medium-play-v2": (_antmaze("big-maze", True, False), None, None),
    "antmaze-medium-diverse-v2": (
        _antmaze("big-maze", True, True),
        231095166,
        "ad9dcbac05d1f8744a7a216083f513662f43f64f28a4a5eb225e9811902dfae7",
    ),
    "antmaze-large-play-v2": (
        _antmaze("hardest-maze", True, False),
        230880653,
        "6d353df2457829925d7f9d4b0215587469908bd57478ea76f16417cfa944f471",
    ),
    "antmaze-large-diverse-v2": (
        _antmaze("hardest-maze", True, True),
        231183710,
        "84f775eb7956ea9cc766704710dc520a8ab357adc7522ade47f556f0e335e284",
    ),
    "kitchen-mixed-v0": ("kitchen/kitchen_microwave_kettle_bottomburner_light-v0.hdf5", None, None),
    "kitchen-partial-v0": ("kitchen/kitchen_microwave_kettle_light_slider-v0.hdf5", None, None),
    "pen-human-v1": (
        "hand_dapg_v1/pen-human-v1.hdf5",
        2040573,
        "209e345b2150b633f30a11612612c60f49e941f127ce6c4dc0cd790501c46f9f",
    ),
    "pen-cloned-v1": (
        "hand_dapg_v1/pen-cloned-v1.hdf5",
        155074191,
        "6d1a982cee1950501bedebbddedbcbb377e6284d379986c83abac8a6c0be0c22",
    ),
}
MAX_EPISODE_STEPS = {"antmaze": 1000, "kitchen": 280, "pen": 100}  # only used by files without `timeouts`


def domain_of(env_id: str) -> Domain:
    return DOMAINS[env_id.split("-")[0]]


def dataset_cache_path(env_id: str) -> str:
    """Where d4rl keeps the file: $D4RL_DATASET_DIR (default ~/.d4rl/datasets) / the URL's file name."""
    cache_dir = os.path.expanduser(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets"))
    return os.path.join(cache_dir, os.path.basename(DATASETS[env_id][0]))


def download(url: str, path: str, size: int | None, sha256: str | None) -> None:
    """Stream `url` to a temporary file next to `path`, check size (the known one, else the server's Content-Length)
    and sha256, then rename: no partial file is ever left under the final name."""
    tmp, digest = f"{path}.part{os.getpid()}", hashlib.sha256()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"cannot create the dataset folder {os.path.dirname(path)} ({e.strerror or e}); set D4RL_DATASET_DIR to "
            "a writable folder, or pass --dataset-path FILE"
        ) from None
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            length = response.headers.get("Content-Length")
            size = size or (int(length) if length and length.isdigit() else None)
            with tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = os.path.getsize(tmp)
        if size is not None and got != size:
            raise DatasetError(f"download of {url} is incomplete ({got} of {size} bytes); run again to retry")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DatasetError(f"sha256 of {url} is {digest.hexdigest()}, expected {sha256}; run again to retry")
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(
            f"could not download {url} ({e}); download it by hand to {path}, or pass --dataset-path FILE"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_downloads(path: str) -> None:
    """Delete the `<path>.part<pid>` files of downloads whose process is gone (killed: its `finally` never ran)."""
    for part in glob.glob(glob.escape(path) + ".part*"):
        pid = part.rsplit(".part", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.remove(part)
            except OSError:
                pass  # it exists (another user's): still downloading


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_d4rl_hdf5(path: str, env_id: str, cached: bool = False) -> dict[str, np.ndarray]:
    """The arrays of a D4RL-layout hdf5 file, checked against the environment's sizes; a file that cannot be used is
    one DatasetError that says why (`cached`: a file of the download cache, which may be deleted and downloaded again;
    a --dataset-path file may be the user's only copy)."""
    if os.path.isdir(path):
        raise DatasetError(f"{path} is a directory; --dataset-path takes an hdf5 file in the D4RL layout")
    if not os.path.exists(path):
        raise DatasetError(f"dataset file {path} does not exist")
    try:
        with open(path, "rb") as f:
            signature = f.read(8)
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror or e})") from None
    keys, data = ("observations", "actions", "rewards", "terminals", "timeouts"), {}
    try:
        with h5py.File(path, "r") as f:
            for key in keys:
                if key in f and not isinstance(f[key], h5py.Dataset):
                    raise DatasetError(f"{path}: '{key}' is a {type(f[key]).__name__}, not an array")
                if key in f:
                    data[key] = np.asarray(f[key][()])
    except DatasetError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError, ValueError, TypeError on damaged files
        what = "is truncated" if "truncated file" in str(e) else "is a damaged hdf5 file"
        what = (
            what if signature == HDF5_SIGNATURE or "file signature not found" not in str(e) else "is not an hdf5 file"
        )
        advice = "; delete it and download it again" if cached else ""
        raise DatasetError(f"{path} {what} ({type(e).__name__}: {e}){advice}".replace("\n", " ")) from None
    if missing := [k for k in keys[:4] if k not in data]:
        raise DatasetError(f"{path} lacks the D4RL key(s) {missing}")
    for key, x in data.items():
        if x.dtype != bool and not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise DatasetError(f"{path}: '{key}' holds {x.dtype} values, not numbers")
    d, n = domain_of(env_id), len(data["observations"]) if data["observations"].ndim else 0
    for key, shape in {"observations": (n, d.obs_dim), "actions": (n, d.act_dim)}.items():
        if data[key].shape != shape:
            raise DatasetError(f"{path}: '{key}' has shape {data[key].shape}, {env_id} needs {shape}")
    for key in ("rewards", "terminals", "timeouts"):
        if key in data:
            data[key] = data[key].reshape(-1)  # d4rl squeezes (N, 1) to (N,)
            if len(data[key]) != n:
                raise DatasetError(f"{path}: '{key}' has {len(data[key])} rows, 'observations' has {n}")
    if not all(np.isfinite(data[k]).all() for k in ("observations", "actions", "rewards")):
        raise DatasetError(f"{path} contains NaN or infinite values")
    for key in ("terminals", "timeouts"):
        if key in data and not np.isin(data[key], (0, 1)).all():
            raise DatasetError(f"{path}: '{key}' must hold 0/1 flags (it has {np.unique(data[key])[:5]}...)")
    # the policies act in [-1, 1]; small overshoots (real recordings have some) load as they are, another scale not
    if np.abs(data["actions"]).max(initial=0.0) > 1.5:
        raise DatasetError(
            f"{path}: actions outside [-1, 1] (max |a| = {np.abs(data['actions']).max():.4g}); "
            "the policies act in [-1, 1]: rescale the actions to it"
        )
    return data


def timeouts_by_step_count(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """d4rl's fallback for files without `timeouts`: an episode ends after max_episode_steps steps (counted
    exactly as d4rl counts them, including its restart at 1 after a terminal)."""
    timeouts, step = np.zeros(len(terminals), bool), 0
    for i, terminal in enumerate(terminals):
        timeouts[i] = step == max_episode_steps - 1
        step = 0 if timeouts[i] else (1 if terminal else step + 1)
    return timeouts


def qlearning_dataset(data: dict[str, np.ndarray], max_episode_steps: int = 1000) -> dict[str, np.ndarray]:
    """d4rl.qlearning_dataset, vectorised: next observation = observations[i + 1]; rows that end in a timeout
    and the last row are dropped; done = true terminals only."""
    n = len(data["observations"]) - 1
    timeouts = data["timeouts"] if "timeouts" in data else timeouts_by_step_count(data["terminals"], max_episode_steps)
    keep = ~timeouts[:n].astype(bool)
    return {
        "observations": data["observations"][:n][keep].astype(np.float32),
        "actions": data["actions"][:n][keep].astype(np.float32),
        "next_observations": data["observations"][1:][keep].astype(np.float32),
        "rewards": data["rewards"][:n][keep].astype(np.float32),
        "terminals": data["terminals"][:n][keep].astype(bool),
    }


def transform_rewards(rewards: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cql_antmaze":  # CQL's AntMaze rule, as in DQL: {0, 1} -> {-2, 2}
        return (rewards - 0.5) * 4.0
    if mode == "iql_antmaze":  # IQL's AntMaze rule, as in FQL: {0, 1} -> {-1, 0}
        return rewards - 1.0
    if mode == "standardize":  # DQL's "normalize" for Adroit
        return (rewards - rewards.mean()) / rewards.std()
    return rewards


def load_d4rl(env_id: str, dataset_path: str | None, reward_mode: str) -> dict[str, np.ndarray]:
    """qlearning_dataset of `dataset_path`, or of the D4RL file of `env_id` (downloaded if missing), rewards
    transformed."""
    if dataset_path is None:
        dataset_path = cache_path = dataset_cache_path(env_id)
        remove_stale_downloads(cache_path)
        if not os.path.exists(dataset_path):
            rel_path, size, sha256 = DATASETS[env_id]
            download(D4RL_URL + rel_path, dataset_path, size, sha256)
    else:
        cache_path = None
    domain = env_id.split("-")[0]
    data = read_d4rl_hdf5(dataset_path, env_id, cached=dataset_path == cache_path)
    data = qlearning_dataset(data, MAX_EPISODE_STEPS.get(domain, 1000))
    if len(data["rewards"]) == 0:
        raise DatasetError(f"{dataset_path} has no usable transitions")
    data["rewards"] = transform_rewards(data["rewards"], reward_mode)
    return data


# ---------------------------------------------------------------------------------------------------------------
# Minari datasets (optional: pip install minari gymnasium-robotics). Regenerated data with their own evaluation
# environments and reference returns: their scores are never comparable with D4RL scores.
# ---------------------------------------------------------------------------------------------------------------
# Minari id -> the D4RL id whose preset it uses (the same task family; not the same data)
MINARI_PRESET_KEYS = {
    **{
        f"mujoco/{env}/{ds}-v0": f"{env}-{ds}-v2"
        for env in ("halfcheetah", "hopper", "walker2d")
        for ds in ("medium", "medium-replay", "medium-expert")
    },
    **{
        f"D4RL/antmaze/{ds}-v1": f"antmaze-{ds}-v2"
        for ds in ("medium-play", "medium-diverse", "large-play", "large-diverse")
    },
    **{f"D4RL/kitchen/{ds}-v2": f"kitchen-{ds}-v0" for ds in ("mixed", "partial")},
    **{f"D4RL/pen/{ds}-v2": f"pen-{ds}-v1" for ds in ("human", "cloned")},
}


def flatten_observation(space: gym.Space, obs) -> np.ndarray:
    """One float32 vector per observation, for the stored data and the environment alike: a Dict concatenates its
    entries in sorted key order, recursively (gymnasium.spaces.flatten's order), e.g. AntMaze [achieved_goal(2),
    desired_goal(2), observation(27)]. Leading batch axes are kept, so a whole episode flattens in one call."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_observation(space[k], obs[k]) for k in sorted(space.keys())], axis=-1)
    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(f"cannot flatten a {type(space).__name__} observation space (only Box and Dict)")
    x, batch = np.asarray(obs, dtype=np.float32), np.ndim(obs) - len(space.shape)
    if batch < 0 or x.shape[batch:] != space.shape:
        raise DatasetError(f"an observation of shape {x.shape} does not fit the space {space}")
    return x.reshape(x.shape[:batch] + (-1,))


MINARI_DOWNLOAD_PACKAGE = "huggingface_hub"  # what minari.download_dataset imports (the extra minari[hf])


def open_minari(dataset_id: str):
    """The local dataset under $MINARI_DATASETS_PATH (default ~/.minari/datasets), downloaded first if missing."""
    try:
        import minari
        from minari.storage import get_dataset_path
    except ImportError:
        raise DatasetError(f"{dataset_id} is a Minari dataset: pip install minari gymnasium-robotics") from None
    if not os.path.isdir(os.path.join(get_dataset_path(dataset_id), "data")):
        try:
            minari.download_dataset(dataset_id)
        except ImportError as e:  # minari downloads from Hugging Face with the package of its [hf] extra
            raise DatasetError(
                f"downloading Minari dataset {dataset_id} needs {MINARI_DOWNLOAD_PACKAGE} (minari: {e}); "
                f"pip install 'minari[hf]=={getattr(minari, '__version__', '0.5.4')}' (as in requirements.txt)"
            ) from None
        except Exception as e:  # no network, unknown remote id
            raise DatasetError(
                f"Minari dataset {dataset_id} is not in {get_dataset_path()} and could not be downloaded "
                f"({type(e).__name__}: {e}); run `minari download {dataset_id}` where there is network "
                "access, and point MINARI_DATASETS_PATH at the folder that holds it".replace("\n", " ")
            ) from None
    return minari.load_dataset(dataset_id), str(get_dataset_path(dataset_id))


def load_minari(dataset_id: str) -> "DataSource":
    """Every step of every episode (next observations from the episode's own T + 1 observations, so nothing is lost
    at timeouts; terminals = terminations), the dataset's evaluation env with observations flattened as the data,
    and its reference returns (None where the dataset stores none)."""
    dataset, path = open_minari(dataset_id)
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if not (isinstance(act_space, gym.spaces.Box) and (act_space.low == -1).all() and (act_space.high == 1).all()):
        raise DatasetError(f"{dataset_id}: the policies act in [-1, 1]; the dataset's action space is {act_space}")
    parts = {k: [] for k in ("observations", "actions", "next_observations", "rewards", "terminals")}
    for episode in dataset.iterate_episodes():
        obs, steps = flatten_observation(obs_space, episode.observations), len(episode.rewards)
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32).reshape(steps, -1))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32).reshape(steps))
        parts["terminals"].append(np.asarray(episode.terminations, dtype=bool).reshape(steps))
    if not parts["rewards"]:
        raise DatasetError(f"Minari dataset {dataset_id} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    flat_space = gym.spaces.Box(-np.inf, np.inf, data["observations"].shape[1:], np.float32)

    def make_env() -> gym.Env:
        env = dataset.recover_environment(eval_env=True)
        return gym.wrappers.TransformObservation(env, lambda o: flatten_observation(obs_space, o), flat_space)

    fix_gymnasium_robotics_joints()
    env = make_env()  # built once now, so that a missing package or a mismatch shows before training
    obs_shape, spec = env.reset(seed=0)[0].shape, env.spec
    env.close()
    if obs_shape != flat_space.shape:
        raise DatasetError(
            f"{dataset_id}: its evaluation env gives observations of shape {obs_shape}, the data {flat_space.shape}"
        )
    meta = dataset.storage.metadata
    return DataSource(
        data,
        path,
        flat_space.shape[0],
        act_space.shape[0],
        make_env,
        spec.id,
        meta.get("ref_min_score"),
        meta.get("ref_max_score"),
    )


# ---------------------------------------------------------------------------------------------------------------
# Evaluation environments: gymnasium's MuJoCo envs, and D4RL's AntMaze, Kitchen and Adroit envs rebuilt on
# Gymnasium-Robotics (pip install gymnasium-robotics; D4RL's own need mujoco_py). Sources: Farama-Foundation/D4RL.
# ---------------------------------------------------------------------------------------------------------------
def make_mujoco_env(gym_id: str) -> gym.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium flags the v4 envs as out of date; v4 is the closest to D4RL's v2
        return gym.make(gym_id)


# AntMaze (d4rl/locomotion). The evaluation mazes, row i / column j as in maze_env.py (BIG_MAZE_TEST,
# HARDEST_MAZE_TEST): '#' wall, 'r' start cell, 'g' the evaluation goal cell. Their walls equal those of the data
# mazes BIG_MAZE and HARDEST_MAZE; 'play' and 'diverse' only differ in the data (locomotion/__init__.py).
ANTMAZE_MAZES = {
    "medium": ("########", "#r.##..#", "#..#...#", "##...###", "#..#...#", "#.#..#.#", "#...#.g#", "########"),
    "large": (
        "############",
        "#r...#.....#",
        "#.##.#.#.#.#",
        "#......#...#",
        "#.####.###.#",
        "#..#.#.....#",
        "##.#.#.#.###",
        "#..#...#.g.#",
        "############",
    ),
}
ANTMAZE_MAX_EPISODE_STEPS = 1000  # locomotion/__init__.py, the v2 medium and large ids
ANTMAZE_SCALING = 4.0  # maze_size_scaling, locomotion/__init__.py
ANTMAZE_GOAL_RADIUS = 0.5  # goal_reaching_env.py GoalReachingEnv.step: reward 1 and done when |xy - goal| <= 0.5


def antmaze_maze_name(env_id: str) -> str:
    """'antmaze-medium-play-v2' -> 'medium'."""
    parts = env_id.split("-")
    if parts[0] != "antmaze" or parts[-1] != "v2" or parts[1] not in ANTMAZE_MAZES:
        raise UserError(f"{env_id!r} is not a D4RL antmaze-*-v2 id")
    return parts[1]


def d4rl_ant_xml(path: str) -> None:
    """Write D4RL's ant model (locomotion/assets/ant.xml) to `path`, made from gymnasium's ant.xml, whose bodies,
    joints, geoms and contact parameters are the same. Two physical differences are undone: D4RL integrates with
    timestep 0.02 (gymnasium 0.01), and its motors have gear 1 and ctrlrange [-30, 30] (gymnasium gear 150 on
    [-1, 1])."""
    from gymnasium.envs.mujoco import ant_v5

    tree = ET.parse(os.path.join(os.path.dirname(ant_v5.__file__), "assets", "ant.xml"))
    tree.getroot().find("option").set("timestep", "0.02")
    for motor in tree.getroot().find("actuator"):
        motor.set("ctrlrange", "-30.0 30.0")
        motor.attrib.pop("gear", None)  # MuJoCo's default gear is 1
    tree.write(path)


class D4RLAntMazeEnv(gym.Env):
    """What D4RL's antmaze-*-v2 env gives the policy (ant.py AntMazeEnv with eval=True, expose_all_qpos=True,
    v2_resets=True, inside wrappers.py NormalizedBoxEnv), with Gymnasium-Robotics' AntMaze-v5 doing the physics.

    Frame: D4RL puts the origin at the centre of the start cell, cell (i, j) at (4j - 4, 4i - 4) for start cell (1, 1)
    (maze_env.py MazeEnv.__init__, _rowcol_to_xy); rows go towards +y. Gymnasium-Robotics centres the maze at the
    origin with row 0 at the top (+y) (maze_v4.py Maze.cell_rowcol_to_xy), the mirror image; it is given the rows in
    reverse order, which makes its world D4RL's shifted by `self.offset` (medium (-10, -10), large (-18, -12)).
    Observation (29,) float64: [qpos(15), qvel(14)] with qpos[:2] in D4RL's frame (ant.py AntEnv._get_obs with
    expose_all_qpos; goal_reaching_env.py _get_obs appends no goal when eval=True).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # dt = 0.1 s

    def __init__(self, maze: str):
        from gymnasium_robotics.envs.maze.ant_maze_v5 import AntMazeEnv

        rows = ANTMAZE_MAZES[maze]
        cells = {"#": 1, ".": 0, "r": "r", "g": "g"}  # Gymnasium-Robotics' map codes
        fd, xml_path = tempfile.mkstemp(suffix=".xml")
        os.close(fd)
        try:
            d4rl_ant_xml(xml_path)
            self.maze_env = AntMazeEnv(
                maze_map=[[cells[c] for c in row] for row in reversed(rows)],
                xml_file=xml_path,
                continuing_task=False,
                reset_target=False,
                include_cfrc_ext_in_observation=False,
            )
        finally:
            os.remove(xml_path)
        with contextlib.suppress(OSError):  # the maze model is loaded; Gymnasium-Robotics never deletes its file
            os.remove(self.maze_env.tmp_xml_file_path)
        self.ant = self.maze_env.ant_env  # gymnasium AntEnv-v5: frame_skip 5, so dt = 5 * 0.02 = 0.1 as in ant.py
        start = next((i, row.index("r")) for i, row in enumerate(rows) if "r" in row)
        goal_i, goal_j = next((i, row.index("g")) for i, row in enumerate(rows) if "g" in row)
        # world xy of the start cell's centre = D4RL's origin (maze_env.py _find_robot)
        self.offset = self.maze_env.maze.cell_rowcol_to_xy(np.array([len(rows) - 1 - start[0], start[1]]))
        self.goal_cell_xy = ANTMAZE_SCALING * np.array([goal_j - start[1], goal_i - start[0]], dtype=np.float64)
        self.max_episode_steps = ANTMAZE_MAX_EPISODE_STEPS
        self.goal = self.goal_cell_xy.copy()
        self.ctrl_low, self.ctrl_high = self.ant.model.actuator_ctrlrange.T.copy()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (29,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)  # wrappers.py NormalizedBoxEnv

    def sample_goal(self) -> np.ndarray:
        """maze_env.py MazeEnv.goal_sampler: the goal cell's centre + U(0, 0.25 s) + U(0, 0.5) * 0.25 s per axis
        (s = 4: an offset in [0, 1.5] m, never negative), floored at 0."""
        s = ANTMAZE_SCALING
        noise = self.np_random.uniform(0, 0.25 * s, 2) + self.np_random.uniform(0, 0.5, 2) * 0.25 * s
        return np.maximum(self.goal_cell_xy + noise, 0.0)

    def set_goal(self, goal_xy) -> None:
        self.goal = np.asarray(goal_xy, dtype=np.float64).copy()
        self.maze_env.goal = self.goal + self.offset  # Gymnasium-Robotics' goal: only drawn, never used here
        self.maze_env.update_target_site_pos()

    def set_state(self, qpos, qvel) -> None:
        """qpos (15,), qvel (14,) in D4RL's frame (like mujoco_env.MujocoEnv.set_state: qpos, qvel, then forward)."""
        qpos = np.array(qpos, dtype=np.float64)
        qpos[:2] += self.offset
        self.ant.set_state(qpos, np.array(qvel, dtype=np.float64))

    def get_state(self) -> tuple:
        qpos = self.ant.data.qpos.copy()
        qpos[:2] -= self.offset
        return qpos, self.ant.data.qvel.copy()

    def _obs(self) -> np.ndarray:
        return np.concatenate(self.get_state())

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """ant.py AntMazeEnv.reset with v2_resets: a new goal every episode, then AntEnv.reset_model: qpos0 (torso at
        the origin, z 0.75, joints 0) + U(-0.1, 0.1) on all 15 qpos, N(0, 0.1^2) on all 14 qvel."""
        super().reset(seed=seed)
        self.maze_env.reset(seed=seed)
        self.set_goal(self.sample_goal())
        qpos = self.ant.model.qpos0.copy()  # free joint: the torso's xml position (0, 0, 0.75), in D4RL's frame
        qpos += self.np_random.uniform(-0.1, 0.1, self.ant.model.nq)
        qvel = 0.1 * self.np_random.standard_normal(self.ant.model.nv)
        self.set_state(qpos, qvel)
        return self._obs(), {"goal": self.goal.copy()}

    def step(self, action):
        """wrappers.py NormalizedBoxEnv.step scales [-1, 1] to the motors' [-30, 30] and clips; ant.py AntEnv.step runs
        5 MuJoCo steps (its own reward and done are discarded by goal_reaching_env.py GoalReachingEnv.step, which pays
        1 within 0.5 m of the goal and, with eval=True, ends the episode there)."""
        action = np.asarray(action, dtype=np.float64)
        ctrl = np.clip(
            self.ctrl_low + (action + 1.0) * 0.5 * (self.ctrl_high - self.ctrl_low), self.ctrl_low, self.ctrl_high
        )
        self.maze_env.step(ctrl)
        obs = self._obs()
        success = bool(np.linalg.norm(obs[:2] - self.goal) <= ANTMAZE_GOAL_RADIUS)
        return obs, float(success), success, False, {"success": success, "goal": self.goal.copy()}

    def render(self):
        return self.ant.mujoco_renderer.render("rgb_array")

    def close(self):
        self.maze_env.close()


def make_antmaze_env(env_id: str) -> gym.Env:
    """The evaluation env of a D4RL antmaze-*-v2 id: episodes end on reaching the goal (return 1) or after
    max_episode_steps (return 0), so the D4RL normalized score (ref min 0, max 1, infos.py) is 100 * success."""
    env = D4RLAntMazeEnv(antmaze_maze_name(env_id))
    return gym.wrappers.TimeLimit(env, max_episode_steps=env.max_episode_steps)


# Kitchen: d4rl/kitchen/kitchen_envs.py (KitchenBase) on d4rl/kitchen/adept_envs/franka/kitchen_multitask_v0.py
# (KitchenV0) and .../franka/robot/franka_robot.py.
KITCHEN_TASKS = {  # TASK_ELEMENTS of the class each id is registered with (d4rl/kitchen/__init__.py)
    "kitchen-partial-v0": ("microwave", "kettle", "light switch", "slide cabinet"),
    "kitchen-mixed-v0": ("microwave", "kettle", "bottom burner", "light switch"),
}
# task: (its entries of obs[:30] = the 30 qpos, its goal); OBS_ELEMENT_INDICES / OBS_ELEMENT_GOALS of kitchen_envs.py
KITCHEN_ELEMENTS = {
    "bottom burner": ([11, 12], [-0.88, -0.01]),
    "light switch": ([17, 18], [-0.69, -0.05]),
    "slide cabinet": ([19], [0.37]),
    "microwave": ([22], [-0.75]),
    "kettle": ([23, 24, 25, 26, 27, 28, 29], [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),
}
KITCHEN_THRESHOLD = 0.3  # BONUS_THRESH: a task is done when ||obs[indices] - goal|| < 0.3
KITCHEN_MAX_STEPS = 280  # max_episode_steps of every kitchen id
# KitchenV0.init_qpos: the reset state (qvel = 0, the model has no key_qvel); the same numbers as Gymnasium-Robotics'
# KitchenEnv. Order: 9 robot joints, 4 x (burner knob, burner), light switch, light, slide cabinet, 2 hinge doors,
# microwave, kettle (x, y, z, qw, qx, qy, qz).
KITCHEN_INIT_QPOS = np.array(
    [
        1.48388023e-01,
        -1.76848573e00,
        1.84390296e00,
        -2.47685760e00,
        2.60252026e-01,
        7.12533105e-01,
        1.59515394e00,
        4.79267505e-02,
        3.71350919e-02,
        -2.66279850e-04,
        -5.18043486e-05,
        3.12877220e-05,
        -4.51199853e-05,
        -3.90842156e-06,
        -4.22629655e-05,
        6.28065475e-05,
        4.04984708e-05,
        4.62730939e-04,
        -2.26906415e-04,
        -4.65501369e-04,
        -6.44129196e-03,
        -1.77048263e-03,
        1.08009684e-03,
        -2.69397440e-01,
        3.50383255e-01,
        1.61944683e00,
        1.00618764e00,
        4.06395120e-03,
        -6.62095997e-03,
        -2.68278933e-04,
    ]
)
# Observation noise: uniform(-1, 1) * robot_noise_ratio (0.1 in KitchenV0) * pos_noise_amp of qpos0..qpos29 in
# franka_config.xml; franka_robot.py adds it to the robot AND the object positions.
KITCHEN_QPOS_NOISE = 0.1 * np.array(
    [0.1] * 9 + [0.005] * 2 + [0.0005] * 6 + [0.005] * 3 + [0.1] * 3 + [0.005] * 3 + [0.1] * 3 + [0.005]
)
KITCHEN_ACTION_SCALE = 2.0  # KitchenV0.act_amp (act_mid = 0): the action in [-1, 1] is a joint velocity in [-2, 2]
KITCHEN_MODEL = "../assets/kitchen_franka/kitchen_assets/kitchen_env_model.xml"  # FrankaKitchen-v1's model


def kitchen_goal(tasks) -> np.ndarray:
    """obs[30:60]: KitchenBase._get_task_goal, a 30-vector with each task's goal at its indices, zeros elsewhere."""
    goal = np.zeros(30)
    for task in tasks:
        indices, value = KITCHEN_ELEMENTS[task]
        goal[indices] = value
    return goal


def kitchen_completed(obs: np.ndarray, tasks) -> list[str]:
    """The tasks whose entries of the (noisy) observation are within KITCHEN_THRESHOLD of their goal."""
    return [
        task
        for task in tasks
        if np.linalg.norm(obs[KITCHEN_ELEMENTS[task][0]] - KITCHEN_ELEMENTS[task][1]) < KITCHEN_THRESHOLD
    ]


class D4RLKitchenEnv(gym.Env):
    """D4RL's kitchen env on Gymnasium-Robotics' Franka kitchen model (FrankaKitchen-v1's xml and FrankaRobot).

    Observation (60): the 30 qpos with D4RL's observation noise (9 robot joints, then the 21 object qpos), then the
    30-vector goal (kitchen_goal). No velocities. Action (9): joint velocities in [-1, 1], scaled by 2; D4RL's
    Robot_VelAct turns them into position targets from the last OBSERVED (noisy) robot joints, clipped to the joint
    bounds of franka_config.xml, then simulates 40 steps of 2 ms. Reward: the number of tasks completed at this step,
    judged on the noisy observation; a completed task is removed; terminated once all tasks are done.
    FrankaKitchen-v1 itself is not used: it differs from D4RL (dict observation with velocities, noise 10x smaller and
    misaligned, reward on the true state) and, with mujoco 4.0.0, its constructor fails an assertion.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12.5}  # dt = 40 x 2 ms

    def __init__(self, tasks, obs_noise: bool = True):
        from gymnasium_robotics.envs.franka_kitchen.franka_env import FrankaRobot

        self.robot = FrankaRobot(model_path=KITCHEN_MODEL)  # loads the model and the bounds of franka_config.xml
        self.model, self.data = self.robot.model, self.robot.data
        self.tasks = tuple(tasks)
        self.goal = kitchen_goal(self.tasks)
        self.noise = KITCHEN_QPOS_NOISE * float(obs_noise)
        self.remaining = set(self.tasks)
        self._robot_qpos_obs = self.data.qpos[:9].copy()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (60,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (9,), np.float32)

    def _observe(self) -> np.ndarray:
        qpos = self.data.qpos[:30] + self.noise * self.np_random.uniform(-1.0, 1.0, 30)
        self._robot_qpos_obs = qpos[:9].copy()  # franka_robot.py: the controller integrates from the last observation
        return np.concatenate([qpos, self.goal])

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, robot_qpos_obs=None) -> None:
        """Set the simulator state; `robot_qpos_obs`: the robot joints the controller starts from (D4RL: the last
        observation's obs[:9]; default: the true joints)."""
        self.data.qpos[:], self.data.qvel[:] = qpos, qvel
        mujoco.mj_forward(self.model, self.data)
        self._robot_qpos_obs = np.array(qpos[:9] if robot_qpos_obs is None else robot_qpos_obs, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.set_state(KITCHEN_INIT_QPOS, np.zeros(self.model.nv))  # KitchenV0.reset_model: deterministic state
        self.remaining = set(self.tasks)
        return self._observe(), {"tasks_to_complete": sorted(self.remaining)}

    def step(self, action):
        velocity = KITCHEN_ACTION_SCALE * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        velocity = np.clip(velocity, self.robot.robot_vel_bound[:9, 0], self.robot.robot_vel_bound[:9, 1])
        target = self._robot_qpos_obs + velocity * self.robot.dt  # dt = 40 x 0.002 s
        target = np.clip(target, self.robot.robot_pos_bound[:9, 0], self.robot.robot_pos_bound[:9, 1])
        self.robot.do_simulation(target, self.robot.frame_skip)
        obs = self._observe()
        completed = kitchen_completed(obs, self.remaining)  # REMOVE_TASKS_WHEN_COMPLETE = True
        self.remaining -= set(completed)
        info = {"tasks_to_complete": sorted(self.remaining), "step_task_completions": sorted(completed)}
        return obs, float(len(completed)), not self.remaining, False, info  # TERMINATE_ON_TASK_COMPLETE = True

    def render(self):
        return self.robot.mujoco_renderer.render("rgb_array")


def make_kitchen_env(env_id: str) -> gym.Env:
    """D4RL's evaluation env of kitchen-{partial,mixed}-v0: 280 steps, ends early once all 4 tasks are done."""
    if env_id not in KITCHEN_TASKS:
        raise UserError(f"unknown kitchen id {env_id!r}; supported: {', '.join(KITCHEN_TASKS)}")
    return gym.wrappers.TimeLimit(D4RLKitchenEnv(KITCHEN_TASKS[env_id]), KITCHEN_MAX_STEPS)


# Pen: d4rl/hand_manipulation_suite/pen_v0.py (PenEnvV0), registered in .../__init__.py.
PEN_IDS = ("pen-human-v1", "pen-cloned-v1")
PEN_MAX_STEPS = 100  # MAX_STEPS['pen'] of the v1 ids (Gymnasium-Robotics registers 200)
PEN_DROP_HEIGHT = 0.075  # PenEnvV0.step: -5 reward and done=True when the pen's z is below 0.075


class D4RLPenTermination(gym.Wrapper):
    """AdroitHandPen-v1 already has D4RL's observation, dense reward, actions, frame skip and reset; it never
    terminates. D4RL's PenEnvV0 ends the episode when the pen is dropped (obs[26] = the pen's z)."""

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        return obs, reward, bool(obs[26] < PEN_DROP_HEIGHT), truncated, info


def make_pen_env(env_id: str) -> gym.Env:
    """D4RL's evaluation env of pen-{human,cloned}-v1: 100 steps, ends early when the pen is dropped."""
    if env_id not in PEN_IDS:
        raise UserError(f"unknown pen id {env_id!r}; supported: {', '.join(PEN_IDS)}")
    import gymnasium_robotics  # noqa: F401  (registers AdroitHandPen-v1)

    return D4RLPenTermination(gym.make("AdroitHandPen-v1", max_episode_steps=PEN_MAX_STEPS, reward_type="dense"))


def fix_gymnasium_robotics_joints() -> None:
    """gymnasium-robotics 1.4.2 reads joints with `assert model.jnt_type[j] in (mjtJoint.mjJNT_HINGE, ...)`; under
    mujoco 4.0 a numpy integer never equals a mjtJoint member that way, and FrankaKitchen-v1 (the env of Minari's
    Kitchen datasets) fails to build. Where that is so, swap its two joint readers for ones that compare plain ints."""
    try:
        from gymnasium_robotics.utils import mujoco_utils
    except ImportError:
        return
    if np.int32(int(mujoco.mjtJoint.mjJNT_HINGE)) in (mujoco.mjtJoint.mjJNT_HINGE,):
        return
    widths = {
        "qpos": {int(mujoco.mjtJoint.mjJNT_FREE): 7, int(mujoco.mjtJoint.mjJNT_BALL): 4},
        "qvel": {int(mujoco.mjtJoint.mjJNT_FREE): 6, int(mujoco.mjtJoint.mjJNT_BALL): 4},
    }

    def reader(field: str, address: str):
        def read(model, data, name):
            joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if joint == -1:
                raise ValueError(f"Joint with name '{name}' is not part of the model!")
            start = int(getattr(model, address)[joint])
            return getattr(data, field)[start : start + widths[field].get(int(model.jnt_type[joint]), 1)].copy()

        return read

    mujoco_utils.get_joint_qpos = reader("qpos", "jnt_qposadr")
    mujoco_utils.get_joint_qvel = reader("qvel", "jnt_dofadr")


def eval_env_factory(env_id: str) -> Callable[[], gym.Env] | None:
    """A zero-argument factory of the evaluation env of a D4RL id, giving what D4RL's env gave the policy."""
    domain, makers = (
        env_id.split("-")[0],
        {"antmaze": make_antmaze_env, "kitchen": make_kitchen_env, "pen": make_pen_env},
    )
    if domain in ("halfcheetah", "hopper", "walker2d"):
        return functools.partial(make_mujoco_env, domain_of(env_id).eval_env)
    try:
        import gymnasium_robotics  # noqa: F401
    except ImportError:
        return None
    return functools.partial(makers[domain], env_id) if domain in makers else None


# ---------------------------------------------------------------------------------------------------------------
# The evaluation envs of a run, stepped together; with --capture-video the first one is recorded
# ---------------------------------------------------------------------------------------------------------------
def renderable(env: gym.Env) -> gym.Env:
    """`env`, rendering rgb_array frames off-screen (MUJOCO_GL=egl unless it is set) through the model's "track"
    camera where it has one (gymnasium's free camera does not follow the MuJoCo locomotion bodies)."""
    base = env.unwrapped
    if "rgb_array" not in base.metadata.get("render_modes", []):
        raise UserError(f"the evaluation env {base} cannot render frames (--capture-video)")
    os.environ.setdefault("MUJOCO_GL", "egl")  # read when the first frame is rendered
    base.render_mode = "rgb_array"
    renderer = getattr(base, "mujoco_renderer", None)
    if renderer is not None and mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_CAMERA, "track") >= 0:
        renderer.camera_id = mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
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


def evaluation_envs(make_env: Callable[[], gym.Env] | None, num_envs: int, video_folder: str | None = None):
    """`num_envs` evaluation envs in a SyncVectorEnv (None without an env), the first an EpisodeVideo into
    `video_folder` if one is given."""
    if make_env is None:
        if video_folder:
            raise UserError("--capture-video needs an evaluation environment, and this dataset has none")
        return None
    first = make_env if video_folder is None else lambda: EpisodeVideo(make_env(), video_folder)
    return gym.vector.SyncVectorEnv([first] + [make_env] * (num_envs - 1))
