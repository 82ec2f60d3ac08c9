"""The run bookkeeping of ofql.py, dql.py and fql.py, as `Runs`: the one owner of a run folder, for a script's lone run
or the N members of a sweep (sweep.py) trained together in one process. It checks the flags, makes the folders, and
writes into each: config.json, metrics.jsonl (the window means, the evaluations), checkpoint.pt (loads without running
code) and summary.json, and names the folder of the evaluation videos; it resumes runs, sends them to wandb, turns
SIGINT and SIGTERM into a clean stop that prints the command which continues, and stops a member whose numbers are no
longer finite.

    runs/<env_id>__<exp_name>__<seed>__<unix time>/   config.json  metrics.jsonl  checkpoint.pt  summary.json  videos/
    (a resumed run: config_resumed_at_<step>.json, summary_at_<step>.json if it had one; a sweep's: sweep.json)

A sweep's Agent holds its members stacked on a first dimension (every network parameter and every optimizer moment;
the optimizers' step counts are shared): member m's checkpoint is slice m of each, and it resumes with the script.
"""

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

import offline_data
from offline_data import UserError

FLAG_RANGES = {  # the range of each number flag of ofql.py, dql.py and fql.py (any other: a finite number)
    "(0, inf)": "total_steps batch_size eval_every eval_episodes num_candidates online_candidates log_every ema_every "
    "num_backup_actions diffusion_steps flow_steps actor_lr critic_lr time_sigma",
    "[0, inf)": "grad_norm eta alpha ema_start online_steps",
    "[0, 4294967295]": "seed",  # numpy's seeds
    "[0, 10]": "adaptive_weight_power",  # the weight 1/(e + 1e-3)^p up to 1e30: above 12, no float32 holds it
    "[0, 1]": "gamma tau ema_decay flow_ratio",
}
INT_MAX = 2**31 - 1  # the largest step count or size a flag may give
# the flags a --resume may change (the length, logging, evaluation, the device), and what config.json adds to them
RESUMABLE = set(
    "resume total_steps exp_name cuda cuda_graph compile capture_video track wandb_project_name wandb_entity "
    "save_model eval_every eval_episodes num_candidates log_every device training_step torch commit".split()
)
STARTED = {"config.json", "sweep.json", "metrics.jsonl", "videos"}  # a run folder before its first record
ONLINE_FLAGS = {"online_steps", "online_candidates", "balanced_sampling"}  # a resume may change them until it is online


def check_flags(flags: dict) -> None:
    """Every number flag finite and within its FLAG_RANGES range, and --exp-name a name that the run folder's name
    holds as one part (at start-up, before anything is read or written)."""
    if flags.get("resume") == "":  # an unset shell variable: not a fresh run of the defaults
        raise UserError("--resume needs a checkpoint file, not ''")
    name = flags.get("exp_name", "-")
    if not name or "/" in name or "__" in name:
        raise UserError(f"--exp-name must be a name without '/' or '__' (the run name's separator), not {name!r}")
    for name, value in flags.items():
        if type(value) not in (int, float):  # bool, str, None: tyro has checked them
            continue
        bound = next((b for b, names in FLAG_RANGES.items() if name in names.split()), "(-inf, inf)")
        low, high = (float(x) for x in bound[1:-1].split(","))
        finite = type(value) is int or math.isfinite(value)
        if not (finite and (low < value or low == value and bound[0] == "[") and value <= high):
            raise UserError(f"--{name.replace('_', '-')} must be a number in {bound}, not {value}")
        if type(value) is int and value > INT_MAX and name != "seed":  # steps and sizes (2^64 overflowed torch)
            raise UserError(f"--{name.replace('_', '-')} must be at most {INT_MAX}, not {value}")


def peek(argv: list[str] | None, args_type) -> tuple[str | None, dict]:
    """A script's first look at its command line (None: sys.argv's): --env-id as given (None without it), and with
    --resume the flags of the run at that checkpoint (its config, by args_type's fields), which become the defaults:
    a flag left out keeps the run's value (--total-steps, --eval-every, ...), not the script's. It reads no
    abbreviation and needs no value, so that tyro reports every bad flag. A file that is no checkpoint of these
    scripts is one UserError line; a path that is no file is Runs' to name."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--env-id", "--env_id", nargs="?")
    parser.add_argument("--resume", nargs="?")
    given = parser.parse_known_args(argv)[0]
    config = {}
    if given.resume and os.path.isfile(given.resume):
        try:
            state = load_checkpoint(given.resume)
            config = state.get("config") if type(state) is dict else None
        except UserError as e:
            raise UserError(f"cannot resume from {given.resume}: {e}") from None
        if type(config) is not dict:  # torch.save's file, not a checkpoint
            raise UserError(f"cannot resume from {given.resume}: not a checkpoint of ofql.py, dql.py or fql.py")
    defaults = field_defaults(args_type)
    as_given = lambda k, v: tuple(v) if isinstance(defaults[k], tuple) else v  # config.json's list of a tuple flag
    return given.env_id, {k: as_given(k, v) for k, v in config.items() if k in defaults and k != "resume"}


def field_defaults(args) -> dict:
    """The default of each flag of a script's Args (the class or an instance): what a run of older code, which had no
    such flag, ran with."""
    fields = dataclasses.fields(args) if dataclasses.is_dataclass(args) else ()
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def finished_at(run_dir: str, otherwise: int) -> int:
    """The step at which the run's summary.json was written (its offline and online steps), else `otherwise`."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        return int(summary["steps"]) + int(summary.get("online_steps", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return otherwise


