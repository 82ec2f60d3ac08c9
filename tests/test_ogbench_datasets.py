"""OGBench through offline_data/ogbench_datasets.py and the three scripts, offline: tiny files in ogbench's own layout
(the keys and dtypes of ogbench's data_gen_scripts: float32 observations, actions, qpos and qvel, bool terminals,
int64 button_states), recorded by stepping the real ogbench environments, where ogbench's loader finds them."""

import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections import defaultdict

import gymnasium as gym
import numpy as np
import pytest
import torch

import dql
import fql
import offline_data
import ofql
from conftest import ROOT
from offline_data.evaluation_envs import remove_model_file

ogbench = pytest.importorskip("ogbench")
ANTMAZE = "antmaze-large-navigate-singletask-task1-v0"
PUZZLE = "puzzle-3x3-play-singletask-task4-v0"
CUBE = "cube-double-play-singletask-task2-v0"


def place_beside_goal(env, gap: float, speed: float) -> None:
    """Put the ant `gap` metres outside the goal's radius (east of it), moving west at `speed` m/s."""
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), np.zeros_like(u.data.qvel)
    qpos[:2], qvel[0] = u.cur_goal_xy + np.array([u._goal_tol + gap, 0.0]), -speed
    u.set_state(qpos, qvel)


def solve_puzzle(env) -> None:
    """Set the puzzle's lights to the task's target (a full success)."""
    u = env.unwrapped
    u.set_state(u._data.qpos.copy(), u._data.qvel.copy(), u._target_button_states.copy())


@offline_data.ogbench_datasets.float32_cast_warning_ignored()  # ogbench's float64 action bounds, at each read
def record_ogbench(env_id: str, folder, steps=(30, 30), seed=0, start=None):
    """Write ogbench's train and -val files of `env_id`'s dataset into `folder`, one random-action trajectory per
    entry of `steps`; each row is the observation, action, done flag and state (info's prev_*) of one step, as in
    ogbench's generators. `start(env)` changes the state at the start of every trajectory after the first."""
    env = remove_model_file(ogbench.make_env_and_datasets(env_id, env_only=True))  # its temporary model file
    rng = np.random.default_rng(seed)
    rows = defaultdict(list)
    for episode, n in enumerate(steps):
        ob, _ = env.reset(seed=seed + episode)
        if start is not None and episode > 0:
            start(env)
            ob = env.unwrapped.compute_observation() if hasattr(env.unwrapped, "_data") else env.unwrapped.get_ob()
        for t in range(n):
            action = rng.uniform(-1, 1, env.action_space.shape)
            next_ob, _, _, _, info = env.step(action)
            rows["observations"].append(ob)
            rows["actions"].append(action)
            rows["terminals"].append(t == n - 1)
            rows["qpos"].append(info["prev_qpos"])
            rows["qvel"].append(info["prev_qvel"])
            if "prev_button_states" in info:
                rows["button_states"].append(info["prev_button_states"])
            ob = next_ob
    env.close()
    dtypes = defaultdict(lambda: np.float32, terminals=bool, button_states=np.int64)
    data = {k: np.asarray(v, dtype=dtypes[k]) for k, v in rows.items()}
    name = offline_data.ogbench_datasets.dataset_name(env_id)
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"{name}.npz"), **data)
    np.savez_compressed(os.path.join(folder, f"{name}-val.npz"), **{k: v[: steps[0]] for k, v in data.items()})
    return os.path.join(folder, f"{name}.npz")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Recorded files: AntMaze with a second trajectory that starts inside the goal, the 3x3 puzzle with a second one
    that starts solved (so success rows, masks 0, are in the data), and the double cube."""
    folder = tmp_path_factory.mktemp("ogbench")
    return {
        ANTMAZE: record_ogbench(ANTMAZE, folder / "antmaze", start=lambda env: place_beside_goal(env, -0.45, 0.0)),
        PUZZLE: record_ogbench(PUZZLE, folder / "puzzle", start=solve_puzzle),
        CUBE: record_ogbench(CUBE, folder / "cube", steps=(40, 40)),
    }


@pytest.mark.parametrize("env_id", [ANTMAZE, PUZZLE])
def test_the_scripts_train_on_ogbench_own_relabelling(files, env_id):
    """The batches the scripts draw hold ogbench's relabelled rewards, and done = 1 - ogbench's mask (not the file's
    terminals, which end trajectories)."""
    with offline_data.ogbench_datasets.float32_cast_warning_ignored():
        env, train, _ = ogbench.make_env_and_datasets(env_id, dataset_dir=os.path.dirname(files[env_id]))
    remove_model_file(env).close()
    assert 0 < train["masks"].sum() < len(train["masks"])  # successes and failures: a wrong mask shows
    assert not np.array_equal(1.0 - train["masks"], train["terminals"])
    source = offline_data.load(env_id, os.path.dirname(files[env_id]))
    for m in (ofql, dql, fql):
        buffer = m.OfflineBuffer(source.data, torch.device("cpu"))
        np.testing.assert_array_equal(buffer.rewards.squeeze(1).numpy(), train["rewards"])
        np.testing.assert_array_equal(1.0 - buffer.dones.squeeze(1).numpy(), train["masks"])
        for mine, theirs in ((buffer.obs, "observations"), (buffer.next_obs, "next_observations")):
            np.testing.assert_array_equal(mine.numpy(), train[theirs])
    assert source.scored_by_success and source.obs_dim == train["observations"].shape[1]


def test_another_task_of_a_family_relabels_the_familys_data_for_itself(files):
    """puzzle-3x3's file under task 1, not the family's default task 4: ogbench's rewards and masks for task 1."""
    task1, folder = PUZZLE.replace("task4", "task1"), os.path.dirname(files[PUZZLE])
    theirs = {}
    for env_id in (task1, PUZZLE):
        with offline_data.ogbench_datasets.float32_cast_warning_ignored():
            env, theirs[env_id], _ = ogbench.make_env_and_datasets(env_id, dataset_dir=folder)
        remove_model_file(env).close()
    assert not np.array_equal(theirs[task1]["rewards"], theirs[PUZZLE]["rewards"])  # the task shows in the numbers
    source = offline_data.load(task1, folder)
    np.testing.assert_array_equal(source.data["rewards"], theirs[task1]["rewards"])
    np.testing.assert_array_equal(1.0 - source.data["terminals"], theirs[task1]["masks"])


