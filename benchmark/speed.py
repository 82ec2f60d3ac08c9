"""Training throughput and decision frequency of ofql.py, dql.py and fql.py, measured side by side in one process.

    python benchmark/speed.py                       # whatever device torch finds; a few minutes on a 2-core CPU
    python benchmark/speed.py --device cpu --threads 1

Training: each script's training iteration as train() runs it (update() on a batch drawn on the device) on a
synthetic dataset of the given shape, timed over --updates iterations after --warmup iterations, with one device sync
at the end of each timed block; on CUDA for both paths, eager and the CUDA graph (the fast path; the warm-up covers
its capture). Decision frequency (Appendix D of the OFQL paper): batches of --decision-batch states per second through
`make_policy`, with 1 candidate and with each script's evaluation candidates. The algorithms take turns in --rounds
rounds and each figure is the median over the rounds, so that a slow phase of the machine hits all three alike. Also:
where one eager update's time goes, and how many ATen operators (about the kernels a CUDA graph replays) one iteration
runs.
Writes benchmark/results/speed/<device>.{md,json}.
"""

import dataclasses
import inspect
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
import tyro
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bookkeeping  # noqa: E402  (the commit)
import dql  # noqa: E402
import fql  # noqa: E402
import offline_data  # noqa: E402
import ofql  # noqa: E402
import sweep  # noqa: E402

MODULES = {"ofql": ofql, "dql": dql, "fql": fql}


@dataclass
class Args:
    env_id: str = "halfcheetah-medium-v2"
    """the D4RL dataset whose presets and shapes (17-dim observations, 6-dim actions for halfcheetah) are used"""
    algorithms: list[Literal["ofql", "dql", "fql"]] = field(default_factory=lambda: ["ofql", "dql", "fql"])
    """which scripts to measure"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
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
    compile: bool = False
    """if toggled, also each iteration under torch.compile (--compile): inductor's kernels and compile seconds"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "speed")
    """where <device>.md and <device>.json go"""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_data(obs_dim: int, act_dim: int, n: int) -> dict:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return {
        "observations": obs,
        "next_observations": obs + 0.01,
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": rng.random(n) < 0.01,
    }


# the training paths a step can take: eager; the script's CUDA graph (its default on CUDA); torch.compile, then the
# script's CUDA graph (--compile on CUDA; on the CPU, compiled alone); torch.compile(mode="reduce-overhead"), whose
# own CUDA graphs (inductor's cudagraph trees) take the place of the script's
Path = Literal["eager", "cuda_graph", "compile_graph", "compile_reduce_overhead"]
PATHS = get_args(Path)


