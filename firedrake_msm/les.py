r"""LES eddy-viscosity closures in UFL beside static Smagorinsky: WALE and the dynamic
Smagorinsky model.

Each closure is an eddy viscosity :math:`\nu_t`, a UFL expression of the resolved field, which
enters a residual as :math:`\int \nu_t \nabla u : \nabla v \,dx` on the observed component, as
:func:`~firedrake_msm.baselines.smagorinsky` adds the static model. They serve as coarse
baselines (:class:`~firedrake_msm.baselines.CoarseSolver` with ``closure="wale"`` or
``closure="dynamic"``) and in one's own Firedrake scripts::

    F = (inner(Dt(u), v) + inner(dot(grad(u), u), v)
         + (nu + wale_viscosity(u)) * inner(grad(u), grad(v))) * dx

    model = DynamicSmagorinsky(u)                    # u: the Function the stepper advances
    F = (... + (nu + model.viscosity) * inner(grad(u), grad(v))) * dx
    for step in range(steps):
        model.update()                               # C_s from the current state
        stepper.advance()
"""
import numpy as np
from firedrake import (Constant, Function, FunctionSpace, Identity, LinearVariationalProblem,
                       LinearVariationalSolver, TensorFunctionSpace, TestFunction, TrialFunction,
                       VectorFunctionSpace, as_matrix, as_vector, assemble, dot, dx, grad, inner, outer,
                       sym, tr)
from ufl.domain import extract_unique_domain

from firedrake_msm.baselines import EPSILON, smagorinsky_viscosity, strain_magnitude, with_eddy_viscosity
from firedrake_msm.transfer import cell_width, scalar_space

#: WALE's constant :math:`C_w`: 0.5, Nicoud & Ducros' (1999) value for decaying isotropic
#: turbulence. Their relation :math:`C_w^2 \approx 10.6\, C_s^2` (the two models dissipate alike
#: in isotropic turbulence) gives 0.55 for the package's :math:`C_s = 0.17`; the 0.325 of
#: OpenFOAM is the same relation at the channel-flow value :math:`C_s = 0.1`, for wall-resolved
#: flow, which none of the package's cases is.
C_W = 0.5

#: The test filter's solver. With :math:`\alpha` proportional to the cell size, the Helmholtz
#: matrix is as well conditioned as the mass matrix, whatever the resolution: Jacobi-preconditioned
#: CG converges in a few tens of iterations, serial or parallel, without a factorisation.
FILTER_SOLVER = {"ksp_type": "cg", "pc_type": "jacobi", "ksp_rtol": 1e-12, "ksp_atol": 0.0}


def velocity_gradient(u):
    r"""The velocity gradient :math:`g = \nabla u` as a :math:`d \times d` matrix: ``grad(u)``
    of a vector field, or :math:`[u_x]` of a scalar on an interval (a 1D velocity).

    Raises
    ------
    ValueError
        For a scalar field in more than one dimension, which has no velocity gradient.
    """
    if len(u.ufl_shape) == 1:
        return grad(u)
    if u.ufl_shape == () and grad(u).ufl_shape == (1,):
        return as_matrix([[u.dx(0)]])
    raise ValueError(f"WALE needs a velocity: a vector field, or a scalar on an interval, not a field of "
                     f"shape {u.ufl_shape} on a mesh of dimension {grad(u).ufl_shape[-1]}")


