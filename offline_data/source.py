"""What every data source gives the scripts: a DataSource (transitions, sizes, evaluation env, reference returns),
the reward transforms of the presets, and the errors the scripts report as one line (exit code 2)."""

from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import numpy as np


class UserError(Exception):
    """A problem with the command line or the data: the scripts report it as one line, exit code 2."""


class DatasetError(UserError):
    """A dataset that cannot be downloaded, read or used."""


class DataSource(NamedTuple):
    data: dict[str, np.ndarray]  # the keys of qlearning_dataset (terminals: the done flags), rewards transformed
    path: str
    obs_dim: int
    act_dim: int
    make_env: Callable[[], gym.Env] | None  # one evaluation env, observations as in the data; None: not available
    eval_env_id: str | None
    ref_min: float | None  # the reference returns of the normalized score; None: raw returns only
    ref_max: float | None
    scored_by_success: bool = False  # the score is 100 x the success rate (OGBench, as FQL scores it)
    reward_fn: Callable[[np.ndarray], np.ndarray] | None = None  # --reward-mode's rule, for new (online) rewards

    @property
    def limitation(self) -> str:
        """What a run on this data cannot report, as a note for the user ('' when nothing is missing)."""
        if self.make_env is None:  # D4RL's AntMaze, Kitchen and Adroit ids where gymnasium-robotics is missing
            return (
                "no evaluation environment (AntMaze, Kitchen and Adroit need gymnasium-robotics: pip install -r "
                "requirements.txt): this run trains and checkpoints, and reports no score"
            )
        return (
            ""
            if self.ref_min is not None or self.scored_by_success
            else "no reference returns: evaluations report raw returns, no normalized score"
        )

    def score(self, episode_returns: np.ndarray, successes: np.ndarray) -> np.ndarray | None:
        """Each episode's score: 100 x its success (0 or 1) where the source is scored by success, else the
        normalized score of its return."""
        return 100.0 * successes if self.scored_by_success else self.normalized_score(episode_returns)

    def episode_stats(self, returns: np.ndarray, successes: np.ndarray, prefix: str = "") -> dict:
        """Mean and std of the episodes' returns, of their scores (None without reference returns) and, where the
        source is scored by success (OGBench), of their successes; keys prefixed by `prefix`."""
        values = {"score": self.score(returns, successes), "return": returns}
        values.update({"success": successes} if self.scored_by_success else {})
        stats = {"": np.mean, "_std": np.std}
        return {
            f"{prefix}{k}{s}": None if x is None else float(f(x)) for k, x in values.items() for s, f in stats.items()
        }

    def member(self, m: int) -> "DataSource":
        """The source of member m of the run (every member of a run on one dataset trains on this one)."""
        return self

    def normalized_score(self, episode_returns: np.ndarray) -> np.ndarray | None:
        """100 (R - ref_min) / (ref_max - ref_min) (Eq. 18 for D4RL); None where the data have no reference returns."""
        if self.ref_min is None or self.ref_max is None:
            return None
        return 100.0 * (episode_returns - self.ref_min) / (self.ref_max - self.ref_min)


class MemberSources:
    """The datasets of a domain sweep's members, one source per member (members share the source of their dataset),
    standing in for a DataSource in the training loop: member(m) is member m's; the shapes are the same for all (else
    one UserError line); data and make_env have one entry per member (make_env: None where the sources have none)."""

    def __init__(self, sources: list[DataSource]):
        shapes = {s.path: (s.obs_dim, s.act_dim) for s in sources}
        if len(set(shapes.values())) > 1:
            raise UserError(f"datasets of different (observation, action) sizes cannot share one process: {shapes}")
        self.sources, self.obs_dim, self.act_dim = sources, sources[0].obs_dim, sources[0].act_dim
        self.data = [s.data for s in sources]
        with_env = [s.make_env is not None for s in sources]
        if len(set(with_env)) > 1:
            paths = [s.path for s, has in zip(sources, with_env) if not has]
            raise UserError(f"every dataset of one process needs an evaluation environment, or none: {paths} have none")
        self.make_env = [s.make_env for s in sources] if with_env[0] else None
        self.limitation = "; ".join(dict.fromkeys(s.limitation for s in sources if s.limitation))

    def member(self, m: int) -> DataSource:
        return self.sources[m]


def reward_transform(rewards: np.ndarray, mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """The reward rule of `mode` as a function, with the statistics of `rewards` (the dataset's) where it has any:
    what the dataset's rewards get, and what rewards collected online get (--online-steps), the same numbers."""
    if mode == "cql_antmaze":  # CQL's AntMaze rule, as in DQL: {0, 1} -> {-2, 2}
        return lambda r: (r - 0.5) * 4.0
    if mode == "iql_antmaze":  # IQL's AntMaze rule, as in FQL: {0, 1} -> {-1, 0}
        return lambda r: r - 1.0
    if mode == "standardize":  # DQL's "normalize" for Adroit, by the dataset's mean and std
        mean, std = rewards.mean(), rewards.std(ddof=1)  # torch.std in DQL's code: N - 1
        if std == 0:  # a NaN std (rewards not finite) is check_values' to name
            raise DatasetError(f"--reward-mode standardize: the dataset's rewards are all {mean} (std 0)")
        return lambda r: (r - mean) / std
    return lambda r: r


def transform_rewards(rewards: np.ndarray, mode: str) -> np.ndarray:
    return reward_transform(rewards, mode)(rewards)
