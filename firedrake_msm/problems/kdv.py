"""The Korteweg-de Vries equation on a periodic interval, in mixed form."""
from firedrake import (COMM_WORLD, FunctionSpace, PeriodicIntervalMesh, SpatialCoordinate, TestFunctions,
                       TrialFunctions, cos, dx, exp, inner, pi, solve, split)
from irksome import Dt

from firedrake_msm.problems.base import Problem


class KdV(Problem):
    r""":math:`u_t = -u u_x - \delta u_{xxx}` on :math:`[0, 10)` periodic, :math:`\delta = 0.02`.

    The third derivative is written with :math:`w = u_{xx}` (P1 for both), a stable conforming
    mixed form:

    .. math:: (u_t, v) + (u u_x, v) + \delta (w_x, v) + (w, \phi) + (u_x, \phi_x) = 0,

    which conserves :math:`\int u` exactly. Initial condition
    :math:`2(1 + 0.05e)\cos(\pi x)\,e^{-(x - 7.5)^2/s^2}`, :math:`s = 1 + 0.1e`, :math:`e \sim N(0,1)`.
    Only :math:`u` is observed.
    """
    name = "kdv"
    delta = 0.02
    length = 10.0
    parameter_names = ("e",)
    fine, coarse = 1000, 20
    trajectories = 20      # 10 train, 5 validation, 5 test
    prognostic = (0,)      # w is algebraic
    lu = "petsc"           # no saddle point
    # Ten output intervals a step: the learned model's test error is the same as at the output
    # interval (to the ensemble's sampling), at a tenth of the drift evaluations.
    forecast_dt = 0.01

    def mesh(self, resolution, comm=COMM_WORLD):
        return PeriodicIntervalMesh(resolution, self.length, comm=comm)

    def function_space(self, mesh):
        V = FunctionSpace(mesh, "CG", 1)
        return V * V

    def residual(self, state, test):
        u, w = split(state)
        v, phi = split(test)
        return (u * u.dx(0) * v + self.delta * w.dx(0) * v + w * phi + u.dx(0) * phi.dx(0)) * dx

    def time_derivative(self, state, test):
        return inner(Dt(split(state)[0]), split(test)[0]) * dx

    def draw(self, rng):
        return {"e": rng.standard_normal()}

    def initial_condition(self, x, p):
        e = p["e"]
        return 2 * (1 + 0.05 * e) * cos(pi * x[0]) * exp(-(x[0] - 7.5) ** 2 / (1 + 0.1 * e) ** 2)

    def set_initial_state(self, state, p):
        """u from the formula, then w = u_xx from the constraint, so the DAE starts consistent."""
        W = state.function_space()
        u0 = self.initial_condition(SpatialCoordinate(W.mesh()), p)
        u, w = TrialFunctions(W)
        v, phi = TestFunctions(W)
        a = (u * v + w * phi) * dx
        L = (u0 * v - u0.dx(0) * phi.dx(0)) * dx
        solve(a == L, state, solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})

    def observed(self, state):
        return state.subfunctions[0]
