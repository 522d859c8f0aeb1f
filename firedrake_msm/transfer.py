"""Moving fields between a fine and a coarse space: restriction, prolongation, and the coarse
cell around each fine node."""
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from firedrake import (CellVolume, Function, FunctionSpace, SpatialCoordinate, TestFunction, TrialFunction,
                       VectorFunctionSpace, assemble, dx, grad, inner, interpolate)
from firedrake.ml.pytorch import from_torch, to_torch
from ufl import as_ufl
from ufl.constantvalue import Zero

from firedrake_msm.bridge.mass import to_torch_sparse
from firedrake_msm.bridge.tabulation import component_groups, tabulate


class Transfer(torch.nn.Module):
    r"""Restriction :math:`R: V_h \to V_H` and prolongation :math:`P: V_H \to V_h`.

    The prolongation interpolates: :math:`P u_H = I_h u_H`, a sparse matrix that Firedrake
    assembles once (nested or not, the meshes need only cover the same domain).

    The restriction is the Helmholtz-filtered :math:`L^2` projection: :math:`u_H = R y_h` solves

    .. math:: (P u_H, P v)_h + \alpha^2 (\nabla u_H, \nabla v) = (y_h, P v)_h\qquad \forall v \in V_H,

    the finite-element LES filter of width :math:`\alpha` applied in the coarse space
    (:math:`\alpha = 0`: the plain :math:`L^2` projection). Both inner products
    :math:`(\cdot, \cdot)_h` are taken on the fine mesh, with the coarse basis interpolated there:
    the matrix is the Galerkin mass :math:`P^T M_h P` and the right-hand side :math:`P^T M_h y_h`.
    On nested meshes this is the coarse mass matrix itself. On non-nested ones, the coarse mass
    matrix would integrate over the coarse mesh's domain while the right-hand side integrates over
    the fine one: where the two differ (a curved boundary, inscribed in polygons of different
    sizes) even a field the coarse space holds exactly would come back wrong. Taken on the fine
    mesh, :math:`RP = I` on any pair of meshes when :math:`\alpha = 0`.

    Parameters
    ----------
    V_fine, V_coarse : firedrake.FunctionSpace
        The spaces (same value shape; meshes of the same domain).
    filter_width : float or ufl.core.expr.Expr
        :math:`\alpha`, a number or a UFL expression on the coarse mesh (a width following the
        local cell size, say).
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
        P = scipy_matrix(assemble(interpolate(TrialFunction(V_coarse), V_fine)))
        u, v = TrialFunction(V_fine), TestFunction(V_fine)
        M_fine = scipy_matrix(assemble(inner(u, v) * dx))
        u, v = TrialFunction(V_coarse), TestFunction(V_coarse)
        load = (P.T @ M_fine).tocsr()
        A = load @ P
        alpha2 = as_ufl(filter_width) ** 2
        if not isinstance(alpha2, Zero):
            A += scipy_matrix(assemble(alpha2 * inner(grad(u), grad(v)) * dx))
        A = torch.as_tensor(A.toarray())
        self.register_buffer("prolongation", to_torch_sparse(P), persistent=False)
        self.register_buffer("load", to_torch_sparse(load), persistent=False)
        cholesky, info = torch.linalg.cholesky_ex(A)
        if info:
            raise ValueError(f"the coarse mesh has a node whose basis function vanishes at every node of the "
                             f"fine space ({V_fine.dim()} dofs), so the restriction is singular: is the fine "
                             f"mesh finer than the coarse one, over the same domain?")
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


def scipy_matrix(matrix):
    petsc = matrix.petscmat
    return sp.csr_matrix(petsc.getValuesCSR()[::-1], shape=petsc.getSize())


@dataclass
class CoarseStencil:
    r"""Where each node of a fine space sits in the coarse mesh.

    Fine node :math:`j` at :math:`x_j` lies in a coarse cell :math:`K` with nodes
    :math:`i_{j1}, \dots, i_{jk}`; the stencil holds those nodes, the coarse basis there,
    :math:`\phi_{i_{jl}}(x_j)` (so that :math:`\sum_l \phi_{i_{jl}}(x_j) U_{i_{jl}}` is the
    prolongation), and the offsets :math:`(x_j - x_{i_{jl}})/h_K` scaled by the cell's diameter.
    Neural fields that read a coarse cell through these see the same thing on every mesh, in every
    orientation, and on both sides of a periodic seam.

    Attributes
    ----------
    nodes : numpy.ndarray
        ``(N_h, k)`` coarse node numbers (of the scalar coarse space).
    weights : numpy.ndarray
        ``(N_h, k)`` coarse basis values.
    offsets : numpy.ndarray
        ``(N_h, k, gdim)`` scaled offsets.
    """
    nodes: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray


def coarse_stencil(V_fine, V_coarse):
    """The :class:`CoarseStencil` of the nodes of ``V_fine`` in ``V_coarse``'s mesh (Lagrange
    spaces on affine meshes; vector-valued spaces are taken node by node)."""
    fine, coarse = V_fine.mesh(), V_coarse.mesh()
    x = Function(VectorFunctionSpace(fine, scalar_space(V_fine).ufl_element()))
    x.interpolate(SpatialCoordinate(fine))
    points = x.dat.data_ro.reshape(-1, fine.geometric_dimension)
    cells, reference, _ = coarse.locate_cells_ref_coords_and_dists(points)
    if np.any(cells < 0):
        raise ValueError(f"fine node at {points[np.argmax(cells < 0)]} lies outside the coarse mesh")
    (group,) = component_groups(scalar_space(V_coarse))[0]
    (weights,) = tabulate(group.element, reference, [None])
    # Physical positions from each cell's own vertices, so periodic cells are never split.
    (geometry,) = component_groups(coarse.coordinates.function_space())[0]
    vertices = coarse.coordinates.dat.data_ro.reshape(-1)[geometry.dofs[cells]]      # (N_h, gdim, nv)
    (at_points,) = tabulate(geometry.element, reference, [None])                      # (N_h, nv)
    nodes_reference = np.array([next(iter(n.get_point_dict())) for n in group.element.dual_basis()])
    (at_nodes,) = tabulate(geometry.element, nodes_reference, [None])                 # (k, nv)
    x_points = np.einsum("jdv,jv->jd", vertices, at_points)
    x_nodes = np.einsum("jdv,kv->jkd", vertices, at_nodes)
    diameter = np.linalg.norm(vertices[:, :, :, None] - vertices[:, :, None, :], axis=1).max(axis=(1, 2))
    offsets = (x_points[:, None, :] - x_nodes) / diameter[:, None, None]
    return CoarseStencil(group.dofs[cells][:, 0, :], weights, offsets)


def scalar_space(V):
    """The scalar Lagrange space whose nodes carry ``V``'s components."""
    element = V.ufl_element()
    return FunctionSpace(V.mesh(), element.sub_elements[0] if V.block_size > 1 else element)


def cell_width(mesh):
    r"""The cell's length scale :math:`\Delta = |K|^{1/d}`, the side of the cube of the cell's
    volume (Deardorff's choice): the unit of the restriction's filter width and the Smagorinsky
    length.

    Why not ``CellDiameter`` (the longest edge): on the stretched cells of a boundary layer it
    follows the long side and over-states the resolved scale, and on a structured grid of
    squares (or in 1D) the volume gives the grid spacing :math:`h` itself. For a square split
    into two triangles, :math:`\Delta = h/\sqrt 2`; :math:`C_s` absorbs such constant factors.
    """
    d = mesh.ufl_cell().topological_dimension
    return CellVolume(mesh) ** (1.0 / (d() if callable(d) else d))    # a method in older UFL


def mean_width(mesh):
    r"""The mean cell width :math:`\bar\Delta = |\Omega|^{-1}\int_\Omega \Delta\,dx`
    (:func:`cell_width`): a graded mesh's one length scale."""
    return float(assemble(cell_width(mesh) * dx) / assemble(1 * dx(domain=mesh)))
