"""The torch bridge against Firedrake's own assembly."""
import numpy as np
import pytest
import torch
from firedrake import (COMM_SELF, CellDiameter, CellVolume, Constant, DirichletBC, Function,
                       FunctionSpace, Mesh, MixedVectorSpaceBasis, PeriodicIntervalMesh, SpatialCoordinate,
                       TestFunction, TestFunctions, TensorFunctionSpace, TrialFunctions, UnitCubeMesh,
                       UnitSquareMesh, VectorFunctionSpace, VectorSpaceBasis, action, as_vector, assemble,
                       bessel_J, conditional, cos, derivative, div, dot, dP, ds, dx, exp, grad, gt,
                       inner, max_value, nabla_grad, solve, split, sqrt, sym, tanh, tr)

from firedrake_msm.bridge import MassOperator, PhysicsDrift, ResidualOperator, UnsupportedUFLError
from firedrake_msm.bridge.mass import bc_dofs
from firedrake_msm.problems import KdV

from conftest import assembled, assign, flat, max_relative_error, random_states, with_degree

BATCH = 16


def burgers_1d(degree=2):
    V = FunctionSpace(PeriodicIntervalMesh(12, 1.0), "CG", degree)
    u, v = Function(V), TestFunction(V)
    return (u * u.dx(0) * v + Constant(0.01) * u.dx(0) * v.dx(0)) * dx, u


def burgers_2d(degree=1, quadrilateral=False):
    V = FunctionSpace(UnitSquareMesh(5, 4, quadrilateral=quadrilateral), "CG", degree)
    u, v = Function(V), TestFunction(V)
    return (u * (u.dx(0) + u.dx(1)) * v + Constant(0.005) * inner(grad(u), grad(v))) * dx, u


def advection_diffusion():
    mesh = UnitSquareMesh(6, 6)
    x, y = SpatialCoordinate(mesh)
    V = FunctionSpace(mesh, "CG", 2)
    kappa = Function(FunctionSpace(mesh, "CG", 1)).interpolate(0.01 + 0.1 * x * y)
    u, v = Function(V), TestFunction(V)
    b = as_vector((0.5 - y, x - 0.5))
    return (dot(b, grad(u)) * v + kappa * inner(grad(u), grad(v))) * dx, u


def nonlinear_diffusion_3d():
    V = FunctionSpace(UnitCubeMesh(2, 2, 2), "CG", 2)
    u, v = Function(V), TestFunction(V)
    return ((1 + u**2) * inner(grad(u), grad(v)) + tanh(u) * v) * dx, u


def nonlinear_diffusion_cubic():
    V = FunctionSpace(UnitSquareMesh(3, 3), "CG", 3)
    u, v = Function(V), TestFunction(V)
    return (1 + u**2) * inner(grad(u), grad(v)) * dx, u


def reaction():
    V = FunctionSpace(UnitSquareMesh(4, 4, quadrilateral=True), "CG", 3)
    u, v = Function(V), TestFunction(V)
    x, y = SpatialCoordinate(V.mesh())
    return (exp(u) * v - cos(x + y) * v + abs(u) * sqrt(1 + u**2) * v) * dx, u


def navier_stokes(meshes_dir):
    mesh = Mesh(str(meshes_dir / "cylinder_coarse.msh"), comm=COMM_SELF)
    W = VectorFunctionSpace(mesh, "CG", 2) * FunctionSpace(mesh, "CG", 1)
    w = Function(W)
    u, p = split(w)
    v, q = TestFunctions(W)
    nu = Constant(1e-3)
    F = (inner(dot(grad(u), u), v) + 2 * nu * inner(sym(grad(u)), sym(grad(v)))
         - p * div(v) + q * div(u)) * dx
    return F, w


