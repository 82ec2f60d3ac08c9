"""Online fine-tuning after the offline phase (--online-steps, FQL's offline-to-online protocol), in the three scripts'
shared loop and in sweeps: the agent acts with its own sample, the transitions are stored as the critic needs them
(done = terminated, the episode's own last observation), online rewards get the dataset's reward rule, the buffer
grows in place and is sampled uniformly or half and half, what is logged, and a stopped run resumes with its
transitions."""

import dataclasses
import json
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_reward_modes import write_antmaze_file

import bookkeeping
import dql
import fql
import offline_data
import ofql
import sweep
from conftest import fail_at_window

SCRIPTS = {"ofql": ofql, "dql": dql, "fql": fql}
TIMING = ("steps_per_sec", "eval/decision_rate")


def flags(hopper_file, *more):
    base = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--no-cuda", "--batch-size", "32"]
    return base + ["--eval-episodes", "2", "--log-every", "10", *more]


def records(summary_path: str) -> list[dict]:
    with open(os.path.join(os.path.dirname(summary_path), "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


# --- the acting policy -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("online_candidates", [1, 3])
@pytest.mark.parametrize("name", SCRIPTS)
def test_the_agent_acts_with_its_own_sample(tmp_path, hopper_file, monkeypatch, name, online_candidates):
    """The policy the online envs step with is the algorithm's own stochastic sample (OFQL's one call, DQL's chain,
    FQL's one-step policy with fresh noise): for the same noise, sample_actions' action, not the evaluation's pick
    among --num-candidates (3 here, for all three), and a new action at each call; with --online-candidates 3, that
    pick."""
    monkeypatch.chdir(tmp_path)
    module, agents, checked = SCRIPTS[name], [], []
    make_agent, step = module.make_agent, offline_data.OnlineEnvs.step
    monkeypatch.setattr(module, "make_agent", lambda *a: agents.append(make_agent(*a)) or agents[-1])

    def checking_step(self, policy):
        if not checked:
            obs = torch.as_tensor(self.obs, dtype=torch.float32)
            torch.manual_seed(7)
            acted = policy(obs)
            torch.manual_seed(7)
            own = module.sample_actions(agents[0].actor, obs).detach()
            torch.manual_seed(7)
            candidates = module.select_action(agents[0], obs, 3)
            checked.append((acted, own, candidates, policy(obs)))
        return step(self, policy)

    monkeypatch.setattr(offline_data.OnlineEnvs, "step", checking_step)
    more = ["--num-candidates", "3", "--online-candidates", str(online_candidates)]
    module.train(module.parse_args(flags(hopper_file, "--total-steps", "2", "--online-steps", "2", *more)))
    acted, own, candidates, again = checked[0]
    expected, other = (own, candidates) if online_candidates == 1 else (candidates, own)
    assert torch.equal(acted, expected) and not torch.equal(acted, other) and not torch.equal(acted, again)


# --- the transitions: done = terminated, the episode's own last observation, the dataset's reward rule ------------
class Countdown(gym.Env):
    """obs = [t, episode]; reward t; terminated when the action is > 0.5, truncated (a time limit) at t = 3."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self):
        self.episode, self.t = -1, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([0.0, self.episode]), {}

    def step(self, action):
        self.t += 1
        done = bool(action[0] > 0.5)
        return np.array([float(self.t), self.episode]), float(self.t), done, self.t >= 3, {"success": float(done)}


def test_a_time_limit_is_not_terminal_and_the_next_observation_is_the_episodes_own():
    """Two envs: env 0 runs into its time limit at t = 3 (truncated), then terminates at once; env 1 terminates at every
    step. done is terminated only; the stored next observation of an episode's last step is that episode's, not the
    next one's first (which is the next step's observation); rewards by the source's rule, episode returns raw."""
    source = offline_data.DataSource({}, "", 2, 1, Countdown, "countdown", 0.0, 10.0, False, lambda r: (r - 1.0) / 2)
    envs = offline_data.OnlineEnvs(source, 2).reset([0, 1], torch.device("cpu"))
    steps = [envs.step(lambda obs, a0=a0: torch.tensor([[a0], [1.0]])) for a0 in (0.0, 0.0, 0.0, 1.0, 0.0)]
    obs, actions, rewards, next_obs, dones = (np.stack([t[k] for t, _ in steps]) for k in range(5))
    episodes = [e for _, e in steps]
    assert obs[:, 0].tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [0, 2]]
    assert next_obs[:, 0].tolist() == [[1, 0], [2, 0], [3, 0], [1, 1], [1, 2]]  # at t = 3 the episode's own last
    assert dones[:, 0].tolist() == [0, 0, 0, 1, 0]  # the time limit at the third step is not terminal
    assert rewards[:, 0].tolist() == [0.0, 0.5, 1.0, 0.0, 0.0]  # (t - 1) / 2
    assert actions[:, 0, 0].tolist() == [0, 0, 0, 1, 0]
    assert dones[:, 1].tolist() == [1] * 5 and next_obs[:, 1].tolist() == [[1, e] for e in range(5)]
    assert obs[:, 1].tolist() == [[0, e] for e in range(5)]
    one = {"online/episode_return": 1.0, "online/episode_length": 1, "online/episode_score": 10.0}
    assert [e[0] for e in episodes] == [
        None,
        None,
        {"online/episode_return": 6.0, "online/episode_length": 3, "online/episode_score": 60.0},
        one,
        None,
    ]
    assert [e[1] for e in episodes] == [one] * 5


