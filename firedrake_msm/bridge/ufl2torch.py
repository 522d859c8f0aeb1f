"""Translate a preprocessed UFL integrand into torch: the pointwise part of the bridge.

The integrand arrives as TSFC sees it (after ``compute_form_data``: derivatives expanded,
pullbacks applied, geometry lowered), so its leaves are *modified terminals*:
``ReferenceValue(f)``, ``ReferenceGrad(ReferenceValue(f))``, ``SpatialCoordinate``,
``QuadratureWeight``, constants, ... The caller supplies a tensor for each leaf; this module
translates the operators between them.

Layout of every value: two leading dimensions ``(point, cell)``, then the UFL shape, then one
dimension per free index in the order of ``expr.ufl_free_indices`` (UFL keeps that tuple sorted,
so two operands with the same free indices share one layout), and last the batch dimension; each
of point, cell and batch has size 1 where the value does not depend on it. The batch is innermost
so that every pointwise operation runs over contiguous batches, which is several times faster in
torch than over the short UFL dimensions.

Each UFL node is compiled once into a plain function of its operands' tensors
(:func:`compile_node`), which knows its index layout from the node; a :class:`Tape` evaluates the
nodes that depend only on static leaves (geometry, fixed coefficients) when it is built and
replays the others at each call, with no UFL object on that path (so ``torch.compile`` can
trace it).
"""
from functools import singledispatch

import torch
import ufl.classes as uc
from tsfc.ufl_utils import TSFCConstantMixin

PREFIX = 2


class UnsupportedUFLError(NotImplementedError):
    """A UFL node outside the subset that the bridge translates."""


def _free(o):
    return tuple(o.ufl_free_indices)


def _aligner(have, want):
    """A function viewing a tensor whose free indices are ``have`` with singleton dims for the
    indices of ``want`` (a sorted superset) that it lacks."""
    if have == want:
        return lambda t: t
    key = (Ellipsis, *(slice(None) if i in have else None for i in want), slice(None))
    return lambda t: t[key]


def _permuter(have, want):
    """A function reordering the free-index dims (before the batch) from ``have`` to ``want``."""
    have, want = list(have), list(want)
    if have == want:
        return lambda t: t
    if sorted(have) != sorted(want):
        raise UnsupportedUFLError(f"repeated or unmatched indices {have} -> {want}")
    order = [have.index(i) for i in want]

    def permute(t):
        first = t.dim() - 1 - len(have)
        return t.permute(*range(first), *(first + k for k in order), t.dim() - 1)
    return permute


@singledispatch
def compile_node(o):
    """A function computing the UFL node ``o``'s value from its operands' values."""
    raise UnsupportedUFLError(f"no torch translation for UFL node {type(o).__name__}")


# -- literals (no operands) --------------------------------------------------------------
@compile_node.register(uc.Zero)
def _zero(o):
    shape = (1,) * PREFIX + o.ufl_shape + tuple(o.ufl_index_dimensions) + (1,)
    return lambda: torch.zeros(shape, dtype=torch.float64)


@compile_node.register(uc.ScalarValue)
def _scalar(o):
    value = float(o.value())
    return lambda: torch.tensor(value, dtype=torch.float64).reshape((1,) * (PREFIX + 1))


@compile_node.register(uc.Identity)
def _identity(o):
    n, = set(o.ufl_shape)
    return lambda: torch.eye(n, dtype=torch.float64).reshape((1,) * PREFIX + (n, n, 1))


# -- algebra -----------------------------------------------------------------------------
@compile_node.register(uc.Sum)
def _sum(o):
    return torch.add


def _binary(op):
    def build(o):
        x, y = o.ufl_operands
        align_x, align_y = _aligner(_free(x), _free(o)), _aligner(_free(y), _free(o))
        return lambda a, b: op(align_x(a), align_y(b))
    return build


for _type, _op in [(uc.Product, torch.mul), (uc.Division, torch.div), (uc.MinValue, torch.minimum),
                   (uc.MaxValue, torch.maximum), (uc.Atan2, torch.atan2), (uc.EQ, torch.eq),
                   (uc.NE, torch.ne), (uc.LT, torch.lt), (uc.GT, torch.gt), (uc.LE, torch.le),
                   (uc.GE, torch.ge), (uc.AndCondition, torch.logical_and),
                   (uc.OrCondition, torch.logical_or)]:
    compile_node.register(_type, _binary(_op))


