"""Coarse-mesh baselines: the Smagorinsky viscosity on fields whose strain is known, and coarse
runs that conserve what the PDE conserves and dissipate what the closure should."""
import h5py
import numpy as np
import pytest
from firedrake import (Constant, Function, FunctionSpace, IntervalMesh, SpatialCoordinate, TestFunction,
                       TrialFunction, UnitSquareMesh, VectorFunctionSpace, as_vector, assemble, div, dx,
                       inner, split)

from firedrake_msm.baselines import CoarseSolver, coarse_forecast, smagorinsky_viscosity
from firedrake_msm.transfer import cell_width
from firedrake_msm.dns import simulate
from firedrake_msm.problems import AdvectedPulse, Burgers2D, Cylinder, KdV

C_S = 0.17


def cellwise(expression, mesh):
    """An expression's values at the cells (it is constant on each for P1 fields)."""
    return Function(FunctionSpace(mesh, "DG", 0)).interpolate(expression).dat.data_ro


def test_rigid_rotation_has_no_eddy_viscosity():
    mesh = UnitSquareMesh(4, 4)
    x, y = SpatialCoordinate(mesh)
    u = Function(VectorFunctionSpace(mesh, "CG", 1)).interpolate(as_vector((-y, x)))
    assert np.abs(cellwise(smagorinsky_viscosity(u, C_S), mesh)).max() < 1e-16


@pytest.mark.parametrize("quadrilateral", [False, True])
def test_linear_shear_has_the_exact_eddy_viscosity(quadrilateral):
    """u = (gamma y, 0): |S| = |gamma|. On n x n squares, Delta = |K|^(1/2) is h, or h/sqrt(2)
    when each square is split into two triangles."""
    n, gamma = 5, -3.0
    mesh = UnitSquareMesh(n, n, quadrilateral=quadrilateral)
    delta = 1 / n if quadrilateral else 1 / (n * np.sqrt(2))
    x, y = SpatialCoordinate(mesh)
    u = Function(VectorFunctionSpace(mesh, "CG", 1)).interpolate(as_vector((gamma * y, 0)))
    exact = (C_S * delta) ** 2 * abs(gamma)
    assert np.allclose(cellwise(cell_width(mesh), mesh), delta, rtol=1e-14, atol=0)
    assert np.allclose(cellwise(smagorinsky_viscosity(u, C_S), mesh), exact, rtol=1e-13, atol=0)
    assert np.isclose(assemble(smagorinsky_viscosity(u, C_S) * dx), exact, rtol=1e-13)


def test_scalar_analogue_on_a_linear_field():
    mesh = IntervalMesh(10, 2.0)
    u = Function(FunctionSpace(mesh, "CG", 1)).interpolate(0.7 - 2.5 * SpatialCoordinate(mesh)[0])
    assert np.allclose(cellwise(smagorinsky_viscosity(u, C_S), mesh), (C_S * 0.2) ** 2 * 2.5, rtol=1e-13)


def initial_field(problem, V, **parameters):
    x = SpatialCoordinate(V.mesh())
    p = {name: Constant(value) for name, value in parameters.items()}
    return Function(V).interpolate(problem.initial_condition(x, p))


def test_no_closure_on_the_dns_mesh_is_the_dns(tmp_path):
    """Same mesh, same initial values, same stepper: the coarse run reproduces the DNS; output
    times coarser than dt give the same states."""
    problem = AdvectedPulse()
    path = simulate(problem, tmp_path / "pulse.h5", trajectories=1, resolution=20, dt=0.01, t_end=0.1,
                    progress=False)
    with h5py.File(path, "r") as f:
        snapshots, times, width = f["msm/snapshots"][0], f["msm/times"][...], f["msm/parameters"][0, 0]
    V = problem.function_space(problem.mesh(20))
    u0 = initial_field(problem, V, width=width)
    states, seconds = coarse_forecast(problem, V, u0, times, dt=0.01)
    assert states.shape == (11, 20) and seconds > 0
    assert np.abs(states - snapshots).max() < 1e-12
    sparse = CoarseSolver(problem, V.mesh(), dt=0.01).forecast(u0.dat.data_ro, times[::5])
    assert np.abs(sparse.states - snapshots[::5]).max() < 1e-12