def check_resume(config: dict, saved: dict, step: int) -> None:
    """A run with `config` (config.json's keys) may continue a checkpoint at `step` of a run with `saved`, or a
    UserError names each flag (but RESUMABLE) that differs, other data (their size), a --total-steps below `step` in
    the offline phase, and a changed --total-steps or ONLINE_FLAGS flag once the online phase has begun (before it,
    they may change: an offline run's checkpoint resumed with --online-steps is fine-tuned online)."""
    foreign = sorted(saved.keys() - config.keys() - RESUMABLE)
    if foreign:  # e.g. dql.py given an ofql.py checkpoint
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in foreign)
        raise UserError(f"its run had flags this script does not know ({flags}): a checkpoint of another script?")
    offline = step <= saved.get("total_steps", step)  # the checkpoint is of the offline phase
    keys = sorted((config.keys() | saved.keys()) - RESUMABLE - {"transitions"} - (ONLINE_FLAGS if offline else set()))
    shown = lambda value: "unset" if value is None else value  # a flag set to None: --dataset-path unset (was ...)
    begun = lambda k: "; its online phase had begun" if k in ONLINE_FLAGS else ""
    diff = [
        f"--{k.replace('_', '-')} {shown(config.get(k))} (was {shown(saved.get(k))}{begun(k)})"
        for k in keys
        if config.get(k) != saved.get(k)
    ]
    if config.get("transitions") != saved.get("transitions"):  # the same path, other data
        diff.append(f"a dataset of {config.get('transitions')} transitions (was {saved.get('transitions')})")
    if offline and config.get("total_steps", step) < step:
        diff.append(f"--total-steps {config['total_steps']} (below its step, {step})")
    elif not offline and config.get("total_steps") != saved["total_steps"]:
        diff.append(f"--total-steps {config['total_steps']} (was {saved['total_steps']}; its online phase had begun)")
    if diff:
        raise UserError(f"its run had other flags: {', '.join(diff)}")


def member_names(members: list) -> list[str]:
    """What tells each member of a sweep from the others: its dataset, experiment name (the weight's) and seed."""
    differ = [k for k in ("env_id", "exp_name", "seed") if len({getattr(a, k) for a in members}) > 1]
    return [" ".join(f"seed {a.seed}" if k == "seed" else str(getattr(a, k)) for k in differ) for a in members]


def recorded_flags(args) -> dict:
    """The flags as config.json records them (a tuple as a list): --dataset-path absolute."""
    return json.loads(
        json.dumps({**vars(args), "dataset_path": args.dataset_path and os.path.abspath(args.dataset_path)})
    )


def check_resume_flags(args, run_dir: str) -> None:
    """Before the data are loaded (a download, perhaps): `args` against the first config.json of the run in `run_dir`,
    where there is one, by check_resume's rule for flags (the data's size and the steps wait for the checkpoint)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return
    try:  # the data's size waits for the checkpoint
        known = {k: v for k, v in saved.items() if k != "transitions"}
        check_resume(recorded_flags(args), {**field_defaults(args), **known}, step=0)
    except UserError as e:
        raise UserError(f"cannot resume from {args.resume}: {e}") from None


def code_version(script: str) -> str | None:
    """The git commit of the checkout holding `script` (12 hex digits), + "+changes" when a tracked file differs from
    it: which code made a run's numbers. None outside a git checkout or without git."""
    git = ["git", "-C", os.path.dirname(os.path.abspath(script))]
    try:
        run = lambda *a: subprocess.run(git + list(a), capture_output=True, text=True, timeout=30, check=True).stdout
        commit, changes = run("rev-parse", "--short=12", "HEAD").strip(), run("status", "--porcelain", "-uno").strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + "+changes" * bool(changes)


def make_run_folder(name: str) -> str:
    """runs/<name>, made at once and by this run only (when another run took the name, as one started in the same
    second does: a suffix _1, _2, ...)."""
    for run_dir in (os.path.join("runs", name) + (f"_{i}" if i else "") for i in range(1_000_000)):
        try:
            os.makedirs(run_dir)
            return run_dir
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot make the run folder {run_dir} in {os.getcwd()} ({e.strerror or e})") from None


def open_log(run_dir: str):
    """run_dir's metrics.jsonl for appending, line-buffered, flock-ed while it is open: a second process that resumes
    the same run (a cluster's requeued duplicate) is refused in one line instead of writing its records twice."""
    f = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"another process is training the run in {run_dir} (its metrics.jsonl is locked)") from None
    except OSError:  # a file system without flock (some cluster mounts): the run goes on unguarded, as before
        pass
    return f


def run_folder(checkpoint: str) -> str:
    """The run folder of a --resume checkpoint: its own folder, or, for a link outside a run folder (no config.json
    beside it: a `latest.pt`), the folder it points into."""
    folder = os.path.dirname(checkpoint) or "."
    if os.path.islink(checkpoint) and not os.path.exists(os.path.join(folder, "config.json")):
        return os.path.dirname(os.path.realpath(checkpoint))
    return folder