def wale_viscosity(u, C_w=C_W, delta=None):
    r"""The WALE eddy viscosity (wall-adapting local eddy viscosity, Nicoud & Ducros 1999) as a
    UFL expression,

    .. math:: \nu_t = (C_w\Delta)^2 \frac{(S^d : S^d)^{3/2}}{(S : S)^{5/2} + (S^d : S^d)^{5/4}},
       \qquad S^d = \tfrac12\left(g^2 + (g^2)^T\right) - \tfrac13 \operatorname{tr}(g^2)\, I,

    with :math:`g = \nabla u` (:func:`velocity_gradient`) and :math:`S = \mathrm{sym}(g)`.

    Parameters
    ----------
    u : ufl.core.expr.Expr
        A velocity: a vector field, or a scalar on an interval (a Function, or a component
        ``split(state)[i]``).
    C_w : float or firedrake.Constant
        The constant (default :data:`C_W`).
    delta : ufl.core.expr.Expr, optional
        The length :math:`\Delta`; default :func:`~firedrake_msm.transfer.cell_width` of ``u``'s mesh.

    Notes
    -----
    :math:`S^d` is the traceless symmetric part of :math:`g^2`. It vanishes in pure shear
    (:math:`g^2 = 0`), so :math:`\nu_t` does too, and it falls off as the cube of the distance to
    a wall without a damping function, where Smagorinsky's :math:`(C_s\Delta)^2 |S|` stays at
    the shear rate. Unlike Smagorinsky, WALE sees rotation: in a rigid rotation
    :math:`u = \omega(-y, x)`, :math:`S = 0` but :math:`S^d : S^d = \tfrac23\omega^4`, so
    :math:`\nu_t = (C_w\Delta)^2 (2/3)^{1/4} |\omega|`.

    On an interval or a planar mesh the flow is taken as a three-dimensional one that does not
    vary along the missing directions: :math:`g` is padded with zeros to :math:`3 \times 3`, so the
    trace keeps its :math:`\tfrac13` and :math:`S^d` has entries :math:`-\tfrac13\operatorname{tr}(g^2)`
    in those directions. With :math:`\tfrac1d` instead, Cayley-Hamilton gives
    :math:`S^d = (\nabla\cdot u)\,\mathrm{dev}\,S` in 2D: zero for every incompressible flow. On an
    interval, WALE is Smagorinsky's :math:`|u_x|` times :math:`C_w^2 (2/3)^{3/2} / (1 + (2/3)^{5/4})`.

    The denominator is shifted by :data:`~firedrake_msm.baselines.EPSILON`:math:`^5`, as
    :func:`~firedrake_msm.baselines.strain_magnitude` shifts :math:`|S|`: where the velocity
    gradient vanishes, :math:`\nu_t` and Newton's Jacobian would be :math:`0/0`. The numerator
    is of degree 6 in :math:`g`, the denominator of degree 5, so the shift changes :math:`\nu_t`
    only where :math:`|g|` is within a few orders of magnitude of ``EPSILON``.
    """
    g = velocity_gradient(u)
    d = g.ufl_shape[0]
    g2 = dot(g, g)
    third = tr(g2) / 3
    S_d = sym(g2) - third * Identity(d)
    SdSd = inner(S_d, S_d) + (3 - d) * third**2          # the padded directions' diagonal
    S = sym(g)
    if delta is None:
        delta = cell_width(extract_unique_domain(u))
    return (C_w * delta) ** 2 * SdSd**1.5 / (inner(S, S) ** 2.5 + SdSd**1.25 + EPSILON**5)


def wale(problem, u, v, C_w=C_W, *, delta=None):
    r"""The problem's residual plus the WALE term,

    .. math:: F(u; v) + \int \nu_t\, \nabla u : \nabla v \,dx,

    :math:`\nu_t` from :func:`wale_viscosity`, on the observed component of a mixed state, like
    :func:`~firedrake_msm.baselines.smagorinsky`: it only removes energy, and conserves mass.

    Parameters
    ----------
    problem : Problem
    u : firedrake.Function
        The state (the Function Irksome advances).
    v : ufl.Argument
        The test function.
    C_w : float or firedrake.Constant
    delta : ufl.core.expr.Expr, optional
        See :func:`wale_viscosity`.
    """
    return with_eddy_viscosity(problem, u, v, lambda u_o: wale_viscosity(u_o, C_w, delta))


