"""Tests for toy_meanflow.py: the distance, the MeanFlow target, and a quick end-to-end run."""

import csv
import os
import re

import numpy as np
import pytest
import torch
import tyro

import toy_meanflow as tm  # tests/conftest.py puts the repository root on sys.path and uses one thread


def test_energy_distance_is_zero_for_one_distribution_and_large_for_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    same = tm.energy_distance(x, y)
    shifted = tm.energy_distance(x, y + torch.tensor([1.0, 0.0]))
    assert abs(same) < 0.01
    assert shifted > 0.3  # N(0, I) vs N((1, 0), I): D^2 is about 0.43
    assert shifted == pytest.approx(tm.energy_distance(y + torch.tensor([1.0, 0.0]), x), rel=1e-4)


class TimeProbe(torch.nn.Module):
    """A known field of (x, r, t), or (x, t), asymmetric in r and t, standing in for a trained network."""

    def forward(self, x, *times):
        t, r = times[-1], times[0] if len(times) == 2 else 0.0
        return 0.3 * x * (1 + t) + 0.7 * r


def test_the_samplers_are_eq_12_in_one_step_and_euler_on_a_grid():
    """u-param: a = eps - u(eps, r=0, t=1) (Eq. 12), and k steps x <- x - (t - r) u(x, r, t) from t = 1 down the
    grid; v-param: Euler x <- x - dt v(x, t)."""
    probe, n = TimeProbe(), 5
    torch.manual_seed(0)
    eps = torch.randn(n, 2)
    one, zero, half = torch.ones(n, 1), torch.zeros(n, 1), torch.full((n, 1), 0.5)
    torch.manual_seed(0)
    torch.testing.assert_close(tm.sample_u_param(probe, n, 1), eps - probe(eps, zero, one))
    x = eps - 0.5 * probe(eps, half, one)
    torch.manual_seed(0)
    torch.testing.assert_close(tm.sample_u_param(probe, n, 2), x - 0.5 * probe(x, zero, half))
    x = eps - 0.5 * probe(eps, one)
    torch.manual_seed(0)
    torch.testing.assert_close(tm.sample_v_param(probe, n, 2), x - 0.5 * probe(x, half))


def test_datasets_are_seeded_and_inside_the_box():
    for name in tm.DATASETS:
        a, b = tm.sample_dataset(name, 500, seed=3, split=0), tm.sample_dataset(name, 500, seed=3, split=0)
        assert a.shape == (500, 2) and torch.equal(a, b)
        assert not torch.equal(a, tm.sample_dataset(name, 500, seed=3, split=1))
        assert a.abs().max() <= tm.BOX


def test_meanflow_target_matches_finite_differences():
    """du/dt from the JVP equals the finite difference of u along (a_t, r, t) -> (a_t + h v, r, t + h);
    with r = t the target is the conditional velocity (plain flow matching)."""
    torch.manual_seed(0)
    u_net = tm.ToyMLP(n_times=2).double()
    a, eps = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    t, r = torch.full((8, 1), 0.7, dtype=torch.float64), torch.full((8, 1), 0.2, dtype=torch.float64)
    u, u_tgt = tm.meanflow_target(u_net, a, eps, r, t)
    h, a_t, v = 1e-6, (1 - t) * a + t * eps, eps - a
    dudt = (u_net(a_t + h * v, r, t + h) - u_net(a_t - h * v, r, t - h)) / (2 * h)
    torch.testing.assert_close(u_tgt, v - (t - r) * dudt, rtol=1e-5, atol=1e-6)
    assert u.requires_grad and not u_tgt.requires_grad
    _, u_tgt_flow = tm.meanflow_target(u_net, a, eps, t, t)
    torch.testing.assert_close(u_tgt_flow, v)