def smagorinsky():
    mesh = UnitSquareMesh(4, 4)
    V = VectorFunctionSpace(mesh, "CG", 2)
    u, v = Function(V), TestFunction(V)
    S = sym(grad(u))
    nu_t = (Constant(0.17) * CellDiameter(mesh))**2 * sqrt(2 * inner(S, S) + 1e-12)
    h2 = CellVolume(mesh)
    F = (inner(dot(u, nabla_grad(u)), v) + 2 * (1e-3 + nu_t) * inner(S, sym(grad(v)))
         + max_value(tr(S), 0) * h2 * inner(u, v)
         + conditional(gt(u[0], 0), 1.0, -1.0) * u[1] * v[0]) * dx
    return F, u


def tensor_valued():
    mesh = UnitSquareMesh(3, 3)
    T = TensorFunctionSpace(mesh, "CG", 1)
    sigma, tau = Function(T), TestFunction(T)
    return (inner(dot(sigma, sigma), tau) + tr(sigma) * tr(tau) + inner(div(sigma), div(tau))) * dx, sigma


def subdomains(meshes_dir):
    mesh = Mesh(str(meshes_dir / "unit_square.msh"), comm=COMM_SELF)
    V = FunctionSpace(mesh, "CG", 1)
    u, v = Function(V), TestFunction(V)
    return u**3 * v * dx(5) + inner(grad(u), grad(v)) * dx, u


CASES = {
    "burgers_1d": burgers_1d,
    "burgers_2d_p1": burgers_2d,
    "burgers_2d_q2": lambda: burgers_2d(2, quadrilateral=True),
    "advection_diffusion": advection_diffusion,
    "nonlinear_diffusion_3d": nonlinear_diffusion_3d,
    "nonlinear_diffusion_p3": nonlinear_diffusion_cubic,
    "reaction_q3": reaction,
    "smagorinsky": smagorinsky,
    "tensor_valued": tensor_valued,
}


@pytest.fixture(params=list(CASES) + ["navier_stokes", "subdomains"])
def case(request, meshes_dir):
    if request.param == "navier_stokes":
        return navier_stokes(meshes_dir)
    if request.param == "subdomains":
        return subdomains(meshes_dir)
    return CASES[request.param]()


def test_residual_matches_assemble(case):
    F, u = case
    op = ResidualOperator(F, u)
    U = random_states(u.function_space(), BATCH)
    error = max_relative_error(op(U).numpy(), assembled(F, u, U))
    assert error <= 1e-12, error


def test_jvp_matches_assembled_jacobian(case):
    F, u = case
    F = with_degree(F, 6)
    V = u.function_space()
    op = ResidualOperator(F, u)
    U = random_states(V, batch=4)
    W = random_states(V, batch=4, seed=1)
    _, jvp = torch.func.jvp(op, (U,), (W,))
    w = Function(V)
    expected = []
    for state, direction in zip(U.numpy(), W.numpy()):
        assign(u, state)
        assign(w, direction)
        expected.append(flat(assemble(action(derivative(F, u), w))))
    assert max_relative_error(jvp.numpy(), expected) <= 1e-10


def test_float32_agrees_with_float64():
    F, u = burgers_2d(2)
    U = random_states(u.function_space(), BATCH)
    exact = ResidualOperator(F, u)(U)
    single = ResidualOperator(F, u, dtype=torch.float32)(U.float())
    assert single.dtype == torch.float32
    assert max_relative_error(single.double().numpy(), exact.numpy()) < 1e-5


def test_compiled_operator_agrees():
    F, u = burgers_2d(2)
    U = random_states(u.function_space(), BATCH)
    eager = ResidualOperator(F, u)
    compiled = ResidualOperator(F, u, compile=True)
    assert max_relative_error(compiled(U).detach().numpy(), eager(U).numpy()) <= 1e-12


def test_wrong_device_or_dtype_is_an_error():
    F, u = burgers_1d()
    op = ResidualOperator(F, u)
    with pytest.raises(ValueError, match="float32"):
        op(random_states(u.function_space(), BATCH).float())
    with pytest.raises(ValueError, match="shape"):
        op(torch.zeros(3, 5, dtype=torch.float64))


