"""Benchmark: the gradient of a StencilField's values, one dense GEMM against products per entry.

The encoder and decoder of the 1D cases (fine P1 on 1000 cells, coarse P1 on 20) and of 2D
Burgers (fine P1 64², coarse P1 8²), at a training batch (8 windows of 64 snapshots), in float32
on one CPU thread: forward + backward of each field through both paths of ``_StencilProduct``
(``dense_limit`` switched in the same process). The last line is a JSON summary of the ratios.

Usage: python benchmarks/bench_stencil.py
"""
import json

import torch
from bench_bridge import timeit
from firedrake import FunctionSpace, PeriodicIntervalMesh, UnitSquareMesh

from firedrake_msm.posterior import StencilField, _StencilProduct
from firedrake_msm.transfer import coarse_stencil

COLUMNS = 8 * 64


def fields():
    spaces = {"1D": (FunctionSpace(PeriodicIntervalMesh(1000, 1.0), "CG", 1),
                     FunctionSpace(PeriodicIntervalMesh(20, 1.0), "CG", 1)),
              "2D": (FunctionSpace(UnitSquareMesh(64, 64), "CG", 1),
                     FunctionSpace(UnitSquareMesh(8, 8), "CG", 1))}
    for name, (fine, coarse) in spaces.items():
        stencil = coarse_stencil(fine, coarse)
        yield f"{name} decoder", StencilField(stencil, 1, 6), coarse.dim() * 6
        yield f"{name} encoder", StencilField(stencil, 16, 1, transpose=True), fine.dim()


def main():
    torch.set_num_threads(1)
    summary = {}
    print(f"{'field':>12} {'entries':>9} {'dense ms':>9} {'per entry ms':>13} {'ratio':>6}")
    for name, field, n_in in fields():
        X = torch.randn(COLUMNS, n_in)

        def step():
            field.zero_grad()
            field(X).square().sum().backward()

        limit = _StencilProduct.dense_limit
        dense = timeit(step, min_time=0.5)
        _StencilProduct.dense_limit = 0
        chunked = timeit(step, min_time=0.5)
        _StencilProduct.dense_limit = limit
        summary[name] = chunked / dense
        print(f"{name:>12} {field.weights.numel():>9} {1e3 * dense:>9.2f} {1e3 * chunked:>13.2f} "
              f"{chunked / dense:>6.1f}")
    print(json.dumps({"speedup_dense_over_per_entry": summary}))


if __name__ == "__main__":
    main()
