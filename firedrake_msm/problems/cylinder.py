"""Incompressible flow past a cylinder in a channel (the Schaefer-Turek geometry), Re = 160."""
from functools import cached_property
from pathlib import Path

import numpy as np
from firedrake import (COMM_WORLD, Constant, DirichletBC, FacetNormal, FunctionSpace, Identity,
                       SpatialCoordinate, VectorFunctionSpace, as_vector, assemble, div, dot, ds, dx, grad,
                       inner, split, sym)
from irksome import Dt, RadauIIA

from firedrake_msm.meshes import load_mesh, read_physical_names
from firedrake_msm.problems.base import Problem

MESHES = Path(__file__).resolve().parents[2] / "meshes"


class Cylinder(Problem):
    r"""Navier-Stokes, :math:`u_t + (u\cdot\nabla)u - \nu\Delta u + \nabla p = 0`,
    :math:`\nabla\cdot u = 0`, in the channel :math:`[0, 2.2]\times[0, 0.41]` around a cylinder of
    diameter :math:`D = 0.1`, Taylor-Hood P2/P1 on the Gmsh meshes ``meshes/cylinder_*.msh``.

    Parabolic inflow of mean speed :math:`\bar U = 1`, no slip on the walls and the cylinder,
    do-nothing outflow; :math:`\nu = \bar U D / 160`. The flow starts from rest; after
    :attr:`spin_up` the wake sheds vortices, and that is what is stored (one long trajectory, to
    be split in time). Only the velocity is observed.

    Measured on the fine mesh (``firedrake-msm dns cylinder``, t in [5, 15]): the lift oscillates
    between -1.74 and 1.72 at a Strouhal number of 0.313 (the same over [5, 10] and [10, 15]),
    mean drag coefficient 3.08. The channel confines the wake (blockage D/H = 0.24), which raises
    the shedding frequency above the unconfined cylinder's St = 0.19 at this Reynolds number.
    """
    name = "cylinder"
    reynolds = 160.0
    diameter = 0.1
    mean_speed = 1.0
    height = 0.41
    t_end, dt, spin_up = 15.0, 0.01, 5.0
    fine, coarse = "fine", "coarse"
    trajectories = 1
    # Stiffly accurate, so that the pressure (an algebraic variable) is the last stage's rather
    # than the odd-even oscillation the implicit midpoint rule leaves in it.
    scheme, stage_type = RadauIIA(2), "value"

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
        x, y = SpatialCoordinate(W.mesh())
        inflow = as_vector((6 * self.mean_speed * y * (self.height - y) / self.height**2, 0))
        V = W.sub(0)
        return [DirichletBC(V, inflow, self.names["inlet"]),
                DirichletBC(V, Constant((0.0, 0.0)), (self.names["walls"], self.names["cylinder"]))]

    def draw(self, rng):
        return {}

    def initial_condition(self, x, p):
        return as_vector((0.0, 0.0, 0.0))

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
