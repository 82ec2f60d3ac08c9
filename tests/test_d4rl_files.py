"""offline_data's D4RL loader on small files in the exact D4RL layout; the network is never touched."""

import hashlib
import http.client
import io
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings

import gymnasium as gym
import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import offline_data
import ofql
from conftest import record_d4rl_file


def d4rl_qlearning_loop(dataset, max_episode_steps=1000):
    """d4rl.qlearning_dataset (d4rl 1.1, terminate_on_end=False), transcribed as the plain loop it is."""
    n = dataset["rewards"].shape[0]
    obs_, next_obs_, action_, reward_, done_ = [], [], [], [], []
    use_timeouts = "timeouts" in dataset
    episode_step = 0
    for i in range(n - 1):
        done_bool = bool(dataset["terminals"][i])
        final_timestep = dataset["timeouts"][i] if use_timeouts else episode_step == max_episode_steps - 1
        if final_timestep:
            episode_step = 0
            continue
        if done_bool or final_timestep:
            episode_step = 0
        obs_.append(dataset["observations"][i])
        next_obs_.append(dataset["observations"][i + 1])
        action_.append(dataset["actions"][i])
        reward_.append(dataset["rewards"][i])
        done_.append(done_bool)
        episode_step += 1
    return {
        "observations": np.array(obs_, dtype=np.float32),
        "actions": np.array(action_, dtype=np.float32),
        "next_observations": np.array(next_obs_, dtype=np.float32),
        "rewards": np.array(reward_, dtype=np.float32),
        "terminals": np.array(done_, dtype=bool),
    }


def test_qlearning_semantics_on_a_hand_made_case():
    """12 rows, timeouts at rows 4 and 9, a terminal at row 6: rows 4, 9 and the last row are dropped, the next
    observation is the next row (even across the terminal), and done is set only at row 6."""
    obs = np.arange(12, dtype=np.float32)[:, None]
    terminals, timeouts = np.zeros(12, bool), np.zeros(12, bool)
    terminals[6], timeouts[[4, 9]] = True, True
    data = {
        "observations": obs,
        "actions": obs * 10,
        "rewards": obs[:, 0] * 100,
        "terminals": terminals,
        "timeouts": timeouts,
    }
    out = offline_data.d4rl_files.qlearning_dataset(data)
    rows = [0, 1, 2, 3, 5, 6, 7, 8, 10]
    np.testing.assert_array_equal(out["observations"][:, 0], rows)
    np.testing.assert_array_equal(out["next_observations"][:, 0], np.array(rows) + 1)
    np.testing.assert_array_equal(out["actions"][:, 0], np.array(rows) * 10)
    np.testing.assert_array_equal(out["rewards"], np.array(rows) * 100)
    np.testing.assert_array_equal(out["terminals"], np.array(rows) == 6)


