"""The learned SDE's structure: what holds whatever the networks learned."""
import numpy as np
import torch
from firedrake import (Constant, DirichletBC, Function, FunctionSpace, PeriodicUnitSquareMesh, TestFunction,
                       TestFunctions, TrialFunction, UnitSquareMesh, VectorFunctionSpace, as_vector, assemble,
                       div, dot, ds, dx, grad, inner, split)
from torch.nn.functional import softplus

from firedrake_msm.bridge import PhysicsDrift
from firedrake_msm.bridge.mass import bc_dofs
from firedrake_msm.decoder import Decoder
from firedrake_msm.model import MultiscaleSDE, NeuralWeakForm
from firedrake_msm.transfer import Transfer

F64 = torch.float64


def wild_sde(n_latent=3, damping=5.0, **kwargs):
    """An SDE on a small square whose network weights are blown up a hundredfold."""
    return wild_sde_on(FunctionSpace(UnitSquareMesh(4, 4), "CG", 1), n_latent, damping=damping, **kwargs)


def wild_sde_on(V, n_latent=3, **kwargs):
    torch.manual_seed(0)
    sde = MultiscaleSDE(V, n_latent, **kwargs).double()
    with torch.no_grad():
        for p in sde.closure.parameters():
            p.mul_(100.0)
    return sde


def test_auxiliary_drift_is_damping_plus_a_bounded_forcing():
    sde = wild_sde()
    z = 1e3 * torch.randn(4, sde.size, dtype=F64, generator=torch.Generator().manual_seed(0))
    _, h = sde.split(z)
    _, drift = sde.split(sde.f(0.0, z))
    kappa, a = softplus(sde.raw_damping), softplus(sde.raw_amplitude)
    forcing = drift + kappa * h
    assert forcing.abs().max() > 0.5 * a.max()               # the network is not silent...
    assert torch.all(forcing.abs() <= a * (1 + 1e-12))       # ...but bounded by a


def test_auxiliary_state_returns_to_its_bounded_set():
    """From |h| = 1e3 the noiseless auxiliary state decays into |h| <= a / kappa (forward Euler,
    dt kappa = 0.05), whatever the closure does to u."""
    sde = wild_sde()
    kappa, a = softplus(sde.raw_damping).detach(), softplus(sde.raw_amplitude).detach()
    z = torch.zeros(1, sde.size, dtype=F64)
    z[:, sde.n_u:] = 1e3
    dt = 0.05 / float(kappa.max())
    with torch.no_grad():
        for _ in range(400):
            drift = sde.f(0.0, z)
            drift[:, :sde.n_u] = 0.0                       # hold u: only h's dynamics are under test
            z = z + dt * drift
    _, h = sde.split(z)
    assert torch.all(h.abs() <= 1.01 * a / kappa)


def test_auxiliary_state_is_zero_where_u_is_prescribed():
    """On nodes where Dirichlet conditions hold every component of u, the closure and the decoder
    see h = 0, and h has neither drift nor noise there."""
    V = FunctionSpace(UnitSquareMesh(4, 4), "CG", 1)
    boundary = np.asarray(DirichletBC(V, 0.0, "on_boundary").nodes)
    sde = MultiscaleSDE(V, 2, fixed_dofs=boundary).double()
    z = torch.randn(3, sde.size, dtype=F64, generator=torch.Generator().manual_seed(0))
    channels = sde.channels(z)
    assert torch.all(channels[:, boundary, 1:] == 0.0)
    interior = np.setdiff1d(np.arange(V.dim()), boundary)
    assert torch.all(channels[:, interior, 1:] == sde.split(z)[1][:, interior])
    _, drift = sde.split(sde.f(0.0, z))
    _, noise = sde.split(sde.g_prod(0.0, z, torch.ones_like(z)))
    assert torch.all(drift[:, boundary] == 0.0) and torch.all(noise[:, boundary] == 0.0)
    assert torch.all(noise[:, interior] > 0.0)


def test_learned_flux_dissipates_every_channel():
    """With the source switched off, the closure's residual is -∫ ν_c |∇X_c|² ≤ 0 against X_c for
    every channel, however wild the network (a free flux could act as a negative viscosity)."""
    sde = wild_sde(boundary_closure=False)
    closure = sde.closure
    with torch.no_grad():
        last = closure.net[-1]
        last.weight[:closure.channels] = 0.0                # source outputs
        last.bias[:closure.channels] = 0.0
    X = torch.randn(4, sde.n_nodes, closure.channels, dtype=F64, generator=torch.Generator().manual_seed(1))
    energy_rate = (X * closure(X)).sum(1)                   # (B, c)
    # A wild network's diffusivity underflows to zero in places: allow round-off there.
    assert torch.all(energy_rate <= 1e-12 * energy_rate.abs().max()) and energy_rate.min() < 0.0


