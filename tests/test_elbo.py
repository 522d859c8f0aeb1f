"""The solver-free ELBO: Lyapunov rate, drift residual, Monte Carlo path KL, product of experts."""
import math

import torch

from firedrake_msm.elbo import (drift_residual, elbo, gaussian_log_likelihood, lyapunov_rate,
                                product_of_experts, reparametrise, residual_energy, stratified_times)

F64 = torch.float64


def test_lyapunov_rate_solves_the_variance_ode():
    t = torch.linspace(0.0, 4.0, 101, dtype=F64, requires_grad=True)
    S = 0.3 + 0.2 * torch.sin(3 * t)
    log_S = torch.log(S)
    (dS,) = torch.autograd.grad(S.sum(), t, retain_graph=True)
    (dlog_S,) = torch.autograd.grad(log_S.sum(), t)
    sigma2 = torch.tensor(0.7, dtype=F64)
    B = lyapunov_rate(sigma2, log_S.detach(), dlog_S)
    assert torch.allclose(dS, -2 * B * S.detach() + sigma2, rtol=0, atol=1e-14)


def ou_marginals(t, rate, centre, m0, S0, sigma2):
    """Mean, variance and their time derivatives of dz = -rate (z - centre) dt + sigma dW."""
    decay = torch.exp(-rate * t)
    S_inf = sigma2 / (2 * rate)
    m = centre + (m0 - centre) * decay
    S = S_inf + (S0 - S_inf) * decay**2
    return m, -rate * (m - centre), S, -2 * rate * S + sigma2