@pytest.mark.parametrize("with_timeouts", [True, False])
def test_qlearning_matches_d4rl_loop_on_random_flags(with_timeouts):
    rng = np.random.default_rng(0)
    n = 5000
    data = {
        "observations": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.normal(size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": rng.random(n) < 0.01,
    }
    if with_timeouts:
        data["timeouts"] = rng.random(n) < 0.01
        data["timeouts"][np.flatnonzero(data["terminals"])[:5]] = True  # rows with both flags
    expected, got = d4rl_qlearning_loop(data, 37), offline_data.d4rl_files.qlearning_dataset(data, 37)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(got[key], expected[key])


def test_real_layout_file_loads_with_d4rl_semantics(tmp_path):
    """A file with every D4RL key (infos/*, scalar metadata/*) and real falls and timeouts."""
    path = tmp_path / "hopper_medium-v2.hdf5"
    rows = record_d4rl_file(path, episodes=8, max_steps=20, seed=3)
    assert rows["terminals"].any() and rows["timeouts"].any()
    data = offline_data.d4rl_files.load_d4rl("hopper-medium-v2", str(path), "raw")
    expected = d4rl_qlearning_loop(
        {k: rows[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    )
    for key in expected:
        np.testing.assert_array_equal(data[key], expected[key])
    within_episode = ~data["terminals"]  # inside an episode the next observation is the recorded one
    np.testing.assert_allclose(
        data["next_observations"][within_episode],
        rows["next_observations"][:-1][~rows["timeouts"][:-1]][within_episode],
    )


def test_cached_file_is_used_and_no_download_is_attempted(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "cache"))
    path = offline_data.d4rl_files.dataset_cache_path("hopper-medium-replay-v2")
    assert path == str(tmp_path / "cache" / "hopper_medium_replay-v2.hdf5")
    os.makedirs(os.path.dirname(path))
    record_d4rl_file(path)

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert len(offline_data.d4rl_files.load_d4rl("hopper-medium-replay-v2", None, "raw")["rewards"]) > 0


def test_default_cache_dir_is_d4rls(monkeypatch):
    monkeypatch.delenv("D4RL_DATASET_DIR", raising=False)
    assert offline_data.d4rl_files.dataset_cache_path("walker2d-medium-expert-v2") == os.path.expanduser(
        "~/.d4rl/datasets/walker2d_medium_expert-v2.hdf5"
    )


def test_urls_follow_d4rls_naming():
    assert offline_data.DATASETS["halfcheetah-medium-v2"][0] == "gym_mujoco_v2/halfcheetah_medium-v2.hdf5"
    assert offline_data.DATASETS["hopper-medium-replay-v2"][0] == "gym_mujoco_v2/hopper_medium_replay-v2.hdf5"
    assert offline_data.DATASETS["antmaze-large-diverse-v2"][0] == (
        "ant_maze_v2/Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5"
    )
    assert offline_data.DATASETS["kitchen-mixed-v0"][0] == "kitchen/kitchen_microwave_kettle_bottomburner_light-v0.hdf5"
    assert offline_data.DATASETS["pen-cloned-v1"][0] == "hand_dapg_v1/pen-cloned-v1.hdf5"
    for env_id in ("door-cloned-v1", "hammer-cloned-v1", "relocate-cloned-v1"):
        assert offline_data.DATASETS[env_id][0] == f"hand_dapg_v1/{env_id}.hdf5"
    assert offline_data.DATASETS["antmaze-umaze-v2"][0] == (
        "ant_maze_v2/Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5"
    )


class FakeResponse(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fake_urlopen(payload: bytes, fail_after: int = -1):
    def urlopen(url, timeout=None):
        if fail_after == 0:
            raise urllib.error.URLError("Name or service not known")
        return FakeResponse(payload)

    return urlopen


def test_download_verifies_and_renames(tmp_path, monkeypatch):
    payload = b"x" * 3_000_000
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(payload))
    path = str(tmp_path / "d" / "file.hdf5")
    offline_data.d4rl_files.download(
        "http://example.invalid/file.hdf5", path, len(payload), hashlib.sha256(payload).hexdigest()
    )
    assert open(path, "rb").read() == payload
    assert os.listdir(tmp_path / "d") == ["file.hdf5"]


def test_sha256_mismatch_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(b"corrupted bytes"))
    path = str(tmp_path / "file.hdf5")
    with pytest.raises(offline_data.DatasetError, match="sha256"):
        offline_data.d4rl_files.download("http://example.invalid/file.hdf5", path, None, "0" * 64)
    assert os.listdir(tmp_path) == []


def test_truncated_download_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(b"only part"))
    with pytest.raises(offline_data.DatasetError, match="incomplete"):
        offline_data.d4rl_files.download("http://example.invalid/file.hdf5", str(tmp_path / "file.hdf5"), 10**6, None)
    assert os.listdir(tmp_path) == []


def test_offline_and_not_cached_names_the_url_and_the_place(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(b"", fail_after=0))
    with pytest.raises(offline_data.DatasetError) as info:
        offline_data.d4rl_files.load_d4rl("walker2d-medium-v2", None, "raw")
    message = str(info.value)
    assert offline_data.d4rl_files.D4RL_URL + "gym_mujoco_v2/walker2d_medium-v2.hdf5" in message
    assert str(tmp_path / "walker2d_medium-v2.hdf5") in message and "--dataset-path" in message
    assert os.listdir(tmp_path) == []


def test_corrupt_file_is_a_clear_error(tmp_path, monkeypatch):
    """A damaged file gets "delete it and download it again" only in the download cache: a --dataset-path file may
    be the user's only copy, and the error says what is wrong with it instead."""
    broken = b"\x89HDF\r\n\x1a\n" + b"\0" * 100
    (tmp_path / "broken.hdf5").write_bytes(broken)
    with pytest.raises(offline_data.DatasetError, match="broken.hdf5 is a damaged hdf5 file") as info:
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", str(tmp_path / "broken.hdf5"), "raw")
    assert "delete" not in str(info.value)
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    (tmp_path / "hopper_medium-v2.hdf5").write_bytes(broken)
    with pytest.raises(offline_data.DatasetError, match="delete it and download it again"):
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", None, "raw")


