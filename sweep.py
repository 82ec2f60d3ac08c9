"""Many runs of one script in one process: a dataset's grid of seeds x eta (alpha for fql.py), trained together.

    python sweep.py ofql.py --env-id hopper-medium-v2 --seeds 0 1 2 --eta 0.001 0.01 0.1 0.3 0.5
    python sweep.py fql.py --env-id hopper-medium-v2 --seeds 0 1 2 --alpha 3 10 30 --save-model
    python sweep.py ofql.py --env-id hopper-medium-v2 --seeds 0 1 2 --eta 0.01 0.1 --shard 1/4   # members 1, 5, ...

The grid: --seeds, and the values of the script's SWEEP_WEIGHT flag (--eta for ofql.py and dql.py, --alpha for
fql.py; default: the preset's value). Every other flag is the script's (`python ofql.py --help`) and applies to every
member. Each member writes the run folder the script would write (runs/<run_name>/: config.json with its own seed and
weight, metrics.jsonl, summary.json, checkpoint.pt with --save-model), and its checkpoint resumes with the script.

How: the script's own train() runs, its loop unchanged, with the names its SWEEP_TRAIN_REPLACES lists rebound to the
Members' versions here (the run folders are bookkeeping.Runs', for N members as for one). The members' networks are
stacked (one tensor per parameter, members on the first dimension); the script's own losses run for all members at
once through torch.func.vmap over torch.func.functional_call (randomness="different": each member draws its own noise,
the slice of one draw at its place in the grid); the script's own update() runs on the stacked networks, its code
unchanged, with the names its SWEEP_REPLACES lists rebound: the losses to their vmapped versions, and optimizer_step to
one that back-propagates the members' summed losses (member i's parameters get the gradient of its own loss alone)
and clips each member's gradient by its own norm. Adam and the target networks' lerps are elementwise, so one
optimizer over the stacked parameters is N independent ones. On CUDA the whole iteration is one replay of the
script's cuda_graph. The script's evaluation steps all members' episodes together, one batched policy call per step.
Members are independent: no number of one depends on another's hyper-parameters (tests/test_sweep.py). A member's
noise is not that of a lone run with its seed (one generator serves the sweep, in the state a lone run of the first
member has after making its networks), but a one-member sweep is that lone run, up to float rounding.
"""

import copy
import dataclasses
import importlib.util
import itertools
import os
import random
import sys
import time
import types
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.func import functional_call, vmap

import bookkeeping
from offline_data import UserError


@dataclass
class Args:
    """sweep.py SCRIPT [flags]: besides these, --<the script's SWEEP_WEIGHT> (--eta for ofql.py and dql.py, --alpha
    for fql.py) takes the grid's values (default: the preset's), and every other flag is the script's."""

    seeds: list[int] = field(default_factory=lambda: [0])
    """the seeds of the grid"""
    resume: list[str] | None = None
    """the members' checkpoint.pt files, in the grid's order (the command a stopped sweep prints): continue them"""
    shard: str = "0/1"
    """I/K: train only members I, I + K, I + 2K, ... of the grid (seeds outer, weights inner), e.g. the array index of
    a SLURM job array of K jobs, or one of K GPUs"""


def load_script(path: str) -> types.ModuleType:
    """Import a training script (a path, or the name of one beside this file: ofql.py, ...) as the module it is."""
    name = os.path.basename(path).removesuffix(".py")
    if name in sys.modules and hasattr(sys.modules[name], "SWEEP_WEIGHT"):
        return sys.modules[name]
    file = path if os.path.isfile(path) else os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    if not os.path.isfile(file):
        raise UserError(f"no script {path!r} (sweep.py trains ofql.py, dql.py, fql.py or a script of the same form)")
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "SWEEP_WEIGHT"):
        raise UserError(f"{path} declares no SWEEP_WEIGHT: sweep.py trains ofql.py, dql.py, fql.py or their like")
    sys.modules[name] = module
    return module


def grid_values(argv: list[str], flag: str) -> tuple[list[str] | None, list[str]]:
    """The values after `flag` in argv (up to the next flag; None if absent), and argv without them."""
    if flag not in argv:
        return None, argv
    i = argv.index(flag)
    j = next((k for k in range(i + 1, len(argv)) if argv[k].startswith("-") and not argv[k][1:2].isdigit()), len(argv))
    return argv[i + 1 : j], argv[:i] + argv[j:]


