"""Problems: UFL semi-discrete residuals with their meshes, boundary conditions and random
initial conditions. A user's own PDE is one more :class:`Problem` subclass, in the user's own
file, found by :func:`resolve` from its import path."""
from firedrake_msm.problems.base import Problem
from firedrake_msm.problems.burgers import Burgers2D
from firedrake_msm.problems.cylinder import Cylinder
from firedrake_msm.problems.kdv import KdV
from firedrake_msm.problems.lookup import ProblemNotFound, reference, resolve
from firedrake_msm.problems.pulse import AdvectedPulse
from firedrake_msm.problems.shallow_water import ShallowWater

__all__ = ["AdvectedPulse", "Burgers2D", "Cylinder", "KdV", "Problem", "ProblemNotFound", "ShallowWater",
           "reference", "resolve"]