def test_a_dataset_path_that_is_not_usable_says_why(tmp_path, hopper_file, monkeypatch):
    """Not an hdf5 file, a truncated one, a directory, a file that may not be read: each named as such, never with
    advice to delete it."""
    cases = {"text.hdf5": b"observations,actions\n1,2\n", "cut.hdf5": open(hopper_file, "rb").read()[:3000]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    expected = {"text.hdf5": "is not an hdf5 file", "cut.hdf5": "is truncated", "": "is a directory"}
    for name, message in expected.items():
        with pytest.raises(offline_data.DatasetError, match=message) as info:
            offline_data.d4rl_files.load_d4rl("hopper-medium-v2", str(tmp_path / name), "raw")
        assert "delete" not in str(info.value) and "does not exist" not in str(info.value)

    def no_permission(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    # as root, chmod 000 would not stop it
    monkeypatch.setattr(offline_data.d4rl_files, "open", no_permission, raising=False)
    with pytest.raises(offline_data.DatasetError, match=r"cannot read .*hopper_medium-v2.hdf5 \(Permission denied\)"):
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")


def rewrite(path, key, value):
    with h5py.File(path, "a") as f:
        del f[key]
        if value is not None:
            f[key] = value


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("rewards", np.array([b"high"] * 160), "'rewards' holds |S4 values, not numbers"),
        ("observations", np.float32(1.0), r"'observations' has shape \(\), hopper-medium-v2 needs"),
        ("actions", None, "lacks the D4RL key"),
        ("terminals", np.full(160, np.nan, np.float32), "'terminals' must hold 0/1 flags"),
        ("actions", np.full((160, 3), 2.0, np.float32), r"actions outside \[-1, 1\]"),
    ],
)
def test_malformed_arrays_are_one_line_errors(hopper_file, key, value, message):
    rows = len(h5py.File(hopper_file, "r")["rewards"])
    if value is not None and value.ndim and len(value) == 160:
        value = value[:rows] if len(value) >= rows else np.resize(value, (rows,) + value.shape[1:])
    rewrite(hopper_file, key, value)
    with pytest.raises(offline_data.DatasetError, match=message):
        offline_data.load("hopper-medium-v2", hopper_file)


def test_actions_slightly_outside_the_bounds_load_as_they_are(hopper_file):
    """Only another scale is refused (max |a| > 1.5): real recordings overshoot [-1, 1] a little."""
    rows = len(h5py.File(hopper_file, "r")["rewards"])
    rewrite(hopper_file, "actions", np.full((rows, 3), 1.05, np.float32))
    data = offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")
    assert np.allclose(data["actions"], 1.05)


def test_rows_out_of_episode_order_are_refused(hopper_file):
    """Shuffled rows (every key alike): the following row is no longer the next observation, which the file's own
    next_observations show; the recorded order loads (a test of its own above)."""
    with h5py.File(hopper_file, "a") as f:
        order = np.random.default_rng(0).permutation(len(f["rewards"]))
        for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
            f[key][...] = f[key][()][order]
    message = r"its 'next_observations' differ from the following row's observation in \d+% of the rows that go on"
    with pytest.raises(offline_data.DatasetError, match=message):
        offline_data.load("hopper-medium-v2", hopper_file)


def in_order(rows: int, goes_on: list[int]) -> dict:
    """Rows 0, 1, 2, ... in episode order; those not in goes_on end an episode (a timeout; next_observations -1)."""
    obs = np.arange(2 * rows, dtype=np.float32).reshape(rows, 2)
    timeouts = ~np.isin(np.arange(rows), goes_on)
    next_obs = np.where(timeouts[:, None], -1.0, np.roll(obs, -1, axis=0)).astype(np.float32)
    return dict(observations=obs, terminals=np.zeros(rows, bool), timeouts=timeouts, next_observations=next_obs)


def test_the_episode_order_check_reads_the_rows_that_go_on():
    """Short episodes in order load (rows that end one are not compared); 4 rows of 11 agreeing are refused; a
    next_observations of another shape is not read (D4RL ignores the key)."""
    data = in_order(12, goes_on=[0, 3, 6, 9])  # 8 of the 12 rows end an episode
    offline_data.d4rl_files.check_episode_order("x", data)
    assert "next_observations" not in data  # read, then dropped
    data = in_order(12, goes_on=list(range(12)))
    data["next_observations"][:7] += 100  # 4 of the 11 rows that go on agree with the following row
    with pytest.raises(offline_data.DatasetError, match=r"following row's observation in 64% of the rows that go on"):
        offline_data.d4rl_files.check_episode_order("x", data)
    data = in_order(12, goes_on=list(range(12)))
    data["next_observations"] = data["next_observations"][:-1]
    offline_data.d4rl_files.check_episode_order("x", data)


