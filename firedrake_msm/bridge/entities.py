r"""Where an integral is evaluated: its cells or facets, their quadrature rule, bases and geometry.

A term of the residual is computed the same way on every kind of entity (gather, tabulate,
pointwise integrand, transpose, scatter-add); what differs is held here:

- :class:`Cells` (``dx``): one cell per entity, the cell's quadrature rule;
- :class:`Facets` (``ds``, ``dS``): the reference facet's rule, mapped into the cell next to each
  facet through its local facet number, and for interior facets two cells, the sides ``'+'`` and
  ``'-'`` (Firedrake's ``facet_cell`` columns, as its kernels receive them);

and :func:`static_leaf` evaluates the terminals that do not change between calls (fixed
coefficients, geometry) on them exactly as TSFC does: the Jacobian from the coordinate field,
the per-local-facet constants ``CellFacetJacobian`` and ``ReferenceNormal`` from FIAT, the
facet area as TSFC's own facet integral of 1.
"""
import numpy as np
import torch
import ufl
import ufl.classes as uc
from firedrake import Constant, FunctionSpace, TestFunction, assemble, dx
from firedrake.ml.pytorch import to_torch
from finat.element_factory import as_fiat_cell
from tsfc.fem import get_quadrature_rule, make_cell_facet_jacobian
from tsfc.modified_terminals import analyse_modified_terminal
from tsfc.ufl_utils import one_times

from firedrake_msm.bridge.tabulation import Basis, FacetBasis
from firedrake_msm.bridge.ufl2torch import PREFIX, Tape, UnsupportedUFLError

FACET_TYPES = ("exterior_facet", "interior_facet")


class Cells:
    """The cells of a cell integral, with its quadrature rule.

    Parameters
    ----------
    mesh : firedrake.MeshGeometry
    cells : numpy.ndarray
        Indices into the mesh's cell set.
    metadata : dict
        The integral's metadata (quadrature degree and rule).
    """

    integral_type = "cell"
    sides = (None,)

    def __init__(self, mesh, cells, metadata):
        self.mesh = mesh
        self.fiat_cell = as_fiat_cell(mesh.ufl_cell())
        self.rule = quadrature_rule(self.fiat_cell, self.fiat_cell.get_dimension(), metadata)
        self.points = np.asarray(self.rule.point_set.points, dtype=float)
        self._cells = cells

    def cells(self, side):
        """The cell of each entity."""
        return self._cells

    def basis(self, W, side, value, grad):
        """The space ``W`` tabulated at the rule's points of every entity."""
        return Basis(W, self._cells, self.points, value=value, grad=grad)

    def facet_quantity(self, t, side):
        raise UnsupportedUFLError(f"no torch translation for the UFL terminal {type(t).__name__}")