def test_constants_are_live_and_parameters_learnable():
    V = FunctionSpace(UnitSquareMesh(4, 4), "CG", 1)
    u, v = Function(V), TestFunction(V)
    nu, c = Constant(0.1), Constant(2.0)
    F = (nu * inner(grad(u), grad(v)) + c * u**2 * v) * dx
    U = random_states(V, BATCH)
    op = ResidualOperator(F, u)
    before = op(U)
    nu.assign(0.2)
    assert max_relative_error(op(U).numpy(), assembled(F, u, U)) <= 1e-12
    assert not torch.allclose(before, op(U))

    theta = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    learnable = ResidualOperator(F, u, parameters={nu: theta})
    assert any(p is theta for p in learnable.parameters())
    learnable(U).sum().backward()
    nu.assign(1.0)
    c.assign(0.0)
    expected = assembled(F, u, U).sum()   # dR/dnu: the residual is linear in nu
    assert np.isclose(theta.grad.item(), expected, rtol=1e-12)


@pytest.mark.parametrize("form", ["bessel", "dP"])
def test_unsupported_ufl_is_a_clear_error(form):
    mesh = UnitSquareMesh(2, 2)
    V = FunctionSpace(mesh, "CG", 1)
    u, v = Function(V), TestFunction(V)
    F = {"bessel": bessel_J(1, u) * v * dx,
         "dP": u * v * dP + u * v * ds}[form]
    match = {"bessel": "bessel|Bessel", "dP": "vertex integrals"}[form]
    with pytest.raises(UnsupportedUFLError, match=match):
        ResidualOperator(F, u)


def test_mismatched_spaces_are_an_error():
    mesh = UnitSquareMesh(2, 2)
    u = Function(FunctionSpace(mesh, "CG", 1))
    v = TestFunction(FunctionSpace(mesh, "CG", 2))
    with pytest.raises(ValueError, match="mismatched function spaces"):
        ResidualOperator(u * v * dx, u)


@pytest.mark.parametrize("family,degree,quadrilateral", [("CG", 1, False), ("CG", 2, True),
                                                         ("DG", 2, False), ("CG", 3, False)])
def test_mass_inverse(family, degree, quadrilateral):
    V = VectorFunctionSpace(UnitSquareMesh(5, 5, quadrilateral=quadrilateral), family, degree)
    M = MassOperator(V)
    X = random_states(V, BATCH)
    assert np.abs((M.solve(M(X)) - X).numpy()).max() <= 1e-10
    v = TestFunction(V)
    f = Function(V)
    assign(f, X[0].numpy())
    assert np.allclose(M(X)[0].numpy(), flat(assemble(inner(f, v) * dx)), rtol=0, atol=1e-14)


def test_mass_cg():
    V = FunctionSpace(UnitSquareMesh(8, 8), "CG", 2)
    X = random_states(V, BATCH)
    cg = MassOperator(V, dense_limit=0)
    assert cg.solver == "cg"
    assert np.abs((cg.solve(cg(X)) - X).numpy()).max() <= 1e-10


@pytest.mark.parametrize("n,bound", [(8, 0.035), (16, 0.013), (32, 0.0045)])
def test_lumped_mass_error(n, bound):
    """HRZ lumping keeps the total mass and, for P1, converges to the consistent mass:
    |M_L^{-1} M x - x| / |x| for a smooth x is 0.032, 0.012, 0.0044 on 8², 16², 32² meshes."""
    mesh = UnitSquareMesh(n, n)
    V = FunctionSpace(mesh, "CG", 1)
    x, y = SpatialCoordinate(mesh)
    smooth = torch.as_tensor(flat(Function(V).interpolate(cos(x) * exp(y))))[None]
    exact, lumped = MassOperator(V), MassOperator(V, "lumped")
    ones = torch.ones_like(smooth)
    assert torch.isclose(lumped.diag.sum(), exact(ones).sum(), rtol=1e-14)
    assert torch.allclose(lumped.solve(exact(ones)), ones, atol=1e-12)
    error = (lumped.solve(exact(smooth)) - smooth).norm() / smooth.norm()
    assert error < bound


