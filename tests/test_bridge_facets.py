"""Facet integrals (ds, dS) in the torch bridge, against Firedrake's own assembly.

The meshes are unstructured (the committed Gmsh square, or structured meshes with their interior
vertices moved at random) so that no two cells share a Jacobian and every local facet number
occurs on both sides of the interior facets.
"""
import numpy as np
import pytest
import torch
from firedrake import (COMM_SELF, CellDiameter, CellVolume, Constant, DirichletBC, ExtrudedMesh, FacetArea,
                       FacetNormal, Form, Function, FunctionSpace, SpatialCoordinate, TestFunction,
                       TestFunctions, UnitCubeMesh, UnitIntervalMesh, UnitSquareMesh, VectorFunctionSpace,
                       action, adjoint, as_vector, assemble, avg, conditional, cos, dS, derivative, div, dot,
                       ds, ds_t, dx, exp, grad, gt, inner, jump, max_value, sin, split, sqrt)

from firedrake_msm.bridge import MassOperator, PhysicsDrift, ResidualOperator, UnsupportedUFLError
from firedrake_msm.meshes import load_mesh

from conftest import assembled, assign, flat, max_relative_error, random_states, with_degree

BATCH = 8


def perturbed(mesh, amplitude, seed=0):
    """``mesh`` with its interior vertices moved by up to ``amplitude`` in each direction."""
    X = mesh.coordinates.dat.data.reshape(mesh.num_vertices(), -1)   # a view, also in 1D
    interior = np.all((X > 1e-12) & (X < 1 - 1e-12), axis=1)
    rng = np.random.default_rng(seed)
    X[interior] += amplitude * rng.uniform(-1, 1, size=X[interior].shape)
    return mesh


def square(n=4, quadrilateral=False):
    return perturbed(UnitSquareMesh(n, n, quadrilateral=quadrilateral, comm=COMM_SELF), 0.3 / n)


def cube():
    return perturbed(UnitCubeMesh(2, 2, 2, comm=COMM_SELF), 0.12, seed=1)


def gmsh_square(meshes_dir):
    return load_mesh(meshes_dir / "unit_square.msh", comm=COMM_SELF)


def fixed(V, expression):
    return Function(V).interpolate(expression)


# -- the forms: each returns (F, u) ---------------------------------------------------------

def robin_gmsh(meshes_dir):
    """Robin on a named boundary, a nonlinear flux on two others, a term on all of it (so the
    'otherwise' facets are those of no numbered ds), from the Gmsh file's physical names."""
    mesh, names = gmsh_square(meshes_dir)
    V = FunctionSpace(mesh, "CG", 2)
    u, v = Function(V), TestFunction(V)
    x, y = SpatialCoordinate(mesh)
    g = fixed(FunctionSpace(mesh, "CG", 1), 1 + sin(3 * x) * y)
    alpha = Constant(2.5)
    F = (inner(grad(u), grad(v)) * dx + (alpha * u - g) * v * ds(names["left"])
         + u**2 * v * ds((names["top"], names["bottom"])) + Constant(0.3) * u * v * ds)
    return F, u


def nonlinear_flux():
    mesh = square()
    V = FunctionSpace(mesh, "CG", 3)
    u, v = Function(V), TestFunction(V)
    n = FacetNormal(mesh)
    F = (u * v + (1 + u**2) * inner(grad(u), grad(v))) * dx + (u**2 * v - inner(grad(u), n) * v) * ds
    return F, u


def nitsche():
    """Nitsche's weak Dirichlet condition u = g on the boundary of a nonlinear diffusion."""
    mesh = square()
    V = FunctionSpace(mesh, "CG", 2)
    u, v = Function(V), TestFunction(V)
    n, h = FacetNormal(mesh), CellDiameter(mesh)
    x, y = SpatialCoordinate(mesh)
    g = cos(x) * exp(y)
    kappa = 1 + u**2
    F = (kappa * inner(grad(u), grad(v)) * dx
         - (kappa * inner(grad(u), n) * v + inner(grad(v), n) * (u - g)) * ds
         + Constant(10.0) / h * (u - g) * v * ds)
    return F, u


