# Toy study of OFQL (paper Sec. 7, Fig. 4; Appendix C, Fig. 6-7): see docs/toy-study.md.
"""One MeanFlow step (u-param) against flow matching (v-param) and DDPM on 2-D toy data.

Every model is the paper's toy MLP (3 hidden layers of 64, Mish; Appendix C), trained on the same
data with the same budget. The script writes a Fig. 6/7-style grid of samples and a table of the
energy distance and a narrow-kernel MMD between each model's samples and a held-out ground-truth sample.
"""

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import tyro

DatasetName = Literal["checkerboard", "spiral", "crescent", "moons"]


@dataclass
class Args:
    seed: int = 1
    """seed of the data samplers, of network initialisation and of all noise"""
    datasets: tuple[DatasetName, ...] = ("checkerboard", "spiral", "crescent", "moons")
    """toy datasets, one row of the figure each"""
    steps: tuple[int, ...] = (1, 2, 5, 10)
    """sampling steps of v-param (Euler) and of DDPM; one DDPM is trained per value, with T = steps, as in DQL"""
    u_steps: tuple[int, ...] = (1, 2)
    """sampling steps for u-param MeanFlow (one model, sampled on a uniform grid)"""
    output_dir: str | None = None
    """where toy_meanflow.png, .md and .csv go (default: docs/toy; with --quick, runs/toy_meanflow_quick)"""
    quick: bool = False
    """small budget for tests: overrides the budget with 16 epochs x 25 batches of 1024 and 2000 evaluation points"""
    epochs: int = 50
    """training epochs (Appendix C: 100; the default 50 x 1024 is a quarter of the paper's compute)"""
    batches_per_epoch: int = 40
    """batches per epoch (Appendix C: 40); the training set holds batches_per_epoch x batch_size points"""
    batch_size: int = 1024
    """batch size (Appendix C: 2048)"""
    learning_rate: float = 3e-3
    """Adam learning rate of all models, cosine-decayed to 0 (Appendix C gives none: docs/toy-study.md)"""
    hidden_dim: int = 64
    """width of the 3 hidden layers (Appendix C: 64)"""
    time_emb_dim: int = 16
    """size of the sinusoidal embedding of each time input (t; and r for u-param)"""
    flow_ratio: float = 0.5
    """fraction of each MeanFlow batch with r = t (plain flow matching rows; paper: 0.5)"""
    time_mu: float = -0.4
    """mean of the logit-normal (t, r) draws (paper: -0.4)"""
    time_sigma: float = 1.0
    """standard deviation of the logit-normal (t, r) draws (paper: 1.0)"""
    # p = 0, as in ofql.py: all three models are fitted with plain MSE. p = 1 on its own (even with the JVP term
    # removed) keeps one-step samples from collapsing and would blur the comparison.
    adaptive_weight_power: float = 0.0
    """p of MeanFlow's adaptive loss weight 1 / sg(err + 1e-3)^p; 0 is plain MSE (Eq. 14), as for the other models"""
    n_eval: int = 4000
    """held-out ground-truth points, and generated points per model, for the two distances"""
    mmd_width: float = 0.25
    """the Gaussian kernel's width of the MMD (an eighth of a checkerboard square): a distance that sees local shape"""
    n_plot: int = 1000
    """points of each colour drawn per panel"""
    threads: int = 1
    """torch CPU threads (these tiny networks gain little from more, and lose a lot on a busy machine)"""


QUICK = dict(epochs=16, batches_per_epoch=25, batch_size=1024, n_eval=2000)
BOX = 4.0  # every dataset lies in [-BOX, BOX]^2; samplers clip to it as DQL/OFQL clip to the action bounds


# ------------------------------------------------------------------------------------------------
# Datasets: 2-D samplers with an explicit numpy Generator, so a seed fixes the data.
# ------------------------------------------------------------------------------------------------
def sample_checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """8 squares of a 4x4 checkerboard on [-4, 4]^2 (the FFJORD toy)."""
    x = rng.uniform(-2, 2, n)
    y = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x) % 2
    return 2 * np.stack([x, y], axis=1)


