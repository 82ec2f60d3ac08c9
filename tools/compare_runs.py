"""Check that a change keeps every logged number: run ofql.py, dql.py and fql.py on the CPU in this checkout and in a
base checkout (e.g. `git worktree add /tmp/base <commit>`), each alone and as a 2 x 2 sweep (sweep.py: seeds x its
weight), then compare every run's metrics.jsonl record by record, bit for bit (JSON keeps a float's exact value),
except the timing fields. Exit code 1 if anything differs.

    python tools/compare_runs.py --base /tmp/base --dataset-path hopper-medium.hdf5   # any D4RL-layout hopper file

What a flag changes in the numbers, in one checkout: its base is the checkout itself with the flag added to its runs
only; on a GPU (--cuda, the scripts' default path there) with the largest relative difference it finds:

    python tools/compare_runs.py --base . --cuda --dataset-path hopper-medium.hdf5 \
        --base-flags="--matmul-precision high"   # TF32 against float32
"""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Literal

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("steps_per_sec", "eval/decision_rate")
Script = Literal["ofql", "dql", "fql"]


@dataclass
class Args:
    base: str
    """the checkout to compare with (its scripts are run as they are)"""
    dataset_path: str
    """a local D4RL-layout file of --env-id"""
    env_id: str = "hopper-medium-v2"
    """the D4RL id of the file"""
    scripts: list[Script] = field(default_factory=lambda: ["ofql", "dql", "fql"])
    """the scripts to run in both checkouts"""
    sweeps: list[Script] = field(default_factory=lambda: ["ofql", "dql", "fql"])
    """the scripts to run as a 2 x 2 sweep too (SWEEP_GRIDS) in both checkouts"""
    flags: str = "--total-steps 1010 --eval-every 1010 --eval-episodes 2 --log-every 101 --batch-size 64"
    """the flags of every run (after --env-id and --dataset-path), one string: --flags='--total-steps 200 ...'"""
    out_dir: str = os.path.join(tempfile.gettempdir(), "compare_runs")
    """where the runs go: <out-dir>/{base,this}/<script>/runs/..."""
    base_flags: str = ""
    """flags added to the base's runs only (with --base . : what those flags change)"""
    cuda: bool = False
    """if toggled, the runs train on the GPU (the scripts' default path there), not with --no-cuda on the CPU"""
    reuse_base: bool = False
    """if toggled, reuse the base's runs already in --out-dir instead of running them again"""


SWEEP_GRIDS = {
    "ofql": "--seeds 0 1 --eta 0.01 0.1",
    "dql": "--seeds 0 1 --eta 0.5 1",
    "fql": "--seeds 0 1 --alpha 3 10",
}


def run(checkout: str, script: str, args: Args, out: str, extra: str = "") -> list[list[dict]]:
    """Run one script of `checkout` ("sweep:<script>": its 2 x 2 sweep) in a fresh folder; returns the metrics.jsonl
    records of each of its runs (extra: flags after args.flags)."""
    os.makedirs(out, exist_ok=True)
    name = script.removeprefix("sweep:")
    swept = [os.path.join(checkout, "sweep.py"), f"{name}.py", *SWEEP_GRIDS[name].split()] if name != script else []
    cmd = [
        sys.executable,
        *(swept or [os.path.join(checkout, f"{script}.py")]),
        "--env-id",
        args.env_id,
        "--dataset-path",
        os.path.abspath(args.dataset_path),  # the runs start in their own folder
        *([] if args.cuda else ["--no-cuda"]),
        *args.flags.split(),
        *extra.split(),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.update({} if args.cuda else {"CUDA_VISIBLE_DEVICES": ""})
    with open(os.path.join(out, "log.txt"), "w") as log:
        done = subprocess.run(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        last = (open(os.path.join(out, "log.txt")).read().strip().splitlines() or [""])[-1]
        raise SystemExit(f"{script} in {checkout} exited {done.returncode}: {last} (the whole log: {out}/log.txt)")
    return read_records(out)


def read_records(out: str) -> list[list[dict]]:
    """Each run's records, the runs in the order of their folders' names (<env>__<exp_name>__<seed>__<time>)."""
    runs = []
    for run_dir in sorted(os.listdir(os.path.join(out, "runs"))):
        with open(os.path.join(out, "runs", run_dir, "metrics.jsonl")) as f:
            runs.append([{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f])
    return runs


def differences(base: list[dict], this: list[dict]) -> list[str]:
    if [r["step"] for r in base] != [r["step"] for r in this]:
        return [f"logged steps differ: {[r['step'] for r in base]} vs {[r['step'] for r in this]}"]
    found = []
    for a, b in zip(base, this):
        for key in sorted(a.keys() | b.keys()):
            if json.dumps(a.get(key)) != json.dumps(b.get(key)):  # as logged: -0.0 is not 0.0, 1 not 1.0, NaN NaN
                found.append(f"step {a['step']} {key}: {a.get(key)!r} (base) vs {b.get(key)!r} (this)")
    return found


def largest_difference(base: list[dict], this: list[dict]) -> tuple[float, str]:
    """The largest relative difference |this - base| / max(|base|, 1e-12) among the numbers both log at a step, and
    where (step and key)."""
    largest = (0.0, "")
    for a, b in zip(base, this):
        for key in a.keys() & b.keys():
            x, y = a[key], b[key]
            if isinstance(x, float | int) and isinstance(y, float | int) and not isinstance(x, bool) and x != y:
                largest = max(largest, (abs(y - x) / max(abs(x), 1e-12), f"step {a['step']} {key}"))
    return largest


def main(args: Args) -> int:
    if not args.scripts and not args.sweeps:
        raise SystemExit("nothing to compare: --scripts and --sweeps are both empty")
    if args.cuda:
        import torch  # here only: the runs are subprocesses

        if not torch.cuda.is_available():
            raise SystemExit("--cuda: torch finds no CUDA device here (the runs would train on the CPU)")
    failed = False
    for script in args.scripts + [f"sweep:{name}" for name in args.sweeps]:
        base_out, this_out = (os.path.join(args.out_dir, label, script) for label in ("base", "this"))
        if args.reuse_base and os.path.isdir(os.path.join(base_out, "runs")):
            base = read_records(base_out)
        else:
            subprocess.run(["rm", "-rf", base_out], check=True)
            base = run(os.path.abspath(args.base), script, args, base_out, args.base_flags)
        subprocess.run(["rm", "-rf", this_out], check=True)
        this = run(ROOT, script, args, this_out)
        found = [f"{len(base)} runs (base) vs {len(this)} (this)"] if len(base) != len(this) else []
        found += [] if any(base) else ["no records in the base's runs: nothing compared"]  # not "identical"
        found += [f"run {i}: {line}" for i, (a, b) in enumerate(zip(base, this)) for line in differences(a, b)]
        records, values = sum(len(r) for r in base), sum(len(x) for r in base for x in r)
        same = f"identical ({len(base)} run(s), {records} records, {values} values, timing fields aside)"
        rel, where = max((largest_difference(a, b) for a, b in zip(base, this)), default=(0.0, ""))
        largest = f", the largest relative {rel:.2e} ({where})" if where else ""  # none: not numbers, or runs, steps
        print(f"{script}: " + (f"{len(found)} difference(s){largest}" if found else same))
        for line in found[:20]:
            print(f"  {line}")
        failed |= bool(found)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, description=__doc__)))
