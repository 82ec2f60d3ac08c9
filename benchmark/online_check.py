"""Offline-to-online fine-tuning on the CPU: the three scripts with their presets on hopper-medium-replay, offline
updates then as many online steps (one update after each), evaluated over the combined steps; a table and curves.

    python benchmark/online_check.py --dataset-path hopper-medium-replay.hdf5   # trains (two runs at a time), reports
    python benchmark/online_check.py --dataset-path hopper-medium-replay.hdf5 --plot-only   # the report, from the runs

An algorithm with several seeds trains them together (sweep.py); the defaults are what one 2-core session affords
(OFQL seeds 0 and 1; DQL and FQL, 1.5 and 5 times slower per update on the CPU, seed 0). The report reads each run's
metrics.jsonl, so a run still under way is reported up to its last evaluation (and said to be), and the protocol
(steps, evaluations) from the runs' config.json.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmark"))
from compare import dataset_mean_score, mean_std, stop_others  # noqa: E402

SCRIPTS = {"ofql": "ofql.py", "dql": "dql.py", "fql": "fql.py"}
ENV_ID = "hopper-medium-replay-v2"
PROTOCOL = ("total_steps", "online_steps", "eval_every", "eval_episodes")  # the runs' own, from their config.json


@dataclass
class Args:
    dataset_path: str
    """a hopper-medium-replay file in D4RL's layout"""
    offline_steps: int = 20_000
    """gradient steps on the dataset (--total-steps; the report reads each run's own from its config.json)"""
    online_steps: int = 20_000
    """then environment steps, one update after each (--online-steps)"""
    eval_every: int = 2_000
    """evaluation interval over the combined steps"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    ofql_seeds: list[int] = field(default_factory=lambda: [0, 1])
    """OFQL's seeds (several: one sweep; none: no OFQL run)"""
    dql_seeds: list[int] = field(default_factory=lambda: [0])
    """DQL's seeds (1.5 times slower per update than OFQL on the CPU)"""
    fql_seeds: list[int] = field(default_factory=lambda: [0])
    """FQL's seeds (5 times slower per update than OFQL on the CPU)"""
    exp_name: str = "online_check"
    """the runs' experiment name, by which the report finds them"""
    runs_dir: str = os.path.join(ROOT, "benchmark", "results", "online_check", "runs")
    """where the runs' folders are (to train, a folder named runs: the scripts write runs/ in their folder)"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "online_check")
    """where results.md, results.json and curves.png go"""
    plot_only: bool = False
    """skip training; report the runs in --runs-dir"""


def commands(args: Args) -> dict[str, list[str]]:
    """algorithm -> the command of its process: its seeds in one sweep, or its one seed's run (no seeds: none)."""
    flags = ["--env-id", ENV_ID, "--dataset-path", os.path.abspath(args.dataset_path), "--exp-name", args.exp_name]
    flags += ["--total-steps", str(args.offline_steps), "--online-steps", str(args.online_steps)]
    flags += ["--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes)]
    seeds = {"ofql": args.ofql_seeds, "dql": args.dql_seeds, "fql": args.fql_seeds}
    runs = {
        a: [os.path.join(ROOT, "sweep.py"), SCRIPTS[a], "--seeds", *map(str, s)]
        if len(s) > 1
        else [os.path.join(ROOT, SCRIPTS[a]), "--seed", str(s[0])]
        for a, s in seeds.items()
        if s
    }
    return {a: [sys.executable, *cmd, *flags] for a, cmd in runs.items()}


def train(args: Args) -> None:
    workdir = os.path.dirname(os.path.abspath(args.runs_dir))
    os.makedirs(workdir, exist_ok=True)
    queue, running = list(commands(args).items()), {}  # process: its log
    while queue or running:
        while queue and len(running) < 2:
            algorithm, cmd = queue.pop(0)
            print(" ".join(cmd[1:]), flush=True)
            log = os.path.join(workdir, f"{args.exp_name}_{algorithm}.log")
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            out = open(log, "w")
            running[subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)] = log
        time.sleep(10)
        for proc in [p for p in running if p.poll() is not None]:
            log = running.pop(proc)
            if proc.returncode != 0:
                stop_others(proc, log, running)


