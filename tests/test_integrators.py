r"""IMEX integrators: convergence orders on an Ornstein-Uhlenbeck process with a known solution,
stability far past the explicit limit, and forecasts of learned models with stiff drifts.

The process is :math:`dX = -(A + B)X\,dt + \Sigma\,dW` in three dimensions, with :math:`A` (stiff,
implicit) and :math:`B` (explicit) symmetric, not diagonal and not commuting, and two Brownian
motions. Its mean and covariance are known in closed form, and the schemes' own are computed
exactly by propagating them through the (affine) steps, so the weak orders are measured without
sampling error; the strong orders from 1000 paths against the exact solution on the same paths.
"""
import math

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torchsde
from firedrake import (COMM_SELF, CheckpointFile, Constant, DirichletBC, Function, FunctionSpace,
                       TestFunction, TestFunctions, TrialFunction, UnitSquareMesh, VectorFunctionSpace,
                       assemble, derivative, div, dot, dx, grad, inner, split)
from torch.nn.functional import softplus

from firedrake_msm.bridge import PhysicsDrift
from firedrake_msm.bridge.mass import bc_dofs
from firedrake_msm.forecast import diagnose, forecast
from firedrake_msm.integrators import (SCHEMES, ImplicitOperator, jacobian, linearised_sdeint,
                                       multiscale_operator, sdeint)
from firedrake_msm.model import ModelConfig, MultiscaleModel, MultiscaleSDE
from firedrake_msm.problems import AdvectedPulse

F64 = torch.float64
A = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 10.0]], dtype=F64)
B = torch.tensor([[0.5, -0.3, 0.2], [-0.3, 0.4, 0.1], [0.2, 0.1, 0.3]], dtype=F64)
SIGMA = torch.tensor([[0.6, 0.0], [0.3, 0.5], [-0.2, 0.4]], dtype=F64)
X0 = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
T = 1.0
STEPS = (8, 16, 32, 64)


def explicit(t, X):
    return -X @ B.T


def noise(dW):
    return dW @ SIGMA.T


def no_drift(t, X):
    return torch.zeros_like(X)


def orders(errors):
    """The observed orders between successive halvings of the step."""
    errors = np.asarray(errors)
    return np.log2(errors[:-1] / errors[1:])


def exact_moments(t):
    """Mean and covariance of X(t): :math:`e^{-(A+B)t}x_0` and
    :math:`\\int_0^t e^{-(A+B)s}\\Sigma\\Sigma^T e^{-(A+B)s}ds`, in the eigenbasis of A + B."""
    lam, V = torch.linalg.eigh(A + B)
    Q = V.T @ SIGMA @ SIGMA.T @ V
    rates = lam[:, None] + lam[None, :]
    return V @ (torch.exp(-lam * t) * (V.T @ X0)), V @ (Q * (1 - torch.exp(-rates * t)) / rates) @ V.T


def scheme_moments(name, steps):
    """The scheme's exact mean and covariance at T. A step is affine,
    :math:`X_{n+1} = RX_n + \\sum_l G_l\\xi_l` with independent standard normal :math:`\\xi_l`, one
    for each interval between the nodes at which it reads the path: the steps of the mean and of
    the covariance's rows and columns give :math:`Rm` and :math:`RCR^T`, those of unit increments
    the :math:`G_l`."""
    scheme, h = SCHEMES[name], T / steps
    solve = ImplicitOperator(A).shifted_inverse(scheme.diagonal * h)

    def step(X, W=None):
        W = W or tuple(torch.zeros(len(X), 2, dtype=F64) for _ in scheme.nodes)
        return scheme.step(explicit, solve, noise, 0.0, h, X, W)

    responses, previous = [], 0.0
    for l, node in enumerate(scheme.nodes):
        increment = math.sqrt((node - previous) * h) * torch.eye(2, dtype=F64)
        W = tuple(increment if k >= l else torch.zeros(2, 2, dtype=F64) for k in range(len(scheme.nodes)))
        responses.append(step(torch.zeros(2, 3, dtype=F64), W))
        previous = node
    G = torch.cat(responses)
    mean, cov = X0[None], torch.zeros(3, 3, dtype=F64)
    for _ in range(steps):
        mean, cov = step(mean), step(step(cov).T) + G.T @ G
    return mean[0], cov


