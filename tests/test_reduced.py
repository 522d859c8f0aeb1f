"""The data-driven baselines (DMD, POD-SINDy) on systems whose answers are known."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from firedrake_msm.metrics import diverged_at
from firedrake_msm.reduced import fit_dmd, fit_pod_sindy


def orthonormal(N, r, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((N, r)))[0]


def linear_system():
    r"""x' = B x in R^4 with the eigenvalues -0.1 +- 2i, -0.5, -1, in a random basis."""
    Q = orthonormal(4, 4, 0)
    D = np.array([[-0.1, 2.0, 0, 0], [-2.0, -0.1, 0, 0], [0, 0, -0.5, 0], [0, 0, 0, -1.0]])
    return Q @ D @ Q.T, np.array([-0.1 + 2j, -0.1 - 2j, -0.5, -1.0])


def test_dmd_recovers_a_linear_systems_eigenvalues_and_trajectories():
    """Sampled at dt, x_{k+1} = e^{B dt} x_k: DMD's eigenvalues are e^{mu dt} for B's mu, and its
    forecast from a new state is e^{B t} x_0, between the samples too."""
    B, mu = linear_system()
    dt, times = 0.05, np.arange(40) * 0.05
    starts = np.random.default_rng(1).standard_normal((3, 4))
    snapshots = np.stack([[expm(B * t) @ x0 for t in times] for x0 in starts])
    dmd = fit_dmd(snapshots, times, svd_rank=-1)
    assert dmd.rank == 4 and dmd.dt == pytest.approx(dt)
    found = np.log(dmd.eigenvalues) / dt
    assert np.sort_complex(found) == pytest.approx(np.sort_complex(mu), abs=1e-10)
    x0, later = np.array([1.0, -2.0, 0.5, 3.0]), 1.0 + np.array([0, 0.01, 0.5, 3.33, 10.0])
    expected = np.stack([expm(B * (t - later[0])) @ x0 for t in later])
    assert dmd.forecast(x0, later) == pytest.approx(expected, abs=1e-10)


def test_dmd_keeps_the_rank_of_states_in_a_subspace():
    """States of a 4D system embedded in R^30: the energy rule keeps 4 modes and forecasts exactly."""
    B, mu = linear_system()
    Phi = orthonormal(30, 4, 2)
    times = np.arange(60) * 0.05
    starts = np.random.default_rng(3).standard_normal((2, 4))
    snapshots = np.stack([[Phi @ expm(B * t) @ z0 for t in times] for z0 in starts])
    dmd = fit_dmd(snapshots, times, svd_rank=0.999999)
    assert dmd.rank == 4
    assert np.sort_complex(np.log(dmd.eigenvalues) / 0.05) == pytest.approx(np.sort_complex(mu), abs=1e-8)
    z0 = np.array([0.3, 0.1, -1.0, 2.0])
    assert dmd.forecast(Phi @ z0, times) == pytest.approx(np.stack(
        [Phi @ expm(B * t) @ z0 for t in times]), abs=1e-9)


def test_a_growing_dmd_mode_overflows_to_a_non_finite_forecast():
    times = np.arange(20) * 0.1
    snapshots = np.exp(2.0 * times)[None, :, None] * np.ones((1, 1, 3))
    dmd = fit_dmd(snapshots, times, svd_rank=1)
    assert dmd.eigenvalues == pytest.approx([np.exp(0.2)])
    forecast = dmd.forecast(np.ones(3), np.arange(5000) * 0.1)
    assert np.isfinite(forecast[:100]).all() and diverged_at(np.arange(5000) * 0.1, forecast[None]) > 300


def ellipse(times, phases, A=3.0, B=1.0, omega=2 * np.pi):
    """a = (A cos(omega t + p), B sin(omega t + p)): a1' = -(A/B) omega a2, a2' = (B/A) omega a1."""
    return np.stack([np.stack([A * np.cos(omega * times + p), B * np.sin(omega * times + p)], axis=-1)
                     for p in phases])


