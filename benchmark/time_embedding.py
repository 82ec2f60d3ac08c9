"""Ablation of OFQL's time embedding: which embedding of t and r learns fastest, measured with the unmodified
training loop of ofql.py (only its `Actor` class is swapped), on a local D4RL-layout file.

    python benchmark/time_embedding.py --dataset-path hopper-medium.hdf5   # CPU, ~40 min

Each run evaluates the one-step policy (1 candidate, as --flags' default says) during training; at the end, from its
checkpoint, two offline measures of the one-step policy on 4096 dataset states with shared noise: its mean squared
distance to the dataset's actions, and to a fine ODE integration (100 Euler steps of the instantaneous velocity
u(a_t, t, t)) of the same network, the gap that Eq. 13's identity should close. Writes results.md and results.json to
--out-dir.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bookkeeping  # noqa: E402
import offline_data  # noqa: E402
import ofql  # noqa: E402
from compare import stop_others  # noqa: E402

# name: (features, scale of t inside the sinusoid, with DQL's time MLP Linear(d, 2d)-Mish-Linear(2d, d))
VARIANTS = {
    "mlp64": (64, 1.0, True),
    "raw64": (64, 1.0, False),
    "raw16": (16, 1.0, False),
    "raw64-t1000": (64, 1000.0, False),
    "mlp64-t1000": (64, 1000.0, True),
}


class Scale(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def embedding(dim: int, scale: float, with_mlp: bool) -> nn.Sequential:
    layers = [Scale(scale), ofql.SinusoidalPosEmb(dim)]
    if with_mlp:
        layers += [nn.Linear(dim, 2 * dim), nn.Mish(), nn.Linear(2 * dim, dim)]
    return nn.Sequential(*layers)


def actor_class(variant: str) -> type:
    dim, scale, with_mlp = VARIANTS[variant]

    class VariantActor(ofql.Actor):
        def __init__(self, obs_dim: int, act_dim: int):
            nn.Module.__init__(self)
            self.act_dim = act_dim
            self.t_emb, self.r_emb = embedding(dim, scale, with_mlp), embedding(dim, scale, with_mlp)
            self.net = ofql.mlp(act_dim + 2 * dim + obs_dim, act_dim)

        def forward(self, a_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
            times = torch.cat([self.t_emb(t), self.r_emb(r)], dim=-1)
            return self.net(torch.cat([a_t, times.expand(len(a_t), -1), obs], dim=-1))

    return VariantActor


@dataclass
class Args:
    dataset_path: str
    """a D4RL-layout file of --env-id"""
    env_id: str = "hopper-medium-v2"
    """the D4RL id the file matches (evaluation environment, normalized score, presets)"""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    """which embeddings, from: mlp64 (DQL's sinusoid + time MLP), raw64, raw16, raw64-t1000, mlp64-t1000"""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """training seeds"""
    flags: str = "--eta 0.1 --total-steps 6000 --eval-every 2000 --eval-episodes 10 --num-candidates 1"
    """flags for ofql.py"""
    jobs: int = 2
    """runs in parallel, one CPU thread each"""
    out_dir: str = os.path.join(ROOT, "benchmark", "results", "time_embedding")
    """where the runs and results.md / results.json go"""
    report_only: bool = False
    """skip training; rebuild the report from the runs in --out-dir"""
    run_one: str = ""
    """internal: 'variant:seed' trains one run in this process"""


def run_one(args: Args) -> None:
    variant, seed = args.run_one.split(":")
    ofql.Actor = actor_class(variant)  # make_agent builds whatever ofql.Actor names
    torch.set_num_threads(1)
    argv = [
        "--env-id",
        args.env_id,
        "--dataset-path",
        args.dataset_path,
        "--seed",
        seed,
        "--exp-name",
        variant,
        "--save-model",
        *args.flags.split(),
    ]
    ofql.train(ofql.parse_args(argv))


def launch(args: Args, job: str, log: str) -> subprocess.Popen:
    """The run 'variant:seed' in a process of its own, in --out-dir, writing to `log`."""
    cmd = [sys.executable, os.path.abspath(__file__), "--run-one", job]
    cmd += ["--dataset-path", os.path.abspath(args.dataset_path), "--env-id", args.env_id, f"--flags={args.flags}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=args.out_dir, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def train_all(args: Args) -> None:
    queue = [f"{v}:{s}" for s in args.seeds for v in args.variants]
    running = {}  # process: its log
    while queue or running:
        while queue and len(running) < args.jobs:
            job = queue.pop(0)
            log = os.path.join(args.out_dir, job.replace(":", "__") + ".log")
            running[launch(args, job, log)] = log
        time.sleep(5)
        for proc in [p for p in running if p.poll() is not None]:
            log = running.pop(proc)
            if proc.returncode != 0:
                stop_others(proc, log, running)


@torch.no_grad()
def offline_measures(actor: ofql.Actor, obs: torch.Tensor, actions: torch.Tensor, ode_steps: int = 100) -> dict:
    """Mean squared distance of the one-step actions (Eq. 16) to the data's actions and to an ODE integration of the
    same network's instantaneous velocity u(a_t, t, t) from t = 1 to 0 with the same noise."""
    eps = torch.randn(len(obs), actor.act_dim, generator=torch.Generator().manual_seed(0))
    one = torch.ones(1, 1)
    one_step = (eps - actor(eps, 0 * one, one, obs)).clamp(-1, 1)
    a = eps
    for i in range(ode_steps, 0, -1):
        t = one * i / ode_steps
        a = a - actor(a, t, t, obs) / ode_steps
    a = a.clamp(-1, 1)
    return {
        "one_step_to_data": float((one_step - actions).pow(2).mean()),
        "ode_to_data": float((a - actions).pow(2).mean()),
        "one_step_to_ode": float((one_step - a).pow(2).mean()),
    }


def evaluated(runs: list[dict]) -> str:
    """What the runs' evaluations scored, from their summary.json: the policy and the episodes."""
    episodes = "/".join(str(n) for n in sorted({r["eval_episodes"] for r in runs}))
    candidates = sorted({r["num_candidates"] for r in runs})
    if candidates == [1]:
        return f"the one-step policy ({episodes} episodes)"
    return f"one of {'/'.join(map(str, candidates))} candidate actions picked by softmax(Q) ({episodes} episodes)"


def report(args: Args) -> None:
    runs_dir = os.path.join(args.out_dir, "runs")
    if not os.path.isdir(runs_dir):
        raise SystemExit(f"no runs to report: {runs_dir} does not exist")
    data = offline_data.load(args.env_id, args.dataset_path).data
    idx = np.random.default_rng(0).choice(len(data["observations"]), 4096, replace=False)
    obs, actions = torch.as_tensor(data["observations"][idx]), torch.as_tensor(data["actions"][idx])
    results = []
    for variant in args.variants:
        rows, newest = [], {}  # a seed run again: its newest finished run (by its summary.json's time) only
        for name in os.listdir(runs_dir):
            _, exp, seed, _ = name.split("__")
            summary_path = os.path.join(runs_dir, name, "summary.json")
            if exp == variant and int(seed) in args.seeds and os.path.exists(summary_path):
                newest[int(seed)] = max(newest.get(int(seed), summary_path), summary_path, key=os.path.getmtime)
        for seed, summary_path in sorted(newest.items()):
            path = os.path.dirname(summary_path)
            summary = json.load(open(summary_path))
            actor = actor_class(variant)(obs.shape[1], actions.shape[1])
            actor.load_state_dict(bookkeeping.load_checkpoint(os.path.join(path, "checkpoint.pt"))["actor"])
            rows.append(
                {
                    "seed": int(seed),
                    "steps": [e["step"] for e in summary["evaluations"]],
                    "scores": [e["score"] for e in summary["evaluations"]],
                    "steps_per_sec": summary["train_steps_per_sec"],
                    **{k: summary[k] for k in ("eval_episodes", "num_candidates")},
                    "commit": str(summary.get("commit") or "unrecorded"),  # the code that trained it (git)
                    **offline_measures(actor, obs, actions),
                }
            )
        if rows:
            results.append({"variant": variant, "runs": rows})
    if not results:
        raise SystemExit(f"no finished runs of --variants {' '.join(args.variants)} in {runs_dir}")
    runs = [run for r in results for run in r["runs"]]
    commits = sorted({run["commit"] for run in runs})
    lines = [
        f"`ofql.py {args.flags}` on {os.path.basename(args.dataset_path)} ({args.env_id}), seeds {args.seeds}; "
        f"scores: normalized score of {evaluated(runs)}, mean over seeds at each evaluation; "
        "offline: mean squared action distance of the one-step policy on 4096 dataset states at the last step "
        f"(mean over seeds); commit: {', '.join(commits)}.",
        "",
        "| embedding | scores at each evaluation | mean | one-step to data | ODE to data | one-step to ODE | steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        scores = np.array([run["scores"] for run in r["runs"]])
        mean = {
            k: np.mean([run[k] for run in r["runs"]])
            for k in ("one_step_to_data", "ode_to_data", "one_step_to_ode", "steps_per_sec")
        }
        lines.append(
            f"| {r['variant']} | {' / '.join(f'{s:.1f}' for s in scores.mean(0))} | {scores.mean():.1f} | "
            f"{mean['one_step_to_data']:.4f} | {mean['ode_to_data']:.4f} | {mean['one_step_to_ode']:.4f} | "
            f"{mean['steps_per_sec']:.1f} |"
        )
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        saved = {"flags": args.flags, "dataset": os.path.basename(args.dataset_path), "commits": commits}
        json.dump({**saved, "results": results}, f, indent=1)
    print("\n".join(lines))


def main(args: Args) -> None:
    if args.run_one:
        return run_one(args)
    if set(args.variants) - set(VARIANTS):
        raise SystemExit(f"--variants {' '.join(args.variants)}: each one of {', '.join(VARIANTS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.report_only:
        train_all(args)
    report(args)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
