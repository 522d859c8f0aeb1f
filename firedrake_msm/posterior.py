r"""The amortized posterior: a local encoder of each snapshot and Gaussian-process smoothing in time.

The latent state :math:`z = (u, h)` holds the coarse field :math:`u` (``N_u`` dofs of the coarse
observed space) and :math:`n_h` auxiliary channels on the coarse scalar nodes (``N_H * n_h``
values, node-major). The encoder gives each snapshot's mean and log-variance; the smoother turns
the ``M`` snapshots of a window into :math:`m(t), \log S(t)` and their exact time derivatives.
"""
import warnings

import torch
from torch import nn
from torch.nn.functional import softplus

from firedrake_msm.transfer import coarse_stencil

# The CSR pattern of a sampled product is built and consumed within one backward pass.
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state", UserWarning)


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
    the ``(rows, cols)`` sparse matrix has entries
    :math:`\phi\,\psi_{ab}(\delta)` at row ``a * N_rows + j`` (or ``i``) and column
    ``i * n_b + b`` (or ``j * n_b + b``), where :math:`\psi: \mathbb{R}^{gdim} \to
    \mathbb{R}^{n_a \times n_b}` is a small MLP: geometry only, so it costs one MLP per stencil
    entry whatever the batch.

    ``transpose=False`` maps coarse channels to fine nodes (a decoder); ``True`` aggregates fine
    nodes into coarse ones, normalised by :math:`\sum_j \phi_{ij}` (an encoder).

    ``local=True`` (decoders only) learns the values of every stencil entry instead,
    :math:`W_e \in \mathbb{R}^{n_a\times n_b}`: a local linear map whose weights vary across the
    mesh, for fields whose sub-cell structure is tied to the geometry (a boundary layer), where
    one function of the offset cannot follow it. They start at zero; :meth:`fit` sets them by
    least squares.
    """

    def __init__(self, stencil, n_a, n_b, *, transpose=False, local=False, width=32, depth=2):
        super().__init__()
        nodes = torch.as_tensor(stencil.nodes)
        weights = torch.as_tensor(stencil.weights, dtype=torch.float32)
        n_fine, n_coarse = nodes.shape[0], int(nodes.max()) + 1
        self.n_a = n_a
        fine = torch.arange(n_fine)[:, None].expand_as(nodes)
        if transpose:
            total = torch.zeros(n_coarse).index_add_(0, nodes.reshape(-1), weights.reshape(-1))
            weights = weights / total[nodes]
            rows, cols = nodes.reshape(-1), fine.reshape(-1)
            n_rows, n_cols = n_coarse, n_fine
        else:
            rows, cols = fine.reshape(-1), nodes.reshape(-1)
            n_rows, n_cols = n_fine, n_coarse
        # The sparsity pattern is geometry: built once, sorted row-major so that every product
        # takes it as coalesced; only the values depend on the parameters.
        self.n_b, self.n_rows, self.n_cols = n_b, n_rows, n_cols
        self.register_buffer("col_nodes", cols, persistent=False)
        a = torch.arange(n_a).repeat_interleave(n_b)
        b = torch.arange(n_b).repeat(n_a)
        indices = torch.stack([(a[None, :] * n_rows + rows[:, None]).reshape(-1),
                               (cols[:, None] * n_b + b[None, :]).reshape(-1)])
        self.shape = (n_a * n_rows, n_cols * n_b)
        order = torch.argsort(indices[0] * self.shape[1] + indices[1])
        indices = indices[:, order]
        transpose_order = torch.argsort(indices[1] * self.shape[0] + indices[0])
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("indices", indices, persistent=False)
        self.register_buffer("crow_indices", torch.searchsorted(indices[0], torch.arange(self.shape[0] + 1)),
                             persistent=False)
        self.register_buffer("transpose_order", order[transpose_order], persistent=False)
        self.register_buffer("transpose_indices", indices.flip(0)[:, transpose_order], persistent=False)
        self.register_buffer("weights", weights.reshape(-1), persistent=False)
        self.register_buffer("offsets", torch.as_tensor(stencil.offsets, dtype=torch.float32).reshape(
            -1, stencil.offsets.shape[-1]), persistent=False)
        if local and transpose:
            raise ValueError("local stencil values are for decoders (transpose=False)")
        self.local = local
        if local:
            self.values = nn.Parameter(torch.zeros(len(rows), n_a, n_b))
        else:
            self.psi = mlp(self.offsets.shape[1], n_a * n_b, width, depth)

    def forward(self, X):
        """``X``: ``(..., n_cols * n_b)`` column-node-major; returns ``(..., n_rows, n_a)``."""
        lead = X.shape[:-1]
        if self.local:
            values = self.values
        else:
            values = (self.weights[:, None] * self.psi(self.offsets)).view(-1, self.n_a, self.n_b)
        Y = _StencilProduct.apply(values, self, X.reshape(-1, X.shape[-1]).T)       # (n_a n_rows, B)
        return Y.T.reshape(*lead, self.n_a, -1).transpose(-1, -2)

    @torch.no_grad()
    def fit(self, X, Y, *, ridge=1e-6, chunk=1024):
        r"""Set local values by least squares, row by row: with the stencil inputs
        :math:`F_j = (X_{i_{j1}}, \dots, X_{i_{jk}})` of row :math:`j` over the samples,
        :math:`W_j = \arg\min \|F_j W - Y_j\|^2 + \lambda\,\bar g\,\|W\|^2`, with
        :math:`\bar g` the mean diagonal of :math:`F_j^T F_j` (so inputs that are zero in every
        sample get zero weights).

        ``X``: ``(S, n_cols, n_b)``, ``Y``: ``(S, n_rows, n_a)``. Solved in double precision: the
        normal equations square the condition number.
        """
        if not self.local:
            raise ValueError("fit sets local stencil values: build the field with local=True")
        k = len(self.col_nodes) // self.n_rows
        cols = self.col_nodes.view(self.n_rows, k)
        for start in range(0, self.n_rows, chunk):
            rows = slice(start, min(start + chunk, self.n_rows))
            F = X[:, cols[rows]].flatten(-2).transpose(0, 1).double()                 # (r, S, k n_b)
            G = F.transpose(1, 2) @ F
            shift = ridge * G.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
            G.diagonal(dim1=1, dim2=2).add_(shift[:, None])
            W = torch.linalg.solve(G, F.transpose(1, 2) @ Y[:, rows].transpose(0, 1).double())
            self.values[rows.start * k:rows.stop * k] = W.view(-1, k, self.n_b, self.n_a).transpose(
                -1, -2).reshape(-1, self.n_a, self.n_b).to(self.values.dtype)


class _StencilProduct(torch.autograd.Function):
    r"""The sparse product :math:`Y = A X` of a :class:`StencilField`, from its values per stencil
    entry ``(E, n_a, n_b)``.

    The values' gradient is a small matrix product per entry :math:`e` (row node :math:`r_e`,
    column node :math:`c_e`), :math:`\partial L/\partial a_{e,ab} = \sum_n \bar Y_{a r_e n}
    X_{c_e b n}`: the entries of :math:`\bar Y X^T` on the pattern, which
    ``torch.sparse.sampled_addmm`` computes without forming the rest (Burgers' decoder and
    encoder 8-12x and 7-9x faster than the dense GEMM, ``benchmarks/bench_stencil.py``).
    """

    @staticmethod
    def forward(ctx, values, field, X):
        # torch.sparse.mm is 4-7x slower on a transposed (column-major) dense operand.
        X = X.contiguous()
        ctx.save_for_backward(values, X)
        ctx.field = field
        return torch.sparse.mm(_coalesced(field.indices, values.reshape(-1)[field.order], field.shape), X)

    @staticmethod
    def backward(ctx, grad):
        values, X = ctx.saved_tensors
        field = ctx.field
        grad = grad.contiguous()
        grad_values = grad_X = None
        if ctx.needs_input_grad[0]:
            grad_values = torch.empty_like(values).view(-1)
            grad_values[field.order] = _sampled_product(field, grad, X)
            grad_values = grad_values.view_as(values)
        if ctx.needs_input_grad[2]:
            transposed = values.reshape(-1)[field.transpose_order]
            grad_X = torch.sparse.mm(_coalesced(field.transpose_indices, transposed, field.shape[::-1]), grad)
        return grad_values, None, grad_X


def _sampled_product(field, Y, X):
    """The entries of ``Y @ X.T`` on the pattern of ``field``, in its row-major order: ``Y``
    ``(n_a n_rows, n)``, ``X`` ``(n_cols n_b, n)``."""
    nnz = field.indices.shape[1]
    pattern = torch.sparse_csr_tensor(field.crow_indices, field.indices[1], Y.new_zeros(nnz), field.shape,
                                      check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, Y, X.T, beta=0.0).values()


def _coalesced(indices, values, shape):
    return torch.sparse_coo_tensor(indices, values, shape, is_coalesced=True, check_invariants=False)


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
