"""Shared fixtures. The markers ``slow`` and ``cuda`` are declared in pyproject.toml; the
``parallel`` marker comes from mpi-pytest, which runs such tests under ``mpiexec``."""
from pathlib import Path

import pytest

MESHES = Path(__file__).resolve().parent.parent / "meshes"


@pytest.fixture
def meshes_dir():
    """The folder of committed Gmsh meshes (``.geo`` and the ``.msh`` made from it)."""
    return MESHES