def test_a_failed_members_nan_actions_reach_its_env_as_zeros():
    """A sweep member gone non-finite goes on stepping its envs, unlogged: NaN would make MuJoCo warn at every step."""
    source = offline_data.DataSource({}, "", 2, 1, Countdown, "countdown", 0.0, 10.0, False, None)
    envs = offline_data.OnlineEnvs(source, 2).reset([0, 1], torch.device("cpu"))
    sent = []
    step = envs.envs.step
    envs.envs.step = lambda actions: sent.append(actions.copy()) or step(actions)
    (_, actions, *_), _ = envs.step(lambda obs: torch.tensor([[float("nan")], [0.5]]))
    assert sent[0].tolist() == [[0.0], [0.5]] and actions.tolist() == [[0.0], [0.5]]
    evaluation, sent = gym.vector.SyncVectorEnv([Countdown, Countdown]), []  # its evaluation episodes too
    step = evaluation.step
    evaluation.step = lambda actions: sent.append(actions.copy()) or step(actions)
    offline_data.episodes.run_episodes(lambda obs: torch.tensor([[float("nan")], [0.0]]), evaluation, [0, 1], "cpu")
    assert len(sent) == 3 and all(a.tolist() == [[0.0], [0.0]] for a in sent)


def test_the_online_transitions_of_a_run_are_stored_as_the_critic_needs_them(tmp_path, hopper_file, monkeypatch):
    """Hopper episodes end by falling (terminated): in the checkpoint's online transitions, a row's next observation
    is the next row's observation except where the episode ended, and only there is done 1."""
    monkeypatch.chdir(tmp_path)
    args = ofql.parse_args(flags(hopper_file, "--total-steps", "2", "--online-steps", "80", "--save-model"))
    online = torch.load(os.path.join(os.path.dirname(ofql.train(args)), "checkpoint.pt"))["online"]
    continues = (online["next_obs"][:-1] == online["obs"][1:]).all(dim=1)
    assert len(online["obs"]) == 80 and 0 < online["dones"].sum() < 80
    assert torch.equal(~continues, online["dones"][:-1, 0].bool())


def test_online_rewards_get_the_datasets_rule_with_the_datasets_statistics(hopper_file, tmp_path):
    """--reward-mode standardize: new rewards standardised by the dataset's mean and std (not their own); the AntMaze
    rules as the dataset's; raw (OGBench's presets, FQL's): the env's rewards unchanged."""
    raw = offline_data.load("hopper-medium-v2", hopper_file).data["rewards"]
    source = offline_data.load("hopper-medium-v2", hopper_file, "standardize")
    new = np.array([0.5, 3.0])
    np.testing.assert_allclose(source.reward_fn(new), (new - raw.mean()) / raw.std(ddof=1), rtol=1e-6)
    np.testing.assert_allclose(source.reward_fn(raw), source.data["rewards"], rtol=1e-6)
    env = source.make_env()  # the online phase stores the env's reward by that rule: the same step, by hand
    env.reset(seed=0)
    env_reward = env.step(np.zeros(source.act_dim, dtype=np.float32))[1]
    (_, _, stored, _, _), _ = offline_data.OnlineEnvs(source, 1).reset([0], "cpu").step(lambda obs: torch.zeros(1, 3))
    np.testing.assert_allclose(stored, [(env_reward - raw.mean()) / raw.std(ddof=1)], rtol=1e-5)
    antmaze = write_antmaze_file(tmp_path / "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse.hdf5")
    for mode, expected in (("cql_antmaze", [-2.0, 2.0]), ("iql_antmaze", [-1.0, 0.0]), ("raw", [0.0, 1.0])):
        source = offline_data.load("antmaze-large-play-v2", antmaze, mode)
        assert source.reward_fn(np.array([0.0, 1.0])).tolist() == expected