def dg_upwind(mesh=None, family="DG"):
    """Inviscid Burgers-type advection on DG1: upwind for the linear part, a Lax-Friedrichs
    flux with the local wave speed for f(u) = b u^2 / 2, inflow data on the boundary."""
    mesh = mesh or square()
    V = FunctionSpace(mesh, family, 1)
    u, v = Function(V), TestFunction(V)
    n = FacetNormal(mesh)
    x = SpatialCoordinate(mesh)
    d = len(x)
    b = as_vector([1.0 + 0.5 * x[d - 1]] + [0.3] * (d - 1))
    un = (dot(b, n) + abs(dot(b, n))) / 2
    flux = b * u**2 / 2
    speed = max_value(abs(u('+')), abs(u('-'))) * sqrt(dot(avg(b), avg(b)))
    F = (-inner(flux + b * u, grad(v)) * dx
         + (dot(avg(flux), jump(v, n)) + speed / 2 * jump(u) * jump(v)) * dS
         + jump(v) * (un('+') * u('+') - un('-') * u('-')) * dS
         + v * (un * u + dot(flux, n)) * ds
         + conditional(gt(dot(b, n), 0), 0.0, 1.0) * (u - 1) * v * ds)
    return F, u


def interior_penalty(family="DG", degree=1, mesh=None):
    r"""Symmetric interior penalty for -div((1 + u^2) grad u) on DG (penalty sigma |F| / avg|K|
    and sigma / avg(h)), or, on CG, the gradient-jump penalty avg(h)^2 [grad u . n][grad v . n]."""
    mesh = mesh or square()
    V = FunctionSpace(mesh, family, degree)
    u, v = Function(V), TestFunction(V)
    n, h = FacetNormal(mesh), CellDiameter(mesh)
    kappa = 1 + u**2
    F = kappa * inner(grad(u), grad(v)) * dx + u * v * dx
    if family in ("DG", "DQ"):
        sigma = Constant(8.0)
        F += (- inner(avg(kappa * grad(u)), jump(v, n)) - inner(jump(u, n), avg(grad(v)))
              + sigma * FacetArea(mesh) / avg(CellVolume(mesh)) * jump(u) * jump(v)
              + sigma / avg(h) * jump(u) * jump(v)) * dS
        F += (- kappa * inner(grad(u), n) * v - inner(grad(v), n) * u + sigma / h * u * v) * ds
    else:
        F += avg(h)**2 * jump(grad(u), n) * jump(grad(v), n) * dS + FacetArea(mesh) * u * v * ds
    return F, u


def mixed_facet():
    """A P2 velocity and a DG1 pressure: the pressure's jump penalised on interior facets, a
    nonlinear boundary term on the velocity alone."""
    mesh = square()
    W = VectorFunctionSpace(mesh, "CG", 2) * FunctionSpace(mesh, "DG", 1)
    w = Function(W)
    u, p = split(w)
    v, q = TestFunctions(W)
    n = FacetNormal(mesh)
    F = ((inner(grad(u), grad(v)) - p * div(v) + q * div(u)) * dx
         + avg(CellDiameter(mesh)) * jump(p) * jump(q) * dS
         + (dot(u, n) * inner(u, v) - p * dot(v, n)) * ds)
    return F, w


def vector_cg2(meshes_dir):
    """Nonlinear elasticity-like vector CG2 with a traction and a nonlinear spring on tagged
    boundaries."""
    mesh, names = gmsh_square(meshes_dir)
    V = VectorFunctionSpace(mesh, "CG", 2)
    u, v = Function(V), TestFunction(V)
    n = FacetNormal(mesh)
    F = (inner(grad(u) + grad(u).T, grad(v)) * dx + inner(u, u) * inner(u, v) * ds(names["right"])
         - inner(dot(grad(u), n), v) * ds((names["left"], names["top"])))
    return F, u


def interval():
    """1D: DG1 upwind with a Robin outflow at x = 1 (tag 2) and a CG2-like Neumann term."""
    mesh = perturbed(UnitIntervalMesh(6, comm=COMM_SELF), 0.05)
    V = FunctionSpace(mesh, "DG", 2)
    u, v = Function(V), TestFunction(V)
    n = FacetNormal(mesh)
    un = (n[0] + abs(n[0])) / 2
    F = (-u * v.dx(0) * dx + jump(v) * (un('+') * u('+') - un('-') * u('-')) * dS
         + (u**2 - 1) * v * ds(2) + inner(grad(u), n) * v * ds(1)
         + jump(u) * jump(v) / avg(CellDiameter(mesh)) * dS)
    return F, u


CASES = {
    "nonlinear_flux_p3": nonlinear_flux,
    "nitsche": nitsche,
    "dg_upwind": dg_upwind,
    "dg_upwind_3d": lambda: dg_upwind(cube()),
    "dg_upwind_quads": lambda: dg_upwind(square(3, quadrilateral=True), "DQ"),
    "interior_penalty_dg1": interior_penalty,
    "interior_penalty_dg2_3d": lambda: interior_penalty("DG", 2, cube()),
    "interior_penalty_cg2": lambda: interior_penalty("CG", 2),
    "interior_penalty_q2": lambda: interior_penalty("DQ", 2, square(3, quadrilateral=True)),
    "mixed_facet": mixed_facet,
    "interval": interval,
}
GMSH_CASES = {"robin_gmsh": robin_gmsh, "vector_cg2": vector_cg2}


