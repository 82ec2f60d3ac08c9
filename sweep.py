"""Many runs of one script in one process: a grid of seeds x eta (alpha for fql.py), over one dataset or a domain's
datasets (--env-ids), trained together.

    python sweep.py ofql.py --env-id hopper-medium-v2 --seeds 0 1 2 --eta 0.001 0.01 0.1 0.3 0.5
    python sweep.py fql.py --env-id hopper-medium-v2 --seeds 0 1 2 --alpha 3 10 30 --save-model
    python sweep.py ofql.py --env-id hopper-medium-v2 --seeds 0 1 2 --eta 0.01 0.1 --shard 1/4   # members 1 and 5 of 6
    python sweep.py ofql.py --env-ids hopper-medium-v2 hopper-medium-replay-v2 hopper-medium-expert-v2 --seeds 0 1 2

The grid: --seeds, and the values of the script's SWEEP_WEIGHT flag (--eta for ofql.py and dql.py, --alpha for
fql.py; default: the preset's value). Every other flag is the script's (`python ofql.py --help`) and applies to every
member; with --env-ids, each member has its own dataset's presets (a flag whose presets differ where the members of one
process cannot is refused), samples its own dataset and evaluates in its env. Each member writes the run folder the
script would write (runs/<run_name>/: config.json with its own seed and weight, metrics.jsonl, summary.json,
checkpoint.pt with --save-model), and its checkpoint resumes with the script.

How: the script's own train() runs, its loop unchanged, with the names its SWEEP_TRAIN_REPLACES lists rebound to the
Members' versions here (the run folders are bookkeeping.Runs', for N members as for one). The members' networks are
stacked (one tensor per parameter, members on the first dimension); the script's own losses run for all members at once
through torch.func.vmap over torch.func.functional_call (randomness="different": each member draws its own noise, the
slice of one draw at its place among the process's members); the script's own update() runs on the stacked networks, its
code unchanged, with the names its SWEEP_REPLACES lists rebound: the losses to their vmapped versions, and
optimizer_step to one that back-propagates the members' summed losses (member i's parameters get the gradient of its own
loss alone) and clips each member's gradient by its own norm. Adam and the target networks' lerps are elementwise, so
one optimizer over the stacked parameters is N independent ones. On CUDA the whole iteration is one replay of the
script's cuda_graph. The script's evaluation steps all members' episodes together, one batched policy call per step.
Members are independent: no number of one depends on another's weight or dataset (tests/test_sweep.py). A member's noise
is not that of a lone run with its seed (one generator serves the sweep, seeded from all members' seeds), but a
one-member sweep is that lone run, up to float rounding.
"""

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import json
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
import offline_data
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
    """I/K: train members I, I + K, ... of the grid (datasets, then seeds, then weights), e.g. a SLURM array index"""
    env_ids: list[str] | None = None
    """instead of --env-id: datasets of one domain (same observation and action sizes), each with its presets"""
    dataset_paths: list[str] | None = None
    """with --env-ids, instead of --dataset-path: a local file (or OGBench folder) per dataset, in their order"""


# What may differ between the members of one process, besides the grid (--seeds, the weight) and the run's name: the
# dataset (each member samples its own, evaluates in its own env, transforms rewards by its own rule), numbers that
# enter only the losses (LOSS_NUMBERS: each member's tensor, as the weight) and each member's gradient clipping
LOSS_NUMBERS = ("gamma",)
PER_MEMBER = ("env_id", "dataset_path", "reward_mode", "grad_norm", *LOSS_NUMBERS)


def load_script(path: str) -> types.ModuleType:
    """Import a training script (a path, or the bare name of one beside this file: ofql.py, ...) as the module it is."""
    name = os.path.basename(path).removesuffix(".py")
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    file = path if os.path.isfile(path) else beside if not os.path.dirname(path) else None  # no directory: beside
    if file is None or not os.path.isfile(file):
        raise UserError(f"no script {path!r} (sweep.py trains ofql.py, dql.py, fql.py or a script of the same form)")
    loaded = sys.modules.get(name)
    if hasattr(loaded, "SWEEP_WEIGHT") and os.path.realpath(loaded.__file__) == os.path.realpath(file):
        return loaded
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "SWEEP_WEIGHT"):
        raise UserError(f"{path} declares no SWEEP_WEIGHT: sweep.py trains ofql.py, dql.py, fql.py or their like")
    sys.modules[name] = module
    return module