def read_runs(args: Args) -> dict:
    """algorithm -> [{seed, evals: [(step, own-sample score, score with candidates or None)], episodes: [(env step,
    score)], finished, protocol, commit}] of the runs named --exp-name (the newest folder per seed)."""
    if not os.path.isdir(args.runs_dir):
        raise SystemExit(f"no runs to report: --runs-dir {args.runs_dir} does not exist")
    runs = {}
    for name in sorted(os.listdir(args.runs_dir)):
        folder = os.path.join(args.runs_dir, name)
        if not os.path.exists(os.path.join(folder, "config.json")):  # a run killed while it started, another file
            continue
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        if config["exp_name"] != args.exp_name or config["env_id"] != ENV_ID:
            continue
        evals, episodes = [], []
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            for record in map(json.loads, f):
                if "eval/score" in record:
                    own = record.get("eval/policy_score", record["eval/score"])
                    candidates = record["eval/score"] if "eval/policy_score" in record else None
                    evals.append((record["step"], own, candidates))
                if "online/episode_score" in record:
                    episodes.append((record["online/env_steps"], record["online/episode_score"]))
        algorithm = "fql" if "alpha" in config else "dql" if "diffusion_steps" in config else "ofql"  # its own flags
        run = dict(seed=config["seed"], evals=evals, episodes=episodes, candidates=config["num_candidates"])
        run["finished"] = os.path.exists(os.path.join(folder, "summary.json"))
        run["protocol"] = tuple(config[k] for k in PROTOCOL)
        run["commit"] = str(config.get("commit") or "unrecorded")  # the code that trained it (git)
        runs.setdefault(algorithm, {})[config["seed"]] = run  # sorted by name: the newest folder of a seed last
    return {a: [r[s] for s in sorted(r)] for a, r in runs.items()}


def protocol(args: Args, runs: dict) -> dict:
    """The runs' total_steps, online_steps, eval_every and eval_episodes: the same for all of them, or a refusal."""
    found = {r["protocol"] for seeds in runs.values() for r in seeds}
    if not found:
        raise SystemExit(f"no runs of {ENV_ID} named --exp-name {args.exp_name} in {args.runs_dir}")
    if len(found) > 1:
        raise SystemExit(f"the runs differ in {', '.join(PROTOCOL)}: {sorted(found)}; report them apart (--exp-name)")
    return dict(zip(PROTOCOL, found.pop()))


def algorithm_result(algorithm: str, seeds: list[dict], offline_end: int) -> dict:
    """The evaluations at the steps every seed has reached (own sample), at the end of each phase and as the mean of
    each phase's last 5, and the online training episodes' scores (the first 10 and the last 10)."""
    steps = sorted(set.intersection(*(set(step for step, _, _ in r["evals"]) for r in seeds)))
    own = np.array([[dict((step, o) for step, o, _ in r["evals"])[t] for t in steps] for r in seeds])
    last = steps[-1] if steps else 0
    column = {t: [float(x) for x in own[:, k]] for k, t in enumerate(steps)}
    offline = [k for k, t in enumerate(steps) if t <= offline_end][-5:]
    online = [k for k, t in enumerate(steps) if t > offline_end][-5:]
    episodes = [[score for _, score in r["episodes"]] for r in seeds]
    every_seed = all(len(e) >= 10 for e in episodes)  # the episode columns: 10 of every seed's, or "-"
    candidates = [[dict((step, c) for step, _, c in r["evals"])[t] for t in steps] for r in seeds]
    candidates = None if any(None in row for row in candidates) else np.array(candidates)  # None: 1 candidate
    at = lambda k: [] if candidates is None else [float(x) for x in candidates[:, k]]  # noqa: E731
    return dict(
        algorithm=algorithm,
        seeds=[r["seed"] for r in seeds],
        steps=steps,
        own_sample_scores=own.tolist(),
        last_step=last,
        finished=all(r["finished"] for r in seeds),
        offline_end=column.get(offline_end, []),
        online_end=column[last] if last > offline_end else [],
        offline_last_5_mean=[float(row[offline].mean()) for row in own] if len(offline) == 5 else [],
        online_last_5_mean=[float(row[online].mean()) for row in own] if len(online) == 5 else [],
        online_episodes=[len(e) for e in episodes],
        first_10_episodes=[float(np.mean(e[:10])) for e in episodes] if every_seed else [],
        last_10_episodes=[float(np.mean(e[-10:])) for e in episodes] if every_seed else [],
        candidates=seeds[0]["candidates"],
        candidate_scores=None if candidates is None else candidates.tolist(),
        candidates_offline_end=at(steps.index(offline_end)) if offline_end in steps else [],
        candidates_online_end=at(len(steps) - 1) if last > offline_end else [],
    )