def test_ogbench_online_rewards_and_dones_are_the_relabelled_datas(tmp_path):
    """An OGBench single-task env's own reward and termination, as the online phase stores them, are those of
    ogbench's relabelling of the dataset: on the 3x3 puzzle, a step from a solved state gives the data's success
    reward (0, its maximum) and done 1 (mask 0), a step from an unsolved one a failure reward (< 0) and done 0."""
    from test_ogbench_datasets import PUZZLE, record_ogbench, solve_puzzle

    source = offline_data.load(PUZZLE, os.path.dirname(record_ogbench(PUZZLE, tmp_path, start=solve_puzzle)))
    data = source.data
    assert set(data["rewards"][data["terminals"] == 1]) == {0.0} and max(data["rewards"][data["terminals"] == 0]) < 0
    envs = offline_data.OnlineEnvs(source, 1).reset([0], torch.device("cpu"))
    (_, _, reward, _, done), _ = envs.step(lambda obs: torch.zeros(1, source.act_dim))
    assert reward[0] < 0 and done[0] == 0.0
    solve_puzzle(envs.envs.envs[0])
    (_, _, reward, _, done), episodes = envs.step(lambda obs: torch.zeros(1, source.act_dim))
    assert reward[0] == 0.0 and done[0] == 1.0 and episodes[0]["online/episode_success"] == 1.0


# --- the buffer ----------------------------------------------------------------------------------------------------
def tiny_data(n=100):
    rng = np.random.default_rng(0)
    data = {k: rng.normal(size=(n, 4)).astype(np.float32) for k in ("observations", "next_observations")}
    data.update(actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32), rewards=rng.normal(size=n).astype(np.float32))
    data["terminals"] = np.zeros(n, dtype=bool)
    return data


def add_marked(buffer, steps):
    """Transitions whose observation is 1000 (env + 1) + j: env and step readable in any batch."""
    for j in range(steps):
        obs = np.array([[1000.0 * (e + 1) + j] * 4 for e in range(buffer.num_online_envs)])
        n = buffer.num_online_envs
        buffer.add(obs, np.zeros((n, 2)), np.ones(n), obs, np.zeros(n))


def test_the_buffer_is_preallocated_and_grows_in_place():
    """Room for the dataset and online_steps transitions of each env from the start; adding writes the next rows of
    the same tensors (no new tensor, no copy of the whole buffer), env e's j-th at row size + j * num_online_envs
    + e."""
    buffer = ofql.OfflineBuffer(tiny_data(), torch.device("cpu"), online_steps=50, num_online_envs=2)
    tensors = [getattr(buffer, k) for k in bookkeeping.ONLINE_FIELDS]
    pointers = [t.data_ptr() for t in tensors]
    assert [len(t) for t in tensors] == [200] * 5 and buffer.obs.device == buffer.device
    add_marked(buffer, 10)
    assert [getattr(buffer, k).data_ptr() for k in bookkeeping.ONLINE_FIELDS] == pointers
    assert buffer.obs[100:120, 0].tolist() == [1000.0 * (e + 1) + j for j in range(10) for e in range(2)]
    assert int(buffer.count) == buffer.added == 10 and buffer.rewards[120:].abs().sum() == 0
    np.testing.assert_array_equal(buffer.obs[:100].numpy(), tiny_data()["observations"])