def test_a_group_where_an_array_should_be(hopper_file):
    with h5py.File(hopper_file, "a") as f:
        del f["rewards"]
        f.create_group("rewards").create_dataset("x", data=np.zeros(3))
    with pytest.raises(offline_data.DatasetError, match="'rewards' is a Group, not an array"):
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")


def test_randomly_corrupted_files_load_or_stop_with_one_line(tmp_path):
    """300 copies of a small D4RL-layout file, each with a few random bytes overwritten (seeded): every copy either
    loads, with arrays of the right shapes and finite values, or stops with the module's one-line DatasetError."""
    path = tmp_path / "hopper_medium-v2.hdf5"
    record_d4rl_file(path, episodes=2, max_steps=10)
    original, rng = path.read_bytes(), np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(300):
        damaged = bytearray(original)
        for offset in rng.integers(0, len(damaged), rng.integers(1, 9)):
            damaged[offset] = rng.integers(256)
        copy = tmp_path / f"copy{i}.hdf5"
        copy.write_bytes(bytes(damaged))
        try:
            data = offline_data.d4rl_files.load_d4rl("hopper-medium-v2", str(copy), "raw")
        except offline_data.DatasetError as e:
            assert "\n" not in str(e) and "delete" not in str(e)
            outcomes["refused"] += 1
        else:
            n = len(data["observations"])
            assert data["observations"].shape == data["next_observations"].shape == (n, 11)
            assert data["actions"].shape == (n, 3) and data["rewards"].shape == data["terminals"].shape == (n,)
            assert all(np.isfinite(data[k]).all() for k in ("observations", "actions", "rewards"))
            outcomes["loaded"] += 1
        copy.unlink()
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0


def test_a_cache_folder_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "file" / "datasets"))  # under a file: never a folder
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(b"unused"))
    with pytest.raises(offline_data.DatasetError, match="cannot create the dataset folder .*D4RL_DATASET_DIR"):
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", None, "raw")


def test_a_download_shorter_than_its_content_length_is_refused(tmp_path, monkeypatch):
    """antmaze-medium-play-v2 and Kitchen have no known size or sha256: the server's Content-Length is the check."""
    response = fake_urlopen(b"x" * 1000)

    def urlopen(url, timeout=None):
        r = response(url, timeout)
        r.headers = {"Content-Length": "5000"}
        return r

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(offline_data.DatasetError, match=r"incomplete \(1000 of 5000 bytes\)"):
        offline_data.d4rl_files.download("http://example.invalid/f.hdf5", str(tmp_path / "f.hdf5"), None, None)
    assert os.listdir(tmp_path) == []


def test_a_response_cut_off_mid_stream_is_one_line(tmp_path, monkeypatch):
    """http.client's IncompleteRead (a chunked response cut off) is neither URLError nor OSError: still one line."""
    response = fake_urlopen(b"x" * 1000)

    def cut_off(n=-1):
        raise http.client.IncompleteRead(b"x", 10)

    def urlopen(url, timeout=None):
        r = response(url, timeout)
        r.read = cut_off
        return r

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(
        offline_data.DatasetError,
        match=r"could not download .*IncompleteRead.*--dataset-path FILE \(sweep.py --env-ids: --dataset-paths\)",
    ):
        offline_data.d4rl_files.download("http://example.invalid/f.hdf5", str(tmp_path / "f.hdf5"), None, None)
    assert os.listdir(tmp_path) == []


