r"""A PDE of one's own, as a user writes it: advection-diffusion past two absorbing holes.

.. math:: \partial_t c + b\cdot\nabla c - \kappa\Delta c = 0 \quad\text{in the channel},\qquad
          c = 0 \text{ at the inlet},\qquad \kappa\,\partial_n c = -\alpha c \text{ on the holes},

with no diffusive flux through the walls and the outlet. The velocity :math:`b = \nabla\phi` is
the potential flow around the holes (:math:`\Delta\phi = 0`, :math:`\partial_n\phi = U` in at the
inlet, 0 on the walls and holes, :math:`\phi = 0` at the outlet), solved once on each mesh. The
initial state is a Gaussian blob at a random place upstream of the holes.

Its residual carries a boundary integral, the Robin term :math:`\int_{holes}\alpha c v\,ds`,
which the torch bridge turns into part of the coarse physics drift like the cell terms. The
meshes come from one Gmsh geometry with named boundaries, ``holes_fine.geo`` and
``holes_coarse.geo`` beside the package's meshes.

This file is all that firedrake-msm needs to know of the problem: it is named by its path,
``demos/advection_diffusion.py:AdvectionDiffusion``, wherever the problem must be rebuilt.
"""
from firedrake import (COMM_WORLD, Constant, DirichletBC, Function, FunctionSpace, TestFunction,
                       TrialFunction, dot, ds, dx, exp, grad, inner, solve)

import firedrake_msm as msm


class AdvectionDiffusion(msm.Problem):
    t_end, dt = 1.0, 0.01
    parameter_names = ("x0", "y0")
    fine, coarse = "fine", "coarse"
    trajectories = 30
    lu = "petsc"            # no saddle point: PETSc's own LU

    def __init__(self, diffusivity=0.01, absorption=0.5, speed=1.0):
        self.diffusivity, self.absorption, self.speed = diffusivity, absorption, speed
        self.names = msm.meshes.read_physical_names(msm.meshes.MESHES / "holes_coarse.msh")
        self._velocities = {}

    def mesh(self, resolution, comm=COMM_WORLD):
        return msm.load_mesh(msm.meshes.MESHES / f"holes_{resolution}.msh", comm=comm)[0]

    def function_space(self, mesh):
        return FunctionSpace(mesh, "CG", 1)

    def velocity(self, mesh):
        r"""The potential flow :math:`b = \nabla\phi` on ``mesh`` (P1 potential, so :math:`b` is
        piecewise constant), solved once per mesh."""
        if mesh not in self._velocities:
            V = FunctionSpace(mesh, "CG", 1)
            phi, q = TrialFunction(V), TestFunction(V)
            potential = Function(V)
            outlet = DirichletBC(V, 0.0, self.names["outlet"])
            solve(inner(grad(phi), grad(q)) * dx == -self.speed * q * ds(self.names["inlet"]), potential,
                  bcs=outlet, solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})
            self._velocities[mesh] = grad(potential)
        return self._velocities[mesh]

    def residual(self, c, v):
        b = self.velocity(c.function_space().mesh())
        return (dot(b, grad(c)) * v + self.diffusivity * inner(grad(c), grad(v))) * dx \
            + self.absorption * c * v * ds(self.names["holes"])

    def bcs(self, V):
        return [DirichletBC(V, Constant(0.0), self.names["inlet"])]

    def draw(self, rng):
        return {"x0": rng.uniform(0.3, 0.45), "y0": rng.uniform(0.25, 0.75)}

    def set_initial_state(self, c, p):
        """The blob, then exactly zero at the inlet (Irksome holds Dirichlet dofs at their
        initial values)."""
        super().set_initial_state(c, p)
        for bc in self.bcs(c.function_space()):
            bc.apply(c)

    def initial_condition(self, x, p):
        return exp(-((x[0] - p["x0"]) ** 2 + (x[1] - p["y0"]) ** 2) / 0.1 ** 2)
