"""Every domain of the paper from both sources, through the script as a subprocess: a tiny file in the D4RL hdf5
layout (recorded in the evaluation adapter itself) and a tiny Minari dataset written with minari's own writer
under a temporary MINARI_DATASETS_PATH each train for a few steps and evaluate in their environment."""

import json
import os
import subprocess
import sys
import tempfile
import warnings

import gymnasium as gym
import h5py
import numpy as np
import pytest

import offline_data
import ofql
from conftest import ROOT, record_d4rl_file

minari = pytest.importorskip("minari")
gymnasium_robotics = pytest.importorskip("gymnasium_robotics")
from minari.data_collector import EpisodeBuffer  # noqa: E402

gym.register_envs(gymnasium_robotics)

# D4RL id -> (the Minari id of the same task family, a gymnasium env to record it in, its kwargs)
DOMAINS = {
    "hopper-medium-v2": ("mujoco/hopper/medium-v0", "Hopper-v5", {}),
    "antmaze-medium-play-v2": (
        "D4RL/antmaze/medium-play-v1",
        "AntMaze_Medium-v4",
        {"continuing_task": True, "reset_target": False},
    ),
    "kitchen-mixed-v0": (
        "D4RL/kitchen/mixed-v2",
        "FrankaKitchen-v1",
        {
            "tasks_to_complete": ["microwave", "kettle", "bottom burner", "light switch"],
            "remove_task_when_completed": False,
            "terminate_on_tasks_completed": False,
        },
    ),
    "pen-human-v1": ("D4RL/pen/human-v2", "AdroitHandPen-v1", {}),
}


def run(script, tmp_path, *flags):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "MINARI_DATASETS_PATH": str(tmp_path / "minari"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, script),
            *flags,
            "--total-steps",
            "6",
            "--eval-every",
            "6",
            "--log-every",
            "3",
            "--batch-size",
            "16",
            "--eval-episodes",
            "2",
            "--num-candidates",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(open(tmp_path / proc.stdout.strip().splitlines()[-1].split(" ", 1)[1]).read())


def record_adapter_file(path, env_id, steps=60, seed=0):
    """Random actions in the D4RL adapter, written in the D4RL layout (observations, actions, rewards, terminals,
    timeouts)."""
    env, rng = offline_data.eval_env_factory(env_id)(), np.random.default_rng(seed)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for t in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        timeout = t % 20 == 19 and not terminated
        for key, value in zip(rows, (obs, action, reward, terminated, timeout)):
            rows[key].append(value)
        obs = env.reset(seed=seed + t)[0] if terminated or timeout else next_obs
    env.close()
    with h5py.File(path, "w") as f:
        for key, value in rows.items():
            f[key] = np.asarray(value, dtype=bool if key in ("terminals", "timeouts") else np.float32)


def stacked(xs):
    """Stack a list of observations (arrays, or dicts of them) along a new first axis."""
    return {k: stacked([x[k] for x in xs]) for k in xs[0]} if isinstance(xs[0], dict) else np.stack(xs)


def record_minari_dataset(dataset_id, gym_id, kwargs, episodes=2, steps=8):
    offline_data.d4rl_envs.fix_gymnasium_robotics_joints()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(gym_id, **kwargs)
    buffers = []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        for t in range(steps):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terms.append(bool(terminated))
            truncs.append(bool(truncated or (t == steps - 1 and not terminated)))
            if terminated or truncs[-1]:
                break
        buffers.append(
            EpisodeBuffer(
                seed=seed,
                observations=stacked(observations),
                actions=np.stack(actions),
                rewards=rewards,
                terminations=terms,
                truncations=truncs,
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            ref_min_score=0.0,
            ref_max_score=100.0,
            algorithm_name="random",
            author="test",
            author_email="test@example.com",
            code_permalink="https://example.com",
            description="tiny",
            data_format="hdf5",
        )


@pytest.mark.parametrize("env_id", list(DOMAINS))
def test_d4rl_layout_file_trains_and_evaluates(tmp_path, env_id):
    path = tmp_path / "data.hdf5"
    if env_id.startswith("hopper"):
        record_d4rl_file(path, episodes=2, max_steps=30)
    else:
        record_adapter_file(path, env_id)
    summary = run("ofql.py", tmp_path, "--env-id", env_id, "--dataset-path", str(path))
    e = summary["evaluations"][0]
    assert (
        summary["eval_env"] == offline_data.d4rl_files.domain_of(env_id).eval_env
        and e["step"] == 6
        and summary["source"] == "d4rl"
    )
    assert e["score"] == pytest.approx(offline_data.normalized_score(env_id, e["return"]), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("env_id", list(DOMAINS))
def test_minari_dataset_trains_and_evaluates(tmp_path, monkeypatch, env_id):
    dataset_id, gym_id, kwargs = DOMAINS[env_id]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the recording AntMaze's maze files, left by its env
    record_minari_dataset(dataset_id, gym_id, kwargs)
    summary = run("ofql.py", tmp_path, "--env-id", dataset_id)
    e = summary["evaluations"][0]
    assert summary["env_id"] == dataset_id and summary["eval_env"] == gym_id and summary["source"] == "minari"
    assert summary["final_return"] == e["return"]
    assert summary["dataset"] == os.path.join(str(tmp_path / "minari"), dataset_id)
    assert e["score"] == pytest.approx(e["return"], rel=1e-6)  # the dataset's own reference returns: 0 and 100
    config = json.loads(open(os.path.join(tmp_path, "runs", os.listdir(tmp_path / "runs")[0], "config.json")).read())
    assert config["eta"] == ofql.PRESETS[env_id]["eta"]  # the preset of the D4RL family


@pytest.mark.parametrize("script", ["dql.py", "fql.py"])
def test_the_baselines_take_minari_ids_too(tmp_path, monkeypatch, script):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    record_minari_dataset("D4RL/pen/human-v2", "AdroitHandPen-v1", {})
    summary = run(script, tmp_path, "--env-id", "D4RL/pen/human-v2")
    assert summary["algorithm"] == script[:-3] and summary["evaluations"][0]["step"] == 6
