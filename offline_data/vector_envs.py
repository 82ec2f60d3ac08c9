"""Many envs stepped in worker processes: K workers, each a SyncVectorEnv of a contiguous slice of the envs, stepped
together, so that a sweep's evaluation (members x episodes envs) or its online phase (one env per member) uses the
machine's cores instead of one. Same envs, seeds and numbers as one SyncVectorEnv; only where each env runs differs."""

import multiprocessing
import os
import signal
import weakref
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import CloudpickleWrapper

from offline_data.source import UserError

MIN_ENVS_PER_WORKER = 8  # below it, a step's round trip to a worker costs about what the worker saves


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(num_envs: int) -> int:
    """Workers for `num_envs` envs: one per core but the training process's, at least MIN_ENVS_PER_WORKER envs each;
    1 (in-process) on a machine of two cores or fewer, or for few envs."""
    return max(1, min(usable_cpus() - 1, num_envs // MIN_ENVS_PER_WORKER))


def vector_env(env_fns: list[Callable[[], gym.Env]], workers: int | None = None, **kwargs) -> gym.vector.VectorEnv:
    """The envs of `env_fns` in one vector env: a SyncVectorEnv for one worker, else a WorkerVectorEnv (workers=None:
    default_workers). kwargs: SyncVectorEnv's (autoreset_mode)."""
    workers = default_workers(len(env_fns)) if workers is None else min(workers, len(env_fns))
    return gym.vector.SyncVectorEnv(env_fns, **kwargs) if workers <= 1 else WorkerVectorEnv(env_fns, workers, **kwargs)


def serve(pipe, env_fns: CloudpickleWrapper, kwargs: dict) -> None:
    """A worker: its slice of the envs in a SyncVectorEnv, serving ("reset", (seeds, options)), ("step", actions) and
    ("close", None) until closed or until the training process is gone (its end of the pipe closed); any exception goes
    back as ("error", its text), a UserError as ("refused", its line). Ctrl-C and SIGTERM (a cluster's, sent to every
    process) are the training process's to act on: it finishes its step (an evaluation's too) and saves, with these
    workers still there."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    envs = None
    try:
        envs = gym.vector.SyncVectorEnv(env_fns.fn, **kwargs)
        pipe.send(("ok", (envs.single_observation_space, envs.single_action_space)))
        while True:
            command, data = pipe.recv()
            if command == "close":
                break
            out = envs.reset(seed=data[0], options=data[1]) if command == "reset" else envs.step(data)
            pipe.send(("ok", out))
    except EOFError:  # the training process is gone
        pass
    except UserError as e:  # a factory's refusal (an id it does not know, ...): one line in the training process too
        pipe.send(("refused", str(e)))
    except Exception as e:
        pipe.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        if envs is not None:
            envs.close()
        pipe.close()


def blank(like: np.ndarray, n: int) -> np.ndarray:
    """n rows of what an env without this info gets in gymnasium's layout: None for objects, else zeros."""
    return np.full(n, None, object) if like.dtype == object else np.zeros((n, *like.shape[1:]), like.dtype)


def merge_infos(parts: list[dict], sizes: list[int]) -> dict:
    """The infos of one vector env from those of its slices (gymnasium's layout: per key an array over the envs and
    its mask `_key`; dicts, such as final_info, merged likewise); a slice without a key gets zeros (None for objects)
    and a False mask there."""
    merged = {}
    for key in dict.fromkeys(k for part in parts for k in part if not k.startswith("_")):
        present = [part[key] for part in parts if key in part]
        if isinstance(present[0], dict):
            merged[key] = merge_infos([part.get(key, {}) for part in parts], sizes)
        else:
            merged[key] = np.concatenate(
                [part[key] if key in part else blank(present[0], n) for part, n in zip(parts, sizes)]
            )
        merged[f"_{key}"] = np.concatenate([part.get(f"_{key}", np.zeros(n, bool)) for part, n in zip(parts, sizes)])
    return merged


def shutdown(pipes: list, processes: list) -> None:
    """Ask each worker to close its envs and end; one still there after 10 s is killed (it ignores SIGTERM)."""
    for pipe, process in zip(pipes, processes):
        try:
            pipe.send(("close", None))
        except OSError:  # it is gone
            pass
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
        pipe.close()


class WorkerVectorEnv(gym.vector.VectorEnv):
    """`env_fns` split into `workers` contiguous slices, each a SyncVectorEnv in a process of its own (forkserver: a
    clean process, not a fork of one running CUDA and threads; the factories travel with cloudpickle). reset and step
    send each worker its slice's seeds or actions, then gather: the same observations, rewards, flags and infos as one
    SyncVectorEnv of the same envs."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]], workers: int, **kwargs):
        self.num_envs = len(env_fns)
        self.slices = [s for s in np.array_split(np.arange(self.num_envs), workers) if len(s)]
        self.sizes = [len(s) for s in self.slices]
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.pipes, self.processes = [], []
        self.finalizer = weakref.finalize(self, shutdown, self.pipes, self.processes)  # at close, or at exit
        try:
            for s in self.slices:
                parent, child = context.Pipe()
                fns = CloudpickleWrapper([env_fns[i] for i in s])
                process = context.Process(target=serve, args=(child, fns, kwargs), daemon=True)
                process.start()
                child.close()
                self.pipes.append(parent)
                self.processes.append(process)
        except BaseException:  # a factory that cannot travel, ...: the workers started so far end too
            self.finalizer()
            raise
        self.single_observation_space, self.single_action_space = self.gather()[0]
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": kwargs.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)}

    def gather(self) -> list:
        """Each worker's reply, in order; a worker's error (or its end) closes them all and raises."""
        replies = []
        for pipe in self.pipes:
            try:
                replies.append(pipe.recv())
            except EOFError:
                replies.append(("error", "it exited"))
        errors = [(status, data) for status, data in replies if status != "ok"]
        if errors:
            self.close()
            status, text = errors[0]
            raise UserError(text) if status == "refused" else RuntimeError(f"an env worker failed: {text}")
        return [data for _, data in replies]

    def send(self, command: str, payloads: list) -> None:
        """Each worker its part; a worker that has exited closes them all and raises (not a bare BrokenPipeError)."""
        for w, (pipe, payload) in enumerate(zip(self.pipes, payloads)):
            try:
                pipe.send((command, payload))
            except OSError:
                self.close()
                raise RuntimeError(f"an env worker failed: worker {w} has exited") from None

    def reset(self, *, seed=None, options=None):
        if seed is None or isinstance(seed, int):  # one int: env i gets seed + i, as SyncVectorEnv does
            seed = [None if seed is None else seed + i for i in range(self.num_envs)]
        self.send("reset", [([seed[i] for i in s], options) for s in self.slices])
        parts = self.gather()
        return np.concatenate([obs for obs, _ in parts]), merge_infos([info for _, info in parts], self.sizes)

    def step(self, actions):
        self.send("step", [actions[s] for s in self.slices])
        parts = self.gather()
        obs, rewards, terminations, truncations = (np.concatenate([p[k] for p in parts]) for k in range(4))
        return obs, rewards, terminations, truncations, merge_infos([p[4] for p in parts], self.sizes)

    def close(self, **kwargs):
        self.finalizer()
        self.closed = True
