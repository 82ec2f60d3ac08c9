"""offline_data/vector_envs.py: envs in worker processes give what one SyncVectorEnv of the same envs gives
(observations, rewards, flags, infos, with both autoreset modes), evaluation returns and online transitions included;
a failing worker is one error; the number of workers follows the cores."""

import json
import multiprocessing
import os
import signal
import threading
import time
import types

import gymnasium as gym
import numpy as np
import pytest
import torch

import offline_data
from conftest import record_d4rl_file
from offline_data import vector_envs
from offline_data.d4rl_envs import eval_env_factory

HOPPER = eval_env_factory("hopper-medium-v2")


@pytest.fixture
def hopper_source(tmp_path):
    record_d4rl_file(tmp_path / "hopper.hdf5", episodes=2, max_steps=20)
    return offline_data.load("hopper-medium-v2", str(tmp_path / "hopper.hdf5"))


def spy(fn, calls: list):
    def wrapped(*args, **kwargs):
        calls.append(args[1:])
        return fn(*args, **kwargs)

    return wrapped


def assert_same_infos(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_infos(a[key], b[key])
        elif a[key].dtype == object:
            assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(a[key], b[key])), key
        else:
            assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("mode", [gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP])
def test_workers_step_as_one_sync_vector_env(mode):
    """Seven hopper envs in 3 workers (slices of 3, 2, 2) against one SyncVectorEnv: random actions for 150 steps,
    in which episodes end (a falling hopper) and restart; every output equal, infos (final_obs, final_info) too."""
    n, ends = 7, 0
    sync = gym.vector.SyncVectorEnv([HOPPER] * n, autoreset_mode=mode)
    workers = vector_envs.WorkerVectorEnv([HOPPER] * n, 3, autoreset_mode=mode)
    assert workers.sizes == [3, 2, 2] and workers.single_action_space == sync.single_action_space
    np.testing.assert_array_equal(sync.reset(seed=5)[0], workers.reset(seed=5)[0])  # one int: env i seeded 5 + i
    seeds = list(range(10, 10 + n))
    np.testing.assert_array_equal(sync.reset(seed=seeds)[0], workers.reset(seed=seeds)[0])
    actions = np.random.default_rng(0).uniform(-1, 1, (150, n, 3)).astype(np.float32)
    for a in actions:
        expected, got = sync.step(a), workers.step(a)
        for x, y in zip(expected[:4], got[:4]):
            np.testing.assert_array_equal(x, y)
        assert_same_infos(expected[4], got[4])
        ends += int(expected[2].sum())
    assert ends > 5
    sync.close()
    workers.close()
    assert not any(p.is_alive() for p in workers.processes)


def test_an_evaluation_in_workers_returns_what_it_returns_in_this_process():
    envs = [offline_data.evaluation_envs(HOPPER, 6, workers=w) for w in (1, 2)]
    assert isinstance(envs[0], gym.vector.SyncVectorEnv) and isinstance(envs[1], vector_envs.WorkerVectorEnv)
    policy = lambda obs: torch.tanh(obs[:, :3] - obs[:, 3:6])  # noqa: E731  a deterministic policy
    results = [offline_data.run_episodes(policy, e, list(range(100, 106)), "cpu")[:2] for e in envs]
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert len(set(results[0][0])) == 6  # six different episodes
    for e in envs:
        e.close()


def test_online_steps_in_workers_store_the_same_transitions(hopper_source):
    """OnlineEnvs (same-step autoreset: the episode's last observation from final_obs) of 4 members, in 2 workers
    and in this process: 60 steps of a policy that falls, the same transitions and ended episodes."""
    policy = lambda obs: torch.sin(3 * obs[:, :3])  # noqa: E731
    runs = [offline_data.OnlineEnvs(hopper_source, 4, workers=w).reset([200, 201, 202, 203], "cpu") for w in (1, 2)]
    ended = 0
    for _ in range(60):
        (t1, e1), (t2, e2) = (r.step(policy) for r in runs)
        for x, y in zip(t1, t2):
            np.testing.assert_array_equal(x, y)
        assert e1 == e2
        ended += sum(e is not None for e in e1)
    assert ended > 0
    for r in runs:
        r.envs.close()