def test_each_familys_default_task_is_the_one_ogbench_runs_for_the_id_without_a_task():
    """OGBENCH_FAMILIES' numbers: the task ogbench's own env picks for `<family>-singletask-v0`."""
    for family, task in offline_data.ogbench_datasets.OGBENCH_FAMILIES.items():
        env = offline_data.ogbench_datasets.make_ogbench_env(f"{family}-singletask-v0")
        env.reset(seed=0)
        assert env.unwrapped._reward_task_id == task, family
        env.close()


def ogbench_scores_success(env_name: str, env) -> bool:
    """ogbench's own verdict on the env's current state: its single-task relabelling of that one state."""
    state = {"qpos": env.unwrapped.data.qpos[None].copy()}
    ogbench.relabel_utils.relabel_dataset(env_name, env, state)
    return state["masks"][0] == 0.0


class StartBesideTheGoal(gym.Wrapper):
    """Each episode starts just outside the goal, moving into it (or, far away, still)."""

    def __init__(self, env, gap, speed):
        super().__init__(env)
        self.gap, self.speed = gap, speed

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        place_beside_goal(self.env, self.gap, self.speed)
        return self.env.unwrapped.get_ob(), info


def test_the_evaluation_counts_a_success_where_ogbench_scores_one(files):
    """One-step episodes that start outside the goal: one enters it (ogbench scores the state reached a success),
    one stays far. The final step's success is that of the state after the action (FQL's timing: ogbench >= 1.2's
    default would score the state before it, a failure): success 1 and score 100, then 0 and 0."""
    source = offline_data.load(ANTMAZE, os.path.dirname(files[ANTMAZE]))
    starts = [(0.02, 2.0), (3.0, 0.0)]  # (gap, speed): into the goal in one step; far and still
    make = [lambda g=g, v=v: gym.wrappers.TimeLimit(StartBesideTheGoal(source.make_env(), g, v), 1) for g, v in starts]
    envs = gym.vector.SyncVectorEnv(make)
    _, successes, _ = offline_data.run_episodes(lambda obs: torch.zeros(len(obs), 8), envs, [0, 1], torch.device("cpu"))
    verdicts = [ogbench_scores_success(source.eval_env_id, env) for env in envs.envs]
    assert verdicts == [True, False] and successes.tolist() == [1.0, 0.0]
    stats = source.episode_stats(np.zeros(2), successes)
    assert stats["success"] == 0.5 and stats["score"] == 50.0
    envs.close()


