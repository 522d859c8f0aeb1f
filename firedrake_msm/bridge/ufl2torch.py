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

The expression DAG is translated once into a :class:`Tape`: nodes that depend only on static
leaves (geometry, fixed coefficients) are evaluated when the tape is built, the others become a
list of steps replayed at each call.
"""
from functools import singledispatch

import torch
import ufl.classes as uc
from tsfc.ufl_utils import TSFCConstantMixin

PREFIX = 2


class UnsupportedUFLError(NotImplementedError):
    """A UFL node outside the subset that the bridge translates."""


def _align(t, have, want):
    """View ``t``, whose trailing dims are the free indices ``have``, with singleton dims
    inserted for the indices of ``want`` (a sorted superset) that it lacks."""
    if have == want:
        return t
    first = t.dim() - 1 - len(have)
    sizes = dict(zip(have, t.shape[first:-1]))
    return t.reshape(*t.shape[:first], *(sizes.get(i, 1) for i in want), t.shape[-1])


def _permute_free(t, have, want):
    """Reorder the free-index dims of ``t`` (before the batch) from the order ``have`` to ``want``."""
    if tuple(have) == tuple(want):
        return t
    if sorted(have) != sorted(want):
        raise UnsupportedUFLError(f"repeated or unmatched indices {have} -> {want}")
    first = t.dim() - 1 - len(have)
    return t.permute(*range(first), *(first + list(have).index(i) for i in want), t.dim() - 1)


def _free(o):
    return tuple(o.ufl_free_indices)


@singledispatch
def translate(o, *ops):
    """Torch value of the UFL node ``o`` from the values of its operands."""
    raise UnsupportedUFLError(f"no torch translation for UFL node {type(o).__name__}")


# -- literals ----------------------------------------------------------------------------
@translate.register(uc.Zero)
def _zero(o):
    return torch.zeros((1,) * PREFIX + o.ufl_shape + tuple(o.ufl_index_dimensions) + (1,), dtype=torch.float64)


@translate.register(uc.ScalarValue)
def _scalar(o):
    return torch.tensor(float(o.value()), dtype=torch.float64).reshape((1,) * (PREFIX + 1))


@translate.register(uc.Identity)
def _identity(o):
    n, = set(o.ufl_shape)
    return torch.eye(n, dtype=torch.float64).reshape((1,) * PREFIX + (n, n, 1))


@translate.register(uc.MultiIndex)
def _multi_index(o):
    return o


# -- algebra -----------------------------------------------------------------------------
@translate.register(uc.Sum)
def _sum(o, a, b):
    return a + b


def _binary(op):
    def apply(o, a, b):
        x, y = o.ufl_operands
        return op(_align(a, _free(x), _free(o)), _align(b, _free(y), _free(o)))
    return apply


translate.register(uc.Product, _binary(torch.mul))
translate.register(uc.Division, _binary(torch.div))
translate.register(uc.MinValue, _binary(torch.minimum))
translate.register(uc.MaxValue, _binary(torch.maximum))


@translate.register(uc.Power)
def _power(o, a, b):
    x, y = o.ufl_operands
    if isinstance(y, uc.IntValue):
        return a ** int(y.value())  # keeps negative bases exact, as C's pow does
    return torch.pow(_align(a, _free(x), _free(o)), _align(b, _free(y), _free(o)))


@translate.register(uc.Abs)
def _abs(o, a):
    return torch.abs(a)


_MATH = {"sqrt": torch.sqrt, "exp": torch.exp, "ln": torch.log, "sin": torch.sin, "cos": torch.cos,
         "tan": torch.tan, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh,
         "asin": torch.asin, "acos": torch.acos, "atan": torch.atan, "erf": torch.erf}


@translate.register(uc.MathFunction)
def _math(o, a):
    try:
        return _MATH[o._name](a)
    except KeyError:
        raise UnsupportedUFLError(f"no torch translation for the UFL function {o._name}") from None


translate.register(uc.Atan2, _binary(torch.atan2))


# -- conditions --------------------------------------------------------------------------
translate.register(uc.EQ, _binary(torch.eq))
translate.register(uc.NE, _binary(torch.ne))
translate.register(uc.LT, _binary(torch.lt))
translate.register(uc.GT, _binary(torch.gt))
translate.register(uc.LE, _binary(torch.le))
translate.register(uc.GE, _binary(torch.ge))
translate.register(uc.AndCondition, _binary(torch.logical_and))
translate.register(uc.OrCondition, _binary(torch.logical_or))


@translate.register(uc.NotCondition)
def _not(o, a):
    return torch.logical_not(a)


@translate.register(uc.Conditional)
def _conditional(o, c, t, f):
    cond, tv, fv = o.ufl_operands
    want = _free(o)
    c = _align(c, _free(cond), want)
    for _ in o.ufl_shape:
        c = c.unsqueeze(PREFIX)
    return torch.where(c, _align(t, _free(tv), want), _align(f, _free(fv), want))


# -- index notation ----------------------------------------------------------------------
@translate.register(uc.Indexed)
def _indexed(o, a, multi_index):
    operand = o.ufl_operands[0]
    key = [slice(None)] * PREFIX
    new = []
    for i in multi_index:
        if isinstance(i, uc.FixedIndex):
            key.append(int(i))
        else:
            key.append(slice(None))
            new.append(i.count())
    t, order = a[tuple(key)], new + list(_free(operand))
    base = t.dim() - 1 - len(order)
    for i in set(new):
        if order.count(i) == 2:           # A[i, i]: the diagonal, moved before the batch dim
            p, q = (k for k, j in enumerate(order) if j == i)
            t = torch.diagonal(t, 0, base + p, base + q).movedim(-1, -2)
            order = [j for j in order if j != i] + [i]
    return _permute_free(t, order, _free(o))


@translate.register(uc.ComponentTensor)
def _component_tensor(o, a, multi_index):
    counts = [i.count() for i in multi_index]
    return _permute_free(a, _free(o.ufl_operands[0]), counts + list(_free(o)))


@translate.register(uc.IndexSum)
def _index_sum(o, a, multi_index):
    summand = o.ufl_operands[0]
    (i,) = multi_index
    have = _free(summand)
    dim = a.dim() - 1 - len(have) + have.index(i.count())
    if a.shape[dim] > 4:
        return a.sum(dim=dim)
    # Unrolled, as TSFC does for short sums: torch's reduction over a short inner dimension is
    # an order of magnitude slower than adding its slices.
    total = a.select(dim, 0)
    for k in range(1, a.shape[dim]):
        total = total + a.select(dim, k)
    return total


@translate.register(uc.ListTensor)
def _list_tensor(o, *ops):
    return torch.stack(torch.broadcast_tensors(*ops), dim=PREFIX)


# -- real mode: complex nodes are the identity --------------------------------------------
@translate.register(uc.Conj)
@translate.register(uc.Real)
@translate.register(uc.Variable)
def _identity_op(o, a, *rest):
    return a


@translate.register(uc.Label)
def _label(o):
    return None


def _is_leaf(o):
    """Leaves are the modified terminals other than literals, which translate() handles."""
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

    Calling the tape with ``{leaf: tensor}`` for every leaf in :attr:`dynamic_leaves` returns the
    list of the expressions' values. Static values that the call reads are buffers, so
    ``.to(device, dtype)`` moves them.
    """

    def __init__(self, exprs, static_leaf, describe):
        super().__init__()
        self.dynamic_leaves = []
        self._steps = []
        static, dynamic = {}, set()
        for node in _post_order(*exprs):
            if _is_leaf(node):
                value = static_leaf(node)
                if value is None:
                    dynamic.add(node)
                    self.dynamic_leaves.append(node)
                else:
                    static[node] = value
            elif any(op in dynamic for op in node.ufl_operands):
                if translate.dispatch(type(node)) is translate.dispatch(object):
                    raise UnsupportedUFLError(f"no torch translation for UFL node {type(node).__name__}"
                                              f"\n  node: {_short(node)}\n  in {describe}")
                dynamic.add(node)
                self._steps.append(node)
            else:
                static[node] = self._translate(node, [static[op] for op in node.ufl_operands], describe)
        needed = {op for node in self._steps for op in node.ufl_operands if op not in dynamic}
        needed.update(e for e in exprs if e not in dynamic)
        self._static_tensors = {}   # node -> buffer name
        self._static_other = {}     # node -> multi-index or other non-tensor operand
        for k, node in enumerate(needed):
            if torch.is_tensor(static[node]):
                self.register_buffer(f"static{k}", static[node], persistent=False)
                self._static_tensors[node] = f"static{k}"
            else:
                self._static_other[node] = static[node]
        self.outputs = list(exprs)

    @staticmethod
    def _translate(node, operands, describe):
        try:
            return translate(node, *operands)
        except UnsupportedUFLError as e:
            raise UnsupportedUFLError(f"{e}\n  node: {_short(node)}\n  in {describe}") from None

    def forward(self, leaves):
        values = dict(self._static_other)
        values.update((node, getattr(self, name)) for node, name in self._static_tensors.items())
        values.update(leaves)
        for node in self._steps:
            values[node] = translate(node, *(values[op] for op in node.ufl_operands))
        return [values[e] for e in self.outputs]


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
