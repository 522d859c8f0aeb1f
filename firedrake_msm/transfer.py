"""Moving fields between a fine and a coarse space: restriction and prolongation."""
import scipy.sparse as sp
import torch
from firedrake import TestFunction, TrialFunction, assemble, dx, grad, inner, interpolate
from firedrake.ml.pytorch import from_torch, to_torch

from firedrake_msm.bridge.mass import to_torch_sparse


class Transfer(torch.nn.Module):
    r"""Restriction :math:`R: V_h \to V_H` and prolongation :math:`P: V_H \to V_h`.

    The prolongation interpolates: :math:`P u_H = I_h u_H`, a sparse matrix that Firedrake
    assembles once (nested or not, the meshes need only cover the same domain).

    The restriction is the Helmholtz-filtered :math:`L^2` projection: :math:`u_H = R y_h` solves

    .. math:: (u_H, v) + \alpha^2 (\nabla u_H, \nabla v) = (y_h, v)\qquad \forall v \in V_H,

    the finite-element LES filter of width :math:`\alpha` applied in the coarse space
    (:math:`\alpha = 0`: the plain :math:`L^2` projection). Its right-hand side is
    :math:`B y_h` with :math:`B = P^T M_h`: exact when :math:`V_H \subset V_h` (nested meshes);
    otherwise the coarse basis is first interpolated on the fine mesh, an :math:`O(h^2)`
    perturbation for P1. Hence :math:`RP = I` on nested meshes when :math:`\alpha = 0`.

    Parameters
    ----------
    V_fine, V_coarse : firedrake.FunctionSpace
        The spaces (same value shape; meshes of the same domain).
    filter_width : float
        :math:`\alpha`.
    dtype, device
        As for the bridge's operators.
    """

    def __init__(self, V_fine, V_coarse, *, filter_width=0.0, dtype=torch.float64, device=None):
        super().__init__()
        if V_fine.value_shape != V_coarse.value_shape:
            raise ValueError(f"mismatched function spaces: values of shape {V_fine.value_shape} on the fine "
                             f"mesh, {V_coarse.value_shape} on the coarse one")
        self.V_fine, self.V_coarse = V_fine, V_coarse
        self.filter_width = filter_width
        P = _scipy(assemble(interpolate(TrialFunction(V_coarse), V_fine)))
        u, v = TrialFunction(V_fine), TestFunction(V_fine)
        M_fine = _scipy(assemble(inner(u, v) * dx))
        u, v = TrialFunction(V_coarse), TestFunction(V_coarse)
        A = _scipy(assemble((inner(u, v) + filter_width**2 * inner(grad(u), grad(v))) * dx))
        self.register_buffer("prolongation", to_torch_sparse(P), persistent=False)
        self.register_buffer("load", to_torch_sparse((P.T @ M_fine).tocsr()), persistent=False)
        cholesky = torch.linalg.cholesky(torch.as_tensor(A.toarray()))
        self.register_buffer("cholesky", cholesky, persistent=False)
        self.to(device=device, dtype=dtype)

    def restrict(self, Y):
        """Fine states ``(B, N_h)`` to coarse ``(B, N_H)``."""
        return torch.cholesky_solve(self.load @ Y.T, self.cholesky).T

    def prolong(self, U):
        """Coarse states ``(B, N_H)`` to fine ``(B, N_h)``."""
        return (self.prolongation @ U.T).T

    def restrict_function(self, y):
        """:meth:`restrict` for one Firedrake Function on the fine space."""
        return from_torch(self.restrict(to_torch(y)).cpu()[0], self.V_coarse)

    def prolong_function(self, u):
        """:meth:`prolong` for one Firedrake Function on the coarse space."""
        return from_torch(self.prolong(to_torch(u)).cpu()[0], self.V_fine)


def _scipy(matrix):
    petsc = matrix.petscmat
    return sp.csr_matrix(petsc.getValuesCSR()[::-1], shape=petsc.getSize())