def run_script(script, tmp_path, *flags):
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    steps = ["--total-steps", "4", "--eval-every", "4", "--log-every", "2", "--batch-size", "16"]
    cmd = [sys.executable, os.path.join(ROOT, script), *flags, *steps, "--eval-episodes", "2", "--no-cuda"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script, where", [("ofql.py", "cache"), ("dql.py", "folder"), ("fql.py", "file")])
def test_each_script_trains_and_evaluates_on_the_recorded_file(files, tmp_path, script, where):
    """End to end, no network: the file in ogbench's cache (~/.ogbench/data under a temporary HOME), its folder, or the
    file itself; evaluations report the success rate and the score 100 x success."""
    flags = ["--env-id", CUBE, "--num-candidates", "1"]
    if where == "cache":
        os.makedirs(tmp_path / ".ogbench")
        os.symlink(os.path.dirname(files[CUBE]), tmp_path / ".ogbench" / "data")
    else:
        flags += ["--dataset-path", files[CUBE] if where == "file" else os.path.dirname(files[CUBE])]
    proc = run_script(script, tmp_path, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(open(tmp_path / proc.stdout.strip().splitlines()[-1].split(" ", 1)[1]).read())
    (evaluation,) = summary["evaluations"]
    assert summary["source"] == "ogbench" and summary["eval_env"] == "cube-double-singletask-task2-v0"
    assert evaluation["success"] in (0.0, 0.5, 1.0) and evaluation["score"] == 100 * evaluation["success"]
    assert summary["final_success"] == evaluation["success"] and summary["final_score"] == evaluation["score"]
    run_dir = os.path.dirname(tmp_path / proc.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert records[-1]["eval/success"] == evaluation["success"]
    assert json.load(open(os.path.join(run_dir, "config.json")))["transitions"] == 78  # 2 x 40 rows, 2 trajectory ends


@pytest.mark.parametrize("module", [ofql, dql, fql])
def test_every_task_of_a_family_takes_its_preset(module):
    """The five tasks of each family and its default id resolve to the family's preset; a sixth task is unknown."""
    for default in offline_data.ogbench_datasets.OGBENCH_FAMILIES:
        expected = module.parse_args(["--env-id", f"{default}-singletask-v0"])
        for task in range(1, 6):
            args = module.parse_args(["--env-id", f"{default}-singletask-task{task}-v0"])
            assert dataclasses_equal_but_env_id(args, expected)
        with pytest.raises(offline_data.UserError, match="unknown --env-id"):
            module.parse_args(["--env-id", f"{default}-singletask-task6-v0"])


def dataclasses_equal_but_env_id(a, b) -> bool:
    return {**vars(a), "env_id": None} == {**vars(b), "env_id": None}


def test_help_marks_the_unpublished_presets(capsys):
    """dql.py says its OGBench eta is not published (DQL's D4RL ones are); ofql.py, that its eta is inferred for every
    dataset (the paper publishes only its grid); fql.py's are FQL's own."""
    for module, note in ((ofql, "are inferred"), (dql, "not published for OGBench"), (fql, None)):
        with pytest.raises(SystemExit):
            module.parse_args(["--env-id", CUBE, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        found = [marker for marker in ("are inferred", "not published for OGBench") if marker in out]
        assert found == ([note] if note else [])


def test_bad_ogbench_files_are_one_clear_error(files, tmp_path, monkeypatch):
    """A damaged npz, a truncated one, one without ogbench's state arrays, a train file without its -val file, arrays
    of another width or rank, and a dataset that is not in the cache with no network: each one DatasetError that names
    the problem."""
    good = open(files[CUBE], "rb").read()
    cases = {"garbage": b"not an npz at all", "cut": good[: len(good) // 2]}
    for name, content in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cube-double-play-v0.npz").write_bytes(content)
        (folder / "cube-double-play-v0-val.npz").write_bytes(content)
        with pytest.raises(offline_data.DatasetError, match="not a usable OGBench npz file"):
            offline_data.load(CUBE, str(folder))
    arrays = dict(np.load(files[CUBE]))
    del arrays["qpos"]
    np.savez_compressed(tmp_path / "noqpos.npz", **arrays)
    np.savez_compressed(tmp_path / "noqpos-val.npz", **arrays)
    with pytest.raises(offline_data.DatasetError, match="not a usable OGBench npz file.*qpos"):
        offline_data.load(CUBE, str(tmp_path / "noqpos.npz"))
    os.rename(tmp_path / "noqpos-val.npz", tmp_path / "other.npz")
    with pytest.raises(offline_data.DatasetError, match="noqpos-val.npz does not exist"):
        offline_data.load(CUBE, str(tmp_path / "noqpos.npz"))
    open_end, cut = dict(np.load(files[CUBE])), dict(np.load(files[CUBE]))
    open_end["terminals"][-1] = False  # ogbench then pairs the last row with none: a next_observations short
    cut["actions"] = cut["actions"][:-5]
    for name, arrays, message in (("open", open_end, "unequal lengths"), ("cut", cut, "not a usable OGBench npz")):
        np.savez_compressed(tmp_path / f"{name}.npz", **arrays)
        np.savez_compressed(tmp_path / f"{name}-val.npz", **arrays)
        with pytest.raises(offline_data.DatasetError, match=message):
            offline_data.load(CUBE, str(tmp_path / f"{name}.npz"))
    for key, width in (("observations", 36), ("actions", 4)):  # a column short: the task's env needs 37 and 5
        arrays = dict(np.load(files[CUBE]))
        arrays[key] = arrays[key][:, :width]
        np.savez_compressed(tmp_path / f"{key}.npz", **arrays)
        np.savez_compressed(tmp_path / f"{key}-val.npz", **arrays)
        with pytest.raises(offline_data.DatasetError, match=rf"'{key}' has shape \(\d+, {width}\), {CUBE} needs"):
            offline_data.load(CUBE, str(tmp_path / f"{key}.npz"))
    arrays = dict(np.load(files[CUBE]))
    arrays["observations"] = arrays["observations"][..., None]  # (N, 37, 1): its second size right, its rank not
    np.savez_compressed(tmp_path / "deep.npz", **arrays)
    np.savez_compressed(tmp_path / "deep-val.npz", **arrays)
    with pytest.raises(offline_data.DatasetError, match=r"'observations' has shape \(\d+, 37, 1\)"):
        offline_data.load(CUBE, str(tmp_path / "deep.npz"))

    (tmp_path / "a_file").write_text("")  # a --dataset-path under a file: an OSError that is not a download's
    with pytest.raises(offline_data.DatasetError, match="not a usable OGBench npz file.*NotADirectoryError"):
        offline_data.load(CUBE, str(tmp_path / "a_file" / "x.npz"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(
        offline_data.DatasetError,
        match=r"cube-double-play-v0 is not in .*could not be downloaded.*\(sweep.py --env-ids: --dataset-paths\)",
    ):
        offline_data.load(CUBE)

    monkeypatch.setattr(urllib.request, "urlopen", CutDownload)
    (tmp_path / "cache").mkdir()
    with pytest.raises(offline_data.DatasetError, match=r"could not be downloaded \(IncompleteRead"):
        offline_data.load(CUBE, str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []  # its partial file removed


class CutDownload:
    """urlopen's response whose connection drops after the first chunk."""

    headers = {}

    def __init__(self, url, timeout=None):
        self.chunks = [b"PK"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def read(self, size):
        if self.chunks:
            return self.chunks.pop()
        raise http.client.IncompleteRead(b"PK", 1000)


def test_a_train_file_without_its_val_file_names_where_ogbench_looks_for_it(files, tmp_path):
    """--dataset-path a train file alone: the missing file is named with where ogbench reads it, beside the train
    file (a user who gave one file cannot guess that a second one is read)."""
    train = shutil.copy(files[CUBE], tmp_path / "mine.npz")
    with pytest.raises(offline_data.DatasetError, match=r"mine-val.npz does not exist \(ogbench reads it beside mine"):
        offline_data.load(CUBE, str(train))


def test_a_cut_download_of_a_val_file_beside_a_cached_train_file_is_named_and_its_part_removed(
    files, tmp_path, monkeypatch
):
    """A cache folder that holds the train file only, and the download of its -val file drops: the download is named
    (not the train file, a good one, called unusable), its partial file removed and the train file kept."""

    monkeypatch.setattr(urllib.request, "urlopen", CutDownload)
    (tmp_path / "cache").mkdir()
    shutil.copy(files[CUBE], tmp_path / "cache" / "cube-double-play-v0.npz")
    with pytest.raises(offline_data.DatasetError, match=r"cube-double-play-v0 is not in .*downloaded \(IncompleteRead"):
        offline_data.load(CUBE, str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == ["cube-double-play-v0.npz"]


def test_a_download_writes_a_file_of_its_own_and_leaves_another_processs_alone(files, tmp_path, monkeypatch):
    """Processes that share ogbench's cache download its files each to a part file of its own, renamed when whole:
    the `.tmp` file that ogbench's own download writes for every process (another one's, under way) is left alone,
    after a download and after a cut one, a killed process's part file is removed, and nothing else is left."""
    payloads, seen = {}, []
    for name in ("cube-double-play-v0.npz", "cube-double-play-v0-val.npz"):
        with open(os.path.join(os.path.dirname(files[CUBE]), name), "rb") as f:
            payloads[name] = f.read()

    class Response(io.BytesIO):
        headers = {}

        def __init__(self, url, timeout=None):
            super().__init__(payloads[url.rsplit("/", 1)[1]])

        def __enter__(self):
            return self

        def read(self, size):  # the folder while this file streams
            seen.append(sorted(os.listdir(tmp_path / "cache")))
            return super().read(size)

        def __exit__(self, *exc):
            pass

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cube-double-play-v0.npz.tmp").write_bytes(b"another process's, under way")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its part file, of a download killed before its end, is removed
    (tmp_path / "cache" / f"cube-double-play-v0-val.npz.part-{socket.gethostname()}-{dead.pid}").write_bytes(b"PK")
    monkeypatch.setattr(urllib.request, "urlopen", Response)
    source = offline_data.load(CUBE, str(tmp_path / "cache"))
    assert source.obs_dim == 37
    own = f"cube-double-play-v0.npz.part-{socket.gethostname()}-{os.getpid()}"
    assert seen[0] == sorted(["cube-double-play-v0.npz.tmp", own])
    after = ["cube-double-play-v0-val.npz", "cube-double-play-v0.npz", "cube-double-play-v0.npz.tmp"]
    assert sorted(os.listdir(tmp_path / "cache")) == after
    assert (tmp_path / "cache" / "cube-double-play-v0.npz.tmp").read_bytes() == b"another process's, under way"
    (tmp_path / "cache" / "cube-double-play-v0-val.npz").unlink()
    monkeypatch.setattr(urllib.request, "urlopen", CutDownload)
    with pytest.raises(offline_data.DatasetError, match=r"could not be downloaded \(IncompleteRead"):
        offline_data.load(CUBE, str(tmp_path / "cache"))
    assert sorted(os.listdir(tmp_path / "cache")) == after[1:]


def test_bad_input_exits_2_with_one_line(files, tmp_path):
    """Through the script: an unknown task and a damaged file, one line on stderr each, exit code 2."""
    (tmp_path / "bad").mkdir()
    for name in ("cube-double-play-v0.npz", "cube-double-play-v0-val.npz"):
        (tmp_path / "bad" / name).write_bytes(b"damaged")
    for flags in (["--env-id", "cube-double-play-singletask-task9-v0"], ["--env-id", CUBE, "--dataset-path", "bad"]):
        proc = run_script("ofql.py", tmp_path, *flags)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("ofql.py: error: ")


@pytest.mark.parametrize("env_id", ["antmaze-large-navigate-singletask-v0", "antsoccer-arena-navigate-singletask-v0"])
def test_a_seeded_reset_gives_one_start_and_leaves_numpys_generator_as_it_was(env_id):
    """ogbench's mazes and antsoccer draw their start's noise from numpy's global generator: the evaluation env's
    reset(seed) must still give one start per seed (every evaluation the same starts), a reset without a seed one that
    the env's seed decides (the same in a worker process), and neither may move that generator."""
    env = offline_data.ogbench_datasets.make_ogbench_env(env_id)
    np.random.seed(0)
    starts = [env.reset(seed=s)[0] for s in (5, 5, 6)]
    assert np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[0], starts[2])
    env.reset(seed=4294967295 + 100 + 10**6 * 49)  # the largest --seed's evaluation env 49: past numpy's seeds
    after = [(env.reset(seed=5), env.reset()[0])[1] for _ in range(2)]  # unseeded: from the env's own generator
    assert np.array_equal(after[0], after[1]) and not np.array_equal(after[0], starts[0])
    assert np.random.randint(1 << 30) == np.random.RandomState(0).randint(1 << 30)
    env.close()


@pytest.mark.parametrize("env_id", [CUBE, "puzzle-3x3-play-singletask-v0"])
def test_a_manipulation_env_runs_without_gymnasiums_float32_cast_warning(env_id):
    """ogbench's cube, scene and puzzle envs build their action space anew at each read, with float64 bounds that
    gymnasium casts to float32 with a warning: read through the evaluation env (its resets too), the space is read
    once and warns nothing; it is ogbench's own space."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = offline_data.ogbench_datasets.make_ogbench_env(env_id)
        env.reset(seed=0)
        for _ in range(2):
            env.step(env.action_space.sample())
        env.reset()
    assert [str(w.message) for w in caught if "precision lowered" in str(w.message)] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert env.action_space == env.unwrapped.action_space and env.action_space is env.action_space
    env.close()