@compile_node.register(uc.Power)
def _power(o):
    x, y = o.ufl_operands
    if isinstance(y, uc.IntValue) and not _free(x):
        exponent = int(y.value())      # keeps negative bases exact, as C's pow does
        return lambda a, b: a ** exponent
    return _binary(torch.pow)(o)


_UNARY = {uc.Abs: torch.abs, uc.NotCondition: torch.logical_not}
_MATH = {"sqrt": torch.sqrt, "exp": torch.exp, "ln": torch.log, "sin": torch.sin, "cos": torch.cos,
         "tan": torch.tan, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh,
         "asin": torch.asin, "acos": torch.acos, "atan": torch.atan, "erf": torch.erf}


@compile_node.register(uc.Abs)
@compile_node.register(uc.NotCondition)
def _unary(o):
    return _UNARY[type(o)]


@compile_node.register(uc.MathFunction)
def _math(o):
    try:
        return _MATH[o._name]
    except KeyError:
        raise UnsupportedUFLError(f"no torch translation for the UFL function {o._name}") from None


@compile_node.register(uc.Conditional)
def _conditional(o):
    cond, tv, fv = o.ufl_operands
    align_c = _aligner(_free(cond), _free(o))
    align_t, align_f = _aligner(_free(tv), _free(o)), _aligner(_free(fv), _free(o))
    expand = (slice(None),) * PREFIX + (None,) * len(o.ufl_shape) + (Ellipsis,)
    return lambda c, t, f: torch.where(align_c(c)[expand], align_t(t), align_f(f))


# -- index notation ----------------------------------------------------------------------
@compile_node.register(uc.Indexed)
def _indexed(o):
    operand, multi_index = o.ufl_operands
    key = [slice(None)] * PREFIX
    new = []
    for i in multi_index:
        if isinstance(i, uc.FixedIndex):
            key.append(int(i))
        else:
            key.append(slice(None))
            new.append(i.count())
    key = tuple(key) + (Ellipsis,)
    order = new + list(_free(operand))
    diagonals = []
    for i in sorted(set(new)):
        if order.count(i) == 2:           # A[i, i]: the diagonal, moved before the batch dim
            p, q = (k for k, j in enumerate(order) if j == i)
            diagonals.append((p - len(order) - 1, q - len(order) - 1))
            order = [j for j in order if j != i] + [i]
    permute = _permuter(order, _free(o))

    def indexed(a, _):
        t = a[key]
        for p, q in diagonals:
            t = torch.diagonal(t, 0, p, q).movedim(-1, -2)
        return permute(t)
    return indexed


@compile_node.register(uc.ComponentTensor)
def _component_tensor(o):
    operand, multi_index = o.ufl_operands
    permute = _permuter(_free(operand), [i.count() for i in multi_index] + list(_free(o)))
    return lambda a, _: permute(a)


@compile_node.register(uc.IndexSum)
def _index_sum(o):
    summand, (i,) = o.ufl_operands
    have = _free(summand)
    dim = have.index(i.count()) - len(have) - 1
    extent = dict(zip(have, summand.ufl_index_dimensions))[i.count()]
    if extent > 4:
        return lambda a, _: a.sum(dim=dim)

    # Unrolled, as TSFC does for short sums: torch's reduction over a short inner dimension is
    # an order of magnitude slower than adding its slices.
    def index_sum(a, _):
        total = a.select(dim, 0)
        for k in range(1, extent):
            total = total + a.select(dim, k)
        return total
    return index_sum


@compile_node.register(uc.ListTensor)
def _list_tensor(o):
    return lambda *ops: torch.stack(torch.broadcast_tensors(*ops), dim=PREFIX)


# -- real mode: complex nodes are the identity --------------------------------------------
@compile_node.register(uc.Conj)
@compile_node.register(uc.Real)
@compile_node.register(uc.Variable)
def _identity_op(o):
    return lambda a, *rest: a