def trim_log(path: str, step: int) -> None:
    """Cut a metrics.jsonl (whose steps never decrease) after its records up to `step`, and a partial last line (a
    kill, a full disk), in place: a kill meanwhile leaves the file whole or cut, never empty. A line that is not a
    record is one UserError line."""
    if not os.path.exists(path):
        return
    end = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                if not line.endswith(b"\n") or json.loads(line)["step"] > step:
                    break
            except (ValueError, KeyError, TypeError, RecursionError):
                raise UserError(f"{path}, line {number}, is not a record of a step: delete it to resume") from None
            end += len(line)
    os.truncate(path, end)


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


def keep_previous(path: str) -> None:
    """The file at `path` also as `path`.prev: a hard link (no copy), or a copy where the file system has none."""
    if os.path.exists(path + ".prev"):  # left by a save that was cut short
        os.remove(path + ".prev")
    try:
        os.link(path, path + ".prev")
    except OSError:
        shutil.copyfile(path, path + ".prev")


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


def continue_command(argv: list[str], checkpoints: list[str]) -> str:
    """The command line `argv` (sys.argv) with its --resume (and the paths after it) replaced by `checkpoints`."""
    kept, skipping = [], False
    for arg in argv[1:]:  # --resume A B ..., or --resume=A B ...
        skipping = arg == "--resume" or arg.startswith("--resume=") or (skipping and not arg.startswith("-"))
        if not skipping:
            kept.append(arg)
    return shlex.join(["python", argv[0], *kept, "--resume", *checkpoints])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints that load without running code: torch.load(weights_only=True) builds tensors and plain values only
# ---------------------------------------------------------------------------------------------------------------
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
    """Restore rng_state()'s states; CUDA's of as many devices as are visible now (training uses the first)."""
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])


