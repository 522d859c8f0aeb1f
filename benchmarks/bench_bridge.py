"""Benchmark: the torch bridge against Firedrake's assemble loop, fem_operator and the floor.

2D viscous Burgers, F(u; v) = (u (u_x + u_y) v + nu grad u . grad v) dx on the unit square, for
coarse sizes N ~ 1e2 .. 1e5 (CG1 and CG2) and batches B = 1, 16, 64, in float64 on the CPU:

- bridge: ResidualOperator forward, and forward + backward;
- assemble: B calls of Firedrake's ``assemble`` (after copying each state into the Function);
- fem_operator: B calls of ``firedrake.ml.pytorch.fem_operator`` (pyadjoint replay);
- floor: the same dense basis contractions alone (no gather, pointwise work or scatter).

Then the same measurements for two forms with facet integrals, N ~ 1e2 .. 1e4:

- burgers_robin: the Burgers form (CG1) plus a Robin boundary term (2 u - g) v ds;
- dg_ip: symmetric interior penalty for -div((1 + u^2) grad u) + u on DG1, with interior (dS)
  and boundary (ds) penalties.

Usage: python benchmarks/bench_bridge.py [--quick] [--compile] [--device cuda] [--dtype float32]
``--quick`` runs N ~ 1e3, B = 64 only, for the three forms; the last line is then a JSON summary
(the Burgers row's keys, and each facet form's under its name).
"""
import argparse
import json
import time

import numpy as np
import torch
from firedrake import (CellDiameter, Constant, FacetNormal, Function, FunctionSpace, SpatialCoordinate,
                       TestFunction, UnitSquareMesh, assemble, avg, dS, ds, dx, grad, inner, jump, sin)

from firedrake_msm.bridge import ResidualOperator

# Cells per side giving N ~ 1e2, 1e3, 1e4, 1e5 dofs.
SIZES = {1: [9, 31, 99, 315], 2: [5, 15, 49, 157]}
# The same for the facet forms, N ~ 1e2, 1e3, 1e4 (DG1 has 6 dofs per square).
FACET_SIZES = {"burgers_robin": [9, 31, 99], "dg_ip": [4, 13, 41]}


def timeit(fn, min_time=0.3, max_repeat=200):
    """Median seconds per call over repeats lasting about ``min_time``."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeat and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def burgers(n, degree):
    V = FunctionSpace(UnitSquareMesh(n, n), "CG", degree)
    u, v = Function(V), TestFunction(V)
    return (u * (u.dx(0) + u.dx(1)) * v + Constant(0.005) * inner(grad(u), grad(v))) * dx, u


def burgers_robin(n, degree=1):
    F, u = burgers(n, degree)
    v = TestFunction(u.function_space())
    x, y = SpatialCoordinate(u.function_space().mesh())
    return F + (Constant(2.0) * u - sin(3 * x) * y) * v * ds, u


def dg_ip(n, degree=1):
    mesh = UnitSquareMesh(n, n)
    V = FunctionSpace(mesh, "DG", degree)
    u, v = Function(V), TestFunction(V)
    normal, h, sigma = FacetNormal(mesh), CellDiameter(mesh), Constant(8.0)
    kappa = 1 + u**2
    F = (kappa * inner(grad(u), grad(v)) + u * v) * dx
    F += (- inner(avg(kappa * grad(u)), jump(v, normal)) - inner(jump(u, normal), avg(grad(v)))
          + sigma / avg(h) * jump(u) * jump(v)) * dS
    F += (- kappa * inner(grad(u), normal) * v - inner(grad(v), normal) * u + sigma / h * u * v) * ds
    return F, u


FORMS = {"burgers": burgers, "burgers_robin": burgers_robin, "dg_ip": dg_ip}


def assemble_loop(F, u, U):
    out = np.empty_like(U)
    for b, state in enumerate(U):
        u.dat.data[:] = state
        out[b] = assemble(F).dat.data_ro
    return out


def make_fem_operator(F, u):
    """firedrake.ml.pytorch's operator for u -> assemble(F(u)), or None where it cannot be built."""
    try:
        from firedrake.adjoint import Control, ReducedFunctional, continue_annotation, pause_annotation
        from firedrake.ml.pytorch import fem_operator, to_torch
        continue_annotation()
        control = Function(u.function_space())
        residual = assemble(__import__("ufl").replace(F, {u: control}))
        operator = fem_operator(ReducedFunctional(residual, Control(control)))
        pause_annotation()
        operator(to_torch(control))
        return lambda U: [operator(state) for state in U]
    except Exception as error:   # report, do not hide, why the reference could not run
        print(f"  (fem_operator unavailable: {type(error).__name__}: {error})")
        return None


