"""The wall-clock that FQL's offline-to-online protocol (1M offline updates, then 1M online steps, one update after
each) implies on one GPU, from measured speeds: the env side of an online step measured here, on this machine's CPU;
the updates' rates those on record from a GPU (sweep_speed.py's CUDA-graph path, benchmark/results/sweep_speed/).

    python benchmark/online_speed.py                                          # the 15 envs of FQL's online table
    python benchmark/online_speed.py --env-ids pen-cloned-v1 --steps 100 --out-dir /tmp/online_speed

Each env (the evaluation env: offline_data.eval_env_factory for a D4RL id, ogbench's own for an OGBench id) is made,
reset with --seed, then stepped --warmup untimed and --steps timed times with random actions from its action space,
reset when an episode ends (the online phase's envs restart within the step). A step's time is the timed steps' and
resets' CPU time of this process (time.process_time: unaffected by other processes' load on the machine) per step;
wall-clock (time.perf_counter) alongside. An env that cannot be built here gets a row saying so.

The model: updates and env steps one after another, as train()'s loop does them. With r one run's updates/s, R the
member-updates/s of a sweep of N = 16 members and t the env step's CPU time:
    one run:  offline 1e6 / r,        online 1e6 x (1 / r + t)
    sweep:    offline 1e6 / (R / N),  online 1e6 x (N / R + N t / W)   (its N envs in W --workers processes,
              each stepping its share one after another); per member-run, the sweep's hours / N.
A lower bound: the online step's policy call, its host-device copies, the vector env's own work, storing the
transitions and the evaluations are not measured; nor the cost of the env's shapes (the rates are halfcheetah's).
"""

import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import gymnasium as gym
import mujoco
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bookkeeping  # noqa: E402  (the commit)
import offline_data  # noqa: E402  (the envs)
from offline_data.ogbench_datasets import make_ogbench_env  # noqa: E402

# FQL's offline-to-online table: D4RL AntMaze and Adroit, OGBench's default tasks
FQL_ONLINE_ENVS = [
    *(f"antmaze-{m}-v2" for m in ("umaze", "umaze-diverse", "medium-play", "medium-diverse")),
    *(f"antmaze-{m}-v2" for m in ("large-play", "large-diverse")),
    *(f"{task}-cloned-v1" for task in ("pen", "door", "hammer", "relocate")),
    "humanoidmaze-medium-navigate-singletask-v0",
    "antsoccer-arena-navigate-singletask-v0",
    "cube-double-play-singletask-v0",
    "scene-play-singletask-v0",
    "puzzle-4x4-play-singletask-v0",
]
TIMING = "CPU time of this process (time.process_time: unaffected by other processes' load on the machine)"
MODEL = (
    "updates and env steps one after another, as the loop does them; r: one run's updates/s, R: a sweep's "
    "member-updates/s, t: env step time (CPU). One run: offline {off} / r, online {on} x (1 / r + t). Sweep of {n}: "
    "offline {off} / (R / {n}), online {on} x ({n} / R + {n} t / {w}) (its {n} envs in {w} worker process(es), "
    "each stepping its share one after another); per member-run, the sweep's hours / {n}."
)
LIMITS = (
    "a lower bound: the online step's policy call (a sample on the GPU), its host-device copies, the vector env's own "
    "work, storing the transitions and the evaluations are NOT measured; the GPU rates are those of halfcheetah's "
    "shapes with offline batches, the env steps take random actions."
)


@dataclass
class Args:
    env_ids: list[str] = field(default_factory=lambda: list(FQL_ONLINE_ENVS))
    """the envs to measure (D4RL or OGBench ids; default: those of FQL's offline-to-online table)"""
    steps: int = 1000
    """timed env steps per env (an episode that ends within them is reset, the reset timed with its step)"""
    warmup: int = 50
    """untimed env steps before them"""
    seed: int = 0
    """the env's first reset seed and its action space's"""
    gpu_results: str = os.path.join(ROOT, "benchmark", "results", "sweep_speed", "cuda.json")
    """sweep_speed.py's results on a GPU: each algorithm's CUDA-graph rates are used"""
    members: int = 16
    """the sweep size N whose member-updates/s (a key of the results' members) prices a sweep"""
    workers: int = 1
    """W, the processes a sweep's N envs step in (the scripts: offline_data.default_workers, 1 on 2 cores)"""
    offline_steps: int = 1_000_000
    """offline updates per run (FQL's protocol)"""
    online_steps: int = 1_000_000
    """online env steps per run, one update after each (FQL's protocol)"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "online_speed")
    """where results.md and results.json go"""


def make_env(env_id: str) -> gym.Env:
    """The evaluation env of a D4RL or OGBench id, as the scripts' online phase makes it."""
    if offline_data.is_ogbench_id(env_id):
        return make_ogbench_env(env_id)
    factory = offline_data.eval_env_factory(env_id)
    if factory is None:
        raise ValueError("no evaluation env for this id (an unknown D4RL domain, or gymnasium_robotics missing)")
    return factory()


