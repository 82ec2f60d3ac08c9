"""Many runs of one script in one process: a dataset's grid of seeds x eta (alpha for fql.py), trained together.

    python sweep.py ofql.py --env-id hopper-medium-v2 --seeds 0 1 2 --eta 0.001 0.01 0.1 0.3 0.5
    python sweep.py fql.py --env-id hopper-medium-v2 --seeds 0 1 2 --alpha 3 10 30 --save-model
    python sweep.py ofql.py --env-id hopper-medium-v2 --seeds 0 1 2 --eta 0.01 0.1 --shard 1/4   # members 1, 5, ...

Every other flag is the script's (`python ofql.py --help`) and applies to every member. Each member writes the run
folder the script would write (runs/<run_name>/: config.json with its own seed and weight, metrics.jsonl,
summary.json, checkpoint.pt with --save-model), and its checkpoint resumes with the script alone.

How: the members' networks are stacked (one tensor per parameter, members on the first dimension); the script's own
losses run for all members at once through torch.func.vmap over torch.func.functional_call (randomness="different":
each member draws its own noise, the slice of one draw at its place in the grid); the script's own update() runs on
the stacked networks, its code unchanged, with three names rebound: the two losses to their vmapped versions, and
optimizer_step to one that back-propagates the members' summed losses (member i's parameters get the gradient of its
own loss alone) and clips each member's gradient by its own norm. Adam and the target networks' lerps are
elementwise, so one optimizer over the stacked parameters is N independent ones. On CUDA the whole iteration is one
replay of the script's cuda_graph. Evaluation steps all members' episodes together, one batched policy call per step.
Members are independent: no number of one depends on another's hyper-parameters (tests/test_sweep.py). A member's
noise is not that of a lone run with its seed (one generator serves the sweep, in the state a lone run of the first
member has after making its networks), but a one-member sweep is that lone run, up to float rounding.
"""

import contextlib
import copy
import dataclasses
import importlib.util
import itertools
import json
import os
import random
import shlex
import sys
import time
import types
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.func import functional_call, vmap
from tqdm import tqdm

import offline_data
from offline_data import UserError

WEIGHT = {"ofql": "eta", "dql": "eta", "fql": "alpha"}  # the hyper-parameter each script's grid is over


@dataclass
class Args:
    seeds: list[int] = field(default_factory=lambda: [0])
    """the seeds of the grid"""
    eta: list[float] | None = None
    """ofql.py, dql.py: the values of --eta in the grid (default: the preset's)"""
    alpha: list[float] | None = None
    """fql.py: the values of --alpha in the grid (default: the preset's)"""
    resume: list[str] | None = None
    """the members' checkpoint.pt files, in the grid's order (the command a stopped sweep prints): continue them"""
    shard: str = "0/1"
    """I/K: train only members I, I + K, I + 2K, ... of the grid (seeds outer, weights inner), e.g. the array index of
    a SLURM job array of K jobs, or one of K GPUs"""


