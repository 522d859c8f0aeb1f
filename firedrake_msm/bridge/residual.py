"""A UFL residual form as a batched, differentiable torch operation."""
import numpy as np
import torch
import ufl
import ufl.classes as uc
from ufl.algorithms.apply_derivatives import apply_derivatives
from ufl.corealg.map_dag import map_expr_dag
from ufl.corealg.multifunction import MultiFunction
from firedrake import Constant
from tsfc.modified_terminals import analyse_modified_terminal
from tsfc.ufl_utils import compute_form_data

from firedrake_msm.bridge.entities import (FACET_TYPES, Cells, Facets, entities_by_subdomain, leaf_layout,
                                           static_leaf)
from firedrake_msm.bridge.ufl2torch import PREFIX, Tape, UnsupportedUFLError
from firedrake_msm.bridge.ufl2torch import leaves as integrand_leaves


class ResidualOperator(torch.nn.Module):
    r"""The residual of a semi-discrete form, for a whole batch of states at once.

    For a 1-form :math:`F(u; v)` on a space :math:`V` with basis :math:`\{\phi_i\}`, maps a batch of
    coefficient vectors :math:`U \in \mathbb{R}^{B \times N}` to

    .. math:: R_{bi} = F(u_b; \phi_i),\qquad u_b = \sum_j U_{bj}\phi_j,

    i.e. ``assemble(F)`` at each state, in the dof order of ``Function.dat``. Each integral is
    evaluated the way TSFC compiles it (same preprocessing, same quadrature rule):

    .. math:: R = \sum_{\text{entities}} \mathcal{E}^T B^T\, q\bigl(B\,\mathcal{E}U\bigr),

    where :math:`\mathcal{E}` gathers the dofs of each cell (for a facet integral, of the cell
    next to each facet, and on interior facets of both cells, the sides ``'+'`` and ``'-'``),
    :math:`B` tabulates the reference basis and its derivatives at the quadrature points (on a
    facet, the reference facet's points mapped into the cell, one table per local facet number),
    and :math:`q` is the integrand translated from UFL to torch (geometry and weights included).

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
    Supported: cell integrals (``dx``) and exterior and interior facet integrals (``ds``, ``dS``),
    with subdomain ids (one, a tuple, or none: every entity in no numbered subdomain), on
    intervals, triangles, quadrilaterals and tetrahedra; spaces of
    scalar elements (CG, DG, any degree) and their vector, tensor and mixed combinations;
    arithmetic, powers, ``inner``/``dot``/``grad``/``div``/``nabla_grad``/``sym``/``tr`` and
    other index notation, ``sqrt``, ``exp``, ``ln``, trigonometric and hyperbolic functions,
    ``abs``, ``sign``, ``conditional``, ``max_value``/``min_value``, ``Constant``,
    ``SpatialCoordinate``, ``CellVolume``, ``CellDiameter`` (affine cells), fixed ``Function``
    coefficients; on facets also the restrictions ``('+')``/``('-')``, ``jump``, ``avg``,
    ``FacetNormal`` and ``FacetArea``. Anything else raises :class:`UnsupportedUFLError` naming
    the node and the integral, as do vertex integrals (``dP``) and the extruded measures
    (``ds_t``, ``dS_h``, ...).
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
        entities = entities_by_subdomain([d for d in form_data.integral_data
                                          if d.integral_type in ("cell",) + FACET_TYPES])
        self.terms = torch.nn.ModuleList()
        # compute_form_data renumbers coefficients; map them back to the user's objects.
        originals = {new: old for old, new in form_data.function_replace_map.items()}
        for itg_data in form_data.integral_data:
            kind, describe = itg_data.integral_type, _describe(F, itg_data)
            if kind not in ("cell",) + FACET_TYPES:
                raise UnsupportedUFLError(f"{kind} integrals ({_MEASURES.get(kind, kind)}) are not supported "
                                          f"by the torch bridge, only dx, ds and dS; found {describe}")
            indices = entities[kind, itg_data.subdomain_id]
            if len(indices) == 0:
                continue
            for integral in itg_data.integrals:
                where = (Cells(itg_data.domain, indices, integral.metadata()) if kind == "cell"
                         else Facets(itg_data.domain, kind, indices, integral.metadata()))
                term = _Term(ufl.replace(integral.integrand(), originals), V, u, where, self.constants,
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
        rows = U.new_zeros(self.size, U.shape[0])
        for term in self.terms:
            rows = term(U, constants, rows)
        return rows.T


# The measures of the integral types that the bridge does not translate, for error messages.
_MEASURES = {"vertex": "dP", "exterior_facet_top": "ds_t", "exterior_facet_bottom": "ds_b",
             "exterior_facet_vert": "ds_v", "interior_facet_horiz": "dS_h", "interior_facet_vert": "dS_v"}


class _Term(torch.nn.Module):
    r"""One integral with one quadrature rule, on cells or facets.

    The integrand is linear in the test function's reference value :math:`\hat v` and gradient
    :math:`\hat\nabla\hat v` (on interior facets, those of each side, :math:`\hat v^\pm`), so UFL
    differentiates it into their coefficients

    .. math:: I = \sum_\pm s^\pm\cdot\hat v^\pm + g^\pm : \hat\nabla\hat v^\pm,\qquad
              s^\pm = \partial I/\partial\hat v^\pm,\quad g^\pm = \partial I/\partial(\hat\nabla\hat v^\pm),

    which no longer involve the test function: the tape evaluates them once per point, and each
    side's test basis applies the transpose.

    Parameters
    ----------
    integrand : ufl.core.expr.Expr
        The preprocessed integrand, in the user's coefficients.
    V, u
        The state's space and the state.
    entities : Cells or Facets
        Where the integral is evaluated (see :mod:`firedrake_msm.bridge.entities`).
    constants : list
        The operator's constants, in the order of its constant values.
    describe : str
        The integral, for error messages.
    """

    def __init__(self, integrand, V, u, entities, constants, describe):
        super().__init__()
        self.tdim = entities.fiat_cell.get_spatial_dimension()
        leaves = integrand_leaves(integrand)
        self._state_keys = {_key(leaf) for leaf in leaves if _terminal(leaf) == u}
        test_leaves = {_key(leaf): leaf for leaf in leaves if isinstance(_terminal(leaf), uc.Argument)}
        self.test_keys = sorted(test_leaves, key=str)
        self.trial_sides = sorted({side for side, _ in self._state_keys}, key=str)
        self.test_sides = sorted({side for side, _ in test_leaves}, key=str)

        def bases(sides, keys):
            return torch.nn.ModuleList([entities.basis(V, side, (side, 0) in keys, (side, 1) in keys)
                                        for side in sides])
        self.trial, self.test = bases(self.trial_sides, self._state_keys), bases(self.test_sides, test_leaves)
        self.value_shape = self.test[0].value_shape
        self.tape = Tape(_test_coefficients(integrand, [test_leaves[k] for k in self.test_keys], describe),
                         lambda leaf: static_leaf(entities, leaf, u), describe)
        # Where each of the tape's dynamic leaves comes from: a constant (by its index in
        # ``constants``) or the state (by side and derivative order).
        self._sources = [("constant", constants.index(leaf)) if isinstance(leaf, Constant)
                         else ("state", _key(leaf)) for leaf in self.tape.dynamic_leaves]

    def forward(self, U, constants, rows):
        """Add the term's residual into ``rows`` ``(N, B)``, which is returned; ``constants`` holds
        the operator's constant values."""
        state = {}
        for side, basis in zip(self.trial_sides, self.trial):
            at_points = basis.evaluate(U)
            for order in (0, 1):
                if (side, order) in self._state_keys:
                    start = 0 if order == 0 else len(basis.slots) - self.tdim
                    state[side, order] = leaf_layout(at_points, start, order, self.value_shape)
        leaves = [constants[index] if kind == "constant" else state[index] for kind, index in self._sources]
        coefficients = dict(zip(self.test_keys, self.tape(leaves)))
        B = U.shape[0]
        for side, basis in zip(self.test_sides, self.test):
            C, Q, n = basis.n_cells, basis.n_points, basis.n_comp
            parts = []
            for order in (0, 1):
                if (side, order) in coefficients:
                    derivatives = (self.tdim,) if order else ()
                    coefficient = coefficients[side, order].expand(Q, C, *self.value_shape, *derivatives, B)
                    parts.append(coefficient.reshape(Q, C, n, self.tdim if order else 1, B))
            rows = basis.scatter(parts[0] if len(parts) == 1 else torch.cat(parts, dim=3), rows)
        return rows


def _test_coefficients(integrand, test_leaves, describe):
    """The coefficients of the test-function leaves ``test_leaves`` in an integrand linear in
    them."""
    variables = {leaf: ufl.variable(leaf) for leaf in test_leaves}
    substituted = map_expr_dag(_Substitute(variables), integrand)
    coefficients = [apply_derivatives(ufl.diff(substituted, variables[leaf])) for leaf in test_leaves]
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


def _key(leaf):
    """A leaf's side (None off interior facets) and derivative order."""
    mt = analyse_modified_terminal(leaf)
    return mt.restriction, mt.local_derivatives


def _terminal(leaf):
    return analyse_modified_terminal(leaf).terminal


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