def test_workers_leave_ctrl_c_and_sigterm_to_the_training_process():
    """Ctrl-C (the whole process group) and a cluster's SIGTERM reach the workers too: they must live on, so that the
    training process can finish its step, evaluation included, and save; close() ends them."""
    envs = vector_envs.WorkerVectorEnv([HOPPER] * 2, 2)
    envs.reset(seed=[0, 1])
    for process in envs.processes:
        os.kill(process.pid, signal.SIGINT)
        os.kill(process.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert envs.step(np.zeros((2, 3), np.float32))[0].shape == (2, 11)
    assert all(p.is_alive() for p in envs.processes)
    envs.close()
    assert not any(p.is_alive() for p in envs.processes)


def failing_env():
    raise ValueError("no such model file")


def test_a_failing_worker_is_one_error_and_the_others_stop():
    with pytest.raises(RuntimeError, match="an env worker failed: ValueError: no such model file"):
        vector_envs.WorkerVectorEnv([HOPPER, HOPPER, failing_env, HOPPER], 2)


def refusing_env():
    raise offline_data.UserError("pen-foo-v1: not a pen id")


def test_a_workers_end_a_refusal_and_a_factory_that_cannot_travel_are_each_one_line_and_leave_no_worker():
    """A worker killed (out of memory, say): the next step's error names it, not a bare BrokenPipeError; a factory's
    UserError stays one (exit 2 in the scripts), not a RuntimeError; a factory that cannot be pickled stops the
    constructor with the workers started before it ended, not left running."""
    envs = vector_envs.WorkerVectorEnv([HOPPER] * 2, 2)
    envs.reset(seed=[0, 1])
    envs.processes[1].kill()
    envs.processes[1].join()
    with pytest.raises(RuntimeError, match="an env worker failed: (worker 1 has exited|it exited)"):
        envs.step(np.zeros((2, 3), np.float32))
    assert envs.closed and not any(p.is_alive() for p in envs.processes)
    with pytest.raises(offline_data.UserError, match="^pen-foo-v1: not a pen id$"):
        vector_envs.WorkerVectorEnv([HOPPER, refusing_env], 2)
    lock = threading.Lock()
    with pytest.raises(TypeError, match="lock") as caught:  # its traceback holds the half-made vector env
        vector_envs.WorkerVectorEnv([HOPPER, lambda: lock and HOPPER()], 2)
    assert multiprocessing.active_children() == [] and caught.tb is not None  # not left to the garbage collector


def test_merged_infos_are_gymnasiums_layout_for_all_the_envs():
    """Infos of two slices, one with a key the other lacks and nested dicts: as gymnasium's own _add_info builds them
    for the four envs one by one."""
    per_env = [{"a": 1.0, "d": {"s": True}}, {}, {"a": 2.0, "o": "x"}, {"d": {"s": False}}]
    whole, half = gym.vector.SyncVectorEnv([HOPPER] * 4), gym.vector.SyncVectorEnv([HOPPER] * 2)
    expected, parts = {}, [{}, {}]
    for i, info in enumerate(per_env):
        expected = whole._add_info(expected, info, i)
        parts[i // 2] = half._add_info(parts[i // 2], info, i % 2)
    assert "o" not in parts[0] and "o" in parts[1]  # a key of one slice only
    assert_same_infos(vector_envs.merge_infos(parts, [2, 2]), expected)
    whole.close()
    half.close()


def test_workers_follow_the_cores(monkeypatch):
    monkeypatch.setattr(vector_envs, "usable_cpus", lambda: 16)
    assert [vector_envs.default_workers(n) for n in (10, 16, 64, 160, 4500)] == [1, 2, 8, 15, 15]
    monkeypatch.setattr(vector_envs, "usable_cpus", lambda: 2)
    assert vector_envs.default_workers(4500) == 1
    assert isinstance(vector_envs.vector_env([HOPPER] * 3), gym.vector.SyncVectorEnv)


def test_a_run_evaluates_in_workers_as_in_this_process(tmp_path, monkeypatch):
    """ofql.py with 16 evaluation episodes on a machine of 16 cores (2 workers of 8 envs) and of 2 (in this process):
    the same evaluations, bit for bit."""
    import ofql

    record_d4rl_file(tmp_path / "hopper.hdf5", episodes=3, max_steps=40)
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", str(tmp_path / "hopper.hdf5"), "--total-steps", "20"]
    flags += ["--eval-every", "20", "--eval-episodes", "16", "--log-every", "10", "--batch-size", "32"]
    made, evaluations = [], []
    monkeypatch.setattr(vector_envs.WorkerVectorEnv, "__init__", spy(vector_envs.WorkerVectorEnv.__init__, made))
    for cores in (16, 2):
        monkeypatch.setattr(vector_envs, "usable_cpus", lambda: cores)  # noqa: B023
        summary = json.load(open(ofql.train(ofql.parse_args(flags + ["--exp-name", f"cores{cores}"]))))
        evaluations.append([{k: v for k, v in e.items() if k != "decision_rate"} for e in summary["evaluations"]])
    assert len(made) == 1 and evaluations[0] == evaluations[1]  # all but the timing


class Countdown(gym.Env):
    """Reward 1 each step; the episode ends after `length` steps (terminated), with info['success'] = length."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, length):
        self.length = length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        return np.zeros(1, np.float32), 1.0, done, False, {"success": float(self.length)} if done else {}


def test_an_episode_counts_only_its_own_steps_while_the_others_run_on():
    """Episodes of 2 and 5 steps side by side: the first env's return stops at its end (its autoreset steps after it
    count for nothing), and each success is its own episode's last step's."""
    envs = gym.vector.SyncVectorEnv([lambda: Countdown(2), lambda: Countdown(5)])
    returns, successes, _ = offline_data.run_episodes(lambda obs: torch.zeros(len(obs), 1), envs, [0, 1], "cpu")
    envs.close()
    np.testing.assert_array_equal(returns, [2.0, 5.0])
    np.testing.assert_array_equal(successes, [2.0, 5.0])


class DiesWhenStepped(gym.Env):
    """An env whose process ends in its first step (a simulator's crash, the kernel's out-of-memory kill)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        os._exit(1)


def test_a_worker_that_ends_within_a_step_is_one_error_and_the_others_stop():
    """The step reached the worker, which ended before replying: the error names a worker's end, not the TypeError of
    a missing reply, and no worker is left."""
    envs = vector_envs.WorkerVectorEnv([DiesWhenStepped, lambda: Countdown(5)], 2)
    envs.reset(seed=[0, 1])
    with pytest.raises(RuntimeError, match="^an env worker failed: it exited$"):
        envs.step(np.zeros((2, 1), np.float32))
    assert envs.closed and not any(p.is_alive() for p in envs.processes)


class StartsAt(gym.Env):
    """The observation of a reset is its options' 'start' (0 without options)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full(1, (options or {}).get("start", 0.0), np.float32), {}


def test_workers_reset_with_the_options_and_report_the_autoreset_mode_of_one_sync_vector_env():
    """A reset's options reach every worker's envs, as SyncVectorEnv passes them to its envs; the vector env's
    metadata names the autoreset mode its envs step with: gymnasium's default (next step) where none is given."""
    sync, workers = gym.vector.SyncVectorEnv([StartsAt] * 3), vector_envs.WorkerVectorEnv([StartsAt] * 3, 2)
    for envs in (sync, workers):
        np.testing.assert_array_equal(envs.reset(seed=0, options={"start": 0.5})[0], [[0.5]] * 3)
    assert workers.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    sync.close()
    workers.close()


def test_the_decision_rate_is_policy_calls_per_second_of_the_policys_own_time(monkeypatch):
    """Episodes of 3 and 2 steps on a scripted clock: each policy call takes 0.25 s, each env step 1 s; the rate is 3
    calls over the policy's 0.75 s, 4 a second (not seconds per call, 0.25, nor calls over all the time, 0.8)."""
    clock = [0.0]
    monkeypatch.setattr(offline_data.episodes, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    envs = gym.vector.SyncVectorEnv([lambda: Countdown(3), lambda: Countdown(2)])
    env_step = envs.step

    def timed_step(actions):
        clock[0] += 1.0
        return env_step(actions)

    def policy(obs):
        clock[0] += 0.25
        return torch.zeros(len(obs), 1)

    monkeypatch.setattr(envs, "step", timed_step)
    _, _, rate = offline_data.run_episodes(policy, envs, [0, 1], "cpu")
    envs.close()
    assert rate == 4.0


class EpisodeIndex(gym.Env):
    """Reward 1 a step, episodes of `length` steps; with `reports`, info['success'] at every step is the episode's
    index (0 in the first one, 1 in the next), as OGBench's envs report a success at every step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, length, reports=True):
        self.length, self.reports, self.episode = length, reports, -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"success": float(self.episode)} if self.reports else {}
        return np.zeros(1, np.float32), 1.0, self.t >= self.length, False, info


def test_a_success_is_its_episodes_last_step_and_nan_where_an_env_reports_none():
    """An env whose episodes of 2 steps report their index as success at every step, beside one of 6 steps that
    reports none: the first's success is its first episode's last step's (0), not a step of the episode after it,
    which runs on while the other env finishes; the second's is NaN, not a made-up 0."""
    envs = gym.vector.SyncVectorEnv([lambda: EpisodeIndex(2), lambda: EpisodeIndex(6, reports=False)])
    returns, successes, _ = offline_data.run_episodes(lambda obs: torch.zeros(len(obs), 1), envs, [0, 1], "cpu")
    envs.close()
    np.testing.assert_array_equal(returns, [2.0, 6.0])
    np.testing.assert_array_equal(successes, [0.0, np.nan])
