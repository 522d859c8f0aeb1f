"""firedrake-msm: learn stochastic multiscale models on coarse Firedrake meshes from data."""
from firedrake_msm.bridge import Basis, MassOperator, PhysicsDrift, ResidualOperator, UnsupportedUFLError

__version__ = "0.1.0.dev0"

__all__ = ["Basis", "MassOperator", "PhysicsDrift", "ResidualOperator", "UnsupportedUFLError"]