def test_the_parts_of_killed_downloads_are_removed(tmp_path, monkeypatch):
    """A download killed with SIGKILL leaves its `.part-<host>-<pid>` file; the next load of the same dataset removes
    this host's parts of processes that are gone and keeps those of live ones, and every other host's (a cache on a
    shared file system: their process ids are not this host's), one whose name begins with this one's too."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record_d4rl_file(tmp_path / "hopper_medium-v2.hdf5", episodes=1, max_steps=10)
    host = socket.gethostname()
    parts = [f"hopper_medium-v2.hdf5.part-{h}-{pid}" for h, pid in ((host, dead.pid), (host, os.getppid()))]
    parts.append(f"hopper_medium-v2.hdf5.part-other-node-{dead.pid}")
    parts.append(f"hopper_medium-v2.hdf5.part-{host}-2-{dead.pid}")  # a host named this one's and -2
    for part in parts:
        (tmp_path / part).write_bytes(b"partial")
    offline_data.d4rl_files.load_d4rl("hopper-medium-v2", None, "raw")
    assert sorted(os.listdir(tmp_path)) == sorted(["hopper_medium-v2.hdf5", *parts[1:]])


@pytest.mark.parametrize("env_id", ["hopper-random-v2", "ant"])
def test_an_unknown_id_is_one_line(env_id, hopper_file):
    with pytest.raises(offline_data.UserError, match=f"unknown dataset id '{env_id}'; D4RL ids: halfcheetah-medium-v2"):
        offline_data.load(env_id, hopper_file)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(offline_data.DatasetError, match="does not exist"):
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", str(tmp_path / "nope.hdf5"), "raw")


def test_shape_mismatch_with_the_environment(hopper_file):
    with pytest.raises(
        offline_data.DatasetError, match=r"'observations' has shape \(\d+, 11\), walker2d-medium-v2 needs \(\d+, 17\)"
    ):
        offline_data.d4rl_files.load_d4rl("walker2d-medium-v2", hopper_file, "raw")


def test_missing_key_and_row_mismatch(tmp_path, hopper_file):
    with h5py.File(hopper_file, "a") as f:
        del f["rewards"]
    with pytest.raises(offline_data.DatasetError, match="lacks the D4RL key"):
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")
    n = len(h5py.File(hopper_file, "r")["observations"])
    for shape in ((n + 1,), (1, n), (n, 2)):  # one number too many, as many as rows in another shape, two per row
        with h5py.File(hopper_file, "a") as f:
            f.pop("rewards", None)
            f["rewards"] = np.zeros(shape, np.float32)
        with pytest.raises(offline_data.DatasetError, match=rf"'rewards' has shape \({shape[0]},"):
            offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")
    with h5py.File(hopper_file, "a") as f:  # (N, 1), as some files store it: squeezed, as d4rl does
        del f["rewards"]
        f["rewards"] = np.arange(n, dtype=np.float32).reshape(n, 1)
    assert offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")["rewards"].ndim == 1
    with pytest.raises(offline_data.DatasetError, match="standardize: the dataset's rewards are all 0.0"):
        offline_data.reward_transform(np.zeros(5, np.float32), "standardize")


def test_nan_in_data_is_rejected(hopper_file):
    with h5py.File(hopper_file, "a") as f:
        f["actions"][3, 0] = np.nan
    with pytest.raises(offline_data.DatasetError, match="NaN"):
        offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")


# d4rl/infos.py's REF_MIN_SCORE and REF_MAX_SCORE, written out per id (docs: ../shared/reference/d4rl-data.md)
REFERENCE_RETURNS = {
    **{f"halfcheetah-{d}-v2": (-280.178953, 12135.0) for d in ("medium", "medium-replay", "medium-expert")},
    **{f"hopper-{d}-v2": (-20.272305, 3234.3) for d in ("medium", "medium-replay", "medium-expert")},
    **{f"walker2d-{d}-v2": (1.629008, 4592.3) for d in ("medium", "medium-replay", "medium-expert")},
    **{f"antmaze-{d}-v2": (0.0, 1.0) for d in ("umaze", "umaze-diverse", "medium-play", "medium-diverse")},
    **{f"antmaze-{d}-v2": (0.0, 1.0) for d in ("large-play", "large-diverse")},
    "kitchen-mixed-v0": (0.0, 4.0),
    "kitchen-partial-v0": (0.0, 4.0),
    "pen-human-v1": (96.262799, 3076.8331017826877),
    "pen-cloned-v1": (96.262799, 3076.8331017826877),
    "door-cloned-v1": (-56.512833, 2880.5693087298737),
    "hammer-cloned-v1": (-274.856578, 12794.134825156867),
    "relocate-cloned-v1": (-6.425911, 4233.877797728884),
}
# max_episode_steps of D4RL's registrations (locomotion/__init__.py, kitchen's, hand_manipulation_suite/__init__.py)
EPISODE_STEPS = {
    **{k: 1000 for k in REFERENCE_RETURNS if k.split("-")[0] in ("halfcheetah", "hopper", "walker2d", "antmaze")},
    "antmaze-umaze-v2": 700,
    "antmaze-umaze-diverse-v2": 700,
    **{"kitchen-mixed-v0": 280, "kitchen-partial-v0": 280, "pen-human-v1": 100, "pen-cloned-v1": 100},
    **{"door-cloned-v1": 200, "hammer-cloned-v1": 200, "relocate-cloned-v1": 200},
}


@pytest.mark.parametrize("env_id", list(REFERENCE_RETURNS))
def test_every_id_is_scored_by_its_d4rl_reference_returns(env_id):
    """Both ends of each id's scale (a score checked only at REF_MAX would not see REF_MIN: pen's is 96.26)."""
    assert REFERENCE_RETURNS.keys() == EPISODE_STEPS.keys() == offline_data.DATASETS.keys()
    low, high = REFERENCE_RETURNS[env_id]
    assert offline_data.normalized_score(env_id, low) == pytest.approx(0.0, abs=1e-9)
    assert offline_data.normalized_score(env_id, high) == pytest.approx(100.0)


@pytest.mark.parametrize(
    "env_id", [k for k in EPISODE_STEPS if k.split("-")[0] not in ("halfcheetah", "hopper", "walker2d")]
)
def test_file_without_timeouts_uses_d4rls_step_count(tmp_path, env_id):
    steps = EPISODE_STEPS[env_id]
    path = tmp_path / "no_timeouts.hdf5"
    rng = np.random.default_rng(0)
    n = 1600
    terminals = np.zeros(n, bool)
    terminals[[50, 1200]] = True  # d4rl's count restarts at 1 after a terminal
    obs_dim, act_dim = offline_data.d4rl_files.domain_of(env_id)[2:4]
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, obs_dim)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
        f["rewards"] = rng.normal(size=(n, 1)).astype(np.float32)  # (N, 1) is squeezed as in d4rl
        f["terminals"] = terminals
    data = offline_data.d4rl_files.load_d4rl(env_id, str(path), "raw")
    with h5py.File(path) as f:
        raw = {k: f[k][()] for k in f}
    raw["rewards"] = raw["rewards"][:, 0]
    expected = d4rl_qlearning_loop(raw, steps)
    assert len(expected["rewards"]) < n - 1  # rows other than the last were dropped as timeouts
    np.testing.assert_array_equal(data["observations"], expected["observations"])
    np.testing.assert_array_equal(data["terminals"], expected["terminals"])


def test_reward_transforms():
    r = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    np.testing.assert_array_equal(offline_data.source.transform_rewards(r, "raw"), r)
    np.testing.assert_array_equal(offline_data.source.transform_rewards(r, "cql_antmaze"), [-2.0, 2.0, -2.0, 2.0])
    z = offline_data.source.transform_rewards(np.array([1.0, 2.0, 3.0, 6.0]), "standardize")
    assert abs(z.mean()) < 1e-12 and abs(z.std(ddof=1) - 1) < 1e-12  # the sample std, as torch.std


def test_buffer_samples_aligned_transitions(hopper_file):
    data = offline_data.d4rl_files.load_d4rl("hopper-medium-v2", hopper_file, "raw")
    buffer = ofql.OfflineBuffer(data, torch.device("cpu"))
    batch = buffer.sample(64)
    assert [x.shape for x in batch] == [(64, 11), (64, 3), (64, 1), (64, 11), (64, 1)]
    assert all(x.dtype == torch.float32 for x in batch)
    # every sampled row is one transition of the dataset, fields taken from the same index
    index = {tuple(o): i for i, o in enumerate(data["observations"])}
    for row in range(64):
        i = index[tuple(batch.obs[row].numpy())]
        np.testing.assert_array_equal(batch.actions[row].numpy(), data["actions"][i])
        np.testing.assert_array_equal(batch.next_obs[row].numpy(), data["next_observations"][i])
        assert batch.dones[row].item() == float(data["terminals"][i])
        assert batch.rewards[row].item() == np.float32(data["rewards"][i])


def test_tables_cover_every_dataset_and_match_the_environments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its MUJOCO_LOG.TXT (a deprecation warning) where it runs
    assert ofql.PRESETS.keys() == offline_data.DATASETS.keys() | set(offline_data.OGBENCH_IDS.values())
    for env_id in offline_data.DATASETS:
        domain = offline_data.d4rl_files.domain_of(env_id)
        if domain.eval_env.endswith("-v4"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                env = gym.make(domain.eval_env)
            assert env.observation_space.shape == (domain.obs_dim,)
            assert env.action_space.shape == (domain.act_dim,)
            assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
            assert env.spec.max_episode_steps == 1000


@pytest.fixture
def no_mujoco_warning_handler():
    """MuJoCo's warning handler unset during the test, as in a process without dm_control (which sets one when
    imported: OGBench's tests import it), then put back."""
    import mujoco

    before = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(None)
    yield
    mujoco.set_mju_user_warning(before)


