"""One command that verifies a GPU machine in at most 5 minutes (by its own estimate on an H100/H200): the CUDA tests,
eager against CUDA-graph training of the three scripts and of a sweep, and the GPU speed figures, in one results folder.

    python benchmark/gpu_check.py                      # on a CUDA machine: about 4.5 minutes on one H200 (estimate)
    python benchmark/gpu_check.py --train-steps 2000   # longer parity runs (over the 5-minute budget; it says so)

0. The time budget: before it starts, per step its allowance (STEP_BUDGET_S, 300 s in all) and its estimate from the
   sizes chosen here and the per-step rates recorded on one H200 (H200_RATES); each step's actual seconds as it ends.
   Results are written after every step: a call stopped halfway keeps what it did (summary.md says INCOMPLETE).
1. The device, its driver, torch's and CUDA's versions.
2. `python -m pytest -q tests/test_training_step.py` but its CPU-only compile test (eager vs graph for the three
   scripts, no device sync, the captured policy, a domain sweep and an online run in CUDA graphs, the captured online
   batch, a graph-path checkpoint resumed eagerly): passed/skipped/failed; on CUDA a skipped test is a failure (they
   skip only without CUDA).
3. ofql.py, dql.py and fql.py, each trained twice on a small D4RL-layout file recorded here in Hopper-v4 (seeded
   random policy), same seed: --no-cuda-graph and --cuda-graph, --train-steps offline steps with the EMA policy (which
   gives the critic its next actions) starting at --ema-start, then an online phase of --online-steps env steps (one
   update after each: the online update's own graph, the acting policy's graph, the buffer's rows written in place).
   The offline window means are compared: the windows up to --tight-steps within the tests' tolerance (rtol, atol),
   later ones within --drift-rtol (rounding noise of two correct paths grows with the steps); the largest difference is
   reported. The online windows are compared and their largest difference reported, never failed on: after the first
   action that differs in its last bit the two runs' envs diverge, so two correct paths need not agree online. The
   online phase fails the check only if a run stops, logs no online window, or logs a non-finite value (or a metric the
   other does not); its episodes are counted, and the check fails if no online episode ended on a path in any run
   (step 3 and 5 together). A run that fails, or that does not train on the path it was asked for, is a failure: the
   check never falls back to eager.
4. benchmark/speed.py: updates/s and decisions/s (1 and the evaluation's candidates), eager and graph, the ratios,
   against the speed targets (reported; they fail the check only with --fail-on-targets). Eager-light: the eager
   path is timed over --speed-eager-updates updates per round, the graph path over speed.py's --updates.
5. sweep.py (two members of ofql.py) trained --no-cuda-graph and --cuda-graph for --sweep-steps offline steps and
   --online-steps online steps (an env per member), each member's path checked and its logs compared as in 3;
   benchmark/sweep_speed.py (eager-light too): member-updates/s of sweeps of 1 and 16 members against one run, on both
   paths, and the target of 12,000 member-updates/s for 16 OFQL members (reported; fails the check only with
   --fail-on-targets).
6. summary.md and results.json in --out-dir; the summary is printed. Exit 1 if a check failed.

Without CUDA it checks its own CPU parts (the data file, every script and a sweep for a few eager offline and online
steps on both flags, the metrics, the comparison, the online episodes, the speed.py and sweep_speed.py interfaces
through the eager-light runner, the budget, the summary) and prints one line.
"""

import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import h5py
import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("ofql", "dql", "fql")
ENV_ID = "hopper-medium-v2"  # the scripts' presets for the shapes; the data is the file recorded here
SKIPPED_KEYS = ("step", "steps_per_sec")  # logged values that are not training metrics (nor are eval/*)
# the speed targets on one H100/H200 (docs/gpu-check.md): (label, speed.py figure, bound, >= or <=)
TARGETS = (
    ("OFQL updates/s, CUDA graph", ("ofql", "updates_per_sec", "cuda_graph"), 1500.0, ">="),
    (
        "OFQL decisions/s (batches of 2500 states), 1 candidate, CUDA graph",
        ("ofql", "decisions_1", "cuda_graph"),
        1e4,
        ">=",
    ),
    ("OFQL/DQL training time, CUDA graph", ("ratio", "OFQL/DQL training time, cuda_graph"), 0.5, "<="),
    (
        "OFQL/DQL decision frequency, 1 candidate, CUDA graph",
        ("ratio", "OFQL/DQL decision frequency, 1 candidate, cuda_graph"),
        4.0,
        ">=",
    ),
)
# speed.py on CUDA: a graph replay of an update takes 1.5-3 ms (one H200), so 400 updates and 20 decision batches per
# round keep each timed block well above the timers' resolution; the eager path (15-22 ms an update) is timed over
# --speed-eager-updates (eager-light: 400 eager updates per round took 5 x 22 s of the first call's 148 s)
CUDA_SPEED_FLAGS = "--device cuda --updates 400 --decisions 20 --rounds 3"
CPU_SPEED_FLAGS = (
    "--device cpu --threads 1 --warmup 1 --updates 2 --rounds 1 --decisions 1 --decision-batch 50 "
    "--dataset-size 2000 --algorithms ofql"
)
CPU_EAGER_UPDATES = 1  # the CPU mode's eager path in speed.py and sweep_speed.py: 1 of the CPU flags' 2 updates
PATHS = ("eager", "cuda_graph")
EMA_SCRIPTS = ("ofql", "dql")  # the scripts with an EMA policy (--ema-start)