def time_steps(env: gym.Env, args: Args) -> dict:
    """Seconds of CPU time and wall-clock per env step (resets included) over args.steps steps after args.warmup."""
    env.action_space.seed(args.seed)
    env.reset(seed=args.seed)
    cpu = wall = 0.0
    resets = 0
    for i in range(args.warmup + args.steps):
        action = env.action_space.sample()  # the policy's part, not timed
        c, w = time.process_time(), time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
        if i >= args.warmup:
            cpu, wall = cpu + time.process_time() - c, wall + time.perf_counter() - w
            resets += bool(terminated or truncated)
    return dict(cpu_ms=1e3 * cpu / args.steps, wall_ms=1e3 * wall / args.steps, resets=resets)


def measure(env_id: str, args: Args) -> dict:
    """The env's step times, or why it could not be built or stepped here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium(-robotics) version and dtype notices
            env = make_env(env_id)
            row = dict(env_id=env_id, **time_steps(env, args))
        env.close()
    except Exception as e:  # a missing package, an unknown id: said in its row
        message = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return dict(env_id=env_id, error=f"could not be built: {type(e).__name__}: {message}")
    print(f"{env_id}: {row['cpu_ms']:.3f} ms per step (CPU), {row['wall_ms']:.3f} ms (wall)", flush=True)
    return row


def gpu_rates(path: str, n: int) -> dict:
    """The results' device, torch and date, and per algorithm its CUDA-graph rates: one run's, a sweep of n's."""
    with open(path) as f:
        result = json.load(f)
    graphed = {
        name: r["cuda_graph"]
        for name, r in result.get("algorithms", {}).items()
        if "members" in r.get("cuda_graph", {})
    }
    if not graphed:
        raise SystemExit(f"--gpu-results {path}: no CUDA-graph rates in it (a cuda.json of benchmark/sweep_speed.py?)")
    sizes = sorted(set.intersection(*(set(r["members"]) for r in graphed.values())), key=int)
    if str(n) not in sizes:
        raise SystemExit(f"--members {n}: {path} has the rates of sweeps of {', '.join(sizes)} members")
    rates = {
        name: dict(
            one_run_updates_per_sec=r["plain_updates_per_sec"],
            sweep_member_updates_per_sec=r["members"][str(n)]["member_updates_per_sec"],
        )
        for name, r in graphed.items()
    }
    date = result.get("date") or recorded_date(path)
    return dict(
        results=os.path.relpath(path, ROOT),
        device=result["device"],
        torch=result["torch"],
        date=date,
        path="cuda_graph",
        env_id=result.get("env_id"),
        batch_size=result.get("batch_size"),
        rates=rates,
    )