class HelmholtzFilter:
    r"""The Helmholtz filter :math:`f \mapsto \hat f` of a UFL expression, on a Lagrange space
    :math:`Q` of the expression's shape,

    .. math:: (\hat f, v) + \alpha^2 (\nabla \hat f, \nabla v) = (f, v) \qquad \forall v \in Q,

    the filter of :class:`~firedrake_msm.transfer.Transfer`'s restriction, from a space to itself.
    Its transfer function :math:`1/(1 + \alpha^2 k^2)` has the second moment of a Gaussian or
    box filter of width :math:`\sqrt{24}\,\alpha`. The boundary condition is the natural one: a
    constant passes unchanged everywhere, boundaries included.

    Parameters
    ----------
    expression : ufl.core.expr.Expr
        What to filter; each :meth:`apply` reads the current values of the Functions in it.
    space : firedrake.FunctionSpace
        :math:`Q`.
    width : float or ufl.core.expr.Expr
        :math:`\alpha`, a number or an expression on the mesh (following the local cell size, say).
    solver_parameters : dict, optional
        PETSc options (default :data:`FILTER_SOLVER`).

    Attributes
    ----------
    field : firedrake.Function
        :math:`\hat f`, as of the last :meth:`apply`.
    """

    def __init__(self, expression, space, width, solver_parameters=None):
        self.field = Function(space)
        f, v = TrialFunction(space), TestFunction(space)
        a = (inner(f, v) + width**2 * inner(grad(f), grad(v))) * dx
        problem = LinearVariationalProblem(a, inner(expression, v) * dx, self.field, constant_jacobian=True)
        self._solver = LinearVariationalSolver(
            problem, solver_parameters=FILTER_SOLVER if solver_parameters is None else solver_parameters)

    def apply(self):
        """Filter the expression's current value into :attr:`field` (and return it)."""
        self._solver.solve()
        return self.field


def advective_flux(u):
    r"""The quadratic flux whose sub-filter part :class:`DynamicSmagorinsky` closes by default:
    :math:`u \otimes u` for a vector field (the momentum flux of incompressible flow), and
    Burgers' :math:`\tfrac12 u^2 (1, \dots, 1)` for a scalar (:math:`u\, u_x` of KdV,
    :math:`u(u_x + u_y)` of 2D Burgers)."""
    if len(u.ufl_shape) == 1:
        return outer(u, u)
    (d,) = grad(u).ufl_shape
    return u**2 / 2 * as_vector([1] * d)