# What each step costs on one NVIDIA H200 (driver 580.159.04, torch 2.11.0+cu130), recorded: the first full call
# (2026-11-30: benchmark/results/gpu_check/results.json, speed/cuda.json) and the call of 2026-12-04
# (benchmark/results/gpu_check/2026-12-04/, benchmark/results/sweep_speed/cuda.json). The budget's estimates come from
# these and the sizes the check chose; the few parts no call has timed alone are marked "assumed".
H200_RATES = {
    "device": "NVIDIA H200 (torch 2.11.0+cu130)",
    # imports (gpu_check's: 1.5 s on a 2-core CPU) and the device's query; the first call spent 1.5 s outside its
    # steps, data file included, its clock started after the imports: assumed 3 s in all
    "start_s": 3.0,
    # tests/test_training_step.py: "26 passed in 47.36s" (2026-12-04), and pytest's start
    "tests_s": 49.0,
    # its CUDA tests added since, assumed: a domain sweep (4 members, 30 steps) eager and in a CUDA graph, an online run
    # (20 offline and 20 online steps) on the graph path, the captured online batch, a graph-path checkpoint resumed
    # eagerly (2 runs of 10 steps); each run's start, captures and evaluation about 1 s, its steps at the rates below
    "tests_added_s": 7.0,
    # record_hopper: 5000 Hopper-v4 steps in 0.9 s on a 2-core CPU (MuJoCo runs on the CPU)
    "record_s_per_transition": 2e-4,
    # a parity run's seconds beyond its training steps (start, CUDA, data, capture, evaluation, files): its seconds less
    # 2000 steps at its steps/s, per script and path, 2026-11-30
    "run_start_s": {
        "ofql": {"eager": 10.5, "cuda_graph": 10.6},
        "dql": {"eager": 11.8, "cuda_graph": 9.3},
        "fql": {"eager": 9.9, "cuda_graph": 10.1},
    },
    # the parity runs' training steps/s (train_steps_per_sec), 2026-11-30
    "train_steps_per_sec": {
        "ofql": {"eager": 63.9, "cuda_graph": 536.1},
        "dql": {"eager": 43.9, "cuda_graph": 342.8},
        "fql": {"eager": 55.4, "cuda_graph": 291.4},
    },
    # the online phase (--online-steps), assumed (no call has run one): a run's seconds for it beyond its steps (the
    # online update's warm-up and capture, the acting policy's capture, its env, the second evaluation: 2 episodes of
    # tens of steps), and per online step beyond the update: the acting policy's call and the copy of its action to
    # the host (which waits for the update before it: no overlap on the graph path), one Hopper-v4 step and the
    # buffer's writes (0.45 ms on a 2-core CPU). Conservative: the slowest acting policy, DQL's eager chain of 203
    # operators, is speed.py's 337 decisions/s with 1 candidate (3.0 ms)
    "online_start_s": 1.0,
    "online_step_overhead_s": 5e-3,
    # speed.py: its 148.3 s less its timed blocks at its figures (5 rounds of 410 updates and 21 decision batches per
    # script, path and candidate count), 2026-11-30: start, operator counts, the update profile
    "speed_start_s": 15.5,
    "updates_per_sec": {
        "ofql": {"eager": 58.1, "cuda_graph": 667.2},
        "dql": {"eager": 45.8, "cuda_graph": 375.3},
        "fql": {"eager": 59.1, "cuda_graph": 323.9},
    },
    "decisions_per_sec": {  # batches of 2500 states, per candidate count
        "ofql": {"eager": {"1": 1276.0, "50": 237.4}, "cuda_graph": {"1": 6581.0, "50": 270.2}},
        "dql": {"eager": {"1": 337.3, "50": 111.0}, "cuda_graph": {"1": 1916.0, "50": 118.3}},
        "fql": {"eager": {"1": 2716.0}, "cuda_graph": {"1": 4331.0}},
    },
    # a sweep run's seconds beyond its steps: assumed, ofql.py's (10.6 s) and a margin for the members' evaluation
    "sweep_run_start_s": 12.0,
    # sweep.py ofql.py with 2 members: sweep_speed's iteration at N = 2 (interpolated between N = 1 and 16, 2026-12-04)
    # and, on the graph path, the training loop's own 0.37 ms a step (ofql.py's 536 steps/s against speed.py's 667)
    "sweep_steps_per_sec": {"eager": 37.4, "cuda_graph": 566.0},
    # sweep_speed.py's seconds beyond its timed blocks: assumed, speed.py's
    "sweep_start_s": 15.5,
    # sweep_speed.py's member-updates/s: a lone run ("plain") and sweeps of N members, 2026-12-04
    "member_updates_per_sec": {
        "ofql": {
            "eager": {"plain": 59.8, "1": 37.4, "16": 593.8},
            "cuda_graph": {"plain": 839.4, "1": 753.2, "16": 6588.0},
        },
        "dql": {
            "eager": {"plain": 42.5, "1": 26.4, "16": 435.0},
            "cuda_graph": {"plain": 427.9, "1": 408.7, "16": 3799.9},
        },
        "fql": {
            "eager": {"plain": 56.0, "1": 27.9, "16": 451.4},
            "cuda_graph": {"plain": 398.2, "1": 339.9, "16": 1766.1},
        },
    },
}
# The time budget of one call (seconds per step, 300 in all): a lent GPU's 15 minutes, its start-up included, must
# leave time for a learning run after it. tests/test_gpu_check.py checks the default call's estimates against these.
BUDGET_S = 300
STEP_BUDGET_S = {
    "start": 5,
    "tests": 58,
    "data": 5,
    "parity ofql": 36,
    "parity dql": 42,
    "parity fql": 38,
    "speed": 40,
    "sweep parity": 42,
    "sweep speed": 34,
}


@dataclass
class Args:
    out_dir: str | None = None
    """the results folder (default: benchmark/results/gpu_check; without CUDA, its cpu_mode/ subfolder)"""
    train_steps: int = 500
    """offline gradient steps of each parity run (step 3)"""
    online_steps: int = 50
    """online steps after each parity and sweep run (0: none): an episode must end; windows are only reported"""
    ema_start: int = 300
    """--ema-start of the ofql.py and dql.py parity and sweep runs, so that the EMA policy's start is compared"""
    log_every: int = 100
    """logging window of the parity runs: each logged value is the mean over this many steps"""
    tight_steps: int = 200
    """the windows ending at or before this step must agree within --rtol/--atol (the tests' tolerance)"""
    rtol: float = 1e-4
    """relative tolerance of the early windows (tests/test_training_step.py's)"""
    atol: float = 1e-5
    """absolute tolerance of the early windows (tests/test_training_step.py's)"""
    drift_rtol: float = 0.05
    """the relative bound on later windows, as the paths' rounding differs and grows (docs/gpu-check.md)"""
    seed: int = 0
    """seed of the data recording and of every run"""
    transitions: int = 5000
    """transitions in the recorded Hopper-v4 file"""
    scripts: list[str] = field(default_factory=lambda: list(SCRIPTS))
    """which scripts to train in step 3"""
    tests: bool = True
    """run step 2 (--no-tests skips it)"""
    speed: bool = True
    """run step 4 (--no-speed skips it)"""
    speed_flags: str = ""
    """more flags for benchmark/speed.py, after the check's own (later ones win), e.g. --speed-flags='--rounds 9'"""
    speed_eager_updates: int = 40
    """eager-light: timed updates per round of speed.py's eager path (its CUDA-graph path: speed.py's --updates)"""
    sweep: bool = True
    """run step 5, sweep.py on both paths and benchmark/sweep_speed.py (--no-sweep skips it)"""
    sweep_steps: int = 400
    """gradient steps of the sweep's eager and graph runs (step 5)"""
    sweep_eager_updates: int = 10
    """eager-light: timed iterations per block of sweep_speed.py's eager path (its CUDA-graph path: 50)"""
    fail_on_targets: bool = False
    """if toggled, a missed speed target fails the check"""
    cpu_steps: int = 10
    """offline gradient steps of each run in the CPU mode"""
    cpu_online_steps: int = 30
    """online steps of each run in the CPU mode (its barely trained policy's hopper falls within them)"""
    deadline: int = 0
    """seconds from the start after which no step starts and a running one is stopped (0: no deadline)"""
    timeout: int = 600
    """seconds after which a subprocess is stopped as failed; on CUDA at most 4x its step's estimate (>= 120 s)"""


DEADLINE = math.inf  # the time.time() of --deadline: finish() stops a subprocess there, main() starts no step after


class DeadlineReached(Exception):
    pass


class CheckError(Exception):
    """A problem that stops the check before it can measure anything (one line)."""


# ---------------------------------------------------------------------------------------------------------------
# Step 1: the device
# ---------------------------------------------------------------------------------------------------------------
def driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def device_info(cuda: bool) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:  # COMMIT: a copy of the checkout without .git cannot tell
        git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:  # no git
        git = None
    info["commit"] = os.environ.get("COMMIT") or (git.stdout.strip() if git and git.returncode == 0 else None)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            devices=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            driver=driver_version(),
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["device"] = f"{platform.machine()} CPU, {os.cpu_count()} cores (no CUDA)"
    return info


# ---------------------------------------------------------------------------------------------------------------
# Subprocesses
# ---------------------------------------------------------------------------------------------------------------
def start(cmd: list[str], cwd: str, log_path: str) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")  # runs side by side on a small CPU
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()


