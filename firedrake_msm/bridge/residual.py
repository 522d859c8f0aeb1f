"""A UFL residual form as a batched, differentiable torch operation."""
import numpy as np
import torch
import ufl
import ufl.classes as uc
from ufl.algorithms.apply_derivatives import apply_derivatives
from ufl.corealg.map_dag import map_expr_dag
from ufl.corealg.multifunction import MultiFunction
from ufl.domain import extract_unique_domain
from firedrake import Constant, FunctionSpace, TestFunction, assemble, dx
from firedrake.ml.pytorch import to_torch
from finat.element_factory import as_fiat_cell
from tsfc.fem import get_quadrature_rule
from tsfc.modified_terminals import analyse_modified_terminal
from tsfc.ufl_utils import compute_form_data

from firedrake_msm.bridge.tabulation import Basis
from firedrake_msm.bridge.ufl2torch import PREFIX, Tape, UnsupportedUFLError
from firedrake_msm.bridge.ufl2torch import leaves as integrand_leaves


class ResidualOperator(torch.nn.Module):
    r"""The residual of a semi-discrete form, for a whole batch of states at once.

    For a 1-form :math:`F(u; v)` on a space :math:`V` with basis :math:`\{\phi_i\}`, maps a batch of
    coefficient vectors :math:`U \in \mathbb{R}^{B \times N}` to

    .. math:: R_{bi} = F(u_b; \phi_i),\qquad u_b = \sum_j U_{bj}\phi_j,

    i.e. ``assemble(F)`` at each state, in the dof order of ``Function.dat``. Each cell integral
    is evaluated the way TSFC compiles it (same preprocessing, same quadrature rule):

    .. math:: R = \sum_{\text{cells}} \mathcal{E}^T B^T\, q\bigl(B\,\mathcal{E}U\bigr),

    where :math:`\mathcal{E}` gathers each cell's dofs, :math:`B` tabulates the reference basis
    and its derivatives at the quadrature points, and :math:`q` is the integrand translated from
    UFL to torch (geometry and weights included).

    Parameters
    ----------
    F : ufl.Form
        A 1-form in the test function of ``u``'s space, nonlinear in ``u``.
    u : firedrake.Function
        The state that ``F`` is written in; its value is not used.
    parameters : dict, optional
        Maps ``Constant`` objects of ``F`` to torch tensors of the same shape, which then take
        their place: differentiable, learnable (they are registered as module parameters when
        they are :class:`torch.nn.Parameter`). Other constants are read at each call.
    dtype : torch.dtype
        ``torch.float64`` (default) or ``torch.float32``.
    device : torch.device, optional
        Where the operator's tensors live; inputs must already be there.
    compile : bool
        Hand the torch part to ``torch.compile``, which fuses the pointwise work into a few
        loops: several times faster on large batches, at a one-off compilation per input shape
        (tens of seconds).

    Notes
    -----
    Supported: cell integrals (``dx``, with subdomain ids) on simplices and quadrilaterals/
    hexahedra in 1D, 2D and 3D; spaces of scalar elements and their vector, tensor and mixed
    combinations; arithmetic, powers, ``inner``/``dot``/``grad``/``div``/``nabla_grad``/``sym``/
    ``tr`` and other index notation, ``sqrt``, ``exp``, ``ln``, trigonometric and hyperbolic
    functions, ``abs``, ``sign``, ``conditional``, ``max_value``/``min_value``, ``Constant``,
    ``SpatialCoordinate``, ``CellVolume``, ``CellDiameter`` (affine cells), fixed
    ``Function`` coefficients. Facet integrals (``ds``, ``dS``) and anything else raise
    :class:`UnsupportedUFLError` naming the node and the integral.
    """

    def __init__(self, F, u, *, parameters=None, dtype=torch.float64, device=None, compile=False):
        super().__init__()
        V = u.function_space()
        _check_form(F, V)
        self.size = V.dim()
        self.function_space = V
        parameters = dict(parameters or {})
        self._bound = {}
        for k, (c, value) in enumerate(parameters.items()):
            if not isinstance(c, Constant) or tuple(value.shape) != c.ufl_shape:
                raise ValueError(f"parameters must map Constants to tensors of their shape, not {c!r} "
                                 f"to a tensor of shape {tuple(value.shape)}")
            name = f"constant{k}"
            if isinstance(value, torch.nn.Parameter):
                self.register_parameter(name, value)
            else:
                self.register_buffer(name, value, persistent=False)
            self._bound[c] = name

        form_data = compute_form_data(F)
        self.constants = list(form_data.constants)
        cells = _cells_by_subdomain([d for d in form_data.integral_data if d.integral_type == "cell"])
        self.terms = torch.nn.ModuleList()
        # compute_form_data renumbers coefficients; map them back to the user's objects.
        originals = {new: old for old, new in form_data.function_replace_map.items()}
        for itg_data in form_data.integral_data:
            if itg_data.integral_type == "cell" and len(cells[itg_data.subdomain_id]) == 0:
                continue
            describe = _describe(F, itg_data)
            if itg_data.integral_type != "cell":
                raise UnsupportedUFLError(f"{itg_data.integral_type} integrals (ds, dS) are not supported by "
                                          f"the torch bridge; found {describe}")
            for integral in itg_data.integrals:
                term = _CellTerm(integral, V, u, cells[itg_data.subdomain_id], originals, self.constants,
                                 describe)
                self.terms.append(term)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)   # tracks dtype and device
        self.to(device=device, dtype=dtype)
        self._kernel = torch.compile(self._residual, dynamic=False) if compile else self._residual

    def _constant_values(self, like):
        values = []
        for c in self.constants:
            if c in self._bound:
                value = getattr(self, self._bound[c])
            else:
                value = torch.as_tensor(np.array(c.dat.data_ro), dtype=like.dtype, device=like.device)
            values.append(value.reshape((1,) * PREFIX + c.ufl_shape + (1,)))
        return values

    def forward(self, U):
        """Residuals ``(B, N)`` of the states ``U`` ``(B, N)``."""
        _check_input(U, self.size, self._anchor)
        return self._kernel(U, self._constant_values(U))

    def _residual(self, U, constants):
        """The pure-torch part of :meth:`forward` (what ``compile=True`` hands to torch.compile)."""
        return sum(term(U, constants) for term in self.terms)


