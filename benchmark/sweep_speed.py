"""How many member-updates per second sweep.py trains, against the script's own runs one after another, side by side
in one process.

    python benchmark/sweep_speed.py                                 # CUDA when present (eager and CUDA graph), else CPU
    python benchmark/sweep_speed.py --device cpu --threads 1 --members 1 4 16

For each script and each of --members N: one training iteration of a sweep of N members (sweep.Members: the script's
update() on the stacked networks, a batch per member) and one iteration of a plain run (the script's update()), on a
synthetic dataset of the given shape, timed in turns over --rounds rounds (each figure the median), then each iteration
of a compiled path (the largest sweeps first, the lone runs last) compiled alone and timed over its rounds before the
next compiles. Reported: member-updates per second (N / seconds per sweep iteration) and the ratio to running the N
members one after another (N x plain seconds / sweep seconds: above 1, the sweep is faster). With each script's rate for
the largest N (its faster path), the device hours of its part of the paper's Table 1 protocol on the 17 D4RL datasets,
each run at the dataset's preset steps (the script's PRESETS): OFQL's grid of 3 seeds x 5 values of eta, DQL's and FQL's
presets x 3 seeds; and the three together. Writes benchmark/results/sweep_speed/<cpu|cuda>.{md,json}.

    python benchmark/sweep_speed.py --table1-from benchmark/results/sweep_speed/cuda.json   # hours from its rates
"""

import dataclasses
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bookkeeping  # noqa: E402  (the commit)
import offline_data  # noqa: E402
import speed  # noqa: E402
import sweep  # noqa: E402