@pytest.fixture(params=list(CASES) + list(GMSH_CASES))
def case(request, meshes_dir):
    if request.param in GMSH_CASES:
        return GMSH_CASES[request.param](meshes_dir)
    return CASES[request.param]()


def test_facet_residual_matches_assemble(case):
    F, u = case
    U = random_states(u.function_space(), BATCH)
    # The facet terms alone too: the cell terms must not hide an error in them.
    facets = Form([itg for itg in F.integrals() if itg.integral_type() != "cell"])
    for form in (F, facets):
        error = max_relative_error(ResidualOperator(form, u)(U).numpy(), assembled(form, u, U))
        assert error <= 1e-12, error


@pytest.mark.parametrize("make", [dg_upwind, nitsche])
def test_facet_gradients_match_assembled_jacobian(make):
    r"""Forward mode against the assembled action :math:`J w`, reverse mode (the gradient of
    :math:`\sum R\cdot w`) against the adjoint action :math:`J^T w`."""
    F, u = make()
    F = with_degree(F, 4)
    V = u.function_space()
    op = ResidualOperator(F, u)
    U, W = random_states(V, batch=3), random_states(V, batch=3, seed=1)
    _, jvp = torch.func.jvp(op, (U,), (W,))
    Ug = U.clone().requires_grad_()
    (op(Ug) * W).sum().backward()
    J = derivative(F, u)
    w = Function(V)
    forward, reverse = [], []
    for state, direction in zip(U.numpy(), W.numpy()):
        assign(u, state)
        assign(w, direction)
        forward.append(flat(assemble(action(J, w))))
        reverse.append(flat(assemble(action(adjoint(J), w))))
    assert max_relative_error(jvp.numpy(), forward) <= 1e-11
    assert max_relative_error(Ug.grad.numpy(), reverse) <= 1e-11


def test_physics_drift_with_boundary_terms(meshes_dir):
    """A Robin and a nonlinear outflow term in the drift, with a Dirichlet condition elsewhere:
    M dU = -F on the free rows, F as Firedrake assembles it."""
    mesh, names = gmsh_square(meshes_dir)
    V = FunctionSpace(mesh, "CG", 2)
    u, v = Function(V), TestFunction(V)
    F = (u * (u.dx(0) + u.dx(1)) * v + Constant(0.01) * inner(grad(u), grad(v))) * dx \
        + (Constant(2.0) * u - 1) * v * ds(names["left"]) + u**2 * v * ds(names["right"])
    drift = PhysicsDrift(F, u, [DirichletBC(V, 0.0, names["bottom"])])
    U = drift.apply_bcs(random_states(V, BATCH))
    dU = drift(0.0, U)
    assert torch.all(dU[:, drift.bc_dofs] == 0)
    free = np.setdiff1d(np.arange(V.dim()), drift.bc_dofs.numpy())
    R = torch.as_tensor(assembled(F, u, U))
    MdU = MassOperator(V)(dU)
    assert max_relative_error(MdU[:, free].numpy(), -R[:, free].numpy()) <= 1e-10


def test_constants_in_facet_terms_are_live_and_learnable():
    mesh = square()
    V = FunctionSpace(mesh, "CG", 1)
    u, v = Function(V), TestFunction(V)
    alpha = Constant(1.0)
    F = inner(grad(u), grad(v)) * dx + alpha * u**2 * v * ds
    U = random_states(V, BATCH)
    theta = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    op = ResidualOperator(F, u, parameters={alpha: theta})
    op(U).sum().backward()
    alpha.assign(0.7)
    assert max_relative_error(op(U).detach().numpy(), assembled(F, u, U)) <= 1e-12
    boundary = assembled(u**2 * v * ds, u, U).sum()     # dR/dalpha, R affine in alpha
    assert np.isclose(theta.grad.item(), boundary, rtol=1e-12)


def test_extruded_measures_are_a_clear_error():
    mesh = ExtrudedMesh(UnitIntervalMesh(2, comm=COMM_SELF), 2)
    V = FunctionSpace(mesh, "CG", 1)
    u, v = Function(V), TestFunction(V)
    with pytest.raises(UnsupportedUFLError, match="ds_t"):
        ResidualOperator(u * v * ds_t, u)