def test_kdv_starts_consistent():
    """w = u_xx in the weak sense, (w, phi) + (u_x, phi_x) = 0, from the observed u alone."""
    problem = KdV()
    solver = CoarseSolver(problem, problem.mesh(20))
    u0 = initial_field(problem, solver.observed_space, e=0.3)
    solver.set_initial_state(u0)
    u, w = split(solver.state)
    phi = TestFunction(solver.observed_space)
    assert np.array_equal(solver.state.subfunctions[0].dat.data_ro, u0.dat.data_ro)
    assert np.abs(assemble((w * phi + u.dx(0) * phi.dx(0)) * dx).dat.data_ro).max() < 1e-12
    assert np.abs(solver.state.subfunctions[1].dat.data_ro).max() > 1


@pytest.mark.parametrize("closure", [None, "smagorinsky"])
@pytest.mark.parametrize("problem,parameters", [(KdV(), {"e": 0.3}), (AdvectedPulse(), {"width": 0.015})],
                         ids=["kdv", "pulse"])
def test_under_resolved_runs_conserve_mass(problem, parameters, closure):
    """20 cells (the reference's coarse grid), t in [0, 1] with dt 0.01: the periodic P1 mass
    h sum(u) is conserved to round-off (measured: 1e-15 to 1e-14)."""
    V = problem.function_space(problem.mesh(problem.coarse))
    solver = CoarseSolver(problem, V, closure=closure, dt=0.01)
    u0 = initial_field(problem, solver.observed_space, **parameters)
    states = solver.forecast(u0, np.linspace(0, 1, 11)).states
    h = problem.mesh(problem.coarse).cell_sizes.dat.data_ro[0]
    mass = h * states.sum(axis=1)
    assert np.all(np.isfinite(states))
    assert np.abs(mass - mass[0]).max() < 1e-9
    assert np.abs(states[-1] - states[0]).max() > 1e-2       # it moved


def test_smagorinsky_dissipates_energy_faster_on_coarse_burgers():
    """8 x 8 squares, t in [0, 1]: the energy (u, u) decays under both, faster with Smagorinsky
    (measured, C_s = 0.17: from 0.0555 to 0.0411 and 0.0299 at t = 0.5 and 1 without, 0.0400
    and 0.0293 with)."""
    problem = Burgers2D()
    V = problem.function_space(problem.mesh(problem.coarse))
    u0 = initial_field(problem, V, e=0.0)
    times = np.linspace(0, 1, 11)
    M = assemble(inner(TrialFunction(V), TestFunction(V)) * dx).M.values
    energy = {}
    for closure in (None, "smagorinsky"):
        states = coarse_forecast(problem, V, u0, times, closure=closure, dt=0.01).states
        energy[closure] = np.einsum("ti,ij,tj->t", states, M, states)
    assert np.all(np.diff(energy[None]) < 0) and np.all(np.diff(energy["smagorinsky"]) < 0)
    assert np.all(energy["smagorinsky"][1:] < energy[None][1:])


def test_cylinder_leaves_the_pressure_to_the_stepper():
    """Incompressible flow: the rows without a time derivative, (q, div u) = 0, hold no
    pressure, so none is solved for at the start; RadauIIA's stages make the velocity
    discretely divergence free from the first step."""
    problem = Cylinder()
    solver = CoarseSolver(problem, problem.mesh("coarse"))
    states = solver.forecast(np.zeros(solver.observed_space.dim()), [0.0, 0.01, 0.02]).states
    assert solver._constraints is False and np.all(np.isfinite(states))
    u, _ = split(solver.state)
    q = TestFunction(FunctionSpace(solver.observed_space.mesh(), "CG", 1))
    assert np.abs(assemble(div(u) * q * dx).dat.data_ro).max() < 1e-12
    assert np.abs(states[-1]).max() > 0.5                       # the inflow came in


def test_bad_arguments():
    problem = AdvectedPulse()
    with pytest.raises(ValueError, match="unknown closure"):
        CoarseSolver(problem, problem.mesh(10), closure="bogus")
    solver = CoarseSolver(problem, problem.mesh(10))
    with pytest.raises(ValueError, match="increasing"):
        solver.forecast(np.zeros(10), [0.0, 0.0])
