"""A Gaussian pulse advected at unit speed around the periodic unit interval."""
from firedrake import COMM_WORLD, FunctionSpace, PeriodicIntervalMesh, dx, exp

from firedrake_msm.problems.base import Problem


class AdvectedPulse(Problem):
    r""":math:`u_t + c\,u_x = 0` on :math:`[0, 1)` periodic, :math:`c = 1`, P1 elements.

    Initial condition :math:`e^{-((x - 1/2)/w)^2}` with width :math:`w \sim U(0.01, 0.02)`.
    """
    name = "pulse"
    speed = 1.0
    parameter_names = ("width",)
    fine, coarse = 1000, 20
    lu = "petsc"           # no saddle point
    # The learned model's forecasts converge at half the output interval: a shorter step
    # changes their error no more than the ensemble's sampling does; the output interval
    # itself is too long.
    forecast_dt = 0.0005

    def mesh(self, resolution, comm=COMM_WORLD):
        return PeriodicIntervalMesh(resolution, 1.0, comm=comm)

    def function_space(self, mesh):
        return FunctionSpace(mesh, "CG", 1)

    def residual(self, u, v):
        return self.speed * u.dx(0) * v * dx

    def draw(self, rng):
        return {"width": rng.uniform(0.01, 0.02)}

    def initial_condition(self, x, p):
        return exp(-((x[0] - 0.5) / p["width"]) ** 2)