def reference_bases(basis):
    """The dense reference tabulations behind a cell or facet basis (one per local facet)."""
    return list(getattr(basis, "bases", [basis]))


def floor_time(op, U):
    """The dense basis contractions alone, on pre-gathered data: for every term, the trial
    tabulations' GEMMs and the test tabulations' transposed GEMMs."""
    operands = []
    for term in op.terms:
        for trial in (b for side in term.trial for b in reference_bases(side)):
            columns = trial.n_cells * trial.block_sizes[0] * U.shape[0]
            operands.append((trial.table0, torch.randn(trial.table0.shape[1], columns, dtype=U.dtype,
                                                       device=U.device)))
        for test in (b for side in term.test for b in reference_bases(side)):
            columns = test.n_cells * test.block_sizes[0] * U.shape[0]
            operands.append((test.table0.T, torch.randn(test.table0.shape[0], columns, dtype=U.dtype,
                                                        device=U.device)))
    return timeit(lambda: [table @ local for table, local in operands])


def run(degree, n, batch, device, dtype, compile=False, with_reference=True, form="burgers"):
    F, u = FORMS[form](n, degree)
    N = u.function_space().dim()
    op = ResidualOperator(F, u, dtype=dtype, device=device, compile=compile)
    U = 0.5 * torch.randn(batch, N, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def forward():
        op(U)
        sync()

    Ug = U.clone().requires_grad_()

    def backward():
        op(Ug).sum().backward()
        sync()

    row = {"degree": degree, "n_dofs": N, "batch": batch, "forward_s": timeit(forward),
           "forward_backward_s": timeit(backward), "floor_s": floor_time(op, U)}
    if with_reference:
        U64 = U.double().cpu().numpy()
        row["assemble_s"] = timeit(lambda: assemble_loop(F, u, U64), min_time=0.5, max_repeat=20)
        fem_op = make_fem_operator(F, u) if N <= 20000 else None
        if fem_op is not None:
            Ucpu = U.double().cpu()
            row["fem_operator_s"] = timeit(lambda: fem_op(Ucpu), min_time=0.5, max_repeat=5)
        row["speedup_vs_assemble"] = row["assemble_s"] / row["forward_s"]
    row["ratio_to_floor"] = row["forward_s"] / row["floor_s"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="ResidualOperator(..., compile=True)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.dtype}"
          f"{', compiled' if args.compile else ''}")
    if args.quick:
        row = run(1, SIZES[1][1], 64, args.device, dtype, args.compile)
        summary = {k: row[k] for k in ("n_dofs", "batch", "speedup_vs_assemble", "ratio_to_floor")}
        for form, sizes in FACET_SIZES.items():
            row = run(1, sizes[1], 64, args.device, dtype, args.compile, form=form)
            summary[form] = {k: row[k] for k in ("n_dofs", "speedup_vs_assemble", "ratio_to_floor")}
        print(json.dumps(summary))
        return
    header = (f"{'form':>13} {'deg':>3} {'N':>7} {'B':>3} {'fwd ms':>9} {'fwd+bwd ms':>10} "
              f"{'assemble ms':>11} {'fem_op ms':>10} {'floor ms':>9} {'x assemble':>10} {'/ floor':>8}")
    print(header)
    cases = [("burgers", degree, n) for degree, sizes in SIZES.items() for n in sizes]
    cases += [(form, 1, n) for form, sizes in FACET_SIZES.items() for n in sizes]
    for form, degree, n in cases:
        for batch in (1, 16, 64):
            row = run(degree, n, batch, args.device, dtype, args.compile, form=form)
            ms = lambda key: f"{1e3 * row[key]:.3f}" if key in row else "-"  # noqa: E731
            print(f"{form:>13} {degree:>3} {row['n_dofs']:>7} {batch:>3} {ms('forward_s'):>9} "
                  f"{ms('forward_backward_s'):>10} {ms('assemble_s'):>11} {ms('fem_operator_s'):>10} "
                  f"{ms('floor_s'):>9} {row['speedup_vs_assemble']:>10.1f} {row['ratio_to_floor']:>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