class Facets:
    r"""The facets of an exterior or interior facet integral, with its quadrature rule.

    TSFC integrates over the reference facet, with the rule's points :math:`\hat s_q` mapped into
    each adjacent cell by FIAT's transform of the local facet :math:`f`, :math:`\hat x_q =
    T_f(\hat s_q)`. On simplicial and quadrilateral meshes both sides of an interior facet see
    its points in the same order (Firedrake numbers the cells' vertices consistently), which is
    checked here on the physical points: TSFC permutes them by the facets' orientations only on
    hexahedra.

    Parameters
    ----------
    mesh : firedrake.MeshGeometry
    integral_type : {"exterior_facet", "interior_facet"}
    facets : numpy.ndarray
        Indices into the mesh's exterior or interior facet set.
    metadata : dict
        The integral's metadata.
    """

    def __init__(self, mesh, integral_type, facets, metadata):
        self.mesh, self.integral_type = mesh, integral_type
        self.fiat_cell = as_fiat_cell(mesh.ufl_cell())
        self.facet_dim = self.fiat_cell.get_dimension() - 1
        self.rule = quadrature_rule(self.fiat_cell, self.facet_dim, metadata)
        # On 1D meshes a facet is a point: one point with no coordinates.
        points = self.rule.point_set.points
        self.points = np.asarray(points, dtype=float).reshape(len(points), self.facet_dim)
        data = facet_data(mesh, integral_type)
        facet_cell = np.asarray(data.facet_cell)
        local = np.asarray(data.local_facet_dat.data_ro_with_halos).reshape(len(facet_cell), -1)
        # Sorted by the first side's local facet, its groups are contiguous slices.
        facets = np.asarray(facets)[np.argsort(local[facets, 0], kind="stable")]
        self.facets = facets
        self._facet_cell, self._local = facet_cell[facets], local[facets].astype(np.int64)
        self.sides = ("+", "-") if integral_type == "interior_facet" else (None,)
        self._area = None
        if integral_type == "interior_facet":
            self._check_matching_points()

    def _column(self, side):
        return 1 if side == "-" else 0

    def cells(self, side):
        """The cell on ``side`` of each facet."""
        return self._facet_cell[:, self._column(side)]

    def local_facets(self, side):
        """The local facet number of each facet in its cell on ``side``."""
        return self._local[:, self._column(side)]

    def basis(self, W, side, value, grad):
        """The space ``W`` on ``side`` of every facet, at the rule's points."""
        return FacetBasis(W, self.cells(side), self.local_facets(side), self.fiat_cell, self.points,
                          value=value, grad=grad)

    def facet_quantity(self, t, side):
        """The facet-dependent geometric terminals, ``(1, F, *shape, 1)``, as TSFC computes them."""
        cell, dim, local = self.fiat_cell, self.facet_dim, self.local_facets(side)
        n_facets = len(cell.get_topology()[dim])
        if isinstance(t, uc.CellFacetJacobian):      # d(cell coordinates)/d(facet coordinates)
            table = np.stack([make_cell_facet_jacobian(cell, dim, f) for f in range(n_facets)])
        elif isinstance(t, uc.ReferenceNormal):      # outward, unit in the infinity norm
            table = np.stack([cell.compute_reference_normal(dim, f) for f in range(n_facets)])
        elif isinstance(t, uc.ReferenceFacetVolume):
            return torch.tensor(_weights(self.rule).sum()).reshape((1,) * (PREFIX + 1))
        elif isinstance(t, uc.FacetArea):
            return self.facet_area()
        else:
            raise UnsupportedUFLError(f"no torch translation for the UFL terminal {type(t).__name__} "
                                      f"on facets")
        values = torch.as_tensor(table[local])
        return values.reshape(1, len(local), *values.shape[1:], 1)

    def facet_area(self):
        r"""Each facet's measure, ``(1, F, 1)``: TSFC's ``FacetArea``, the facet integral of 1
        with its own quadrature degree, :math:`\sum_q w_q\,|\det J_F|(\hat s_q)` (from side
        ``'+'`` on interior facets)."""
        if self._area is None:
            integrand, degree = one_times(ufl.Measure(self.integral_type, domain=self.mesh))
            unit = Facets(self.mesh, self.integral_type, self.facets, {"quadrature_degree": degree})
            tape = Tape([integrand], lambda leaf: static_leaf(unit, leaf, None),
                        f"the facet area of {self.integral_type} integrals")
            self._area = tape([])[0].sum(dim=0, keepdim=True)
        return self._area

    def _check_matching_points(self):
        X = self.mesh.coordinates
        x = [evaluate_static(self, X, X.function_space(), 0, side) for side in self.sides]
        scale = float(x[0].abs().max())
        if not torch.allclose(x[0], x[1], rtol=0, atol=1e-10 * scale):
            raise UnsupportedUFLError(
                f"the two sides of some interior facets of this {self.mesh.ufl_cell()} mesh see the "
                f"quadrature points in different orders (TSFC would reorder them by facet orientation); "
                f"such meshes are not supported by the torch bridge")


def facet_data(mesh, integral_type):
    """Firedrake's exterior or interior facet data of ``mesh``."""
    return mesh.exterior_facets if integral_type == "exterior_facet" else mesh.interior_facets


def static_leaf(entities, leaf, u):
    """The value on ``entities`` of a leaf that does not change from call to call, in the tape's
    layout ``(Q or 1, entities or 1, *shape, 1)``, or None for one that does (``u`` and its
    derivatives, constants)."""
    mt = analyse_modified_terminal(leaf)
    t, side = mt.terminal, mt.restriction
    if mt.local_derivatives > 1 or side not in entities.sides + (None,):
        raise UnsupportedUFLError(f"unsupported modified terminal {leaf}")
    if isinstance(t, Constant) or t == u:
        return None
    if isinstance(t, uc.Coefficient):
        return evaluate_static(entities, t, t.function_space(), mt.local_derivatives, side)
    if isinstance(t, uc.SpatialCoordinate):
        X = entities.mesh.coordinates
        return evaluate_static(entities, X, X.function_space(), mt.local_derivatives, side)
    if isinstance(t, uc.QuadratureWeight):
        return torch.as_tensor(_weights(entities.rule)).reshape(-1, 1, 1)
    cells = entities.cells(side)
    if isinstance(t, (uc.CellVertices, uc.CellEdgeVectors)):
        X = entities.mesh.coordinates
        cell = entities.fiat_cell
        vertices = np.asarray(cell.get_vertices(), dtype=float)
        basis = Basis(X.function_space(), cells, vertices, grad=False)
        vertices = basis.evaluate(to_torch(X))[:, :, :, 0, 0]          # (n_vertices, C, gdim)
        if isinstance(t, uc.CellEdgeVectors):     # as TSFC: x[a] - x[b] for each edge (a, b)
            a, b = np.array([edge for _, edge in sorted(cell.get_topology()[1].items())]).T
            vertices = vertices[a] - vertices[b]
        return vertices.permute(1, 0, 2)[None, ..., None]
    if isinstance(t, uc.CellVolume):
        DG0 = FunctionSpace(entities.mesh, "DG", 0)
        volumes = assemble(TestFunction(DG0) * dx(domain=entities.mesh)).dat.data_ro
        nodes = np.asarray(DG0.cell_node_list)[cells, 0]
        return torch.as_tensor(np.array(volumes[nodes])).reshape(1, -1, 1)
    if isinstance(t, uc.ReferenceCellVolume):
        return torch.tensor(entities.fiat_cell.volume(), dtype=torch.float64).reshape((1,) * (PREFIX + 1))
    return entities.facet_quantity(t, side)


