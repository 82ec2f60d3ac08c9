"""Training throughput and decision frequency of ofql.py, dql.py and fql.py, measured side by side in one process.

    python benchmark/speed.py                       # whatever device torch finds; a few minutes on a 2-core CPU
    python benchmark/speed.py --device cpu --threads 1

Training: `update()` of each script on batches drawn from a synthetic dataset of the given shape, timed over
--updates steps after --warmup steps, with one device sync at the end of each timed block. Decision frequency
(Appendix D of the OFQL paper): batches of --decision-batch states per second through `select_action`, with 1
candidate and with each script's evaluation candidates. The algorithms take turns in --rounds rounds and each
figure is the median over the rounds, so that a slow phase of the machine hits all three alike. Writes
benchmark/results/speed/<device>.{md,json}.
"""
import inspect
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dql  # noqa: E402
import fql  # noqa: E402
import ofql  # noqa: E402

MODULES = {"ofql": ofql, "dql": dql, "fql": fql}


@dataclass
class Args:
    env_id: str = "halfcheetah-medium-v2"
    """the dataset whose presets and shapes (17-dim observations, 6-dim actions for halfcheetah) are used"""
    algorithms: list[str] = field(default_factory=lambda: ["ofql", "dql", "fql"])
    """which scripts to measure"""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    batch_size: int = 256
    """training batch size"""
    warmup: int = 10
    """untimed updates before each timed block"""
    updates: int = 50
    """timed updates per round"""
    decision_batch: int = 2500
    """states per decision batch (the paper's Appendix D uses 2500)"""
    decisions: int = 3
    """timed decision batches per round and candidate count"""
    rounds: int = 3
    """rounds; every figure is the median over the rounds"""
    dataset_size: int = 100_000
    """transitions in the synthetic dataset"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "speed")
    """where <device>.md and <device>.json go"""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_data(obs_dim: int, act_dim: int, n: int) -> dict:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return {"observations": obs, "next_observations": obs + 0.01, "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "terminals": rng.random(n) < 0.01}


def time_updates(module, agent, buffer, args: Args, script_args, step: int, device) -> float:
    """Seconds per update over one timed block."""
    for i in range(args.warmup):
        module.update(agent, buffer.sample(args.batch_size), script_args, step + i)
    sync(device)
    start = time.perf_counter()
    for i in range(args.updates):
        module.update(agent, buffer.sample(args.batch_size), script_args, step + args.warmup + i)
    sync(device)
    return (time.perf_counter() - start) / args.updates


def time_decisions(module, agent, obs: torch.Tensor, candidates: int, args: Args, device) -> float:
    """Decision batches per second (the actions are copied to the host, as evaluation does)."""
    module.select_action(agent, obs, candidates).cpu()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.decisions):
        module.select_action(agent, obs, candidates).cpu()
    return args.decisions / (time.perf_counter() - start)


def profile_update(module, agent, buffer, script_args, device, reps: int = 10) -> dict:
    """Milliseconds of the parts of one update: the critic's loss (with its next actions), the actor's loss, the
    BC loss alone, and the rest of update() (backward passes, optimizer steps, target networks)."""
    batch = buffer.sample(script_args.batch_size)
    bc_args = (script_args,) if len(inspect.signature(module.behavior_cloning_loss).parameters) == 4 else ()

    def ms(fn) -> float:
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / reps * 1000

    parts = {"critic loss": ms(lambda: module.critic_loss_fn(agent, batch, script_args)),
             "actor loss": ms(lambda: module.actor_loss_fn(agent, batch, script_args)),
             "of which BC loss": ms(lambda: module.behavior_cloning_loss(agent.actor, batch.obs, batch.actions, *bc_args)),
             "update": ms(lambda: module.update(agent, batch, script_args, 7))}
    parts["backward, optimizers, targets"] = parts["update"] - parts["critic loss"] - parts["actor loss"]
    return parts


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores"


def main(args: Args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    domain = ofql.domain_of(args.env_id)
    data = synthetic_data(domain.obs_dim, domain.act_dim, args.dataset_size)
    setups = {}
    for name in args.algorithms:
        module = MODULES[name]
        script_args = module.parse_args(["--env-id", args.env_id, "--batch-size", str(args.batch_size)])
        setups[name] = (module, script_args, module.make_agent(domain.obs_dim, domain.act_dim, script_args, device),
                        module.OfflineBuffer(data, device))
    obs = torch.as_tensor(data["observations"][: args.decision_batch], device=device)
    seconds = {name: [] for name in setups}
    rates = {(name, k): [] for name, (_, a, _, _) in setups.items() for k in sorted({1, a.num_candidates})}
    for r in range(args.rounds):
        for name, (module, script_args, agent, buffer) in setups.items():
            seconds[name].append(time_updates(module, agent, buffer, args, script_args, 1 + r * (args.warmup + args.updates), device))
            for (n, k) in rates:
                if n == name:
                    rates[(n, k)].append(time_decisions(module, agent, obs, k, args, device))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {1 / seconds[n][-1]:.1f} updates/s" for n in setups), flush=True)

    result = {"device": device_name(device), "torch": torch.__version__, "env_id": args.env_id, "batch_size": args.batch_size,
              "decision_batch": args.decision_batch, "updates_per_round": args.updates, "rounds": args.rounds, "algorithms": {}}
    for name in setups:
        per_update = statistics.median(seconds[name])
        result["algorithms"][name] = {
            "updates_per_sec": 1 / per_update, "hours_per_1M_updates": per_update * 1e6 / 3600,
            "decisions_per_sec": {str(k): statistics.median(v) for (n, k), v in rates.items() if n == name},
        }
    a = result["algorithms"]
    ratios = {}
    if "ofql" in a and "dql" in a:
        ratios["OFQL/DQL training time"] = a["dql"]["updates_per_sec"] / a["ofql"]["updates_per_sec"]
        ratios["OFQL/DQL decision frequency, 1 candidate"] = a["ofql"]["decisions_per_sec"]["1"] / a["dql"]["decisions_per_sec"]["1"]
        if "50" in a["ofql"]["decisions_per_sec"] and "50" in a["dql"]["decisions_per_sec"]:
            ratios["OFQL/DQL decision frequency, 50 candidates"] = a["ofql"]["decisions_per_sec"]["50"] / a["dql"]["decisions_per_sec"]["50"]
    if "ofql" in a and "fql" in a:
        ratios["OFQL/FQL training time"] = a["fql"]["updates_per_sec"] / a["ofql"]["updates_per_sec"]
    result["ratios"] = ratios
    result["update_profile_ms"] = {name: profile_update(module, agent, buffer, script_args, device)
                                   for name, (module, script_args, agent, buffer) in setups.items()}
    write(result, args)
    return result


def write(result: dict, args: Args) -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    stem = "cuda" if "CPU" not in result["device"] else "cpu"
    lines = [f"Device: {result['device']}; torch {result['torch']}; {result['env_id']} shapes, batch {result['batch_size']}, "
             f"decision batches of {result['decision_batch']} states; median over {result['rounds']} rounds of "
             f"{result['updates_per_round']} updates.", "",
             "| script | updates/s | hours per 1M updates | decisions/s, 1 candidate | decisions/s, evaluation candidates |",
             "|---|---:|---:|---:|---:|"]
    for name, r in result["algorithms"].items():
        d = r["decisions_per_sec"]
        k = max(d, key=int)
        lines.append(f"| {name} | {r['updates_per_sec']:.1f} | {r['hours_per_1M_updates']:.1f} | {d['1']:.2f} | "
                     f"{d[k]:.3f} ({k}) |")
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in result["ratios"].items()]
    profile = result["update_profile_ms"]
    parts = list(next(iter(profile.values())))
    lines += ["", "Where one update's time goes (ms):", "", "| script | " + " | ".join(parts) + " |",
              "|---|" + "---:|" * len(parts)]
    lines += [f"| {name} | " + " | ".join(f"{p[k]:.1f}" for k in parts) + " |" for name, p in profile.items()]
    with open(os.path.join(args.out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out_dir, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
