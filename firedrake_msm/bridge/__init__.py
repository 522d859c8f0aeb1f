"""The torch bridge: Firedrake operators as batched, differentiable torch operations.

Firedrake builds (meshes, spaces, dof maps, elements, quadrature, assembled mass matrices); torch
runs (batched over states, on CPU or CUDA, in float64 or float32, through autograd).
"""
from firedrake_msm.bridge.drift import PhysicsDrift
from firedrake_msm.bridge.mass import MassOperator
from firedrake_msm.bridge.residual import ResidualOperator
from firedrake_msm.bridge.tabulation import Basis
from firedrake_msm.bridge.ufl2torch import UnsupportedUFLError

__all__ = ["Basis", "MassOperator", "PhysicsDrift", "ResidualOperator", "UnsupportedUFLError"]
