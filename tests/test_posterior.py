"""The amortized posterior: Gaussian-process smoothing in time, the coarse stencil of each fine node,
and the local encoder that reads it."""
import numpy as np
import pytest
import torch
from firedrake import (Function, FunctionSpace, PeriodicIntervalMesh, SpatialCoordinate, UnitSquareMesh,
                       VectorFunctionSpace, cos, pi, sin)

from firedrake_msm.networks import StencilField
from firedrake_msm.posterior import Encoder, GaussianProcessSmoother
from firedrake_msm.transfer import Transfer, coarse_stencil

F64 = torch.float64


def window(B=2, M=8, D=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    t0 = torch.rand(B, 1, dtype=F64, generator=generator)
    times = t0 + 0.1 * torch.arange(M, dtype=F64)
    values = torch.randn(B, M, D, dtype=F64, generator=generator)
    return times, values


CHANNEL = torch.tensor([0, 1, 1])


def test_smoother_derivatives_are_exact():
    times, values = window()
    path = GaussianProcessSmoother(2).double()(times, values, torch.tensor([1e-2, 3e-3], dtype=F64), CHANNEL)
    t = times[:, :1] + torch.linspace(-0.05, 0.75, 41, dtype=F64)
    h = 1e-5
    (m, log_S), (dm, dlog_S) = path(t)
    (m_plus, log_S_plus), _ = path(t + h)
    (m_minus, log_S_minus), _ = path(t - h)
    for exact, fd in [(dm, (m_plus - m_minus) / (2 * h)), (dlog_S, (log_S_plus - log_S_minus) / (2 * h))]:
        assert torch.allclose(exact, fd, rtol=1e-6, atol=1e-6 * exact.abs().max().item())


def test_smoother_interpolates_with_a_tiny_nugget():
    times, values = window()
    smoother = GaussianProcessSmoother(2, length_scale=1.0, min_length_scale=0.5, amplitude=1.0,
                                       min_ratio=1e-12).double()
    (m, log_S), _ = smoother(times, values, torch.full((2,), 1e-12, dtype=F64), CHANNEL)(times)
    assert torch.allclose(m, values, rtol=0, atol=1e-8)
    # Nearly certain at the data, uncertain between them (a bridge).
    (_, log_S_between), _ = smoother(times, values, torch.full((2,), 1e-12, dtype=F64), CHANNEL)(
        times[:, :-1] + 0.05)
    assert log_S.exp().max() < 1e-6 and log_S_between.exp().min() > 1e-4


@pytest.mark.parametrize("raw", [-1e3, -20.0, 0.0, 5.0, 1e3])
def test_smoother_length_scale_lower_bound(raw):
    smoother = GaussianProcessSmoother(2, min_length_scale=1.5).double()
    with torch.no_grad():
        smoother.raw_length_scale.fill_(raw)
    spacing = torch.tensor([0.01, 0.1, 2.0], dtype=F64)
    assert (smoother.length_scale(spacing) >= 1.5 * spacing).all()
    times, values = window()
    (m, log_S), (dm, dlog_S) = smoother(times, values, torch.tensor([1e-2, 1e-3], dtype=F64), CHANNEL)(times)
    assert all(torch.isfinite(x).all() for x in (m, log_S, dm, dlog_S))


def stencil_prolongation(stencil, U):
    return (torch.as_tensor(stencil.weights) * U[..., torch.as_tensor(stencil.nodes)]).sum(-1)


def test_coarse_stencil_prolongs_on_a_periodic_interval():
    fine, coarse = PeriodicIntervalMesh(100, 10.0), PeriodicIntervalMesh(20, 10.0)
    V_fine, V_coarse = FunctionSpace(fine, "CG", 1), FunctionSpace(coarse, "CG", 1)
    stencil = coarse_stencil(V_fine, V_coarse)
    U = torch.randn(4, V_coarse.dim(), dtype=F64, generator=torch.Generator().manual_seed(0))
    expected = Transfer(V_fine, V_coarse).prolong(U)
    assert torch.allclose(stencil_prolongation(stencil, U), expected, rtol=0, atol=1e-12)
    assert np.abs(stencil.offsets).max() <= 1 + 1e-12
    # At the seam: the fine nodes 0.1 either side of x = 0 = 10 see the coarse node there at
    # -0.1 / h and +0.1 / h (h = 0.5), not across the whole period.
    x = Function(V_fine).interpolate(SpatialCoordinate(fine)[0]).dat.data_ro
    seam = Function(V_coarse).interpolate(SpatialCoordinate(coarse)[0]).dat.data_ro
    seam_node = np.argmin(np.minimum(seam, 10.0 - seam))
    for position, offset in [(9.9, -0.2), (0.1, 0.2)]:
        (j,) = np.flatnonzero(np.isclose(x, position))
        (l,) = np.flatnonzero(stencil.nodes[j] == seam_node)
        assert np.isclose(stencil.offsets[j, l, 0], offset, rtol=0, atol=1e-12)
    (j,) = np.flatnonzero(np.isclose(np.minimum(x, 10.0 - x), 0.0))
    assert np.allclose(stencil.offsets[j, stencil.nodes[j] == seam_node], 0.0, atol=1e-12)


def test_coarse_stencil_prolongs_vector_p2_to_p1():
    fine, coarse = UnitSquareMesh(12, 12), UnitSquareMesh(4, 4)
    stencil = coarse_stencil(VectorFunctionSpace(fine, "CG", 2), VectorFunctionSpace(coarse, "CG", 1))
    V_fine, V_coarse = FunctionSpace(fine, "CG", 2), FunctionSpace(coarse, "CG", 1)
    assert stencil.nodes.shape == stencil.weights.shape == (V_fine.dim(), 3)
    assert stencil.offsets.shape == (V_fine.dim(), 3, 2)
    U = torch.randn(4, V_coarse.dim(), dtype=F64, generator=torch.Generator().manual_seed(0))
    expected = Transfer(V_fine, V_coarse).prolong(U)
    assert torch.allclose(stencil_prolongation(stencil, U), expected, rtol=0, atol=1e-12)
    assert np.linalg.norm(stencil.offsets, axis=-1).max() <= 1 + 1e-12


@pytest.fixture(scope="module")
def square():
    fine, coarse = UnitSquareMesh(8, 8), UnitSquareMesh(4, 4)
    return VectorFunctionSpace(fine, "CG", 2), VectorFunctionSpace(coarse, "CG", 1)


@pytest.mark.parametrize("transpose", [False, True])
def test_stencil_field_is_the_documented_sum(square, transpose):
    """Decoder: out[j, a] = sum_l phi_jl sum_b psi_ab(delta_jl) X[i_jl, b]; encoder (transpose):
    out[i, a] = sum_{j, l: i_jl = i} phi_jl sum_b psi_ab(delta_jl) X[j, b] / sum_{j, l: i_jl = i} phi_jl;
    and so are the gradients, in the input and in the network's parameters."""
    torch.manual_seed(0)
    stencil = coarse_stencil(*square)
    n_fine, n_coarse, n_a, n_b = stencil.nodes.shape[0], stencil.nodes.max() + 1, 5, 2
    field = StencilField(stencil, n_a, n_b, transpose=transpose).double()
    # The field keeps its geometry (and the encoder's normalisation) in single precision whatever
    # its later dtype: compare to single-precision round-off.
    offsets = torch.as_tensor(stencil.offsets, dtype=torch.float32).double()
    psi = field.psi(offsets).reshape(n_fine, 3, n_a, n_b)
    phi = torch.as_tensor(stencil.weights, dtype=torch.float32).double()
    nodes = torch.as_tensor(stencil.nodes)
    if transpose:
        X = torch.randn(4, n_fine, n_b, dtype=F64, requires_grad=True)
        terms = torch.einsum("jl,jlab,njb->njla", phi, psi, X).reshape(4, -1, n_a)
        total = torch.zeros(n_coarse, dtype=F64).index_add_(0, nodes.reshape(-1), phi.reshape(-1))
        expected = torch.zeros(4, n_coarse, n_a, dtype=F64).index_add_(1, nodes.reshape(-1), terms)
        expected = expected / total[:, None]
    else:
        X = torch.randn(4, n_coarse, n_b, dtype=F64, requires_grad=True)
        expected = torch.einsum("jl,jlab,njlb->nja", phi, psi, X[:, nodes])
    out = field(X.reshape(4, -1))
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-8)
    cotangent = torch.randn_like(out)
    inputs = [X, *field.psi.parameters()]
    for got, want in zip(torch.autograd.grad(out, inputs, cotangent),
                         torch.autograd.grad(expected, inputs, cotangent)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)    # the single-precision geometry