def flag_index(argv: list[str], name: str) -> int | None:
    """Where the flag of `name` is in argv (tyro's spellings: --grad-norm, --grad_norm; --grad-norm=2), None if absent;
    given twice (tyro would keep the last): one UserError line."""
    flag = f"--{name.replace('_', '-')}"
    found = [i for i, a in enumerate(argv) if a.split("=")[0] in (flag, f"--{name}")]
    if len(found) > 1:
        raise UserError(f"{flag} is given {len(found)} times: give all its values after one {flag}")
    return found[0] if found else None


def grid_values(argv: list[str], weight: str) -> tuple[list[str] | None, list[str]]:
    """The values of the flag of `weight` in argv (--eta 0.1 0.3 or --eta=0.1 0.3, up to the next flag; both of tyro's
    spellings, --flow-ratio and --flow_ratio; None if absent), and argv without them. Given twice or without a value:
    one UserError line."""
    flag, i = f"--{weight.replace('_', '-')}", flag_index(argv, weight)
    if i is None:
        return None, argv
    is_flag = lambda a: a.startswith("-") and not a[1:2].isdigit() and a[1:2] != "."  # -0.1, -.1: values
    j = next((k for k in range(i + 1, len(argv)) if is_flag(argv[k])), len(argv))
    values = [v for v in argv[i].split("=", 1)[1:] if v] + argv[i + 1 : j]
    if not values:
        raise UserError(f"{flag} needs at least one value (without it: the preset's)")
    return values, argv[:i] + argv[j:]


def parse_args(argv: list[str]) -> tuple[types.ModuleType, Args, list]:
    """-> (script, sweep flags, one script Args per member of this shard)."""
    if not argv or argv[0] in ("-h", "--help"):
        tyro.cli(Args, args=["--help"], description=__doc__)
    if argv[0].startswith("-"):
        raise UserError(f"the first argument is the script (sweep.py ofql.py --seeds ...), not {argv[0]!r}")
    script = load_script(argv[0])
    weight = script.SWEEP_WEIGHT
    values, rest = grid_values(argv[1:], weight)
    for name in ("seeds", "env_ids", "dataset_paths", "resume", "shard"):  # the sweep's own flags, given once
        flag_index(rest, name)
    sweep, rest = tyro.cli(Args, args=rest, return_unknown_args=True, description=__doc__)
    if not sweep.seeds:
        raise UserError("--seeds needs at least one seed")
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
    sweep = dataclasses.replace(sweep, shard=f"{index}/{count}")  # as named in the sweep's name: 01/02 is 1/2
    bases = datasets_args(script, sweep, rest)  # one per dataset, with its presets
    if bases[0].capture_video:
        raise UserError("--capture-video records a lone run's policy; run the script with it (a sweep records none)")
    try:
        weights = [float(v) for v in values] if values else None  # None: each dataset's preset
    except ValueError:
        raise UserError(f"--{weight} takes numbers, not {' '.join(values)}") from None
    if len(set(sweep.seeds)) < len(sweep.seeds) or len(set(weights or [])) < len(weights or []):
        raise UserError(f"--seeds and --{weight} must not repeat a value")
    if not all(0 <= s <= 4294967295 for s in sweep.seeds):  # numpy's seeds
        raise UserError(f"--seeds must be numbers in [0, 4294967295], not {' '.join(map(str, sweep.seeds))}")
    short = lambda w: repr(w).removesuffix(".0")  # round-trips: 0.1, 3, 1e-05, 0.1000001
    named = lambda b, w: b.exp_name if not weights or len(weights) == 1 else f"{b.exp_name}_{weight}{short(w)}"
    grid = [(b, s, w) for b in bases for s in sweep.seeds for w in weights or [getattr(b, weight)]]
    if not grid[index::count]:
        raise UserError(f"shard {sweep.shard} of a grid of {len(grid)} members is empty")
    members = [dataclasses.replace(b, seed=s, exp_name=named(b, w), **{weight: w}) for b, s, w in grid[index::count]]
    if sweep.resume is not None:
        if len(sweep.resume) != len(members):
            raise UserError(
                f"--resume needs one checkpoint per member: {len(members)}, not {len(sweep.resume)} (the members are"
                " the grid of the sweep's flags: give its command again, as the line of its stop prints it)"
            )
        # as a lone run's resume: a flag the command leaves out is the member's run's (its name too, which holds its
        # weight), but the grid's and the data's
        given = {a.split("=")[0][2:].replace("-", "_").removeprefix("no_") for a in rest if a.startswith("--")}
        own = given | {"seed", weight, "env_id", "dataset_path"}
        flags_of = lambda path: bookkeeping.peek(["--resume", path], script.Args)[1]  # the run's at its checkpoint
        ran = lambda path: {k: v for k, v in flags_of(path).items() if k not in own}
        members = [dataclasses.replace(m, resume=path, **ran(path)) for m, path in zip(members, sweep.resume)]
        dirs = [bookkeeping.run_folder(path) for path in sweep.resume]
        refuse_differing(script, members, [os.path.basename(d) for d in dirs], "the members' runs", "resume them apart")
        note_if_not_one_sweep(dirs)
    return script, sweep, members  # their flags are checked by bookkeeping.Runs, before anything is written


