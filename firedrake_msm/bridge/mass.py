"""The mass matrix of a space: batched action and inverse action."""
from functools import reduce

import numpy as np
import scipy.sparse as sp
import torch
from finat.quadrature import make_quadrature
from firedrake import TestFunction, TrialFunction, assemble, dx, inner

from firedrake_msm.bridge.tabulation import component_groups, tabulate


class MassOperator(torch.nn.Module):
    r"""Action and inverse action of the mass matrix :math:`M_{ij} = \int \phi_i\cdot\phi_j\,dx`.

    Parameters
    ----------
    V : firedrake.FunctionSpace
        The space (mixed, vector and tensor spaces included).
    method : {"exact", "lumped"}
        ``"exact"`` (the default, because the physics drift must be the semi-discretisation
        Firedrake itself would integrate): for discontinuous spaces the block inverse of each
        cell's mass matrix; otherwise a Cholesky factorisation of :math:`M` when
        :math:`N \le` ``dense_limit``, else Jacobi-preconditioned conjugate gradients to a relative
        residual of ``rtol``.
        ``"lumped"``: the HRZ diagonal :math:`d_i = M_{ii}/c`, with :math:`c = \sum_j
        \int_{\hat K}\hat\phi_j^2 / |\hat K|` of the reference element (row-sum lumping for
        linear elements, and positive for every Lagrange degree, unlike row sums for P2). It
        changes the scheme: see the README for its error.
    bcs : sequence of firedrake.DirichletBC
        Constrained dofs: :meth:`solve` inverts :math:`M` with their rows and columns replaced by
        the identity; the action :meth:`forward` is always that of :math:`M` itself.
    dense_limit : int
        Largest N factorised densely.
    rtol : float, optional
        Conjugate-gradient tolerance (default 1e-12 in float64, 1e-6 in float32).
    """

    def __init__(self, V, method="exact", *, bcs=(), dense_limit=4096, rtol=None,
                 dtype=torch.float64, device=None):
        super().__init__()
        if method not in ("exact", "lumped"):
            raise ValueError(f"method must be 'exact' or 'lumped', not {method!r}")
        self.method = method
        groups, self.size = component_groups(V)
        u, v = TrialFunction(V), TestFunction(V)
        petsc = assemble(inner(u, v) * dx, mat_type="aij").petscmat
        M = sp.csr_matrix(petsc.getValuesCSR()[::-1], shape=petsc.getSize())
        self.register_buffer("matrix", to_torch_sparse(M), persistent=False)
        fixed = bc_dofs(V, bcs)
        M = _constrain(M, fixed)
        self.rtol = rtol
        dofs = np.concatenate([g.dofs.reshape(len(g.dofs), -1) for g in groups], axis=1)
        if method == "lumped":
            diag = M.diagonal().copy()
            for g in groups:
                diag[g.dofs.ravel()] /= _hrz_factor(g.element)
            diag[fixed] = 1.0
            self.register_buffer("diag", torch.as_tensor(diag), persistent=False)
            self.solver = "lumped"
        elif np.bincount(dofs.ravel(), minlength=self.size).max() == 1:
            rows = np.repeat(dofs, dofs.shape[1], axis=1).ravel()
            cols = np.tile(dofs, (1, dofs.shape[1])).ravel()
            blocks = np.asarray(M[rows, cols]).reshape(len(dofs), dofs.shape[1], dofs.shape[1])
            self.register_buffer("block_inverse", torch.linalg.inv(torch.as_tensor(blocks)), persistent=False)
            self.register_buffer("cell_dofs", torch.as_tensor(dofs), persistent=False)
            self.solver = "block"
        elif self.size <= dense_limit:
            self.register_buffer("cholesky", torch.linalg.cholesky(torch.as_tensor(M.toarray())),
                                 persistent=False)
            self.solver = "cholesky"
        else:
            self.register_buffer("constrained", to_torch_sparse(M), persistent=False)
            self.register_buffer("inverse_diag", torch.as_tensor(1.0 / M.diagonal()), persistent=False)
            self.solver = "cg"
        self.to(device=device, dtype=dtype)

    def forward(self, U):
        """The action :math:`M U` on a batch ``(B, N)``."""
        return (self.matrix @ U.T).T

    def solve(self, R):
        r"""The inverse action :math:`M^{-1} R` on a batch ``(B, N)``; differentiable in ``R``."""
        return _SymmetricSolve.apply(R, self._solve)

    def _solve(self, R):
        if self.solver == "lumped":
            return R / self.diag
        if self.solver == "block":
            local = torch.einsum("cij,bcj->bci", self.block_inverse, R[:, self.cell_dofs])
            out = torch.empty_like(R)
            out[:, self.cell_dofs] = local
            return out
        if self.solver == "cholesky":
            return torch.cholesky_solve(R.T, self.cholesky).T
        return _pcg(self.constrained, self.inverse_diag, R, self._rtol(R.dtype))

    def _rtol(self, dtype):
        if self.rtol is not None:
            return self.rtol
        return 1e-12 if dtype == torch.float64 else 1e-6


