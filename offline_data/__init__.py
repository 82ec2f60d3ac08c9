"""offline_data: the data and evaluation environments ofql.py, dql.py and fql.py import besides the algorithm, as
CORL's scripts import `d4rl`: datasets with their evaluation environments and scores, by id. One module per concern:

    source.py            DataSource (what every loader returns), the reward transforms, UserError and DatasetError
    d4rl_files.py        D4RL's files without the `d4rl` package: download, cache, checks, qlearning_dataset, scores
    d4rl_envs.py         D4RL's evaluation envs: gymnasium's MuJoCo envs, AntMaze, Kitchen and Adroit rebuilt
    minari_datasets.py   Minari datasets with their own evaluation envs and reference returns
    ogbench_datasets.py  OGBench's single-task datasets and envs, from the ogbench package, scored by success
    own_data.py          your own data in D4RL's layout for an env of gymnasium's registry, scored by raw returns
    evaluation_envs.py   a run's evaluation envs in one vector env, the first recorded with --capture-video
    vector_envs.py       many envs in worker processes (a SyncVectorEnv of a slice each) where there are the cores
    episodes.py          running envs with a policy: the evaluation's episodes, the online phase's steps

The run bookkeeping (run folders, checkpoints, resume, signals, summaries) is not here: bookkeeping.py.

Public API (all importable from offline_data):
    load(env_id, dataset_path=None, reward_mode="raw") -> DataSource   transitions, shapes, eval env and references
    check_values(data, path, reward_mode)                                the transitions' values, as load checks them
    DataSource.score(returns, successes)                                the score of each evaluation episode
    DataSource.episode_stats(returns, successes, prefix)                 their means and stds, as metrics
    DataSource.limitation                                                what a run on it cannot report ('' if nothing)
    MemberSources(sources), DataSource.member(m)                        a domain sweep's datasets; member m's source
    normalized_score(env_id, returns)                                    Eq. 18 for a D4RL id
    eval_env_factory(env_id)                                             the evaluation env of a D4RL id (a factory)
    DataSource.reward_fn(rewards)                                       --reward-mode's rule for online rewards
    evaluation_envs(make_env, num_envs, video_folder), renderable(env)   the evaluation envs, the first one recorded
                                                                        (make_env: a factory, or one per member)
    vector_env(env_fns, workers=None)                                   envs in worker processes, or in this one
    run_episodes(policy, envs, seeds, device)                           one evaluation episode per env, in parallel
    OnlineEnvs(source, members).reset(seeds, device).step(policy)       the online phase: one env step per member
    preset_key(env_id), source_kind(env_id), is_minari_id, is_ogbench_id the id whose presets an id uses; its source
    is_gymnasium_id, make_gymnasium_env(env_id)                          your own data's env: an id of gym's registry
    DATASETS, MINARI_PRESET_KEYS, OGBENCH_IDS                            the ids each source knows
    UserError, DatasetError                                              reported by the scripts as one line, exit 2
    unknown_id(env_id, supported)                                       the error for an id without presets
"""

import difflib

import numpy as np

from offline_data.d4rl_envs import eval_env_factory
from offline_data.d4rl_files import DATASETS, dataset_cache_path, domain_of, load_d4rl, normalized_score
from offline_data.episodes import OnlineEnvs, run_episodes
from offline_data.evaluation_envs import evaluation_envs, renderable
from offline_data.minari_datasets import MINARI_PRESET_KEYS, load_minari
from offline_data.ogbench_datasets import OGBENCH_IDS, is_ogbench_id, load_ogbench
from offline_data.own_data import is_gymnasium_id, load_own_data, make_gymnasium_env
from offline_data.source import DatasetError, DataSource, MemberSources, UserError, reward_transform
from offline_data.vector_envs import vector_env

__all__ = [
    "DATASETS",
    "MINARI_PRESET_KEYS",
    "OGBENCH_IDS",
    "OnlineEnvs",
    "DataSource",
    "DatasetError",
    "MemberSources",
    "UserError",
    "check_values",
    "eval_env_factory",
    "evaluation_envs",
    "is_gymnasium_id",
    "is_minari_id",
    "is_ogbench_id",
    "load",
    "make_gymnasium_env",
    "normalized_score",
    "preset_key",
    "renderable",
    "run_episodes",
    "source_kind",
    "unknown_id",
    "vector_env",
]


