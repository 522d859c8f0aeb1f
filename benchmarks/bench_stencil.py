"""Benchmark: the gradient of a StencilField's values, a sampled product against one dense GEMM.

The encoder and decoder of the 1D cases (fine P1 on 1000 cells, coarse P1 on 20) and of 2D
Burgers (fine P1 64², coarse P1 8²), at a training batch (8 windows of 64 snapshots), in float32
on one CPU thread. ``torch.sparse.sampled_addmm`` computes :math:`\\bar Y X^T` on the pattern
only; the baseline forms all of it and reads the pattern's entries off it (what
``_StencilProduct`` did before). Both give the same entries (checked). The last line is a JSON
summary of the ratios.

Usage: python benchmarks/bench_stencil.py
"""
import json

import torch
from bench_bridge import timeit
from firedrake import FunctionSpace, PeriodicIntervalMesh, UnitSquareMesh

from firedrake_msm.posterior import StencilField, _sampled_product
from firedrake_msm.transfer import coarse_stencil

COLUMNS = 8 * 64


def fields():
    spaces = {"1D": (FunctionSpace(PeriodicIntervalMesh(1000, 1.0), "CG", 1),
                     FunctionSpace(PeriodicIntervalMesh(20, 1.0), "CG", 1)),
              "2D": (FunctionSpace(UnitSquareMesh(64, 64), "CG", 1),
                     FunctionSpace(UnitSquareMesh(8, 8), "CG", 1))}
    for name, (fine, coarse) in spaces.items():
        stencil = coarse_stencil(fine, coarse)
        yield f"{name} decoder", StencilField(stencil, 1, 6)
        yield f"{name} encoder", StencilField(stencil, 16, 1, transpose=True)


def dense_product(field, Y, X):
    return (Y @ X.T)[field.indices[0], field.indices[1]]


def main():
    torch.set_num_threads(1)
    summary = {}
    print(f"{'field':>12} {'entries':>9} {'dense ms':>9} {'sampled ms':>11} {'ratio':>6}")
    for name, field in fields():
        Y, X = torch.randn(field.shape[0], COLUMNS), torch.randn(field.shape[1], COLUMNS)
        assert torch.allclose(_sampled_product(field, Y, X), dense_product(field, Y, X), rtol=1e-4, atol=1e-3)
        dense = timeit(lambda: dense_product(field, Y, X), min_time=0.5)
        sampled = timeit(lambda: _sampled_product(field, Y, X), min_time=0.5)
        summary[name] = dense / sampled
        print(f"{name:>12} {field.weights.numel():>9} {1e3 * dense:>9.2f} {1e3 * sampled:>11.2f} "
              f"{dense / sampled:>6.1f}")
    print(json.dumps({"speedup_sampled_over_dense": summary}))


if __name__ == "__main__":
    main()