def test_lumped_mass_is_positive_for_p2():
    V = FunctionSpace(UnitSquareMesh(4, 4), "CG", 2)
    lumped = MassOperator(V, "lumped")
    assert torch.all(lumped.diag > 0)
    assert torch.isclose(lumped.diag.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-14)


def test_drift_holds_dirichlet_values(meshes_dir):
    mesh = Mesh(str(meshes_dir / "unit_square.msh"), comm=COMM_SELF)
    V = FunctionSpace(mesh, "CG", 2)
    u, v = Function(V), TestFunction(V)
    F = (u * (u.dx(0) + u.dx(1)) * v + Constant(0.01) * inner(grad(u), grad(v))) * dx
    bcs = [DirichletBC(V, 0.0, (1, 3)), DirichletBC(V, 1.0, 4)]
    drift = PhysicsDrift(F, u, bcs)
    U = drift.apply_bcs(random_states(V, BATCH))
    dU = drift(0.0, U)
    assert torch.all(dU[:, drift.bc_dofs] == 0)
    assert torch.all(U[:, drift.bc_dofs] == drift.bc_values)
    # Free rows: M dU = -F on the interior, checked against Firedrake's assembled residual.
    R = torch.as_tensor(assembled(F, u, U))
    MdU = MassOperator(V)(dU)
    free = np.setdiff1d(np.arange(V.dim()), drift.bc_dofs.numpy())
    assert torch.allclose(MdU[:, free], -R[:, free], rtol=1e-10, atol=1e-12)
    # A forcing residual joins -F on the free rows and leaves the fixed ones alone.
    forcing = random_states(V, BATCH, seed=1)
    dU = drift(0.0, U, forcing=forcing)
    assert torch.all(dU[:, drift.bc_dofs] == 0)
    assert torch.allclose(MassOperator(V)(dU)[:, free], (forcing - R)[:, free], rtol=1e-10, atol=1e-12)

    # Time-dependent data in torch: the boundary dofs move at dg/dt.
    n = len(drift.bc_dofs)
    moving = PhysicsDrift(F, u, bcs,
                          boundary_values=lambda t: torch.sin(t) * torch.ones(n, dtype=torch.float64))
    t = torch.tensor(0.3, dtype=torch.float64)
    dU = moving(t, moving.apply_bcs(U, t))
    assert torch.allclose(dU[:, moving.bc_dofs], torch.cos(t).expand(BATCH, n))


def kdv(n=20, length=10.0):
    """The KdV problem's own mixed P1-P1 residual in (u, w), w = u_xx algebraic (index 1)."""
    problem = KdV()
    W = problem.function_space(PeriodicIntervalMesh(n, length, comm=COMM_SELF))
    w = Function(W)
    return problem, problem.residual(w, TestFunction(W)), w


def taylor_hood(flow, n=4, nu=0.01):
    """Navier-Stokes on P2/P1 (pressure algebraic, index 2): a channel with parabolic inflow, free
    slip on the walls (only the normal velocity fixed) and a free outlet; or a lid-driven cavity
    (the pressure is then defined up to a constant). Returns F, the state, the conditions and the
    same conditions made homogeneous."""
    mesh = UnitSquareMesh(n, n, comm=COMM_SELF)
    W = VectorFunctionSpace(mesh, "CG", 2) * FunctionSpace(mesh, "CG", 1)
    w = Function(W)
    u, p = split(w)
    v, q = TestFunctions(W)
    F = (inner(dot(grad(u), u), v) + Constant(nu) * inner(grad(u), grad(v)) - p * div(v) + q * div(u)) * dx
    x, y = SpatialCoordinate(mesh)
    if flow == "channel":
        spec = [(W.sub(0), as_vector((4 * y * (1 - y), 0)), 1), (W.sub(0).sub(1), Constant(0.0), (3, 4))]
    else:
        spec = [(W.sub(0), Constant((0.0, 0.0)), (1, 2, 3)), (W.sub(0), Constant((1.0, 0.0)), 4)]
    bcs = [DirichletBC(V, g, where) for V, g, where in spec]
    zero = [DirichletBC(V, Constant((0.0, 0.0)) if V.component is None else 0.0, where)
            for V, _, where in spec]
    return F, w, bcs, zero