@pytest.mark.parametrize("name", SCHEMES)
def test_weak_order_on_ornstein_uhlenbeck(name):
    """The errors of the mean and of the covariance at T fall at the scheme's weak order."""
    mean, cov = exact_moments(T)
    errors = np.array([[float((m - mean).norm()), float((C - cov).norm())]
                       for m, C in (scheme_moments(name, n) for n in STEPS)])
    expected = SCHEMES[name].weak_order
    for measured in (orders(errors[:, 0]), orders(errors[:, 1])):
        assert np.all(np.abs(measured - expected) < 0.15), (name, measured)


@pytest.fixture(scope="module")
def exact_paths():
    r"""1000 Brownian paths and the exact solution at T on them,
    :math:`X(T) = e^{-(A+B)T}x_0 + \int_0^T e^{-(A+B)(T-s)}\Sigma\,dW`, the integral by the
    midpoint rule on steps 16 times finer than the finest of the schemes' (its error is a
    sixteenth of theirs there). The paths keep every value drawn (``cache_size=None``): the
    schemes' queries then cost no recomputation."""
    paths, fine = 1000, 16 * STEPS[-1]
    bm = torchsde.BrownianInterval(t0=0.0, t1=T, size=(paths, 2), dtype=F64, entropy=7, cache_size=None)
    h = T / fine
    decay, half = torch.linalg.matrix_exp(-(A + B) * h), torch.linalg.matrix_exp(-(A + B) * h / 2)
    exact = X0.expand(paths, 3)
    for k in range(fine):
        exact = exact @ decay.T + noise(bm(k * h, (k + 1) * h)) @ half.T
    return bm, exact


@pytest.mark.parametrize("name", SCHEMES)
def test_strong_order_on_ornstein_uhlenbeck(name, exact_paths):
    """The root-mean-square error at T over the paths falls at the scheme's strong order."""
    bm, exact = exact_paths
    x0 = X0.expand(len(exact), 3).clone()
    errors = [float((sdeint(explicit, A, SIGMA, x0, [0.0, T], bm, dt=T / n, scheme=name)[-1] - exact)
                    .pow(2).sum(1).mean().sqrt()) for n in STEPS]
    assert np.all(np.abs(orders(errors) - SCHEMES[name].strong_order) < 0.15), (name, orders(errors))


class StiffOU(torch.nn.Module):
    """:math:`dX = -LX\\,dt + \\sigma dW`, :math:`L` of eigenvalues 1, 1e2 and 1e4, for torchsde."""
    noise_type, sde_type = "additive", "ito"

    def __init__(self):
        super().__init__()
        Q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(3)))
        self.Q, self.L, self.sigma = Q, Q @ torch.diag(torch.tensor([1.0, 1e2, 1e4], dtype=F64)) @ Q.T, 0.1

    def f(self, t, X):
        return -X @ self.L.T

    def g(self, t, X):
        return self.sigma * torch.eye(3, dtype=F64).expand(len(X), 3, 3)

    def g_prod(self, t, X, v):
        return self.sigma * v


@pytest.mark.parametrize("name", SCHEMES)
def test_stable_far_beyond_the_explicit_limit(name):
    """At dt = 0.1, where dt times the largest rate is 1000 (explicit schemes need at most 2),
    Euler-Maruyama and SRA1 blow up; the IMEX schemes stay at the stationary state, with the
    slow mode's variance near its exact sigma^2 / 2, and the stiff operator given as a sparse
    matrix (SuperLU) gives the same paths as given dense (torch's LU)."""
    sde, paths, dt, t = StiffOU(), 2000, 0.1, [0.0, 5.0]
    x0 = torch.ones(paths, 3, dtype=F64)
    bm = torchsde.BrownianInterval(t0=t[0], t1=t[1], size=(paths, 3), dtype=F64, entropy=1,
                                   levy_area_approximation="space-time")                   # for SRA1
    for method in ("euler", "srk"):
        blown = torchsde.sdeint(sde, x0, torch.tensor(t, dtype=F64), bm=bm, dt=dt, method=method)[-1]
        assert not (blown.abs() < 1e10).all(), method
    X = sdeint(no_drift, sde.L, sde.sigma, x0, t, bm, dt=dt, scheme=name)[-1]
    slow = X @ sde.Q[:, 0]
    assert abs(float(slow.var()) / (sde.sigma**2 / 2) - 1) < 0.15
    assert float(X.abs().max()) < 1.0
    sparse = sdeint(no_drift, sp.csr_matrix(sde.L.numpy()), sde.sigma, x0, t, bm, dt=dt, scheme=name)
    assert torch.allclose(sparse[-1], X, rtol=1e-10, atol=1e-12)