def test_pod_sindy_recovers_a_sparse_linear_ode():
    """An ellipse traced over whole periods has its axes for POD modes, so POD-SINDy finds the two
    cross terms and nothing else (the threshold, 5 % of the faster rate, lies below the slower):
    |a1' / a2| = (A/B) omega, |a2' / a1| = (B/A) omega, and the
    product of the two coefficients is -omega^2 whatever the modes' signs."""
    times = np.linspace(0, 2, 401)
    Phi, mean = orthonormal(25, 2, 4), np.linspace(1, 2, 25)
    snapshots = mean + ellipse(times, [0.0, 1.0, 2.5]) @ Phi.T
    model = fit_pod_sindy(snapshots, times, degree=2, threshold=0.05)
    assert model.rank == 2
    Xi = model.model.coefficients().copy()                           # (2, 6): 1, a1, a2, a1^2, a1 a2, a2^2
    omega = 2 * np.pi
    assert abs(Xi[0, 2]) == pytest.approx(3 * omega, rel=1e-3)
    assert abs(Xi[1, 1]) == pytest.approx(omega / 3, rel=1e-3)
    assert Xi[0, 2] * Xi[1, 1] == pytest.approx(-omega**2, rel=1e-3)
    Xi[0, 2] = Xi[1, 1] = 0
    assert np.all(Xi == 0)
    later = np.linspace(0, 3, 31)
    expected = mean + ellipse(later, [0.7])[0] @ Phi.T
    # Over 3 periods the coefficients' finite-difference error (1e-4) shifts the phase a little.
    assert model.forecast(expected[0], later) == pytest.approx(expected, abs=1e-2)


def lotka_volterra(t, z):
    x, y = z
    return [1.0 * x - 0.5 * x * y, -0.75 * y + 0.25 * x * y]


def test_pod_sindy_recovers_a_quadratic_ode_in_its_own_coordinates():
    r"""Lotka-Volterra embedded in R^40, x = m + Phi z: the identified field, mapped back,
    s Psi f(a) = Phi g(Phi^T (x - m)) at states of the span, and the forecast of a new orbit."""
    times = np.linspace(0, 10, 1001)
    starts = [(2.0, 1.0), (3.0, 2.5), (1.5, 3.0)]
    orbits = np.stack([solve_ivp(lotka_volterra, (0, 10), z0, t_eval=times, rtol=1e-12, atol=1e-12).y.T
                       for z0 in starts])
    Phi, m = orthonormal(40, 2, 5), np.random.default_rng(6).standard_normal(40)
    model = fit_pod_sindy(orbits @ Phi.T + m, times, threshold=1e-3)
    assert model.rank == 2
    z = np.random.default_rng(7).uniform(1.5, 3.0, (20, 2))
    x = z @ Phi.T + m
    identified = model.scale * model.model.predict(model.coefficients(x)) @ model.basis.T
    true = np.stack([lotka_volterra(0, zi) for zi in z]) @ Phi.T
    assert identified == pytest.approx(true, abs=1e-3 * np.abs(true).max())
    orbit = solve_ivp(lotka_volterra, (0, 5), (2.5, 2.0), t_eval=times[:501], rtol=1e-12, atol=1e-12).y.T
    assert model.forecast(orbit[0] @ Phi.T + m, times[:501]) == pytest.approx(orbit @ Phi.T + m, abs=1e-2)


def test_a_pod_sindy_forecast_that_leaves_the_data_ends_in_nan():
    """a' = a, fitted on t in [0, 1]: from a(0) = 1 the forecast passes ten times the data's largest
    |a| (e), at t = 1 + ln 10, and is NaN after."""
    times = np.linspace(0, 1, 201)
    direction = orthonormal(6, 1, 8)[:, 0]
    snapshots = np.stack([np.outer(c * np.exp(times), direction) for c in (1.0, -1.0)])    # zero mean
    model = fit_pod_sindy(snapshots, times, rank=1)
    later = np.linspace(0, 6, 601)
    forecast = model.forecast(direction, later)
    assert forecast[:300] == pytest.approx(np.outer(np.exp(later[:300]), direction), rel=1e-4)
    assert diverged_at(later, forecast[None]) == pytest.approx(1 + np.log(10) * 1, abs=0.02)


@pytest.mark.parametrize("fit", [fit_dmd, fit_pod_sindy])
def test_bad_input(fit):
    times = np.linspace(0, 1, 11)
    with pytest.raises(ValueError, match="uniform"):
        fit(np.ones((1, 11, 3)), times**2)
    with pytest.raises(ValueError, match=r"shape \(n, T, N\)"):
        fit(np.ones((11, 3)), times)
    with pytest.raises(ValueError, match="rank must be"):
        fit_pod_sindy(np.random.default_rng(0).standard_normal((1, 11, 3)), times, rank=4)
    with pytest.raises(ValueError, match="threshold is relative"):
        fit_pod_sindy(np.random.default_rng(0).standard_normal((1, 11, 3)), times, threshold=2.0)