@dataclass
class Args:
    env_id: str = "halfcheetah-medium-v2"
    """the dataset whose presets and shapes are used"""
    algorithms: list[Literal["ofql", "dql", "fql"]] = field(default_factory=lambda: ["ofql", "dql", "fql"])
    """which scripts to measure"""
    members: list[int] = field(default_factory=lambda: [1, 4, 16])
    """the sweep sizes N"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """cpu, cuda, or auto (cuda when available)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    batch_size: int = 256
    """training batch size of every member"""
    warmup: int = 5
    """untimed iterations before each timed block (on CUDA at least 3: they include the graph's capture)"""
    updates: int = 20
    """timed iterations per block"""
    rounds: int = 3
    """rounds; every figure is the median over the rounds"""
    paths: list[speed.Path] | None = None
    """training paths to time (speed.PATHS; default: eager, and cuda_graph on CUDA; docs/speed.md says each)"""
    matmul_precision: list[Literal["highest", "high"]] = field(default_factory=lambda: ["highest"])
    """float32 matmul precisions to time each path at (--matmul-precision); at high a path is path+tf32"""
    datasets: int = 1
    """datasets the members train on; above 1, a domain sweep: member m trains on synthetic dataset m % datasets"""
    dataset_size: int = 100_000
    """transitions in the (first) synthetic dataset"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "sweep_speed")
    """where <device>.md and <device>.json go"""
    table1_from: str | None = None
    """a .json this script wrote: print the Table 1 device hours at its rates for the largest N, measure nothing"""


# 'Table 1' in these tools: the paper's Table 1 (15 D4RL datasets) and Appendix J's 2 pen datasets (not the AntMaze
# umaze and Adroit door/hammer/relocate ids of FQL's table)
NOT_IN_TABLE1 = ("antmaze-umaze", "door", "hammer", "relocate")
TABLE1_DATASETS = [d for d in offline_data.DATASETS if not d.startswith(NOT_IN_TABLE1)]
# runs per dataset of the paper's Table 1 protocol (TABLE1_DATASETS, each run at the dataset's preset steps):
# OFQL's grid of 3 seeds x 5 values of eta; DQL and FQL at their presets, 3 seeds
TABLE1_RUNS_PER_DATASET = {"ofql": 3 * 5, "dql": 3, "fql": 3}


def sweep_iteration(module, args, n: int, domain, data: list[dict], device, path: str):
    """One iteration of a sweep of n members, as sweep.train runs it, served as `path` says (speed.PATHS). data: one
    dataset, or a domain's (member m on data[m % len(data)], with that dataset's grad_norm: sweep.DomainBuffer; 0, no
    clipping, stays 0)."""
    member_args = [dataclasses.replace(args, seed=s, grad_norm=args.grad_norm and args.grad_norm + s % len(data))
                   for s in range(n)]  # fmt: skip
    agents = [module.make_agent(domain.obs_dim, domain.act_dim, a, device) for a in member_args]
    members = sweep.Members(module, member_args)
    stacked = members.stack(agents)
    batches = members.OfflineBuffer([data[m % len(data)] for m in range(n)] if len(data) > 1 else data[0], device)
    for optimizer in (stacked.actor_optimizer, stacked.critic_optimizer):
        module.set_capturable(optimizer, device.type == "cuda" and path != "eager")
    step = torch.tensor(0, device=device)
    torch._dynamo.mark_static_address(step)  # reduce-overhead skips its cudagraphs where a non-static input mutates

    def iteration():
        step.add_(1)
        return members.update(stacked, batches.sample(args.batch_size), args, step)

    return speed.on_path(iteration, module, path, device, "the sweep's step")


def path_name(path: str, precision: str) -> str:
    return path if precision == "highest" else f"{path}+tf32"


def preset_steps(name: str, env_id: str) -> int:
    """total_steps of a run of the script on the dataset: its preset, else the Args default."""
    module = speed.MODULES[name]
    return module.PRESETS[env_id].get("total_steps", module.Args.total_steps)


def table1_member_updates(name: str) -> int:
    steps = [preset_steps(name, env_id) for env_id in TABLE1_DATASETS]
    return TABLE1_RUNS_PER_DATASET[name] * sum(steps)


def table1(algorithms: dict, n: int) -> dict:
    """Device hours of each script's Table 1 protocol at its member-updates/s with n members (the faster path), and
    of the three together when all three were measured. algorithms: result["algorithms"] as main() writes it."""
    t = dict(members=n, algorithms={})
    for name, by_path in algorithms.items():
        measured = [
            (r["members"][str(n)]["member_updates_per_sec"], path) for path, r in by_path.items() if "members" in r
        ]
        if not measured:  # every path failed
            continue
        rate, path = max(measured)
        updates = table1_member_updates(name)
        t["algorithms"][name] = dict(
            runs_per_dataset=TABLE1_RUNS_PER_DATASET[name],
            member_updates=updates,
            member_updates_per_sec=rate,
            path=path,
            hours=updates / rate / 3600,
        )
    if set(t["algorithms"]) == set(TABLE1_RUNS_PER_DATASET):
        t["total_member_updates"] = sum(a["member_updates"] for a in t["algorithms"].values())
        t["total_hours"] = sum(a["hours"] for a in t["algorithms"].values())
    return t


def table1_lines(t: dict) -> list[str]:
    grids = {"ofql": "3 seeds x 5 etas", "dql": "3 seeds, presets", "fql": "3 seeds, presets"}
    lines = [
        f"Table 1's protocol ({len(TABLE1_DATASETS)} D4RL datasets, each run at the dataset's preset steps) at "
        f"the N = {t['members']} rates, one after another on one device:",
        "",
        "| script | runs per dataset | member-updates | member-updates/s | path | device hours |",
        "|---|---|---:|---:|---|---:|",
    ]
    for name, a in t["algorithms"].items():
        lines.append(
            f"| {name} | {a['runs_per_dataset']} ({grids[name]}) | {a['member_updates'] / 1e6:.0f}M | "
            f"{a['member_updates_per_sec']:.1f} | {a['path']} | {a['hours']:.1f} |"
        )
    if "total_hours" in t:
        lines.append(f"| all three | | {t['total_member_updates'] / 1e6:.0f}M | | | {t['total_hours']:.1f} |")
    return lines + [
        "",
        f"Every member priced at the N = {t['members']} rate: DQL's and FQL's grids are 3 seeds a dataset (6-12 "
        "members with a domain's datasets in one sweep), so their hours are a lower bound; training alone, the "
        "evaluations' env steps are benchmark/eval_speed.py's.",
    ]


def check(args: Args) -> None:
    """One line for what the measurement cannot take."""
    if args.env_id not in offline_data.DATASETS:
        raise SystemExit(
            f"--env-id {args.env_id}: not a D4RL id (the shapes are D4RL's): {', '.join(offline_data.DATASETS)}"
        )
    cuda = args.device == "cuda" or args.device == "auto" and torch.cuda.is_available()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch finds no CUDA device here")
    if not (args.algorithms and args.members and args.matmul_precision and args.paths != []):
        raise SystemExit("--algorithms, --members, --matmul-precision and --paths each need at least one value")
    if min(*args.members, args.datasets, args.updates, args.rounds, args.batch_size) < 1:
        raise SystemExit("--members, --datasets, --updates, --rounds and --batch-size must be at least 1")
    if args.dataset_size < args.datasets:  # dataset k holds dataset_size // (k + 1) transitions
        raise SystemExit(f"--dataset-size {args.dataset_size} is below --datasets {args.datasets}")
    if not cuda and "cuda_graph" in (args.paths or ()):
        raise SystemExit("--paths cuda_graph needs a CUDA device")
    if cuda and args.warmup < 3:  # cuda_graph(warmup=3) captures on its third call: it stays out of the timing
        raise SystemExit(
            f"--warmup must be at least 3 on CUDA (the graph's capture is the third call), not {args.warmup}"
        )


def rates_of(path: str) -> dict:
    """result["algorithms"] of a .json this script wrote, or one line saying it is not one."""
    with open(path) as f:
        algorithms = json.load(f).get("algorithms", {})
    if not any(isinstance(r, dict) and "members" in r for by_path in algorithms.values() for r in by_path.values()):
        raise SystemExit(f"--table1-from {path}: no sweep's rates in it (a .json of benchmark/sweep_speed.py?)")
    return algorithms


def main(args: Args) -> dict:
    if args.table1_from:
        algorithms = rates_of(args.table1_from)
        n = max(int(n) for by_path in algorithms.values() for r in by_path.values() for n in r.get("members", ()))
        t = table1(algorithms, n)
        print("\n".join(table1_lines(t)))
        return t
    check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.manual_seed(0)
    domain = offline_data.d4rl_files.domain_of(args.env_id)
    sizes = [args.dataset_size // (k + 1) for k in range(args.datasets)]
    data = [speed.synthetic_data(domain.obs_dim, domain.act_dim, size) for size in sizes]
    cuda_paths = ["eager", "cuda_graph"] if device.type == "cuda" else ["eager"]
    variants = [(path, p) for path in args.paths or cuda_paths for p in args.matmul_precision]
    paths = [path_name(*v) for v in variants]
    timed, setups, precision = {}, {}, {}
    for name in args.algorithms:
        module = speed.MODULES[name]
        script_args = module.parse_args(["--env-id", args.env_id, "--batch-size", str(args.batch_size)])
        buffer = module.OfflineBuffer(data[0], device)
        for (path, p), key in zip(variants, paths):
            agent = module.make_agent(domain.obs_dim, domain.act_dim, script_args, device)
            setups[(name, key, "plain")] = speed.training_iteration(module, agent, buffer, script_args, device, path)[0]
            for n in args.members:
                setups[(name, key, n)] = sweep_iteration(module, script_args, n, domain, data, device, path)
            precision[key] = p
    failed = {}  # (script, path): the error that stopped one of its iterations; the path's others are dropped

    def attempt(key, call, *call_args):  # a path that cannot compile or capture is reported, the others measured
        try:
            return None if key[:2] in failed else call(*call_args)
        except Exception as e:
            failed[key[:2]] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            print(f"{key[0]} {key[1]} failed: {failed[key[:2]]}", flush=True)

    compile_sec = {}  # the first call of a compiled iteration compiles it: its seconds, reported (caches off: cold)
    timing = dataclasses.replace(speed.Args(), warmup=args.warmup, updates=args.updates)

    def measure(key, iteration, r: int):
        torch.set_float32_matmul_precision(precision[key[1]])  # a graph is captured in its first warm-up
        seconds = attempt(key, speed.time_updates, iteration, timing, device)
        timed.setdefault(key, []).extend([] if seconds is None else [seconds])
        rate = "failed" if seconds is None else f"{(1 if key[2] == 'plain' else key[2]) / seconds:.0f}"
        print(f"round {r + 1}/{args.rounds} {' '.join(map(str, key))}: {rate} member-updates/s", flush=True)

    for r in range(args.rounds):  # the paths not compiled first (a cut call keeps them), in turns
        for key, iteration in setups.items():
            if not key[1].startswith("compile"):
                measure(key, iteration, r)
    # each compiled iteration: compiled from a fresh dynamo state, then its rounds, before the next one compiles
    # (torch 2.11 fails to compile OFQL's lone iteration and a sweep's in one state: docs/speed.md, --compile); the
    # largest sweeps first, the lone iterations last: a call cut short keeps the sweeps' rates
    for key in sorted(setups, key=lambda k: -1 if k[2] == "plain" else k[2], reverse=True):
        iteration = setups[key]
        if key[1].startswith("compile"):
            torch._dynamo.reset()
            torch.set_float32_matmul_precision(precision[key[1]])
            start = time.perf_counter()
            with torch._inductor.config.patch(force_disable_caches=True), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "dynamo_pgo force disabled")
                attempt(key, iteration)
            speed.sync(device)
            compile_sec[key] = time.perf_counter() - start
            done = "failed" if key[:2] in failed else "compiled"
            print(f"{' '.join(map(str, key))}: {done} in {compile_sec[key]:.0f} s", flush=True)  # a cut call keeps it
            for r in range(args.rounds):
                measure(key, iteration, r)
            inductor = dict(torch._dynamo.utils.counters["inductor"])  # cudagraph_skips: a path not graphed
            print(f"{' '.join(map(str, key))}: inductor counters so far: {inductor}", flush=True)
    seconds = {key: statistics.median(v) for key, v in timed.items() if key[:2] not in failed}
    torch.set_float32_matmul_precision("highest")
    result = dict(device=speed.device_name(device), torch=torch.__version__, commit=bookkeeping.code_version(__file__))
    result.update(env_id=args.env_id, paths=paths)
    result.update(datasets=sizes, matmul_precision=precision)
    result.update(batch_size=args.batch_size, updates_per_block=args.updates, rounds=args.rounds, algorithms={})
    result["inductor_counters"] = dict(torch._dynamo.utils.counters["inductor"])  # cudagraph_skips: a path not graphed
    for name in args.algorithms:
        result["algorithms"][name] = {
            path: {"failed": failed[(name, path)]}
            if (name, path) in failed
            else {
                "plain_updates_per_sec": 1 / seconds[(name, path, "plain")],
                "compile_sec": {str(k[2]): t for k, t in compile_sec.items() if k[:2] == (name, path)},
                "members": {
                    str(n): {
                        "member_updates_per_sec": n / seconds[(name, path, n)],
                        "vs_one_after_another": n * seconds[(name, path, "plain")] / seconds[(name, path, n)],
                    }
                    for n in args.members
                },
            }
            for path in paths
        }
    result["table1"] = table1(result["algorithms"], max(args.members))
    write(result, args)
    return result


def write(result: dict, args: Args) -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    stem = "cpu" if "CPU" in result["device"] else "cuda"
    sizes = result["datasets"]
    domain = f"A domain sweep: member m trains on synthetic dataset m % {len(sizes)} (transitions: {sizes}), "
    lines = [
        f"Device: {result['device']}; torch {result['torch']}; {result['env_id']} shapes, batch {result['batch_size']} "
        f"per member; median over {result['rounds']} rounds of {result['updates_per_block']} iterations.",
        *([domain + "each clipped to its own --grad-norm."] if len(sizes) > 1 else []),
        "",
        "| script | path | one run, updates/s | "
        + " | ".join(f"N = {n}: member-updates/s (x one after another)" for n in args.members)
        + " |",
        "|---|---|---:|" + "---:|" * len(args.members),
    ]
    for name, by_path in result["algorithms"].items():
        for path, r in by_path.items():
            if "failed" in r:
                lines.append(f"| {name} | {path} | failed: {r['failed']} |" + " |" * len(args.members))
                continue
            cells = [
                f"{m['member_updates_per_sec']:.1f} ({m['vs_one_after_another']:.2f}x)" for m in r["members"].values()
            ]
            lines.append(f"| {name} | {path} | {r['plain_updates_per_sec']:.1f} | " + " | ".join(cells) + " |")
    compiled = [
        (name, path, r.get("compile_sec")) for name, by in result["algorithms"].items() for path, r in by.items()
    ]
    if any(sec for _, _, sec in compiled):  # "Compile time is reported, not hidden" (issue 28)
        lines += ["", "Seconds the first call of each compiled iteration took (compiling):", ""]
        lines += ["| script | path | one run | " + " | ".join(f"N = {n}" for n in args.members) + " |"]
        lines += ["|---|---|---:|" + "---:|" * len(args.members)]
        lines += [
            f"| {name} | {path} | {sec['plain']:.1f} | " + " | ".join(f"{sec[str(n)]:.1f}" for n in args.members) + " |"
            for name, path, sec in compiled
            if sec
        ]
    lines += ["", *table1_lines(result["table1"])]
    with open(os.path.join(args.out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out_dir, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