def test_batches_draw_every_row_uniformly():
    """Offline: each of the dataset's 100 rows about 1% of the draws (the first and the last among them); online,
    env 0's 10 transitions too, each about 1/110."""
    buffer = ofql.OfflineBuffer(tiny_data(), torch.device("cpu"), online_steps=50, num_online_envs=2)
    row_of = {v: i for i, v in enumerate(buffer.obs[:100, 0].tolist())}
    torch.manual_seed(0)
    counts = np.bincount([row_of[v] for v in buffer.sample(100_000).obs[:, 0].tolist()], minlength=100)
    assert counts.min() > 850 and counts.max() < 1150  # 1000 expected, std 31
    add_marked(buffer, 10)
    obs = buffer.sample(110_000, 0, online=True).obs[:, 0].tolist()
    counts = np.bincount([row_of.get(v, 100 + int(v) - 1000) for v in obs], minlength=110)
    assert len(counts) == 110 and counts.min() > 850 and counts.max() < 1150


@pytest.mark.parametrize("balanced", [False, True])
def test_online_batches_come_from_the_data_and_the_envs_own_transitions(balanced):
    """Env 1's batches: rows of the dataset and of env 1's transitions only (never env 0's); uniformly over both
    (10 of 110 rows online), or (balanced, FQL's flag) the first half from the dataset, the rest from env 1's, every
    one of them drawn."""
    buffer = ofql.OfflineBuffer(tiny_data(), torch.device("cpu"), online_steps=50, num_online_envs=2, balanced=balanced)
    add_marked(buffer, 10)
    torch.manual_seed(0)
    obs = buffer.sample(20000, 1, online=True).obs[:, 0]
    online = obs >= 1000
    assert set(obs[online].tolist()) == {2000.0 + j for j in range(10)}
    if balanced:
        assert not online[:10000].any() and online[10000:].all()
    else:
        assert online.float().mean().item() == pytest.approx(10 / 110, abs=0.01)
    assert not (buffer.sample(500).obs >= 1000).any()  # the offline phase: the dataset only


def test_ofqls_flow_rows_and_average_velocity_rows_each_hold_data_and_online_transitions(monkeypatch):
    """A balanced batch comes as dataset rows, then online rows; MeanFlow's r = t rows (a random half) must not be the
    first half, or the average velocity (r < t) would be learnt from online transitions only."""
    buffer = ofql.OfflineBuffer(tiny_data(), torch.device("cpu"), online_steps=50, balanced=True)
    add_marked(buffer, 10)
    seen, target = [], ofql.meanflow_target
    monkeypatch.setattr(
        ofql, "meanflow_target", lambda u_fn, a, eps, r, t: seen.append(r == t) or target(u_fn, a, eps, r, t)
    )
    torch.manual_seed(0)
    for _ in range(20):
        batch = buffer.sample(256, online=True)
        ofql.behavior_cloning_loss(ofql.Actor(4, 2), batch.obs, batch.actions, ofql.Args())
        online = (batch.obs[:, 0] >= 1000).unsqueeze(1)
        flow = seen[-1]  # each of the four counts below: 64 expected
        assert (flow & ~online).sum() > 30 and (flow & online).sum() > 30 and flow.sum() == 128
        assert (~flow & ~online).sum() > 30 and (~flow & online).sum() > 30


def test_each_sweep_member_draws_from_its_own_envs_transitions():
    """A sweep's buffer (two members, an env each): member m's online batch holds the dataset's rows and env m's."""
    members = sweep.Members(ofql, [ofql.Args()] * 2)
    buffer = members.OfflineBuffer(tiny_data(), torch.device("cpu"), 50, 2)
    add_marked(buffer, 10)
    obs = buffer.sample(2000, online=True).obs[..., 0]
    for m in (0, 1):
        assert set(obs[m][obs[m] >= 1000].tolist()) == {1000.0 * (m + 1) + j for j in range(10)}