@pytest.mark.usefixtures("no_mujoco_warning_handler")
@pytest.mark.parametrize("source", ["d4rl", "own data"])
def test_a_halfcheetah_env_is_made_without_mujocos_settotalmass_warning(source, tmp_path, monkeypatch, capfd):
    """MuJoCo 4 warns at each compile of gymnasium's half_cheetah.xml (settotalmass is deprecated), on stderr and in a
    MUJOCO_LOG.TXT in the working folder: the envs are made (and your own data loaded) without it, and MuJoCo's
    handler is restored after."""
    import mujoco

    monkeypatch.chdir(tmp_path)
    if source == "own data":
        record_d4rl_file(tmp_path / "mine.hdf5", "HalfCheetah-v5", episodes=1, max_steps=5)
        (tmp_path / "MUJOCO_LOG.TXT").unlink()
        capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if source == "d4rl":
            offline_data.eval_env_factory("halfcheetah-medium-v2")().close()
        else:
            offline_data.load("HalfCheetah-v5", str(tmp_path / "mine.hdf5")).make_env().close()
    assert not any("settotalmass" in str(w.message) for w in caught)
    assert "settotalmass" not in capfd.readouterr().err and not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert mujoco.get_mju_user_warning() is None


@pytest.mark.usefixtures("no_mujoco_warning_handler")
def test_only_the_settotalmass_warning_is_dropped():
    """Any other MuJoCo warning while an env is made goes to the handler that was set, else is a Python warning."""
    import mujoco

    from offline_data.evaluation_envs import settotalmass_warning_dropped

    with settotalmass_warning_dropped():
        handler = mujoco.get_mju_user_warning()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            handler("compiler attribute 'settotalmass' is deprecated and will be removed")
        with pytest.warns(UserWarning, match="MuJoCo: Nan, Inf or huge value in QACC"):
            handler("Nan, Inf or huge value in QACC at DOF 0")
    seen = []
    mujoco.set_mju_user_warning(seen.append)
    try:
        with settotalmass_warning_dropped():
            mujoco.get_mju_user_warning()("another warning")
        assert seen == ["another warning"] and mujoco.get_mju_user_warning() is not None
    finally:
        mujoco.set_mju_user_warning(None)