def test_bounded_source_vanishes_at_rest_and_stays_within_its_bound():
    r"""However wild the network, the source is zero at rest (and, correcting a physics prior,
    where u is uniform and h at rest), and the rate it gives a channel, :math:`M^{-1}R` (the L²
    projection of the source), has an L² norm of at most the bound times :math:`|\Omega|^{1/2}`
    (here 1): the closure alone cannot make a forecast blow up."""
    sde = wild_sde(boundary_closure=False)
    closure = sde.closure
    with torch.no_grad():
        closure.diffusivity = 0.0                                   # the source alone
    bound = softplus(closure.raw_bound)
    zero = torch.zeros(2, sde.n_nodes, closure.channels, dtype=F64)
    assert closure(zero).abs().max() < 1e-10 * bound.max()              # zero but for round-off
    # As a correction of a physics prior, it vanishes where u is uniform and h at rest.
    torch.manual_seed(0)
    correction = NeuralWeakForm(FunctionSpace(UnitSquareMesh(4, 4), "CG", 1), 4, 1, boundary=False).double()
    with torch.no_grad():
        for p in correction.net.parameters():
            p.mul_(100.0)
    uniform = zero.clone()
    uniform[..., 0] = torch.tensor([[-3.0], [7.0]], dtype=F64)
    assert correction(uniform).abs().max() < 1e-10 * softplus(correction.raw_bound).max()
    uniform[..., 1] = 1.0
    assert correction(uniform).abs().max() > 0.1
    X = 10 * torch.randn(8, sde.n_nodes, closure.channels, dtype=F64,
                         generator=torch.Generator().manual_seed(4))
    R = closure(X)
    rate = sde._solve_mass(R)
    norms = (rate * R).sum(1).sqrt()                                # ||M^{-1} R||_M = sqrt(R^T M^{-1} R)
    assert torch.all(norms <= bound * (1 + 1e-9)) and norms.max() > 0.5 * bound.min()