def refuse_differing(script, members: list, labels: list, where: str, fix: str) -> None:
    """One UserError line for a flag whose values differ among `members` where the members of one process cannot
    (every flag but PER_MEMBER's, the grid's, the name and the checkpoint): the loop reads it from the first."""
    for f in dataclasses.fields(members[0]):
        values = {label: getattr(m, f.name) for label, m in zip(labels, members)}
        if f.name not in (*PER_MEMBER, script.SWEEP_WEIGHT, "seed", "exp_name", "resume"):
            if len(set(map(repr, values.values()))) > 1:
                flag = f"--{f.name.replace('_', '-')}"
                raise UserError(
                    f"{flag} differs between {where} ({values}) and cannot within one process: give {flag} for all, "
                    f"or {fix}"
                )


def note_if_not_one_sweep(dirs: list[str]) -> None:
    """The runs (their folders) of one stopped sweep, all of them in its order, continue bit for bit as it would have
    (one noise stream serves its members); other runs train together as well, and are told that their noise is new."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(os.path.join(dirs[0], "sweep.json")) as f:
            if [os.path.basename(d) for d in json.load(f)["members"]] == [os.path.basename(d) for d in dirs]:
                return
    print("NOTE: these runs are not one sweep's members in its order: each continues its training, with new noise")


def datasets_args(script, sweep: Args, rest: list[str]) -> list:
    """The script's Args for each dataset of the sweep (--env-ids; else the one of --env-id), with its presets; one
    UserError line for a flag whose presets differ where the members of one process cannot differ."""
    if sweep.env_ids is None:
        if sweep.dataset_paths is not None:
            raise UserError("--dataset-paths goes with --env-ids (one dataset: --dataset-path)")
        return [script.parse_args(rest)]
    if any(a.split("=")[0] in ("--env-id", "--env_id", "--dataset-path", "--dataset_path") for a in rest):
        raise UserError("--env-ids and --dataset-paths replace --env-id and --dataset-path")
    ids, paths = sweep.env_ids, sweep.dataset_paths
    if not ids:
        raise UserError("--env-ids needs at least one id")
    if len(set(ids)) < len(ids):
        raise UserError(f"--env-ids must not repeat an id: {' '.join(sorted({e for e in ids if ids.count(e) > 1}))}")
    if paths is not None and len(paths) != len(ids):
        raise UserError(f"--dataset-paths needs one file per id of --env-ids: {len(paths)} for {len(ids)}")
    paths = paths or [None] * len(ids)
    bases = [
        script.parse_args([*rest, "--env-id", e, *(["--dataset-path", p] if p else [])])
        for e, p in zip(sweep.env_ids, paths)
    ]
    refuse_differing(script, bases, ids, "the datasets' presets", "sweep the datasets apart")
    return bases


# ---------------------------------------------------------------------------------------------------------------
# The members' networks stacked, and the script's functions for all members at once
# ---------------------------------------------------------------------------------------------------------------
def stack_agents(agents: list):
    """One Agent of the script whose networks (its nn.Module fields) hold every member's parameters stacked on a first
    dimension, and whose optimizers (its Optimizer fields) are the script's (same class and options) over the stacked
    parameters of the networks it was made for, group by group with each group's options."""
    first, stacked = agents[0], {}
    bookkeeping.check_agent(first)
    names = [f.name for f in dataclasses.fields(first)]
    for name in (n for n in names if isinstance(getattr(first, n), nn.Module)):
        module = copy.deepcopy(getattr(first, name))
        for key, p in list(module.named_parameters()):
            owner, leaf = module.get_submodule(key.rpartition(".")[0]), key.rpartition(".")[2]
            values = torch.stack([getattr(agent, name).get_parameter(key).detach() for agent in agents])
            setattr(owner, leaf, nn.Parameter(values, requires_grad=p.requires_grad))
        stacked[name] = module
    stacked_of = {  # the first member's parameters' stacked counterparts
        id(p): s for n, net in stacked.items() for p, s in zip(getattr(first, n).parameters(), net.parameters())
    }
    for name in (n for n in names if isinstance(getattr(first, n), torch.optim.Optimizer)):
        optimizer = getattr(first, name)
        groups = [{**g, "params": [stacked_of.get(id(p)) for p in g["params"]]} for g in optimizer.param_groups]
        if any(p is None for g in groups for p in g["params"]):
            raise UserError(f"the Agent's {name} steps a parameter of none of its networks: sweep.py cannot stack it")
        stacked[name] = type(optimizer)(groups, **optimizer.defaults)
    return type(first)(**stacked)