def test_encoder_shapes_and_coarse_mean(square):
    torch.manual_seed(0)
    V_fine, V_coarse = square
    n_H, n_h = V_coarse.dim() // 2, 3
    encoder = Encoder(V_fine, V_coarse, n_h, features=8, width=16)
    coarse, residual = torch.randn(5, 2, V_coarse.dim()), torch.randn(5, 2, V_fine.dim())
    mean, log_var = encoder(coarse, residual)
    assert mean.shape == (5, 2, 2 * n_H + n_H * n_h) and log_var.shape == (2 + n_h,)
    assert torch.equal(mean[..., :V_coarse.dim()], coarse)
    assert torch.allclose(log_var, torch.full_like(log_var, 2 * np.log(0.02)), rtol=1e-5)
    mean, log_var = Encoder(V_fine, V_coarse, 0)(coarse, residual)
    assert torch.equal(mean, coarse) and log_var.shape == (2,)


def test_encoder_is_mesh_independent():
    """One encoder's weights on two fine resolutions of the same field: the features are normalised
    sums over the fine nodes of each coarse cell, which converge at second order as the fine mesh is
    refined. Measured: features differ by 1.4% (400 vs 1600 fine cells; 19% for 100 vs 200), the
    encoded h by 1.5e-5."""
    torch.manual_seed(0)
    V_coarse = FunctionSpace(PeriodicIntervalMesh(20, 10.0), "CG", 1)
    state, encoded = None, []
    for n in (400, 1600):
        fine = PeriodicIntervalMesh(n, 10.0)
        V_fine = FunctionSpace(fine, "CG", 1)
        (x,) = SpatialCoordinate(fine)
        y = Function(V_fine).interpolate(sin(2 * pi * x / 10) + 0.3 * sin(12 * pi * x / 10)
                                         + 0.2 * cos(26 * pi * x / 10))
        transfer = Transfer(V_fine, V_coarse, dtype=torch.float32)
        Y = torch.tensor(y.dat.data_ro, dtype=torch.float32)[None]
        U = transfer.restrict(Y)
        encoder = Encoder(V_fine, V_coarse, 4)
        if state is not None:
            encoder.load_state_dict(state)
        state = encoder.state_dict()
        with torch.no_grad():
            residual = Y - transfer.prolong(U)
            mean, _ = encoder(U, residual)
        encoded.append((encoder.features(residual), mean[0, V_coarse.dim():]))
    (F1, h1), (F2, h2) = encoded
    assert F1.shape == (1, V_coarse.dim(), 16) and h1.shape == (4 * V_coarse.dim(),)
    assert (F1 - F2).norm() < 0.05 * F2.norm()
    assert (h1 - h2).norm() < 1e-4 * h2.norm()


def test_local_stencil_field_fits_a_local_linear_map(square):
    """Values per stencil entry: least squares recovers a map of that form from enough samples,
    and entries whose inputs are always zero get zero values."""
    torch.manual_seed(0)
    field = StencilField(coarse_stencil(*square), 2, 3, local=True).double()
    with torch.no_grad():
        field.values.normal_()
        field.values[..., 2] = 0.0
    X = torch.randn(40, field.shape[1] // 3, 3, dtype=F64)
    X[..., 2] = 0.0
    with torch.no_grad():
        Y = field(X.flatten(-2))
    want = field.values.detach().clone()
    field.values.data.zero_()
    field.fit(X, Y, ridge=1e-12)
    assert torch.allclose(field.values, want, atol=1e-8)