def load_script(path: str) -> types.ModuleType:
    """Import ofql.py, dql.py or fql.py (a path, or a name beside this file) as the module it is."""
    name = os.path.basename(path).removesuffix(".py")
    if name not in WEIGHT:
        raise UserError(f"sweep.py trains ofql.py, dql.py or fql.py, not {path!r}")
    if name in sys.modules:
        return sys.modules[name]
    file = path if os.path.isfile(path) else os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, file)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str]) -> tuple[types.ModuleType, Args, list]:
    """-> (script, sweep flags, one script Args per member of this shard)."""
    if not argv or argv[0] in ("-h", "--help"):
        tyro.cli(Args, args=["--help"], description=__doc__)
    if argv[0].startswith("-"):
        raise UserError(f"the first argument is the script (sweep.py ofql.py --seeds ...), not {argv[0]!r}")
    script = load_script(argv[0])
    sweep, rest = tyro.cli(Args, args=argv[1:], return_unknown_args=True, description=__doc__)
    weight, other = WEIGHT[script.__name__], "alpha" if WEIGHT[script.__name__] == "eta" else "eta"
    if getattr(sweep, other) is not None:
        raise UserError(f"{argv[0]}'s grid is over --{weight}, not --{other}")
    if any(a.split("=")[0] in ("--seed", f"--{weight}") for a in rest):
        raise UserError(f"the grid's flags are --seeds and --{weight} (lists)")
    try:
        index, count = (int(x) for x in sweep.shard.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise UserError(f"--shard must be I/K with 0 <= I < K, not {sweep.shard!r}") from None
    base = script.parse_args(rest)
    if getattr(base, "capture_video", False):
        raise UserError("--capture-video records a lone run's policy; run the script with it (a sweep records none)")
    weights = getattr(sweep, weight) or [getattr(base, weight)]
    if len(set(sweep.seeds)) < len(sweep.seeds) or len(set(weights)) < len(weights):
        raise UserError(f"--seeds and --{weight} must not repeat a value")
    grid = list(itertools.product(sweep.seeds, weights))[index::count]
    if not grid:
        raise UserError(f"shard {sweep.shard} of a grid of {len(sweep.seeds) * len(weights)} members is empty")
    name = lambda w: base.exp_name if len(weights) == 1 else f"{base.exp_name}_{weight}{w:g}"  # noqa: E731
    members = [dataclasses.replace(base, seed=s, exp_name=name(w), **{weight: w}) for s, w in grid]
    if sweep.resume is not None:
        if len(sweep.resume) != len(members):
            raise UserError(f"--resume needs one checkpoint per member: {len(members)}, not {len(sweep.resume)}")
        members = [dataclasses.replace(m, resume=path) for m, path in zip(members, sweep.resume)]
    for member in members:
        offline_data.check_flags(vars(member))
    return script, sweep, members


# ---------------------------------------------------------------------------------------------------------------
# The members' networks stacked, and the script's functions for all members at once
# ---------------------------------------------------------------------------------------------------------------
def network_names(script) -> list[str]:
    return [name for name in script.Agent.__dataclass_fields__ if not name.endswith("_optimizer")]


def stack_agents(script, agents: list):
    """One Agent of the script whose networks hold every member's parameters stacked on a first dimension, and whose
    optimizers are the script's (same class and options) over the stacked parameters."""
    stacked = {}
    for name in network_names(script):
        module = copy.deepcopy(getattr(agents[0], name))
        for key, p in list(module.named_parameters()):
            owner, leaf = module.get_submodule(key.rpartition(".")[0]), key.rpartition(".")[2]
            values = torch.stack([getattr(agent, name).get_parameter(key).detach() for agent in agents])
            setattr(owner, leaf, nn.Parameter(values, requires_grad=p.requires_grad))
        stacked[name] = module
    for name in script.Agent.__dataclass_fields__:
        if name.endswith("_optimizer"):
            optimizer, states = getattr(agents[0], name), [getattr(a, name).state_dict()["state"] for a in agents]
            stacked[name] = type(optimizer)(stacked[name.removesuffix("_optimizer")].parameters(), **optimizer.defaults)
            if states[0]:  # resumed members: their Adam moments stacked too (the step counts are the same)
                state = stacked[name].state_dict()
                state["state"] = {
                    i: {
                        k: v if k == "step" else torch.stack([s[i][k] for s in states]) for k, v in states[0][i].items()
                    }
                    for i in states[0]
                }
                stacked[name].load_state_dict(state)
    return script.Agent(**stacked)


class Networks(nn.Module):
    """The networks of an Agent as one module, so that one functional_call swaps all their parameters: called as
    Networks(fn, *inputs), it is fn(agent, *inputs) with the networks' current parameters."""

    def __init__(self, agent, names: list[str]):
        super().__init__()
        self.nets = nn.ModuleDict({name: getattr(agent, name) for name in names})

    def forward(self, fn, *inputs):
        return fn(types.SimpleNamespace(**self.nets), *inputs)


class Members:
    """N members of one script trained together: the stacked Agent and the script's functions for all of them."""

    def __init__(self, script, agents: list, member_args: list):
        self.script, self.size, self.agents = script, len(agents), agents
        self.stacked = stack_agents(script, agents)
        self.networks = Networks(self.stacked, network_names(script))
        self.params = dict(self.networks.named_parameters())  # the stacked tensors, updated in place
        weight = WEIGHT[script.__name__]
        device = next(iter(self.params.values())).device
        self.hyper = {weight: torch.tensor([getattr(a, weight) for a in member_args], device=device)}
        self.update = rebind(
            script.update,
            critic_loss_fn=self.vectorized(script.critic_loss_fn),
            actor_loss_fn=self.vectorized(script.actor_loss_fn),
            optimizer_step=optimizer_step,
        )
        self.make_policy = rebind(script.make_policy, select_action=self.select_action)

    def vectorized(self, loss_fn):
        """loss_fn(agent, batch, args) for every member: a batch per member, each with its own weight in args."""

        def one(params, hyper, batch, args):
            return functional_call(self.networks, params, (loss_fn, batch, dataclasses.replace(args, **hyper)))

        members = vmap(one, in_dims=(0, 0, 0, None), randomness="different")
        return lambda agent, batch, args: members(self.params, self.hyper, batch, args)

    def sample(self, buffer, batch_size: int):
        """A batch of the script's buffer per member, drawn in one call."""
        return vmap(lambda _: buffer.sample(batch_size), randomness="different")(torch.empty(self.size))

    @torch.no_grad()
    def select_action(self, agent, obs: torch.Tensor, num_candidates: int) -> torch.Tensor:
        """The script's select_action on (members x envs, obs_dim) states, member-major: each member's rows its own."""

        def one(params, obs):
            return functional_call(self.networks, params, (self.script.select_action, obs, num_candidates))

        per_member = obs.view(self.size, -1, obs.shape[-1])
        return vmap(one, randomness="different")(self.params, per_member).flatten(0, 1)

    def member(self, index: int):
        """The script's Agent of one member, its networks and optimizers' states copied out of the stacked ones."""
        agent = self.agents[index]
        with torch.no_grad():
            for name in network_names(self.script):
                for p, stacked in zip(getattr(agent, name).parameters(), getattr(self.stacked, name).parameters()):
                    p.copy_(stacked[index])
        for name in self.script.Agent.__dataclass_fields__:
            if name.endswith("_optimizer"):
                state = getattr(self.stacked, name).state_dict()
                state["state"] = {
                    i: {k: v if k == "step" else v[index] for k, v in s.items()} for i, s in state["state"].items()
                }
                getattr(agent, name).load_state_dict(state)
        return agent


def rebind(fn, **names):
    """The script's function fn, its code unchanged, with some of the names it calls bound to other functions (here:
    their all-members versions). The script's module itself is left as it is."""
    return types.FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__, fn.__defaults__, fn.__closure__)