def evaluate_static(entities, f, W, order, side):
    """A fixed Function's values (order 0) or reference gradients (order 1) at the points."""
    basis = entities.basis(W, side, value=order == 0, grad=order == 1)
    value = leaf_layout(basis.evaluate(to_torch(f)), 0, order, basis.value_shape)
    # Cellwise constants (the Jacobian of affine cells) keep one point: less to read per call.
    return value[:1] if bool((value == value[:1]).all()) else value


def leaf_layout(at_points, start, order, value_shape):
    """A slice of :meth:`Basis.evaluate`'s ``(Q, C, n_comp, A, B)`` in the tape's leaf layout:
    values ``(Q, C, *value_shape, B)`` from slot ``start``, or reference gradients
    ``(Q, C, *value_shape, tdim, B)`` from the slots from ``start`` on."""
    Q, C, n, A, B = at_points.shape
    if order == 0:
        return at_points[:, :, :, start].reshape(Q, C, *value_shape, B)
    return at_points[:, :, :, start:].reshape(Q, C, *value_shape, A - start, B)


def _weights(rule):
    """Quadrature weights in the order of ``rule.point_set.points`` (tensor-product rules
    included)."""
    factors = getattr(rule, "factors", None)
    if factors is None:
        return np.asarray(rule.weights, dtype=float)
    weights = np.ones(())
    for factor in factors:
        weights = np.multiply.outer(weights, _weights(factor))
    return weights.ravel()


def quadrature_rule(fiat_cell, integration_dim, metadata):
    """The rule TSFC picks for an integral over entities of ``integration_dim`` with this metadata
    (see its ``set_quad_rule``)."""
    degree = metadata.get("quadrature_degree", "auto")
    if degree in ("auto", "default", None, -1, "-1"):
        degree = metadata["estimated_polynomial_degree"]
    rule = metadata.get("quadrature_rule", "default")
    if rule in ("auto", None):
        rule = "default"
    if not isinstance(rule, str):
        return rule
    return get_quadrature_rule(fiat_cell, integration_dim, degree, rule)


def entities_by_subdomain(integral_data):
    """The entities (cell or facet indices) of each integral data, keyed by its integral type and
    subdomain id. As Firedrake reads them, ``'otherwise'`` is every entity in no numbered
    subdomain of the same integral type in the form."""
    def ids(itg_data):
        sid = itg_data.subdomain_id
        return sid if isinstance(sid, tuple) else (sid,)

    numbered = {}
    for d in integral_data:
        numbered.setdefault(d.integral_type, set()).update(
            int(i) for i in ids(d) if isinstance(i, (int, np.integer)))
    out = {}
    for d in integral_data:
        mesh, kind = d.domain, d.integral_type
        others = tuple(sorted(numbered[kind]))
        parts = []
        for i in ids(d):
            unmarked = i in ("otherwise", "everywhere")
            if kind == "cell":
                if unmarked:
                    marked = [mesh.cell_subset(j).indices for j in others]
                    parts.append(np.setdiff1d(np.arange(mesh.cell_set.size), np.concatenate([[]] + marked)))
                else:
                    parts.append(mesh.cell_subset(int(i)).indices)
            else:
                data = facet_data(mesh, kind)
                subset = (data.measure_set(kind, "otherwise", others or None) if unmarked
                          else data.subset(int(i)))
                parts.append(getattr(subset, "indices", np.arange(subset.size)))
        out[kind, d.subdomain_id] = np.unique(np.concatenate(parts)).astype(np.int64)
    return out
