"""The MeanFlow mathematics of ofql.py, checked numerically against a flow known in closed form.

Data a ~ N(mu, diag(sigma^2)) and noise eps ~ N(0, I) on the path a_t = (1 - t) a + t eps (Eq. 8). The marginal of
a_t is N(m_t, s_t^2) with m_t = (1 - t) mu and s_t^2 = (1 - t)^2 sigma^2 + t^2; the marginal velocity is affine,
v(x, t) = m_t' + (s_t' / s_t)(x - m_t), and its flow keeps the standardised coordinate (x - m_t) / s_t fixed, so the
point at time r of the trajectory through x at time t is x_r = m_r + (s_r / s_t)(x - m_t). Hence the exact average
velocity (Eq. 10) is u(x, r, t) = (x - x_r) / (t - r).
"""

import pytest
import torch

import ofql

MU, SIGMA = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.2, 0.1], dtype=torch.float64)


@pytest.fixture(autouse=True)
def float64():
    """Every check here runs in double precision; the default dtype is restored for the other test modules."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def mean_std(t):
    return (1 - t) * MU, torch.sqrt((1 - t) ** 2 * SIGMA**2 + t**2)


def exact_v(x, t):
    m, s = mean_std(t)
    ds = (t - (1 - t) * SIGMA**2) / s
    return -MU + ds / s * (x - m)


def exact_u(x, r, t):
    (m_t, s_t), (m_r, s_r) = mean_std(t), mean_std(r)
    x_r = m_r + s_r / s_t * (x - m_t)
    return (x - x_r) / (t - r)


def integrate_v(x, t_from, t_to, n=2000):
    """RK4 for dx/dt = v(x, t) from t_from to t_to (either direction)."""
    h = (t_to - t_from) / n
    t = t_from
    for _ in range(n):
        k1 = exact_v(x, t)
        k2 = exact_v(x + h / 2 * k1, t + h / 2)
        k3 = exact_v(x + h / 2 * k2, t + h / 2)
        k4 = exact_v(x + h * k3, t + h)
        x, t = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
    return x


def test_exact_u_is_the_time_average_of_v_along_the_flow():
    x, r, t = torch.randn(64, 2), torch.full((64, 1), 0.15), torch.full((64, 1), 0.8)
    x_r = integrate_v(x, t, r)
    torch.testing.assert_close(exact_u(x, r, t), (x - x_r) / (t - r), rtol=1e-9, atol=1e-9)


def test_meanflow_identity_holds_for_the_exact_average_velocity():
    """u = v - (t - r) du/dt (Eq. 13), du/dt by torch.func.jvp along (v, 0, 1) (Eq. 54)."""
    torch.manual_seed(0)
    x, tr = torch.randn(256, 2), torch.rand(256, 2)
    t, r = tr.max(1, keepdim=True).values, tr.min(1, keepdim=True).values
    v = exact_v(x, t)
    u, dudt = torch.func.jvp(exact_u, (x, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    torch.testing.assert_close(u, v - (t - r) * dudt, rtol=1e-9, atol=1e-9)


def _regress_target_on_a_t(target_fn, n=200_000):
    """Least-squares fit of the target against a_t, per action dimension, at fixed (r, t): E[u_tgt | a_t] is affine
    here, so the fit recovers it; it must equal the exact u(a_t, r, t), whose slope and intercept we know."""
    torch.manual_seed(1)
    a, eps = MU + SIGMA * torch.randn(n, 2), torch.randn(n, 2)
    r, t = torch.full((n, 1), 0.25), torch.full((n, 1), 0.7)
    u_tgt = target_fn(lambda a_t, r, t: exact_u(a_t, r, t), a, eps, r, t)[1]
    a_t = (1 - t) * a + t * eps
    fitted, exact = [], []
    for d in range(2):
        design = torch.stack([a_t[:, d], torch.ones(n)], 1)
        fitted.append(torch.linalg.lstsq(design, u_tgt[:, d : d + 1]).solution.flatten())
        probe = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        u0, u1 = exact_u(probe, r[:2], t[:2])[:, d]
        exact.append(torch.stack([u1 - u0, u0]))
    return torch.stack(fitted), torch.stack(exact)


def test_meanflow_target_with_conditional_velocity_regresses_to_exact_u():
    """ofql.meanflow_target uses the conditional velocity eps - a in place of v (Eq. 15): unbiased given a_t."""
    fitted, exact = _regress_target_on_a_t(ofql.meanflow_target)
    torch.testing.assert_close(fitted, exact, rtol=0, atol=0.01)


def test_the_regression_check_catches_swapped_tangents():
    """Negative control: tangents (v, 1, 0), i.e. d/dr instead of d/dt, must fail the same check."""

    def swapped(u_fn, a, eps, r, t):
        a_t, v = (1 - t) * a + t * eps, eps - a
        u, dudt = torch.func.jvp(u_fn, (a_t, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))
        return u, (v - (t - r) * dudt).detach()

    fitted, exact = _regress_target_on_a_t(swapped)
    assert (fitted - exact).abs().max() > 0.1


def test_meanflow_target_is_the_conditional_velocity_when_r_equals_t():
    a, eps, t = torch.randn(32, 2), torch.randn(32, 2), torch.rand(32, 1)
    u, u_tgt = ofql.meanflow_target(lambda a_t, r, t: exact_u(a_t, r - 0.5, t), a, eps, t, t)
    torch.testing.assert_close(u_tgt, eps - a)


def test_jvp_of_the_policy_matches_finite_differences():
    """du/dt of the real network from ofql.meanflow_target against central differences along (v, 0, 1)."""
    torch.manual_seed(2)
    actor, obs = ofql.Actor(5, 3).double(), torch.randn(128, 5)
    a, eps = torch.rand(128, 3) * 2 - 1, torch.randn(128, 3)
    t, r = ofql.sample_t_r(128, 0.0, -0.4, 1.0, "cpu")
    keep = (t - r).flatten() > 1e-3
    u_fn = lambda a_t, r, t: actor(a_t, r, t, obs)  # noqa: E731
    _, u_tgt = ofql.meanflow_target(u_fn, a, eps, r, t)
    v, a_t = eps - a, (1 - t) * a + t * eps
    dudt = (v - u_tgt) / (t - r)
    h = 1e-5
    fd = (u_fn(a_t + h * v, r, t + h) - u_fn(a_t - h * v, r, t - h)) / (2 * h)
    torch.testing.assert_close(dudt[keep], fd[keep], rtol=1e-6, atol=1e-7)


class ExactPolicy(torch.nn.Module):
    """Stands in for ofql.Actor, with its interface: the exact u(a_t, r, t) of the Gaussian flow, ignoring the state."""

    act_dim = 2

    def forward(self, a_t, r, t, obs):
        return exact_u(a_t, r, t)


def test_the_one_step_action_is_eps_minus_u_at_r_0_and_t_1():
    """sample_actions is Eq. 16 with the actor's own call: eps - u(eps, r=0, t=1; s), (1, 1) times as (B, 1) ones (a
    swapped (1, 0) would fail)."""
    torch.manual_seed(5)
    actor, obs = ofql.Actor(5, 3), torch.randn(16, 5)
    torch.manual_seed(6)
    actions = ofql.sample_actions(actor, obs)
    torch.manual_seed(6)
    eps = torch.randn(16, 3)  # the noise sample_actions drew
    zeros, ones = torch.zeros(16, 1), torch.ones(16, 1)
    torch.testing.assert_close(actions, (eps - actor(eps, zeros, ones, obs)).clamp(-1, 1))
    assert not torch.allclose(actor(eps, ones, zeros, obs), actor(eps, zeros, ones, obs))
    half = torch.full((16, 1), 0.5)  # u reads r and t each: one changed, the other held
    assert not torch.allclose(actor(eps, zeros, ones, obs), actor(eps, half, ones, obs))
    assert not torch.allclose(actor(eps, zeros, ones, obs), actor(eps, zeros, half + 0.25, obs))


def test_one_step_action_equals_fine_ode_integration():
    """eps - u(eps, 0, 1) (Eq. 12, 16) is the endpoint of the flow ODE from t = 1 to t = 0 (Appendix G)."""
    obs = torch.zeros(4096, 1)
    torch.manual_seed(3)
    actions = ofql.sample_actions(ExactPolicy(), obs)
    torch.manual_seed(3)
    eps = torch.randn(4096, 2)  # the noise sample_actions drew
    torch.testing.assert_close(actions, integrate_v(eps, 1.0, 0.0).clamp(-1, 1), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(actions.mean(0), MU, rtol=0, atol=0.02)
    torch.testing.assert_close(actions.std(0), SIGMA, rtol=0.05, atol=0)


def test_holding_r_fixed_equals_the_jvp_with_tangent_zero_for_r():
    """meanflow_target closes over r instead of passing it a zero tangent: the same du/dt as the (v, 0, 1) JVP."""
    torch.manual_seed(4)
    actor, obs = ofql.Actor(5, 3), torch.randn(64, 5)
    a, eps = torch.rand(64, 3) * 2 - 1, torch.randn(64, 3)
    t, r = ofql.sample_t_r(64, 0.25, -0.4, 1.0, "cpu")
    u_fn = lambda a_t, r, t: actor(a_t, r, t, obs)  # noqa: E731
    u, u_tgt = ofql.meanflow_target(u_fn, a, eps, r, t)
    v, a_t = eps - a, (1 - t) * a + t * eps
    u3, dudt3 = torch.func.jvp(u_fn, (a_t, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    torch.testing.assert_close(u, u3)
    torch.testing.assert_close(u_tgt, v - (t - r) * dudt3)