class _SymmetricSolve(torch.autograd.Function):
    """x = M^{-1} b for a constant symmetric M: the backward pass is another solve."""

    @staticmethod
    def forward(ctx, b, solve):
        ctx.solve = solve
        return solve(b)

    @staticmethod
    def backward(ctx, grad):
        return ctx.solve(grad), None


def _pcg(A, inverse_diag, B, rtol, maxiter=1000):
    """Jacobi-preconditioned conjugate gradients for a batch of right-hand sides ``(n_rhs, N)``."""
    X = torch.zeros_like(B)
    R = B.clone()
    Z = R * inverse_diag
    P = Z.clone()
    rz = (R * Z).sum(1, keepdim=True)
    target = rtol * B.norm(dim=1, keepdim=True)
    for _ in range(maxiter):
        if bool((R.norm(dim=1, keepdim=True) <= target).all()):
            return X
        AP = (A @ P.T).T
        alpha = rz / (P * AP).sum(1, keepdim=True).clamp_min(torch.finfo(B.dtype).tiny)
        X = X + alpha * P
        R = R - alpha * AP
        Z = R * inverse_diag
        rz_new = (R * Z).sum(1, keepdim=True)
        P = Z + (rz_new / rz.clamp_min(torch.finfo(B.dtype).tiny)) * P
        rz = rz_new
    raise RuntimeError(f"mass-matrix CG did not reach rtol={rtol} in {maxiter} iterations")


def bc_dofs(V, bcs):
    """Positions in the flat dof vector of the dofs that the Dirichlet conditions ``bcs`` fix."""
    groups, _ = component_groups(V)
    offsets, first = [], 0
    for Vk in V.subspaces:
        offsets.append(first)
        first += Vk.node_set.size * Vk.block_size
    out = []
    for bc in bcs:
        Vbc = bc.function_space()
        index = bc_subspace(bc)
        Vk = V.subspaces[index]
        components = [Vbc.component] if Vbc.component is not None else range(Vk.block_size)
        nodes = np.asarray(bc.nodes)
        out.extend((offsets[index] + nodes[:, None] * Vk.block_size + np.asarray(components)).ravel())
    return np.unique(np.asarray(out, dtype=np.int64))


def bc_subspace(bc):
    """The index of the subspace of a mixed space that ``bc`` acts on (0 for an unmixed space); a
    component space ``W.sub(k).sub(c)`` has no index itself, its parent ``W.sub(k)`` does."""
    Vbc = bc.function_space()
    if Vbc.index is None and Vbc.component is not None and Vbc.parent is not None:
        Vbc = Vbc.parent
    return Vbc.index or 0


def _constrain(M, fixed):
    """``M`` with the rows and columns of ``fixed`` replaced by those of the identity."""
    if len(fixed) == 0:
        return M
    keep = np.ones(M.shape[0])
    keep[fixed] = 0.0
    D = sp.diags(keep)
    return (D @ M @ D + sp.diags(1.0 - keep)).tocsr()


def _hrz_factor(element):
    r""":math:`\sum_j \int_{\hat K}\hat\phi_j^2 / |\hat K|` for a scalar reference element."""
    rule = make_quadrature(element.get_reference_element(), 2 * element.degree() + 2)
    points = np.asarray(rule.point_set.points, dtype=float)
    (values,) = tabulate(element, points, [None])
    weights = _weights(rule)
    return float((weights[:, None] * values**2).sum() / weights.sum())


def _weights(rule):
    """A FInAT quadrature rule's weights in the order of its points: a tensor-product rule's
    (quadrilaterals, hexahedra) are the products of its factors' weights."""
    if hasattr(rule, "factors"):
        return reduce(np.multiply.outer, [_weights(factor) for factor in rule.factors]).ravel()
    return np.asarray(rule.weights)


def to_torch_sparse(M):
    """A scipy sparse matrix as a coalesced torch COO tensor (float64)."""
    M = M.tocoo()
    indices = torch.as_tensor(np.vstack([M.row, M.col]), dtype=torch.int64)
    return torch.sparse_coo_tensor(indices, torch.as_tensor(M.data), size=M.shape,
                                   check_invariants=False).coalesce()
