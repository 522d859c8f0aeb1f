"""Sixty-four coarse Burgers simulations at once, through the torch bridge
=========================================================================

The multiscale models of firedrake-msm run on a coarse mesh whose physics prior is the coarse
Firedrake discretisation of the PDE. Training evaluates that prior for thousands of states at a
time, so the plugin turns it into a batched torch operation. This demo shows the round trip on
2D viscous Burgers,

.. math:: \\partial_t u = \\nu\\Delta u - u(u_x + u_y)\\quad\\text{in } [0,1]^2,
          \\qquad u = 0 \\text{ on the boundary},

on the committed Gmsh mesh ``firedrake_msm/meshes/unit_square.msh``: a batch of initial bumps is integrated in
torch with the classical Runge-Kutta method, and one member is checked against the same scheme
run with Firedrake's own ``assemble`` and ``solve``.

Run it with ``python demos/burgers_bridge.py`` (``make demo`` does).
"""
import time

import numpy as np
import torch
from firedrake import (Constant, DirichletBC, Function, FunctionSpace, LinearSolver, Mesh,
                       SpatialCoordinate, TestFunction, TrialFunction, assemble, dx, exp, grad, inner)

from firedrake_msm.bridge import PhysicsDrift
from firedrake_msm.meshes import MESHES

# The mesh carries the physical groups bottom, right, top, left (1-4). P2 on it gives a few
# hundred dofs, the size of the coarse spaces the multiscale models use.
mesh = Mesh(str(MESHES / "unit_square.msh"))
V = FunctionSpace(mesh, "CG", 2)
u, v = Function(V), TestFunction(V)
nu = Constant(0.005)
F = (u * (u.dx(0) + u.dx(1)) * v + nu * inner(grad(u), grad(v))) * dx
bcs = [DirichletBC(V, 0.0, (1, 2, 3, 4))]

# The drift :math:`-M^{-1}F(u)` as a torch module; boundary dofs stay at zero.
drift = PhysicsDrift(F, u, bcs)

# A batch of random initial bumps :math:`c_1 e^{-|x - (0.3, 0.3)|^2 / c_2}`, with
# :math:`c_1 = 1 + 0.1e`, :math:`c_2 = (0.2 + 0.01e)^2`, :math:`e \sim N(0, 1)`, made by Firedrake.
batch = 64
x, y = SpatialCoordinate(mesh)
e = Constant(0.0)
bump = (1 + 0.1 * e) * exp(-((x - 0.3)**2 + (y - 0.3)**2) / (0.2 + 0.01 * e)**2)
initial = Function(V)
states = []
for sample in np.random.default_rng(0).standard_normal(batch):
    e.assign(sample)
    states.append(torch.as_tensor(initial.interpolate(bump).dat.data_ro.copy()))
U0 = torch.stack(states)
U0 = drift.apply_bcs(U0)


def rk4(f, U, dt, steps):
    for _ in range(steps):
        k1 = f(U)
        k2 = f(U + 0.5 * dt * k1)
        k3 = f(U + 0.5 * dt * k2)
        k4 = f(U + dt * k3)
        U = U + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return U


dt, steps = 0.005, 100
start = time.perf_counter()
with torch.no_grad():
    U1 = rk4(lambda U: drift(0.0, U), U0, dt, steps)
torch_seconds = time.perf_counter() - start

# The same scheme for the first member, with Firedrake doing the work: assemble the residual,
# solve with the mass matrix (boundary rows held by the condition).
M = assemble(inner(TrialFunction(V), v) * dx, bcs=bcs)
solver = LinearSolver(M, solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})
rate, state = Function(V), Function(V)


def firedrake_drift(w):
    u.assign(w)
    residual = assemble(-F, bcs=bcs, zero_bc_nodes=True)
    solver.solve(rate, residual)
    return rate.copy(deepcopy=True)


start = time.perf_counter()
state.dat.data[:] = U0[0].numpy()
for _ in range(steps):
    k1 = firedrake_drift(state)
    k2 = firedrake_drift(state + 0.5 * dt * k1)
    k3 = firedrake_drift(state + 0.5 * dt * k2)
    k4 = firedrake_drift(state + dt * k3)
    state.assign(state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
firedrake_seconds = time.perf_counter() - start

difference = np.abs(U1[0].numpy() - state.dat.data_ro).max() / np.abs(state.dat.data_ro).max()
energy = lambda U: float(0.5 * (U * drift.mass(U)).sum(1).mean())  # noqa: E731
print(f"2D Burgers on unit_square.msh, P2: {V.dim()} dofs, {batch} trajectories, "
      f"{steps} RK4 steps to t = {dt * steps:g}")
print(f"  mean energy {energy(U0):.5f} -> {energy(U1):.5f} (viscous decay)")
print(f"  torch bridge: {torch_seconds:.2f} s for all {batch} "
      f"({torch_seconds / batch * 1e3:.1f} ms per trajectory)")
print(f"  Firedrake assemble + solve: {firedrake_seconds:.2f} s for one trajectory "
      f"-> {firedrake_seconds * batch / torch_seconds:.0f}x slower per trajectory")
print(f"  max relative difference between the two at t = {dt * steps:g}: {difference:.1e}")
assert difference < 1e-10, "the bridge and Firedrake disagree"
