"""How many member-updates per second sweep.py trains, against the script's own runs one after another, side by side
in one process.

    python benchmark/sweep_speed.py                                 # CUDA when present (eager and CUDA graph), else CPU
    python benchmark/sweep_speed.py --device cpu --threads 1 --members 1 4 16

For each script and each of --members N: one training iteration of a sweep of N members (sweep.Members: the script's
update() on the stacked networks, a batch per member) and one iteration of a plain run (the script's update()), on a
synthetic dataset of the given shape, timed in turns over --rounds rounds (each figure the median). Reported: member-
updates per second (N / seconds per sweep iteration) and the ratio to running the N members one after another
(N x plain seconds / sweep seconds: above 1, the sweep is faster). With the OFQL figure for the largest N, the device
hours of the OFQL grid of the paper's Table 1 (17 datasets x 3 seeds x 5 values of eta at each dataset's preset steps).
Writes benchmark/results/sweep_speed/<cpu|cuda>.{md,json}.
"""

import dataclasses
import json
import os
import statistics
import sys
from dataclasses import dataclass, field

import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import offline_data  # noqa: E402
import speed  # noqa: E402
import sweep  # noqa: E402


@dataclass
class Args:
    env_id: str = "halfcheetah-medium-v2"
    """the dataset whose presets and shapes are used"""
    algorithms: list[str] = field(default_factory=lambda: ["ofql", "dql", "fql"])
    """which scripts to measure"""
    members: list[int] = field(default_factory=lambda: [1, 4, 16])
    """the sweep sizes N"""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    batch_size: int = 256
    """training batch size of every member"""
    warmup: int = 5
    """untimed iterations before each timed block (on CUDA they include the graph's capture)"""
    updates: int = 20
    """timed iterations per block"""
    rounds: int = 3
    """rounds; every figure is the median over the rounds"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "sweep_speed")
    """where <device>.md and <device>.json go"""


# the paper's Table 1 grid for OFQL: 3 seeds x 5 etas at each dataset's preset steps (ofql.PRESETS)
TABLE1_RUNS_PER_DATASET = 3 * 5


def sweep_iteration(module, args, n: int, domain, buffer, device, use_graph: bool):
    """One iteration of a sweep of n members, as sweep.train runs it (the CUDA graph on the fast path)."""
    member_args = [dataclasses.replace(args, seed=s) for s in range(n)]
    agents = [module.make_agent(domain.obs_dim, domain.act_dim, a, device) for a in member_args]
    members = sweep.Members(module, agents, member_args)
    for optimizer in (members.stacked.actor_optimizer, members.stacked.critic_optimizer):
        module.set_capturable(optimizer, use_graph)
    step = torch.tensor(0, device=device)

    def iteration():
        step.add_(1)
        return members.update(members.stacked, members.sample(buffer, args.batch_size), args, step)

    return module.cuda_graph(iteration, warmup=3, what="the sweep's step") if use_graph else iteration


def table1_member_updates() -> int:
    import ofql

    steps = [ofql.parse_args(["--env-id", env_id]).total_steps for env_id in offline_data.DATASETS]  # Table 1's D4RL
    return TABLE1_RUNS_PER_DATASET * sum(steps)


def main(args: Args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.manual_seed(0)
    domain = offline_data.d4rl_files.domain_of(args.env_id)
    data = speed.synthetic_data(domain.obs_dim, domain.act_dim, 100_000)
    paths = ["eager", "cuda_graph"] if device.type == "cuda" else ["eager"]
    timed, setups = {}, {}
    for name in args.algorithms:
        module = speed.MODULES[name]
        script_args = module.parse_args(["--env-id", args.env_id, "--batch-size", str(args.batch_size)])
        buffer = module.OfflineBuffer(data, device)
        for path in paths:
            path_args = dataclasses.replace(script_args, cuda_graph=path == "cuda_graph")
            agent = module.make_agent(domain.obs_dim, domain.act_dim, path_args, device)
            setups[(name, path, "plain")] = speed.training_iteration(module, agent, buffer, path_args, device)[0]
            for n in args.members:
                setups[(name, path, n)] = sweep_iteration(
                    module, path_args, n, domain, buffer, device, path == "cuda_graph"
                )
    timing = dataclasses.replace(speed.Args(), warmup=args.warmup, updates=args.updates)
    for r in range(args.rounds):
        for key, iteration in setups.items():
            timed.setdefault(key, []).append(speed.time_updates(iteration, timing, device))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    seconds = {key: statistics.median(v) for key, v in timed.items()}
    result = dict(device=speed.device_name(device), torch=torch.__version__, env_id=args.env_id, paths=paths)
    result.update(batch_size=args.batch_size, updates_per_block=args.updates, rounds=args.rounds, algorithms={})
    for name in args.algorithms:
        result["algorithms"][name] = {
            path: {
                "plain_updates_per_sec": 1 / seconds[(name, path, "plain")],
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
    if "ofql" in args.algorithms:
        best = max(
            (r["members"][str(max(args.members))]["member_updates_per_sec"], path)
            for path, r in result["algorithms"]["ofql"].items()
        )
        total = table1_member_updates()
        result["table1_ofql"] = dict(member_updates=total, hours=total / best[0] / 3600, path=best[1])
        result["table1_ofql"]["members"] = max(args.members)
    write(result, args)
    return result


def write(result: dict, args: Args) -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    stem = "cpu" if "CPU" in result["device"] else "cuda"
    lines = [
        f"Device: {result['device']}; torch {result['torch']}; {result['env_id']} shapes, batch {result['batch_size']} "
        f"per member; median over {result['rounds']} rounds of {result['updates_per_block']} iterations.",
        "",
        "| script | path | one run, updates/s | "
        + " | ".join(f"N = {n}: member-updates/s (x one after another)" for n in args.members)
        + " |",
        "|---|---|---:|" + "---:|" * len(args.members),
    ]
    for name, by_path in result["algorithms"].items():
        for path, r in by_path.items():
            cells = [
                f"{m['member_updates_per_sec']:.1f} ({m['vs_one_after_another']:.2f}x)" for m in r["members"].values()
            ]
            lines.append(f"| {name} | {path} | {r['plain_updates_per_sec']:.1f} | " + " | ".join(cells) + " |")
    if "table1_ofql" in result:
        t = result["table1_ofql"]
        lines += [
            "",
            f"OFQL's Table 1 grid ({t['member_updates'] / 1e6:.0f}M member-updates: 17 datasets x 3 seeds x 5 etas at "
            f"the preset steps) at the N = {t['members']} rate ({t['path']}): {t['hours']:.1f} device hours.",
        ]
    with open(os.path.join(args.out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out_dir, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
