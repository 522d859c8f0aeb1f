"""Metrics against values known in closed form."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from firedrake import (Function, FunctionSpace, RectangleMesh, SpatialCoordinate, TestFunction, TrialFunction,
                       assemble, dx, inner, sin)
from scipy.special import erf

from firedrake_msm.bridge.mass import to_torch_sparse
from firedrake_msm.forecast import moments
from firedrake_msm.metrics import (crps, diverged_at, energy_spectrum, fe_norm, relative_l2, relative_l2_fe,
                                   spread_skill, spread_skill_of_moments, summary)


def test_relative_l2():
    y = np.random.default_rng(0).standard_normal((4, 7, 30))
    assert relative_l2(y, y).shape == (4, 7) and np.all(relative_l2(y, y) == 0)
    assert np.allclose(relative_l2(y, 2 * y), 1, rtol=1e-15)
    assert np.allclose(relative_l2(torch.as_tensor(y), torch.as_tensor(-y)), 2, rtol=1e-15)
    mean, std = summary(relative_l2(y, y + 0.1 * np.arange(7)[:, None] * y))
    assert np.isclose(mean, 0.3) and np.isclose(std, 0.2)        # 0, 0.1, ..., 0.6


def test_diverged_at_is_the_first_non_finite_time():
    times, forecast = np.linspace(0, 1, 11), np.zeros((2, 11, 5))
    assert diverged_at(times, forecast) is None
    forecast[1, 7:, 3] = np.inf
    forecast[0, 4, 2] = np.nan
    assert diverged_at(times, forecast) == 0.4


@pytest.fixture(scope="module")
def space_and_mass():
    V = FunctionSpace(RectangleMesh(3, 5, 2.0, 1.5), "CG", 2)
    return V, assemble(inner(TrialFunction(V), TestFunction(V)) * dx)


def test_fe_norm_of_a_constant_is_exact(space_and_mass):
    """3 on [0, 2] x [0, 1.5]: 3 sqrt(3), with M as Firedrake, scipy, numpy or torch hold it."""
    V, M = space_and_mass
    petsc = M.petscmat
    M_scipy = sp.csr_matrix(petsc.getValuesCSR()[::-1], shape=petsc.getSize())
    u = np.full((2, V.dim()), 3.0)
    dense = M_scipy.toarray()
    for matrix in (M, M_scipy, dense, to_torch_sparse(M_scipy), torch.as_tensor(dense)):
        assert np.allclose(fe_norm(u, matrix), 3.0 * np.sqrt(3.0), rtol=1e-14)


def test_relative_l2_fe_is_firedrakes_norm(space_and_mass):
    V, M = space_and_mass
    x, y = SpatialCoordinate(V.mesh())
    f = Function(V).interpolate(sin(x) * y + 1)
    g = Function(V).interpolate(x * y)
    exact = np.sqrt(assemble((f - g) ** 2 * dx) / assemble(f**2 * dx))
    truth = np.stack([f.dat.data_ro] * 3)
    prediction = np.stack([g.dat.data_ro, f.dat.data_ro, 2 * f.dat.data_ro])
    assert np.allclose(relative_l2_fe(truth, prediction, M), [exact, 0, 1], rtol=1e-13, atol=1e-15)


def gaussian_crps(sigma, z):
    """The CRPS of N(mu, sigma^2) at y = mu + sigma z."""
    pdf, cdf = np.exp(-z**2 / 2) / np.sqrt(2 * np.pi), (1 + erf(z / np.sqrt(2))) / 2
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / np.sqrt(np.pi))


def test_crps_of_one_member_is_the_absolute_error():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1, 5, 40)), rng.standard_normal((5, 40))
    assert np.allclose(crps(x, y), np.abs(x[0] - y).mean(axis=-1), rtol=1e-15)
    with pytest.raises(ValueError, match="two members"):
        crps(x, y, fair=True)


def test_crps_of_a_gaussian_ensemble():
    """2000 members drawn from N(0.5, 2^2) at 200 truths: both estimators within sampling error
    (about 0.003 here) of the closed form."""
    rng = np.random.default_rng(2)
    sigma, y = 2.0, np.linspace(-6, 6, 200)
    ensemble = 0.5 + sigma * rng.standard_normal((2000, 200))
    exact = gaussian_crps(sigma, (y - 0.5) / sigma).mean()
    assert abs(crps(ensemble, y) - exact) < 0.01
    assert abs(crps(ensemble, y, fair=True) - exact) < 0.01
    assert crps(ensemble, y, fair=True) < crps(ensemble, y)


def test_fair_crps_is_unbiased_for_small_ensembles():
    """Three members: the fair estimator averages to the closed form; the empirical one is
    higher by E|X - X'| / (2S) = sigma / (S sqrt(pi)): it under-counts the members' spread."""
    rng = np.random.default_rng(3)
    S, n = 3, 200_000
    y = rng.standard_normal(n)
    ensemble = rng.standard_normal((S, n))
    exact = gaussian_crps(1.0, y).mean()
    assert abs(crps(ensemble, y, fair=True) - exact) < 0.005
    assert abs(crps(ensemble, y) - exact - 1 / (S * np.sqrt(np.pi))) < 0.005


@pytest.mark.parametrize("S", [3, 10])
def test_spread_skill_of_a_calibrated_ensemble_is_one(S):
    """Truth and members drawn from the same N(mu_n, sigma_n^2) at each dof; without the
    (S + 1)/S factor the ratio would be sqrt(S / (S + 1)) (0.866 for S = 3)."""
    rng = np.random.default_rng(4)
    mu, sigma = rng.standard_normal((4, 20_000)), rng.uniform(0.5, 2.0, (4, 20_000))
    ensemble = mu + sigma * rng.standard_normal((S, 4, 20_000))
    truth = mu + sigma * rng.standard_normal((4, 20_000))
    ratio = spread_skill(ensemble, truth)
    assert ratio.shape == (4,) and np.all(np.abs(ratio - 1) < 0.03), ratio
    # From the moments a forecast keeps (torch's std is the ddof = 1 one), the same ratio.
    std = torch.as_tensor(ensemble).std(0)
    assert np.allclose(spread_skill_of_moments(ensemble.mean(0), std**2, truth, S), ratio, rtol=1e-12)


@pytest.mark.parametrize("N", [64, 63])
def test_spectrum_satisfies_parseval(N):
    u = np.random.default_rng(5).standard_normal((3, N))
    k, E = energy_spectrum(u, 2.0)
    assert k.shape == (N // 2 + 1,) and E.shape == (3, N // 2 + 1)
    assert np.allclose(E.sum(axis=-1), 0.5 * (u**2).mean(axis=-1), rtol=1e-13)


def test_spectrum_of_a_sine_peaks_at_its_wavenumber():
    length, N, k0 = 2.0, 128, 3.0
    x = length * np.arange(N) / N
    k, E = energy_spectrum(np.sin(2 * np.pi * k0 * x), length)
    assert k[np.argmax(E)] == k0
    assert np.isclose(E.max(), 0.25) and np.isclose(E.sum(), 0.25)     # mean of sin^2 / 2


def test_ensemble_moments_hold_a_small_spread_about_a_large_mean():
    """The moments about the first member keep a spread of 1e-6 of the mean in float32, where
    the raw second moment would lose it to cancellation."""
    x = (1e3 + 1e-3 * torch.randn(4, 64, 3, 50, generator=torch.Generator().manual_seed(0))).double()
    mean, std = moments(x.float())
    assert torch.allclose(mean.double(), x.mean(1), rtol=1e-7, atol=0)
    assert torch.allclose(std.double(), x.std(1), rtol=1e-5, atol=0)
    raw = (x.float().square().mean(1) - x.float().mean(1).square()).clamp_min(0).sqrt()
    assert not torch.allclose(raw.double(), x.std(1), rtol=0.5, atol=0)
    mean, std = moments(x[:, :1])
    assert torch.equal(mean, x[:, 0]) and torch.equal(std, torch.zeros_like(mean))
