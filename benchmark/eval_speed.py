"""What evaluation costs: the evaluation envs stepped in one process (a SyncVectorEnv) against worker processes
(offline_data.vector_env), side by side, and the env steps of the paper's Table 1 protocol priced at the measured step
times.

    python benchmark/eval_speed.py                          # Table 1's six env families, 32 envs, 1 and 2 workers
    python benchmark/eval_speed.py --workers 1 4 15 --num-envs 160

For each env id: --num-envs envs reset with seeds 0, 1, ..., then --steps vector steps of random actions, timed in turns
with each worker count over --rounds rounds (each figure the median); the ratio is one process's time over the workers'.
Then, per script, the evaluation env steps of Table 1 (with Appendix J's pen: 17 D4RL datasets, each run at its presets:
runs x evaluations x evaluated policies x episodes x the env's time limit, an upper bound, as the scripts step every env
until all have ended) and their hours at one process's measured step time of the dataset's family, and at the fastest
worker count's. Writes benchmark/results/eval_speed/<machine>.{md,json}.
"""

import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from online_speed import machine  # noqa: E402
from sweep_speed import TABLE1_DATASETS, TABLE1_RUNS_PER_DATASET  # noqa: E402

import bookkeeping  # noqa: E402  (the commit)
import offline_data  # noqa: E402
from speed import MODULES  # noqa: E402

FAMILIES = {  # Table 1's families, each priced at the step time of the id measured for it
    "halfcheetah": "halfcheetah-medium-v2",
    "hopper": "hopper-medium-v2",
    "walker2d": "walker2d-medium-v2",
    "antmaze": "antmaze-large-play-v2",
    "kitchen": "kitchen-mixed-v0",
    "pen": "pen-cloned-v1",
}


@dataclass
class Args:
    env_ids: list[str] = field(default_factory=lambda: list(FAMILIES.values()))
    """the evaluation envs to time (D4RL ids; default one per family of Table 1)"""
    num_envs: int = 32
    """envs stepped together (a sweep's members x episodes)"""
    workers: list[int] = field(default_factory=lambda: [1, 2])
    """worker counts to compare (1: one SyncVectorEnv in this process)"""
    steps: int = 100
    """timed vector steps per round, after a reset and 5 untimed steps"""
    rounds: int = 3
    """rounds, each timing every worker count in turn"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "eval_speed")
    """where <cpu|...>.md and .json go"""


def time_steps(envs: gym.vector.VectorEnv, actions: np.ndarray) -> float:
    """Seconds per vector step of `envs` over `actions` (steps x envs x action size), after a seeded reset."""
    envs.reset(seed=list(range(envs.num_envs)))
    for a in actions[:5]:
        envs.step(a)
    start = time.perf_counter()
    for a in actions[5:]:
        envs.step(a)
    return (time.perf_counter() - start) / (len(actions) - 5)


def measure(env_id: str, args: Args) -> dict:
    """ms per vector step of --num-envs envs with each worker count (medians over the rounds), the ratios."""
    make = offline_data.eval_env_factory(env_id)
    if make is None:
        raise ValueError("no evaluation env for this id (an unknown D4RL id, or gymnasium_robotics missing)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        envs = {w: offline_data.vector_env([make] * args.num_envs, workers=w) for w in args.workers}
    act_dim = envs[args.workers[0]].single_action_space.shape[0]
    actions = np.random.default_rng(0).uniform(-1, 1, (args.steps + 5, args.num_envs, act_dim)).astype(np.float32)
    times = {w: [] for w in args.workers}
    for _ in range(args.rounds):
        for w, e in envs.items():
            times[w].append(time_steps(e, actions))
    for e in envs.values():
        e.close()
    ms = {w: 1e3 * statistics.median(t) for w, t in times.items()}
    base = ms[args.workers[0]]
    row = dict(env_id=env_id, ms_per_vector_step={str(w): v for w, v in ms.items()})
    row["ms_per_env_step_one_process"] = base / args.num_envs
    row["ratio"] = {str(w): base / v for w, v in ms.items()}
    print(f"{env_id}: " + ", ".join(f"{w} workers {v:.2f} ms ({base / v:.2f}x)" for w, v in ms.items()), flush=True)
    return row


def family(env_id: str) -> str:
    """The Table 1 family of a D4RL id (the id itself outside them)."""
    return next((f for f in FAMILIES if env_id.startswith(f)), env_id)


def time_limit(env: gym.Env) -> int:
    """The steps after which the env's TimeLimit ends an episode."""
    while not isinstance(env, gym.wrappers.TimeLimit):
        env = env.env
    return env._max_episode_steps