class Networks(nn.Module):
    """The networks of an Agent as one module, so that one functional_call swaps all their parameters: called as
    Networks(fn, *inputs), it is fn(agent, *inputs) with the networks' current parameters, `agent` the ModuleDict of
    the networks (agent.actor, ...: what the losses read; one that torch.compile traces, unlike a SimpleNamespace)."""

    def __init__(self, agent):
        super().__init__()
        fields = [f.name for f in dataclasses.fields(agent)]
        self.nets = nn.ModuleDict({n: getattr(agent, n) for n in fields if isinstance(getattr(agent, n), nn.Module)})

    def forward(self, fn, *inputs):
        return fn(self.nets, *inputs)


def seed_generators(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)  # torch's: CUDA's too


class Members:
    """N members of one script trained together: the stacked Agent, and the script's functions for all of them. Its
    make_agent, OfflineBuffer, update and make_policy replace the script's in its train() (SWEEP_TRAIN_REPLACES)."""

    def __init__(self, script, member_args: list):
        self.script, self.member_args, self.size = script, member_args, len(member_args)
        replaced = {name: self.vectorized(getattr(script, name)) for name in script.SWEEP_REPLACES}
        self.update = rebind(script.update, **{**replaced, "optimizer_step": self.optimizer_step})  # for all members
        self.make_policy = rebind(script.make_policy, select_action=self.select_action)

    def make_agent(self, obs_dim: int, act_dim: int, args, device: torch.device):
        """The stacked Agent of the members: each one's networks those of a lone run with its seed. The generators,
        which serve all members, left as the first member's run leaves them where it is the only one, else seeded
        from every member's seed: a grid whose later seeds differ draws other training noise at every place."""
        agents = []
        for a in self.member_args:
            seed_generators(a.seed)
            agents.append(self.script.make_agent(obs_dim, act_dim, a, device))
        if self.size > 1:
            seed_generators(int(np.random.SeedSequence([a.seed for a in self.member_args]).generate_state(1)[0]))
        return self.stack(agents)

    def stack(self, agents: list):
        """Stack `agents` (one per member) into one Agent, whose parameters the vmapped functions use; the numbers
        that differ between members (the weight; in a domain, the loss's and the clipping's) as tensors. -> it"""
        stacked = stack_agents(agents)
        self.networks = Networks(stacked)
        self.params = dict(self.networks.named_parameters())  # the stacked tensors, updated in place
        device = next(iter(self.params.values())).device
        per_member = lambda name: torch.tensor([getattr(a, name) for a in self.member_args], device=device)
        differ = [n for n in LOSS_NUMBERS if len({getattr(a, n, None) for a in self.member_args}) > 1]  # a domain's
        self.hyper = {n: per_member(n) for n in (self.script.SWEEP_WEIGHT, *differ)}
        norms = [getattr(a, "grad_norm", 0.0) or float("inf") for a in self.member_args]  # 0: no clipping
        self.max_norms = torch.tensor(norms, device=device) if len(set(norms)) > 1 else None  # a domain's
        return stacked

    def OfflineBuffer(self, data: dict | list, device: torch.device, *online):
        """The script's buffer (`online`: its online phase's arguments: an env per member), whose sample() draws a
        batch per member in one call; for a domain (data: one dataset per member) a DomainBuffer."""
        if isinstance(data, list):
            return DomainBuffer(self.script, data, device)
        return self.batched(self.script.OfflineBuffer(data, device, *online))

    def batched(self, buffer):
        """A copy of the script's `buffer` (the same tensors) whose sample() draws a batch per member in one call:
        member m's from the data and, online, from its own env's transitions (env m's rows)."""
        batched, sample_one, members = copy.copy(buffer), buffer.sample, torch.arange(self.size, device=buffer.device)
        batched.sample = lambda size, **kw: vmap(lambda m: sample_one(size, m, **kw), randomness="different")(members)
        return batched

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

    def optimizer_step(self, optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, max_norm: float):
        """The script's optimizer_step for the stacked members: one backward pass of the summed losses (each member's
        parameters receive its own loss's gradient), each member's gradient clipped by its own norm to its own
        --grad-norm (the script passes args.grad_norm, the first member's), then the step. Returns the members'
        gradient norms (before clipping), as clip_grad_norm_ does for one."""
        if self.max_norms is not None and max_norm != self.member_args[0].grad_norm:  # an edited copy's other limit
            raise UserError(f"sweep.py clips each member to its own --grad-norm; optimizer_step was given {max_norm}")
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None] or [loss.new_zeros(len(loss))]  # none: 0
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1) for g in grads]).norm(dim=0)
        limit = (max_norm or None) if self.max_norms is None else self.max_norms  # None: no clipping
        if limit is not None:
            scale = (limit / (norms + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s rule, per member
            torch._foreach_mul_(grads, [scale.view(-1, *[1] * (g.dim() - 1)) for g in grads])
        optimizer.step()
        return norms


class DomainBuffer:
    """The datasets of a domain sweep's members on the device, one after another (each once, however many members
    share it), and a batch per member from its own dataset in one call, by the script buffer's rule: one draw r for
    all members, member m's rows r % (its dataset's size); the draw of a one-dataset sweep of as many members, so a
    member's batches do not depend on the other members' datasets."""

    def __init__(self, script, member_data: list[dict], device: torch.device):
        datasets = list({id(d): d for d in member_data}.values())
        buffers = [script.OfflineBuffer(d, device) for d in datasets]
        starts = dict(zip(map(id, datasets), np.cumsum([0] + [b.size for b in buffers]).tolist()))
        sizes = dict(zip(map(id, datasets), [b.size for b in buffers]))
        self.Batch, self.device = script.Batch, device
        for name in script.Batch._fields:
            setattr(self, name, torch.cat([getattr(b, name)[: b.size] for b in buffers]))
        self.member_sizes = [sizes[id(d)] for d in member_data]  # each member's config.json "transitions"
        self.starts = torch.tensor([starts[id(d)] for d in member_data], device=device).unsqueeze(1)
        self.sizes = torch.tensor(self.member_sizes, device=device).unsqueeze(1)

    def sample(self, batch_size: int, online: bool = False) -> tuple:
        r = torch.randint(1 << 62, (len(self.member_sizes), batch_size), device=self.device)
        idx = self.starts + r % self.sizes
        return self.Batch(*(getattr(self, name)[idx] for name in self.Batch._fields))


def global_names(code: types.CodeType) -> set[str]:
    """The global names a function's code reads, those of the functions it defines included."""
    return set(code.co_names).union(*(global_names(c) for c in code.co_consts if isinstance(c, types.CodeType)))


def rebind(fn, **names):
    """The script's function fn, its code unchanged, with some of the names it calls bound to other functions (here:
    their all-members versions). The script's module itself is left as it is. fn (or a function it defines) must
    call each of them by name: one called through a helper of the script would run unbatched."""
    if missing := [name for name in names if name not in global_names(fn.__code__)]:
        raise UserError(
            f"sweep.py runs {', '.join(missing)} for all members by rebinding the name where the script's "
            f"{fn.__name__}() calls it, and {fn.__name__}() does not call it itself (docs/sweep.md)"
        )
    rebound = types.FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__, fn.__defaults__, fn.__closure__)
    rebound.__kwdefaults__ = fn.__kwdefaults__  # an edited copy's keyword-only defaults (FunctionType drops them)
    return functools.update_wrapper(rebound, fn, updated=())  # its docstring, qualified name and annotations


# ---------------------------------------------------------------------------------------------------------------
# Training: the script's own train(), for all members
# ---------------------------------------------------------------------------------------------------------------
def train(script, member_args: list, sweep_name: str) -> list[str]:
    """Train the members together (each from its --resume checkpoint, if any) in the script's train(); returns their
    summary.json paths."""
    keys = [(a.env_id, a.dataset_path, a.reward_mode) for a in member_args]
    if len(set(keys)) > 1 and getattr(member_args[0], "online_steps", 0):
        raise UserError("--online-steps with --env-ids: fine-tune each dataset's members in a sweep of its own")
    runs = bookkeeping.Runs(script.__file__, member_args, sweep=sweep_name)  # the members' folders, before the data
    with runs.removed_on_failure():  # several datasets: each loaded once, each member given its own
        loaded = {key: offline_data.load(*key) for key in dict.fromkeys(keys)} if len(set(keys)) > 1 else None
        source = loaded and offline_data.MemberSources([loaded[key] for key in keys])
    members = Members(script, member_args)
    train = rebind(script.train, **{name: getattr(members, name) for name in script.SWEEP_TRAIN_REPLACES})
    train(member_args[0], runs, source)
    return runs.summaries


def sweep_name(script, sweep: Args, member_args: list) -> str:
    """The sweep's name (its members' wandb group): <datasets>__<script>_sweep__<unix time>, + __shard<I>of<K> with
    --shard; with --resume, the resumed sweep's (its first member's sweep.json), so a continuation keeps it."""
    if sweep.resume:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            with open(os.path.join(bookkeeping.run_folder(sweep.resume[0]), "sweep.json")) as f:
                return str(json.load(f)["sweep"])
    ids = sorted({a.env_id.replace("/", "-") for a in member_args})
    domain = ids[0] if len(ids) == 1 else os.path.commonprefix(ids).rstrip("-_") or f"{len(ids)}_datasets"
    name = f"{domain}__{script.__name__}_sweep__{int(time.time())}"
    return name + (f"__shard{sweep.shard.replace('/', 'of')}" if sweep.shard != "0/1" else "")


def main() -> list[str]:
    script, sweep, member_args = parse_args(sys.argv[1:])
    return train(script, member_args, sweep_name(script, sweep, member_args))


if __name__ == "__main__":
    bookkeeping.main(__file__, main)  # any stop in one line: exit code 2, or 130/143 (signals)
