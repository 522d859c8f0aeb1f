"""Incompressible flow past a cylinder in a wide box (an almost unconfined wake), Re = 160."""
from functools import cached_property

import numpy as np
from firedrake import (COMM_WORLD, Constant, DirichletBC, FacetNormal, FunctionSpace, Identity,
                       VectorFunctionSpace, as_vector, assemble, div, dot, ds, dx, exp, grad, inner,
                       split, sym)
from irksome import Dt, RadauIIA

from firedrake_msm.meshes import MESHES, load_mesh, read_physical_names
from firedrake_msm.problems.base import Problem


class Cylinder(Problem):
    r"""Navier-Stokes, :math:`u_t + (u\cdot\nabla)u - \nu\Delta u + \nabla p = 0`,
    :math:`\nabla\cdot u = 0`, around a cylinder of diameter :math:`D = 0.1` centred at the
    origin of the box :math:`[-1, 2.2]\times[-0.9, 0.9]` (10 D upstream, 22 D downstream, 18 D
    across: blockage 0.056), Taylor-Hood P2/P1 on the Gmsh meshes ``firedrake_msm/meshes/cylinder_*.msh``
    (one ``.geo``, refined on the cylinder and in the wake).

    Uniform inflow :math:`u = (\bar U, 0)`, :math:`\bar U = 1`, free slip on the sides
    (:math:`u_y = 0`), no slip on the cylinder, do-nothing outflow; :math:`\nu = \bar U D / 160`.
    The flow starts uniform, plus a small vortex just behind the cylinder that breaks the
    symmetry, so that the wake sheds within :attr:`spin_up`; what follows is stored (one long
    trajectory, to be split in time). Only the velocity is observed. The stored times run from 5
    to 20: the reference split (train t <= 13, validate (13, 14], test (14, 15], counted from the
    first frame) is t <= 18, (18, 19], (19, 20] here.

    The fine mesh (4101 cells; 16 694 velocity and 2123 pressure dofs) resolves the wake: the
    shedding saturates within :attr:`spin_up`, so every stored frame is periodic, at the
    Strouhal number of Williamson's fit for the unconfined cylinder at this Reynolds number
    (:meth:`diagnostics` and :meth:`strouhal` check it). The coarse mesh (648 cells; 2692
    velocity and 349 pressure dofs) sheds too, weakly and more slowly.
    """
    name = "cylinder"
    reynolds = 160.0
    diameter = 0.1
    mean_speed = 1.0
    t_end, dt, spin_up = 20.0, 0.01, 5.0
    fine, coarse = "fine", "coarse"
    trajectories = 1
    prognostic = (0,)      # the pressure is algebraic
    # Stiffly accurate, so that the pressure (an algebraic variable) is the last stage's rather
    # than the odd-even oscillation the implicit midpoint rule leaves in it.
    scheme, stage_type = RadauIIA(2), "value"
    # Explicit forecasts on the coarse mesh: its smallest cells, at the cylinder, bound the
    # stable step of a learned drift well below the output interval, noise or none.
    forecast_dt = 0.002
    # The symmetry-breaking vortex: centre, radius and peak swirl speed (relative to U).
    kick_centre, kick_radius, kick_speed = (0.1, 0.0), 0.05, 0.3

    @cached_property
    def names(self):
        """Physical names to tags (both meshes come from one ``.geo``)."""
        return read_physical_names(MESHES / "cylinder_coarse.msh")

    def mesh(self, resolution, comm=COMM_WORLD):
        return load_mesh(MESHES / f"cylinder_{resolution}.msh", comm=comm)[0]

    def function_space(self, mesh):
        return VectorFunctionSpace(mesh, "CG", 2) * FunctionSpace(mesh, "CG", 1)

    @property
    def viscosity(self):
        return self.mean_speed * self.diameter / self.reynolds

    def residual(self, state, test):
        u, p = split(state)
        v, q = split(test)
        return (inner(dot(grad(u), u), v) + self.viscosity * inner(grad(u), grad(v))
                - p * div(v) + q * div(u)) * dx

    def time_derivative(self, state, test):
        return inner(Dt(split(state)[0]), split(test)[0]) * dx

    def bcs(self, W):
        V = W.sub(0)
        return [DirichletBC(V, Constant((self.mean_speed, 0.0)), self.names["inlet"]),
                DirichletBC(V.sub(1), 0.0, self.names["walls"]),
                DirichletBC(V, Constant((0.0, 0.0)), self.names["cylinder"])]

    def draw(self, rng):
        return {}

    def initial_condition(self, x, p):
        r"""Uniform flow plus the divergence-free swirl :math:`s\,e^{1/2 - \rho^2/2a^2}\,
        (-\Delta y, \Delta x)/a`, :math:`\rho` the distance to :attr:`kick_centre`, whose
        speed peaks at :math:`s` = :attr:`kick_speed` on the circle :math:`\rho = a` =
        :attr:`kick_radius`."""
        dx_, dy_ = x[0] - self.kick_centre[0], x[1] - self.kick_centre[1]
        a, s = self.kick_radius, self.kick_speed * self.mean_speed
        swirl = s * exp(0.5 - (dx_**2 + dy_**2) / (2 * a**2)) / a
        return as_vector((self.mean_speed - swirl * dy_, swirl * dx_, 0.0))

    def observed(self, state):
        return state.subfunctions[0]

    def strouhal(self, times, lift):
        r"""Strouhal number :math:`St = D / (\bar U T)` of a lift signal, :math:`T` the mean time
        between its upward crossings of its mean (linearly interpolated)."""
        signal = np.asarray(lift) - np.mean(lift)
        k = np.flatnonzero((signal[:-1] < 0) & (signal[1:] >= 0))
        if len(k) < 2:
            raise ValueError("the lift does not oscillate over two periods: no shedding to measure")
        crossings = times[k] - signal[k] * (times[k + 1] - times[k]) / (signal[k + 1] - signal[k])
        return self.diameter / (self.mean_speed * np.mean(np.diff(crossings)))

    def diagnostics(self, state):
        r"""Drag and lift coefficients :math:`2F / (\bar U^2 D)`, with the force on the cylinder
        :math:`F = -\int \sigma n\,ds` (:math:`n` out of the fluid)."""
        u, p = split(state)
        n = FacetNormal(state.function_space().mesh())
        sigma = -p * Identity(2) + 2 * self.viscosity * sym(grad(u))
        scale = 2 / (self.mean_speed**2 * self.diameter)
        return {name: scale * assemble(-dot(sigma, n)[k] * ds(self.names["cylinder"]))
                for k, name in enumerate(("drag", "lift"))}