def read_text(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def finish(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code, or None when it ran past the timeout or --deadline (then it is stopped)."""
    try:
        return proc.wait(timeout=max(0.0, min(timeout, DEADLINE - time.time())))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def error_line(log_path: str, rc: int | None, timeout: int) -> str:
    """One line for a failed subprocess: its own error line (the scripts' 'error: ...', an exception's last line)."""
    if rc is None:
        cut = "stopped at --deadline" if time.time() >= DEADLINE - 1 else f"timed out after {timeout} s"
        return f"{cut} (see {log_path})"
    lines = [line.strip() for line in read_text(log_path).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["no output"])[-1]
    if "--no-cuda-graph" in line:
        line = "CUDA GRAPH FAILED: " + line
    return f"exit {rc}: {line}"


# ---------------------------------------------------------------------------------------------------------------
# Step 2: the CUDA tests
# ---------------------------------------------------------------------------------------------------------------
def pytest_counts(output: str) -> dict:
    """The counts of pytest's final summary line ('18 passed, 6 skipped in 5.2s', '23 tests collected in 1.1s', with
    deselected tests '21/23 tests collected (2 deselected) in 1.1s': 21)."""
    counts = {"passed": 0, "skipped": 0, "failed": 0, "errors": 0, "collected": 0}
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+)(?:/\d+)? (passed|skipped|failed|errors?|tests? collected)\b", line)
        if found and re.search(r" in [\d.]+s", line):
            for n, what in found:
                key = "errors" if what.startswith("error") else ("collected" if "collected" in what else what)
                counts[key] += int(n)
            break
    return counts


def tests_verdict(counts: dict, rc: int | None, cuda: bool) -> str | None:
    """None if the tests passed, else why not. On CUDA every test must run: they skip only without CUDA."""
    if cuda and (counts["failed"] or counts["errors"]):
        return f"{counts['failed']} failed, {counts['errors']} errors"
    if cuda and counts["skipped"]:
        return f"{counts['skipped']} skipped on a CUDA machine"
    if cuda and not counts["passed"] or not cuda and not counts["collected"]:
        return "no test ran"
    return None if rc == 0 else f"pytest exited {rc}"


# tests of the file that never touch CUDA and cost a lent GPU's time: --compile's CPU test compiles two scripts with
# inductor's CPU backend (34 s on a 2-core CPU; added after the file was timed on the H200); CI runs them
CPU_ONLY_TESTS = ("test_the_compiled_iteration_trains_as_the_eager_one",)


def run_tests(args: Args, out: str, cuda: bool, timeout: int | None = None) -> dict:
    """On CUDA the whole file but CPU_ONLY_TESTS; without CUDA only its collection (its CUDA tests would skip)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_training_step.py"] + ([] if cuda else ["--collect-only"])
    cmd += [f"--deselect=tests/test_training_step.py::{name}" for name in CPU_ONLY_TESTS]
    log, timeout = os.path.join(out, "tests.log"), timeout or args.timeout
    proc, t0 = start(cmd, ROOT, log)
    rc = finish(proc, timeout)
    counts = pytest_counts(read_text(log))
    problem = tests_verdict(counts, rc, cuda) if rc is not None else f"timed out after {timeout} s"
    return {
        "command": " ".join(cmd[1:]),
        "returncode": rc,
        **counts,
        "seconds": time.time() - t0,
        "ok": problem is None,
        "problem": problem,
        "log": log,
    }


# ---------------------------------------------------------------------------------------------------------------
# Step 3: eager against CUDA-graph training
# ---------------------------------------------------------------------------------------------------------------
def record_hopper(path: str, transitions: int, seed: int) -> dict:
    """A D4RL-layout file recorded in gymnasium's Hopper-v4 with a seeded uniform random policy."""
    try:
        import gymnasium as gym
    except ImportError:
        raise CheckError(
            "gymnasium is not installed: pip install 'gymnasium[mujoco]' (the check records its data in Hopper-v4)"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = gym.make("Hopper-v4")
    except gym.error.Error as e:  # DependencyNotInstalled when mujoco is missing
        raise CheckError(f"cannot make Hopper-v4 ({e}): pip install 'gymnasium[mujoco]'") from None
    rng, episode = np.random.default_rng(seed), 0
    keys = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    rows = {k: [] for k in keys}
    obs, _ = env.reset(seed=seed)
    while len(rows["rewards"]) < transitions:
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(keys, (obs, action, reward, next_obs, terminated, truncated and not terminated)):
            rows[key].append(value)
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    with h5py.File(path, "w") as f:
        for key in keys:
            f.create_dataset(key, data=np.asarray(rows[key], dtype=bool if key in keys[4:] else np.float32))
    return {"path": path, "transitions": transitions, "episodes": episode}


def train_command(
    script: str, graph: bool, data_path: str, steps: int, log_every: int, online_steps: int, args: Args
) -> list[str]:
    """The run's command: `steps` offline steps, then `online_steps` online; evaluated at the end of each phase."""
    return [
        sys.executable,
        os.path.join(ROOT, f"{script}.py"),
        "--env-id",
        ENV_ID,
        "--dataset-path",
        data_path,
        "--total-steps",
        str(steps),
        "--online-steps",
        str(online_steps),
        "--log-every",
        str(log_every),
        "--eval-every",
        str(steps + online_steps),
        "--eval-episodes",
        "2",
        "--num-candidates",
        "1",
        "--seed",
        str(args.seed),
        "--exp-name",
        f"{script}_{'graph' if graph else 'eager'}",
        "--cuda-graph" if graph else "--no-cuda-graph",
        *(["--ema-start", str(args.ema_start)] if script in EMA_SCRIPTS else []),
    ]


EPISODE_KEY = "online/episode_return"  # in the record of an online episode that ended (not a logging window)


def phases(records: list[dict], offline_steps: int) -> dict:
    """A metrics.jsonl split: the offline windows (steps up to offline_steps), the online ones, the online episodes."""
    windows = [r for r in records if EPISODE_KEY not in r]
    return {
        "offline": [r for r in windows if r["step"] <= offline_steps],
        "online": [r for r in windows if r["step"] > offline_steps],
        "episodes": [r for r in records if EPISODE_KEY in r],
    }


def window_rate(windows: list[dict], first_step: int) -> float | None:
    """Training steps/s over consecutive windows, each logged with its steps/s and covering the steps since the
    previous one (the first: since first_step)."""
    seconds, last = 0.0, first_step
    for r in windows:
        seconds, last = seconds + (r["step"] - last) / r["steps_per_sec"], r["step"]
    return (last - first_step) / seconds if seconds else None


def read_run(log_path: str, cwd: str, offline_steps: int) -> dict:
    """The files of a finished run, found from the 'summary: <path>' line it prints last; steps/s of each phase."""
    summary_lines = [line for line in read_text(log_path).splitlines() if line.startswith("summary: ")]
    if not summary_lines:
        raise CheckError(f"no 'summary:' line in {log_path}")
    run_dir = os.path.join(cwd, os.path.dirname(summary_lines[-1][len("summary: ") :]))
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        split = phases([json.loads(line) for line in f if line.strip()], offline_steps)
    summary = json.loads(read_text(os.path.join(run_dir, "summary.json")))
    config = json.loads(read_text(os.path.join(run_dir, "config.json")))
    return {
        "run_dir": run_dir,
        "phases": split,
        "steps_per_sec": window_rate(split["offline"], 0),  # summary.json's train_steps_per_sec: both phases
        "online_steps_per_sec": window_rate(split["online"], offline_steps),
        "online_episodes": len(split["episodes"]),
        "final_score": summary["final_score"],
        "device": config["device"],
        "training_step": config["training_step"],
    }


def path_problem(run: dict, graph: bool, cuda: bool) -> str | None:
    """A run that did not train where and how it was asked to (never a silent eager fallback)."""
    expected = "cuda_graph" if graph and cuda else "eager"
    if run["training_step"] != expected:
        return f"trained with training_step={run['training_step']}, expected {expected}"
    if cuda and not run["device"].startswith("cuda"):
        return f"trained on {run['device']}, expected cuda"
    return None


def finish_run(proc, t0, log, cwd, graph: bool, cuda: bool, timeout: int, offline_steps: int) -> dict:
    rc = finish(proc, timeout)
    result = {"mode": "graph" if graph else "eager", "log": log, "seconds": time.time() - t0, "error": None}
    if rc != 0:
        return {**result, "error": error_line(log, rc, timeout)}
    try:
        result.update(read_run(log, cwd, offline_steps))
    except (CheckError, OSError, KeyError, ValueError) as e:
        return {**result, "error": f"unreadable run: {e}"}
    return {**result, "error": path_problem(result, graph, cuda)}


def train_pair(
    script: str,
    data_path: str,
    steps: tuple[int, int, int],
    work: str,
    args: Args,
    cuda: bool,
    timeout: int | None = None,
) -> dict:
    """The eager and the graph run of one script (steps: offline steps, logging window, online steps): one after the
    other on CUDA (their steps/s are compared), side by side without CUDA (both are eager there)."""
    logs = {graph: os.path.join(work, f"{script}_{'graph' if graph else 'eager'}.log") for graph in (False, True)}

    def launch(graph: bool):
        return start(train_command(script, graph, data_path, *steps, args), work, logs[graph])

    def wait(graph: bool, proc_t0) -> dict:
        return finish_run(*proc_t0, logs[graph], work, graph, cuda, timeout or args.timeout, steps[0])

    if cuda:
        runs = {graph: wait(graph, launch(graph)) for graph in (False, True)}
    else:
        started = {graph: launch(graph) for graph in (False, True)}
        runs = {graph: wait(graph, proc_t0) for graph, proc_t0 in started.items()}
    eager, graph = runs[False], runs[True]
    comparison = online = None
    if "phases" in eager and "phases" in graph:  # both ran to the end (if on a wrong path, still compared)
        comparison, online = compare_phases(eager["phases"], graph["phases"], steps[2], args)
    problems = [f"{r['mode']} run: {r['error']}" for r in (eager, graph) if r["error"]]
    problems += comparison["problems"] if comparison else []
    problems += [f"online: {p}" for p in online["problems"]] if online else []
    return {
        "eager": {k: v for k, v in eager.items() if k != "phases"},
        "graph": {k: v for k, v in graph.items() if k != "phases"},
        "comparison": comparison,
        "online": online,
        "ok": not problems,
        "problems": problems,
    }


def compare_phases(eager: dict, graph: dict, online_steps: int, args: Args) -> tuple[dict, dict | None]:
    """Two runs' phases(): the offline windows compared by compare_logs (they decide pass or fail), and, with an online
    phase, compare_online's report on the online ones."""
    offline = compare_logs(eager["offline"], graph["offline"], args.rtol, args.atol, args.tight_steps, args.drift_rtol)
    return offline, compare_online(eager, graph, args) if online_steps else None


def compare_online(eager: dict, graph: dict, args: Args) -> dict:
    """The online windows of two runs' phases() compared as compare_logs does, their differences reported and never
    failed on: after the first action that differs (in its last bit) the two envs diverge, so two correct paths need
    not agree online. Problems: no online window, a non-finite value (an episode's too), a step or a metric that one
    run logs and the other does not. The episodes that ended are counted per run."""
    c = compare_logs(eager["online"], graph["online"], args.rtol, args.atol, tight_steps=0, drift_rtol=math.inf)
    problems = [p for p in c["problems"] if p != "the eager run logged no metrics"]  # said per run below
    for mode, run in (("eager", eager), ("graph", graph)):
        problems += [] if run["online"] else [f"the {mode} run logged no online window"]
        for r in run["episodes"]:
            if not all(math.isfinite(v) for v in r.values()):
                problems.append(f"{mode} run: the online episode ending at step {r['step']} has a non-finite value")
    return {**c, "problems": problems, "episodes": {"eager": len(eager["episodes"]), "graph": len(graph["episodes"])}}


def metric_keys(record: dict) -> set:
    return {k for k in record if k not in SKIPPED_KEYS and not k.startswith("eval/")}


def compare_logs(
    eager: list[dict], graph: list[dict], rtol: float, atol: float, tight_steps: int, drift_rtol: float
) -> dict:
    """Compare two metrics.jsonl logs window by window. The relative difference of a value is
    |g - e| / (|e| + atol / rtol): above rtol exactly when the tests' assert_close(g, e, rtol, atol) fails. A window
    ending at or before tight_steps must stay within rtol, every window within drift_rtol; a step or a metric that
    only one log has, a non-finite value and an empty log are problems too."""
    e_by_step, g_by_step = {r["step"]: r for r in eager}, {r["step"]: r for r in graph}
    problems = [] if e_by_step else ["the eager run logged no metrics"]
    for step in sorted(set(e_by_step) ^ set(g_by_step)):
        problems.append(f"step {step} logged only by the {'eager' if step in e_by_step else 'graph'} run")
    worst, tight_worst, first_beyond = (0.0, None, None), 0.0, None
    for step in sorted(set(e_by_step) & set(g_by_step)):
        e, g = e_by_step[step], g_by_step[step]
        for key in sorted(metric_keys(e) ^ metric_keys(g)):
            problems.append(f"{key} at step {step} logged only by the {'eager' if key in e else 'graph'} run")
        for key in sorted(metric_keys(e) & metric_keys(g)):
            if not (math.isfinite(e[key]) and math.isfinite(g[key])):
                problems.append(f"{key} at step {step} is not finite (eager {e[key]}, graph {g[key]})")
                continue
            rel = abs(g[key] - e[key]) / (abs(e[key]) + atol / rtol)
            if rel > worst[0]:
                worst = (rel, key, step)
            if rel > rtol and first_beyond is None:
                first_beyond = (step, key)
            if step <= tight_steps:
                tight_worst = max(tight_worst, rel)
                if rel > rtol:
                    problems.append(
                        f"{key} at step {step}: eager {e[key]:.6g}, graph {g[key]:.6g} "
                        f"(relative difference {rel:.2g} > rtol {rtol:g})"
                    )
            elif rel > drift_rtol:
                problems.append(
                    f"{key} at step {step}: eager {e[key]:.6g}, graph {g[key]:.6g} "
                    f"(relative difference {rel:.2g} > drift_rtol {drift_rtol:g})"
                )
    return {
        "windows": len(set(e_by_step) & set(g_by_step)),
        "tight_max_rel": tight_worst,
        "max_rel": worst[0],
        "max_rel_at": None if worst[1] is None else {"metric": worst[1], "step": worst[2]},
        "first_beyond_rtol": None if first_beyond is None else {"step": first_beyond[0], "metric": first_beyond[1]},
        "problems": problems,
    }


def prepare_parity(args: Args, out: str, cuda: bool) -> dict:
    """The runs' folder (their cwd: runs/<name>/ and a log per run) and the recorded data file; the pairs of
    run_parity's dict are added by train_pair, one script at a time."""
    work = os.path.join(out, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = record_hopper(os.path.join(work, "hopper-random.hdf5"), args.transitions, args.seed)
    steps, log_every, online_steps = sizes(args, args.train_steps, cuda)
    return {
        "data": data,
        "steps": steps,
        "log_every": log_every,
        "online_steps": online_steps,
        "ema_start": args.ema_start,
        "scripts": {},
    }


def sizes(args: Args, steps: int, cuda: bool) -> tuple[int, int, int]:
    """A parity or sweep run's offline steps, logging window and online steps: on CUDA `steps` and the flags', without
    CUDA the CPU mode's."""
    if cuda:
        return steps, args.log_every, args.online_steps
    return args.cpu_steps, max(1, args.cpu_steps // 2), args.cpu_online_steps if args.online_steps else 0


# ---------------------------------------------------------------------------------------------------------------
# Step 4: speed.py
# ---------------------------------------------------------------------------------------------------------------
def speed_figures(result: dict) -> dict:
    """Per script and path: updates/s, decisions/s with 1 candidate and with the evaluation's candidates."""
    figures = {}
    for name, r in result["algorithms"].items():
        for path in result["paths"]:
            d = r["decisions_per_sec"][path]
            k = max(d, key=int)
            figures.setdefault(name, {})[path] = {
                "updates_per_sec": r["updates_per_sec"][path],
                "decisions_1": d["1"],
                "decisions_k": d[k],
                "k": int(k),
            }
    return figures


def check_targets(figures: dict, ratios: dict) -> list[dict]:
    rows = []
    for label, where, bound, sense in TARGETS:
        if where[0] == "ratio":
            value = ratios.get(where[1])
        else:
            value = figures.get(where[0], {}).get(where[2], {}).get(where[1])
        met = None if value is None else (value >= bound if sense == ">=" else value <= bound)
        rows.append({"target": label, "bound": f"{sense} {bound:g}", "value": value, "met": met})
    return rows


def eager_light(tool: str, eager_updates: int, argv: list[str]) -> dict:
    """benchmark/<tool>.py (speed or sweep_speed) run with argv, its eager path timed over eager_updates iterations a
    block and its CUDA-graph path over its --updates, which its own flags cannot do: every iteration that a script's
    cuda_graph serves is marked, and speed.time_updates, which both tools time with, times the unmarked ones over
    eager_updates. Its results files say so (eager_updates in the .json, a line under the .md's first)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import speed

    module = importlib.import_module(tool)
    for script in speed.MODULES.values():

        def marked(fn, warmup, what, cuda_graph=script.cuda_graph):
            call = cuda_graph(fn, warmup, what)
            call.cuda_graph = True
            return call

        script.cuda_graph = marked
    time_updates, write_results = speed.time_updates, module.write

    def timed(train_step, timing, device) -> float:
        light = not getattr(train_step, "cuda_graph", False)
        return time_updates(train_step, dataclasses.replace(timing, updates=eager_updates) if light else timing, device)

    def noted(result: dict, tool_args) -> None:
        result["eager_updates"] = eager_updates
        write_results(result, tool_args)
        table = os.path.join(tool_args.out_dir, ("cpu" if "CPU" in result["device"] else "cuda") + ".md")
        lines = read_text(table).splitlines()
        note = f"Eager-light (gpu_check): the eager path timed over {eager_updates} iterations a block, the CUDA graph"
        lines.insert(1, f"{note} path over {tool_args.updates}.")
        with open(table, "w") as f:
            f.write("\n".join(lines) + "\n")

    speed.time_updates, module.write = timed, noted
    return module.main(tyro.cli(module.Args, args=argv))


def light_command(tool: str, eager_updates: int, out_dir: str, flags: list[str]) -> list[str]:
    """The command that runs benchmark/<tool>.py through eager_light, with --out-dir and flags."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import gpu_check; gpu_check.eager_light(sys.argv[2], "
    code += "int(sys.argv[3]), sys.argv[4:])"
    here = os.path.dirname(os.path.abspath(__file__))
    return [sys.executable, "-c", code, here, tool, str(eager_updates), "--out-dir", out_dir, *flags]


def shown(cmd: list[str]) -> str:
    """A light_command as the results show it: benchmark/<tool>.py and its flags, and the eager path's updates."""
    return f"benchmark/{cmd[4]}.py {' '.join(cmd[6:])} (eager-light: {cmd[5]} eager updates a block)"


def run_speed(args: Args, out: str, cuda: bool, timeout: int | None = None) -> dict:
    speed_dir, timeout = os.path.join(out, "speed"), timeout or args.timeout
    stem = "cuda" if cuda else "cpu"
    if os.path.exists(os.path.join(speed_dir, f"{stem}.json")):
        os.remove(os.path.join(speed_dir, f"{stem}.json"))
    flags = [*(CUDA_SPEED_FLAGS if cuda else CPU_SPEED_FLAGS).split(), *args.speed_flags.split()]
    cmd = light_command("speed", args.speed_eager_updates if cuda else CPU_EAGER_UPDATES, speed_dir, flags)
    log = os.path.join(out, "speed.log")
    proc, t0 = start(cmd, ROOT, log)
    rc = finish(proc, timeout)
    result = {"command": shown(cmd), "log": log, "seconds": time.time() - t0, "error": None}
    if rc != 0:
        return {**result, "ok": False, "error": error_line(log, rc, timeout)}
    try:
        raw = json.loads(read_text(os.path.join(speed_dir, f"{stem}.json")))
        figures, ratios = speed_figures(raw), raw["ratios"]
    except (OSError, KeyError, ValueError) as e:
        return {**result, "ok": False, "error": f"unreadable speed.py output: {e!r}"}
    targets = check_targets(figures, ratios) if cuda else []
    missed = [t["target"] for t in targets if not t["met"]]
    ok = not (args.fail_on_targets and missed)
    return {
        **result,
        "ok": ok,
        "error": None if ok else f"missed targets: {', '.join(missed)}",
        "device": raw["device"],
        "updates": raw.get("updates_per_round"),
        "eager_updates": raw.get("eager_updates"),
        "figures": figures,
        "ratios": ratios,
        "targets": targets,
        "table": os.path.join(speed_dir, f"{stem}.md"),
    }


# ---------------------------------------------------------------------------------------------------------------
# Step 5: sweep.py (many runs in one process): eager vs CUDA graph, and benchmark/sweep_speed.py
# ---------------------------------------------------------------------------------------------------------------
# sweep_speed.py on CUDA (the flags of the call of 2026-12-04; its eager path over --sweep-eager-updates) and, in the
# CPU mode, a check of its interface only
CUDA_SWEEP_SPEED_FLAGS = "--device cuda --members 1 16 --updates 50 --rounds 3 --warmup 3"
CPU_SWEEP_SPEED_FLAGS = "--device cpu --threads 1 --members 1 2 --warmup 1 --updates 2 --rounds 1 --algorithms ofql"
SWEEP_TARGET = ("OFQL member-updates/s, 16 members, CUDA graph", 12e3)  # issue 28's (the first target was 10,000)


def sweep_pair(
    data_path: str,
    steps: int,
    log_every: int,
    work: str,
    args: Args,
    cuda: bool,
    timeout: int | None = None,
    online_steps: int = 0,
) -> dict:
    """sweep.py ofql.py, seeds 0 and 1, eager and with the CUDA graph, `steps` offline and `online_steps` online steps
    (an env per member): each member's path checked and its logs compared as step 3's."""
    logs, problems, runs, timeout = {}, [], {}, timeout or args.timeout
    for graph in (False, True):
        mode = "graph" if graph else "eager"
        cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "ofql.py"] + train_command(
            "ofql", graph, data_path, steps, log_every, online_steps, args
        )[2:]
        cmd[cmd.index("--seed") : cmd.index("--seed") + 2] = ["--seeds", "0", "1"]
        log = os.path.join(work, f"sweep_{mode}.log")
        proc, t0 = start(cmd, work, log)
        rc = finish(proc, timeout)
        runs[mode] = {"log": log, "seconds": time.time() - t0}
        if rc != 0:
            problems.append(f"{mode} sweep: {error_line(log, rc, timeout)}")
            continue
        summaries = [line[len("summary: ") :] for line in read_text(log).splitlines() if line.startswith("summary: ")]
        if len(summaries) != 2:
            problems.append(f"{mode} sweep: {len(summaries)} members' summaries, not 2")
        try:  # a member's files missing or damaged: a problem of this row, the other checks go on
            member_logs = []
            for member, summary in enumerate(summaries):
                run_dir = os.path.join(work, os.path.dirname(summary))
                lines = read_text(os.path.join(run_dir, "metrics.jsonl")).splitlines()
                member_logs.append(phases([json.loads(line) for line in lines if line.strip()], steps))
                problem = path_problem(json.loads(read_text(os.path.join(run_dir, "config.json"))), graph, cuda)
                problems += [f"{mode} sweep, member {member}: {problem}"] if problem else []
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{mode} sweep, member {len(member_logs)}: unreadable run: {e}")
            continue
        logs[graph] = member_logs
        if summaries:
            runs[mode]["steps_per_sec"] = window_rate(logs[graph][0]["offline"], 0)
            runs[mode]["online_steps_per_sec"] = window_rate(logs[graph][0]["online"], steps)
    comparisons, online = [], []
    if len(logs) == 2:
        for member, (eager, graph) in enumerate(zip(logs[False], logs[True])):
            c, o = compare_phases(eager, graph, online_steps, args)
            comparisons.append(c)
            online += [o] if o else []
            problems += [f"member {member}: {p}" for p in c["problems"]]
            problems += [f"member {member}: online: {p}" for p in o["problems"]] if o else []
    return {
        "ok": not problems,
        "problems": problems,
        "members": comparisons,
        "online": online,
        "steps": steps,
        "online_steps": online_steps,
        "runs": runs,
    }


def run_sweep_parity(args: Args, out: str, cuda: bool, timeout: int | None = None) -> dict:
    """Step 5's first half, on step 3's data file: report["sweep"] until sweep_speed.py has run."""
    work = os.path.join(out, "work")
    steps, log_every, online_steps = sizes(args, args.sweep_steps, cuda)
    data_path = os.path.join(work, "hopper-random.hdf5")
    pair = sweep_pair(data_path, steps, log_every, work, args, cuda, timeout, online_steps)
    return {"parity": pair, "ok": pair["ok"], "error": "; ".join(pair["problems"][:3]) or None, "figures": None}


def run_sweep_speed(args: Args, out: str, cuda: bool, sweep: dict, timeout: int | None = None) -> dict:
    """Step 5's second half: benchmark/sweep_speed.py (eager-light), added to run_sweep_parity's dict."""
    speed_dir, stem, timeout = os.path.join(out, "sweep_speed"), "cuda" if cuda else "cpu", timeout or args.timeout
    flags = (CUDA_SWEEP_SPEED_FLAGS if cuda else CPU_SWEEP_SPEED_FLAGS).split()
    cmd = light_command("sweep_speed", args.sweep_eager_updates if cuda else CPU_EAGER_UPDATES, speed_dir, flags)
    log = os.path.join(out, "sweep_speed.log")
    proc, t0 = start(cmd, ROOT, log)
    rc = finish(proc, timeout)
    pair = sweep["parity"]
    result = {"parity": pair, "command": shown(cmd), "seconds": time.time() - t0, "figures": None}
    if rc != 0:
        return {**result, "ok": False, "error": "; ".join([*pair["problems"][:3], error_line(log, rc, timeout)])}
    try:
        result["figures"] = json.loads(read_text(os.path.join(speed_dir, f"{stem}.json")))
    except (OSError, ValueError) as e:
        return {**result, "ok": False, "error": f"unreadable sweep_speed.py output: {e!r}"}
    result["table"] = os.path.relpath(os.path.join(speed_dir, f"{stem}.md"), ROOT)
    if cuda:  # a path sweep_speed.py could not run is {"failed": ...}: the target not measured, not a KeyError
        graph = result["figures"]["algorithms"]["ofql"]["cuda_graph"]
        value = graph.get("members", {}).get("16", {}).get("member_updates_per_sec")
        result["target"] = {"target": SWEEP_TARGET[0], "bound": f">= {SWEEP_TARGET[1]:g}", "value": value}
        result["target"]["met"] = value is not None and value >= SWEEP_TARGET[1]
    missed = cuda and args.fail_on_targets and not result["target"]["met"]
    ok = pair["ok"] and not missed
    error = "; ".join(pair["problems"][:3]) or (f"missed target: {SWEEP_TARGET[0]}" if missed else None)
    return {**result, "ok": ok, "error": error}


# ---------------------------------------------------------------------------------------------------------------
# The time budget
# ---------------------------------------------------------------------------------------------------------------
def iteration_s(rates: dict, n: int | str) -> float:
    """Seconds per iteration from member-updates/s: of a lone run (n = "plain") or of a sweep of n members, linear in
    n through the two nearest recorded sizes (beyond them, the line through the last two)."""
    if n == "plain":
        return 1 / rates["plain"]
    sizes = sorted(int(k) for k in rates if k != "plain")
    seconds = [k / rates[str(k)] for k in sizes]
    if len(sizes) == 1:
        return seconds[0] * n / sizes[0]
    i = min(max(int(np.searchsorted(sizes, n)), 1), len(sizes) - 1)
    return seconds[i - 1] + (seconds[i] - seconds[i - 1]) * (n - sizes[i - 1]) / (sizes[i] - sizes[i - 1])


def budget(args: Args, rates: dict = H200_RATES) -> list[dict]:
    """The time budget of a CUDA call with these flags: per step it runs, its allowance (STEP_BUDGET_S), the estimate
    of its seconds from the sizes the check chose (its flags, speed.py's and sweep_speed.py's as the check passes them)
    and per-step rates (by default recorded on one H200), the basis of the estimate, and actual_s (set as it ends)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    speed, sweep_speed = (importlib.import_module(tool) for tool in ("speed", "sweep_speed"))
    rows = []

    def row(step: str, estimate: float, basis: str) -> None:
        rows.append(dict(step=step, budget_s=STEP_BUDGET_S.get(step), estimate_s=estimate, basis=basis, actual_s=None))

    def online(per_sec: dict) -> tuple[float, str]:
        """The online phase of an eager and a graph run: seconds, and its basis."""
        if not args.online_steps:
            return 0.0, ""
        step_s = {p: 1 / per_sec[p] + rates["online_step_overhead_s"] for p in PATHS}
        seconds = sum(rates["online_start_s"] + args.online_steps * step_s[p] for p in PATHS)
        overhead_ms = rates["online_step_overhead_s"] * 1e3
        basis = f"; then {args.online_steps} online steps, each its update and {overhead_ms:g} ms more (assumed), "
        return seconds, basis + f"and {rates['online_start_s']:g} s more a run (assumed)"

    row("start", rates["start_s"], "imports, the device's query")
    if args.tests:
        basis = f"tests/test_training_step.py as last timed, and {rates['tests_added_s']:g} s for its tests added since"
        row("tests", rates["tests_s"] + rates["tests_added_s"], basis + " (assumed)")
    row("data", args.transitions * rates["record_s_per_transition"], f"{args.transitions} Hopper-v4 steps")
    for script in args.scripts:
        start_s, per_sec = rates["run_start_s"][script], rates["train_steps_per_sec"][script]
        estimate, more = online(per_sec)
        estimate += sum(start_s[p] + args.train_steps / per_sec[p] for p in PATHS)
        basis = f"2 runs: {args.train_steps} steps at {per_sec['eager']:g} (eager), {per_sec['cuda_graph']:g} (graph)"
        basis += f" steps/s, {start_s['eager']:g} + {start_s['cuda_graph']:g} s more{more}"
        row(f"parity {script}", estimate, basis)
    if args.speed:
        sa = tyro.cli(speed.Args, args=[*CUDA_SPEED_FLAGS.split(), *args.speed_flags.split()])
        updates = {"eager": args.speed_eager_updates, "cuda_graph": sa.updates}
        per_round = 0.0
        for name in sa.algorithms:
            for p in PATHS:
                per_round += (sa.warmup + updates[p]) / rates["updates_per_sec"][name][p]
                per_round += sum((sa.decisions + 1) / r for r in rates["decisions_per_sec"][name][p].values())
        basis = f"{sa.rounds} rounds x ({sa.warmup} + {updates['cuda_graph']} graph, {sa.warmup} + {updates['eager']} "
        basis += (
            f"eager updates and {sa.decisions} + 1 decision batches) at speed.py's rates, {rates['speed_start_s']:g}"
        )
        row("speed", rates["speed_start_s"] + sa.rounds * per_round, basis + " s more")
    if args.sweep:
        start_s, per_sec = rates["sweep_run_start_s"], rates["sweep_steps_per_sec"]
        estimate, more = online(per_sec)
        estimate += sum(start_s + args.sweep_steps / per_sec[p] for p in PATHS)
        basis = f"2 runs: {args.sweep_steps} steps at {per_sec['eager']:g} (eager), {per_sec['cuda_graph']:g} (graph) "
        row("sweep parity", estimate, f"{basis}steps/s, 2 x {start_s:g} s more{more}")
        wa = tyro.cli(sweep_speed.Args, args=CUDA_SWEEP_SPEED_FLAGS.split())
        updates = {"eager": args.sweep_eager_updates, "cuda_graph": wa.updates}
        per_round = sum(
            (wa.warmup + updates[p]) * iteration_s(rates["member_updates_per_sec"][name][p], n)
            for name in wa.algorithms
            for p in PATHS
            for n in ["plain", *wa.members]
        )
        basis = f"{wa.rounds} rounds x ({wa.warmup} + {updates['cuda_graph']} graph, {wa.warmup} + {updates['eager']} "
        basis += f"eager iterations of a lone run and of N = {', '.join(map(str, wa.members))}) at sweep_speed.py's "
        row(
            "sweep speed",
            rates["sweep_start_s"] + wa.rounds * per_round,
            f"{basis}rates, {rates['sweep_start_s']:g} s more",
        )
    return rows


def step_timeout(args: Args, row: dict, cuda: bool) -> int:
    """Seconds after which a subprocess of the step is stopped: on CUDA 4 times the step's estimate (at least 120 s),
    at most --timeout."""
    return min(args.timeout, max(120, math.ceil(4 * row["estimate_s"]))) if cuda else args.timeout


def budget_lines(rows: list[dict], cuda: bool) -> list[str]:
    """The budget as a table: allowance, estimate and actual seconds per step, and their totals."""
    done = [r for r in rows if r["actual_s"] is not None]
    actual = "actual s" if cuda else "actual s (this call, CPU mode)"
    lines = [f"| step | budget s | estimate s (one H200) | {actual} | basis |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['step']} | {fmt(r['budget_s'], 'd')} | {r['estimate_s']:.0f} | {fmt(r['actual_s'], '.0f')} | "
            f"{r['basis']} |"
        )
    total = sum(r["estimate_s"] for r in rows)
    spent = fmt(sum(r["actual_s"] for r in done), ".0f") if done else "-"
    lines.append(f"| total | {BUDGET_S} | {total:.0f} | {spent} | {H200_RATES['device']}: recorded rates |")
    return lines


def process_start() -> float:
    """When this process started (Linux: /proc/self/stat), so that the imports count; elsewhere now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


# ---------------------------------------------------------------------------------------------------------------
# Step 5: the summary
# ---------------------------------------------------------------------------------------------------------------
def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def check_rows(report: dict) -> list[str]:
    rows = []
    tests = report.get("tests")
    if tests:
        counts = (
            f"{tests['passed']} passed, {tests['skipped']} skipped, {tests['failed']} failed, {tests['errors']} errors"
        )
        if not report["cuda"]:
            counts = f"{tests['collected']} collected (not run without CUDA)"
        rows.append(("CUDA tests (tests/test_training_step.py)", tests["ok"], tests["problem"] or counts))
    for script, pair in report.get("parity", {}).get("scripts", {}).items():
        c = pair["comparison"]
        detail = "; ".join(pair["problems"][:3]) + (
            f" (+{len(pair['problems']) - 3} more)" if len(pair["problems"]) > 3 else ""
        )
        if not detail:
            detail = f"{c['windows']} windows; max relative difference {c['max_rel']:.2g}" + (
                f" ({c['max_rel_at']['metric']}, step {c['max_rel_at']['step']})" if c["max_rel_at"] else ""
            )
            detail += online_detail([pair["online"]] if pair.get("online") else [])
        rows.append((f"{script}.py: eager vs CUDA graph", pair["ok"], detail))
    speed = report.get("speed")
    if speed:
        rows.append(
            ("benchmark/speed.py", speed["ok"], speed["error"] or f"{speed['seconds']:.0f} s; see {speed['table']}")
        )
    sweep = report.get("sweep")
    if sweep:
        members = sweep["parity"]["members"]
        detail = f"{len(members)} members; max relative difference " + ", ".join(f"{c['max_rel']:.2g}" for c in members)
        detail += online_detail(sweep["parity"].get("online", []))
        rows.append(("sweep.py: eager vs CUDA graph, sweep_speed.py", sweep["ok"], sweep["error"] or detail))
    episodes = online_episodes(report)
    if episodes:
        detail = f"{episodes['eager']} eager, {episodes['graph']} graph, over {episodes['pairs']} pairs of runs"
        rows.append(("online episodes that ended (steps 3 and 5)", episodes["ok"], detail))
    return ["| check | result | detail |", "|---|---|---|"] + [
        f"| {name} | {'pass' if ok else '**FAIL**'} | {detail} |" for name, ok, detail in rows
    ]


def online_detail(online: list[dict]) -> str:
    """The online phases of a pair (a sweep's: per member) in a check's detail: reported, not failed on."""
    if not online:
        return ""
    rel = ", ".join(f"{o['max_rel']:.2g}" for o in online)
    episodes = ", ".join(f"{o['episodes']['eager']}/{o['episodes']['graph']}" for o in online)
    return f"; online (reported only): max relative difference {rel}, episodes eager/graph {episodes}"


def online_episodes(report: dict) -> dict | None:
    """The online episodes that ended per path, over the pairs of runs (step 3's, step 5's members) that ran an online
    phase to the end; ok if some ended on each path (None without an online phase)."""
    online = [p["online"] for p in report.get("parity", {}).get("scripts", {}).values() if p.get("online")]
    online += (report.get("sweep") or {}).get("parity", {}).get("online", [])
    if not online:
        return None
    counts = {mode: sum(o["episodes"][mode] for o in online) for mode in ("eager", "graph")}
    return {"pairs": len(online), **counts, "ok": all(counts.values())}


PARITY_HEADER = (
    "| script | steps/s, eager | steps/s, CUDA graph | graph / eager | max rel. diff, early windows "
    "| max rel. diff, all windows | first window beyond rtol | online steps/s, eager | online steps/s, CUDA graph "
    "| online max rel. diff (reported only) | online episodes, eager/graph |"
)


def parity_table(parity: dict) -> list[str]:
    data, online_steps = parity["data"], parity.get("online_steps", 0)
    intro = f"Parity runs: {parity['steps']} offline steps, then {online_steps} online steps, windows of "
    intro += f"{parity['log_every']} steps, {data['transitions']} Hopper-v4 random-policy transitions."
    lines = [intro, "", PARITY_HEADER, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for script, pair in parity["scripts"].items():
        e, g, c = pair["eager"].get("steps_per_sec"), pair["graph"].get("steps_per_sec"), pair["comparison"]
        first = c and c["first_beyond_rtol"]
        first = f"{first['step']} ({first['metric']})" if first else "-"
        o = pair.get("online")
        episodes = f"{o['episodes']['eager']}/{o['episodes']['graph']}" if o else "-"
        lines.append(
            f"| {script} | {fmt(e)} | {fmt(g)} | {fmt(g / e if e and g else None, '.2f')} | "
            f"{fmt(c and c['tight_max_rel'], '.2g')} | {fmt(c and c['max_rel'], '.2g')} | {first} | "
            f"{fmt(pair['eager'].get('online_steps_per_sec'))} | {fmt(pair['graph'].get('online_steps_per_sec'))} | "
            f"{fmt(o and o['max_rel'], '.2g')} | {episodes} |"
        )
    return lines


def speed_tables(speed: dict) -> list[str]:
    paths = sorted({p for f in speed["figures"].values() for p in f}, key=["eager", "cuda_graph"].index)
    lines = [
        f"speed.py on {speed['device']}:",
        "",
        "| script | "
        + " | ".join(
            f"updates/s, {p} | decisions/s, 1 candidate, {p} | decisions/s, evaluation candidates, {p}" for p in paths
        )
        + " |",
        "|---|" + "---:|" * (3 * len(paths)),
    ]
    for name, f in speed["figures"].items():
        cells = [
            f"{f[p]['updates_per_sec']:.1f} | {f[p]['decisions_1']:.1f} | {f[p]['decisions_k']:.1f} ({f[p]['k']})"
            for p in paths
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if speed["ratios"]:
        lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in speed["ratios"].items()]
    if speed["targets"]:
        lines += ["", "| target (one H100/H200) | bound | measured | met |", "|---|---|---:|---|"]
        lines += [
            f"| {t['target']} | {t['bound']} | {fmt(t['value'], '.2f')} | "
            f"{'-' if t['met'] is None else ('yes' if t['met'] else '**no**')} |"
            for t in speed["targets"]
        ]
    return lines


def markdown(report: dict) -> str:
    d = report["device"]
    head = (
        f"{d['device']}; driver {d.get('driver', '-')}; torch {d['torch']}; CUDA {d['cuda'] or '-'}; "
        f"cuDNN {d.get('cudnn', '-')}; Python {d['python']}"
    )
    if report.get("ok") is None:  # written after each step: a call stopped halfway leaves this
        done = sum(r["actual_s"] is not None for r in report["budget"]["rows"])
        state = f"**INCOMPLETE** after {report['seconds']:.0f} s: {done} of {len(report['budget']['rows'])} steps done"
    else:
        state = f"**{'PASS' if report['ok'] else 'FAIL'}** in {report['seconds']:.0f} s"
    lines = ["# GPU check", "", head, "", state, ""]
    lines += check_rows(report)
    if report.get("budget"):
        lines += ["", "Time budget (seconds; the estimates are a CUDA call's at the recorded rates):", ""]
        lines += budget_lines(report["budget"]["rows"], report["cuda"])
    if report.get("parity"):
        lines += ["", *parity_table(report["parity"])]
    if report.get("speed") and report["speed"].get("figures"):
        lines += ["", *speed_tables(report["speed"])]
    sweep = report.get("sweep")
    if sweep and sweep.get("figures"):
        lines += [
            "",
            f"sweep_speed.py ({sweep['table']}):",
            "",
            *read_text(os.path.join(ROOT, sweep["table"])).splitlines(),
        ]
        if sweep.get("target"):
            s = sweep["target"]
            met = "met" if s["met"] else "**not met**"
            lines += ["", f"{s['target']}: {fmt(s['value'], '.0f')} ({s['bound']}: {met})"]
    return "\n".join(lines) + "\n"


def write(report: dict, out: str) -> str:
    """summary.md and results.json, with paths inside the repository written relative to it (not this machine's)."""
    here = ROOT + os.sep
    text = markdown(report).replace(here, "")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write(json.dumps(report, indent=1).replace(json.dumps(here)[1:-1], ""))
    return text


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
def failures(report: dict) -> list[str]:
    found = [] if not report.get("tests") or report["tests"]["ok"] else [f"tests: {report['tests']['problem']}"]
    for script, pair in report.get("parity", {}).get("scripts", {}).items():
        found += [f"{script}: {p}" for p in pair["problems"]]
    if report.get("speed") and not report["speed"]["ok"]:
        found.append(f"speed.py: {report['speed']['error']}")
    if report.get("sweep") and not report["sweep"]["ok"]:
        found.append(f"sweep: {report['sweep']['error']}")
    found += [f"--deadline: not run: {step}" for step in report.get("not_run", [])]
    episodes = online_episodes(report)
    for mode in ("eager", "graph") if episodes else ():
        if not episodes[mode]:
            found.append(
                f"online: no online episode ended in the {mode} runs (their episode ends were not exercised): "
                "rerun with a larger --online-steps"
            )
    return found


def run_steps(args: Args, out: str, cuda: bool, report: dict, step) -> None:
    """The check's steps in order, each through step(name, into, key, run) (timed, written, its line printed)."""
    if args.tests:
        step("tests", report, "tests", lambda timeout: run_tests(args, out, cuda, timeout))
    step("data", report, "parity", lambda _: prepare_parity(args, out, cuda))
    p = report["parity"]
    data_path, pairs = p["data"]["path"], p["scripts"]
    pair_args = (data_path, (p["steps"], p["log_every"], p["online_steps"]), os.path.dirname(data_path))
    for script in args.scripts:
        step(f"parity {script}", pairs, script, lambda t, s=script: train_pair(s, *pair_args, args, cuda, t))
    if args.speed:
        step("speed", report, "speed", lambda timeout: run_speed(args, out, cuda, timeout))
    if args.sweep:
        step("sweep parity", report, "sweep", lambda timeout: run_sweep_parity(args, out, cuda, timeout))
        step("sweep speed", report, "sweep", lambda t: run_sweep_speed(args, out, cuda, report["sweep"], t))


def main(args: Args) -> int:
    global DEADLINE
    started, cuda = process_start(), torch.cuda.is_available()
    DEADLINE = started + args.deadline if args.deadline else math.inf
    out = args.out_dir or os.path.join(ROOT, "benchmark", "results", "gpu_check", "" if cuda else "cpu_mode")
    os.makedirs(out, exist_ok=True)
    for stale in ("speed/cuda.json", "speed/cuda.md", "sweep_speed/cuda.json", "sweep_speed/cuda.md"):
        with contextlib.suppress(OSError):  # an earlier call's: a call cut before these steps must not return them
            os.remove(os.path.join(out, stale))
    rows = budget(args)
    report = {"cuda": cuda, "device": device_info(cuda), "args": asdict(args), "ok": None}
    report["budget"] = {"budget_s": BUDGET_S, "rates": H200_RATES["device"], "rows": rows}
    row = {r["step"]: r for r in rows}
    say = print if cuda else lambda *_, **__: None  # progress on CUDA; one line at the end without
    say(" ".join(f"{k}={v}" for k, v in report["device"].items()), flush=True)
    estimate = sum(r["estimate_s"] for r in rows)
    say("\n".join(["Time budget:", *budget_lines(rows, cuda)]), flush=True)
    if estimate > BUDGET_S:
        say(f"NOTE: the estimate, {estimate:.0f} s, is over the {BUDGET_S} s budget of one call (these flags)")

    def done(step: str, seconds: float, ok: bool | None = None) -> None:
        """The step's actual seconds into the budget, the results written (a stopped call keeps them), a line."""
        row[step]["actual_s"], report["seconds"] = seconds, time.time() - started
        write(report, out)
        spent = sum(r["actual_s"] for r in rows if r["actual_s"] is not None)
        left = sum(r["estimate_s"] for r in rows if r["actual_s"] is None)
        verdict = "" if ok is None else ("ok, " if ok else "FAILED, ")
        say(
            f"{step}: {verdict}{seconds:.0f} s (estimate {row[step]['estimate_s']:.0f} s, budget "
            f"{row[step]['budget_s']} s); {report['seconds']:.0f} s so far, about {spent + left:.0f} s in all",
            flush=True,
        )

    def step(name: str, into: dict, key: str, run) -> None:
        """into[key] = run(the step's subprocess timeout), timed as the budget's step `name`."""
        if time.time() > DEADLINE - 10:  # too late to start a step
            raise DeadlineReached
        t0 = time.time()
        into[key] = run(step_timeout(args, row[name], cuda))
        done(name, time.time() - t0, into[key].get("ok"))

    done("start", time.time() - started)
    try:
        run_steps(args, out, cuda, report, step)
    except DeadlineReached:
        report["not_run"] = [r["step"] for r in rows if r["actual_s"] is None]
        say(f"--deadline {args.deadline} s reached; not run: {', '.join(report['not_run'])}", flush=True)
    report["failures"] = failures(report)
    report["ok"], report["seconds"] = not report["failures"], time.time() - started
    text = write(report, out)
    if not cuda:
        state = "work" if report["ok"] else "FAILED: " + "; ".join(report["failures"])
        print(
            f"gpu_check: no CUDA device: nothing measured; the CPU parts {state} ({report['seconds']:.0f} s, {out}); "
            f"a CUDA call with these flags: {estimate:.0f} s of its {BUDGET_S} s budget on one H200 (estimate)"
        )
        return 0 if report["ok"] else 1
    print(text + "\n".join(f"FAILED: {f}" for f in report["failures"]))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main(tyro.cli(Args, description=__doc__)))
    except CheckError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        sys.exit(1)