def sample_spiral(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved noisy spiral arms (the FFJORD "2spirals" toy)."""
    theta = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    arm = np.where(rng.uniform(0, 1, n) < 0.5, 1.0, -1.0)[:, None]
    xy = np.stack([-np.cos(theta) * theta, np.sin(theta) * theta], axis=1) + rng.uniform(0, 0.5, (n, 2))
    return arm * xy / 3 + 0.1 * rng.standard_normal((n, 2))


def sample_crescent(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on a disc of radius 3 minus a shifted disc of radius 2.4: the inner circle must stay empty."""
    out = np.empty((0, 2))
    while len(out) < n:
        xy = rng.uniform(-3, 3, (2 * n, 2))
        keep = (np.linalg.norm(xy, axis=1) < 3) & (np.linalg.norm(xy - [1.2, 0.0], axis=1) > 2.4)
        out = np.concatenate([out, xy[keep]])
    return out[:n]


def sample_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved half circles with Gaussian noise (sklearn's make_moons, scaled by 2)."""
    theta = rng.uniform(0, np.pi, n)
    upper = rng.uniform(0, 1, n) < 0.5
    x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    return 2 * (np.stack([x - 0.5, y - 0.25], axis=1) + 0.08 * rng.standard_normal((n, 2)))


DATASETS = {
    "checkerboard": sample_checkerboard,
    "spiral": sample_spiral,
    "crescent": sample_crescent,
    "moons": sample_moons,
}


def sample_dataset(name: str, n: int, seed: int, split: int) -> torch.Tensor:
    """n points of dataset `name`: split 0 is the training set, 1 the held-out set, 2 a fresh sample (noise floor)."""
    rng = np.random.default_rng([seed, split, list(DATASETS).index(name)])
    return torch.as_tensor(DATASETS[name](n, rng), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# Network: the toy MLP of Appendix C, on [x, emb(time_1), ..., emb(time_k)].
# ------------------------------------------------------------------------------------------------
def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1], shape (B, 1) -> (B, dim), frequencies 1 ... 10. The JVP of Eq. 54
    differentiates through it: DDPM-style frequencies up to 1000 made the one-step map visibly worse."""
    freqs = torch.logspace(0, 1, dim // 2)
    return torch.cat([torch.sin(t * freqs), torch.cos(t * freqs)], dim=-1)


class ToyMLP(nn.Module):
    """f(x, *times): 3 hidden layers of `hidden` units with Mish (Appendix C). v-param and DDPM get one
    time input, u-param gets two, called as u(a_t, r, t) like in ofql.py."""

    def __init__(self, n_times: int, hidden: int = 64, emb_dim: int = 16, dim: int = 2):
        super().__init__()
        self.emb_dim = emb_dim
        self.net = nn.Sequential(
            nn.Linear(dim + n_times * emb_dim, hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.Mish(),
            nn.Linear(hidden, dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, *times: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, *(time_embedding(t, self.emb_dim) for t in times)], dim=-1))


# ------------------------------------------------------------------------------------------------
# u-param: MeanFlow (Eq. 13-15), the same code as ofql.py without the state s.
# ------------------------------------------------------------------------------------------------
def sample_t_r(
    batch_size: int, flow_ratio: float, mu: float, sigma: float, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) for Eq. 14: two logit-normal(mu, sigma) draws, t = max and r = min; r = t (plain flow matching) in
    exactly floor(flow_ratio * B) rows at random positions, as in the author's code."""
    tr = torch.sigmoid(mu + sigma * torch.randn(batch_size, 2, device=device))
    t, r = tr.max(dim=1, keepdim=True).values, tr.min(dim=1, keepdim=True).values
    flow_rows = torch.rand(batch_size, 1, device=device).argsort(dim=0) < int(flow_ratio * batch_size)
    return t, torch.where(flow_rows, t, r)


def meanflow_target(u_fn, a, eps, r, t):
    """Prediction u(a_t, r, t) and the stop-gradient MeanFlow target u_tgt (Eq. 13-15).
    du/dt along the trajectory is the JVP of u with tangents (v, 0, 1) for (a_t, r, t) (Eq. 54); r, whose tangent
    is 0, is held fixed instead, which spares the JVP from carrying zeros through r's embedding (same result)."""
    a_t = (1 - t) * a + t * eps  # Eq. 8
    v = eps - a  # conditional velocity
    u, dudt = torch.func.jvp(lambda a_t, t: u_fn(a_t, r, t), (a_t, t), (v, torch.ones_like(t)))
    return u, (v - (t - r) * dudt).detach()  # Eq. 15, sg(.)


def meanflow_loss(u_net: nn.Module, a: torch.Tensor, args: Args) -> torch.Tensor:
    """Eq. 14 (p = 0), or with MeanFlow's adaptive weight: mean(err / sg(err + 1e-3)^p), err = per-sample MSE."""
    t, r = sample_t_r(a.shape[0], args.flow_ratio, args.time_mu, args.time_sigma, a.device)
    u, u_tgt = meanflow_target(u_net, a, torch.randn_like(a), r, t)
    err = (u - u_tgt).pow(2).mean(dim=-1)
    weight = (err.detach() + 1e-3).pow(-args.adaptive_weight_power)
    return (weight * err).mean()


@torch.no_grad()
def sample_u_param(u_net: nn.Module, n: int, steps: int) -> torch.Tensor:
    """a = eps - u(eps, r=0, t=1) for 1 step (Eq. 12); k steps: x <- x - (t_i - t_{i-1}) u(x, t_{i-1}, t_i)."""
    x, grid = torch.randn(n, 2), torch.linspace(0, 1, steps + 1)
    for i in range(steps, 0, -1):
        t, r = torch.full((n, 1), grid[i].item()), torch.full((n, 1), grid[i - 1].item())
        x = x - (t - r) * u_net(x, r, t)
    return x.clamp(-BOX, BOX)


# ------------------------------------------------------------------------------------------------
# v-param: flow matching on the marginal velocity, sampled with Euler steps.
# ------------------------------------------------------------------------------------------------
def flow_matching_loss(v_net: nn.Module, a: torch.Tensor, args: Args) -> torch.Tensor:
    """||v(a_t, t) - (eps - a)||^2 with t ~ U(0, 1) (Eq. 9): flow matching regresses the conditional velocity."""
    t, eps = torch.rand(a.shape[0], 1), torch.randn_like(a)
    return ((v_net((1 - t) * a + t * eps, t) - (eps - a)) ** 2).mean()


@torch.no_grad()
def sample_v_param(v_net: nn.Module, n: int, steps: int) -> torch.Tensor:
    """Euler from t = 1 (noise) to t = 0: x <- x - dt v(x, t)."""
    x, grid = torch.randn(n, 2), torch.linspace(0, 1, steps + 1)
    for i in range(steps, 0, -1):
        x = x - (grid[i] - grid[i - 1]) * v_net(x, torch.full((n, 1), grid[i].item()))
    return x.clamp(-BOX, BOX)


# ------------------------------------------------------------------------------------------------
# DDPM as in DQL: epsilon-prediction, VP schedule with T steps, x0 clipped at each reverse step.
# ------------------------------------------------------------------------------------------------
def vp_betas(T: int, b_min: float = 0.1, b_max: float = 10.0) -> torch.Tensor:
    """DQL's 'vp' schedule: alpha_i = exp(-b_min/T - (b_max - b_min)(2i - 1)/(2T^2)), i = 1..T; the final
    alpha_bar is exp(-5.05) for every T, so DDPMs with different T start from the same noise level."""
    i = torch.arange(1, T + 1, dtype=torch.float32)
    return 1 - torch.exp(-b_min / T - 0.5 * (b_max - b_min) * (2 * i - 1) / T**2)


def ddpm_loss(eps_net: nn.Module, a: torch.Tensor, T: int) -> torch.Tensor:
    """||eps(x_i, i) - eps||^2 with x_i = sqrt(abar_i) a + sqrt(1 - abar_i) eps, i ~ U{1..T}; the network sees i/T."""
    abar = torch.cumprod(1 - vp_betas(T), 0)
    i = torch.randint(0, T, (a.shape[0], 1))
    eps = torch.randn_like(a)
    x = abar[i].sqrt() * a + (1 - abar[i]).sqrt() * eps
    return ((eps_net(x, (i + 1) / T) - eps) ** 2).mean()


@torch.no_grad()
def sample_ddpm(eps_net: nn.Module, n: int, T: int) -> torch.Tensor:
    """Ancestral sampling (DQL's p_sample): predict x0, clip it, step to the posterior q(x_{i-1} | x_i, x0)."""
    betas = vp_betas(T)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1), abar[:-1]])
    x = torch.randn(n, 2)
    for i in range(T - 1, -1, -1):
        eps = eps_net(x, torch.full((n, 1), (i + 1) / T))
        x0 = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-BOX, BOX)
        mean = (betas[i] * abar_prev[i].sqrt() * x0 + (1 - abar_prev[i]) * (1 - betas[i]).sqrt() * x) / (1 - abar[i])
        std = (betas[i] * (1 - abar_prev[i]) / (1 - abar[i])).sqrt()
        x = mean + (std * torch.randn_like(x) if i > 0 else 0)
    return x.clamp(-BOX, BOX)