def parse_args(argv: list[str]) -> tuple[types.ModuleType, Args, list]:
    """-> (script, sweep flags, one script Args per member of this shard)."""
    if not argv or argv[0] in ("-h", "--help"):
        tyro.cli(Args, args=["--help"], description=__doc__)
    if argv[0].startswith("-"):
        raise UserError(f"the first argument is the script (sweep.py ofql.py --seeds ...), not {argv[0]!r}")
    script = load_script(argv[0])
    weight = script.SWEEP_WEIGHT
    values, rest = grid_values(argv[1:], f"--{weight.replace('_', '-')}")
    sweep, rest = tyro.cli(Args, args=rest, return_unknown_args=True, description=__doc__)
    fields = {f.name for f in dataclasses.fields(script.Args)}
    for flag in (a.split("=")[0] for a in rest if a.startswith("--")):
        if flag == "--seed":
            raise UserError(f"the grid's flags are --seeds and --{weight} (lists)")
        if flag[2:].replace("-", "_").removeprefix("no_") not in fields:
            raise UserError(f"{argv[0]} has no flag {flag} (its grid is over --{weight})")
    try:
        index, count = (int(x) for x in sweep.shard.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise UserError(f"--shard must be I/K with 0 <= I < K, not {sweep.shard!r}") from None
    base = script.parse_args(rest)
    if base.capture_video:
        raise UserError("--capture-video records a lone run's policy; run the script with it (a sweep records none)")
    try:
        weights = [float(v) for v in values] if values else [getattr(base, weight)]
    except ValueError:
        raise UserError(f"--{weight} takes numbers, not {' '.join(values)}") from None
    if len(set(sweep.seeds)) < len(sweep.seeds) or len(set(weights)) < len(weights):
        raise UserError(f"--seeds and --{weight} must not repeat a value")
    grid = list(itertools.product(sweep.seeds, weights))[index::count]
    if not grid:
        raise UserError(f"shard {sweep.shard} of a grid of {len(sweep.seeds) * len(weights)} members is empty")
    name = lambda w: base.exp_name if len(weights) == 1 else f"{base.exp_name}_{weight}{w:g}"
    members = [dataclasses.replace(base, seed=s, exp_name=name(w), **{weight: w}) for s, w in grid]
    if sweep.resume is not None:
        if len(sweep.resume) != len(members):
            raise UserError(f"--resume needs one checkpoint per member: {len(members)}, not {len(sweep.resume)}")
        members = [dataclasses.replace(m, resume=path) for m, path in zip(members, sweep.resume)]
    for member in members:
        bookkeeping.check_flags(vars(member))
    return script, sweep, members


# ---------------------------------------------------------------------------------------------------------------
# The members' networks stacked, and the script's functions for all members at once
# ---------------------------------------------------------------------------------------------------------------
def stack_agents(agents: list):
    """One Agent of the script whose networks (its nn.Module fields) hold every member's parameters stacked on a first
    dimension, and whose optimizers (its Optimizer fields) are the script's (same class and options) over the stacked
    parameters of the network each was made for."""
    first, stacked = agents[0], {}
    names = [f.name for f in dataclasses.fields(first)]
    for name in (n for n in names if isinstance(getattr(first, n), nn.Module)):
        module = copy.deepcopy(getattr(first, name))
        for key, p in list(module.named_parameters()):
            owner, leaf = module.get_submodule(key.rpartition(".")[0]), key.rpartition(".")[2]
            values = torch.stack([getattr(agent, name).get_parameter(key).detach() for agent in agents])
            setattr(owner, leaf, nn.Parameter(values, requires_grad=p.requires_grad))
        stacked[name] = module
    for name in (n for n in names if isinstance(getattr(first, n), torch.optim.Optimizer)):
        optimizer = getattr(first, name)
        params = [id(p) for group in optimizer.param_groups for p in group["params"]]
        network = next(n for n in stacked if [id(p) for p in getattr(first, n).parameters()] == params)
        stacked[name] = type(optimizer)(stacked[network].parameters(), **optimizer.defaults)
    return type(first)(**stacked)


class Networks(nn.Module):
    """The networks of an Agent as one module, so that one functional_call swaps all their parameters: called as
    Networks(fn, *inputs), it is fn(agent, *inputs) with the networks' current parameters."""

    def __init__(self, agent):
        super().__init__()
        fields = [f.name for f in dataclasses.fields(agent)]
        self.nets = nn.ModuleDict({n: getattr(agent, n) for n in fields if isinstance(getattr(agent, n), nn.Module)})

    def forward(self, fn, *inputs):
        return fn(types.SimpleNamespace(**self.nets), *inputs)


class Members:
    """N members of one script trained together: the stacked Agent, and the script's functions for all of them. Its
    make_agent, OfflineBuffer, update and make_policy replace the script's in its train() (SWEEP_TRAIN_REPLACES)."""

    def __init__(self, script, member_args: list):
        self.script, self.member_args, self.size = script, member_args, len(member_args)
        replaced = {name: self.vectorized(getattr(script, name)) for name in script.SWEEP_REPLACES}
        self.update_all = rebind(script.update, **{**replaced, "optimizer_step": optimizer_step})
        self.make_policy = rebind(script.make_policy, select_action=self.select_action)

    def make_agent(self, obs_dim: int, act_dim: int, args, device: torch.device):
        """The stacked Agent of the members: each one's networks those of a lone run with its seed; the generators
        left as the first member's run leaves them."""
        agents, state = [], None
        for a in self.member_args:
            random.seed(a.seed), np.random.seed(a.seed), torch.manual_seed(a.seed)
            agents.append(self.script.make_agent(obs_dim, act_dim, a, device))
            state = state or (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.setstate(state[0]), np.random.set_state(state[1]), torch.set_rng_state(state[2])
        return self.stack(agents)

    def stack(self, agents: list):
        """Stack `agents` (one per member) into self.stacked, whose parameters the vmapped functions use."""
        self.stacked = stack_agents(agents)
        self.networks = Networks(self.stacked)
        self.params = dict(self.networks.named_parameters())  # the stacked tensors, updated in place
        device = next(iter(self.params.values())).device
        weight = self.script.SWEEP_WEIGHT
        self.hyper = {weight: torch.tensor([getattr(a, weight) for a in self.member_args], device=device)}
        return self.stacked

    def OfflineBuffer(self, data: dict, device: torch.device, *online):
        """The script's buffer (`online`: its online phase's arguments: an env per member), whose sample() draws a
        batch per member in one call."""
        return self.batched(self.script.OfflineBuffer(data, device, *online))

    def batched(self, buffer):
        """A copy of the script's `buffer` (the same tensors) whose sample() draws a batch per member in one call:
        member m's from the data and, online, from its own env's transitions (env m's rows)."""
        batched, sample_one, members = copy.copy(buffer), buffer.sample, torch.arange(self.size, device=buffer.device)
        batched.sample = lambda size, **kw: vmap(lambda m: sample_one(size, m, **kw), randomness="different")(members)
        return batched

    def update(self, agent, batch, args, step: torch.Tensor) -> dict[str, torch.Tensor]:
        """The script's update() for every member: metrics of shape (members,)."""
        return self.update_all(agent, batch, args, step)

    def vectorized(self, loss_fn):
        """loss_fn(agent, batch, args) for every member: a batch per member, each with its own weight in args."""

        def one(params, hyper, batch, args):
            return functional_call(self.networks, params, (loss_fn, batch, dataclasses.replace(args, **hyper)))

        members = vmap(one, in_dims=(0, 0, 0, None), randomness="different")
        return lambda agent, batch, args: members(self.params, self.hyper, batch, args)

    @torch.no_grad()
    def select_action(self, agent, obs: torch.Tensor, num_candidates: int) -> torch.Tensor:
        """The script's select_action on (members x envs, obs_dim) states, member-major: each member's rows its own."""

        def one(params, obs):
            return functional_call(self.networks, params, (self.script.select_action, obs, num_candidates))

        per_member = obs.view(self.size, -1, obs.shape[-1])
        return vmap(one, randomness="different")(self.params, per_member).flatten(0, 1)


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
# Training: the script's own train(), for all members
# ---------------------------------------------------------------------------------------------------------------
def train(script, member_args: list, sweep_name: str, resume: list[str] | None = None) -> list[str]:
    """Train the members together (with `resume`, from their checkpoints) in the script's train(); returns their
    summary.json paths."""
    if resume:
        member_args = [dataclasses.replace(a, resume=path) for a, path in zip(member_args, resume)]
    runs = bookkeeping.Runs(script.__file__, member_args, sweep=sweep_name)  # the members' folders, before the data
    members = Members(script, member_args)
    rebind(script.train, **{name: getattr(members, name) for name in script.SWEEP_TRAIN_REPLACES})(member_args[0], runs)
    return runs.summaries


if __name__ == "__main__":
    bookkeeping.stop_on_sigterm()  # outside training steps too: one line, not a silent end
    try:
        script, sweep, member_args = parse_args(sys.argv[1:])
        name = f"{member_args[0].env_id.replace('/', '-')}__{script.__name__}_sweep__{int(time.time())}"
        name += f"__shard{sweep.shard.replace('/', 'of')}" if sweep.shard != "0/1" else ""
        for path in train(script, member_args, name):
            print(f"summary: {path}")
    except (UserError, OSError, KeyboardInterrupt) as e:  # bad input, a refused write, SIGINT/SIGTERM
        stop = "interrupted" if isinstance(e, KeyboardInterrupt) else "error"
        print(f"sweep.py: {stop}: {str(e) or 'stopped'}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 130) if stop == "interrupted" else 2)