def test_boundary_sources_are_firedrakes_facet_integrals():
    """Constant network outputs s^m give R_i = sum_m s^m ∫_{Γ_m} φ_i ds, per channel, as Firedrake
    assembles it on each side of the square (P1: the lumped rule is exact for a constant); with
    the bound, they vanish at rest, and a periodic mesh has no boundary to learn on."""
    V = FunctionSpace(UnitSquareMesh(3, 5), "CG", 1)
    sde = MultiscaleSDE(V, 1, bounded_source=False).double()
    closure = sde.closure
    values = torch.arange(1.0, 9.0, dtype=F64)                   # (marker, channel), 4 sides x 2
    with torch.no_grad():
        for net in (closure.net, closure.boundary_net):
            net[-1].weight.zero_()
            net[-1].bias.zero_()
        closure.boundary_net[-1].bias.copy_(values)
        closure.diffusivity = 0.0                                # the boundary terms alone
    X = torch.randn(2, V.dim(), 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    v = TestFunction(V)
    s = values.view(4, 2)
    expected = sum(torch.tensor(assemble(v * ds(m)).dat.data_ro)[:, None] * s[m - 1] for m in (1, 2, 3, 4))
    assert torch.allclose(closure(X), expected.expand(2, -1, -1), rtol=1e-12, atol=1e-14)
    bounded = wild_sde()
    assert bounded.closure(torch.zeros(1, bounded.n_nodes, 4, dtype=F64)).abs().max() < 1e-10
    periodic = MultiscaleSDE(FunctionSpace(PeriodicUnitSquareMesh(3, 3), "CG", 1), 1)
    assert periodic.closure.boundary_net is None


def test_constant_diffusivity_is_firedrakes_stiffness_matrix():
    """A network with constant output ν gives R = -ν K X, K assembled by Firedrake."""
    V = FunctionSpace(UnitSquareMesh(3, 5), "CG", 2)
    sde = MultiscaleSDE(V, 1, boundary_closure=False).double()
    closure = sde.closure
    with torch.no_grad():
        closure.net[-1].weight.zero_()
        closure.net[-1].bias.zero_()                         # s = 0, ν = ν0 softplus(0)
    u, v = TrialFunction(V), TestFunction(V)
    K = torch.as_tensor(assemble(inner(grad(u), grad(v)) * dx).M.values)
    X = torch.randn(2, V.dim(), 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    nu = closure.diffusivity * np.log(2.0)
    expected = -nu * torch.einsum("ij,bjc->bic", K, X)
    assert torch.allclose(closure(X), expected, rtol=1e-10, atol=1e-12)


def test_constant_free_flux_is_firedrakes_divergence_form():
    """A free flux with constant output τ gives R_i = ∫ τ · ∇φ_i, as Firedrake assembles it."""
    V = FunctionSpace(UnitSquareMesh(3, 5), "CG", 2)
    sde = MultiscaleSDE(V, 1, flux="free", boundary_closure=False).double()
    tau = torch.tensor([[0.3, -0.7], [1.1, 0.2]], dtype=F64)           # (gdim, channels)
    with torch.no_grad():
        sde.closure.net[-1].weight.zero_()
        sde.closure.net[-1].bias.copy_(torch.cat([torch.zeros(2, dtype=F64), tau.flatten()]))
    v = TestFunction(V)
    expected = torch.stack([torch.as_tensor(assemble(inner(as_vector(t.tolist()), grad(v)) * dx).dat.data)
                            for t in tau.T], dim=-1)
    X = torch.randn(2, V.dim(), 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(sde.closure(X), expected.expand(2, -1, -1), rtol=1e-10, atol=1e-12)


def test_closure_keeps_the_velocity_divergence_free():
    """In incompressible flow the pressure answers the closure as it answers the physics: with a
    wild network, the drift of u is still discretely divergence-free and zero on the walls."""
    mesh = UnitSquareMesh(4, 4)
    W = VectorFunctionSpace(mesh, "CG", 2) * FunctionSpace(mesh, "CG", 1)
    w = Function(W)
    u, p = split(w)
    v, q = TestFunctions(W)
    F = (inner(dot(grad(u), u), v) + Constant(0.01) * inner(grad(u), grad(v)) - p * div(v) + q * div(u)) * dx
    bcs = [DirichletBC(W.sub(0), Constant((0.0, 0.0)), (1, 2, 3)),
           DirichletBC(W.sub(0), Constant((1.0, 0.0)), 4)]
    physics = PhysicsDrift(F, w, bcs, prognostic=(0,))
    V = W.sub(0).collapse()
    sde = wild_sde_on(V, physics=physics, fixed_dofs=bc_dofs(W, bcs))
    z = torch.randn(4, sde.size, dtype=F64, generator=torch.Generator().manual_seed(4))
    z[:, :sde.n_u] = physics.apply_bcs(z[:, :sde.n_u])
    drift = sde.f(0.0, z)[:, :sde.n_u]
    closure = drift - physics(0.0, z[:, :sde.n_u])
    assert closure.abs().max() > 1.0                                  # the closure acts...
    divergence = (physics.J_ap @ drift.T).abs() / (physics.J_ap.abs() @ drift.T.abs()).max(0).values
    assert divergence.max() <= 1e-12                                  # ...and the pressure answers it
    assert torch.all(drift[:, physics.bc_dofs] == 0)


def test_local_decoder_starts_at_the_fit_of_what_the_coarse_state_determines():
    """Fine fields from a three-dimensional family: the sub-grid part is then a local linear
    function of the restriction, and the calibrated local decoder's mean reproduces new members
    of the family, which the prolongation misses by over 10 %."""
    torch.manual_seed(0)
    V_fine = VectorFunctionSpace(UnitSquareMesh(8, 8), "CG", 2)
    V_coarse = VectorFunctionSpace(UnitSquareMesh(4, 4), "CG", 1)
    transfer = Transfer(V_fine, V_coarse)
    decoder = Decoder(transfer, n_latent=1, local=True).double()
    family = torch.randn(3, V_fine.dim(), dtype=F64)
    fine = torch.randn(20, 3, dtype=F64) @ family
    decoder.calibrate(transfer.restrict(fine), fine, ridge=1e-12)
    y = torch.randn(5, 3, dtype=F64) @ family
    u = transfer.restrict(y)
    channels = torch.cat([u.view(5, -1, 2), torch.zeros(5, u.shape[1] // 2, 1, dtype=F64)], dim=-1)
    with torch.no_grad():
        mean, _ = decoder(u, channels)
    assert (torch.linalg.norm(y - transfer.prolong(u)) / torch.linalg.norm(y)) > 0.1
    assert torch.linalg.norm(mean - y) / torch.linalg.norm(y) < 1e-6


def test_local_decoder_fits_what_only_the_auxiliary_state_knows():
    """Fine fields a f + c g with g invisible to the restriction (R g = 0): u = a R f cannot tell
    c, the auxiliary state h = c can. Calibrated with h, the local decoder reproduces new fields;
    without, it misses the g part."""
    torch.manual_seed(0)
    V_fine = VectorFunctionSpace(UnitSquareMesh(8, 8), "CG", 2)
    V_coarse = VectorFunctionSpace(UnitSquareMesh(4, 4), "CG", 1)
    transfer = Transfer(V_fine, V_coarse)
    R = transfer.restrict(torch.eye(V_fine.dim(), dtype=F64)).T                     # (N_u, N_h)
    f, g = torch.randn(2, V_fine.dim(), dtype=F64)
    g = g - torch.linalg.pinv(R) @ (R @ g)
    assert torch.linalg.norm(R @ g) < 1e-10 * torch.linalg.norm(g)

    def sample(n):
        a, c = torch.randn(2, n, 1, dtype=F64)
        y = a * f + c * g
        return y, transfer.restrict(y), c[:, None].expand(n, V_coarse.dim() // 2, 1)

    y, u, h = sample(30)
    new, u_new, h_new = sample(5)
    for given, tolerance in ((h, 1e-6), (None, None)):
        decoder = Decoder(transfer, n_latent=1, local=True).double()
        decoder.calibrate(u, y, h=given, ridge=1e-12)
        with torch.no_grad():
            mean, _ = decoder(u_new, torch.cat([u_new.view(5, -1, 2), h_new], dim=-1))
        error = torch.linalg.norm(mean - new) / torch.linalg.norm(new)
        assert error < tolerance if given is not None else error > 0.01