def test_the_normalized_score_of_an_evaluation_without_minari(hopper_file, monkeypatch):
    """A D4RL run's evaluation score, with minari not importable: 100 (R - R_random) / (R_expert - R_random) with
    D4RL's hopper reference returns (d4rl/infos.py), written out here."""
    monkeypatch.setitem(sys.modules, "minari", None)  # `import minari` raises ImportError
    with pytest.raises(ImportError):
        import minari  # noqa: F401
    source = offline_data.load("hopper-medium-v2", hopper_file)
    envs = gym.vector.SyncVectorEnv([source.make_env] * 2)
    weights = torch.from_numpy(np.random.default_rng(1).normal(0, 0.3, (11, 3)).astype(np.float32))
    (result,) = ofql.evaluate([lambda obs: torch.tanh(obs @ weights)], envs, source, [ofql.Args()], torch.device("cpu"))
    envs.close()
    returns = (result["return"] - result["return_std"], result["return"] + result["return_std"])  # two episodes
    scores = [100 * (r - -20.272305) / (3234.3 - -20.272305) for r in returns]
    assert result["return"] > 10 and result["score"] == pytest.approx(np.mean(scores), rel=1e-9)
    assert result["score_std"] == pytest.approx(np.std(scores), rel=1e-6)
    assert offline_data.normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)


