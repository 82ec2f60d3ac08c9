"""The scripts' run bookkeeping, checked as the data are (one UserError line instead of a traceback or lost data):
the ranges of the number flags, the run folder, what --resume may change, the metrics log, atomic writes, the command
that continues a run after SIGINT or SIGTERM, those signals as a clean stop, checkpoints that load without running
code, and the run's summary.json."""

import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
import re
import shlex
import signal
from collections.abc import Callable

import numpy as np
import torch

from offline_data.source import UserError

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


def save_checkpoint(run_dir: str, agent, step: int, evals: list, elapsed: float, config: dict) -> None:
    """checkpoint.pt of a run: the state of each network and optimizer of `agent` (a script's Agent), the step, the
    evaluations, the seconds spent, the random states and the config, as tensors and plain values only, so that
    torch.load(weights_only=True) reads it; written whole or not at all."""
    state = {f.name: getattr(agent, f.name).state_dict() for f in dataclasses.fields(agent)}
    extra = {"step": step, "evals": evals, "elapsed": elapsed, "rng": rng_state(), "config": config}
    with replaced_when_written(os.path.join(run_dir, "checkpoint.pt")) as tmp:
        torch.save({**state, **extra}, tmp)


def resume(path: str, agent, config: dict) -> tuple[int, list, float]:
    """Load a checkpoint into `agent` for a run with `config` (check_resume), restore the random states and drop the
    metrics log's records after its step. -> (next step, evaluations, seconds spent); any failure (a missing, empty,
    truncated or unsafe file, another run's) is one UserError line."""
    try:
        state = load_checkpoint(path)
        check_resume(config, state["config"], state["step"])
        for f in dataclasses.fields(agent):
            getattr(agent, f.name).load_state_dict(state[f.name])
    except Exception as e:
        raise UserError(f"cannot resume from {path}: {e if isinstance(e, UserError) else repr(e)}") from None
    set_rng_state(state["rng"])
    trim_log(os.path.join(os.path.dirname(path), "metrics.jsonl"), state["step"])
    return state["step"] + 1, state["evals"], state["elapsed"]


# ---------------------------------------------------------------------------------------------------------------
# summary.json
# ---------------------------------------------------------------------------------------------------------------
def summarize(script: str, args, source, evals: list, wall_clock: float, steps_per_sec: float | None) -> dict:
    """summary.json of a run of `script` (its path) with flags `args`: the last and the best evaluation (best by
    success where there is one, then by return, which the score of the other sources increases with), the speed, and
    every evaluation."""
    from offline_data import source_kind  # the package, which imports this module

    last, best = (evals[-1], max(evals, key=lambda e: (e.get("success", 0.0), e["return"]))) if evals else ({}, {})
    algorithm = os.path.basename(script).removesuffix(".py")
    summary = dict(algorithm=algorithm, env_id=args.env_id, source=source_kind(args.env_id), dataset=source.path)
    summary.update(eval_env=source.eval_env_id, seed=args.seed, steps=args.total_steps, wall_clock_sec=wall_clock)
    summary.update(train_steps_per_sec=steps_per_sec, num_candidates=args.num_candidates)
    summary.update({"eval_episodes": args.eval_episodes, **{f"final_{k}": last.get(k) for k in ("score", "score_std")}})
    summary.update({f"best_{k}": best.get(k) for k in ("score", "score_std", "step")})
    summary.update(final_return=last.get("return"), best_return=best.get("return"))
    summary.update(final_success=last.get("success"), best_success=best.get("success"))
    summary.update(final_policy_score=last.get("policy_score"), decision_rate=last.get("decision_rate"))
    return {**summary, "evaluations": evals}
