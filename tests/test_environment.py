"""The environment is real: Gmsh meshes load, Firedrake solves and converges, torch talks to
Firedrake, and MPI runs give the serial answer."""
import numpy as np
import pytest
import torch
from firedrake import (COMM_SELF, COMM_WORLD, Constant, DirichletBC, Function, FunctionSpace, Mesh,
                       MeshHierarchy, SpatialCoordinate, TestFunction, TrialFunction, assemble, dx,
                       errornorm, grad, inner, pi, sin, solve)
from firedrake.ml.pytorch import from_torch, to_torch


def poisson_error(mesh, degree):
    """L2 error of the CG(degree) solution of -Δu = f with u = sin(πx) sin(πy) on ``mesh``."""
    V = FunctionSpace(mesh, "CG", degree)
    x, y = SpatialCoordinate(mesh)
    exact = sin(pi * x) * sin(pi * y)
    u, v = TrialFunction(V), TestFunction(V)
    uh = Function(V)
    solve(inner(grad(u), grad(v)) * dx == 2 * pi**2 * exact * v * dx, uh,
          bcs=DirichletBC(V, 0, (1, 2, 3, 4)))
    return errornorm(exact, uh)


def test_gmsh_mesh_has_physical_groups(meshes_dir):
    mesh = Mesh(str(meshes_dir / "unit_square.msh"))
    assert mesh.topological_dimension == 2
    assert set(mesh.exterior_facets.unique_markers) == {1, 2, 3, 4}
    assert np.isclose(assemble(Constant(1.0) * dx(domain=mesh)), 1.0)


@pytest.mark.parametrize("degree", [1, 2])
def test_poisson_converges_on_gmsh_mesh(meshes_dir, degree):
    hierarchy = MeshHierarchy(Mesh(str(meshes_dir / "unit_square.msh")), 3)
    errors = np.array([poisson_error(mesh, degree) for mesh in hierarchy])
    orders = np.log2(errors[:-1] / errors[1:])
    assert orders[-1] > degree + 1 - 0.1, orders


def test_torch_round_trip(meshes_dir):
    mesh = Mesh(str(meshes_dir / "unit_square.msh"))
    V = FunctionSpace(mesh, "CG", 2)
    x, y = SpatialCoordinate(mesh)
    u = Function(V).interpolate(sin(pi * x) * y)
    t = to_torch(u)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    assert np.allclose(t.numpy().ravel(), u.dat.data_ro)
    w = from_torch(2 * t, V)
    assert np.allclose(w.dat.data_ro, 2 * u.dat.data_ro)


@pytest.mark.parallel(nprocs=2)
def test_poisson_parallel_equals_serial(meshes_dir):
    assert COMM_WORLD.size == 2
    path = str(meshes_dir / "unit_square.msh")
    distributed = poisson_error(Mesh(path, comm=COMM_WORLD), 2)
    serial = poisson_error(Mesh(path, comm=COMM_SELF), 2)
    assert np.isclose(distributed, serial, rtol=1e-10)
