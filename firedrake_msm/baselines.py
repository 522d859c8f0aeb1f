r"""Baselines on the coarse mesh: the under-resolved DNS and LES.

All run the problem's own UFL residual on the coarse space :math:`V_H` with Firedrake and
Irksome (the same stepper as the fine DNS, :func:`firedrake_msm.stepping.time_stepper`), from a coarse
initial observed field such as the restriction :math:`R y_0` of a fine snapshot:

- under-resolved DNS: :math:`(\partial_t u_H, v) + F(u_H; v) = 0`, no closure;
- LES: :math:`(\partial_t u_H, v) + F(u_H; v) + (\nu_t \nabla u_H, \nabla v) = 0`, with
  Smagorinsky's :math:`\nu_t = (C_s\Delta)^2 |S(u_H)|` (here), or WALE's or the dynamic
  Smagorinsky model's (:mod:`firedrake_msm.les`).
"""
import time
from typing import NamedTuple

import numpy as np
import ufl
from firedrake import (Constant, Function, NonlinearVariationalProblem,
                       NonlinearVariationalSolver, TestFunction, TrialFunction, as_vector, assemble,
                       derivative, dx, grad, inner, split, sqrt, sym)
from firedrake.mesh import MeshGeometry
from ufl.algorithms import expand_derivatives
from ufl.domain import extract_unique_domain

from firedrake_msm.stepping import Gather, direct_solver, time_stepper
from firedrake_msm.transfer import cell_width

# |S| is sqrt(2 S:S + EPSILON**2): Newton's Jacobian contains S/|S|, 0/0 wherever the strain
# vanishes exactly (a corner cell held at zero by Dirichlet data, a constant state). The
# shift changes nu_t by at most (C_s Delta)**2 * EPSILON.
EPSILON = 1e-15


def strain_magnitude(u):
    r"""UFL :math:`|S(u)| = \sqrt{2 S:S}`, :math:`S = \mathrm{sym}(\nabla u)`, for a vector
    field; :math:`|\nabla u|` for a scalar (regularised by :data:`EPSILON`)."""
    if u.ufl_shape == ():
        return sqrt(inner(grad(u), grad(u)) + EPSILON**2)
    if len(u.ufl_shape) == 1:
        S = sym(grad(u))
        return sqrt(2 * inner(S, S) + EPSILON**2)
    raise ValueError(f"Smagorinsky needs a scalar or vector field, not one of shape {u.ufl_shape}")


def smagorinsky_viscosity(u, C_s, delta=None):
    r"""The eddy viscosity :math:`\nu_t = (C_s\Delta)^2 |S(u)|` as a UFL expression.

    Parameters
    ----------
    u : ufl.core.expr.Expr
        A scalar or vector field (a Function, or a component ``split(state)[i]``).
    C_s : float or firedrake.Constant
        The Smagorinsky constant (0.1 to 0.2 is usual).
    delta : ufl.core.expr.Expr, optional
        The length :math:`\Delta`; default :func:`~firedrake_msm.transfer.cell_width` of ``u``'s mesh.

    Notes
    -----
    For a vector field :math:`|S| = \sqrt{2 S:S}`, :math:`S = \mathrm{sym}(\nabla u)`; for a
    scalar (1D cases, scalar 2D Burgers) the analogue :math:`|\nabla u|`.
    """
    if delta is None:
        delta = cell_width(extract_unique_domain(u))
    return (C_s * delta) ** 2 * strain_magnitude(u)


def observed_index(problem, state):
    """Which component of a mixed ``state`` the problem observes (None: the whole state)."""
    if len(state.function_space()) == 1:
        return None
    observed = problem.observed(state)
    return None if observed is state else observed.function_space().index


def smagorinsky(problem, u, v, C_s=0.17, *, delta=None, stress=False):
    r"""The problem's residual plus the Smagorinsky term,

    .. math:: F(u; v) + \int \nu_t\, \nabla u : \nabla v \,dx,
       \qquad \nu_t = (C_s\Delta)^2 |S(u)|,

    on the observed component of a mixed state (``split(state)[i]``: the velocity, not the
    pressure; KdV's :math:`u`, not :math:`w = u_{xx}`). Testing with :math:`v = u` gives
    :math:`\int \nu_t |\nabla u|^2 \ge 0`: the term only removes energy, and with
    :math:`v = 1` it vanishes, so mass is conserved.

    Parameters
    ----------
    problem : Problem
    u : firedrake.Function
        The state (the Function Irksome advances).
    v : ufl.Argument
        The test function.
    C_s : float or firedrake.Constant
    delta : ufl.core.expr.Expr, optional
        See :func:`smagorinsky_viscosity`.
    stress : bool
        Use the stress form :math:`\int 2\nu_t S(u) : \nabla v` instead. The default adds
        :math:`\nu_t` to the viscosity as the problems write it, :math:`\nu(\nabla u, \nabla v)`;
        the two differ by :math:`\nabla\nu_t \cdot (\nabla u)^T` for a divergence-free field.
    """
    return with_eddy_viscosity(problem, u, v, lambda u_o: smagorinsky_viscosity(u_o, C_s, delta),
                               stress=stress)


