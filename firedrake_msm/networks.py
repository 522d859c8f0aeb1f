r"""Network pieces shared by the encoder, the closure and the decoder: MLPs and neural fields on the
coarse cell around each fine node (:class:`StencilField`)."""
import warnings

import torch
from torch import nn

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
    ``torch.sparse.sampled_addmm`` computes without forming the rest: the work follows the
    pattern's entries, not the dense product's (``benchmarks/bench_stencil.py`` measures it).
    """

    @staticmethod
    def forward(ctx, values, field, X):
        # torch.sparse.mm is several times slower on a transposed (column-major) dense operand.
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