def _is_leaf(o):
    """Leaves are the modified terminals other than literals, which compile_node handles."""
    if isinstance(o, (uc.ReferenceValue, uc.ReferenceGrad, uc.Restricted)):
        return True
    if isinstance(o, (uc.Constant, TSFCConstantMixin)):   # UFL's and Firedrake's constants
        return True
    return o._ufl_is_terminal_ and not isinstance(o, (uc.ConstantValue, uc.MultiIndex, uc.Label))


class Tape(torch.nn.Module):
    """Expressions compiled for repeated evaluation.

    Parameters
    ----------
    exprs : sequence of ufl.core.expr.Expr
        Preprocessed expressions, evaluated together (common subexpressions once).
    static_leaf : callable
        ``static_leaf(leaf) -> Tensor or None``: the value of a leaf known when the tape is built
        (geometry, fixed coefficients), or None for a leaf that changes from call to call.
    describe : str
        Where the expressions come from, for error messages.

    Calling the tape with the list of tensors for :attr:`dynamic_leaves` returns the list of the
    expressions' values. Static values that the call reads are buffers, so
    ``.to(device, dtype)`` moves them.
    """

    def __init__(self, exprs, static_leaf, describe):
        super().__init__()
        static, dynamic = {}, set()
        self.dynamic_leaves = []
        steps = []                                   # (node, function, operands)
        for node in _post_order(*exprs):
            if isinstance(node, (uc.MultiIndex, uc.Label)):
                continue
            if _is_leaf(node):
                value = static_leaf(node)
                if value is None:
                    dynamic.add(node)
                    self.dynamic_leaves.append(node)
                else:
                    static[node] = value
                continue
            operands = [op for op in node.ufl_operands if not isinstance(op, (uc.MultiIndex, uc.Label))]
            try:
                function = compile_node(node)
            except UnsupportedUFLError as e:
                raise UnsupportedUFLError(f"{e}\n  node: {_short(node)}\n  in {describe}") from None
            if any(op in dynamic for op in operands):
                dynamic.add(node)
                steps.append((node, function, operands))
            else:
                static[node] = function(*(static[op] for op in operands), *[None] * _n_literals(node))
        # Slots: the dynamic leaves, then the steps' results, then the static values read at call
        # time (kept as buffers).
        needed = [op for _, _, operands in steps for op in operands if op not in dynamic]
        needed = list(dict.fromkeys(needed + [e for e in exprs if e not in dynamic]))
        order = self.dynamic_leaves + [node for node, _, _ in steps] + needed
        slot = {node: k for k, node in enumerate(order)}
        self._buffers_from = len(order) - len(needed)
        self._buffer_names = []
        for k, node in enumerate(needed):
            self.register_buffer(f"static{k}", static[node], persistent=False)
            self._buffer_names.append(f"static{k}")
        self._steps = [(function, [slot[op] for op in operands], _n_literals(node), slot[node])
                       for node, function, operands in steps]
        self._outputs = [slot[e] for e in exprs]
        self._n_slots = len(order)

    def forward(self, leaves):
        values = list(leaves) + [None] * (self._n_slots - len(leaves))
        for k, name in enumerate(self._buffer_names):
            values[self._buffers_from + k] = getattr(self, name)
        for function, operands, n_literals, out in self._steps:
            values[out] = function(*(values[k] for k in operands), *[None] * n_literals)
        return [values[k] for k in self._outputs]


def _n_literals(node):
    """Trailing operands (multi-indices, labels) that functions receive as None."""
    return sum(isinstance(op, (uc.MultiIndex, uc.Label)) for op in node.ufl_operands)


def _post_order(*exprs):
    """Unique nodes of ``exprs`` in post order, without descending into leaves."""
    seen, order, stack = set(), [], [(e, False) for e in reversed(exprs)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif node not in seen:
            seen.add(node)
            stack.append((node, True))
            if not _is_leaf(node):
                stack.extend((op, False) for op in reversed(node.ufl_operands) if op not in seen)
    return order


def leaves(*exprs):
    """The distinct leaves (modified terminals other than literals) of ``exprs``."""
    return [node for node in _post_order(*exprs) if _is_leaf(node)]


def _short(node, n=200):
    s = str(node)
    return s if len(s) <= n else s[:n] + " ..."
