"""Your own data: an hdf5 file in D4RL's layout (--dataset-path) for an env of gymnasium's registry (--env-id
InvertedPendulum-v5, ...), read and checked as a D4RL file is, evaluated in that env, scored by raw returns (no
reference returns). The data's actions are the env's rescaled to [-1, 1], where the policies act."""

import functools

import gymnasium as gym
import numpy as np

from offline_data.d4rl_files import qlearning_dataset, read_d4rl_hdf5, timeouts_by_step_count
from offline_data.evaluation_envs import settotalmass_warning_dropped
from offline_data.source import DatasetError, DataSource, UserError


def is_gymnasium_id(env_id: str) -> bool:
    return env_id in gym.registry


def make_gymnasium_env(env: str | gym.envs.registration.EnvSpec) -> gym.Env:
    """gym.make(env), its actions rescaled to [-1, 1] where its bounds are others. A spec (its entry point) makes the
    env in a worker process too, where a registration made by the user's own package may not have run."""
    with settotalmass_warning_dropped():
        env = gym.make(env)
    if (env.action_space.low == -1).all() and (env.action_space.high == 1).all():
        return env
    return gym.wrappers.RescaleAction(env, np.float32(-1), np.float32(1))


def load_own_data(env_id: str, dataset_path: str | None) -> DataSource:
    """The transitions of `dataset_path` (d4rl's qlearning_dataset rule) for the Gymnasium env `env_id`."""
    if dataset_path is None:
        raise UserError(f"{env_id} is a Gymnasium env: give your data for it with --dataset-path (D4RL's layout)")
    try:
        with settotalmass_warning_dropped():
            env = gym.make(env_id)
    except (gym.error.Error, ImportError) as e:  # a missing dependency (Box2D, ...)
        raise UserError(f"{env_id}: gym.make failed ({type(e).__name__}: {e})".replace("\n", " ")) from None
    obs_space, act_space, max_steps = env.observation_space, env.action_space, env.spec.max_episode_steps
    env.close()
    flat = [isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in (obs_space, act_space)]
    if not all(flat) or not np.isfinite([act_space.low, act_space.high]).all():
        raise UserError(
            f"{env_id}: the scripts need flat Box observations and bounded Box actions, not {obs_space} and {act_space}"
        )
    if max_steps is None:  # an evaluation episode of an env that never ends would run forever
        raise UserError(f"{env_id} has no time limit: register it with max_episode_steps, where its episodes end")
    dims = (obs_space.shape[0], act_space.shape[0])
    data = read_d4rl_hdf5(dataset_path, env_id, dims=dims)
    if "timeouts" not in data:  # the time limit's ends, counted from 0 after a terminal too (not d4rl's quirk)
        data["timeouts"] = timeouts_by_step_count(data["terminals"], max_steps, restart=0)
    data = qlearning_dataset(data)
    if len(data["rewards"]) == 0:
        raise DatasetError(f"{dataset_path} has no usable transitions")
    make_env = functools.partial(make_gymnasium_env, gym.spec(env_id))
    return DataSource(data, dataset_path, *dims, make_env, env_id, None, None)