def with_eddy_viscosity(problem, u, v, viscosity, *, stress=False):
    r"""The problem's residual plus an eddy-viscosity term on the observed component of ``u``,
    :math:`F(u; v) + \int \nu_t(u_o)\, \nabla u_o : \nabla v_o \,dx` (with ``stress``,
    :math:`2 S(u_o)` in place of :math:`\nabla u_o`), for any ``viscosity(u_o)`` giving
    :math:`\nu_t` as a UFL expression: the one form every LES closure adds."""
    i = observed_index(problem, u)
    u_o, v_o = (u, v) if i is None else (split(u)[i], split(v)[i])
    flux = 2 * sym(grad(u_o)) if stress and u_o.ufl_shape != () else grad(u_o)
    return problem.residual(u, v) + viscosity(u_o) * inner(flux, grad(v_o)) * dx


class CoarseForecast(NamedTuple):
    """What :meth:`CoarseSolver.forecast` returns."""
    states: np.ndarray              # (n_times, N_H) observed states (None off rank 0)
    seconds_per_unit_time: float    # wall-clock seconds per simulated time unit


class CoarseSolver:
    r"""The coarse problem on :math:`V_H`, with or without a closure, time-stepped by Irksome
    with the problem's Runge-Kutta scheme and stage type. Build once, then call
    :meth:`forecast` for each initial condition (the forms are compiled once).

    Parameters
    ----------
    problem : Problem
    space : firedrake.FunctionSpace or firedrake.MeshGeometry
        The coarse (possibly mixed) state space, or the coarse mesh (then
        ``problem.function_space(mesh)``).
    closure : None, "none", "smagorinsky", "wale", "dynamic" or callable
        No closure; :func:`smagorinsky`; :func:`~firedrake_msm.les.wale`; Smagorinsky with the
        constant of a :class:`~firedrake_msm.les.DynamicSmagorinsky` model (the attribute
        ``dynamic``, with its default flux :func:`~firedrake_msm.les.advective_flux`), updated
        from the state before every time step; or ``closure(u, v)`` returning the full residual.
    C_s : float, optional
        The closure's constant: Smagorinsky's :math:`C_s` (default 0.17) or WALE's :math:`C_w`
        (default :data:`~firedrake_msm.les.C_W`); the dynamic model computes its own.
    dt : float, optional
        The largest time step (default ``problem.dt``).
    solver_parameters : dict, optional
        PETSc options (default :func:`firedrake_msm.stepping.direct_solver`).
    """

    def __init__(self, problem, space, *, closure=None, C_s=None, dt=None, solver_parameters=None):
        from firedrake_msm import les      # here, not at the top: les builds on this module

        V = problem.function_space(space) if isinstance(space, MeshGeometry) else space
        self.problem, self.dt = problem, problem.dt if dt is None else dt
        self.state = Function(V)
        self.dynamic = None
        if closure in (None, "none"):
            residual = None
        elif closure == "smagorinsky":
            self.C_s = Constant(0.17 if C_s is None else C_s)

            def residual(u, v):
                return smagorinsky(problem, u, v, self.C_s)
        elif closure == "wale":
            self.C_s = Constant(les.C_W if C_s is None else C_s)

            def residual(u, v):
                return les.wale(problem, u, v, self.C_s)
        elif closure == "dynamic":
            self.dynamic = les.DynamicSmagorinsky(problem.observed(self.state))
            self.C_s = self.dynamic.C_s

            def residual(u, v):
                return smagorinsky(problem, u, v, self.C_s)
        elif callable(closure):
            residual = closure
        else:
            raise ValueError(f"unknown closure {closure!r}: None, 'smagorinsky', 'wale', 'dynamic' or a "
                             "callable")
        self.t, self.dt_c = Constant(0.0), Constant(self.dt)
        self.stepper = time_stepper(problem, self.state, self.t, self.dt_c, residual=residual,
                                    solver_parameters=solver_parameters)
        self.index = observed_index(problem, self.state)
        self.observed = problem.observed(self.state)
        self.observed_space = self.observed.function_space().collapse()
        self._gather = Gather(Function(self.observed_space))
        self._constraints = None

    def set_initial_state(self, u0):
        r"""Set the state from the observed field ``u0`` and make the rest of a mixed state
        consistent with it.

        The observed component is ``u0`` exactly. The other components :math:`z` solve the
        equations that carry no time derivative (the rows of the test components other than
        the observed one), :math:`F(u_0, z; (0, \phi)) = 0` for all :math:`\phi`: KdV's
        :math:`(w, \phi) + (u_x, \phi_x) = 0`, as in :meth:`KdV.set_initial_state`. When those
        equations do not involve :math:`z` (incompressible flow: :math:`(q, \nabla\cdot u) = 0`
        holds no pressure, an index-2 constraint), :math:`z` is left at zero: the stiffly
        accurate value-stage schemes such problems use never read the initial pressure, and
        their first stage makes the velocity discretely divergence free.

        Parameters
        ----------
        u0 : firedrake.Function or array_like
            A Function on the observed space, or its dof vector ``(N_H,)`` in that space's dof
            order (serial; torch tensors too).
        """
        values = u0.dat.data_ro if isinstance(u0, Function) else np.asarray(u0, dtype=float)
        target = self.state if self.index is None else self.state.subfunctions[self.index]
        if len(self.state.function_space()) > 1:
            self.state.assign(0)
        target.dat.data[:] = np.reshape(values, target.dat.data_ro.shape)
        if self.index is None:
            return
        if self._constraints is None:
            self._constraints = self._constraint_solver()
        if self._constraints is not False:
            self._observed_value.dat.data[:] = target.dat.data_ro
            self._constraints.solve()
            target.dat.data[:] = self._observed_value.dat.data_ro     # u0 exactly, not to solver tolerance

    def _constraint_solver(self):
        """A solver for the algebraic components given the observed one (False: none needed)."""
        W, i = self.state.function_space(), self.index
        test, trial = TestFunction(W), TrialFunction(W)
        offsets = np.cumsum([0] + [W_j.value_size for W_j in W])

        def without_observed(argument):
            return as_vector([0 if offsets[i] <= c < offsets[i + 1] else argument[c]
                              for c in range(offsets[-1])])

        algebraic = ufl.replace(self.problem.residual(self.state, test), {test: without_observed(test)})
        # Whether the algebraic rows hold the algebraic unknowns at all: UFL need not simplify
        # a term tested with zero away, so look at the assembled Jacobian block.
        jacobian = expand_derivatives(derivative(algebraic, self.state, without_observed(trial)))
        if jacobian.empty() or assemble(jacobian).petscmat.norm() == 0:
            return False
        self._observed_value = Function(self.observed_space)
        F = inner(split(self.state)[i] - self._observed_value, split(test)[i]) * dx + algebraic
        problem = NonlinearVariationalProblem(F, self.state)
        return NonlinearVariationalSolver(problem, solver_parameters=direct_solver(self.problem, W.comm))

    def forecast(self, u0, times):
        """Integrate from ``u0`` at ``times[0]`` and return the observed states at ``times``.

        Between consecutive output times the solver takes the fewest equal steps no longer than
        ``dt``.

        Parameters
        ----------
        u0 : firedrake.Function or array_like
            The initial observed field (see :meth:`set_initial_state`).
        times : array_like
            ``(n_times,)`` increasing output times; the first is the initial time.

        Returns
        -------
        CoarseForecast
            ``states``: ``(n_times, N_H)``, the observed field in the dof order of
            :attr:`observed_space` (PETSc's global order; None off rank 0), ``states[0]`` being
            ``u0``; ``seconds_per_unit_time``: wall-clock seconds of stepping per simulated time
            unit, without the first step, which also compiles the forms (with it, when there
            is only one step).
        """
        times = np.asarray(times, dtype=float)
        if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) <= 0):
            raise ValueError("times must be a non-empty increasing 1D sequence")
        self.set_initial_state(u0)
        states = [self._gather(self.observed)]
        self.t.assign(times[0])
        start, started_at, steps = time.perf_counter(), times[0], 0
        for k in range(1, len(times)):
            interval = times[k] - times[k - 1]
            n = max(1, int(np.ceil(interval / self.dt - 1e-9)))
            self.dt_c.assign(interval / n)
            for j in range(n):
                if self.dynamic is not None:
                    self.dynamic.update()
                self.stepper.advance()
                self.t.assign(times[k - 1] + (j + 1) * interval / n)
                steps += 1
                if steps == 1 and (n > 1 or k + 1 < len(times)):    # not the only step
                    start, started_at = time.perf_counter(), float(self.t)
            states.append(self._gather(self.observed))
        elapsed = time.perf_counter() - start
        rate = elapsed / (times[-1] - started_at) if steps else 0.0
        return CoarseForecast(None if states[0] is None else np.stack(states), rate)


def coarse_forecast(problem, space, u0, times, closure=None, C_s=None, dt=None, solver_parameters=None):
    """One coarse run: ``CoarseSolver(problem, space, ...).forecast(u0, times)``.

    Returns
    -------
    CoarseForecast
        ``(states (n_times, N_H), seconds_per_unit_time)``.
    """
    return CoarseSolver(problem, space, closure=closure, C_s=C_s, dt=dt,
                        solver_parameters=solver_parameters).forecast(u0, times)