def load_checkpoint(path: str) -> dict:
    """A checkpoint's contents, read with weights_only=True: a file whose pickle holds anything but tensors and plain
    values, which could run code as it is built, is refused before it is built."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise UserError("the file is empty") from None
    except OSError as e:  # a zip cut in the middle of its records: EINVAL
        if e.errno != errno.EINVAL:
            raise
        raise UserError("a truncated or damaged checkpoint") from None
    except (KeyError, RuntimeError) as e:  # not a zip of torch.save's (a text file: KeyError), or a cut one
        cut = "zip archive" in str(e) or "archive is corrupted" in str(e)
        raise UserError(
            "a truncated or damaged checkpoint" if cut else "not a checkpoint (not a file torch.save wrote)"
        ) from None
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e):  # not a pickle: another kind of file
            raise UserError("not a checkpoint (not a file torch.save wrote)") from None
        found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(e))
        what = next((g for g in found.groups() if g), "?") if found else str(e).splitlines()[0]
        raise UserError(f"it holds a Python object ({what}) that only an unsafe load could build; not loaded") from None


def check_agent(agent) -> None:
    """A script's Agent holds networks and optimizers only: what checkpoints save and sweeps stack (a learned tensor,
    say a temperature, lives in an nn.Module as a parameter)."""
    kinds = (torch.nn.Module, torch.optim.Optimizer)
    odd = [f.name for f in dataclasses.fields(agent) if not isinstance(getattr(agent, f.name), kinds)]
    if odd:
        raise UserError(f"the Agent's {', '.join(odd)}: an Agent holds nn.Modules and optimizers only (docs/sweep.md)")


def member_state(agent, member: int | None) -> dict:
    """The state dict of each network and optimizer of `agent` (a script's Agent); with `member`, that member's in a
    sweep's stacked Agent: slice `member` of every parameter and optimizer moment, the shared step counts as they are.
    """
    state = {}
    for f in dataclasses.fields(agent):
        part, s = getattr(agent, f.name), getattr(agent, f.name).state_dict()
        if member is not None and isinstance(part, torch.nn.Module):
            stacked = dict(part.named_parameters())
            s = {k: v[member].clone() if k in stacked else v for k, v in s.items()}
        elif member is not None:
            s["state"] = {
                i: {k: v if k == "step" else v[member].clone() for k, v in p.items()} for i, p in s["state"].items()
            }
        state[f.name] = s
    return state


def stacked_state(agent, states: list[dict]) -> dict:
    """The inverse of member_state: the members' states (a checkpoint's each) as the state of the stacked `agent`."""
    state = {}
    for f in dataclasses.fields(agent):
        part, parts = getattr(agent, f.name), [s[f.name] for s in states]
        if isinstance(part, torch.nn.Module):
            stacked = dict(part.named_parameters())
            state[f.name] = {k: torch.stack([p[k] for p in parts]) if k in stacked else v for k, v in parts[0].items()}
        else:
            moments = {
                i: {k: v if k == "step" else torch.stack([p["state"][i][k] for p in parts]) for k, v in s.items()}
                for i, s in parts[0]["state"].items()
            }
            state[f.name] = {**parts[0], "state": moments}
    return state


ONLINE_FIELDS = ("obs", "actions", "rewards", "next_obs", "dones")  # a script buffer's tensors (its Batch's fields)


def online_rows(buffer, env: int) -> dict:
    """Views of the transitions env `env` (a sweep's member `env`) has added to a script's OfflineBuffer in the online
    phase (its rows size + j * num_online_envs + env, j < added), by field; {} before any (or for a buffer without
    online rows: sweep.DomainBuffer)."""
    if getattr(buffer, "added", 0) == 0:
        return {}
    return {k: getattr(buffer, k)[buffer.size + env :: buffer.num_online_envs][: buffer.added] for k in ONLINE_FIELDS}


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM received while active are delivered when it ends (to the handlers of then): what runs
    inside is not cut (whichever thread the signal reaches, Python runs its handler in the main thread)."""
    held = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in held:
            signal.raise_signal(s)


# ---------------------------------------------------------------------------------------------------------------
# summary.json
# ---------------------------------------------------------------------------------------------------------------
def reported_success(evals: list[dict], last: int = 3) -> float | None:
    """The success rate OGBench's single-task results report (FQL, arXiv 2502.02538, Appendix B, "Training and
    evaluation": "following the official evaluation scheme (Park et al., 2025), we report the average success rates
    across the last three evaluation epochs (800K, 900K, and 1M for state-based tasks)"): the mean success of the
    `last` evaluations with the largest steps (of a shorter run, of those it has); None without evaluations, or where
    one of them has no success (a source not scored by success)."""
    chosen = sorted(evals, key=lambda e: e["step"])[-last:]
    if not chosen or any(e.get("success") is None for e in chosen):
        return None
    return float(np.mean([e["success"] for e in chosen]))


OFFLINE_KEYS = ("score", "score_std", "return", "success", "policy_score", "policy_return")


def summarize(script: str, args, source, evals: list, wall_clock: float, steps_per_sec: float | None) -> dict:
    """summary.json of a run of `script` (its path) with flags `args`: the last and the best evaluation (best by
    success where there is one, then by return, which the score of the other sources increases with), OGBench's
    reported success (reported_success), the speed, and every evaluation."""
    last, best = (evals[-1], max(evals, key=lambda e: (e.get("success", 0.0), e["return"]))) if evals else ({}, {})
    algorithm = os.path.basename(script).removesuffix(".py")
    summary = dict(algorithm=algorithm, env_id=args.env_id, source=offline_data.source_kind(args.env_id))
    summary.update(dataset=source.path, eval_env=source.eval_env_id, seed=args.seed, steps=args.total_steps)
    summary.update(wall_clock_sec=wall_clock, train_steps_per_sec=steps_per_sec, num_candidates=args.num_candidates)
    summary.update({"eval_episodes": args.eval_episodes, **{f"final_{k}": last.get(k) for k in ("score", "score_std")}})
    summary.update({f"best_{k}": best.get(k) for k in ("score", "score_std", "step")})
    summary.update(final_return=last.get("return"), best_return=best.get("return"))
    summary.update(final_success=last.get("success"), best_success=best.get("success"))
    summary.update(reported_success=reported_success(evals))  # OGBench's figure (docs/environments.md)
    summary.update(final_policy_score=last.get("policy_score"), final_policy_return=last.get("policy_return"))
    summary.update(decision_rate=last.get("decision_rate"))
    if getattr(args, "online_steps", 0):  # the offline phase's last evaluation (at --total-steps), and the online's
        offline = next((e for e in evals if e["step"] == args.total_steps), {})
        summary.update(online_steps=args.online_steps, **{f"offline_final_{k}": offline.get(k) for k in OFFLINE_KEYS})
    return {**summary, "evaluations": evals}


# ---------------------------------------------------------------------------------------------------------------
# The run folders of one training process
# ---------------------------------------------------------------------------------------------------------------
class Runs:
    """The runs one training process trains: a script's run (`members` = [its Args]) or a sweep's members (`sweep`:
    the sweep's name; their networks stacked in one Agent). Made before the data are loaded: checks every member's
    flags, then makes its folder (with --resume: its checkpoint's). The training loop calls, in this order: start(),
    stop_signals(), then log_episodes() at each online step, per logging window check_finite(), record_video() and
    log(), save() with --save-model; at the end finish() (or interrupted(), after a signal)."""

    latest = None  # the Runs made last in this process: main() words a stop outside the loop with it

    def __init__(self, script: str, members: list, sweep: str | None = None):
        for args in members:
            check_flags(vars(args))
        self.script, self.members, self.sweep, self.size = script, members, sweep, len(members)
        self.args, self.failed, self.video, self.train_time = members[0], {}, None, 0.0
        self.dirs, self.made = [], ([] if os.path.exists("runs") else ["runs"])  # what this run makes
        Runs.latest = self
        for args in members:
            if args.resume and not os.path.isfile(args.resume):
                self.remove_made()
                folder = "a folder; name its checkpoint.pt" if os.path.isdir(args.resume) else "no such file"
                raise UserError(f"cannot resume from {args.resume}: {folder}")
            if args.resume:
                self.dirs.append(run_folder(args.resume))
                try:
                    check_resume_flags(args, self.dirs[-1])
                except UserError:
                    self.remove_made()
                    raise
                continue
            try:
                self.dirs.append(
                    make_run_folder(
                        f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
                    )
                )
            except UserError:
                self.remove_made()
                raise
            self.made.append(self.dirs[-1])

    def remove_made(self) -> None:
        """The folders this process made, empty or with only what start() writes (a run that failed before its first
        record: out of memory in its first step, say), then runs/ if it made it and it is empty."""
        for run_dir in reversed(self.made):  # the run folders (and their videos/, made with the envs), then runs/
            log = os.path.join(run_dir, "metrics.jsonl")
            if os.path.isfile(log) and os.path.getsize(log) == 0 and set(os.listdir(run_dir)) <= STARTED:
                for name in STARTED - {"videos"}:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(run_dir, name))
            for folder in (os.path.join(run_dir, "videos"), run_dir):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only ever removes an empty folder

    @contextlib.contextmanager
    def removed_on_failure(self):
        """Around what may fail before the runs write anything (loading the data): the new folders removed if it
        fails."""
        try:
            yield
        except BaseException:
            self.remove_made()
            raise

    @property
    def video_folder(self) -> str | None:
        """Where --capture-video records (the first env's episode at each evaluation), or None."""
        return os.path.join(self.dirs[0], "videos") if self.args.capture_video else None

    def start(self, agent, buffer=None, **config) -> int:
        """Resume the members (with --resume) into `agent` and `buffer` (the script's OfflineBuffer: the transitions
        collected online), write their config.json (with `config` added: the device, ..., and the dataset's size),
        start their wandb runs and open their metrics logs. -> the first step to train."""
        check_agent(agent)
        self.buffer = buffer
        sizes = getattr(buffer, "member_sizes", None) or [getattr(buffer, "size", None)] * self.size  # a domain's: each
        self.configs = [
            {**recorded_flags(a), **config} | ({"transitions": n} if buffer is not None else {})
            for a, n in zip(self.members, sizes)
        ]
        self.commit = code_version(self.script)
        for c in self.configs:
            c["torch"], c["commit"] = str(torch.__version__), self.commit  # strs: weights_only loads them
        fresh = (1, [[] for _ in self.members], 0.0)
        self.logs = []  # resume() opens them, before it trims them
        self.start_step, self.evals, self.elapsed = self.resume(agent) if self.args.resume else fresh
        start = self.start_step
        self.wandb_runs = (  # first: a wandb that cannot start leaves a new run's folder empty (main removes it)
            [self.start_wandb(run_dir, c) for run_dir, c in zip(self.dirs, self.configs)] if self.args.track else []
        )
        for run_dir, c in zip(self.dirs, self.configs):
            with open(f"{run_dir}/config{f'_resumed_at_{start - 1}' if self.args.resume else ''}.json", "w") as f:
                json.dump(c, f, indent=2)
            if self.args.resume and os.path.exists(f"{run_dir}/summary.json"):  # a finished run trained further
                os.replace(f"{run_dir}/summary.json", f"{run_dir}/summary_at_{finished_at(run_dir, start - 1)}.json")
            if self.sweep:
                with open(f"{run_dir}/sweep.json", "w") as f:
                    json.dump({"sweep": self.sweep, "members": self.dirs, "command": sys.argv}, f, indent=2)
        if self.sweep:
            print(f"sweep {self.sweep}: {self.size} member{'s' * (self.size > 1)} of {os.path.basename(self.script)}")
        else:  # what it trains on, so that another file of the same env is seen
            c, data = self.configs[0], self.configs[0].get("dataset_path") or "its default files"
            print(f"run {self.dirs[0]}: {c['env_id']}, {c.get('transitions', '?')} transitions of {data}")
        self.logs = self.logs or [open_log(d) for d in self.dirs]
        self.session_start = time.time()
        return start

    def start_wandb(self, run_dir: str, config: dict):
        import wandb

        name = os.path.basename(run_dir)
        where = dict(project=self.args.wandb_project_name, entity=self.args.wandb_entity, name=name, id=name)
        group = dict(group=self.sweep, reinit="create_new") if self.sweep else {}
        script = os.path.abspath(self.script)  # the code saved: the script's, not sweep.py's (__main__ in a sweep)
        code = wandb.Settings(program=script, program_abspath=script, program_relpath=os.path.basename(script))
        try:
            return wandb.init(config=config, save_code=True, settings=code, resume="allow", **where, **group)
        except Exception as e:  # no API key (an offline node), no network, ...: one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"--track: wandb could not start ({first}); `wandb login`, or WANDB_MODE=offline") from None

    def resume(self, agent) -> tuple[int, list, float]:
        """Load the members' checkpoints into `agent` (checked against their configs: check_resume) and their online
        transitions into self.buffer, restore the random states (the same in every member's) and drop their metrics
        logs' records after its step. -> (next step, the evaluations of each, seconds spent); any failure (a missing,
        empty, truncated or unsafe file, another run's, members of different steps) is one UserError line."""
        states, files, summarized = [], [args.resume for args in self.members], []
        for file, config, run_dir in zip(files, self.configs, self.dirs):
            try:
                states.append(load_checkpoint(file))
                check_resume(config, {**field_defaults(self.args), **states[-1]["config"]}, states[-1]["step"])
                finished = states[-1]["step"] == config["total_steps"] + config.get("online_steps", 0)
                summarized.append(finished and os.path.exists(os.path.join(run_dir, "summary.json")))
                if all(summarized) and len(summarized) == len(files):  # some without a summary.json: written again
                    more = "" if config.get("online_steps") else "; a larger --total-steps or --online-steps goes on"
                    raise UserError(f"its run had finished at step {states[-1]['step']} (summary.json){more}")
            except Exception as e:
                raise UserError(f"cannot resume from {file}: {e if isinstance(e, UserError) else repr(e)}") from None
        low = min(s["step"] for s in states)
        for m, file in enumerate(files):  # a save cut among the renames: the old file of those ahead, beside theirs
            if states[m]["step"] > low and os.path.exists(file + ".prev"):
                try:
                    previous = load_checkpoint(file + ".prev")
                except UserError as e:
                    raise UserError(f"cannot resume from {file}.prev: {e}") from None
                states[m] = previous if previous["step"] == low else states[m]
        if len({s["step"] for s in states}) > 1:
            steps = ", ".join(f"{file} (step {s['step']})" for file, s in zip(files, states))
            raise UserError(f"the checkpoints are of different steps: {steps}")
        try:  # the members' states are loaded together: a failure names every file
            state = stacked_state(agent, states) if self.sweep else states[0]
            for f in dataclasses.fields(agent):
                getattr(agent, f.name).load_state_dict(state[f.name])
        except Exception as e:
            raise UserError(f"cannot resume from {' '.join(files)}: {repr(e)}") from None
        added = len(states[0]["online"].get("rewards", ()))  # transitions collected online (older files: 0 rows)
        if self.buffer is not None and added:  # each member's transitions into its env's rows
            self.buffer.added = added
            self.buffer.count.fill_(added)
            for m, (file, s) in enumerate(zip(files, states)):
                try:
                    for k, rows in online_rows(self.buffer, m).items():
                        rows.copy_(s["online"][k])
                except Exception as e:
                    raise UserError(f"cannot resume from {file}: {repr(e)}") from None
        self.failed = {m: s["failed"] for m, s in enumerate(states) if s.get("failed")}  # they stay failed
        set_rng_state(states[0]["rng"])
        self.logs = [open_log(d) for d in self.dirs]  # locked: a second process resuming a run stops here
        for run_dir in self.dirs:
            trim_log(os.path.join(run_dir, "metrics.jsonl"), states[0]["step"])
        flags = (RESUMABLE | ONLINE_FLAGS) - {"resume", "device", "training_step", "torch", "commit"}  # not config's
        saved, shown = states[0]["config"], sorted(flags)
        changed = [f"--{k.replace('_', '-')} {saved[k]} -> {self.configs[0].get(k)}" for k in shown
                   if k in saved and saved[k] != self.configs[0].get(k)]  # fmt: skip
        more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
        print(f"resuming {files[0]}{more} at step {low}" + (f"; changed: {', '.join(changed)}" if changed else ""))
        return states[0]["step"] + 1, [s["evals"] for s in states], states[0]["elapsed"]

    def live(self) -> list[int]:
        return [m for m in range(self.size) if m not in self.failed]

    def check_finite(self, names: list[str], first_bad: list[list[int]], source) -> None:
        """first_bad[m][i]: the first step at which member m's metric names[i] was not finite (-1: never). A member
        with one stops logging and saving (the others go on); when none is left, the summaries (each with its error,
        as a sweep's failed member has), then one UserError line."""
        for m in self.live():
            if any(s >= 0 for s in first_bad[m]):
                bad_step = min(s for s in first_bad[m] if s >= 0)
                went = ", ".join(n for n, s in zip(names, first_bad[m]) if s == bad_step)  # every one that went then
                self.failed[m] = f"non-finite {went} at step {bad_step}"
                if self.size > 1:
                    tqdm.write(
                        f"{self.dirs[m]}: {self.failed[m]}; this member stops, the others go on", file=sys.stderr
                    )
        if not self.live():
            hint = "check the data; try a lower learning rate, a --grad-norm, or less weight on Q against cloning"
            self.finish(source, stopped=f"{self.failed[0]}; stopping ({hint})" if self.size == 1 else self.failure())

    def failure(self) -> str:
        return f"{len(self.failed)} of {self.size} members failed: " + "; ".join(
            f"{self.dirs[m]}: {e}" for m, e in self.failed.items()
        )

    def record_video(self, envs, step: int) -> None:
        """With --capture-video: the first env records its next episode (the evaluation's first), sent at log()."""
        if self.args.capture_video:
            self.video = envs.envs[0].record(f"step_{step}")

    @contextlib.contextmanager
    def wandb_calls(self):
        """Around calls to the members' wandb runs (with --track: self.wandb_runs). A wandb that stopped (a cluster's
        SIGTERM reaches every process of the job, wandb's service too) turns --track off for the rest of this session,
        in one line, so that the run goes on and a stop still saves its step."""
        try:
            yield
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if self.wandb_runs:  # not a later member's call in the same loop
                tqdm.write(f"wandb stopped ({first}); --track is off for the rest of this session")
            self.wandb_runs = []

    def log_episodes(self, step: int, episodes: list) -> None:
        """The online episodes that ended at `step` (episodes[m]: member m's, a dict of its metrics, or None) to the
        live members' metrics.jsonl and wandb runs, with the env steps taken so far (online/env_steps)."""
        for m in self.live():
            if episodes[m] is not None:
                record = {"step": step, **episodes[m], "online/env_steps": step - self.args.total_steps}
                self.logs[m].write(json.dumps(record) + "\n")
                if self.wandb_runs:
                    with self.wandb_calls():
                        self.wandb_runs[m].log(record, step=step)

    def log(self, step: int, names: list[str], means: list[list[float]], steps: int, seconds: float, evals=None):
        """A logging window of `steps` steps in `seconds`: each live member's metric means (and evaluation) to its
        metrics.jsonl, its wandb run and the console."""
        self.train_time += seconds
        for m in self.live():
            record = {"step": step, **dict(zip(names, means[m])), "steps_per_sec": steps / seconds}
            if evals is not None:
                self.evals[m].append({"step": step, **evals[m]})
                record.update({f"eval/{k}": v for k, v in evals[m].items() if v is not None})
            self.logs[m].write(json.dumps(record) + "\n")
            if self.wandb_runs:
                with self.wandb_calls():
                    if self.video:
                        import wandb

                        self.wandb_runs[m].log({"eval/video": wandb.Video(self.video, format="mp4")}, step=step)
                    self.wandb_runs[m].log(record, step=step)
            if self.size == 1:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if evals is not None and self.size > 1:  # the score, or without reference returns the return
            key = "score" if any(e["score"] is not None for e in evals) else "return"
            shown = [m not in self.failed and e[key] is not None for m, e in enumerate(evals)]
            values = ", ".join(f"{name} {e[key]:.1f}" if ok else f"{name} -" for name, e, ok in
                               zip(member_names(self.members), evals, shown))  # fmt: skip
            tqdm.write(f"step {step}: members' eval/{key}: {values}")
        self.video = None

    def save(self, agent, step: int) -> None:
        """checkpoint.pt of each member (a failed one's too, its reason in `failed`): its networks' and optimizers'
        states, the step, the evaluations, the seconds spent, the random states, the config and the transitions it
        collected online (`online`: tensors by Batch field, {} before the online phase), as tensors and plain values
        only (torch.load with weights_only=True reads it). All or none: every member's file is written to a .tmp
        first, SIGINT and SIGTERM held, then all replace the old ones; a failed write leaves every old one. A sweep's
        old ones are kept as .prev until every member's is replaced: a kill or an I/O error among the renames leaves
        members of two steps, and resume() takes the .prev of those ahead."""
        elapsed, rng = self.elapsed + time.time() - self.session_start, rng_state()
        paths = [os.path.join(run_dir, "checkpoint.pt") for run_dir in self.dirs]
        with signals_held():
            try:
                for m, path in enumerate(paths):
                    online = {} if self.buffer is None else online_rows(self.buffer, m)
                    extra = {
                        "step": step,
                        "evals": self.evals[m],
                        "elapsed": elapsed,
                        "rng": rng,
                        "config": self.configs[m],
                        "online": {k: v.to("cpu", copy=True) for k, v in online.items()},  # copies: not the buffer
                        "failed": self.failed.get(m),
                    }
                    try:
                        with open(path + ".tmp", "wb") as f:  # on disk before it is renamed: a node's crash too
                            torch.save({**member_state(agent, m if self.sweep else None), **extra}, f)
                            f.flush()
                            os.fsync(f.fileno())
                    except (RuntimeError, OSError) as e:  # a full disk, a quota: torch.save raises RuntimeError
                        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                        raise UserError(
                            f"cannot write {path} ({first}; a full disk?); {self.how_to_continue()}"
                        ) from None
                kept = [path for path in paths if os.path.exists(path)] if self.sweep else []  # for resume()
                for path in kept:
                    keep_previous(path)
                for path in paths:
                    os.replace(path + ".tmp", path)
                for path in kept:
                    with contextlib.suppress(OSError):  # all replaced: a .prev left is harmless
                        os.remove(path + ".prev")
            except OSError as e:
                raise UserError(f"cannot replace the checkpoints ({e}); {self.how_to_continue()}") from None
            finally:
                for path in paths:
                    if os.path.exists(path + ".tmp"):
                        os.remove(path + ".tmp")

    def how_to_continue(self, stopped_at: int | None = None) -> str:
        """After SIGINT or SIGTERM: the step the runs stopped at (`stopped_at`: saved, with --save-model) or else their
        last checkpoints (in their folders, else --resume's), and the command line with --resume pointing at them;
        or why there is none."""
        last = [
            next((p for p in (os.path.join(d, "checkpoint.pt"), a.resume) if p and os.path.isfile(p)), None)
            for d, a in zip(self.dirs, self.members)
        ]
        if len(getattr(self, "summaries", ())) == self.size:  # a stop after finish() wrote them: nothing to continue
            failed = f"; {self.failure()}" if self.failed else ""
            return f"the runs had finished (summaries: {' '.join(self.summaries)}){failed}; nothing to continue"
        stop = "" if stopped_at is None else f"stopped at step {stopped_at}; "
        unsaved = "" if self.args.save_model else " (--save-model is off: add it to keep a checkpoint next time)"
        if None in last:
            return stop + ("nothing was saved" if stop else "no checkpoint was written") + unsaved
        saved = (
            "saved in" if stop and self.args.save_model else "nothing was saved since" if stop else "last checkpoint"
        )
        return f"{stop}{saved} {' '.join(last)}{unsaved}; continue with: {continue_command(sys.argv, last)}"

    def stop_signals(self):
        """SIGINT, SIGTERM: the loop stops after the step under way, which is saved; see stop_signals."""
        return stop_signals(self.how_to_continue)

    def close_logs(self) -> None:
        for f in self.logs:
            f.close()  # and so unlocked

    def interrupted(self, step: int, signum: int) -> Interrupted:
        """What the loop raises after a signal at `step`: the runs' metrics logs closed, the line that continues."""
        self.close_logs()
        return Interrupted(self.how_to_continue(stopped_at=step), signum)

    def finish(self, source, stopped: str | None = None) -> str:
        """Each member's summary.json (its error, if it failed; in a sweep, the sweep's name and size), the logs and
        wandb runs closed. -> the first member's summary.json; a UserError names the failed members, if any (stopped:
        the line of a stop before the end, every member failed)."""
        self.close_logs()
        wall_clock = self.elapsed + time.time() - self.session_start  # the members trained together: one clock
        steps = self.args.total_steps + getattr(self.args, "online_steps", 0) - self.start_step + 1
        steps_per_sec = steps / self.train_time if self.train_time and not stopped else None
        summaries, self.summaries = [], []
        with signals_held():  # every member's summary.json, then a stop (how_to_continue: the runs had finished)
            for m, (args, run_dir) in enumerate(zip(self.members, self.dirs)):
                summary = summarize(self.script, args, source.member(m), self.evals[m], wall_clock, steps_per_sec)
                # the commit: this session's code (config.json's: the run's first); the error: why the member stopped
                summary = {"commit": self.commit, "error": self.failed.get(m), **summary}
                if self.sweep:
                    summary.update(sweep=self.sweep, sweep_members=self.size)
                with replaced_when_written(os.path.join(run_dir, "summary.json")) as tmp, open(tmp, "w") as f:
                    json.dump(summary, f, indent=2)
                summaries.append(summary)
            for m, summary in enumerate(summaries if self.wandb_runs else []):  # each wandb run's summary too
                with self.wandb_calls():
                    self.wandb_runs[m].summary.update({k: v for k, v in summary.items() if k != "evaluations"})
            self.summaries = [os.path.join(run_dir, "summary.json") for run_dir in self.dirs]
        for m in range(self.size if self.wandb_runs else 0):  # seconds each; a failed member's marked failed
            with self.wandb_calls():
                self.wandb_runs[m].finish(exit_code=int(m in self.failed))
        if stopped or self.failed:
            raise UserError(stopped or self.failure())
        return self.summaries[0]


