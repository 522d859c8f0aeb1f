"""Shared fixtures and hooks. The markers ``slow`` and ``cuda`` are declared in pyproject.toml;
``parallel`` comes from mpi-pytest, which runs such tests under ``mpiexec``."""
import ctypes
import os

import pytest

from firedrake_msm.meshes import MESHES


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
