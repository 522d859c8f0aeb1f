"""Reference problems: UFL semi-discrete residuals with their meshes, boundary conditions and
random initial conditions. A user's own PDE is one more :class:`Problem` subclass."""
from firedrake_msm.problems.base import Problem
from firedrake_msm.problems.burgers import Burgers2D
from firedrake_msm.problems.kdv import KdV
from firedrake_msm.problems.pulse import AdvectedPulse

PROBLEMS = {problem.name: problem for problem in (AdvectedPulse, KdV, Burgers2D)}

__all__ = ["AdvectedPulse", "Burgers2D", "KdV", "PROBLEMS", "Problem"]