class _CellTerm(torch.nn.Module):
    r"""One cell integral with one quadrature rule.

    The integrand is linear in the test function's reference value :math:`\hat v` and gradient
    :math:`\hat\nabla\hat v`, so UFL differentiates it into their coefficients

    .. math:: I = s\cdot\hat v + g : \hat\nabla\hat v,\qquad
              s = \partial I/\partial\hat v,\quad g = \partial I/\partial(\hat\nabla\hat v),

    which no longer involve the test function: the tape evaluates them once per point, and the
    test basis' tabulation applies the transpose.
    """

    def __init__(self, integral, V, u, cells, originals, constants, describe):
        super().__init__()
        self.rule = _quadrature_rule(extract_unique_domain(u), integral.metadata())
        points = np.asarray(self.rule.point_set.points, dtype=float)
        self.tdim = points.shape[1]
        self._cells, self._points = cells, points
        integrand = ufl.replace(integral.integrand(), originals)
        leaves = integrand_leaves(integrand)
        self._state_orders = sorted({_order(leaf) for leaf in leaves if _terminal(leaf) == u})
        test_leaves = {_order(leaf): leaf for leaf in leaves if isinstance(_terminal(leaf), uc.Argument)}
        self.test_orders = sorted(test_leaves)
        self.trial = Basis(V, cells, points, value=0 in self._state_orders, grad=1 in self._state_orders)
        self.test = Basis(V, cells, points, value=0 in test_leaves, grad=1 in test_leaves)
        self.value_shape = self.test.value_shape
        self.tape = Tape(_test_coefficients(integrand, test_leaves, describe),
                         lambda leaf: self._static_leaf(leaf, u), describe)
        # Where each of the tape's dynamic leaves comes from: a constant (by its index in
        # ``constants``) or the state (by derivative order).
        self._sources = [("constant", constants.index(leaf)) if isinstance(leaf, Constant)
                         else ("state", _order(leaf)) for leaf in self.tape.dynamic_leaves]

    def _static_leaf(self, leaf, u):
        mt = analyse_modified_terminal(leaf)
        t = mt.terminal
        if mt.restriction is not None or mt.local_derivatives > 1:
            raise UnsupportedUFLError(f"unsupported modified terminal {leaf}")
        if isinstance(t, Constant) or t == u:
            return None
        if isinstance(t, uc.Coefficient):
            return self._evaluate_static(t, t.function_space(), mt.local_derivatives)
        if isinstance(t, uc.SpatialCoordinate):
            X = extract_unique_domain(t).coordinates
            return self._evaluate_static(X, X.function_space(), mt.local_derivatives)
        if isinstance(t, uc.QuadratureWeight):
            return torch.as_tensor(_weights(self.rule)).reshape(-1, 1, 1)
        if isinstance(t, (uc.CellVertices, uc.CellEdgeVectors)):
            X = extract_unique_domain(t).coordinates
            cell = as_fiat_cell(extract_unique_domain(t).ufl_cell())
            vertices = np.asarray(cell.get_vertices(), dtype=float)
            basis = Basis(X.function_space(), self._cells, vertices, grad=False)
            vertices = basis.evaluate(to_torch(X))[:, :, :, 0, 0]          # (n_vertices, C, gdim)
            if isinstance(t, uc.CellEdgeVectors):     # as TSFC: x[a] - x[b] for each edge (a, b)
                a, b = np.array([edge for _, edge in sorted(cell.get_topology()[1].items())]).T
                vertices = vertices[a] - vertices[b]
            return vertices.permute(1, 0, 2)[None, ..., None]
        if isinstance(t, uc.CellVolume):
            mesh = extract_unique_domain(t)
            DG0 = FunctionSpace(mesh, "DG", 0)
            volumes = assemble(TestFunction(DG0) * dx(domain=mesh)).dat.data_ro
            nodes = np.asarray(DG0.cell_node_list)[self._cells, 0]
            return torch.as_tensor(np.array(volumes[nodes])).reshape(1, -1, 1)
        if isinstance(t, uc.ReferenceCellVolume):
            return torch.tensor(as_fiat_cell(extract_unique_domain(t).ufl_cell()).volume(),
                                dtype=torch.float64).reshape((1,) * (PREFIX + 1))
        raise UnsupportedUFLError(f"no torch translation for the UFL terminal {type(t).__name__}")

    def _evaluate_static(self, f, W, order):
        """A fixed Function's values (order 0) or reference gradients (order 1) at the points."""
        basis = Basis(W, self._cells, self._points, value=order == 0, grad=order == 1)
        value = _leaf_layout(basis.evaluate(to_torch(f)), 0, order, basis.value_shape)
        # Cellwise constants (the Jacobian of affine cells) keep one point: less to read per call.
        return value[:1] if bool((value == value[:1]).all()) else value

    def forward(self, U, constants):
        """The term's residual ``(B, N)``; ``constants`` holds the operator's constant values."""
        state = {}
        if self._state_orders:
            at_points = self.trial.evaluate(U)
            for order in self._state_orders:
                start = 0 if order == 0 else len(self.trial.slots) - self.tdim
                state[order] = _leaf_layout(at_points, start, order, self.value_shape)
        leaves = [constants[index] if kind == "constant" else state[index] for kind, index in self._sources]
        B, C, Q, n = U.shape[0], self.test.n_cells, self.test.n_points, self.test.n_comp
        parts = []
        for order, coefficient in zip(self.test_orders, self.tape(leaves)):
            derivatives = (self.tdim,) if order else ()
            coefficient = coefficient.expand(Q, C, *self.value_shape, *derivatives, B)
            parts.append(coefficient.reshape(Q, C, n, self.tdim if order else 1, B))
        return self.test.integrate(parts[0] if len(parts) == 1 else torch.cat(parts, dim=3))