def test_residual_vanishes_when_the_posterior_is_the_prior():
    a = torch.tensor([0.3, 1.0, 2.5, 7.0], dtype=F64)
    sigma2 = torch.tensor([0.2, 1.0, 0.5, 3.0], dtype=F64)
    m0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    S0 = torch.tensor([0.01, 2.0, 0.1, 0.5], dtype=F64)
    t = torch.linspace(0.0, 3.0, 50, dtype=F64)[:, None]
    m, dm, S, dS = ou_marginals(t, a, 0.0, m0, S0, sigma2)
    z = 3 * torch.randn(10, *m.shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    r = drift_residual(z, m, dm, torch.log(S), dS / S, -a * z, sigma2)
    assert r.abs().max() <= 1e-12


def test_monte_carlo_kl_of_two_ou_processes():
    """Prior dz = -a z dt + sigma dW; posterior the OU dz = -b (z - mu) dt + sigma dW from N(m0, S0),
    whose Lyapunov rate is b, so f_q - f_p = (a - b) z + b mu and the path KL is
    1/2 int [((a - b) m + b mu)^2 + (a - b)^2 S] / sigma^2 dt. Measured: MC 8.0081 vs closed form
    8.0090, standard error 0.0057 (2000 windows of 32 stratified times, one sample each)."""
    a = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    b = torch.tensor([1.5, 0.3, 2.5], dtype=F64)
    mu = torch.tensor([0.4, -0.2, 1.0], dtype=F64)
    sigma2 = torch.tensor([0.25, 1.0, 0.64], dtype=F64)
    m0 = torch.tensor([1.0, 0.5, -0.3], dtype=F64)
    S0 = torch.tensor([0.05, 0.2, 0.1], dtype=F64)
    T = 2.0

    # Composite Simpson on 4001 nodes: quadrature error far below the sampling error.
    t = torch.linspace(0.0, T, 4001, dtype=F64)[:, None]
    m, _, S, _ = ou_marginals(t, b, mu, m0, S0, sigma2)
    integrand = 0.5 * ((((a - b) * m + b * mu) ** 2 + (a - b) ** 2 * S) / sigma2).sum(-1)
    simpson = torch.ones(4001, dtype=F64)
    simpson[1:-1:2], simpson[2:-1:2] = 4, 2
    exact = (T / 4000 / 3 * simpson * integrand).sum().item()

    generator = torch.Generator().manual_seed(1)
    n_windows, n_times = 2000, 32
    times = stratified_times(torch.zeros(n_windows, dtype=F64), torch.full((n_windows,), T, dtype=F64),
                             n_times, generator=generator)[..., None]
    m, dm, S, dS = ou_marginals(times, b, mu, m0, S0, sigma2)
    z = reparametrise(m, torch.log(S), torch.randn(m.shape, dtype=F64, generator=generator))
    r = drift_residual(z, m, dm, torch.log(S), dS / S, -a * z, sigma2)
    # Windows are the independent replicates; the times within one are stratified, not i.i.d.
    per_window = T * residual_energy(r, sigma2).mean(1)
    estimate = per_window.mean().item()
    standard_error = (per_window.std() / math.sqrt(n_windows)).item()
    assert abs(estimate - exact) < 3 * standard_error, (estimate, exact, standard_error)
    assert standard_error < 0.01 * exact


def test_residual_energy_mask_drops_held_dofs():
    r = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    sigma2 = torch.tensor([0.5, 0.0, 2.0], dtype=F64)
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    assert torch.allclose(residual_energy(r, sigma2, mask), torch.tensor([0.5 * (2.0 + 4.5)], dtype=F64))


def test_product_of_experts_is_the_normalised_product():
    mu, var_u = torch.tensor([0.3, -1.0, 2.0], dtype=F64), torch.tensor([0.5, 0.04, 1.5], dtype=F64)
    D, var_h = torch.tensor([0.8, 0.1, -1.2], dtype=F64), torch.tensor([0.2, 0.3, 1.5], dtype=F64)
    mean, V = product_of_experts(mu, var_u, D, var_h)
    # Textbook: precision-weighted mean of the two experts.
    precision = 1 / var_u + 1 / var_h
    assert torch.allclose(V, 1 / precision, rtol=1e-14, atol=0)
    assert torch.allclose(mean, (mu / var_u + (mu + D) / var_h) / precision, rtol=1e-14, atol=1e-15)
    # And numerically, from the product of the densities on a grid.
    y = torch.linspace(-15, 15, 200001, dtype=F64)[:, None]
    density = torch.exp(torch.distributions.Normal(mu, var_u.sqrt()).log_prob(y)
                        + torch.distributions.Normal(mu + D, var_h.sqrt()).log_prob(y))
    density = density / torch.trapezoid(density, y, dim=0)
    grid_mean = torch.trapezoid(y * density, y, dim=0)
    grid_var = torch.trapezoid((y - grid_mean) ** 2 * density, y, dim=0)
    assert torch.allclose(mean, grid_mean, rtol=0, atol=1e-9)
    assert torch.allclose(V, grid_var, rtol=1e-8, atol=0)


def test_gaussian_log_likelihood_is_torchs():
    generator = torch.Generator().manual_seed(2)
    y, mean = torch.randn(2, 3, 7, dtype=F64, generator=generator)
    var = torch.rand(3, 7, dtype=F64, generator=generator) + 0.1
    expected = torch.distributions.Normal(mean, var.sqrt()).log_prob(y).sum(-1)
    assert torch.allclose(gaussian_log_likelihood(y, mean, var), expected, rtol=1e-14, atol=0)
    expected = torch.distributions.Normal(mean, math.sqrt(0.3)).log_prob(y).sum(-1)
    assert torch.allclose(gaussian_log_likelihood(y, mean, 0.3), expected, rtol=1e-14, atol=0)


def test_elbo_normalisation():
    log_likelihood = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)    # window sums 6, 15
    energy = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=F64)                       # time means 2, 2
    window_length = torch.tensor([0.5, 1.5], dtype=F64)
    value, likelihood, kl = elbo(log_likelihood, energy, window_length, beta=0.25, n_observed=10)
    assert math.isclose(likelihood.item(), 10.5 / 10, rel_tol=1e-15)
    assert math.isclose(kl.item(), 2.0 / 10, rel_tol=1e-15)          # mean of 0.5 * 2 and 1.5 * 2
    assert math.isclose(value.item(), 1.05 - 0.25 * 0.2, rel_tol=1e-15)


def test_stratified_times_one_per_stratum():
    t0, t1 = torch.tensor([0.0, 1.0, -2.0], dtype=F64), torch.tensor([2.0, 1.5, 5.0], dtype=F64)
    n = 7
    times = stratified_times(t0, t1, n, generator=torch.Generator().manual_seed(3))
    assert times.shape == (3, n)
    width = (t1 - t0)[:, None] / n
    stratum = torch.floor((times - t0[:, None]) / width)
    assert torch.equal(stratum, torch.arange(n, dtype=F64).expand(3, n))
    assert (times >= t0[:, None]).all() and (times <= t1[:, None]).all()
    again = stratified_times(t0, t1, n, generator=torch.Generator().manual_seed(3))
    other = stratified_times(t0, t1, n, generator=torch.Generator().manual_seed(4))
    assert torch.equal(times, again) and not torch.equal(times, other)