def test_linearised_sdeint_treats_a_linear_drift_wholly_implicitly():
    """The drift's Jacobian is its matrix; with it implicit, nothing is left to the explicit
    part, and the stiff process integrates as if split by hand."""
    sde, paths, t = StiffOU(), 16, [0.0, 0.5, 1.0]
    x = torch.randn(3, dtype=F64)
    assert torch.allclose(jacobian(lambda X: sde.f(0.0, X), x, chunk=2), -sde.L, rtol=1e-13, atol=1e-10)
    x0 = torch.ones(paths, 3, dtype=F64)
    bm = torchsde.BrownianInterval(t0=t[0], t1=t[-1], size=(paths, 3), dtype=F64, entropy=2)
    by_hand = sdeint(no_drift, sde.L, sde.sigma, x0, t, bm, dt=0.1)
    assert torch.allclose(linearised_sdeint(sde, x0, t, bm, dt=0.1), by_hand, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- learned models

class DiffusedPulse(AdvectedPulse):
    r"""The advected pulse with a diffusion, :math:`u_t + u_x = \nu u_{xx}`: on 20 cells its
    largest rate, :math:`12\nu/h^2 \approx 48`, and the auxiliary channels' damping, 50, are
    stiff for SRA1 at a step of 0.05 (its stability interval is [-2, 0])."""
    name = "diffused-pulse"

    def __init__(self, nu=0.01):
        self.nu = nu

    def residual(self, u, v):
        return (self.speed * u.dx(0) * v + self.nu * u.dx(0) * v.dx(0)) * dx


@pytest.fixture(scope="module")
def pulse_model(tmp_path_factory):
    """An untrained model of the diffused pulse (40 fine cells, 20 coarse, one auxiliary
    channel) in float64, calibrated to three pulses, and those pulses ``(3, N_h)``."""
    problem = DiffusedPulse()
    V = FunctionSpace(problem.mesh(40, comm=COMM_SELF), "CG", 1)
    path = tmp_path_factory.mktemp("pulse") / "pulse.h5"
    with CheckpointFile(str(path), "w", comm=COMM_SELF) as f:
        f.save_mesh(V.mesh())
        index = Function(V, name="dof_index")
        index.dat.data[:] = np.arange(V.dim())
        f.save_function(index)
    with h5py.File(path, "a") as f:
        f["msm/snapshots"] = np.zeros((1, 1, V.dim()))
        f["msm/times"] = [0.0]
    torch.manual_seed(0)
    model = MultiscaleModel.build(path, ModelConfig(problem, coarse=20, n_latent=1, width=8, features=4))
    model = model.double().eval()
    pulses = []
    for width in (0.08, 0.1, 0.12):
        u = Function(model.transfer.V_fine)
        problem.set_initial_state(u, {"width": width})
        pulses.append(torch.as_tensor(u.dat.data_ro.copy()))
    fine = torch.stack(pulses)
    model.calibrate(fine)
    return model, fine


def test_imex_forecast_converges_to_srk_and_is_stable_where_srk_is_not(pulse_model):
    """Without noise, the IMEX forecasts of a learned model converge to SRA1's at a small step
    at their schemes' orders, ARS(2,2,2) from a step of 0.1, where SRA1 blows up. Semi-implicit
    Euler damps the advected pulse at large steps (an error of a fifth of its height at 0.05)
    and reaches its first order only at smaller ones."""
    model, fine = pulse_model
    raw_sigma = model.sde.raw_sigma.detach().clone()
    times = [0.0, 0.1, 0.2]
    try:
        with torch.no_grad():
            model.sde.raw_sigma.fill_(-60.0)                # softplus: noise of 1e-26
        reference = forecast(model, fine[:1], times, samples=2, dt=5e-4).z
        for method, order, steps in (("imex", 2.0, (0.1, 0.05, 0.025, 0.0125)),
                                     ("imex-euler", 1.0, (0.0125, 0.00625, 0.003125))):
            errors = [float((forecast(model, fine[:1], times, samples=2, dt=dt, method=method).z - reference)
                            .abs().max()) for dt in steps]
            assert np.all(np.abs(orders(errors) - order) < 0.25), (method, orders(errors))
        long = np.linspace(0.0, 1.0, 11)
        assert diagnose(model, forecast(model, fine[:1], long, samples=2, dt=0.1)) is not None
        assert diagnose(model, forecast(model, fine[:1], long, samples=2, dt=0.1, method="imex")) is None
    finally:
        with torch.no_grad():
            model.sde.raw_sigma.copy_(raw_sigma)


def test_the_models_operator_is_its_physics_and_the_auxiliary_damping(pulse_model):
    """For physics linear in u, the implicit operator is Firedrake's M^{-1} K (K the assembled
    Jacobian of the residual) wherever it is linearised, and kappa on the auxiliary channels."""
    model, fine = pulse_model
    sde = model.sde
    state = model.state
    W = state.function_space()
    K = assemble(derivative(model.problem.residual(state, TestFunction(W)), state)).M.values
    M = assemble(TrialFunction(W) * TestFunction(W) * dx).M.values
    z = model.encode(fine[:1])[0][0].detach()
    operator = multiscale_operator(sde, 0.0, z)
    assert torch.allclose(operator.A, torch.as_tensor(np.linalg.solve(M, K)), rtol=1e-10, atol=1e-10)
    kappa = softplus(sde.raw_damping)[sde.channel[sde.n_u:] - sde.n_components]
    assert torch.allclose(operator.diagonal, kappa * sde.mask[sde.n_u:], rtol=1e-12, atol=0.0)


def test_imex_forecast_of_the_same_seed_is_the_same_ensemble(pulse_model):
    model, fine = pulse_model
    times = np.linspace(0.0, 0.3, 4)
    a, b, c = (forecast(model, fine[:2], times, samples=3, seed=seed, method="imex") for seed in (1, 1, 2))
    assert torch.equal(a.z, b.z) and not torch.equal(a.z, c.z)
    assert torch.isfinite(a.mean).all()


def test_imex_keeps_dirichlet_values_and_the_divergence_constraint():
    """Incompressible flow in a lid-driven cavity (Taylor-Hood, the pressure eliminated): an
    IMEX path of a learned model keeps the wall values, and the discrete divergence where it
    started, to round-off, as the drift does."""
    mesh = UnitSquareMesh(3, 3)
    W = VectorFunctionSpace(mesh, "CG", 2) * FunctionSpace(mesh, "CG", 1)
    w = Function(W)
    u, p = split(w)
    v, q = TestFunctions(W)
    F = (inner(dot(grad(u), u), v) + Constant(0.01) * inner(grad(u), grad(v)) - p * div(v) + q * div(u)) * dx
    bcs = [DirichletBC(W.sub(0), Constant((0.0, 0.0)), (1, 2, 3)),
           DirichletBC(W.sub(0), Constant((1.0, 0.0)), 4)]
    physics = PhysicsDrift(F, w, bcs, prognostic=(0,))
    torch.manual_seed(0)
    sde = MultiscaleSDE(W.sub(0).collapse(), 2, physics=physics, fixed_dofs=bc_dofs(W, bcs)).double()
    z0 = torch.zeros(4, sde.size, dtype=F64)
    z0[:, :sde.n_u] = physics.apply_bcs(z0[:, :sde.n_u])
    bm = torchsde.BrownianInterval(t0=0.0, t1=0.5, size=z0.shape, dtype=F64, entropy=0)
    with torch.no_grad():
        sde.raw_sigma.fill_(-60.0)
    operator = multiscale_operator(sde, 0.0, z0.mean(0))
    U = linearised_sdeint(sde, z0, [0.0, 0.5], bm, dt=0.1, operator=operator)[-1, :, :sde.n_u]
    assert torch.allclose(U[:, physics.bc_dofs], z0[:, physics.bc_dofs], rtol=0.0, atol=1e-12)
    assert (U - z0[:, :sde.n_u]).abs().max() > 1e-2                        # the flow moved...
    divergence = physics.J_ap @ (U - z0[:, :sde.n_u]).T
    assert divergence.abs().max() <= 1e-10 * (physics.J_ap.abs() @ U.T.abs()).max()    # ...solenoidally