def _test_coefficients(integrand, test_leaves, describe):
    """The coefficients of the test-function leaves (by order) in an integrand linear in them."""
    variables = {leaf: ufl.variable(leaf) for leaf in test_leaves.values()}
    substituted = map_expr_dag(_Substitute(variables), integrand)
    coefficients = [apply_derivatives(ufl.diff(substituted, variables[test_leaves[order]]))
                    for order in sorted(test_leaves)]
    if any(isinstance(_terminal(leaf), uc.Argument) for leaf in integrand_leaves(*coefficients)):
        raise UnsupportedUFLError(f"the integrand is not linear in the test function: {describe}")
    return coefficients


class _Substitute(MultiFunction):
    """Replace given subexpressions (here modified terminals) by others."""

    def __init__(self, mapping):
        super().__init__()
        self.mapping = mapping

    def expr(self, o, *operands):
        if o in self.mapping:
            return self.mapping[o]
        return self.reuse_if_untouched(o, *operands)

    def terminal(self, o):
        return self.mapping.get(o, o)


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


def _leaf_layout(at_points, start, order, value_shape):
    """A slice of :meth:`Basis.evaluate`'s ``(Q, C, n_comp, A, B)`` in the tape's leaf layout:
    values ``(Q, C, *value_shape, B)`` from slot ``start``, or reference gradients
    ``(Q, C, *value_shape, tdim, B)`` from the slots from ``start`` on."""
    Q, C, n, A, B = at_points.shape
    if order == 0:
        return at_points[:, :, :, start].reshape(Q, C, *value_shape, B)
    return at_points[:, :, :, start:].reshape(Q, C, *value_shape, A - start, B)