def test_kdv_drift_matches_firedrake():
    problem, F, w = kdv()
    W = w.function_space()
    drift = PhysicsDrift(F, w, prognostic=(0,))
    assert drift.index == 1 and len(drift.prognostic_dofs) == W.sub(0).dim()
    U = random_states(W.sub(0), batch=4)
    dU = drift(0.0, U)
    full = drift.complete(0.0, U)
    assert torch.equal(full[:, drift.prognostic_dofs], U)
    du, dw = TrialFunctions(W)
    v, _ = TestFunctions(W)
    expected, algebraic = [], []
    for state in U.numpy():
        z, out = Function(W), Function(W)
        z.subfunctions[0].dat.data[:] = state
        Fz = problem.residual(z, TestFunction(W))
        # (u_t, v) + F(u, w; v, phi) = 0 is linear in (u_t, w) for fixed u: F(u, w) = F(u, 0) + F_w w.
        solve(inner(du, v) * dx + derivative(Fz, z, as_vector([0, dw])) == -Fz, out,
              solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})
        expected.append(out.subfunctions[0].dat.data_ro.copy())
        algebraic.append(out.subfunctions[1].dat.data_ro.copy())
    error = max_relative_error(dU.numpy(), expected)
    print(f"KdV drift vs Firedrake: {error:.1e}")
    assert error <= 1e-10
    assert max_relative_error(full[:, drift.algebraic_dofs].numpy(), algebraic) <= 1e-10


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("flow", ["channel", "cavity"])
def test_navier_stokes_drift_matches_firedrake(flow, forced):
    """Against Firedrake's solve of the saddle-point system; ``forced``: with a body force
    (f, v) handed to the drift as a forcing residual, which the pressure must answer too."""
    F, w, bcs, zero = taylor_hood(flow)
    W = w.function_space()
    drift = PhysicsDrift(F, w, bcs, prognostic=(0,))
    assert drift.index == 2
    V0 = W.sub(0).collapse()
    Q = W.sub(1).collapse()
    x, y = SpatialCoordinate(V0.mesh())
    body = Function(V0).interpolate(as_vector((cos(3 * x + y), x * y)) if forced else as_vector((0, 0)))
    forcing = torch.as_tensor(flat(assemble(inner(body, TestFunction(V0)) * dx))).expand(4, -1)
    U = drift.apply_bcs(random_states(W.sub(0), batch=4))
    dU = drift(0.0, U, forcing=forcing if forced else None)
    pressure = drift.complete(0.0, U)[:, drift.algebraic_dofs]
    assert torch.all(dU[:, drift.bc_dofs] == 0)
    du, dp = TrialFunctions(W)
    v, q = TestFunctions(W)
    nullspace = None if flow == "channel" else MixedVectorSpaceBasis(
        W, [W.sub(0), VectorSpaceBasis(constant=True, comm=W.comm)])
    expected, expected_pressure, divergence = [], [], []
    for state, rate in zip(U.numpy(), dU.numpy()):
        z, out = Function(W), Function(W)
        z.subfunctions[0].dat.data[:] = state.reshape(-1, 2)
        u = split(z)[0]
        # The time-differentiated constraint:
        # (u_t, v) - (p, div v) + (q, div u_t) = -(convection + viscosity).
        a = (inner(du, v) - dp * div(v) + q * div(du)) * dx
        L = -(inner(dot(grad(u), u), v) + Constant(0.01) * inner(grad(u), grad(v)) - inner(body, v)) * dx
        solve(a == L, out, bcs=zero, nullspace=nullspace,
              solver_parameters={"ksp_type": "gmres", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps",
                                 "mat_mumps_icntl_24": 1, "ksp_rtol": 1e-15, "ksp_atol": 0})
        expected.append(out.subfunctions[0].dat.data_ro.reshape(-1).copy())
        expected_pressure.append(out.subfunctions[1].dat.data_ro.copy())
        f = Function(V0)
        f.dat.data[:] = rate.reshape(-1, 2)
        divergence.append(np.abs(assemble(TestFunction(Q) * div(f) * dx).dat.data_ro).max()
                          / np.abs(assemble(abs(div(f)) * dx)))
    error = max_relative_error(dU.numpy(), expected)
    print(f"Navier-Stokes ({flow}) drift vs Firedrake: {error:.1e}, divergence {max(divergence):.1e}")
    assert error <= 1e-10
    assert max(divergence) <= 1e-12
    if flow == "channel" and not forced:   # complete() has no forcing; the cavity's is up to a constant
        assert max_relative_error(pressure.numpy(), expected_pressure) <= 1e-10