def test_episode_video_records_one_whole_episode_when_asked_and_writes_it_as_it_ends(tmp_path):
    """evaluation_envs' first env records the episode after record(name), each of its frames (the reset's, then one
    a step), into name.mp4 as soon as it ends; the next evaluation's episodes, not asked for, are not recorded."""
    envs = offline_data.evaluation_envs(offline_data.eval_env_factory("hopper-medium-v2"), 2, str(tmp_path / "videos"))
    path = envs.envs[0].record("step_7")
    obs, _ = envs.reset(seed=[3, 4])
    length, rng = 0, np.random.default_rng(0)
    while True:
        obs, _, terminated, truncated, _ = envs.step(rng.uniform(-1, 1, (2, 3)))
        length += 1
        if terminated[0] or truncated[0]:
            break
    assert path == str(tmp_path / "videos" / "step_7.mp4") and os.path.isfile(path)  # before any reset
    frames = iio.imread(path)
    assert frames.shape == (length + 1, 480, 480, 3) and frames.std() > 0
    offline_data.run_episodes(lambda o: torch.zeros(len(o), 3), envs, [5, 6], torch.device("cpu"))  # no record() asked
    envs.close()
    assert os.listdir(tmp_path / "videos") == ["step_7.mp4"]


def test_a_video_of_an_episode_cut_by_its_time_limit_is_written_at_its_end_and_kept(tmp_path):
    """An episode that ends truncated (HalfCheetah's always do) is written at its last step, as a terminated one, not
    at the next reset; the next episode, not asked for, is not recorded over it."""
    make = lambda: gym.wrappers.TimeLimit(offline_data.eval_env_factory("hopper-medium-v2")(), 3)  # noqa: E731
    envs = offline_data.evaluation_envs(make, 1, str(tmp_path))
    env = envs.envs[0]
    path, videos = env.record("step_3"), []
    for seed in (0, 1):
        env.reset(seed=seed)
        while not any(env.step(np.zeros(3))[2:4]):
            pass
        videos.append(iio.imread(path))
    envs.close()
    assert len(videos[0]) == 4 and np.array_equal(videos[1], videos[0]) and os.listdir(tmp_path) == ["step_3.mp4"]


def test_capture_video_refuses_an_env_that_cannot_render_and_a_dataset_without_one(tmp_path):
    class Blind(gym.Env):
        observation_space = action_space = gym.spaces.Box(-1, 1, (1,))

    with pytest.raises(offline_data.UserError, match="the evaluation env .* cannot render frames"):
        offline_data.evaluation_envs(Blind, 1, str(tmp_path))
    with pytest.raises(offline_data.UserError, match="--capture-video needs an evaluation environment"):
        offline_data.evaluation_envs(None, 1, str(tmp_path))
    assert offline_data.evaluation_envs(None, 1) is None


def test_an_evaluations_return_score_and_success_are_the_means_of_its_episodes():
    """Three episodes, one of them far from the others: the mean of their returns, scores and successes, not their
    median (the two agree for the two episodes of the other tests)."""
    source = offline_data.DataSource({}, "", 1, 1, None, None, 0.0, 100.0, scored_by_success=False)
    stats = source.episode_stats(np.array([0.0, 0.0, 300.0]), np.full(3, np.nan))
    assert (stats["return"], stats["score"]) == (100.0, 100.0)
    by_success = source._replace(scored_by_success=True).episode_stats(np.zeros(3), np.array([1.0, 0.0, 0.0]))
    assert by_success["success"] == pytest.approx(1 / 3) and by_success["score"] == pytest.approx(100 / 3)


def test_only_a_source_without_reference_returns_or_success_notes_that_it_reports_raw_returns():
    """The note a run prints before training: none for D4RL's (reference returns) or OGBench's (scored by success)
    sources, the raw returns' for your own data (neither)."""
    d4rl = offline_data.DataSource({}, "", 1, 1, lambda: None, "Hopper-v4", -20.0, 3234.0)
    ogbench = d4rl._replace(ref_min=None, ref_max=None, scored_by_success=True)
    assert d4rl.limitation == ogbench.limitation == ""
    assert "no reference returns" in ogbench._replace(scored_by_success=False).limitation


def test_an_evaluation_reports_a_success_only_where_the_source_is_scored_by_one(hopper_file):
    """D4RL's evaluations (no success in their envs' infos): the score and return, their stds, no success key (a NaN
    success would make summary.json's best and reported success NaN); OGBench's add the success rate."""
    source = offline_data.load("hopper-medium-v2", hopper_file)
    returns, successes = np.array([100.0, 300.0]), np.full(2, np.nan)
    stats = source.episode_stats(returns, successes, prefix="policy_")
    assert set(stats) == {"policy_score", "policy_score_std", "policy_return", "policy_return_std"}
    assert stats["policy_return"] == 200.0 and stats["policy_return_std"] == 100.0
    by_success = source._replace(scored_by_success=True).episode_stats(returns, np.array([1.0, 0.0]))
    assert (by_success["success"], by_success["success_std"], by_success["score"]) == (0.5, 0.5, 50.0)