def on_path(fn, module, path: str, device: torch.device, what: str):
    """fn as `path` serves it (PATHS), with the script's cuda_graph where the path has one."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: one of {', '.join(PATHS)}")
    if path == "cuda_graph" and device.type != "cuda":
        raise ValueError("the cuda_graph path needs a CUDA device")
    if path.startswith("compile"):
        fn = torch.compile(fn, mode="reduce-overhead" if path == "compile_reduce_overhead" else None)
    if path in ("cuda_graph", "compile_graph") and device.type == "cuda":
        fn = module.cuda_graph(fn, warmup=3, what=what)
    return fn


def training_iteration(module, agent, buffer, script_args, device, path: str | None = None) -> tuple:
    """(iteration, agent): what train() runs at each step, update() on a fresh batch with the step count on the
    device, served as `path` says (default: the script's CUDA graph on CUDA with --cuda-graph, else eager; on CUDA
    every path but eager steps Adam in capturable mode, its step count on the device)."""
    path = path or ("cuda_graph" if script_args.cuda_graph and device.type == "cuda" else "eager")
    for optimizer in (agent.actor_optimizer, agent.critic_optimizer):
        module.set_capturable(optimizer, device.type == "cuda" and path != "eager")
    step = torch.tensor(0, device=device)
    torch._dynamo.mark_static_address(step)  # reduce-overhead skips its cudagraphs where a non-static input mutates

    def iteration():
        step.add_(1)
        return module.update(agent, buffer.sample(script_args.batch_size), script_args, step)

    return on_path(iteration, module, path, device, "the training step"), agent


def time_updates(train_step, args: Args, device) -> float:
    """Seconds per iteration over one timed block."""
    for _ in range(args.warmup):
        train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.updates):
        train_step()
    sync(device)
    return (time.perf_counter() - start) / args.updates


def time_decisions(policy, obs: torch.Tensor, args: Args, device) -> float:
    """Decision batches per second through make_policy (the actions are copied to the host, as evaluation does)."""
    policy(obs).cpu()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.decisions):
        policy(obs).cpu()
    return args.decisions / (time.perf_counter() - start)


def profile_update(module, agent, buffer, script_args, device, reps: int = 10, rounds: int = 1) -> dict:
    """Milliseconds of the parts of one update: the critic's loss (with its next actions), the actor's loss, the
    BC loss alone, and the rest of update() (backward passes, optimizer steps, target networks, computed in each
    round); each part the median over `rounds` rounds (the parts in turn) of its mean over `reps` calls."""
    batch = buffer.sample(script_args.batch_size)
    bc_args = (script_args,) if len(inspect.signature(module.behavior_cloning_loss).parameters) == 4 else ()

    def actor_loss():  # as update() computes it: the critic frozen
        agent.critic.requires_grad_(False)
        try:
            return module.actor_loss_fn(agent, batch, script_args)
        finally:
            agent.critic.requires_grad_(True)

    calls = {
        "critic loss": lambda: module.critic_loss_fn(agent, batch, script_args),
        "actor loss": actor_loss,
        "of which BC loss": lambda: module.behavior_cloning_loss(agent.actor, batch.obs, batch.actions, *bc_args),
        "update": lambda: module.update(agent, batch, script_args, torch.tensor(7, device=device)),
    }

    def ms(fn) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / reps * 1000

    for fn in calls.values():  # untimed: the first call of each
        fn()
    per_round = []
    for _ in range(rounds):
        parts = {name: ms(fn) for name, fn in calls.items()}
        parts["backward, optimizers, targets"] = parts["update"] - parts["critic loss"] - parts["actor loss"]
        per_round.append(parts)
    return {name: statistics.median(p[name] for p in per_round) for name in per_round[0]}


class CountOps(TorchDispatchMode):
    """Counts the ATen operators that compute: not views, allocations, metadata checks, host reads or profiler marks."""

    SKIP = (
        "aten.empty",
        "aten._efficientzerotensor",
        "aten.is_",
        "aten._has_",
        "aten._local_scalar_dense",
        "aten.detach_",
        "profiler.",
    )

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not str(func).startswith(self.SKIP):
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(module, domain, script_args) -> dict:
    """ATen operators of one training iteration on the CPU, as train() runs it (the batch, then the script's update()),
    by part: the losses, the optimizer steps (backward passes, clipping, Adam), the target networks and the rest of
    update(). On CUDA each is about one kernel, and a graph replay costs about their number times a few microseconds."""
    buffer = module.OfflineBuffer(synthetic_data(domain.obs_dim, domain.act_dim, 1000), torch.device("cpu"))
    agent = module.make_agent(domain.obs_dim, domain.act_dim, script_args, torch.device("cpu"))
    training_iteration(module, agent, buffer, script_args, torch.device("cpu"))[0]()  # creates Adam's state
    counter, parts = CountOps(), {}

    def part(name, fn):  # fn, its operators counted under `name`
        def counted(*args, **kwargs):
            before = counter.count
            out = fn(*args, **kwargs)
            parts[name] = parts.get(name, 0) + counter.count - before
            return out

        return counted

    update = sweep.rebind(
        module.update,
        critic_loss_fn=part("critic loss", module.critic_loss_fn),
        actor_loss_fn=part("actor loss", module.actor_loss_fn),
        optimizer_step=part("backward, clipping, Adam", module.optimizer_step),
        update_targets=part("targets", module.update_targets),
    )
    with counter:
        batch = buffer.sample(script_args.batch_size)
        parts["batch"] = counter.count
        update(agent, batch, script_args, torch.tensor(5))
    parts["rest of update"] = counter.count - sum(parts.values())
    return {**parts, "iteration": counter.count}


MATRIX_PRODUCTS = ("aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def count_calls(fn) -> dict:
    """The kernel calls of one call of fn, from the profiler: each inductor-generated kernel (recorded by name with
    inductor's cpp.enable_kernel_profile), and each outermost ATen operator that computes, as count_ops counts them:
    views, allocations, metadata checks and host reads aside (and broadcast_tensors, views only), what an operator
    runs inside it not counted again (the backward pass's and the compiled code's operators are outermost: the autograd
    engine and the compiled graphs' wrappers are not ATen operators). For eager code this is count_ops's count, except
    forward-mode AD (OFQL's jvp), whose tangent operators the profiler nests in the primal ones. By kind: generated
    kernels, matrix products, other ATen operators."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiled:
        fn()
    calls = {"generated kernels": 0, "matrix products": 0, "other ATen operators": 0}

    def count(event) -> None:
        op = getattr(torch.ops.aten, event.name.removeprefix("aten::"), None) if event.name[:6] == "aten::" else None
        if "_cpp_fused_" in event.name:  # graph_<i>_cpp_fused_<ops>_<j>
            calls["generated kernels"] += 1
        elif op is not None:
            overload = getattr(op, op.overloads()[0])
            if not overload.is_view and not str(overload).startswith(CountOps.SKIP + ("aten.broadcast_tensors",)):
                calls["matrix products" if event.name in MATRIX_PRODUCTS else "other ATen operators"] += 1
        else:  # the autograd engine, Dynamo's and AOTAutograd's wrappers: what they call
            for child in event.cpu_children:
                count(child)

    for event in profiled.events():
        if event.cpu_parent is None:
            count(event)
    return {"calls": sum(calls.values()), **calls}


def count_compiled_calls(module, domain, script_args) -> dict:
    """--compile's CPU proxy of the kernels an iteration launches, to set beside count_ops's ATen operators of the
    eager one: count_calls of one compiled iteration after compiling (the kernels inductor generated, C++ here and
    Triton kernels on CUDA, and the ATen operators that the compiled graphs and the code between them call: matrix
    products, Adam, random draws), and the seconds the first call took, which compiles (inductor's caches off). The
    profiler, not a dispatch mode: under a dispatch mode Dynamo runs the code eagerly."""
    buffer = module.OfflineBuffer(synthetic_data(domain.obs_dim, domain.act_dim, 1000), torch.device("cpu"))
    agent = module.make_agent(domain.obs_dim, domain.act_dim, script_args, torch.device("cpu"))
    iteration = training_iteration(module, agent, buffer, script_args, torch.device("cpu"), "compile_graph")[0]
    torch._dynamo.reset()
    with torch._inductor.config.patch({"force_disable_caches": True, "cpp.enable_kernel_profile": True}):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "dynamo_pgo force disabled")
            start = time.perf_counter()
            iteration()
            compile_sec = time.perf_counter() - start
        iteration()
        return {**count_calls(iteration), "compile_sec": compile_sec}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores"


def check(args: Args) -> None:
    """One line for what the measurement cannot take."""
    if args.env_id not in offline_data.DATASETS:
        raise SystemExit(
            f"--env-id {args.env_id}: not a D4RL id (the shapes are D4RL's): {', '.join(offline_data.DATASETS)}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch finds no CUDA device here")
    if not args.algorithms:
        raise SystemExit("--algorithms: name at least one of ofql, dql, fql")
    if min(args.rounds, args.updates, args.decisions, args.decision_batch, args.batch_size, args.dataset_size) < 1:
        raise SystemExit(
            "--rounds, --updates, --decisions, --decision-batch, --batch-size and --dataset-size must be at least 1"
        )
    if args.decision_batch > args.dataset_size:  # the batch's states are the dataset's first ones
        raise SystemExit(f"--decision-batch {args.decision_batch} is above --dataset-size {args.dataset_size}")
    cuda = args.device == "cuda" or args.device == "auto" and torch.cuda.is_available()
    if cuda and args.warmup < 3:  # cuda_graph(warmup=3) captures on its third call: it stays out of the timing
        raise SystemExit(
            f"--warmup must be at least 3 on CUDA (the graph's capture is the third call), not {args.warmup}"
        )


def main(args: Args) -> dict:
    check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.manual_seed(0)
    domain = offline_data.d4rl_files.domain_of(args.env_id)
    data = synthetic_data(domain.obs_dim, domain.act_dim, args.dataset_size)
    paths = ["eager", "cuda_graph"] if device.type == "cuda" else ["eager"]
    setups = {}
    for name in args.algorithms:
        module = MODULES[name]
        script_args = module.parse_args(["--env-id", args.env_id, "--batch-size", str(args.batch_size)])
        buffer = module.OfflineBuffer(data, device)
        steps = {}
        for path in paths:
            path_args = dataclasses.replace(script_args, cuda_graph=path == "cuda_graph")
            agent = module.make_agent(domain.obs_dim, domain.act_dim, path_args, device)
            steps[path] = training_iteration(module, agent, buffer, path_args, device)
        setups[name] = (module, script_args, steps, buffer)
    obs = torch.as_tensor(data["observations"][: args.decision_batch], device=device)
    seconds = {(name, path): [] for name in setups for path in paths}
    policies = {
        (name, path, k): module.make_policy(steps[path][1], k, len(obs), domain.obs_dim, device, path == "cuda_graph")
        for name, (module, a, steps, _) in setups.items()
        for path in paths
        for k in sorted({1, a.num_candidates})
    }
    rates = {key: [] for key in policies}
    for r in range(args.rounds):
        for name, (_, _, steps, _) in setups.items():
            for path, (iteration, _) in steps.items():
                seconds[(name, path)].append(time_updates(iteration, args, device))
            for (n, path, k), policy in policies.items():
                if n == name:
                    rates[(n, path, k)].append(time_decisions(policy, obs, args, device))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {p} {1 / s[-1]:.1f} updates/s" for (n, p), s in seconds.items()),
            flush=True,
        )

    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "commit": bookkeeping.code_version(__file__),  # the code measured (git)
        "env_id": args.env_id,
        "batch_size": args.batch_size,
        "decision_batch": args.decision_batch,
        "updates_per_round": args.updates,
        "rounds": args.rounds,
        "paths": paths,
        "algorithms": {},
    }
    for name, (module, script_args, _, _) in setups.items():
        per_update = {path: statistics.median(seconds[(name, path)]) for path in paths}
        result["algorithms"][name] = {
            "updates_per_sec": {path: 1 / t for path, t in per_update.items()},
            "hours_per_1M_updates": {path: t * 1e6 / 3600 for path, t in per_update.items()},
            "decisions_per_sec": {
                path: {str(k): statistics.median(v) for (n, p, k), v in rates.items() if n == name and p == path}
                for path in paths
            },
            "ops": count_ops(module, domain, script_args),
        }
        if args.compile:
            result["algorithms"][name]["compiled"] = count_compiled_calls(module, domain, script_args)
    a = result["algorithms"]
    ratios = {}
    for path in paths:
        if "ofql" in a and "fql" in a:
            ratios[f"OFQL/FQL training time, {path}"] = (
                a["fql"]["updates_per_sec"][path] / a["ofql"]["updates_per_sec"][path]
            )
        if "ofql" in a and "dql" in a:
            ratios[f"OFQL/DQL training time, {path}"] = (
                a["dql"]["updates_per_sec"][path] / a["ofql"]["updates_per_sec"][path]
            )
            ofql_rates, dql_rates = a["ofql"]["decisions_per_sec"][path], a["dql"]["decisions_per_sec"][path]
            for k in sorted(set(ofql_rates) & set(dql_rates), key=int):
                ratios[f"OFQL/DQL decision frequency, {k} candidate{'s' * (k != '1')}, {path}"] = (
                    ofql_rates[k] / dql_rates[k]
                )
    result["ratios"] = ratios
    result["update_profile_ms"] = {
        name: profile_update(module, steps["eager"][1], buffer, script_args, device, rounds=args.rounds)
        for name, (module, script_args, steps, buffer) in setups.items()
    }
    write(result, args)
    return result


def write(result: dict, args: Args) -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    stem = "cuda" if "CPU" not in result["device"] else "cpu"
    paths = result["paths"]
    lines = [
        f"Device: {result['device']}; torch {result['torch']}; commit {result.get('commit')}; "
        f"{result['env_id']} shapes, batch {result['batch_size']}, "
        f"decision batches of {result['decision_batch']} states; median over {result['rounds']} rounds of "
        f"{result['updates_per_round']} updates.",
        "",
        "| script | "
        + " | ".join(f"updates/s, {p}" for p in paths)
        + " | "
        + " | ".join(f"hours per 1M, {p}" for p in paths)
        + " | "
        + " | ".join(f"decisions/s, 1 candidate, {p} | decisions/s, evaluation candidates, {p}" for p in paths)
        + " | ATen ops per iteration |",
        "|---|" + "---:|" * (4 * len(paths) + 1),
    ]
    for name, r in result["algorithms"].items():
        decisions = []
        for p in paths:
            d = r["decisions_per_sec"][p]
            decisions += [f"{d['1']:.2f}", f"{d[max(d, key=int)]:.3f} ({max(d, key=int)})"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r['updates_per_sec'][p]:.1f}" for p in paths)
            + " | "
            + " | ".join(f"{r['hours_per_1M_updates'][p]:.2f}" for p in paths)
            + " | "
            + " | ".join(decisions)
            + f" | {r['ops']['iteration']} |"
        )
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in result["ratios"].items()]
    profile = result["update_profile_ms"]
    parts = list(next(iter(profile.values())))
    lines += [
        "",
        f"Where one update's time goes (ms; each part the median over {args.rounds} rounds of its mean over 10 calls):",
        "",
        "| script | " + " | ".join(parts) + " |",
        "|---|" + "---:|" * len(parts),
    ]
    lines += [f"| {name} | " + " | ".join(f"{p[k]:.1f}" for k in parts) + " |" for name, p in profile.items()]
    ops = {name: r["ops"] for name, r in result["algorithms"].items()}
    parts = list(next(iter(ops.values())))
    lines += [
        "",
        "ATen operators per part of one iteration (about the CUDA kernels a graph replays):",
        "",
        "| script | " + " | ".join(parts) + " |",
        "|---|" + "---:|" * len(parts),
    ]
    lines += [f"| {name} | " + " | ".join(str(c[k]) for k in parts) + " |" for name, c in ops.items()]
    compiled = {name: r["compiled"] for name, r in result["algorithms"].items() if "compiled" in r}
    if compiled:
        lines += ["", "--compile on the CPU (inductor): the kernel calls of one compiled iteration against the ATen"]
        lines += ["operators of the eager one (speed.count_compiled_calls), and the seconds compiling took:", ""]
        lines += [
            "| script | ATen operators, eager | calls, compiled | of which generated kernels | matrix products | "
        ]
        lines[-1] += "other ATen operators | fewer | compile s |"
        lines += ["|---|" + "---:|" * 7]
        lines += [
            f"| {n} | {ops[n]['iteration']} | {c['calls']} | {c['generated kernels']} | {c['matrix products']} | "
            f"{c['other ATen operators']} | {ops[n]['iteration'] / c['calls']:.2f}x | {c['compile_sec']:.0f} |"
            for n, c in compiled.items()
        ]
    with open(os.path.join(args.out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out_dir, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