def test_quick_run_writes_outputs_and_one_meanflow_step_beats_one_euler_step(tmp_path, monkeypatch):
    # Two datasets and two step counts keep the test short; each model reseeds, so the checkerboard numbers
    # are the same as with the default --steps 1 2 5 10. A --quick run writes into runs/, not over docs/toy.
    monkeypatch.chdir(tmp_path)
    args = tyro.cli(tm.Args, args=["--quick", "--datasets", "checkerboard", "moons", "--steps", "1", "10"])
    distances = tm.main(args)
    assert not os.path.exists("docs")
    tmp_path = tmp_path / "runs" / "toy_meanflow_quick"

    png = tmp_path / "toy_meanflow.png"
    assert png.exists() and png.stat().st_size > 20_000
    with open(tmp_path / "toy_meanflow.csv") as f:
        rows = list(csv.DictReader(f))
    rows_per_dataset = [*tm.columns(args), *((r, 0) for r in tm.REFERENCES)]
    expected = {(d, m, str(k)) for d in ("checkerboard", "moons") for m, k in rows_per_dataset}
    assert {(r["dataset"], r["method"], r["steps"]) for r in rows} == expected and len(rows) == len(expected) == 18
    assert all(float(r["energy"]) < 0.01 and abs(float(r["mmd2"])) < 1e-3 for r in rows if "floor" in r["method"])
    table = (tmp_path / "toy_meanflow.md").read_text()
    assert "Energy distance" in table and "MMD^2" in table and table.count("\n| ") == 2 * (1 + len(rows_per_dataset))

    # The paper's claim on checkerboard, with a margin: one MeanFlow step is far closer to the data than one
    # Euler step of flow matching (which collapses towards the mean) or one DDPM step.
    u1, v1, ddpm1 = (distances["checkerboard", m, 1] for m in ("u-param", "v-param", "DDPM"))
    assert u1 < 0.3 * v1, (u1, v1)
    assert u1 < 0.3 * ddpm1, (u1, ddpm1)


def test_the_claim_lines_name_each_step_count_once():
    """One line per dataset: each baseline at the fewest and the most steps, relative to u-param; with one step count
    (--steps 1) each baseline once."""
    distances = {("moons", "u-param", 1): 0.1, ("moons", "v-param", 1): 0.2, ("moons", "DDPM", 1): 0.4}
    distances |= {("moons", "v-param", 10): 0.05, ("moons", "DDPM", 10): 0.3}
    distances |= {("moons", "Gaussian fit", 0): 0.15, ("moons", "uniform on the box", 0): 0.3}
    args = tm.Args(steps=[1, 10], u_steps=[1])
    line = tm.claim_check(distances, ["moons"], args)
    assert line == [
        "- moons, relative to u-param with 1 step: v-param 1: 2.0x, DDPM 1: 4.0x, v-param 10: 0.5x, DDPM 10: 3.0x, "
        "Gaussian fit: 1.5x, uniform on the box: 3.0x"
    ]
    line = tm.claim_check(distances, ["moons"], tm.Args(steps=[1], u_steps=[1]))[0]
    assert line.endswith("with 1 step: v-param 1: 2.0x, DDPM 1: 4.0x, Gaussian fit: 1.5x, uniform on the box: 3.0x")


def test_the_narrow_mmd_sees_the_checkerboards_squares():
    """MMD^2 ~0 for two samples of the checkerboard; against a uniform spread over the box (half its mass in the empty
    squares) well above that, though the energy distance of that uniform spread is small (a sign or a diagonal term
    wrong fails)."""
    rng = np.random.default_rng(0)
    board, other = (tm.sample_dataset("checkerboard", 3000, 0, split) for split in (1, 2))
    uniform = torch.as_tensor(rng.uniform(-tm.BOX, tm.BOX, (3000, 2)), dtype=torch.float32)
    same, spread = tm.mmd(board, other, 0.25), tm.mmd(board, uniform, 0.25)
    assert abs(same) < 2e-4 and spread > 20 * abs(same) + 2e-3, (same, spread)
    assert tm.mmd(uniform, board, 0.25) == pytest.approx(spread, rel=1e-4)


