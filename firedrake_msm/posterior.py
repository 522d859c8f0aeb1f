r"""The amortized posterior: a local encoder of each snapshot and Gaussian-process smoothing in time.

The latent state :math:`z = (u, h)` holds the coarse field :math:`u` (``N_u`` dofs of the coarse
observed space) and :math:`n_h` auxiliary channels on the coarse scalar nodes (``N_H * n_h``
values, node-major). The encoder gives each snapshot's mean and log-variance; the smoother turns
the ``M`` snapshots of a window into :math:`m(t), \log S(t)` and their exact time derivatives.
"""
import torch
from torch import nn
from torch.nn.functional import softplus

from firedrake_msm.networks import StencilField, inverse_softplus, mlp
from firedrake_msm.transfer import coarse_stencil


class Encoder(nn.Module):
    r"""Mean and log-variance of :math:`z = (u, h)` at one snapshot.

    As in the reference protocol, the coarse part is the filtered restriction itself,
    :math:`E[u] = R y`, and the auxiliary state is encoded from the high-pass residual
    :math:`y - P R y` only: features
    :math:`F_{if} = \sum_j \phi_i(x_j)\,\psi_f(\delta_{ij})\, r_j / \sum_j \phi_i(x_j)` on each coarse node
    (:class:`StencilField`), then an MLP per node. The variances are learned constants per
    channel (softplus, initial standard deviation ``std``).

    Parameters
    ----------
    V_fine, V_coarse : firedrake.FunctionSpace
        The observed spaces (same value shape; the coarse one is :math:`u`'s).
    n_latent : int
        :math:`n_h`.
    features, width, depth : int
        Sizes of the networks.
    """

    def __init__(self, V_fine, V_coarse, n_latent, *, features=16, width=64, depth=2, std=0.02):
        super().__init__()
        self.n_latent = n_latent
        self.n_components = V_fine.block_size
        raw = inverse_softplus(std)
        self.raw_std_u = nn.Parameter(torch.full((self.n_components,), raw))
        if n_latent:
            stencil = coarse_stencil(V_fine, V_coarse)
            self.features = StencilField(stencil, features, self.n_components, transpose=True)
            self.head = mlp(features, n_latent, width, depth)
            self.raw_std_h = nn.Parameter(torch.full((n_latent,), raw))

    def forward(self, coarse, residual):
        """``coarse``: ``(..., N_u)`` restricted snapshots, ``residual``: ``(..., N_h)``; returns
        ``mean`` ``(..., D)`` with ``D = N_u + N_H * n_h`` and the log-variance of each channel,
        ``(c + n_h,)``."""
        if not self.n_latent:
            return coarse, 2 * torch.log(softplus(self.raw_std_u))
        h = self.head(self.features(residual))                                        # (..., N_H, n_h)
        std = softplus(torch.cat([self.raw_std_u, self.raw_std_h]))
        return torch.cat([coarse, h.flatten(-2)], dim=-1), 2 * torch.log(std)


