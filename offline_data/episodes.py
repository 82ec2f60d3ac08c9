"""Running envs with a policy (a function from a batch of observations, a tensor on the training device, to a batch
of actions): the evaluation's episodes, all in parallel, and the online phase's steps (--online-steps), one env per
member of the run (a sweep's N members: N envs in one vector env, one batched policy call per step)."""

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from offline_data.source import DataSource, UserError
from offline_data.vector_envs import vector_env


def env_actions(policy: Callable, obs: np.ndarray, device) -> np.ndarray:
    """The policy's actions for `obs`, as the envs take them; non-finite ones (a member gone non-finite, which stops at
    the next logging window or, in a sweep, goes on unreported) as 0: MuJoCo warns at every NaN control."""
    actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
    actions[~np.isfinite(actions)] = 0.0
    return actions


def run_episodes(policy: Callable, envs: gym.vector.VectorEnv, seeds: list[int], device) -> tuple:
    """One episode per env, all in parallel, env i reset with seeds[i]: the returns, the successes (info['success'] of
    the final step, as FQL counts them; NaN where an env reports none), and action batches per second."""
    obs, _ = envs.reset(seed=seeds)
    returns, finished = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=bool)
    successes, policy_time, decisions = np.full(envs.num_envs, np.nan), 0.0, 0
    while not finished.all():
        start = time.perf_counter()
        actions = env_actions(policy, obs, device)
        policy_time, decisions = policy_time + time.perf_counter() - start, decisions + 1
        obs, rewards, terminations, truncations, infos = envs.step(actions)
        returns += np.where(finished, 0.0, rewards)
        ending = (terminations | truncations) & ~finished
        if "success" in infos:
            successes = np.where(ending & infos["_success"], infos["success"], successes)
        finished |= ending
    return returns, successes, decisions / policy_time


class OnlineEnvs:
    """The online phase's envs, one per member, in one vector env whose ended episodes restart within the step
    (gymnasium's same-step autoreset); reset(seeds, device) starts env m's first episode with seeds[m]. Its episodes
    run on across step() calls."""

    def __init__(self, source: DataSource, members: int, workers: int | None = None):
        if source.make_env is None:
            raise UserError("--online-steps needs an environment to act in, and this dataset has none")
        same_step = gym.vector.AutoresetMode.SAME_STEP  # in worker processes where there are cores (vector_env)
        self.envs = vector_env([source.make_env] * members, workers, autoreset_mode=same_step)
        self.source = source

    def reset(self, seeds: list[int], device) -> "OnlineEnvs":
        """Start a fresh episode in each env, env m's with seeds[m]; the policy's observations go to `device`."""
        self.obs, _ = self.envs.reset(seed=seeds)
        self.device, self.returns, self.lengths = device, np.zeros(len(seeds)), np.zeros(len(seeds), dtype=int)
        return self

    def close(self) -> None:
        self.envs.close()

    def step(self, policy: Callable) -> tuple[tuple, list]:
        """One step of every env with the policy's actions. -> (the transitions, one row per env, as the critic needs
        them: observation, action, reward by the dataset's rule (source.reward_fn), next observation (the episode's
        last one where it ended, not the next episode's first), done = terminated: an episode cut by its time limit
        (truncated) bootstraps; per env, None or the episode that ended: its raw return, length, score and, where the
        source is scored by success, its success (info['success'] of its last step))."""
        obs = self.obs
        actions = env_actions(policy, obs, self.device)
        self.obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        self.returns += rewards
        self.lengths += 1
        next_obs, episodes = self.obs.copy(), [None] * len(obs)
        for i in np.flatnonzero(terminated | truncated):
            next_obs[i] = infos["final_obs"][i]
            final = infos["final_info"]
            success = np.array([final["success"][i] if final.get("_success", [False] * len(obs))[i] else np.nan])
            score = self.source.score(self.returns[i : i + 1], success)
            episodes[i] = {
                "online/episode_return": float(self.returns[i]),
                "online/episode_length": int(self.lengths[i]),
            }
            episodes[i].update({} if score is None else {"online/episode_score": float(score[0])})
            episodes[i].update({"online/episode_success": float(success[0])} if self.source.scored_by_success else {})
            self.returns[i], self.lengths[i] = 0.0, 0
        reward_fn = self.source.reward_fn or (lambda r: r)
        return (obs, actions, reward_fn(rewards), next_obs, terminated.astype(np.float32)), episodes