def unknown_id(env_id: str, supported) -> UserError:
    """The error for an --env-id without presets: the nearest of the `supported` ids (and Minari's) first."""
    if env_id in supported:  # a preset a user added for an id of no source
        return UserError(
            f"{env_id!r} has presets but no data: the ids of D4RL, Minari, OGBench, or of gymnasium's "
            "registry with --dataset-path (your own data, docs/environments.md)"
        )
    ids = [*supported, *MINARI_PRESET_KEYS]
    near = difflib.get_close_matches(env_id.lower(), ids, n=3, cutoff=0.75)
    return UserError(
        f"unknown --env-id {env_id!r}; " + (f"did you mean {' or '.join(near)}? " if near else "") + f"supported: "
        f"{', '.join(supported)} (OGBench: also with -task1 ... -task5 before -v0), the Minari datasets "
        f"{', '.join(MINARI_PRESET_KEYS)}, and with --dataset-path the ids of gymnasium's registry (your own data)"
    )


def load(env_id: str, dataset_path: str | None = None, reward_mode: str = "raw") -> DataSource:
    """A D4RL id (the D4RL file, downloaded to d4rl's cache if missing, or `dataset_path`, a local file in its
    layout), a Minari id, or an OGBench single-task id (ogbench's files, or `dataset_path`: their folder or the
    train file); rewards transformed by `reward_mode` (see reward_transform; the rule, with the dataset's statistics,
    is the source's reward_fn, for rewards collected online)."""
    if is_minari_id(env_id):
        if dataset_path is not None:
            raise UserError(f"--dataset-path is not for Minari ids; {env_id} is read from $MINARI_DATASETS_PATH")
        source = load_minari(env_id)
    elif is_ogbench_id(env_id):
        source = load_ogbench(env_id, dataset_path)
    elif is_gymnasium_id(env_id):
        source = load_own_data(env_id, dataset_path)
    elif env_id not in DATASETS:
        raise UserError(
            f"unknown dataset id {env_id!r}; D4RL ids: {', '.join(DATASETS)}, or a Minari, OGBench or Gymnasium id"
        )
    else:
        d = domain_of(env_id)
        data = load_d4rl(env_id, dataset_path, "raw")
        path, env = dataset_path or dataset_cache_path(env_id), eval_env_factory(env_id)
        source = DataSource(data, path, d.obs_dim, d.act_dim, env, d.eval_env, d.ref_min, d.ref_max)
    reward_fn = reward_transform(source.data["rewards"], reward_mode)  # with the dataset's statistics, for online too
    source.data["rewards"] = reward_fn(source.data["rewards"])
    check_values(source.data, source.path, reward_mode)
    return source._replace(reward_fn=reward_fn)


def check_values(data: dict, path: str, reward_mode: str) -> None:
    """Every source's transitions as training reads them (float32, rewards transformed): finite, actions in about
    [-1, 1] (small overshoots, which real recordings have, pass), or one DatasetError line."""
    keys = ("observations", "actions", "next_observations", "rewards")
    if bad := [k for k in keys if not np.isfinite(data[k]).all()]:
        raise DatasetError(
            f"{path}: {', '.join(bad)} not finite in float32 (rewards after --reward-mode {reward_mode})"
        )
    if (largest := np.abs(data["actions"]).max(initial=0.0)) > 1.5:
        raise DatasetError(
            f"{path}: actions outside [-1, 1] (max |a| = {largest:.4g}); the policies act in [-1, 1]: store them "
            "rescaled linearly from the env's action bounds to [-1, 1] (evaluation scales them back)"
        )


def preset_key(env_id: str) -> str | None:
    """The id whose presets `env_id` uses: a D4RL id itself, for a Minari id the D4RL id of the same task family, for
    an OGBench id its family's default task id, an id of gymnasium's registry (your own data) itself; None for an id
    this package does not know."""
    if is_minari_id(env_id):
        return MINARI_PRESET_KEYS.get(env_id)
    if is_ogbench_id(env_id):
        return OGBENCH_IDS.get(env_id)
    return env_id if env_id in DATASETS or is_gymnasium_id(env_id) else None


def is_minari_id(env_id: str) -> bool:
    return "/" in env_id and not is_gymnasium_id(env_id)  # 'mujoco/hopper/medium-v0'; D4RL and OGBench ids have none


def source_kind(env_id: str) -> str:
    kind = "minari" if is_minari_id(env_id) else "ogbench" if is_ogbench_id(env_id) else "d4rl"
    return "gymnasium" if kind == "d4rl" and is_gymnasium_id(env_id) else kind