def recorded_date(path: str) -> str:
    """The date of the file's last commit (the results carry none), or 'not recorded'."""
    git = ["git", "log", "-1", "--format=%cs", "--", os.path.abspath(path)]
    out = subprocess.run(git, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"{out} (the file's last commit)" if out else "not recorded"


def implied_hours(rates: dict, t: float, args: Args) -> dict:
    """Hours of one run and of a sweep of args.members at an algorithm's rates (gpu_rates' entry), env step t s."""
    r, big_r, n = rates["one_run_updates_per_sec"], rates["sweep_member_updates_per_sec"], args.members
    run_offline, run_online = args.offline_steps / r, args.online_steps * (1 / r + t)
    sweep_offline = args.offline_steps / (big_r / n)
    sweep_online = args.online_steps * (n / big_r + n * t / args.workers)
    seconds = dict(run_offline=run_offline, run_online=run_online, run=run_offline + run_online)
    seconds.update(sweep_offline=sweep_offline, sweep_online=sweep_online, sweep=sweep_offline + sweep_online)
    h = {f"{k}_h": v / 3600 for k, v in seconds.items()}
    return h | dict(sweep_per_member_run_h=h["sweep_h"] / n)


def machine() -> dict:
    """Where the env steps ran: the processor, the CPU count, the cores this process may use, the versions."""
    processor = platform.processor()
    if not processor and os.path.exists("/proc/cpuinfo"):  # empty on many Linux machines
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        processor = names[0] if names else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(
        processor=processor or "unknown",
        cpu_count=os.cpu_count(),
        cores_allowed=cores,
        python=platform.python_version(),
        mujoco=mujoco.__version__,
        gymnasium=gym.__version__,
    )


def main(args: Args) -> dict:
    if min(args.steps, args.members, args.workers) < 1 or min(args.warmup, args.offline_steps, args.online_steps) < 0:
        raise SystemExit(
            "--steps, --members and --workers must be at least 1; --warmup and the phases' steps at least 0"
        )
    if args.workers > args.members:  # a worker steps one env at least
        raise SystemExit(f"--workers {args.workers} is above --members {args.members} (the sweep's envs)")
    gpu = gpu_rates(args.gpu_results, args.members)
    rows = [measure(env_id, args) for env_id in args.env_ids]
    for row in rows:
        if "cpu_ms" in row:
            row["hours"] = {name: implied_hours(r, row["cpu_ms"] / 1e3, args) for name, r in gpu["rates"].items()}
    offline = {name: implied_hours(r, 0.0, args) for name, r in gpu["rates"].items()}  # the same for every env
    result = dict(
        machine=machine(),
        commit=bookkeeping.code_version(__file__),
        date=time.strftime("%Y-%m-%d"),
        timing=TIMING,
        steps=args.steps,
        warmup=args.warmup,
        seed=args.seed,
        gpu=gpu,
        members=args.members,
        workers=args.workers,
        offline_steps=args.offline_steps,
        online_steps=args.online_steps,
        model=MODEL.format(off=f"{args.offline_steps:,}", on=f"{args.online_steps:,}", n=args.members, w=args.workers),
        limitations=LIMITS,
        offline_hours={name: {k: h[k] for k in ("run_offline_h", "sweep_offline_h")} for name, h in offline.items()},
        envs=rows,
    )
    write(result, args.out_dir)
    return result


def markdown(result: dict) -> list[str]:
    m, gpu, n = result["machine"], result["gpu"], result["members"]
    names = list(gpu["rates"])
    lines = [
        f"Env steps measured on {m['processor']} ({m['cpu_count']} CPUs, this process allowed {m['cores_allowed']}), "
        f"python {m['python']}, mujoco {m['mujoco']}, gymnasium {m['gymnasium']}, {result['date']}: per env "
        f"{result['steps']} timed steps after {result['warmup']} untimed, random actions, first reset seed "
        f"{result['seed']}; a step's time is the {result['timing']} per step, resets included.",
        "",
        f"GPU update rates: {gpu['results']} ({gpu['device']}, torch {gpu['torch']}, {gpu['date']}; {gpu['path']} "
        f"path, {gpu['env_id']} shapes, batch {gpu['batch_size']}).",
        "",
        f"| algorithm | one run: updates/s | sweep of {n}: member-updates/s | offline phase, one run (h) | "
        f"offline phase, sweep of {n} (h) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in gpu["rates"].items():
        off = result["offline_hours"][name]
        lines.append(
            f"| {name} | {r['one_run_updates_per_sec']:.1f} | {r['sweep_member_updates_per_sec']:.1f} | "
            f"{off['run_offline_h']:.2f} | {off['sweep_offline_h']:.2f} |"
        )
    lines += [
        "",
        f"Hours of the whole protocol ({result['offline_steps']:,} offline updates, then {result['online_steps']:,} "
        f"online steps): one run; a sweep of {n} (its {n} member-runs together; per member-run in parentheses).",
        "",
        "| env | env step ms (CPU) | env step ms (wall) | resets timed | "
        + " | ".join(f"{a}: one run (h) | {a}: sweep of {n} (h)" for a in names)
        + " |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(names),
    ]
    for row in result["envs"]:
        if "error" in row:
            lines.append(f"| {row['env_id']} | {row['error']} |" + " |" * (2 + 2 * len(names)))
            continue
        h = row["hours"]
        cells = [f"{h[a]['run_h']:.1f} | {h[a]['sweep_h']:.1f} ({h[a]['sweep_per_member_run_h']:.2f})" for a in names]
        lines.append(
            f"| {row['env_id']} | {row['cpu_ms']:.3f} | {row['wall_ms']:.3f} | {row['resets']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines + ["", f"Model: {result['model']}", "", f"Limits: {result['limitations']}"]


def write(result: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    lines = markdown(result)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