class GaussianProcessSmoother(nn.Module):
    r"""Gaussian-process regression in time through the encoded snapshots of a window.

    The encoder's means :math:`\mu_k` at the window's times :math:`t_k` are noisy observations,
    with the encoder's variance :math:`v_c`, of a Gaussian process with an RBF kernel
    :math:`a_c^2 k(t, t')`, :math:`k(t, t') = \exp(-(t - t')^2 / 2\ell^2)`, about the window mean
    :math:`\bar\mu`, for each channel :math:`c`. Its posterior is the variational marginal:

    .. math::

        m(t) &= \bar\mu + k(t, T)(K + \rho_c I)^{-1}(\mu - \bar\mu),\qquad \rho_c = v_c / a_c^2,\\
        S(t) &= a_c^2\,\bigl(1 - q(t)\bigr),\qquad q(t) = k(t, T)(K + \rho_c I)^{-1}k(T, t),

    with exact time derivatives :math:`\dot m = \partial_t k\,(K + \rho_c I)^{-1}(\mu - \bar\mu)`
    and :math:`\tfrac{d}{dt}\log S = -\dot q / (1 - q)`: no automatic differentiation in time.
    The variance dips at the data times and grows between them, as a bridge's does, which is what
    lets the diffusion be learned. The length scale is :math:`\ell = \Delta t\,(\ell_{min} +
    \mathrm{softplus}(\cdot))` in units of the snapshot spacing :math:`\Delta t`, bounded below so
    that the path cannot interpolate the noise. Computed in float64 whatever the inputs' type:
    the kernel matrix is ill-conditioned.

    Parameters
    ----------
    n_channels : int
        Channels with their own amplitude :math:`a_c`.
    length_scale, min_length_scale : float
        Initial and least :math:`\ell / \Delta t`.
    amplitude : float
        Initial :math:`a_c`.
    min_ratio : float
        Least :math:`\rho_c`, which keeps :math:`K + \rho_c I` invertible.
    """

    def __init__(self, n_channels, length_scale=3.0, min_length_scale=1.0, amplitude=0.1, min_ratio=1e-6):
        super().__init__()
        self.min_length_scale, self.min_ratio = min_length_scale, min_ratio
        self.raw_length_scale = nn.Parameter(torch.tensor(inverse_softplus(length_scale - min_length_scale)))
        self.raw_amplitude = nn.Parameter(torch.full((n_channels,), inverse_softplus(amplitude)))

    def length_scale(self, spacing):
        return spacing * (self.min_length_scale + softplus(self.raw_length_scale))

    def forward(self, times, values, noise, channel):
        r"""Condition on ``values`` ``(B, M, D)`` at ``times`` ``(B, M)`` with observation variances
        ``noise`` ``(C,)``, dof ``d`` belonging to channel ``channel[d]``.

        Returns ``path(t)``, mapping times ``(B, n)`` to ``(m, log_S)`` and ``(dm, dlog_S)``,
        each ``(B, n, D)``, in the dtype of ``values``.
        """
        dtype = values.dtype
        times, values = times.double(), values.double()
        spacing = (times[:, -1] - times[:, 0]) / (times.shape[1] - 1)
        ell = self.length_scale(spacing).double()[:, None, None]
        a2 = softplus(self.raw_amplitude).double() ** 2
        ratio = (noise.double() / a2).clamp_min(self.min_ratio)
        eye = torch.eye(times.shape[1], dtype=times.dtype, device=times.device)
        K = torch.exp(-0.5 * ((times[:, :, None] - times[:, None, :]) / ell) ** 2)
        L = torch.linalg.cholesky(K[:, None] + ratio[None, :, None, None] * eye)      # (B, C, M, M)
        mean = values.mean(1, keepdim=True)
        alpha = torch.empty_like(values)
        groups = [torch.nonzero(channel == c).flatten() for c in range(len(a2))]
        for c, dofs in enumerate(groups):
            alpha[:, :, dofs] = torch.cholesky_solve(values[:, :, dofs] - mean[:, :, dofs], L[:, c])

        def path(t):
            t = t.double()
            d = (t[:, :, None] - times[:, None, :]) / ell                            # (B, n, M)
            k = torch.exp(-0.5 * d**2)
            dk = -d / ell * k
            w = torch.cholesky_solve(k.transpose(1, 2)[:, None], L)                  # (B, C, M, n)
            q = (k[:, None] * w.transpose(2, 3)).sum(-1)                              # (B, C, n)
            dq = 2 * (dk[:, None] * w.transpose(2, 3)).sum(-1)
            gap = (1 - q).clamp_min(self.min_ratio)
            log_S = (torch.log(a2)[None, :, None] + torch.log(gap)).transpose(1, 2)   # (B, n, C)
            dlog_S = (-dq / gap).transpose(1, 2)
            m = mean + k @ alpha
            dm = dk @ alpha
            return ((m.to(dtype), log_S[..., channel].to(dtype)),
                    (dm.to(dtype), dlog_S[..., channel].to(dtype)))
        return path
