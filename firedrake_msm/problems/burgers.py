"""Viscous Burgers equation for a scalar on the unit square."""
from firedrake import COMM_WORLD, DirichletBC, FunctionSpace, UnitSquareMesh, dx, exp, grad, inner

from firedrake_msm.problems.base import Problem


class Burgers2D(Problem):
    r""":math:`u_t = \nu\Delta u - u(u_x + u_y)` on :math:`[0,1]^2`, :math:`u = 0` on the
    boundary, :math:`\nu = 0.005`, P1 on a structured mesh of ``resolution``\ ² squares.

    Initial bump :math:`c_1 e^{-((x-0.3)^2 + (y-0.3)^2)/c_2}`, :math:`c_1 = 1 + 0.1e`,
    :math:`c_2 = (0.2 + 0.01e)^2`, :math:`e \sim N(0,1)`.
    """
    name = "burgers2d"
    viscosity = 0.005
    parameter_names = ("e",)
    fine, coarse = 128, 8
    lu = "petsc"           # no saddle point
    # Ten output intervals a step: the learned model's test error is that of a step at the
    # output interval, and the step is a fifth of the longest that stays bounded (a drift
    # with faster learned modes then still keeps its forecasts bounded).
    forecast_dt = 0.01

    def mesh(self, resolution, comm=COMM_WORLD):
        return UnitSquareMesh(resolution, resolution, comm=comm)

    def function_space(self, mesh):
        return FunctionSpace(mesh, "CG", 1)

    def residual(self, u, v):
        return (u * (u.dx(0) + u.dx(1)) * v + self.viscosity * inner(grad(u), grad(v))) * dx

    def bcs(self, V):
        return [DirichletBC(V, 0.0, "on_boundary")]

    def draw(self, rng):
        return {"e": rng.standard_normal()}

    def set_initial_state(self, u, p):
        """The bump, then zero on the boundary: it is not quite zero there, and Irksome holds
        Dirichlet dofs at whatever value they start from."""
        super().set_initial_state(u, p)
        for bc in self.bcs(u.function_space()):
            bc.apply(u)

    def initial_condition(self, x, p):
        e = p["e"]
        return (1 + 0.1 * e) * exp(-((x[0] - 0.3) ** 2 + (x[1] - 0.3) ** 2) / (0.2 + 0.01 * e) ** 2)