def optimizer_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, max_norm: float):
    """The script's optimizer_step for stacked members: one backward pass of the summed losses (each member's
    parameters receive its own loss's gradient), each member's gradient clipped by its own norm, then the step.
    Returns the members' gradient norms (before clipping), as clip_grad_norm_ does for one."""
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    grads = [p.grad for p in module.parameters()]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]).norm(dim=0)
    if max_norm > 0:
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s rule, per member
        torch._foreach_mul_(grads, [scale.view(-1, *[1] * (g.dim() - 1)) for g in grads])
    optimizer.step()
    return norms


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: every member's episodes in one vector env
# ---------------------------------------------------------------------------------------------------------------
def evaluate(script, policies: list, envs: gym.vector.VectorEnv, source, member_args: list, device) -> list[dict]:
    """The script's evaluate for every member at once: member m's episodes are envs m*E ... m*E + E - 1, seeded as
    the script seeds a run's (seed + 100 + i); per member, the statistics of its own episodes (source.episode_stats)."""
    episodes = member_args[0].eval_episodes
    seeds = [a.seed + 100 + i for a in member_args for i in range(episodes)]
    results = [{} for _ in member_args]
    for prefix, policy in zip(("", "policy_"), policies):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(member_args[0].seed + 100)  # member m's noise: slice m of each draw, as in training
            returns, successes, decision_rate = script.run_episodes(policy, envs, seeds, device)
        per_member = (x.reshape(len(member_args), episodes) for x in (returns, successes))
        for result, member_returns, member_successes in zip(results, *per_member):
            result.update(source.episode_stats(member_returns, member_successes, prefix))
            result.setdefault("decision_rate", decision_rate)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Training loop: the script's, for all members
