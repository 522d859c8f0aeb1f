r"""The amortized posterior: a local encoder of each snapshot and Gaussian-process smoothing in time.

The latent state :math:`z = (u, h)` holds the coarse field :math:`u` (``N_u`` dofs of the coarse
observed space) and :math:`n_h` auxiliary channels on the coarse scalar nodes (``N_H * n_h``
values, node-major). The encoder gives each snapshot's mean and log-variance; the smoother turns
the ``M`` snapshots of a window into :math:`m(t), \log S(t)` and their exact time derivatives.
"""
import torch
from torch import nn
from torch.nn.functional import softplus

from firedrake_msm.transfer import coarse_stencil


def mlp(n_in, n_out, width, depth, activation=nn.GELU):
    """A multilayer perceptron with ``depth`` hidden layers of ``width``."""
    layers, n = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(n, width), activation()]
        n = width
    return nn.Sequential(*layers, nn.Linear(n, n_out))


def inverse_softplus(y):
    return torch.log(torch.expm1(torch.as_tensor(y, dtype=torch.float64))).item()


class StencilField(nn.Module):
    r"""A neural field on the coarse cell around each fine node: one learned function of the
    scaled offset per stencil entry, as the values of a sparse matrix.

    With :class:`~firedrake_msm.transfer.CoarseStencil` entries :math:`(j, i, \phi, \delta)`,
    :meth:`matrix` gives the ``(rows, cols)`` sparse matrix with entries
    :math:`\phi\,\psi_{ab}(\delta)` at row ``a * N_rows + j`` (or ``i``) and column
    ``i * n_b + b`` (or ``j * n_b + b``), where :math:`\psi: \mathbb{R}^{gdim} \to
    \mathbb{R}^{n_a \times n_b}` is a small MLP: geometry only, so it costs one MLP per stencil
    entry whatever the batch.

    ``transpose=False`` maps coarse channels to fine nodes (a decoder); ``True`` aggregates fine
    nodes into coarse ones, normalised by :math:`\sum_j \phi_{ij}` (an encoder).
    """

    def __init__(self, stencil, n_a, n_b, *, transpose=False, width=32, depth=2):
        super().__init__()
        nodes = torch.as_tensor(stencil.nodes)
        weights = torch.as_tensor(stencil.weights, dtype=torch.float32)
        self.n_fine, self.k = nodes.shape
        self.n_coarse = int(nodes.max()) + 1
        self.n_a, self.n_b, self.transpose = n_a, n_b, transpose
        fine = torch.arange(self.n_fine)[:, None].expand_as(nodes)
        if transpose:
            total = torch.zeros(self.n_coarse).index_add_(0, nodes.reshape(-1), weights.reshape(-1).float())
            weights = weights / total[nodes]
            rows, cols = nodes, fine
        else:
            rows, cols = fine, nodes
        self.register_buffer("rows", rows.reshape(-1), persistent=False)
        self.register_buffer("cols", cols.reshape(-1), persistent=False)
        self.register_buffer("weights", weights.reshape(-1), persistent=False)
        self.register_buffer("offsets", torch.as_tensor(stencil.offsets, dtype=torch.float32).reshape(
            -1, stencil.offsets.shape[-1]), persistent=False)
        self.psi = mlp(self.offsets.shape[1], n_a * n_b, width, depth)

    def matrix(self):
        n_rows, n_cols = (self.n_coarse, self.n_fine) if self.transpose else (self.n_fine, self.n_coarse)
        values = self.weights[:, None] * self.psi(self.offsets)                       # (E, n_a n_b)
        a = torch.arange(self.n_a, device=values.device).repeat_interleave(self.n_b)
        b = torch.arange(self.n_b, device=values.device).repeat(self.n_a)
        rows = (a[None, :] * n_rows + self.rows[:, None]).reshape(-1)
        cols = (self.cols[:, None] * self.n_b + b[None, :]).reshape(-1)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values.reshape(-1),
                                       size=(self.n_a * n_rows, n_cols * self.n_b))

    def forward(self, X):
        """``X``: ``(..., n_cols * n_b)`` column-node-major; returns ``(..., n_rows, n_a)``."""
        lead = X.shape[:-1]
        Y = torch.sparse.mm(self.matrix(), X.reshape(-1, X.shape[-1]).T)             # (n_a n_rows, B)
        return Y.T.reshape(*lead, self.n_a, -1).transpose(-1, -2)


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
        ``mean`` ``(..., D)`` and ``log_var`` ``(D,)`` with ``D = N_u + N_H * n_h``."""
        n_nodes = coarse.shape[-1] // self.n_components
        log_var = [2 * torch.log(softplus(self.raw_std_u)).repeat(n_nodes)]
        if not self.n_latent:
            return coarse, log_var[0]
        F = self.features(residual)                                                   # (..., N_H, f)
        h = self.head(F)
        log_var.append(2 * torch.log(softplus(self.raw_std_h)).repeat(h.shape[-2]))
        return torch.cat([coarse, h.flatten(-2)], dim=-1), torch.cat(log_var)


class GaussianProcessSmoother(nn.Module):
    r"""Gaussian-process regression in time through the encoded snapshots of a window.

    With the RBF kernel :math:`k(t, t') = \exp(-(t - t')^2 / 2\ell^2)` and nugget :math:`\eta^2`,
    values :math:`\mu_k` at the window's times :math:`t_k` (after removing their mean
    :math:`\bar\mu`) give

    .. math:: m(t) = \bar\mu + k(t, T)(K + \eta^2 I)^{-1}(\mu - \bar\mu),\qquad
              \dot m(t) = \partial_t k(t, T)(K + \eta^2 I)^{-1}(\mu - \bar\mu),

    exact derivatives with no automatic differentiation in time. The length scale is
    :math:`\ell = \Delta t\,(\ell_{min} + \mathrm{softplus}(\cdot))` in units of the snapshot
    spacing :math:`\Delta t`, bounded below so that the path cannot interpolate the noise.
    """

    def __init__(self, length_scale=3.0, min_length_scale=1.0, nugget=1e-2, min_nugget=1e-6):
        super().__init__()
        self.min_length_scale, self.min_nugget = min_length_scale, min_nugget
        self.raw_length_scale = nn.Parameter(torch.tensor(inverse_softplus(length_scale - min_length_scale)))
        self.raw_nugget = nn.Parameter(torch.tensor(inverse_softplus(nugget - min_nugget)))

    def length_scale(self, spacing):
        return spacing * (self.min_length_scale + softplus(self.raw_length_scale))

    def forward(self, times, values):
        r"""Condition on ``values`` ``(B, M, D)`` at ``times`` ``(B, M)``; returns ``path(t)``
        mapping times ``(B, n)`` to (values, time derivatives), each ``(B, n, D)``."""
        spacing = (times[:, -1] - times[:, 0]) / (times.shape[1] - 1)
        ell = self.length_scale(spacing)[:, None, None]
        nugget = self.min_nugget + softplus(self.raw_nugget)
        K = torch.exp(-0.5 * ((times[:, :, None] - times[:, None, :]) / ell) ** 2)
        K = K + nugget * torch.eye(times.shape[1], dtype=K.dtype, device=K.device)
        mean = values.mean(1, keepdim=True)
        alpha = torch.cholesky_solve(values - mean, torch.linalg.cholesky(K))

        def path(t):
            d = (t[:, :, None] - times[:, None, :]) / ell                            # (B, n, M)
            k = torch.exp(-0.5 * d**2)
            return mean + k @ alpha, (-d / ell * k) @ alpha
        return path