@pytest.mark.parametrize("case", ["kdv", "navier_stokes"])
def test_dae_drift_gradient(case):
    if case == "kdv":
        _, F, w = kdv(n=6, length=1.0)
        drift = PhysicsDrift(F, w, prognostic=(0,))
    else:
        F, w, bcs, _ = taylor_hood("channel", n=2)
        drift = PhysicsDrift(F, w, bcs, prognostic=(0,))
    U = drift.apply_bcs(random_states(w.function_space().sub(0), batch=2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda X: drift(0.0, X), (U,))


@pytest.mark.parametrize("case", ["kdv_w_squared", "pressure_squared", "nonlinear_constraint"])
def test_non_affine_algebraic_dependence_is_an_error(case):
    if case == "kdv_w_squared":
        _, F, w = kdv(n=6)
        _, phi = TestFunctions(w.function_space())
        F = F + split(w)[1] ** 2 * phi * dx
        bcs = []
    else:
        F, w, bcs, _ = taylor_hood("channel", n=1)
        u, p = split(w)
        _, q = TestFunctions(w.function_space())
        F = F + (p**2 * q if case == "pressure_squared" else u[0] * div(u) * q) * dx
    with pytest.raises(ValueError, match="not affine"):
        PhysicsDrift(F, w, bcs, prognostic=(0,))


def test_all_prognostic_is_the_default():
    _, F, w = kdv(n=8)
    U = random_states(w.function_space(), batch=3)
    default, explicit = PhysicsDrift(F, w), PhysicsDrift(F, w, prognostic=(1, 0))
    assert explicit.index == 0 and torch.equal(explicit.prognostic_dofs, torch.arange(16))
    assert torch.equal(default(0.0, U), explicit(0.0, U))


def test_component_condition_on_a_later_subspace():
    mesh = UnitSquareMesh(2, 2)
    W = FunctionSpace(mesh, "CG", 1) * VectorFunctionSpace(mesh, "CG", 1)
    fixed = bc_dofs(W, [DirichletBC(W.sub(1).sub(1), 0.0, 1)])
    assert np.array_equal(fixed, 9 + 2 * np.asarray(DirichletBC(W.sub(1), 0.0, 1).nodes) + 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu():
    F, u = burgers_2d(2)
    U = random_states(u.function_space(), BATCH)
    cpu = ResidualOperator(F, u)(U)
    gpu = ResidualOperator(F, u, device="cuda")(U.cuda())
    assert gpu.device.type == "cuda"
    assert max_relative_error(gpu.cpu().numpy(), cpu.numpy()) <= 1e-12
