"""Train several algorithms side by side on the same datasets and seeds; write a results table and learning curves.

    python benchmark/compare.py --data-dir DIR --out-dir benchmark/results/learning_check   # the CPU learning check
    python benchmark/compare.py --data-dir '' --presets --eval-every 50000 --seeds 0 1 2 --jobs 4 \
        --datasets hopper-medium-v2 walker2d-medium-v2 --out-dir benchmark/results/d4rl   # D4RL files, GPU: Table 1

Each run is the unmodified script (`ofql.py`, ...) as a subprocess, writing its usual runs/<run_name>/ under
--out-dir; the table and the PNG are rebuilt from those files, so --plot-only redraws them without training.
"""

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import NoReturn

import h5py
import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bookkeeping  # noqa: E402  (OGBench's reported success)
import offline_data  # noqa: E402  (the normalized score, the kind of an id)

# name: (script, extra flags). "bc" is the behaviour-cloning reference: OFQL's MeanFlow loss alone (eta = 0).
ALGORITHMS = {"bc": ("ofql.py", ["--eta", "0"]), "ofql": ("ofql.py", []), "dql": ("dql.py", []), "fql": ("fql.py", [])}


@dataclass
class Args:
    datasets: list[str] = field(default_factory=lambda: ["hopper-medium-v2", "hopper-medium-replay-v2"])
    """D4RL, Minari or OGBench ids (with --data-dir, a D4RL id trains on <data-dir>/<id without -v2>.hdf5)"""
    data_dir: str = ""
    """folder of local D4RL-layout files (hopper-medium.hdf5, ...); '' (default): the real files, downloaded"""
    algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    """from bc, ofql, dql, fql (with --plot-only, any experiment name in --out-dir/runs, e.g. ofql_eta0.1)"""
    presets: bool = False
    """the scripts' per-dataset presets instead of --total-steps, --eval-episodes and --num-candidates"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """training seeds"""
    total_steps: int = 20_000
    """gradient steps per run"""
    eval_every: int | None = None
    """evaluation interval (steps); default: 2000, or with --presets each script's preset (OGBench's 100,000)"""
    eval_episodes: int = 10
    """evaluation episodes per evaluation"""
    num_candidates: int = 1
    """candidate actions per state at evaluation (1: the policy itself; picking by Q needs a trained critic)"""
    extra_flags: str = ""
    """more flags for every run, e.g. --extra-flags='--batch-size 512'"""
    jobs: int = 2
    """runs in parallel (each with one CPU thread on the CPU)"""
    out_dir: str = os.path.join(ROOT, "runs", "compare")
    """where the runs, results.md, results.json and curves.png go (the CPU check's: benchmark/results/learning_check)"""
    sweep: bool = False
    """if toggled, each (dataset, algorithm)'s runs (all --seeds) train together in one sweep.py process"""
    plot_only: bool = False
    """skip training; rebuild the table and the PNG from the runs in --out-dir"""
    keep_rows: bool = True
    """a (dataset, algorithm) not run in --out-dir, or outside --datasets x --algorithms, keeps its results.json row"""


def dataset_file(args: Args, env_id: str):
    """The local file of a D4RL id under --data-dir, absolute (the runs start in --out-dir); None: the script's own
    data (and for Minari and OGBench ids)."""
    local = args.data_dir and offline_data.source_kind(env_id) == "d4rl"
    return os.path.abspath(os.path.join(args.data_dir, env_id.rsplit("-", 1)[0] + ".hdf5")) if local else None


def eval_every(args: Args) -> int | None:
    """--eval-every, else 2000 without --presets; None: each script's preset."""
    return args.eval_every if args.eval_every is not None or args.presets else 2_000


def dataset_mean_score(env_id: str, path: str) -> float:
    """Mean normalized return of the dataset's own episodes (split at terminals and timeouts)."""
    with h5py.File(path, "r") as f:
        rewards, ends = f["rewards"][()], f["terminals"][()] | f["timeouts"][()]
    returns = np.add.reduceat(rewards, np.r_[0, np.flatnonzero(ends[:-1]) + 1])
    return float(np.mean(offline_data.normalized_score(env_id, returns)))


def run_reported_success(summary: dict) -> float | None:
    """A run's reported_success: its summary.json's, or (a summary written before the key existed) the same rule
    applied to its evaluations."""
    if "reported_success" in summary:
        return summary["reported_success"]
    return bookkeeping.reported_success(summary["evaluations"])


def run_name(env_id: str, algorithm: str, seed: int) -> str:
    return f"{env_id.replace('/', '-')}__{algorithm}__{seed}"  # as the scripts name a Minari id's run


def log_file(args: Args, env_id: str, algorithm: str, seed: int | None) -> str:
    return os.path.join(args.out_dir, run_name(env_id, algorithm, "sweep" if seed is None else seed) + ".log")


def launch(args: Args, env_id: str, algorithm: str, seed: int | None) -> subprocess.Popen:
    """One run of the script, or with seed None the sweep of all --seeds."""
    script, flags = ALGORITHMS[algorithm]
    seeds = ["--seed", str(seed)] if seed is not None else ["--seeds", *map(str, args.seeds)]
    cmd = [
        sys.executable,
        *([os.path.join(ROOT, "sweep.py"), script] if seed is None else [os.path.join(ROOT, script)]),
        "--env-id",
        env_id,
        *seeds,
        "--exp-name",
        algorithm,
        *([] if eval_every(args) is None else ["--eval-every", str(eval_every(args))]),
        *flags,
        *args.extra_flags.split(),
    ]
    if not args.presets:
        cmd += [
            "--total-steps",
            str(args.total_steps),
            "--eval-episodes",
            str(args.eval_episodes),
            "--num-candidates",
            str(args.num_candidates),
        ]
    if dataset_file(args, env_id):
        cmd += ["--dataset-path", dataset_file(args, env_id)]
    log = open(log_file(args, env_id, algorithm, seed), "w")
    print(" ".join(cmd[1:]), flush=True)
    return subprocess.Popen(
        cmd, cwd=args.out_dir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def stop_others(failed: subprocess.Popen, log: str, others) -> NoReturn:
    """Stop the other runs (SIGTERM: they end at a step's end) and wait for them; exit naming the failed run's log."""
    for proc in others:
        proc.terminate()
    for proc in others:
        proc.wait()
    with open(log) as f:
        last = (f.read().strip().splitlines() or [""])[-1]
    raise SystemExit(f"a run failed (exit {failed.returncode}): {last} (its log: {log}); the other runs were stopped")


def train_all(args: Args) -> None:
    seeds = [None] if args.sweep else args.seeds
    queue = [(d, a, s) for d in args.datasets for a in args.algorithms for s in seeds]
    running, start = {}, time.time()  # process: its log
    while queue or running:
        while queue and len(running) < args.jobs:
            job = queue.pop(0)
            running[launch(args, *job)] = log_file(args, *job)
        time.sleep(5)
        for proc in [p for p in running if p.poll() is not None]:
            log = running.pop(proc)
            if proc.returncode != 0:
                stop_others(proc, log, running)
    print(f"all runs done in {(time.time() - start) / 60:.1f} min")


def mean_std(values) -> str:
    """The values' mean ± std (numpy's std: ddof 0, as CORL's tables); one value alone; none: "-"."""
    if len(values) == 0:
        return "-"
    return f"{np.mean(values):.1f}" + (f" ± {np.std(values):.1f}" if len(values) > 1 else "")


def in_order(values) -> object:
    """The values in their order, a repeat of the one before left out: one alone as itself, several as "a then b"
    (changed at a --resume; "a then b then a": changed back)."""
    changes = [value for value, _ in itertools.groupby(values)]
    return changes[0] if len(changes) == 1 else " then ".join(map(str, changes)) or None


def sessions(run_dir: str) -> list[dict]:
    """A run's config.json and each config_resumed_at_<step>.json after it: every session that trained it, in order."""
    resumed = [n for n in os.listdir(run_dir) if n.startswith("config_resumed_at_") and n.endswith(".json")]
    resumed.sort(key=lambda n: int(n.removeprefix("config_resumed_at_").removesuffix(".json")))
    names = [n for n in ["config.json", *resumed] if os.path.exists(os.path.join(run_dir, n))]
    return [json.load(open(os.path.join(run_dir, n))) for n in names]


def with_sessions(run_dir: str, summary: dict) -> dict:
    """summary.json with its "commit" the code of every session (a resumed run's may differ: "a then b") and its
    "protocol": steps, evaluation episodes, candidates, evaluation interval and the steps evaluated."""
    parts = [*sessions(run_dir), summary]
    commits = [str(p["commit"]) for p in parts if "commit" in p]
    protocol = {"steps": summary.get("steps"), "online_steps": summary.get("online_steps", 0)}
    protocol |= {k: in_order(p[k] for p in parts if k in p) for k in ("eval_episodes", "num_candidates", "eval_every")}
    protocol["evaluation_steps"] = [e["step"] for e in summary["evaluations"]]
    return {**summary, "commit": in_order(commits) if commits else "unrecorded", "protocol": protocol}


def latest_summaries(args: Args) -> dict:
    """(env_id, algorithm, seed) -> summary.json of the newest matching run in --out-dir/runs (with_sessions'); a
    run that stopped on a non-finite value (a lone run or a sweep member) has its "error" set."""
    found, runs_dir = {}, os.path.join(args.out_dir, "runs")
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        parts = name.split("__")  # <env_id>__<exp_name>__<seed>__<unix time>; other entries (compare's own out-dir,
        if len(parts) != 4 or not parts[2].isdigit():  # a cluster's log folder) are no runs
            continue
        _, algorithm, seed, _ = parts
        path = os.path.join(args.out_dir, "runs", name, "summary.json")
        if os.path.exists(path):
            summary = with_sessions(os.path.dirname(path), json.load(open(path)))
            found[(summary["env_id"], algorithm, int(seed))] = summary  # the folder's name has '-' for a Minari '/'
    return found


def protocol_text(protocol: dict | None) -> str:
    """What a row's runs were: steps, evaluation episodes, candidates, interval ('?': a summary without it)."""
    if protocol is None:
        return "protocol unrecorded (a row of an older results.json)"
    p = {k: "?" if v is None else v for k, v in protocol.items()}
    online = f" and {p['online_steps']} online steps" if p["online_steps"] else ""
    return (
        f"{p['steps']} steps{online}, {p['eval_episodes']} evaluation episodes, {p['num_candidates']} candidate(s), "
        f"evaluation every {p['eval_every']} steps"
    )


def row_protocol(env_id: str, algorithm: str, runs: list[dict]) -> dict:
    """The protocol of a row's runs: the same for all of them, or a refusal naming each seed's."""
    if any(r["protocol"] != runs[0]["protocol"] for r in runs):
        each = "; ".join(
            f"seed {r['seed']}: {protocol_text(r['protocol'])}, {len(r['evaluations'])} evaluations" for r in runs
        )
        raise SystemExit(f"{env_id} {algorithm}: its runs differ in protocol ({each}); report them apart (--seeds)")
    return runs[0]["protocol"]


def row_result(env_id: str, algorithm: str, runs: list[dict], data_score: float | None) -> dict:
    """results.json's row of a (dataset, algorithm)'s finished runs."""
    if any(e["score"] is None for r in runs for e in r["evaluations"]):  # your own data's: raw returns
        raise SystemExit(
            f"{env_id} {algorithm}: its runs have no score (no reference returns); compare.py makes tables of scores"
        )
    result = {
        "env_id": env_id,
        "algorithm": algorithm,
        "seeds": [r["seed"] for r in runs],
        "protocol": row_protocol(env_id, algorithm, runs),
        "steps": [e["step"] for e in runs[0]["evaluations"]],
        "scores": [[e["score"] for e in r["evaluations"]] for r in runs],
        "dataset_mean_score": data_score,
        "train_steps_per_sec": float(np.mean([r["train_steps_per_sec"] for r in runs])),
        "reported_scores": None,  # 100 x reported_success of each run, OGBench ids only
        "commits": sorted({str(r["commit"]) for r in runs}),  # their code (git)
    }
    if offline_data.source_kind(env_id) == "ogbench":
        reported = [run_reported_success(r) for r in runs]
        result["reported_scores"] = None if None in reported else [100.0 * x for x in reported]
    return result


def left_out(args: Args, env_id: str, algorithm: str, summaries: dict) -> str | None:
    """The line naming the seeds a row leaves out: of --seeds, failed (a run's error) and missing (no finished run);
    finished runs of other seeds (not in --seeds)."""
    found = {s: summaries[(env_id, algorithm, s)] for s in args.seeds if (env_id, algorithm, s) in summaries}
    failed = [f"seed {s} failed ({r['error']})" for s, r in found.items() if r.get("error") is not None]
    missing = [f"seed {s} has no finished run" for s in args.seeds if s not in found]
    others = sorted(s for e, a, s in summaries if (e, a) == (env_id, algorithm) and s not in args.seeds)
    outside = [f"seed {s}'s run left out (not in --seeds)" for s in others]
    named = failed + missing + outside
    return f"{env_id} {algorithm}: {'; '.join(named)}" if (found or outside) and named else None


def write_report(args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = latest_summaries(args)
    previous_path = os.path.join(args.out_dir, "results.json")
    previous = {}
    if args.keep_rows and os.path.exists(previous_path):
        previous = {(r["env_id"], r["algorithm"]): r for r in json.load(open(previous_path))}
    rows, results, notes = [], [], []  # notes: the lines under the table
    names = list(dict.fromkeys([*ALGORITHMS, *args.algorithms, *(a for _, a in previous)]))  # kept rows' too
    colors = {a: f"C{i % 10}" for i, a in enumerate(names)}  # an algorithm's colour is the same in every panel
    datasets = list(dict.fromkeys([*args.datasets, *(e for e, _ in previous)]))  # kept rows' too
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, env_id in zip(axes[0], datasets):
        path = dataset_file(args, env_id)
        data_score = dataset_mean_score(env_id, path) if path and os.path.exists(path) else None
        shown_algorithms = [a for a in ALGORITHMS if a in args.algorithms or (env_id, a) in previous]
        shown_algorithms += [a for a in args.algorithms if a not in ALGORITHMS]  # other names, e.g. ofql_eta0.1
        shown_algorithms += [a for e, a in previous if e == env_id and a not in shown_algorithms]  # kept rows
        for algorithm in shown_algorithms:
            runs = [summaries[k] for k in [(env_id, algorithm, s) for s in args.seeds] if k in summaries]
            runs = [r for r in runs if r.get("error") is None]  # a run that went non-finite: named under the table
            notes += [line] if (line := left_out(args, env_id, algorithm, summaries)) else []
            if runs:
                result = row_result(env_id, algorithm, runs, data_score)
            elif (env_id, algorithm) in previous:
                result = previous[(env_id, algorithm)]
            else:
                continue
            results.append(result)
            steps, curves = result["steps"], np.array(result["scores"])
            final, best, n = curves[:, -1], curves.max(axis=1), len(curves)
            label, color = f"{algorithm} ({n} seed{'s' * (n > 1)})", colors[algorithm]
            ax.plot(steps, curves.mean(0), label=label, color=color)
            if n > 1:
                ax.fill_between(steps, curves.min(0), curves.max(0), alpha=0.2, color=color)
            shown = "-" if data_score is None else f"{data_score:.1f}"
            reported = result.get("reported_scores")  # absent from the rows of an older results.json
            reported = "-" if reported is None else mean_std(reported)
            commits = ", ".join(result.get("commits") or ["-"])  # absent from an older results.json's rows
            rows.append(
                f"| {env_id} | {shown} | {algorithm} | {n} | {mean_std(final)} | {mean_std(best)} | "
                f"{' / '.join(f'{s:.0f}' for s in curves.mean(0))} | {reported} | {commits} |"
            )
        if data_score is not None:
            ax.axhline(data_score, color="gray", linestyle="--", label="dataset mean")
        ax.set(title=env_id, xlabel="gradient steps", ylabel="normalized score (seed mean; band: min to max)")
        if ax.get_legend_handles_labels()[0]:  # an empty panel: no legend (nor matplotlib's warning)
            ax.legend()
    if not results:
        plt.close(fig)
        found = sorted({f"{env_id} {algorithm} seed {seed}" for env_id, algorithm, seed in summaries})
        raise SystemExit(
            f"nothing to report: no finished runs of --datasets, --algorithms, --seeds in {args.out_dir}/runs"
            + "".join(f"; {line}" for line in notes)
            + (f" (it holds {', '.join(found)})" if found else "")
        )
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "curves.png"), dpi=110)
    plt.close(fig)  # pyplot keeps every figure until closed: a process that tabulates again would gather them
    protocols = {protocol_text(r.get("protocol")) for r in results}  # absent from the rows of an older results.json
    protocol = next(iter(protocols)) if len(protocols) == 1 else "the rows' runs differ in protocol (under the table)"
    if len(protocols) > 1:
        notes = [f"{r['env_id']} {r['algorithm']}: {protocol_text(r.get('protocol'))}" for r in results] + notes
    header = (
        f"{protocol}, seeds {args.seeds}; score = mean ± std "
        "over seeds (numpy's std, ddof 0; one seed: its value) of the normalized score (mean over episodes) at the "
        "last / the best evaluation; reported (OGBench ids): the figure OGBench and FQL report, 100 x the mean success "
        "rate over the last three evaluations (reported_success), mean ± std over seeds; commit: the git commit of the "
        "code that trained the runs (+changes: with uncommitted changes; a then b: a run resumed with other code; "
        "None: not a git checkout; unrecorded: a run from before runs recorded it).\n\n"
        "| dataset | dataset mean | algorithm | seeds | last | best | curve (every evaluation) | reported | commit |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join(rows) + "".join(f"\n\n{line}" for line in notes)
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(table)


def main(args: Args) -> None:
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, not {args.jobs}")
    unknown = [a for a in args.algorithms if a not in ALGORITHMS]
    if unknown and not args.plot_only:
        raise SystemExit(
            f"--algorithms {' '.join(unknown)}: not one of {', '.join(ALGORITHMS)} (other names: --plot-only)"
        )
    missing = [p for d in args.datasets if (p := dataset_file(args, d)) and not os.path.exists(p)]
    if missing:
        raise SystemExit(f"--data-dir {args.data_dir}: no {', '.join(missing)}")
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.plot_only:
        train_all(args)
    write_report(args)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