def table1_eval_steps(name: str) -> dict:
    """Per dataset of Table 1, the script's evaluation env steps at its presets (an upper bound: every episode to its
    time limit): runs x evaluations x policies (the protocol's, and the policy's own sample when they differ) x
    episodes x steps per episode."""
    module = MODULES[name]
    steps = {}
    for env_id in TABLE1_DATASETS:
        a = module.Args(**module.PRESETS[env_id])
        policies = 2 if a.num_candidates > 1 else 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = offline_data.eval_env_factory(env_id)()
        limit = time_limit(env)
        env.close()
        steps[env_id] = TABLE1_RUNS_PER_DATASET[name] * (a.total_steps // a.eval_every) * policies * a.eval_episodes
        steps[env_id] *= limit
    return steps


def measured(env_id: str, args: Args) -> dict:
    """measure(env_id), or why it could not be (a package missing on the machine: gymnasium_robotics for AntMaze,
    Kitchen and pen), in its row."""
    try:
        return measure(env_id, args)
    except Exception as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        print(f"{env_id}: not measured: {type(e).__name__}: {text}", flush=True)
        return dict(env_id=env_id, error=f"{type(e).__name__}: {text}")


def main(args: Args) -> dict:
    if not args.workers or args.workers[0] != 1:
        raise SystemExit("--workers starts with 1: one process, the baseline of the ratios")
    if min(args.num_envs, args.steps, args.rounds, *args.workers) < 1:
        raise SystemExit("--num-envs, --steps, --rounds and --workers must be at least 1")
    rows = [measured(env_id, args) for env_id in args.env_ids]
    per_env_ms = {family(r["env_id"]): r["ms_per_env_step_one_process"] for r in rows if "error" not in r}
    best = {family(r["env_id"]): max(r["ratio"].values()) for r in rows if "error" not in r}
    table1 = {}
    if all(family(d) in per_env_ms for d in TABLE1_DATASETS):  # else a family was not measured: no hours
        for name in TABLE1_RUNS_PER_DATASET:
            steps = table1_eval_steps(name)  # builds each family's env: only where every one was measured
            hours = sum(n * per_env_ms[family(d)] / 3.6e6 for d, n in steps.items())
            fastest = sum(n * per_env_ms[family(d)] / 3.6e6 / best[family(d)] for d, n in steps.items())
            table1[name] = dict(env_steps=sum(steps.values()), hours_one_process=hours, hours_fastest=fastest)
    saved = {**vars(args), "out_dir": os.path.relpath(args.out_dir, ROOT)}
    result = dict(machine=machine(), commit=bookkeeping.code_version(__file__), args=saved, rows=rows)
    result["table1_evaluation"] = table1
    write(result, args.out_dir)
    return result


def markdown(result: dict) -> list[str]:
    m, a = result["machine"], result["args"]
    workers = [str(w) for w in a["workers"]]
    lines = [
        f"Evaluation envs on {m['processor']} ({m['cores_allowed']} cores allowed), python {m['python']}, mujoco "
        f"{m['mujoco']}, gymnasium {m['gymnasium']}: {a['num_envs']} envs, {a['steps']} timed vector steps of random "
        f"actions per round, {a['rounds']} rounds (medians); `python benchmark/eval_speed.py` with these arguments "
        f"at commit {result.get('commit')}.",
        "",
        "| env | "
        + " | ".join(f"ms per vector step, {w} worker(s)" for w in workers)
        + " | "
        + " | ".join(f"ratio, {w}" for w in workers[1:])
        + " |",
        "|---|" + "---:|" * (2 * len(workers) - 1),
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['env_id']} | not measured: {r['error']} |" + " |" * (2 * len(workers) - 2))
            continue
        cells = [f"{r['ms_per_vector_step'][w]:.2f}" for w in workers] + [f"{r['ratio'][w]:.2f}" for w in workers[1:]]
        lines.append(f"| {r['env_id']} | " + " | ".join(cells) + " |")
    if result["table1_evaluation"]:
        lines += [
            "",
            "Table 1's evaluation (17 D4RL datasets at each script's presets; every episode counted to its time "
            "limit), priced at one process's step time per env of each family and at the fastest worker count's:",
            "",
            "| script | evaluation env steps | hours, one process | hours, fastest worker count |",
            "|---|---:|---:|---:|",
        ]
        for name, t in result["table1_evaluation"].items():
            lines.append(
                f"| {name} | {t['env_steps'] / 1e6:.0f}M | {t['hours_one_process']:.1f} | {t['hours_fastest']:.1f} |"
            )
    return lines


def write(result: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    name = "cpu" if result["machine"]["cores_allowed"] <= 2 else f"cpu{result['machine']['cores_allowed']}"
    lines = markdown(result)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