def _order(leaf):
    return analyse_modified_terminal(leaf).local_derivatives


def _terminal(leaf):
    return analyse_modified_terminal(leaf).terminal


def _quadrature_rule(mesh, metadata):
    """The rule TSFC picks for a cell integral with this metadata (see its ``set_quad_rule``)."""
    degree = metadata.get("quadrature_degree", "auto")
    if degree in ("auto", "default", None, -1, "-1"):
        degree = metadata["estimated_polynomial_degree"]
    rule = metadata.get("quadrature_rule", "default")
    if rule in ("auto", None):
        rule = "default"
    if not isinstance(rule, str):
        return rule
    cell = as_fiat_cell(mesh.ufl_cell())
    return get_quadrature_rule(cell, cell.get_dimension(), degree, rule)


def _cells_by_subdomain(integral_data):
    """Cells of each cell integral's subdomain; 'otherwise' is every cell in no numbered one."""
    def ids(itg_data):
        sid = itg_data.subdomain_id
        return sid if isinstance(sid, tuple) else (sid,)

    def marked(mesh, numbers):
        return np.unique(np.concatenate([[]] + [mesh.cell_subset(int(i)).indices for i in numbers]))

    numbered = {i for d in integral_data for i in ids(d) if isinstance(i, (int, np.integer))}
    cells = {}
    for d in integral_data:
        mesh = d.domain
        if any(i in ("otherwise", "everywhere") for i in ids(d)):
            everywhere = np.arange(mesh.cell_set.size)
            cells[d.subdomain_id] = np.setdiff1d(everywhere, marked(mesh, numbered)).astype(np.int64)
        else:
            cells[d.subdomain_id] = marked(mesh, ids(d)).astype(np.int64)
    return cells


def _check_form(F, V):
    if not isinstance(F, ufl.Form):
        raise TypeError(f"expected a UFL Form, not {type(F).__name__}")
    arguments = F.arguments()
    if len(arguments) != 1:
        raise ValueError(f"the residual must be a 1-form (linear in one test function); "
                         f"this form has {len(arguments)} arguments")
    (v,) = arguments
    if v.function_space() != V:
        raise ValueError(f"mismatched function spaces: the test function lives in "
                         f"{v.function_space()}, the state in {V}")


def _check_input(U, size, like):
    if U.dim() != 2 or U.shape[1] != size:
        raise ValueError(f"expected a batch of states of shape (B, {size}), got {tuple(U.shape)}")
    if U.device != like.device or U.dtype != like.dtype:
        raise ValueError(f"states are {U.dtype} on {U.device} but the operator is {like.dtype} on "
                         f"{like.device}; move one of them with .to(...)")


def _describe(F, itg_data):
    """The user's own terms behind an integral data, for error messages."""
    terms = [str(itg.integrand()) for itg in F.integrals()
             if itg.integral_type() == itg_data.integral_type]
    return (f"the {itg_data.integral_type} integral over subdomain {itg_data.subdomain_id}, "
            f"from the form's term(s) {_short(' + '.join(terms))}")


def _short(expr, n=160):
    s = str(expr)
    return s if len(s) <= n else s[:n] + " ..."
