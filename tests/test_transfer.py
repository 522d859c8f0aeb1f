"""Restriction and prolongation between fine and coarse spaces."""
import numpy as np
import pytest
import torch
from firedrake import (Function, FunctionSpace, MeshHierarchy, PeriodicIntervalMesh, RectangleMesh,
                       SpatialCoordinate, UnitSquareMesh, VectorFunctionSpace, as_vector, cos, errornorm,
                       exp, pi, project, sin)

from firedrake_msm.meshes import MESHES, load_mesh
from firedrake_msm.transfer import Transfer


def test_restriction_inverts_prolongation_on_nested_meshes():
    fine, coarse = PeriodicIntervalMesh(1000, 10.0), PeriodicIntervalMesh(20, 10.0)
    transfer = Transfer(FunctionSpace(fine, "CG", 1), FunctionSpace(coarse, "CG", 1))
    U = torch.randn(8, 20, dtype=torch.float64)
    assert torch.allclose(transfer.restrict(transfer.prolong(U)), U, rtol=0, atol=1e-12)


def test_restriction_is_firedrakes_projection():
    hierarchy = MeshHierarchy(UnitSquareMesh(4, 4), 1)
    V_coarse, V_fine = VectorFunctionSpace(hierarchy[0], "CG", 1), VectorFunctionSpace(hierarchy[1], "CG", 2)
    x, y = SpatialCoordinate(hierarchy[1])
    f = Function(V_fine).interpolate(as_vector((sin(pi * x) * y, exp(x * y))))
    transfer = Transfer(V_fine, V_coarse)
    expected = project(f, V_coarse, solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})
    assert np.allclose(transfer.restrict_function(f).dat.data_ro, expected.dat.data_ro, rtol=0, atol=1e-12)
    # Coarse-representable fields come back exactly.
    g = Function(V_coarse).interpolate(as_vector((x + y, x * y)))
    g_fine = transfer.prolong_function(g)
    assert np.allclose(transfer.restrict_function(g_fine).dat.data_ro, g.dat.data_ro, atol=1e-12)


def test_restriction_inverts_prolongation_on_non_nested_meshes():
    """A channel with two holes, triangulated twice: each mesh's holes are polygons inscribed in
    the circles, so the coarse mesh covers cells of the domain that the fine one leaves out.
    Coarse fields still come back exactly, next to the holes too (the restriction's inner
    products are the fine mesh's)."""
    fine, coarse = (load_mesh(MESHES / f"holes_{size}.msh")[0] for size in ("fine", "coarse"))
    transfer = Transfer(FunctionSpace(fine, "CG", 1), FunctionSpace(coarse, "CG", 1))
    U = torch.randn(4, transfer.V_coarse.dim(), dtype=torch.float64)
    assert torch.allclose(transfer.restrict(transfer.prolong(U)), U, rtol=0, atol=1e-10)
    x, y = SpatialCoordinate(coarse)
    linear = Function(transfer.V_coarse).interpolate(1 + 2 * x + 3 * y)
    back = transfer.restrict_function(transfer.prolong_function(linear))
    assert np.abs(back.dat.data_ro - linear.dat.data_ro).max() < 1e-10


@pytest.mark.parametrize("degree", [1, 2])
def test_projection_converges_on_non_nested_meshes(degree):
    """Projection of a smooth field from an unrelated fine mesh onto coarse meshes of growing
    resolution converges at order degree + 1 (the fine mesh is far finer than all of them)."""
    fine = RectangleMesh(96, 96, 1.0, 1.0, diagonal="crossed")
    V_fine = FunctionSpace(fine, "CG", 2)
    x, y = SpatialCoordinate(fine)
    field = Function(V_fine).interpolate(cos(2 * x) * exp(y))
    errors = []
    for n in (4, 8, 16):
        coarse = RectangleMesh(n, n, 1.0, 1.0, diagonal="right")
        X, Y = SpatialCoordinate(coarse)
        restricted = Transfer(V_fine, FunctionSpace(coarse, "CG", degree)).restrict_function(field)
        errors.append(errornorm(cos(2 * X) * exp(Y), restricted))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert orders.min() > degree + 1 - 0.2, orders


def test_helmholtz_filter_damps_small_scales():
    fine, coarse = PeriodicIntervalMesh(400, 1.0), PeriodicIntervalMesh(40, 1.0)
    V_fine, V_coarse = FunctionSpace(fine, "CG", 1), FunctionSpace(coarse, "CG", 1)
    x, = SpatialCoordinate(fine)
    large, small = (Function(V_fine).interpolate(sin(2 * pi * k * x)) for k in (1, 8))
    plain, filtered = Transfer(V_fine, V_coarse), Transfer(V_fine, V_coarse, filter_width=0.02)
    ratio = [filtered.restrict_function(f).dat.data_ro.std() / plain.restrict_function(f).dat.data_ro.std()
             for f in (large, small)]
    # The filter multiplies mode k by 1 / (1 + alpha^2 lambda_h): lambda_h is the P1 (consistent-
    # mass) symbol of -d2/dx2, (6 / h^2) (1 - cos t) / (2 + cos t) with t = 2 pi k h, which tends to
    # (2 pi k)^2 as h -> 0 (here h = 1/40: 0.3 % off for k = 1, 14 % for k = 8).
    h = 1 / 40
    for k, r in zip((1, 8), ratio):
        t = 2 * pi * k * h
        symbol = 6 / h**2 * (1 - np.cos(t)) / (2 + np.cos(t))
        assert np.isclose(r, 1 / (1 + 0.02**2 * symbol), rtol=1e-3)
