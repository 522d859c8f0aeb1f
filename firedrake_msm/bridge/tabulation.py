"""Element restriction and reference-element tabulation: the matrix-free building blocks.

As in libCEED and MFEM's partial assembly, a space's action on a set of cells is split into

- the *element restriction*: gather each cell's dofs from the global vector (``U[:, dofs]``),
- the *basis*: one small dense matrix per reference element holding basis values and reference
  derivatives at the quadrature points, shared by every cell,

so that evaluating a batch of fields at all quadrature points, and its transpose, are dense
matrix products followed by a scatter-add. Geometry (the Jacobian) never enters here: it is part
of the pointwise integrand, exactly as in the TSFC kernels this reproduces.

Firedrake stays the source of truth: the dof maps are ``FunctionSpace.cell_node_list``, the
elements are the spaces' own FIAT elements, the quadrature rules FInAT's.
"""
from dataclasses import dataclass

import numpy as np
import torch
from finat.tensorfiniteelement import TensorFiniteElement


@dataclass
class ComponentGroup:
    """Components of a space's reference value that share one scalar reference element.

    Attributes
    ----------
    element : FIAT.FiniteElement
        The scalar reference element.
    dofs : numpy.ndarray
        ``(n_cells, block_size, n_basis)`` positions of each cell's dofs in the flat vector.
    components : slice
        The group's components in the flattened reference value.
    """
    element: object
    dofs: np.ndarray
    components: slice

    @property
    def block_size(self):
        return self.dofs.shape[1]


def component_groups(V):
    """Split a (possibly mixed, vector- or tensor-valued) Firedrake space into component groups.

    The flat dof vector is the concatenation of the subspaces' data, each stored node-major with
    the block components interleaved, as ``Function.dat`` holds it.

    Returns
    -------
    groups : list of ComponentGroup
    size : int
        Length of the flat vector.
    """
    groups, offset, first = [], 0, 0
    for Vk in V.subspaces:
        element = Vk.finat_element
        if isinstance(element, TensorFiniteElement):
            element = element.base_element
        if element.value_shape != ():
            raise NotImplementedError(
                f"the torch bridge supports spaces built from scalar elements (with vector, tensor "
                f"or mixed blocks), not the {Vk.ufl_element()} element of {Vk}")
        bs = Vk.block_size
        nodes = np.asarray(Vk.cell_node_list)
        dofs = offset + nodes[:, None, :] * bs + np.arange(bs)[None, :, None]
        groups.append(ComponentGroup(element.fiat_equivalent, dofs, slice(first, first + bs)))
        offset += int(Vk.node_set.size) * bs
        first += bs
    return groups, offset


def tabulate(element, points, slots):
    """Reference basis functions at ``points``: ``(len(slots), n_points, n_basis)``.

    ``slots`` lists what to tabulate: ``None`` for values, ``k`` for the k-th reference derivative.
    """
    tdim = points.shape[1]
    table = element.tabulate(1 if any(s is not None for s in slots) else 0, points)
    keys = [tuple(int(j == s) for j in range(tdim)) for s in slots]
    return np.stack([table[key].T for key in keys])


def slots_for(value, grad, tdim):
    """The tabulation slots for evaluating values and/or reference gradients."""
    return ([None] if value else []) + (list(range(tdim)) if grad else [])


