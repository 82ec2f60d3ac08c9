"""Check that a change keeps every logged number: run ofql.py, dql.py and fql.py on the CPU in this checkout and in a
base checkout (e.g. `git worktree add /tmp/base <commit>`), then compare their metrics.jsonl record by record, bit for
bit (JSON keeps a float's exact value), except the timing fields. Exit code 1 if anything differs.

    python tools/compare_runs.py --base /tmp/base --dataset-path hopper-medium.hdf5   # any D4RL-layout hopper file
"""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("steps_per_sec", "eval/decision_rate")


@dataclass
class Args:
    base: str
    """the checkout to compare with (its scripts are run as they are)"""
    dataset_path: str = os.path.join(ROOT, "..", "shared", "datasets", "hopper-medium.hdf5")
    """a local D4RL-layout file of --env-id"""
    env_id: str = "hopper-medium-v2"
    """the D4RL id of the file"""
    scripts: list[str] = field(default_factory=lambda: ["ofql", "dql", "fql"])
    """the scripts to run in both checkouts"""
    flags: str = "--total-steps 1010 --eval-every 1010 --eval-episodes 2 --log-every 101 --batch-size 64"
    """the flags of every run (after --env-id and --dataset-path)"""
    out_dir: str = os.path.join(tempfile.gettempdir(), "compare_runs")
    """where the runs go: <out-dir>/{base,this}/<script>/runs/..."""
    reuse_base: bool = False
    """if toggled, reuse the base's runs already in --out-dir instead of running them again"""


def run(checkout: str, script: str, args: Args, out: str) -> list[dict]:
    """Run one script of `checkout` in a fresh folder and return its metrics.jsonl records."""
    os.makedirs(out, exist_ok=True)
    cmd = [
        sys.executable,
        os.path.join(checkout, f"{script}.py"),
        "--env-id",
        args.env_id,
        "--dataset-path",
        args.dataset_path,
        "--no-cuda",
        *args.flags.split(),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    with open(os.path.join(out, "log.txt"), "w") as log:
        subprocess.run(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return read_records(out)


def read_records(out: str) -> list[dict]:
    (run_dir,) = os.listdir(os.path.join(out, "runs"))
    with open(os.path.join(out, "runs", run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def differences(base: list[dict], this: list[dict]) -> list[str]:
    if [r["step"] for r in base] != [r["step"] for r in this]:
        return [f"logged steps differ: {[r['step'] for r in base]} vs {[r['step'] for r in this]}"]
    found = []
    for a, b in zip(base, this):
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                found.append(f"step {a['step']} {key}: {a.get(key)!r} (base) vs {b.get(key)!r} (this)")
    return found


def main(args: Args) -> int:
    failed = False
    for script in args.scripts:
        base_out, this_out = (os.path.join(args.out_dir, label, script) for label in ("base", "this"))
        if args.reuse_base and os.path.isdir(os.path.join(base_out, "runs")):
            base = read_records(base_out)
        else:
            subprocess.run(["rm", "-rf", base_out], check=True)
            base = run(os.path.abspath(args.base), script, args, base_out)
        subprocess.run(["rm", "-rf", this_out], check=True)
        found = differences(base, run(ROOT, script, args, this_out))
        values = sum(len(r) for r in base)
        print(
            f"{script}: "
            + (
                f"{len(found)} difference(s)"
                if found
                else f"identical ({len(base)} records, {values} values, timing fields aside)"
            )
        )
        for line in found[:20]:
            print(f"  {line}")
        failed |= bool(found)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