def test_the_toys_meanflow_draws_and_target_are_ofqls():
    """The toy's u-param is ofql.py's MeanFlow without the state: the same (t, r) draws and the same target."""
    import ofql

    for ratio in (0.0, 0.3, 0.5, 1.0):
        torch.manual_seed(0)
        toy = tm.sample_t_r(1000, ratio, -0.4, 1.0, "cpu")
        torch.manual_seed(0)
        assert all(torch.equal(x, y) for x, y in zip(toy, ofql.sample_t_r(1000, ratio, -0.4, 1.0, "cpu")))

    def u_fn(a_t, r, t):  # a smooth u of a_t, r and t: the JVP has work to do
        return torch.tanh(a_t * (1 + t) - r) * torch.cat([t, r], dim=-1)

    a, eps, (t, r) = torch.randn(64, 2), torch.randn(64, 2), tm.sample_t_r(64, 0.5, -0.4, 1.0, "cpu")
    for x, y in zip(tm.meanflow_target(u_fn, a, eps, r, t), ofql.meanflow_target(u_fn, a, eps, r, t)):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs must be at least 1, not 0"),
        (["--n-eval", "1"], r"--n-eval must be at least 2 \(the distances' unbiased estimates pair distinct samples"),
        (["--learning-rate", "nan"], r"--learning-rate must be a number in \(0, inf\), not nan"),
        (["--flow-ratio", "1.5"], r"--flow-ratio must be a number in \[0, 1\], not 1.5"),
        (["--adaptive-weight-power", "20"], r"--adaptive-weight-power must be a number in \[0, 10\]"),  # NaN tables
        (["--time-emb-dim", "3"], "--time-emb-dim must be even and at least 2"),
        (["--u-steps", "0", "1"], r"--u-steps must be one or more step counts, each at least 1, not \(0, 1\)"),
        (["--datasets"], r"--datasets must be one or more names, not \(\)"),
    ],
)
def test_a_flag_out_of_its_range_is_one_line_before_anything_runs(tmp_path, capsys, flags, message):
    """Not a table of NaNs (--flow-ratio 1.5) or a traceback minutes later (--epochs 0): one line, exit code 2."""
    args = tyro.cli(tm.Args, args=[*flags, "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        tm.main(args)
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
    line = capsys.readouterr().err.strip()
    assert line.startswith("toy_meanflow.py: error: ") and "\n" not in line and re.search(message, line)


def test_energy_distance_is_the_u_statistic():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 2, generator=g), torch.randn(7, 2, generator=g)
    d = lambda a, b: float((a - b).norm())
    xx = sum(d(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(d(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / 42
    xy = sum(d(a, b) for a in x for b in y) / 35
    assert tm.energy_distance(x, y) == pytest.approx(2 * xy - xx - yy, rel=1e-5)


def test_the_gaussian_reference_has_the_datas_covariance():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(50_000, 2, generator=g) @ torch.tensor([[1.0, 0.6], [0.0, 0.4]])
    ref = tm.references(data, 50_000, seed=1)["Gaussian fit"]
    torch.testing.assert_close(torch.cov(ref.T), torch.cov(data.T), atol=0.02, rtol=0)


def test_the_claim_line_is_relative_to_u_params_fewest_steps():
    v = {("m", "u-param", 1): 0.1, ("m", "u-param", 2): 0.4, ("m", "v-param", 1): 0.2, ("m", "DDPM", 1): 0.4}
    v |= {("m", "Gaussian fit", 0): 0.3, ("m", "uniform on the box", 0): 0.5}
    line = tm.claim_check(v, ["m"], tm.Args(steps=(1,), u_steps=(1, 2)))[0]
    ratios = "v-param 1: 2.0x, DDPM 1: 4.0x, Gaussian fit: 3.0x, uniform on the box: 5.0x"
    assert line == f"- m, relative to u-param with 1 step: {ratios}"


class TimeRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.times = []

    def forward(self, x, t):
        self.times.append(t.flatten().tolist())
        return 0.3 * x + t


def test_ddpm_trains_and_samples_at_the_same_times_and_steps_to_the_posterior():
    net = TimeRecorder()
    torch.manual_seed(0)
    tm.ddpm_loss(net, torch.randn(2000, 2), 4)
    assert sorted(set(net.times[0])) == [0.25, 0.5, 0.75, 1.0]
    net.times.clear()
    torch.manual_seed(0)
    out = tm.sample_ddpm(net, 3, 2)
    assert [row[0] for row in net.times] == [1.0, 0.5]
    betas = tm.vp_betas(2)
    abar = torch.cumprod(1 - betas, 0)
    torch.manual_seed(0)
    x = torch.randn(3, 2)
    for i, prev in ((1, abar[0]), (0, torch.tensor(1.0))):
        eps = 0.3 * x + (i + 1) / 2
        x0 = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-4, 4)
        mean = (betas[i] * prev.sqrt() * x0 + (1 - prev) * (1 - betas[i]).sqrt() * x) / (1 - abar[i])
        var = betas[i] * (1 - prev) / (1 - abar[i])  # the posterior q(x_{i-1} | x_i, x0)'s variance
        x = mean + (var.sqrt() * torch.randn_like(x) if i > 0 else 0)
    torch.testing.assert_close(out, x.clamp(-4, 4))


def test_the_noise_floor_is_a_fresh_sample(tmp_path, monkeypatch):
    def fake_run(name, args):  # no training: every model returns the held-out points
        return {c: tm.sample_dataset(name, args.n_eval, args.seed, 1) for c in tm.columns(args)}

    monkeypatch.setattr(tm, "run_dataset", fake_run)
    args = tm.Args(
        datasets=("moons",),
        steps=(1,),
        u_steps=(1,),
        n_eval=300,
        n_plot=10,
        epochs=1,
        batches_per_epoch=1,
        batch_size=8,
        output_dir=str(tmp_path),
    )
    d = tm.main(args)
    fresh, truth = (tm.sample_dataset("moons", 300, 1, s) for s in (2, 1))
    assert d["moons", tm.REFERENCES[2], 0] == pytest.approx(tm.energy_distance(fresh, truth))