class Basis(torch.nn.Module):
    """A space's dofs on a set of cells, evaluated at reference points.

    Parameters
    ----------
    V : firedrake.FunctionSpace
        The space (mixed, vector and tensor spaces of scalar elements included).
    cells : numpy.ndarray
        The cells (indices into ``V.cell_node_list``) to act on.
    points : numpy.ndarray
        ``(Q, tdim)`` reference points, usually a quadrature rule's.
    value, grad : bool
        Whether values and/or reference gradients are tabulated.

    Notes
    -----
    The reference value of the space is flattened to ``n_comp`` components (its shape is
    :attr:`value_shape`). Values at points are laid out ``(Q, C, n_comp, A, B)``: point, cell,
    component, slot (value, then the ``tdim`` reference derivatives) and, innermost, the batch.
    """

    def __init__(self, V, cells, points, value=True, grad=True):
        super().__init__()
        groups, self.size = component_groups(V)
        self.tdim = points.shape[1]
        self.slots = slots_for(value, grad, self.tdim)
        self.n_points = points.shape[0]
        self.n_cells = len(cells)
        self.value_shape = V.ufl_element().reference_value_shape
        self.n_comp = groups[-1].components.stop
        self.components = [g.components for g in groups]
        self.block_sizes = [g.block_size for g in groups]
        for k, g in enumerate(groups):
            table = tabulate(g.element, points, self.slots)              # (A, Q, nd)
            table = table.transpose(1, 0, 2).reshape(-1, table.shape[-1])  # (Q * A, nd)
            self.register_buffer(f"table{k}", torch.as_tensor(table), persistent=False)
            # basis-function-major, so that one gather gives the (nd, C * bs * B) GEMM operand
            dofs = g.dofs[cells].transpose(2, 0, 1).reshape(-1)
            self.register_buffer(f"dofs{k}", torch.as_tensor(dofs), persistent=False)

    def _groups(self):
        for k, (components, bs) in enumerate(zip(self.components, self.block_sizes)):
            yield components, bs, getattr(self, f"table{k}"), getattr(self, f"dofs{k}")

    def evaluate(self, U):
        """Values and reference gradients of the batch ``U`` at every cell's points.

        Parameters
        ----------
        U : torch.Tensor
            ``(B, size)`` flat dof vectors.

        Returns
        -------
        torch.Tensor
            ``(Q, C, n_comp, A, B)``.
        """
        B, C, A, Q = U.shape[0], self.n_cells, len(self.slots), self.n_points
        rows = U.T.contiguous()
        parts = []
        for _, bs, table, dofs in self._groups():
            local = rows[dofs].view(table.shape[1], C * bs * B)              # element restriction
            at_points = (table @ local).view(Q, A, C, bs, B)                 # basis
            parts.append(at_points.permute(0, 2, 3, 1, 4))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def integrate(self, integrand):
        r"""The transpose of :meth:`evaluate`: sum ``integrand`` against the basis, scatter-add.

        Parameters
        ----------
        integrand : torch.Tensor
            ``(Q, C, n_comp, A, B)``, :meth:`evaluate`'s layout: the pointwise coefficients of the
            test basis values and reference derivatives (weights and geometry applied).

        Returns
        -------
        torch.Tensor
            ``(B, size)``.
        """
        return self.scatter(integrand, integrand.new_zeros(self.size, integrand.shape[-1])).T

    def scatter(self, integrand, rows):
        """:meth:`integrate`, added into the transposed residual ``rows`` ``(size, B)``, which is
        returned."""
        Q, C, _, A, B = integrand.shape
        for components, bs, table, dofs in self._groups():
            at_points = integrand[:, :, components].permute(0, 3, 1, 2, 4).reshape(Q * A, C * bs * B)
            rows.index_add_(0, dofs, (table.T @ at_points).view(-1, B))
        return rows


class FacetBasis(torch.nn.Module):
    """A space's dofs on the cells next to a set of facets, evaluated at a reference facet's points.

    Each facet is seen from one of its cells, where it is the local facet :math:`f`; FIAT's entity
    transform of :math:`f` maps the reference facet's points into that cell, as TSFC's facet
    kernels tabulate them. The facets are grouped by :math:`f`, one :class:`Basis` (one dense
    tabulation, shared by the group's cells) per group, and laid out in the order given.

    Parameters
    ----------
    V : firedrake.FunctionSpace
        The space.
    cells, local : numpy.ndarray
        For each facet, the cell it is seen from and its local facet number in that cell.
    cell : FIAT.reference_element.Cell
        The reference cell.
    points : numpy.ndarray
        ``(Q, tdim - 1)`` points on the reference facet.
    value, grad : bool
        As for :class:`Basis`, whose layout :meth:`evaluate` and :meth:`integrate` share, with the
        facets in place of the cells.
    """

    def __init__(self, V, cells, local, cell, points, value=True, grad=True):
        super().__init__()
        dim = cell.get_dimension() - 1
        self.bases = torch.nn.ModuleList()
        wheres = []
        for f in np.unique(local):
            where = np.flatnonzero(local == f)
            mapped = cell.get_entity_transform(dim, int(f))(np.asarray(points, dtype=float))
            self.bases.append(Basis(V, cells[where], mapped, value, grad))
            wheres.append(where)
        first = self.bases[0]
        self.size, self.tdim, self.slots = first.size, first.tdim, first.slots
        self.value_shape, self.n_comp, self.n_points = first.value_shape, first.n_comp, first.n_points
        self.n_cells = len(cells)
        order = np.concatenate(wheres)
        # Facets already sorted by local number are contiguous groups: slices, no gather.
        self._sorted = bool((order == np.arange(len(order))).all())
        self._starts = np.cumsum([0] + [len(w) for w in wheres[:-1]]).tolist()
        self.register_buffer("_inverse", torch.as_tensor(np.argsort(order)), persistent=False)
        for k, where in enumerate(wheres):
            self.register_buffer(f"_where{k}", torch.as_tensor(where), persistent=False)

    def evaluate(self, U):
        """Values and reference gradients ``(Q, F, n_comp, A, B)`` of the batch ``U`` ``(B, size)``
        on every facet."""
        parts = [basis.evaluate(U) for basis in self.bases]
        at_points = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return at_points if self._sorted else at_points.index_select(1, self._inverse)

    def integrate(self, integrand):
        """The transpose of :meth:`evaluate`: ``(B, size)``."""
        return self.scatter(integrand, integrand.new_zeros(self.size, integrand.shape[-1])).T

    def scatter(self, integrand, rows):
        """:meth:`integrate`, added into ``rows`` ``(size, B)``, which is returned."""
        for k, (basis, start) in enumerate(zip(self.bases, self._starts)):
            if self._sorted:
                part = integrand.narrow(1, start, basis.n_cells)
            else:
                part = integrand.index_select(1, getattr(self, f"_where{k}"))
            rows = basis.scatter(part, rows)
        return rows