# --- what is logged, the phases' evaluations, summary.json --------------------------------------------------------
def test_the_online_phase_logs_episodes_and_evaluates_over_the_combined_steps(tmp_path, hopper_file, monkeypatch):
    """Each finished online episode: its return, score and env steps so far; evaluations at --eval-every over the
    combined count, at the offline phase's end and at the last step; summary.json has both phases' final scores."""
    monkeypatch.chdir(tmp_path)
    args = ofql.parse_args(flags(hopper_file, "--total-steps", "15", "--online-steps", "80", "--eval-every", "40"))
    summary_path = ofql.train(args)
    logged = records(summary_path)
    episodes = [r for r in logged if "online/episode_return" in r]
    assert episodes and all(set(r) == {"step", *EPISODE_KEYS} for r in episodes)
    assert all(r["online/env_steps"] == r["step"] - 15 and r["step"] > 15 for r in episodes)
    ends = [0] + [r["online/env_steps"] for r in episodes]  # one env: each episode starts where the last one ended
    assert [r["online/episode_length"] for r in episodes] == np.diff(ends).tolist()
    assert all(r["online/episode_score"] == pytest.approx(score(r["online/episode_return"])) for r in episodes)
    assert [r["step"] for r in logged if "eval/score" in r] == [15, 40, 80, 95]
    summary = json.load(open(summary_path))
    evals = {e["step"]: e for e in summary["evaluations"]}
    assert summary["offline_final_score"] == evals[15]["score"] and summary["final_score"] == evals[95]["score"]
    assert summary["offline_final_policy_return"] == evals[15].get("policy_return")  # your own data's: no score
    assert summary["online_steps"] == 80 and summary["steps"] == 15


EPISODE_KEYS = ("online/episode_return", "online/episode_length", "online/episode_score", "online/env_steps")


def score(episode_return):
    return float(offline_data.normalized_score("hopper-medium-v2", episode_return))


@pytest.mark.parametrize("flag", [["--online-steps", "5"], ["--capture-video"]])
def test_a_flag_that_needs_an_env_on_data_without_one_stops_in_one_line_and_leaves_no_folder(
    tmp_path, hopper_file, monkeypatch, flag
):
    monkeypatch.chdir(tmp_path)
    load = offline_data.load
    monkeypatch.setattr(offline_data, "load", lambda *a: load(*a)._replace(make_env=None))  # data without an env
    with pytest.raises(offline_data.UserError, match=f"{flag[0]} needs an (evaluation )?environment"):
        ofql.train(ofql.parse_args(flags(hopper_file, "--total-steps", "10", *flag)))
    assert not os.path.exists("runs")