# ---------------------------------------------------------------------------------------------------------------
def make_members(script, member_args: list, resume: list[str] | None, source, device, configs: list):
    """-> (Members, first step, evals, elapsed). New members: each one's initial networks are a lone run's with its
    seed, and the noise generators are seeded as the first member's run. Resumed: each member's checkpoint (as the
    script resumes one), all of one step; the generators as they were saved (the same in every member's checkpoint)."""
    agents, state = [], None
    for a in member_args:
        random.seed(a.seed), np.random.seed(a.seed), torch.manual_seed(a.seed)
        agents.append(script.make_agent(source.obs_dim, source.act_dim, a, device))
        state = state or (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.setstate(state[0]), np.random.set_state(state[1]), torch.set_rng_state(state[2])
    start, evals, elapsed = 1, [[] for _ in agents], 0.0
    if resume:
        resumed = [offline_data.resume(path, agent, config) for path, agent, config in zip(resume, agents, configs)]
        if len({r[0] for r in resumed}) > 1:
            raise UserError(f"the checkpoints are of different steps: {[r[0] - 1 for r in resumed]}")
        start, evals, elapsed = resumed[0][0], [r[1] for r in resumed], resumed[0][2]
    return Members(script, agents, member_args), start, evals, elapsed


def train(script, member_args: list, sweep_name: str, resume: list[str] | None = None) -> list[str]:
    """Train the members together (with `resume`, from their checkpoints); returns their summary.json paths."""
    args, n = member_args[0], len(member_args)  # the flags every member shares (all but seed, weight, exp_name)
    with contextlib.ExitStack() as stack:  # every member's folder made (or found) before the data are loaded
        run_dirs = [
            stack.enter_context(
                offline_data.run_folder(f"{a.env_id.replace('/', '-')}__{a.exp_name}__{a.seed}__{int(time.time())}", r)
            )
            for a, r in zip(member_args, resume or [None] * n)
        ]
        source = offline_data.load(args.env_id, args.dataset_path, args.reward_mode)

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    torch.backends.cudnn.deterministic = args.torch_deterministic
    buffer = script.OfflineBuffer(source.data, device)
    use_graph = args.cuda_graph and device.type == "cuda"
    configs = []
    for a in member_args:
        config = {**vars(a), "dataset_path": a.dataset_path and os.path.abspath(a.dataset_path)}
        config.update(device=str(device), training_step="cuda_graph" if use_graph else "eager")
        configs.append({**config, "transitions": buffer.size, "torch": str(torch.__version__)})
    members, start_step, evals, elapsed = make_members(script, member_args, resume, source, device, configs)
    envs = None
    if source.make_env is not None:
        envs = gym.vector.SyncVectorEnv([source.make_env] * (n * args.eval_episodes))
    if source.limitation:
        print(f"NOTE: {args.env_id}: {source.limitation}")
    for optimizer in (members.stacked.actor_optimizer, members.stacked.critic_optimizer):
        script.set_capturable(optimizer, use_graph)
    last_step = torch.tensor(start_step - 1, device=device)

    def iteration() -> dict[str, torch.Tensor]:
        last_step.add_(1)
        return members.update(members.stacked, members.sample(buffer, args.batch_size), args, last_step)

    if use_graph:
        iteration = script.cuda_graph(iteration, warmup=3, what="the sweep's training step")
    candidates = [args.num_candidates, 1] if args.num_candidates > 1 else [1]
    num_envs = n * args.eval_episodes
    policies = [
        members.make_policy(members.stacked, k, num_envs, source.obs_dim, device, use_graph) for k in candidates
    ]
    print(
        f"sweep {sweep_name}: {n} members of {script.__name__}.py on {device}, "
        + ("CUDA graphs" if use_graph else "eager")
    )
    for run_dir, config in zip(run_dirs, configs):
        with open(f"{run_dir}/config{f'_resumed_at_{start_step - 1}' if resume else ''}.json", "w") as f:
            json.dump(config, f, indent=2)
        with open(f"{run_dir}/sweep.json", "w") as f:
            json.dump({"sweep": sweep_name, "members": run_dirs, "command": sys.argv}, f, indent=2)
    wandb_runs = []
    if args.track:  # one wandb run per member, grouped by the sweep
        import wandb

        for run_dir, config in zip(run_dirs, configs):
            where = dict(project=args.wandb_project_name, entity=args.wandb_entity, name=os.path.basename(run_dir))
            wandb_runs.append(
                wandb.init(
                    config=config, group=sweep_name, reinit="create_new", resume="allow", id=where["name"], **where
                )
            )
    metrics_files = [open(os.path.join(d, "metrics.jsonl"), "a", buffering=1) for d in run_dirs]

    failed, metric_sum, window_steps, first_bad, stopping = {}, 0.0, 0, -1, False
    session_start, train_time, window_start = time.time(), 0.0, time.perf_counter()
    checkpoint = lambda m, step: offline_data.save_checkpoint(  # noqa: E731
        run_dirs[m], members.member(m), step, evals[m], elapsed + time.time() - session_start, configs[m]
    )
    progress = dict(initial=start_step - 1, total=args.total_steps, desc=f"{args.env_id} x{n}", unit="step")
    # SIGINT, SIGTERM: every member's step saved (with --save-model), then one line with the command that continues
    stop_line = lambda step=None: how_to_continue(step, run_dirs, checkpoint if args.save_model else None)  # noqa: E731
    with offline_data.stop_signals(stop_line) as stop_signal:
        for step in tqdm(range(start_step, args.total_steps + 1), mininterval=2, **progress):
            metrics = iteration()
            values = torch.stack(list(metrics.values()), dim=1)  # (members, metrics)
            metric_sum, window_steps, stopping = metric_sum + values, window_steps + 1, bool(stop_signal)
            first_bad = torch.where(~torch.isfinite(values) & (first_bad < 0), step, first_bad)
            eval_step = step % args.eval_every == 0 or step == args.total_steps
            if step % args.log_every != 0 and not eval_step and not stopping:
                continue

            means = (metric_sum / window_steps).tolist()
            window_time = time.perf_counter() - window_start
            train_time += window_time
            for m, bad in enumerate(first_bad.tolist()):
                if m not in failed and any(s >= 0 for s in bad):
                    bad_step, index = min((s, i) for i, s in enumerate(bad) if s >= 0)
                    failed[m] = f"non-finite {list(metrics)[index]} at step {bad_step}"
                    tqdm.write(f"{run_dirs[m]}: {failed[m]}; this member stops, the others go on", file=sys.stderr)
            results = evaluate(script, policies, envs, source, member_args, device) if envs and eval_step else None
            for m in sorted(set(range(n)) - set(failed)):
                record = {"step": step, **dict(zip(metrics, means[m])), "steps_per_sec": window_steps / window_time}
                if results is not None:
                    evals[m].append({"step": step, **results[m]})
                    record.update({f"eval/{k}": v for k, v in results[m].items() if v is not None})
                metrics_files[m].write(json.dumps(record) + "\n")
                if wandb_runs:
                    wandb_runs[m].log(record, step=step)
                if args.save_model and (eval_step or stopping):
                    checkpoint(m, step)
            if results is not None:
                scores = " ".join(f"{r['score']:.1f}" for r in results if r["score"] is not None)
                tqdm.write(f"step {step}: members' eval/score {scores}")
            metric_sum, window_steps, window_start = 0.0, 0, time.perf_counter()
            if stopping:
                break
    for f in metrics_files:
        f.close()
    if stopping:
        raise offline_data.Interrupted(stop_line(step), stop_signal[0])

    summaries, wall_clock = [], elapsed + time.time() - session_start  # the members trained together: one clock
    steps_per_sec = (args.total_steps - start_step + 1) / train_time if train_time else None
    for m, (a, run_dir) in enumerate(zip(member_args, run_dirs)):
        summary = offline_data.summarize(script.__file__, a, source, evals[m], wall_clock, steps_per_sec)
        summary.update(sweep=sweep_name, sweep_members=n, error=failed.get(m))
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if wandb_runs:
            wandb_runs[m].summary.update({k: v for k, v in summary.items() if k != "evaluations"})
            wandb_runs[m].finish()
        summaries.append(os.path.join(run_dir, "summary.json"))
    if envs is not None:
        envs.close()
    if failed:
        raise UserError(
            f"{len(failed)} of {n} members failed: " + "; ".join(f"{run_dirs[m]}: {e}" for m, e in failed.items())
        )
    return summaries


def how_to_continue(step: int | None, run_dirs: list[str], checkpoint) -> str:
    """The line after a stop at `step` (None: a second signal, mid-step): with --save-model (checkpoint) and a step,
    the command that continues the sweep from the members' checkpoints of that step; else why there are none."""
    if checkpoint is None:
        return "nothing was saved (--save-model is off: add it to keep every member's checkpoint next time)"
    paths = [os.path.join(d, "checkpoint.pt") for d in run_dirs]
    if step is None or not all(os.path.isfile(p) for p in paths):
        return "stopped in the middle of a step: the members' last checkpoints are those of their last evaluation"
    argv = sys.argv[:]
    if "--resume" in argv:  # the previous --resume's paths, up to the next flag, are replaced
        i = argv.index("--resume")
        j = next((k for k in range(i + 1, len(argv)) if argv[k].startswith("-")), len(argv))
        argv = argv[:i] + argv[j:]
    command = shlex.join(["python", *argv, "--resume", *paths])
    return f"stopped at step {step}; every member's checkpoint of that step written; continue with: {command}"


if __name__ == "__main__":
    offline_data.stop_on_sigterm()  # outside training steps too: one line, not a silent end
    try:
        script, sweep, member_args = parse_args(sys.argv[1:])
        name = f"{member_args[0].env_id.replace('/', '-')}__{script.__name__}_sweep__{int(time.time())}"
        name += f"__shard{sweep.shard.replace('/', 'of')}" if sweep.shard != "0/1" else ""
        for path in train(script, member_args, name, sweep.resume):
            print(f"summary: {path}")
    except (UserError, OSError, KeyboardInterrupt) as e:  # bad input, a refused write, SIGINT/SIGTERM
        stop = "interrupted" if isinstance(e, KeyboardInterrupt) else "error"
        print(f"sweep.py: {stop}: {str(e) or 'stopped'}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 130) if stop == "interrupted" else 2)
