"""Shared fixtures, helpers and hooks. The markers ``slow`` and ``cuda`` are declared in
pyproject.toml; ``parallel`` comes from mpi-pytest, which runs such tests under ``mpiexec``.

The helpers (``from conftest import ...``; pytest puts this folder on ``sys.path``) compare the torch
bridge with Firedrake's own assembly, in ``test_bridge.py`` and ``test_bridge_facets.py``."""
import ctypes
import os

import numpy as np
import pytest
import torch
from firedrake import Form, assemble

from firedrake_msm.meshes import MESHES


def flat(f):
    """The flat dof vector of a Function or Cofunction, as the bridge orders it."""
    return np.concatenate([d.data_ro.reshape(-1) for d in f.dat])


def assign(f, vector):
    """Set a (possibly mixed) Function from a flat dof vector in the bridge's order."""
    offset = 0
    for d in f.dat:
        n = d.data_ro.size
        d.data[:] = vector[offset:offset + n].reshape(d.data_ro.shape)
        offset += n


def random_states(V, batch, scale=0.5, seed=0):
    """``(batch, V.dim())`` seeded normal dof vectors of standard deviation ``scale``, float64."""
    return scale * torch.randn(batch, V.dim(), dtype=torch.float64,
                               generator=torch.Generator().manual_seed(seed))


def assembled(F, u, U):
    """Firedrake's assembly of ``F`` at each state (row) of ``U``: ``(batch, N)``."""
    out = []
    for state in U.numpy():
        assign(u, state)
        out.append(flat(assemble(F)))
    return np.array(out)


def max_relative_error(a, b):
    """The largest, over the rows, max-norm error of ``a`` relative to ``b``."""
    a, b = np.asarray(a), np.asarray(b)
    return float((np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max())


def with_degree(F, degree):
    """F integrated with one fixed quadrature degree, so that F and its Jacobian are the same
    discretisation (UFL estimates different degrees for a non-polynomial residual and its
    derivative)."""
    return Form([itg.reconstruct(metadata={"quadrature_degree": degree}) for itg in F.integrals()])


@pytest.fixture
def meshes_dir():
    """The folder of committed Gmsh meshes (``.geo`` and the ``.msh`` made from it)."""
    return MESHES


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    if item.get_closest_marker("parallel") and "_PYTEST_MPI_CHILD_PROCESS" not in os.environ:
        _forget_mpi_singleton()


def _forget_mpi_singleton():
    """Once Firedrake has initialised MPI in this serial pytest, Open MPI runs it as a singleton
    and puts OMPI_*/PMIX_* variables into the C environment (not into ``os.environ``). The
    ``mpiexec`` that mpi-pytest starts for a parallel test inherits them and fails at once; unset
    them."""
    environ = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    names, i = [], 0
    while environ[i]:
        names.append(environ[i].split(b"=", 1)[0].decode())
        i += 1
    for name in names:
        if name.startswith(("OMPI_", "PMIX_", "ORTE_")) and name not in os.environ:
            os.unsetenv(name)