# --- checkpoints, SIGTERM and resume --------------------------------------------------------------------------------
def test_a_sigterm_online_saves_the_transitions_and_the_resumed_run_continues_with_them(
    tmp_path, hopper_file, monkeypatch
):
    """A SIGTERM at online step 13 (step 23): the checkpoint of that step holds the 13 transitions (a weights_only
    load); the resumed run starts at step 24 with them in its buffer (the same values and count), acts from a fresh
    episode (its first transition starts at the observation of a reset with seed + 200 + 13) and ends with its 30
    transitions, the first 13 those saved."""
    monkeypatch.chdir(tmp_path)
    step, init, made, resumed = offline_data.OnlineEnvs.step, offline_data.OnlineEnvs.__init__, [], []

    def stepping(self, policy):
        out = step(self, policy)
        made[-1][1] += 1
        if len(made) == 1 and made[-1][1] == 13:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the loop: it stops after this step, saved
        return out

    def starting(self, *a, **k):
        first = start(self, *a, **k)
        rows = {f: v.clone() for f, v in bookkeeping.online_rows(self.buffer, 0).items()}
        resumed.append((first, self.buffer.added, int(self.buffer.count), rows))
        return first

    def resetting(self, seeds, device):
        resets.append((seeds, reset(self, seeds, device).obs.copy()))
        return self

    start, reset, resets = bookkeeping.Runs.start, offline_data.OnlineEnvs.reset, []
    monkeypatch.setattr(offline_data.OnlineEnvs, "__init__", lambda self, *a: init(self, *a) or made.append([self, 0]))
    monkeypatch.setattr(offline_data.OnlineEnvs, "reset", resetting)
    monkeypatch.setattr(offline_data.OnlineEnvs, "step", stepping)
    monkeypatch.setattr(bookkeeping.Runs, "start", starting)
    run = flags(hopper_file, "--total-steps", "10", "--online-steps", "30", "--eval-every", "20", "--save-model")
    with pytest.raises(bookkeeping.Interrupted) as stop:
        ofql.train(ofql.parse_args(run))
    assert stop.value.exit_code == 143 and "stopped at step 23; saved in" in str(stop.value)
    checkpoint = os.path.join("runs", os.listdir("runs")[0], "checkpoint.pt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["step"] == 23 and [len(v) for v in saved["online"].values()] == [13] * 5

    ofql.train(ofql.parse_args(run + ["--resume", checkpoint]))
    first, added, count, rows = resumed[-1]
    assert (first, added, count) == (24, 13, 13)
    assert all(torch.equal(rows[f], saved["online"][f]) for f in bookkeeping.ONLINE_FIELDS)
    final = torch.load(checkpoint, weights_only=True)
    assert final["step"] == 40 and [len(v) for v in final["online"].values()] == [30] * 5
    assert all(torch.equal(final["online"][f][:13], saved["online"][f]) for f in bookkeeping.ONLINE_FIELDS)
    # the resumed episode: from a reset with seed + 200 + the 13 online steps done, not a replay of the first one
    assert [seeds for seeds, _ in resets] == [[200], [213]] and not np.array_equal(resets[0][1], resets[1][1])
    assert torch.equal(final["online"]["obs"][13], torch.as_tensor(resets[1][1][0], dtype=torch.float32))
    assert [r["step"] for r in records(checkpoint) if "critic_loss" in r] == [10, 20, 23, 30, 40]


def test_a_resume_refuses_another_total_steps_once_the_online_phase_has_begun():
    saved = {"total_steps": 10, "online_steps": 30}
    bookkeeping.check_resume({"total_steps": 10, "online_steps": 30}, saved, 23)
    bookkeeping.check_resume({"total_steps": 20, "online_steps": 30}, saved, 8)  # offline: as without online steps
    with pytest.raises(offline_data.UserError, match=r"--total-steps 5 \(below its step, 8\)"):  # as without them too
        bookkeeping.check_resume({"total_steps": 5, "online_steps": 30}, saved, 8)
    with pytest.raises(offline_data.UserError, match="online phase had begun"):
        bookkeeping.check_resume({"total_steps": 20, "online_steps": 30}, saved, 23)
    with pytest.raises(offline_data.UserError, match=r"--online-steps 5 \(was 30; its online phase had begun\)"):
        bookkeeping.check_resume({"total_steps": 10, "online_steps": 5}, saved, 23)
    # until it begins (the offline phase's last step included), the online phase's flags may change
    bookkeeping.check_resume({"total_steps": 10, "online_steps": 5, "balanced_sampling": True}, saved, 10)
    with pytest.raises(offline_data.UserError, match=r"--balanced-sampling True \(was unset; its online phase had"):
        bookkeeping.check_resume({"total_steps": 10, "online_steps": 30, "balanced_sampling": True}, saved, 11)


def test_an_offline_runs_checkpoint_resumed_with_online_steps_is_the_run_fine_tuned_from_the_start(
    tmp_path, hopper_file, monkeypatch
):
    """FQL's --restore_path then --online_steps, as a resume: a finished offline run (10 steps, saved) resumed with
    --online-steps 60 (and the other online flags, which may change until the online phase begins) logs every number,
    online episodes included, as the run trained with them from the start, bit for bit."""
    monkeypatch.chdir(tmp_path)
    offline = flags(hopper_file, "--total-steps", "10", "--eval-every", "10", "--save-model")
    online = ["--online-steps", "60", "--balanced-sampling", "--online-candidates", "2"]
    whole = records(ofql.train(ofql.parse_args(offline + online)))
    checkpoint = os.path.join(os.path.dirname(ofql.train(ofql.parse_args(offline))), "checkpoint.pt")
    resumed = ofql.train(ofql.parse_args(offline + online + ["--resume", checkpoint]))
    assert records(resumed) == whole and any("online/episode_return" in r for r in whole)
    with pytest.raises(offline_data.UserError, match=r"--online-steps 30 \(was 60; its online phase had begun\)"):
        ofql.train(ofql.parse_args(offline + ["--online-steps", "30", "--resume", checkpoint]))


# --- sweeps ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCRIPTS)
def test_a_one_member_online_sweep_is_the_scripts_run(tmp_path, hopper_file, monkeypatch, name):
    """10 offline and 30 online steps, evaluated: every logged number (online episodes too) within float rounding of
    the script's own run (vmap's matrix products add in another order)."""
    monkeypatch.chdir(tmp_path)
    module = SCRIPTS[name]
    args = module.parse_args(flags(hopper_file, "--total-steps", "10", "--online-steps", "30", "--grad-norm", "0.5"))
    alone, swept = records(module.train(args)), records(sweep.train(module, [args], "test")[0])
    assert [r["step"] for r in swept] == [r["step"] for r in alone] and alone[-1].keys() == swept[-1].keys()
    for a, s in zip(alone, swept):
        assert a.keys() == s.keys()
        for key in a:
            assert s[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_online_member_depends_on_another_members_weight(tmp_path, hopper_file, monkeypatch, name):
    """Three members fine-tuned online, each in its own env with its own transitions; the third's eta (alpha) changed:
    the other two log the same numbers and collect the same transitions, bit for bit."""
    monkeypatch.chdir(tmp_path)
    module = SCRIPTS[name]
    weight = module.SWEEP_WEIGHT
    base = module.parse_args(flags(hopper_file, "--total-steps", "5", "--online-steps", "25", "--save-model"))
    grid = [dataclasses.replace(base, seed=s, **{weight: w}) for s, w in ((0, 0.1), (1, 0.3), (2, 1.0))]
    first = sweep.train(module, grid, "a")
    grid[2] = dataclasses.replace(grid[2], **{weight: 50.0})
    second = sweep.train(module, grid, "b")
    online = [
        [torch.load(os.path.join(os.path.dirname(p), "checkpoint.pt"))["online"] for p in r] for r in (first, second)
    ]
    for m in (0, 1):
        assert records(first[m]) == records(second[m])
        assert all(torch.equal(online[0][m][f], online[1][m][f]) for f in bookkeeping.ONLINE_FIELDS)
    assert records(first[2])[-1]["actor_loss"] != records(second[2])[-1]["actor_loss"]  # the changed one did change
    assert not torch.equal(online[0][0]["obs"], online[0][1]["obs"])  # and the members are not copies
    env = offline_data.eval_env_factory("hopper-medium-v2")()
    for m, args in enumerate(grid):  # each member's env first reset with its own seed + 200
        start = torch.as_tensor(env.reset(seed=args.seed + 200)[0], dtype=torch.float32)
        torch.testing.assert_close(online[0][m]["obs"][0], start)
    env.close()


@pytest.mark.parametrize("name", SCRIPTS)
def test_balanced_sampling_reaches_the_runs_buffer_and_a_sweeps(tmp_path, hopper_file, monkeypatch, name):
    """--balanced-sampling (FQL's flag): the buffer a run and a sweep train from draws half of each online batch from
    the envs' transitions."""
    monkeypatch.chdir(tmp_path)
    module, built = SCRIPTS[name], []

    class Recorded(module.OfflineBuffer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(module, "OfflineBuffer", Recorded)
    args = module.parse_args(flags(hopper_file, "--total-steps", "5", "--online-steps", "5", "--balanced-sampling"))
    module.train(args)
    sweep.train(module, [args, dataclasses.replace(args, seed=1)], "balanced")
    assert [b.balanced for b in built] == [True, True]


def test_a_failed_sweep_member_logs_no_online_episodes(tmp_path, hopper_file, monkeypatch):
    """A member that failed at the offline phase's end (its loss non-finite) stops logging: the online episodes go to
    the other member's metrics.jsonl only."""
    monkeypatch.chdir(tmp_path)
    fail_at_window(1, 1, monkeypatch)
    flags = ["--env-id", "hopper-medium-v2", "--dataset-path", hopper_file, "--no-cuda", "--batch-size", "32"]
    flags += ["--eval-episodes", "1", "--log-every", "5", "--total-steps", "5", "--online-steps", "100"]
    args = ofql.parse_args([*flags, "--eval-every", "105"])
    with pytest.raises(offline_data.UserError, match="1 of 2 members failed"):
        sweep.train(ofql, [args, dataclasses.replace(args, seed=1, exp_name="bad")], "online")
    good, bad = (next(d for d in os.listdir("runs") if f"__{name}__" in d) for name in ("ofql", "bad"))
    episodes = [
        [line for line in open(f"runs/{run}/metrics.jsonl") if "online/episode_return" in line] for run in (good, bad)
    ]
    assert episodes[0] and episodes[1] == []
