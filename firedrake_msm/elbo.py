r"""The solver-free evidence lower bound of amortized reparametrization (Course & Nair, 2023).

The prior is the SDE :math:`dz = f_\theta(z)\,dt + \sigma\,dW` with diagonal :math:`\sigma`; the
approximate posterior is the diagonal *linear* SDE with the same diffusion and Gaussian marginals
:math:`N(m(t), S(t))`. Its drift is :math:`-B(z - m) + \dot m` with the Lyapunov coefficient

.. math:: B = \tfrac12\bigl(\sigma^2 / S - \tfrac{d}{dt}\log S\bigr),

so the path-space KL divergence between the two is
:math:`\tfrac12\int E_q \lVert r\rVert^2_{\sigma^{-2}}\,dt` with the drift-matching residual

.. math:: r(z, t) = B\,(m - z) + \dot m - f_\theta(z),

evaluated only at sampled times and states: no SDE is integrated. Every function here is pure;
shapes are documented with ``...`` for any leading batch dimensions and ``D`` the state size.
"""
import math

import torch


def reparametrise(m, log_S, eps):
    r"""Samples :math:`z = m + S^{1/2}\varepsilon` of :math:`N(m, S)`; all arguments ``(..., D)``."""
    return m + torch.exp(0.5 * log_S) * eps


def lyapunov_rate(sigma2, log_S, dlog_S):
    r""":math:`B = \tfrac12(\sigma^2/S - \tfrac{d}{dt}\log S)`, the decay rate for which the linear
    SDE :math:`dz = -B(z - m)dt + \dot m\,dt + \sigma dW` has variance :math:`S(t)`, i.e.
    :math:`\dot S = -2BS + \sigma^2`. Shapes broadcast: ``sigma2`` ``(D,)`` or ``(..., D)``, the
    others ``(..., D)``."""
    return 0.5 * (sigma2 * torch.exp(-log_S) - dlog_S)


def drift_residual(z, m, dm, log_S, dlog_S, f, sigma2):
    r"""The drift-matching residual :math:`r = B(m - z) + \dot m - f(z)`.

    Parameters
    ----------
    z : torch.Tensor
        ``(..., D)`` posterior samples.
    m, dm, log_S, dlog_S : torch.Tensor
        ``(..., D)`` posterior mean, its time derivative, log-variance and its time derivative at
        the samples' times.
    f : torch.Tensor
        ``(..., D)`` the prior drift at ``z``.
    sigma2 : torch.Tensor
        ``(D,)`` or ``(..., D)`` the prior's diffusion squared.
    """
    return lyapunov_rate(sigma2, log_S, dlog_S) * (m - z) + dm - f


def residual_energy(r, sigma2, mask=None):
    r""":math:`\tfrac12\sum_d m_d\, r_d^2/\sigma_d^2`, ``(..., D) -> (...)``, over the dofs with
    ``mask`` (``(D,)`` of 0/1; dofs held by Dirichlet conditions are deterministic and left out)."""
    if mask is not None:
        r = r * mask
        sigma2 = torch.where(mask > 0, sigma2, torch.ones_like(sigma2))
    return 0.5 * (r**2 / sigma2).sum(-1)


def product_of_experts(mean_macro, var_macro, correction, var_micro):
    r"""The normalised product of the experts :math:`N(y; \mu, s_u^2)` and
    :math:`N(y; \mu + D, s_h^2)`:

    .. math:: N\bigl(y;\ \mu + \tfrac{V}{s_h^2} D,\ V\bigr),\qquad V = (s_u^{-2} + s_h^{-2})^{-1}.

    The micro correction :math:`D` is shrunk by :math:`V/s_h^2 < 1`, so the macro state must
    explain the bulk of the data. Returns ``(mean, V)``, broadcast from the arguments.
    """
    V = 1.0 / (1.0 / var_macro + 1.0 / var_micro)
    return mean_macro + (V / var_micro) * correction, V


def gaussian_log_likelihood(y, mean, var):
    r""":math:`\sum_j \log N(y_j; \mu_j, v_j)`, ``(..., N) -> (...)``."""
    var = torch.as_tensor(var, dtype=y.dtype, device=y.device).expand_as(y)
    return -0.5 * ((y - mean) ** 2 / var + torch.log(2 * math.pi * var)).sum(-1)


def stratified_times(t0, t1, n, *, generator=None):
    r"""``n`` times per window, one uniform draw in each of ``n`` equal strata of
    :math:`[t_0, t_1]`: a Monte Carlo time quadrature with lower variance than i.i.d. draws.

    ``t0``, ``t1``: ``(B,)``; returns ``(B, n)``, drawn on ``t0``'s device (a
    ``generator`` must be on it too).
    """
    u = torch.rand(t0.shape[0], n, generator=generator, dtype=t0.dtype, device=t0.device)
    k = torch.arange(n, dtype=t0.dtype, device=t0.device)
    return t0[:, None] + (t1 - t0)[:, None] * (k + u) / n


def elbo(log_likelihood, energy, window_length, *, beta=1.0, n_observed=1):
    r"""The ELBO of one batch of windows, normalised per observed value.

    .. math:: \frac{1}{n}\Bigl(\sum_k \log p(y_k \mid z(t_k))
              - \beta\, T_W\, E_{t\sim U}\bigl[\tfrac12\lVert r\rVert^2_{\sigma^{-2}}\bigr]\Bigr)

    Parameters
    ----------
    log_likelihood : torch.Tensor
        ``(B, K)`` log-likelihood of each window's ``K`` snapshots (one sample each).
    energy : torch.Tensor
        ``(B, n_t)`` :func:`residual_energy` at ``n_t`` sampled times of each window.
    window_length : torch.Tensor
        ``(B,)`` the windows' durations :math:`T_W`.
    beta : float
        Warm-up weight of the residual term.
    n_observed : int
        Observed values per window (snapshots times dofs) to normalise by.

    Returns
    -------
    elbo, likelihood, kl : torch.Tensor
        Scalars, averaged over the batch: the ELBO and its two terms (``kl`` unweighted by beta).
    """
    likelihood = log_likelihood.sum(1).mean() / n_observed
    kl = (window_length * energy.mean(1)).mean() / n_observed
    return likelihood - beta * kl, likelihood, kl
