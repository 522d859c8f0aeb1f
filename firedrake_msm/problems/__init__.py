"""Reference problems: UFL semi-discrete residuals with their meshes, boundary conditions and
random initial conditions. A user's own PDE is one more :class:`Problem` subclass."""
from firedrake_msm.problems.base import Problem
from firedrake_msm.problems.burgers import Burgers2D
from firedrake_msm.problems.cylinder import Cylinder
from firedrake_msm.problems.kdv import KdV
from firedrake_msm.problems.pulse import AdvectedPulse

PROBLEMS = {problem.name: problem for problem in (AdvectedPulse, KdV, Burgers2D, Cylinder)}

__all__ = ["AdvectedPulse", "Burgers2D", "Cylinder", "KdV", "PROBLEMS", "Problem"]
