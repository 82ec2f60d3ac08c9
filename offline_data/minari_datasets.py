"""Minari datasets (optional: pip install minari gymnasium-robotics): regenerated data with their own evaluation
environments and reference returns, so their scores are never comparable with D4RL scores."""

import os

import gymnasium as gym
import numpy as np

from offline_data.d4rl_envs import fix_gymnasium_robotics_joints
from offline_data.evaluation_envs import remove_model_file, settotalmass_warning_dropped
from offline_data.source import DatasetError, DataSource

# Minari id -> the D4RL id whose preset it uses (the same task family; not the same data)
MINARI_PRESET_KEYS = {
    **{
        f"mujoco/{env}/{ds}-v0": f"{env}-{ds}-v2"
        for env in ("halfcheetah", "hopper", "walker2d")
        for ds in ("medium", "medium-replay", "medium-expert")
    },
    **{
        f"D4RL/antmaze/{ds}-v1": f"antmaze-{ds}-v2"
        for ds in ("medium-play", "medium-diverse", "large-play", "large-diverse")
    },
    **{f"D4RL/kitchen/{ds}-v2": f"kitchen-{ds}-v0" for ds in ("mixed", "partial")},
    **{f"D4RL/pen/{ds}-v2": f"pen-{ds}-v1" for ds in ("human", "cloned")},
}


def flatten_observation(space: gym.Space, obs) -> np.ndarray:
    """One float32 vector per observation, for the stored data and the environment alike: a Dict concatenates its
    entries in sorted key order, recursively (gymnasium.spaces.flatten's order), e.g. AntMaze [achieved_goal(2),
    desired_goal(2), observation(27)]. Leading batch axes are kept, so a whole episode flattens in one call."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_observation(space[k], obs[k]) for k in sorted(space.keys())], axis=-1)
    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(f"cannot flatten a {type(space).__name__} observation space (only Box and Dict)")
    x, batch = np.asarray(obs, dtype=np.float32), np.ndim(obs) - len(space.shape)
    if batch < 0 or x.shape[batch:] != space.shape:
        raise DatasetError(f"an observation of shape {x.shape} does not fit the space {space}")
    return x.reshape(x.shape[:batch] + (-1,))


MINARI_DOWNLOAD_PACKAGE = "huggingface_hub"  # what minari.download_dataset imports (the extra minari[hf])


def open_minari(dataset_id: str):
    """The local dataset under $MINARI_DATASETS_PATH (default ~/.minari/datasets), downloaded first if missing: the
    dataset, its episodes and its folder."""
    try:
        import minari
        from minari.storage import get_dataset_path
    except ImportError:
        raise DatasetError(f"{dataset_id} is a Minari dataset: pip install minari gymnasium-robotics") from None
    try:
        local = os.path.isdir(os.path.join(get_dataset_path(dataset_id), "data"))
    except OSError as e:  # MINARI_DATASETS_PATH a file, or a folder that cannot be made
        raise DatasetError(f"Minari's dataset folder cannot be used ({type(e).__name__}: {e})") from None
    if not local:
        try:
            minari.download_dataset(dataset_id)
        except ImportError as e:  # minari downloads from Hugging Face with the package of its [hf] extra
            raise DatasetError(
                f"downloading Minari dataset {dataset_id} needs {MINARI_DOWNLOAD_PACKAGE} (minari: {e}); "
                f"pip install 'minari[hf]=={getattr(minari, '__version__', '0.5.4')}' (as in requirements.txt)"
            ) from None
        except Exception as e:  # no network, unknown remote id
            raise DatasetError(
                f"Minari dataset {dataset_id} is not in {get_dataset_path()} and could not be downloaded "
                f"({type(e).__name__}: {e}); run `minari download {dataset_id}` where there is network "
                "access, and point MINARI_DATASETS_PATH at the folder that holds it".replace("\n", " ")
            ) from None
    try:  # its episodes are read here: a damaged file shows only when they are
        dataset = minari.load_dataset(dataset_id)
        return dataset, list(dataset.iterate_episodes()), str(get_dataset_path(dataset_id))
    except MemoryError:
        raise
    except Exception as e:  # a damaged or half-downloaded copy
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise DatasetError(
            f"Minari dataset {dataset_id} in {get_dataset_path(dataset_id)} cannot be read ({why}); delete that "
            "folder to download it again"
        ) from None


def load_minari(dataset_id: str) -> "DataSource":
    """Every step of every episode (next observations from the episode's own T + 1 observations, so nothing is lost
    at timeouts; terminals = terminations), the dataset's evaluation env with observations flattened as the data,
    and its reference returns (None where the dataset stores none)."""
    dataset, episodes, path = open_minari(dataset_id)
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if not (isinstance(act_space, gym.spaces.Box) and (act_space.low == -1).all() and (act_space.high == 1).all()):
        raise DatasetError(f"{dataset_id}: the policies act in [-1, 1]; the dataset's action space is {act_space}")
    parts = {k: [] for k in ("observations", "actions", "next_observations", "rewards", "terminals")}
    for episode in episodes:
        obs, steps = flatten_observation(obs_space, episode.observations), len(episode.rewards)
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32).reshape(steps, -1))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32).reshape(steps))
        parts["terminals"].append(np.asarray(episode.terminations, dtype=bool).reshape(steps))
    if not parts["rewards"]:
        raise DatasetError(f"Minari dataset {dataset_id} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    flat_space = gym.spaces.Box(-np.inf, np.inf, data["observations"].shape[1:], np.float32)

    def make_env() -> gym.Env:
        fix_gymnasium_robotics_joints()  # in the process that builds the env: an env worker imports a fresh module
        with settotalmass_warning_dropped():
            env = remove_model_file(dataset.recover_environment(eval_env=True))  # a maze env writes one
        return gym.wrappers.TransformObservation(env, lambda o: flatten_observation(obs_space, o), flat_space)

    env = make_env()  # built once now, so that a missing package or a mismatch shows before training
    try:
        obs_shape, spec = env.reset(seed=0)[0].shape, env.spec
    finally:
        env.close()
    if obs_shape != flat_space.shape:
        raise DatasetError(
            f"{dataset_id}: its evaluation env gives observations of shape {obs_shape}, the data {flat_space.shape}"
        )
    meta = dataset.storage.metadata
    return DataSource(
        data,
        path,
        flat_space.shape[0],
        act_space.shape[0],
        make_env,
        spec.id,
        meta.get("ref_min_score"),
        meta.get("ref_max_score"),
    )