def report(args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = read_runs(args)
    p = protocol(args, runs)
    offline_end = p["total_steps"]
    data_mean = dataset_mean_score(ENV_ID, args.dataset_path)
    fig, (ax_eval, ax_episodes) = plt.subplots(1, 2, figsize=(13, 4.5))
    rows, results, candidate_rows = [], [], []
    for i, (algorithm, seeds) in enumerate(sorted(runs.items(), key=lambda kv: list(SCRIPTS).index(kv[0]))):
        result = algorithm_result(algorithm, seeds, offline_end)
        result["commits"] = sorted({r["commit"] for r in seeds})
        steps, own = result["steps"], np.array(result["own_sample_scores"])
        results.append(result)
        change = [b - a for a, b in zip(result["offline_end"], result["online_end"])]
        cells = [result[k] for k in ("offline_end", "offline_last_5_mean", "online_end", "online_last_5_mean")]
        cells += [change, result["first_10_episodes"]]
        under_way = "" if result["finished"] else " (under way)"
        rows.append(
            f"| {algorithm} | {len(seeds)} | "
            + " | ".join(map(mean_std, cells))
            + f" → {mean_std(result['last_10_episodes'])} | {result['last_step']}{under_way} |"
        )
        if result["candidates_offline_end"]:
            ends = [result["candidates_offline_end"], result["candidates_online_end"]]
            change = [b - a for a, b in zip(*ends)]
            candidate_rows.append(
                f"| {algorithm} | {result['candidates']} | " + " | ".join(map(mean_std, [*ends, change]))
            )
        color = f"C{i}"
        ax_eval.plot(
            steps, own.mean(axis=0), color=color, label=f"{algorithm} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"
        )
        if result["candidate_scores"] is not None:
            label = f"{algorithm}, {result['candidates']} candidates"
            ax_eval.plot(steps, np.mean(result["candidate_scores"], axis=0), color=color, linestyle="--", label=label)
        if len(seeds) > 1:
            ax_eval.fill_between(steps, own.min(axis=0), own.max(axis=0), color=color, alpha=0.2)
        for r, line in zip(seeds, ("-", "--", ":")):
            if len(r["episodes"]) >= 10:
                x, y = np.array(r["episodes"]).T
                smooth = np.convolve(y, np.ones(10) / 10, mode="valid")
                ax_episodes.plot(x[9:], smooth, color=color, linestyle=line, label=f"{algorithm} seed {r['seed']}")
    ax_eval.axvline(offline_end, color="gray", linestyle="--", linewidth=1)
    ax_eval.axhline(data_mean, color="gray", linestyle=":", linewidth=1, label=f"dataset mean ({data_mean:.1f})")
    ax_eval.set(xlabel="updates (offline, then one per online env step)", ylabel="normalized score",
                title=f"{ENV_ID}: evaluations (solid: the policy's own sample)")  # fmt: skip
    ax_episodes.set(xlabel="online env steps", ylabel="normalized score", title="online training episodes (mean of 10)")
    for ax in (ax_eval, ax_episodes):
        if ax.get_legend_handles_labels()[0]:  # no curve (no seed with 10 episodes): no legend
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(args.out_dir, exist_ok=True)
    fig.savefig(os.path.join(args.out_dir, "curves.png"), dpi=120)
    plt.close(fig)
    commits = sorted({c for r in results for c in r["commits"]})
    header = (
        f"{ENV_ID} ({os.path.basename(args.dataset_path)}): {p['total_steps']} offline updates, then "
        f"{p['online_steps']} online env steps with one update each; evaluations every {p['eval_every']} updates on "
        f"{p['eval_episodes']} episodes, scored with the policy's own sample; mean ± std over seeds "
        f"(numpy's std, ddof 0; one seed: its value); commit: {', '.join(commits)}.\n\n"
        "| algorithm | seeds | offline end | offline, last 5 evals | online end | online, last 5 evals | change at the "
        "end | online episodes: first 10 → last 10 | last step |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(header + "\n".join(rows) + f"\n\nDataset mean: {data_mean:.1f}.\n")
        if candidate_rows:
            f.write(
                "\nWith the evaluation's candidates (the scripts' rule: one of N sampled actions picked by softmax(Q)):"
                "\n\n| algorithm | candidates | offline end | online end | change |\n|---|---|---|---|---|\n"
                + " |\n".join(candidate_rows)
                + " |\n"
            )
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(header + "\n".join(rows))


def main(args: Args) -> None:
    if not os.path.isfile(args.dataset_path):
        raise SystemExit(f"--dataset-path {args.dataset_path} does not exist")
    if not args.plot_only and os.path.basename(os.path.normpath(args.runs_dir)) != "runs":
        raise SystemExit(
            f"--runs-dir {args.runs_dir}: to train, a folder named runs (the scripts make runs/ in its parent)"
        )
    if not args.plot_only and not commands(args):
        raise SystemExit("nothing to train: --ofql-seeds, --dql-seeds and --fql-seeds are all empty")
    if not args.plot_only:
        train(args)
    report(args)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