class DynamicSmagorinsky:
    r"""The dynamic Smagorinsky model (Germano et al. 1991, with Lilly's 1992 least squares):
    :math:`\nu_t = (C_s\Delta)^2 |S(u)|` (:func:`~firedrake_msm.baselines.smagorinsky_viscosity`)
    with :math:`C_s` computed from the resolved field itself.

    The model's sub-filter stress is :math:`\tau = -2 C \Delta^2 |S| S`, :math:`C = C_s^2`. At
    the level of a test filter :math:`\hat{\cdot}` of width :math:`r\Delta` the same model holds
    with :math:`r\Delta` and the filtered field; their difference is computable from the
    resolved field alone (Germano's identity),

    .. math:: L = \widehat{f(u)} - f(\hat u) = C M,
       \qquad M = 2\Delta^2 \left(\widehat{|S| S} - r^2 |\hat S| \hat S\right),

    with :math:`f(u) = u \otimes u`, so :math:`L_{ij} = \widehat{u_i u_j} - \hat u_i \hat u_j`.
    :math:`C` is its least-squares solution over the domain, clipped at zero,

    .. math:: C = \max\left(0, \frac{\int_\Omega L : M \,dx}{\int_\Omega M : M \,dx}\right),

    one constant for the whole domain (every direction taken as homogeneous: the package's
    cases are small boxes), without negative viscosity (backscatter, :math:`C < 0`, would make
    the model anti-dissipative). The full tensors are contracted: for a divergence-free field
    :math:`M` is traceless, so only :math:`L`'s deviatoric part counts, as in Lilly's; for a
    compressible one the closure acts on the trace too.

    For a scalar field (1D cases, scalar 2D Burgers) the analogue of the closure
    :math:`\int \nu_t \nabla u \cdot \nabla v` is the flux :math:`-C\Delta^2 |\nabla u| \nabla u`,
    so :math:`M = \Delta^2 (\widehat{|\nabla u|\nabla u} - r^2 |\nabla\hat u| \nabla\hat u)`,
    and :math:`f` is :func:`advective_flux`.

    The test filter is :class:`HelmholtzFilter` on ``u``'s own space and on Lagrange spaces of
    its element for the products, :math:`\alpha = r\Delta/\sqrt{24}`: the second moment of a
    Gaussian filter :math:`r` cells wide, as :attr:`ModelConfig.filter_width
    <firedrake_msm.model.ModelConfig>` takes for the restriction. As in Germano et al., the grid
    and test-level widths are :math:`\Delta` and :math:`r\Delta`, :math:`r = 2`.

    Parameters
    ----------
    u : firedrake.Function
        The resolved field: a scalar or vector Function, or a component ``state.subfunctions[i]``
        of a mixed state (it shares the state's values).
    ratio : float
        :math:`r`, the test filter's width over the grid's.
    delta : ufl.core.expr.Expr, optional
        :math:`\Delta`; default :func:`~firedrake_msm.transfer.cell_width`.
    flux : callable, optional
        :math:`f`, ``flux(u)`` in UFL, the nonlinear flux whose sub-filter part is modelled
        (default :func:`advective_flux`); its shape must match :math:`M`'s, :math:`(d, d)` for a
        vector field and :math:`(d,)` for a scalar.
    solver_parameters : dict, optional
        For the test filter (default :data:`FILTER_SOLVER`).

    Attributes
    ----------
    C_s : firedrake.Constant
        :math:`\sqrt{C}`, as of the last :meth:`update` (zero before the first).
    viscosity : ufl.core.expr.Expr
        :math:`\nu_t = (C_s\Delta)^2 |S(u)|`, to use in a form.

    Notes
    -----
    :math:`C` depends on the state: call :meth:`update` whenever the state has changed enough.
    :class:`~firedrake_msm.baselines.CoarseSolver` calls it before every time step, so the
    coefficient is that of the step's initial state and is held fixed through the implicit
    stages (Newton's Jacobian is that of Smagorinsky with a fixed constant).
    """

    def __init__(self, u, *, ratio=2.0, delta=None, flux=None, solver_parameters=None):
        V = u.function_space().collapse()
        mesh, element = V.mesh(), scalar_space(V).ufl_element()
        self.delta = cell_width(mesh) if delta is None else delta
        flux = advective_flux if flux is None else flux
        vector = len(u.ufl_shape) == 1

        def strain(w):
            return sym(grad(w)) if vector else grad(w)

        width = ratio * self.delta / np.sqrt(24)
        self._filters = [HelmholtzFilter(f, _lagrange(mesh, element, f.ufl_shape), width, solver_parameters)
                         for f in (u, flux(u), strain_magnitude(u) * strain(u))]
        u_hat, flux_hat, stress_hat = (f.field for f in self._filters)
        L = flux_hat - flux(u_hat)
        M = (2 if vector else 1) * self.delta**2 * (
            stress_hat - ratio**2 * strain_magnitude(u_hat) * strain(u_hat))
        self._LM, self._MM = inner(L, M) * dx, inner(M, M) * dx
        self.C_s = Constant(0.0)
        self.viscosity = smagorinsky_viscosity(u, self.C_s, self.delta)

    def update(self):
        r"""Recompute :attr:`C_s` from the current value of ``u``.

        Returns
        -------
        float
            Lilly's :math:`C = \int L:M / \int M:M` before clipping (0 where :math:`M` vanishes:
            a constant state); negative where the field returns energy to the resolved scales.
        """
        for f in self._filters:
            f.apply()
        MM = assemble(self._MM)
        C = assemble(self._LM) / MM if MM > 0 else 0.0
        self.C_s.assign(np.sqrt(max(C, 0.0)))
        return C


def _lagrange(mesh, element, shape):
    """The space of ``element`` (scalar) on ``mesh`` with values of ``shape``."""
    if shape == ():
        return FunctionSpace(mesh, element)
    if len(shape) == 1:
        return VectorFunctionSpace(mesh, element, dim=shape[0])
    return TensorFunctionSpace(mesh, element, shape=shape)