# ---------------------------------------------------------------------------------------------------------------
# The command line of a script
# ---------------------------------------------------------------------------------------------------------------
def main(script: str, run: Callable[[], str | list[str]]) -> None:
    """`python <script>`: run() (parse the flags and train; -> the summary.json path, or a sweep's), SIGTERM handled as
    SIGINT, any stop in one line on stderr: bad input or a refused write, exit code 2; SIGINT or SIGTERM, 130 or 143."""
    stop_on_sigterm()  # outside training steps too: one line, not a silent end
    Runs.latest = None
    try:
        summaries = run()
        for s in (signal.SIGINT, signal.SIGTERM):  # done: a stop now would only interrupt the interpreter's exit
            signal.signal(s, signal.SIG_IGN)
        print("\n".join(f"summary: {path}" for path in ([summaries] if isinstance(summaries, str) else summaries)))
    except (UserError, OSError, KeyboardInterrupt, RuntimeError) as e:  # bad input, a refused write, a signal, OOM
        stop, runs = "interrupted" if isinstance(e, KeyboardInterrupt) else "error", Runs.latest
        oom = out_of_memory(e, runs)
        if runs is not None:
            runs.remove_made()  # the folders it made, those still empty or without a record
        if isinstance(e, RuntimeError) and not oom:
            raise  # a bug: its traceback
        # outside the loop (loading, setting up, the summaries): the last checkpoint and the command that continues
        message = oom or str(e) or (runs.how_to_continue() if runs else "no checkpoint was written")
        written = runs is not None and getattr(runs, "logs", None)  # in training: a refused write, out of memory
        if (isinstance(e, OSError) or oom) and written:
            message += f"; {runs.how_to_continue()}"
        print(f"{os.path.basename(script)}: {stop}: {message}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 130) if stop == "interrupted" else 2)  # 130 / 143: as for SIGINT / SIGTERM


def out_of_memory(e: BaseException, runs: Runs | None = None) -> str | None:
    """The line for an allocation that failed (CUDA's torch.OutOfMemoryError, the CPU allocator's RuntimeError, or
    either as the cause of a CUDA graph capture's UserError), naming what to make smaller; else None."""
    e = e.__cause__ if isinstance(e, UserError) and e.__cause__ is not None else e
    if not isinstance(e, torch.OutOfMemoryError) and not (isinstance(e, RuntimeError) and "allocate memory" in str(e)):
        return None
    first = re.sub(r"^\[enforce fail.*?\] err == 0\. ", "", str(e).strip().splitlines()[0])[:160]
    members = "fewer members, " if runs is not None and runs.size > 1 else ""
    return f"out of memory ({first}): {members}a smaller --batch-size or fewer --online-steps"