# ------------------------------------------------------------------------------------------------
# Sample quality: energy distance (Szekely & Rizzo), which weighs the global layout, and an MMD with a narrow kernel,
# which sees local shape (a uniform spread over the box scores well on the first, badly on the second).
# ------------------------------------------------------------------------------------------------
def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, with unbiased U-statistics for the within-sample terms.
    D^2 >= 0 with equality iff the distributions agree, and it needs no kernel bandwidth; the estimate is ~0
    (and may be slightly negative) for two samples of one distribution."""
    n, m = len(x), len(y)
    xx, yy = torch.cdist(x, x).sum() / (n * (n - 1)), torch.cdist(y, y).sum() / (m * (m - 1))  # diagonals are 0
    return (2 * torch.cdist(x, y).mean() - xx - yy).item()


def mmd(x: torch.Tensor, y: torch.Tensor, width: float) -> float:
    """MMD^2 with the Gaussian kernel exp(-|a - b|^2 / (2 width^2)), unbiased within-sample terms (~0 for two samples
    of one distribution); a narrow width compares the densities at that scale."""
    k = lambda a, b: torch.exp(-torch.cdist(a, b).square() / (2 * width**2))  # noqa: E731
    n, m = len(x), len(y)
    return ((k(x, x).sum() - n) / (n * (n - 1)) + (k(y, y).sum() - m) / (m * (m - 1)) - 2 * k(x, y).mean()).item()


def references(data: torch.Tensor, n: int, seed: int) -> dict[str, torch.Tensor]:
    """What a model that learnt no shape could give: the Gaussian of the training data's mean and covariance, and a
    uniform spread over the box."""
    g = torch.Generator().manual_seed(seed)
    gaussian = data.mean(0) + torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(torch.cov(data.T)).T
    return {
        "Gaussian fit": gaussian.clamp(-BOX, BOX),
        "uniform on the box": (torch.rand(n, 2, generator=g) * 2 - 1) * BOX,
    }


# ------------------------------------------------------------------------------------------------
# Training: Adam on a fixed training set, reshuffled every epoch (Appendix C's epochs x batches).
# ------------------------------------------------------------------------------------------------
def train(net: nn.Module, loss_fn, data: torch.Tensor, args: Args) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * args.batches_per_epoch)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(data)).view(args.batches_per_epoch, args.batch_size):
            loss = loss_fn(net, data[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return loss.item()


def run_dataset(name: str, args: Args) -> dict[tuple[str, int], torch.Tensor]:
    """Trains v-param, u-param and one DDPM per step count on `name`; returns samples per (method, steps)."""
    data = sample_dataset(name, args.batches_per_epoch * args.batch_size, args.seed, split=0)
    samples = {}

    def fit(label: str, net: nn.Module, loss_fn) -> nn.Module:
        torch.manual_seed(args.seed)  # same training noise stream for every model, whatever ran before
        start = time.time()
        loss = train(net, loss_fn, data, args)
        print(f"  {name:<12} {label:<12} final loss {loss:.4f}  ({time.time() - start:.1f} s)", flush=True)
        return net

    def mlp(n_times: int) -> ToyMLP:
        torch.manual_seed(args.seed)  # same initialisation for every model of a given shape
        return ToyMLP(n_times, args.hidden_dim, args.time_emb_dim)

    v_net = fit("v-param", mlp(1), lambda net, a: flow_matching_loss(net, a, args))
    u_net = fit("u-param", mlp(2), lambda net, a: meanflow_loss(net, a, args))
    for k in args.steps:
        torch.manual_seed(args.seed + k)
        samples["v-param", k] = sample_v_param(v_net, args.n_eval, k)
    for k in args.u_steps:
        torch.manual_seed(args.seed + k)
        samples["u-param", k] = sample_u_param(u_net, args.n_eval, k)
    for k in args.steps:
        eps_net = fit(f"DDPM T={k}", mlp(1), lambda net, a, T=k: ddpm_loss(net, a, T))
        torch.manual_seed(args.seed + k)
        samples["DDPM", k] = sample_ddpm(eps_net, args.n_eval, k)
    return samples


# ------------------------------------------------------------------------------------------------
# Outputs: a Fig. 6/7-style grid and the table of distances.
# ------------------------------------------------------------------------------------------------
def columns(args: Args) -> list[tuple[str, int]]:
    return (
        [("v-param", k) for k in args.steps]
        + [("DDPM", k) for k in args.steps]
        + [("u-param", k) for k in args.u_steps]
    )


def plot_grid(truth: dict, samples: dict, distances: dict, args: Args, path: str) -> None:
    cols = columns(args)
    fig, axes = plt.subplots(len(truth), len(cols), figsize=(2.2 * len(cols), 2.2 * len(truth)), squeeze=False)
    for row, name in enumerate(truth):
        for col, (method, k) in enumerate(cols):
            ax = axes[row, col]
            ax.scatter(*truth[name][: args.n_plot].T, s=2, c="0.8", linewidths=0, rasterized=True)  # light, below
            ax.scatter(*samples[name][method, k][: args.n_plot].T, s=1.5, c="tab:red", linewidths=0, rasterized=True)
            ax.set(xlim=(-BOX, BOX), ylim=(-BOX, BOX), xticks=[], yticks=[], aspect="equal")
            d = distances[name, method, k]
            ax.text(0.03, 0.03, f"{d:.3f}", transform=ax.transAxes, fontsize=7, bbox=dict(fc="white", ec="none", pad=1))
            if row == 0:
                ax.set_title(f"{method}, {k} step{'s' * (k > 1)}", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    fig.suptitle("grey: held-out ground truth, red: samples; bottom left: energy distance", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


REFERENCES = ("Gaussian fit", "uniform on the box", "fresh ground-truth sample (noise floor)")  # rows, no steps


def write_tables(metrics: dict[str, dict], args: Args, out: str) -> str:
    """CSV in long form (one row per dataset x method x steps, a column per metric) and a markdown table per metric
    (methods and the references x datasets); metrics: {metric name: {(dataset, method, steps): value}}."""
    first = next(iter(metrics.values()))
    names = list(dict.fromkeys(n for n, _, _ in first))
    with open(os.path.join(out, "toy_meanflow.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        short = ["".join(filter(str.isalnum, m.split()[0].lower())) for m in metrics]  # energy, mmd2
        writer.writerow(["dataset", "method", "steps", *short])
        for key in first:
            writer.writerow([*key, *(f"{values[key]:.5f}" for values in metrics.values())])
    text = []
    for metric, values in metrics.items():
        lines = [
            f"{metric}:",
            "",
            "| method | steps (NFE) | " + " | ".join(names) + " |",
            "|---|---|" + "---:|" * len(names),
        ]
        rows = [*columns(args), *((r, 0) for r in REFERENCES)]
        lines += [
            f"| {m} | {k or '-'} | " + " | ".join(f"{values[n, m, k]:.4f}" for n in names) + " |" for m, k in rows
        ]
        text.append("\n".join(lines + ["", *claim_check(values, names, args)]))
    table = "\n\n".join(text)
    with open(os.path.join(out, "toy_meanflow.md"), "w") as f:
        f.write(f"Distances between {args.n_eval} generated and {args.n_eval} held-out points, lower is better.\n\n")
        f.write(table + "\n")
    return table


def claim_check(values: dict, names: list[str], args: Args) -> list[str]:
    """One line per dataset: v-param and DDPM with the fewest and most steps, and the references, relative to u-param
    with the fewest steps."""
    u, lo, hi = min(args.u_steps), min(args.steps), max(args.steps)
    lines = []
    for n in names:
        others = [(m, k) for k in dict.fromkeys((lo, hi)) for m in ("v-param", "DDPM")] + [
            (r, 0) for r in REFERENCES[:2]
        ]
        rel = [f"{m}{f' {k}' if k else ''}: {values[n, m, k] / values[n, 'u-param', u]:.1f}x" for m, k in others]
        lines.append(f"- {n}, relative to u-param with {u} step{'s' * (u > 1)}: " + ", ".join(rel))
    return lines


def check_args(args: Args) -> None:
    """Every number flag in its range at start-up (not NaN tables or a traceback minutes later): one line, exit 2."""
    ranges = {  # flags: (the check, the range in words)
        "epochs batches_per_epoch batch_size hidden_dim n_plot threads": (lambda x: x >= 1, "at least 1"),
        "n_eval": (lambda x: x >= 2, "at least 2 (the distances' unbiased estimates pair distinct samples)"),
        "learning_rate time_sigma mmd_width": (lambda x: 0 < x < math.inf, "a number in (0, inf)"),
        "flow_ratio": (lambda x: 0 <= x <= 1, "a number in [0, 1]"),
        "adaptive_weight_power": (lambda x: 0 <= x <= 10, "a number in [0, 10] (above 12 the weight overflows)"),
        "time_mu": (math.isfinite, "a finite number"),
        "time_emb_dim": (lambda x: x >= 2 and x % 2 == 0, "even and at least 2 (sines and cosines)"),
        "steps u_steps": (lambda x: len(x) > 0 and min(x) >= 1, "one or more step counts, each at least 1"),
        "datasets": (lambda x: len(x) > 0, "one or more names"),
    }
    for names, (ok, what) in ranges.items():
        for name in (n for n in names.split() if not ok(getattr(args, n))):
            flag = name.replace("_", "-")
            print(f"toy_meanflow.py: error: --{flag} must be {what}, not {getattr(args, name)}", file=sys.stderr)
            raise SystemExit(2)


def main(args: Args) -> dict:
    if args.quick:
        args = Args(**{**vars(args), **QUICK})
    if args.output_dir is None:  # a smoke run leaves the docs' results alone
        args = Args(**{**vars(args), "output_dir": "runs/toy_meanflow_quick" if args.quick else "docs/toy"})
    check_args(args)
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    truth, samples, distances, mmds = {}, {}, {}, {}
    for name in args.datasets:
        truth[name] = sample_dataset(name, args.n_eval, args.seed, split=1)
        samples[name] = run_dataset(name, args)
        training = sample_dataset(name, args.batches_per_epoch * args.batch_size, args.seed, split=0)
        fresh = sample_dataset(name, args.n_eval, args.seed, split=2)
        refs = {**references(training, args.n_eval, args.seed), REFERENCES[2]: fresh}
        for (method, k), x in {**samples[name], **{(r, 0): x for r, x in refs.items()}}.items():
            distances[name, method, k] = energy_distance(x, truth[name])
            mmds[name, method, k] = mmd(x, truth[name], args.mmd_width)
    plot_grid(truth, samples, distances, args, os.path.join(args.output_dir, "toy_meanflow.png"))
    metrics = {"Energy distance D^2": distances, f"MMD^2, Gaussian kernel of width {args.mmd_width}": mmds}
    print(write_tables(metrics, args, args.output_dir))
    print(f"wrote {args.output_dir}/toy_meanflow.{{png,md,csv}} in {time.time() - start:.0f} s")
    return distances


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
